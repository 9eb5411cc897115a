//! Processes in the guest over the `process.Process` service: run to
//! completion ([`EnvdClient::exec`]), stream events
//! ([`EnvdClient::exec_stream`]), re-attach to a running process
//! ([`EnvdClient::attach`]), stdin, signals, listing.

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use envd_proto::process as pb;
use futures::{
    FutureExt as _, StreamExt as _,
    future::BoxFuture,
    stream::{self, BoxStream},
};
use tracing::debug;

use crate::{EnvdClient, EnvdError, transport::MessageStream};

pub(crate) const START: &str = "process.Process/Start";
const CONNECT: &str = "process.Process/Connect";
const LIST: &str = "process.Process/List";
pub(crate) const SEND_INPUT: &str = "process.Process/SendInput";
const CLOSE_STDIN: &str = "process.Process/CloseStdin";
const SEND_SIGNAL: &str = "process.Process/SendSignal";

/// Largest piece of stdin sent in one `SendInput` call.
const STDIN_CHUNK: usize = 64 * 1024;

/// Bytes of each of stdout and stderr [`EnvdClient::exec`] keeps when
/// [`ExecRequest::output_limit`] is `None`.
pub const DEFAULT_OUTPUT_LIMIT: usize = 16 * 1024 * 1024;

/// A command to run in the guest.
///
/// Build one with [`ExecRequest::new`] (program and arguments, no shell) or
/// [`ExecRequest::shell`] (`/bin/bash -l -c <command>`, as E2B's
/// `commands.run` does), then the builder methods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// The program, looked up in `PATH` by envd.
    pub cmd: String,
    pub args: Vec<String>,
    /// Added to the default environment.
    pub envs: BTreeMap<String, String>,
    /// Working directory; the user's home when `None`.
    pub cwd: Option<String>,
    /// Guest user to run as; envd's default user when `None`.
    pub user: Option<String>,
    /// When set, the process gets a stdin pipe, these bytes are written to it
    /// and it is closed; otherwise stdin is `/dev/null`.
    pub stdin: Option<Vec<u8>>,
    /// Deadline for the whole run, passed to envd as `Connect-Timeout-Ms`;
    /// the run fails with code `deadline_exceeded` when it is overrun.
    pub timeout: Option<Duration>,
    /// Bytes of each of stdout and stderr [`EnvdClient::exec`] keeps
    /// ([`DEFAULT_OUTPUT_LIMIT`] when `None`); output beyond is read and
    /// dropped, and [`ExecOutput::stdout_truncated`] (or `stderr_`) set.
    /// Streams ([`EnvdClient::exec_stream`]) are not capped.
    pub output_limit: Option<usize>,
}

impl ExecRequest {
    /// Runs `cmd` with no arguments (add them with [`arg`](Self::arg)).
    pub fn new(cmd: impl Into<String>) -> Self {
        Self {
            cmd: cmd.into(),
            ..Self::default()
        }
    }

    /// Runs `command` through a login bash: `/bin/bash -l -c <command>`.
    pub fn shell(command: impl Into<String>) -> Self {
        Self::new("/bin/bash").args(["-l".to_owned(), "-c".to_owned(), command.into()])
    }

    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.insert(key.into(), value.into());
        self
    }

    #[must_use]
    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    #[must_use]
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    #[must_use]
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    #[must_use]
    pub fn output_limit(mut self, bytes: usize) -> Self {
        self.output_limit = Some(bytes);
        self
    }

    /// The program, arguments, environment and working directory.
    pub(crate) fn process_config(&self) -> pb::ProcessConfig {
        pb::ProcessConfig {
            cmd: self.cmd.clone(),
            args: self.args.clone(),
            envs: self
                .envs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cwd: self.cwd.clone(),
        }
    }

    fn start_request(&self) -> pb::StartRequest {
        pb::StartRequest {
            process: Some(self.process_config()),
            pty: None,
            tag: None,
            stdin: Some(self.stdin.is_some()),
        }
    }
}

