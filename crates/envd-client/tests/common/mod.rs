//! Shared by the tests that run against the real envd server (started
//! in-process on `127.0.0.1:0`).

#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use envd_client::{EnvdClient, ExecRequest};

/// An envd server on a background task and a client of it; the server
/// stops when this is dropped.
pub struct Envd {
    _server: envd::RunningServer,
    pub client: EnvdClient,
}

pub async fn start_envd() -> Envd {
    let server = envd::Server::bind(envd::Config::localhost())
        .await
        .unwrap()
        .spawn();
    let client = EnvdClient::new(server.local_addr());
    client.wait_healthy(Duration::from_secs(10)).await.unwrap();
    Envd {
        _server: server,
        client,
    }
}

/// `bash -c <command>` as root. Not [`ExecRequest::shell`]: a login shell
/// reads the host's profile, which may write to stderr (e.g. pyenv).
pub fn as_root(command: &str) -> ExecRequest {
    ExecRequest::new("/bin/bash")
        .args(["-c", command])
        .user("root")
}
