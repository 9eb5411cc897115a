//! The `process.Process` Connect handlers.

// connectrpc-axum fixes the handlers' error type to `ConnectError`.
#![allow(clippy::result_large_err)]

use crate::error::EnvdError;
use crate::process::manager::Event;
use crate::process::run::{StartOptions, start as start_process};
use crate::process::spawn::{SpawnSpec, build_env};
use crate::rpc::{self, EventStream, StreamReply};
use crate::state::SharedState;
use crate::user::UserInfo;
use axum::extract::State;
use axum::http::HeaderMap;
use connectrpc_axum::{ConnectError, ConnectRequest, ConnectResponse, Streaming};
use envd_proto::process::process_connect::ProcessServiceBuilder;
use envd_proto::process::{
    CloseStdinRequest, CloseStdinResponse, ConnectRequest as AttachRequest,
    ConnectResponse as AttachResponse, ListRequest, ListResponse, ProcessEvent, ProcessInput,
    SendInputRequest, SendInputResponse, SendSignalRequest, SendSignalResponse, Signal,
    StartRequest, StartResponse, StreamInputRequest, StreamInputResponse, UpdateRequest,
    UpdateResponse, process_event, process_input, stream_input_request,
};
use futures::StreamExt as _;
use std::path::PathBuf;
use tokio::sync::mpsc;

/// The routes of `process.Process`, with `state` applied.
pub fn router(state: SharedState) -> axum::Router {
    ProcessServiceBuilder::new()
        .start(start)
        .connect(connect)
        .list(list)
        .send_input(send_input)
        .stream_input(stream_input)
        .send_signal(send_signal)
        .close_stdin(close_stdin)
        .update(update)
        .with_state(state)
        .build()
}

fn keepalive_event() -> ProcessEvent {
    ProcessEvent {
        event: Some(process_event::Event::Keepalive(process_event::KeepAlive {})),
    }
}

/// `start{pid}`, then the subscription's events up to and including `end`.
fn process_events(pid: u32, mut events: mpsc::Receiver<Event>) -> EventStream<ProcessEvent> {
    let stream = async_stream::stream! {
        yield Ok(ProcessEvent {
            event: Some(process_event::Event::Start(process_event::StartEvent { pid })),
        });
        while let Some(event) = events.recv().await {
            match event {
                Event::Data(data) => yield Ok(ProcessEvent {
                    event: Some(process_event::Event::Data(data)),
                }),
                Event::End(end) => {
                    yield Ok(ProcessEvent { event: Some(process_event::Event::End(end)) });
                    break;
                }
            }
        }
    };
    stream.boxed()
}

/// The working directory of a new process: the request's (relative to
/// home), else `/init`'s default, else home (`/` if home is missing).
fn working_dir(
    user: &UserInfo,
    requested: Option<&str>,
    default: Option<PathBuf>,
) -> Result<PathBuf, EnvdError> {
    if let Some(cwd) = requested.filter(|c| !c.is_empty()) {
        let path = user.resolve_path(cwd);
        if !path.is_dir() {
            return Err(EnvdError::InvalidArgument(format!(
                "cwd '{}' does not exist or is not a directory",
                path.display()
            )));
        }
        return Ok(path);
    }
    let path = default.unwrap_or_else(|| user.home.clone());
    Ok(if path.is_dir() {
        path
    } else {
        PathBuf::from("/")
    })
}

async fn start(
    State(state): State<SharedState>,
    headers: HeaderMap,
    ConnectRequest(request): ConnectRequest<StartRequest>,
) -> StreamReply<StartResponse> {
    let deadline = rpc::deadline(&headers)?;
    let keepalive = rpc::keepalive_period(&headers, state.config.default_keepalive);
    let user = rpc::request_user(&state, &headers)?;
    let config = request
        .process
        .ok_or_else(|| EnvdError::InvalidArgument("process config is required".to_owned()))?;
    if config.cmd.is_empty() {
        return Err(EnvdError::InvalidArgument("process cmd is required".to_owned()).into());
    }
    let settings = state.settings();
    let cwd = working_dir(
        &user,
        config.cwd.as_deref(),
        settings.default_workdir.clone(),
    )?;
    let env = build_env(&user, &settings.env_vars, &config.envs);
    let pty = request.pty.map(|p| {
        let size = p.size.unwrap_or_default();
        (
            u16::try_from(size.cols).unwrap_or(u16::MAX).max(1),
            u16::try_from(size.rows).unwrap_or(u16::MAX).max(1),
        )
    });
    let spec = SpawnSpec {
        cmd: config.cmd.clone(),
        args: config.args.clone(),
        env,
        cwd,
        user,
        stdin: request.stdin.unwrap_or(true),
        pty,
    };
    let (handle, events) = start_process(
        &state.processes,
        StartOptions {
            spec,
            tag: request.tag,
            config,
            deadline,
        },
    )?;
    let events = process_events(handle.pid(), events)
        .map(|r| r.map(|event| StartResponse { event: Some(event) }));
    rpc::stream_reply(rpc::with_keepalive(events, keepalive, deadline, || {
        StartResponse {
            event: Some(keepalive_event()),
        }
    }))
}