/// The result of a process run to completion by [`EnvdClient::exec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The guest pid the process had.
    pub pid: u32,
    /// At most [`ExecRequest::output_limit`] bytes.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The process wrote more to stdout than the limit; the rest was
    /// dropped.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// The exit code; by E2B convention `-1` (or 128+n from a shell) when a
    /// signal ended the process.
    pub exit_code: i32,
    /// How the process ended, as envd words it (e.g. `exit status 0`).
    pub status: String,
    /// Whether the process exited by itself (false when a signal killed it).
    pub exited: bool,
    /// An error envd reported with the end event.
    pub error: Option<String>,
}

impl ExecOutput {
    /// Whether the process exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

/// One event of a process run by [`EnvdClient::exec_stream`]. Keepalives are
/// not passed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Always the first event.
    Started {
        pid: u32,
    },
    Stdout(Bytes),
    Stderr(Bytes),
    /// Always the last event of a successful stream.
    Exited {
        exit_code: i32,
        status: String,
        exited: bool,
        error: Option<String>,
    },
}

/// The events of one process; ends after [`ExecEvent::Exited`], or with an
/// error.
pub type ExecStream = BoxStream<'static, Result<ExecEvent, EnvdError>>;

/// A process envd is running or has started, as `Process/List` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tag: Option<String>,
    pub cmd: String,
    pub args: Vec<String>,
    pub envs: BTreeMap<String, String>,
    pub cwd: Option<String>,
}

impl From<pb::ProcessInfo> for ProcessInfo {
    fn from(info: pb::ProcessInfo) -> Self {
        let config = info.config.unwrap_or_default();
        Self {
            pid: info.pid,
            tag: info.tag,
            cmd: config.cmd,
            args: config.args,
            envs: config.envs.into_iter().collect(),
            cwd: config.cwd,
        }
    }
}

/// A signal [`EnvdClient::send_signal`] can deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    Term,
    Kill,
}

impl From<Signal> for pb::Signal {
    fn from(signal: Signal) -> Self {
        match signal {
            Signal::Term => Self::Sigterm,
            Signal::Kill => Self::Sigkill,
        }
    }
}

impl EnvdClient {
    /// Runs `request` to completion and collects its output, at most
    /// [`ExecRequest::output_limit`] bytes of each stream (the rest is read
    /// and dropped, so the process runs to its end).
    ///
    /// A non-zero exit code is not an error (see [`ExecOutput::exit_code`]);
    /// errors are transport failures, a Connect error from envd (e.g.
    /// `deadline_exceeded` when [`ExecRequest::timeout`] passes) or a broken
    /// event sequence.
    pub async fn exec(&self, request: ExecRequest) -> Result<ExecOutput, EnvdError> {
        let limit = request.output_limit.unwrap_or(DEFAULT_OUTPUT_LIMIT);
        let mut events = self.exec_stream(request).await?;
        let mut output = ExecOutput {
            pid: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            exit_code: 0,
            status: String::new(),
            exited: false,
            error: None,
        };
        let mut ended = false;
        while let Some(event) = events.next().await {
            match event? {
                ExecEvent::Started { pid } => output.pid = pid,
                ExecEvent::Stdout(data) => {
                    output.stdout_truncated |= keep(&mut output.stdout, &data, limit);
                }
                ExecEvent::Stderr(data) => {
                    output.stderr_truncated |= keep(&mut output.stderr, &data, limit);
                }
                ExecEvent::Exited {
                    exit_code,
                    status,
                    exited,
                    error,
                } => {
                    if ended {
                        return Err(self.protocol(START, "more than one end event"));
                    }
                    ended = true;
                    output.exit_code = exit_code;
                    output.status = status;
                    output.exited = exited;
                    output.error = error;
                }
            }
        }
        if !ended {
            return Err(self.protocol(
                START,
                &format!("stream of pid {} closed without an end event", output.pid),
            ));
        }
        debug!(addr = %self.addr(), pid = output.pid, exit_code = output.exit_code, "envd process finished");
        Ok(output)
    }

