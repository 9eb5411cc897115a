//! The `filesystem.Filesystem` Connect handlers.

// connectrpc-axum fixes the handlers' error type to `ConnectError`.
#![allow(clippy::result_large_err)]

use crate::error::EnvdError;
use crate::filesystem::entry::entry_info;
use crate::filesystem::ops;
use crate::filesystem::watch::{WatchOptions, watch};
use crate::rpc::{self, StreamReply};
use crate::state::SharedState;
use axum::extract::State;
use axum::http::HeaderMap;
use connectrpc_axum::{ConnectError, ConnectRequest, ConnectResponse};
use envd_proto::filesystem::filesystem_connect::FilesystemServiceBuilder;
use envd_proto::filesystem::{
    CreateWatcherRequest, CreateWatcherResponse, GetWatcherEventsRequest, GetWatcherEventsResponse,
    ListDirRequest, ListDirResponse, MakeDirRequest, MakeDirResponse, MoveRequest, MoveResponse,
    RemoveRequest, RemoveResponse, RemoveWatcherRequest, RemoveWatcherResponse, StatRequest,
    StatResponse, WatchDirRequest, WatchDirResponse, watch_dir_response,
};
use futures::StreamExt as _;

type Reply<T> = Result<ConnectResponse<T>, ConnectError>;

/// The routes of `filesystem.Filesystem`, with `state` applied.
pub fn router(state: SharedState) -> axum::Router {
    FilesystemServiceBuilder::new()
        .stat(stat)
        .make_dir(make_dir)
        .r#move(move_entry)
        .list_dir(list_dir)
        .remove(remove)
        .watch_dir(watch_dir)
        .create_watcher(create_watcher)
        .get_watcher_events(get_watcher_events)
        .remove_watcher(remove_watcher)
        .with_state(state)
        .build()
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T, F>(work: F) -> Result<T, EnvdError>
where
    F: FnOnce() -> Result<T, EnvdError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| EnvdError::Internal(format!("filesystem task: {e}")))?
}

async fn stat(
    State(state): State<SharedState>,
    headers: HeaderMap,
    ConnectRequest(request): ConnectRequest<StatRequest>,
) -> Reply<StatResponse> {
    let user = rpc::request_user(&state, &headers)?;
    let path = user.resolve_path(&request.path);
    let entry = blocking(move || entry_info(&path)).await?;
    Ok(ConnectResponse::new(StatResponse { entry: Some(entry) }))
}

async fn make_dir(
    State(state): State<SharedState>,
    headers: HeaderMap,
    ConnectRequest(request): ConnectRequest<MakeDirRequest>,
) -> Reply<MakeDirResponse> {
    let user = rpc::request_user(&state, &headers)?;
    let path = user.resolve_path(&request.path);
    let entry = blocking(move || {
        if std::fs::symlink_metadata(&path).is_ok() {
            return Err(EnvdError::AlreadyExists(format!(
                "directory {} already exists",
                path.display()
            )));
        }
        ops::create_dirs(&path, &user)?;
        entry_info(&path)
    })
    .await?;
    Ok(ConnectResponse::new(MakeDirResponse { entry: Some(entry) }))
}

async fn move_entry(
    State(state): State<SharedState>,
    headers: HeaderMap,
    ConnectRequest(request): ConnectRequest<MoveRequest>,
) -> Reply<MoveResponse> {
    let user = rpc::request_user(&state, &headers)?;
    let source = user.resolve_path(&request.source);
    let destination = user.resolve_path(&request.destination);
    let entry = blocking(move || {
        ops::rename(&source, &destination, &user)?;
        entry_info(&destination)
    })
    .await?;
    Ok(ConnectResponse::new(MoveResponse { entry: Some(entry) }))
}

async fn list_dir(
    State(state): State<SharedState>,
    headers: HeaderMap,
    ConnectRequest(request): ConnectRequest<ListDirRequest>,
) -> Reply<ListDirResponse> {
    let user = rpc::request_user(&state, &headers)?;
    let path = user.resolve_path(&request.path);
    let depth = request.depth;
    let entries = blocking(move || ops::list_dir(&path, depth)).await?;
    Ok(ConnectResponse::new(ListDirResponse { entries }))
}

async fn remove(
    State(state): State<SharedState>,
    headers: HeaderMap,
    ConnectRequest(request): ConnectRequest<RemoveRequest>,
) -> Reply<RemoveResponse> {
    let user = rpc::request_user(&state, &headers)?;
    let path = user.resolve_path(&request.path);
    blocking(move || ops::remove(&path)).await?;
    Ok(ConnectResponse::new(RemoveResponse {}))
}

async fn watch_dir(
    State(state): State<SharedState>,
    headers: HeaderMap,
    ConnectRequest(request): ConnectRequest<WatchDirRequest>,
) -> StreamReply<WatchDirResponse> {
    let deadline = rpc::deadline(&headers)?;
    let keepalive = rpc::keepalive_period(&headers, state.config.default_keepalive);
    let user = rpc::request_user(&state, &headers)?;
    let mut events = watch(WatchOptions {
        root: user.resolve_path(&request.path),
        recursive: request.recursive,
        include_entry: request.include_entry,
        allow_network_mounts: request.allow_network_mounts,
    })?;
    let stream = async_stream::stream! {
        yield Ok(WatchDirResponse {
            event: Some(watch_dir_response::Event::Start(watch_dir_response::StartEvent {})),
        });
        while let Some(event) = events.recv().await {
            yield Ok(WatchDirResponse {
                event: Some(watch_dir_response::Event::Filesystem(event)),
            });
        }
    };
    rpc::stream_reply(rpc::with_keepalive(
        stream.boxed(),
        keepalive,
        deadline,
        || WatchDirResponse {
            event: Some(watch_dir_response::Event::Keepalive(
                watch_dir_response::KeepAlive {},
            )),
        },
    ))
}

async fn create_watcher(
    State(state): State<SharedState>,
    headers: HeaderMap,
    ConnectRequest(request): ConnectRequest<CreateWatcherRequest>,
) -> Reply<CreateWatcherResponse> {
    let user = rpc::request_user(&state, &headers)?;
    let watcher_id = state.watchers.create(WatchOptions {
        root: user.resolve_path(&request.path),
        recursive: request.recursive,
        include_entry: request.include_entry,
        allow_network_mounts: request.allow_network_mounts,
    })?;
    Ok(ConnectResponse::new(CreateWatcherResponse { watcher_id }))
}

async fn get_watcher_events(
    State(state): State<SharedState>,
    ConnectRequest(request): ConnectRequest<GetWatcherEventsRequest>,
) -> Reply<GetWatcherEventsResponse> {
    let events = state.watchers.take_events(&request.watcher_id)?;
    Ok(ConnectResponse::new(GetWatcherEventsResponse { events }))
}

async fn remove_watcher(
    State(state): State<SharedState>,
    ConnectRequest(request): ConnectRequest<RemoveWatcherRequest>,
) -> Reply<RemoveWatcherResponse> {
    state.watchers.remove(&request.watcher_id)?;
    Ok(ConnectResponse::new(RemoveWatcherResponse {}))
}
