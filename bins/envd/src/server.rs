//! The HTTP server: routes, middleware, listener and lifecycle.

use crate::auth::require_access_token;
use crate::config::Config;
use crate::error::EnvdError;
use crate::state::{AppState, SharedState};
use crate::{files, filesystem, health, init, metrics, process};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use connectrpc_axum::MakeServiceBuilder;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// All envd routes for `state`: the Connect services, the plain HTTP
/// endpoints and the access-token gate.
pub fn router(state: SharedState) -> Router {
    let rpc = MakeServiceBuilder::new()
        .add_router(process::router(Arc::clone(&state)))
        .add_router(filesystem::router(Arc::clone(&state)))
        .build();
    let http = Router::new()
        .route("/health", get(health::health))
        .route("/files", get(files::download).post(files::upload))
        .route("/init", post(init::init))
        .route("/envs", get(init::envs))
        .route("/metrics", get(metrics::metrics))
        .layer(DefaultBodyLimit::disable())
        .with_state(Arc::clone(&state));
    rpc.merge(http).layer(axum::middleware::from_fn_with_state(
        state,
        require_access_token,
    ))
}

/// A bound, not yet serving envd server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: SharedState,
}

impl Server {
    /// Binds `config.listen` and prepares the state.
    pub async fn bind(config: Config) -> Result<Self, EnvdError> {
        let addr = config.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| EnvdError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| EnvdError::Bind { addr, source })?;
        Ok(Self {
            listener,
            local_addr,
            state: Arc::new(AppState::new(config)),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The shared state (settings, processes, watchers).
    pub fn state(&self) -> &SharedState {
        &self.state
    }

    /// Serves until `shutdown` resolves.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), EnvdError> {
        tracing::info!(addr = %self.local_addr, "envd listening");
        let app = router(self.state);
        let listener = self.listener.tap_io(|tcp| {
            // Small stream envelopes should leave immediately.
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| EnvdError::Internal(format!("server: {e}")))
    }

    /// Serves forever.
    pub async fn run(self) -> Result<(), EnvdError> {
        self.run_until(std::future::pending()).await
    }

    /// Serves on a background task (for tests and embedding).
    pub fn spawn(self) -> RunningServer {
        let local_addr = self.local_addr;
        let state = Arc::clone(&self.state);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(self.run_until(async move {
            let _ = stopped.await;
        }));
        RunningServer {
            local_addr,
            state,
            stop: Some(stop),
            task,
        }
    }
}

/// A server running on a background task; stops when dropped or on
/// [`RunningServer::shutdown`].
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    state: SharedState,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), EnvdError>>,
}

impl RunningServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// The shared state.
    pub fn state(&self) -> &SharedState {
        &self.state
    }

    /// Stops accepting connections and aborts the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