    /// Starts `request` and returns its events as they come: first
    /// [`ExecEvent::Started`] (already received when this returns), then
    /// output, then [`ExecEvent::Exited`].
    ///
    /// With [`ExecRequest::stdin`] set, the input is written and stdin closed
    /// while the stream is polled; failures to deliver it show up as stream
    /// errors, except when the process has exited or closed its stdin (then
    /// the rest of the input is dropped, as `subprocess.communicate` does).
    pub async fn exec_stream(&self, request: ExecRequest) -> Result<ExecStream, EnvdError> {
        let start = request.start_request();
        debug!(addr = %self.addr(), cmd = %request.cmd, args = ?request.args, user = ?request.user, "envd start process");
        let (pid, events) = self
            .start_events(&start, &request, Self::exec_event, |event| match event {
                ExecEvent::Started { pid } => Some(*pid),
                _ => None,
            })
            .await?;
        debug!(addr = %self.addr(), pid, "envd process started");
        let feed = request.stdin.map(|input| {
            let client = self.clone();
            async move { client.feed_stdin(pid, input).await }.boxed()
        });
        let state = ExecState {
            first: Some(ExecEvent::Started { pid }),
            events,
            feed,
        };
        Ok(stream::unfold(state, ExecState::next).boxed())
    }

    /// Attaches to the running process `pid` (`Process/Connect`), e.g. after
    /// the stream of [`EnvdClient::exec_stream`] broke: its events from now
    /// on, first [`ExecEvent::Started`] (already received when this
    /// returns), then output, then [`ExecEvent::Exited`]. Output the
    /// process wrote while no stream was attached is not replayed.
    ///
    /// Fails with code `not_found` when no process `pid` runs (any more).
    pub async fn attach(
        &self,
        pid: u32,
        timeout: Option<Duration>,
    ) -> Result<ExecStream, EnvdError> {
        let request = pb::ConnectRequest {
            process: Some(selector(pid)),
        };
        let raw: MessageStream<pb::ConnectResponse> = self
            .transport
            .server_stream(CONNECT, &request, None, timeout)
            .await?;
        let client = self.clone();
        let mut events = raw
            .filter_map(move |item| {
                let event = item
                    .and_then(|response| client.process_event(CONNECT, response.event))
                    .transpose();
                async move { event }
            })
            .boxed();
        match events.next().await {
            Some(Ok(ExecEvent::Started { pid: started })) if started == pid => {}
            Some(Ok(event)) => {
                return Err(self.protocol(
                    CONNECT,
                    &format!("first event for pid {pid} is {event:?}, not its start event"),
                ));
            }
            Some(Err(err)) => return Err(err),
            None => return Err(self.protocol(CONNECT, "stream closed before the start event")),
        }
        debug!(addr = %self.addr(), pid, "attached to envd process");
        let state = ExecState {
            first: Some(ExecEvent::Started { pid }),
            events,
            feed: None,
        };
        Ok(stream::unfold(state, ExecState::next).boxed())
    }

    /// Writes `data` to the stdin of `pid` (`Process/SendInput`); the process
    /// must have been started with stdin open.
    pub async fn send_stdin(&self, pid: u32, data: &[u8]) -> Result<(), EnvdError> {
        let request = pb::SendInputRequest {
            process: Some(selector(pid)),
            input: Some(pb::ProcessInput {
                input: Some(pb::process_input::Input::Stdin(data.to_vec())),
            }),
        };
        let _: pb::SendInputResponse = self.transport.unary(SEND_INPUT, &request, None).await?;
        Ok(())
    }

    /// Closes the stdin of `pid` (`Process/CloseStdin`), so it reads EOF.
    pub async fn close_stdin(&self, pid: u32) -> Result<(), EnvdError> {
        let request = pb::CloseStdinRequest {
            process: Some(selector(pid)),
        };
        let _: pb::CloseStdinResponse = self.transport.unary(CLOSE_STDIN, &request, None).await?;
        Ok(())
    }

    /// Sends `signal` to `pid` (`Process/SendSignal`); `not_found` when envd
    /// runs no such process.
    pub async fn send_signal(&self, pid: u32, signal: Signal) -> Result<(), EnvdError> {
        debug!(addr = %self.addr(), pid, ?signal, "envd send signal");
        let request = pb::SendSignalRequest {
            process: Some(selector(pid)),
            signal: pb::Signal::from(signal).into(),
        };
        let _: pb::SendSignalResponse = self.transport.unary(SEND_SIGNAL, &request, None).await?;
        Ok(())
    }