async fn connect(
    State(state): State<SharedState>,
    headers: HeaderMap,
    ConnectRequest(request): ConnectRequest<AttachRequest>,
) -> StreamReply<AttachResponse> {
    let deadline = rpc::deadline(&headers)?;
    let keepalive = rpc::keepalive_period(&headers, state.config.default_keepalive);
    let handle = state.processes.get(request.process.as_ref())?;
    let events = process_events(handle.pid(), handle.subscribe())
        .map(|r| r.map(|event| AttachResponse { event: Some(event) }));
    rpc::stream_reply(rpc::with_keepalive(events, keepalive, deadline, || {
        AttachResponse {
            event: Some(keepalive_event()),
        }
    }))
}

async fn list(
    State(state): State<SharedState>,
    ConnectRequest(_): ConnectRequest<ListRequest>,
) -> Result<ConnectResponse<ListResponse>, ConnectError> {
    Ok(ConnectResponse::new(ListResponse {
        processes: state.processes.list(),
    }))
}

async fn write_input(
    handle: &crate::process::manager::ProcessHandle,
    input: Option<ProcessInput>,
) -> Result<(), EnvdError> {
    match input.and_then(|i| i.input) {
        Some(process_input::Input::Stdin(data)) => handle.write_stdin(&data).await,
        Some(process_input::Input::Pty(data)) => handle.write_pty(&data).await,
        None => Err(EnvdError::InvalidArgument("input is required".to_owned())),
    }
}

async fn send_input(
    State(state): State<SharedState>,
    ConnectRequest(request): ConnectRequest<SendInputRequest>,
) -> Result<ConnectResponse<SendInputResponse>, ConnectError> {
    let handle = state.processes.get(request.process.as_ref())?;
    write_input(&handle, request.input).await?;
    Ok(ConnectResponse::new(SendInputResponse {}))
}

async fn stream_input(
    State(state): State<SharedState>,
    ConnectRequest(mut requests): ConnectRequest<Streaming<StreamInputRequest>>,
) -> Result<ConnectResponse<StreamInputResponse>, ConnectError> {
    let mut handle = None;
    while let Some(message) = requests.next().await {
        match message?.event {
            Some(stream_input_request::Event::Start(start)) => {
                handle = Some(state.processes.get(start.process.as_ref())?);
            }
            Some(stream_input_request::Event::Data(data)) => {
                let target = handle.as_ref().ok_or_else(|| {
                    EnvdError::FailedPrecondition("the first message must be start".to_owned())
                })?;
                write_input(target, data.input).await?;
            }
            Some(stream_input_request::Event::Keepalive(_)) | None => {}
        }
    }
    Ok(ConnectResponse::new(StreamInputResponse {}))
}

async fn send_signal(
    State(state): State<SharedState>,
    ConnectRequest(request): ConnectRequest<SendSignalRequest>,
) -> Result<ConnectResponse<SendSignalResponse>, ConnectError> {
    let signal = match Signal::try_from(request.signal) {
        Ok(Signal::Sigterm) => nix::sys::signal::Signal::SIGTERM,
        Ok(Signal::Sigkill) => nix::sys::signal::Signal::SIGKILL,
        Ok(Signal::Unspecified) | Err(_) => {
            return Err(EnvdError::InvalidArgument("unsupported signal".to_owned()).into());
        }
    };
    let handle = state.processes.get(request.process.as_ref())?;
    handle.signal(signal)?;
    Ok(ConnectResponse::new(SendSignalResponse {}))
}

async fn close_stdin(
    State(state): State<SharedState>,
    ConnectRequest(request): ConnectRequest<CloseStdinRequest>,
) -> Result<ConnectResponse<CloseStdinResponse>, ConnectError> {
    let handle = state.processes.get(request.process.as_ref())?;
    handle.close_stdin().await?;
    Ok(ConnectResponse::new(CloseStdinResponse {}))
}

async fn update(
    State(state): State<SharedState>,
    ConnectRequest(request): ConnectRequest<UpdateRequest>,
) -> Result<ConnectResponse<UpdateResponse>, ConnectError> {
    let handle = state.processes.get(request.process.as_ref())?;
    if let Some(size) = request.pty.and_then(|p| p.size) {
        let cols = u16::try_from(size.cols).unwrap_or(u16::MAX).max(1);
        let rows = u16::try_from(size.rows).unwrap_or(u16::MAX).max(1);
        handle.resize(cols, rows)?;
    }
    Ok(ConnectResponse::new(UpdateResponse {}))
}