    /// The processes envd is running (`Process/List`).
    pub async fn list_processes(&self) -> Result<Vec<ProcessInfo>, EnvdError> {
        let reply: pb::ListResponse = self
            .transport
            .unary(LIST, &pb::ListRequest {}, None)
            .await?;
        Ok(reply.processes.into_iter().map(ProcessInfo::from).collect())
    }

    async fn feed_stdin(&self, pid: u32, input: Vec<u8>) -> Result<(), EnvdError> {
        for chunk in input.chunks(STDIN_CHUNK) {
            self.send_stdin(pid, chunk).await?;
        }
        self.close_stdin(pid).await
    }

    /// The [`ExecEvent`] of one `Start` message; `None` for keepalives.
    /// Sends `Process/Start` and waits for the start event (`started` picks
    /// the pid out of it): the pid, and the events after it (`map` turns
    /// each response into an event, or `None` to skip it). Shared by plain
    /// and PTY processes.
    pub(crate) async fn start_events<E>(
        &self,
        start: &pb::StartRequest,
        request: &ExecRequest,
        map: fn(&EnvdClient, pb::StartResponse) -> Result<Option<E>, EnvdError>,
        started: fn(&E) -> Option<u32>,
    ) -> Result<(u32, BoxStream<'static, Result<E, EnvdError>>), EnvdError>
    where
        E: std::fmt::Debug + Send + 'static,
    {
        let raw: MessageStream<pb::StartResponse> = self
            .transport
            .server_stream(START, start, request.user.as_deref(), request.timeout)
            .await?;
        let client = self.clone();
        let mut events = raw
            .filter_map(move |item| {
                let event = item.and_then(|response| map(&client, response)).transpose();
                async move { event }
            })
            .boxed();
        match events.next().await {
            Some(Ok(event)) => match started(&event) {
                Some(pid) => Ok((pid, events)),
                None => Err(self.protocol(
                    START,
                    &format!("first event is {event:?}, not the start event"),
                )),
            },
            Some(Err(err)) => Err(err),
            None => Err(self.protocol(START, "stream closed before the start event")),
        }
    }

    fn exec_event(&self, response: pb::StartResponse) -> Result<Option<ExecEvent>, EnvdError> {
        self.process_event(START, response.event)
    }

    /// The [`ExecEvent`] of one message of `endpoint` (`Start` or
    /// `Connect`); `None` for keepalives.
    fn process_event(
        &self,
        endpoint: &str,
        event: Option<pb::ProcessEvent>,
    ) -> Result<Option<ExecEvent>, EnvdError> {
        use pb::process_event::{Event, data_event::Output};
        let event = event
            .and_then(|event| event.event)
            .ok_or_else(|| self.protocol(endpoint, "message without an event"))?;
        Ok(match event {
            Event::Start(start) => Some(ExecEvent::Started { pid: start.pid }),
            Event::Data(data) => match data.output {
                Some(Output::Stdout(bytes) | Output::Pty(bytes)) => {
                    Some(ExecEvent::Stdout(Bytes::from(bytes)))
                }
                Some(Output::Stderr(bytes)) => Some(ExecEvent::Stderr(Bytes::from(bytes))),
                None => None,
            },
            Event::End(end) => Some(ExecEvent::Exited {
                exit_code: end.exit_code,
                status: end.status,
                exited: end.exited,
                error: end.error,
            }),
            Event::Keepalive(_) => None,
        })
    }

    pub(crate) fn protocol(&self, endpoint: &str, detail: &str) -> EnvdError {
        EnvdError::Protocol {
            addr: self.addr(),
            endpoint: endpoint.to_owned(),
            detail: detail.to_owned(),
        }
    }
}

/// Appends what fits of `data` to `out` (at most `limit` bytes in all);
/// whether anything was dropped.
fn keep(out: &mut Vec<u8>, data: &[u8], limit: usize) -> bool {
    let room = limit.saturating_sub(out.len());
    let taken = data.len().min(room);
    out.extend_from_slice(&data[..taken]);
    taken < data.len()
}

/// Whether a failure to deliver stdin only means the process no longer wants
/// it: it has exited (`not_found`) or closed its end of the pipe (EPIPE).
/// Like `subprocess.communicate`, such input is dropped silently.
fn stdin_unwanted(err: &EnvdError) -> bool {
    match err {
        EnvdError::Rpc { code, message, .. } => {
            code == "not_found" || message.to_ascii_lowercase().contains("broken pipe")
        }
        _ => false,
    }
}

pub(crate) fn selector(pid: u32) -> pb::ProcessSelector {
    pb::ProcessSelector {
        selector: Some(pb::process_selector::Selector::Pid(pid)),
    }
}

/// State of an [`ExecStream`]: the start event to hand out, the remaining
/// events, and the stdin delivery still in progress.
struct ExecState {
    first: Option<ExecEvent>,
    events: BoxStream<'static, Result<ExecEvent, EnvdError>>,
    feed: Option<BoxFuture<'static, Result<(), EnvdError>>>,
}

/// What happened first while polling events and stdin delivery together.
enum Step {
    Event(Option<Result<ExecEvent, EnvdError>>),
    Fed(Result<(), EnvdError>),
}

impl ExecState {
    async fn next(mut self) -> Option<(Result<ExecEvent, EnvdError>, Self)> {
        if let Some(first) = self.first.take() {
            return Some((Ok(first), self));
        }
        loop {
            let step = match self.feed.as_mut() {
                Some(feed) => tokio::select! {
                    biased;
                    event = self.events.next() => Step::Event(event),
                    fed = feed => Step::Fed(fed),
                },
                None => Step::Event(self.events.next().await),
            };
            match step {
                // The stream is over: drop any stdin delivery still running.
                Step::Event(event) => return event.map(|event| (event, self)),
                Step::Fed(fed) => {
                    self.feed = None;
                    match fed {
                        Ok(()) => {}
                        Err(err) if stdin_unwanted(&err) => {
                            debug!(error = %err, "process stopped reading stdin before all of it was delivered");
                        }
                        Err(err) => return Some((Err(err), self)),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn rpc_error(code: &str, message: &str) -> EnvdError {
        EnvdError::Rpc {
            addr: SocketAddr::from(([127, 0, 0, 1], 49983)),
            method: SEND_INPUT.into(),
            code: code.into(),
            message: message.into(),
        }
    }

    #[test]
    fn stdin_is_unwanted_after_exit_or_a_closed_pipe_only() {
        let errors = [
            rpc_error("not_found", "process 12 not found"),
            rpc_error(
                "internal",
                "writing to stdin of 12: Broken pipe (os error 32)",
            ),
            rpc_error("internal", "write |1: broken pipe"),
            rpc_error("internal", "disk on fire"),
            rpc_error("unauthenticated", "missing token"),
        ];

        let unwanted = errors.each_ref().map(stdin_unwanted);

        assert_eq!(unwanted, [true, true, true, false, false]);
    }

    #[test]
    fn keep_stops_at_the_limit_and_says_so() {
        let mut out = Vec::new();

        let dropped = [
            keep(&mut out, b"abc", 5),
            keep(&mut out, b"def", 5),
            keep(&mut out, b"g", 5),
        ];

        assert_eq!(out, b"abcde");
        assert_eq!(dropped, [false, true, true]);
    }

    #[test]
    fn shell_runs_a_login_bash() {
        let request = ExecRequest::shell("echo hello");

        assert_eq!(request.cmd, "/bin/bash");
        assert_eq!(request.args, ["-l", "-c", "echo hello"]);
    }

    #[test]
    fn start_request_opens_stdin_only_when_input_is_given() {
        let with_input = ExecRequest::new("cat").stdin(b"x".to_vec());
        let without_input = ExecRequest::new("cat").cwd("/tmp").env("A", "1");

        let started = [with_input.start_request(), without_input.start_request()];

        assert_eq!(started[0].stdin, Some(true));
        assert_eq!(started[1].stdin, Some(false));
        let config = started[1].process.clone().unwrap();
        assert_eq!(config.cmd, "cat");
        assert_eq!(config.cwd.as_deref(), Some("/tmp"));
        assert_eq!(config.envs.get("A").map(String::as_str), Some("1"));
    }
}
