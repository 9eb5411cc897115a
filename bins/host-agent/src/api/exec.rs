//! `POST /v1/sandboxes/{id}/exec` (run to completion, JSON result) and
//! `POST /v1/sandboxes/{id}/exec/stream` (Server-Sent Events).
//!
//! `cmd` runs through `/bin/bash -l -c` when `args` is absent (a shell
//! command line, as E2B's `commands.run`); with `args` (even `[]`) `cmd` is
//! the program, looked up in `PATH`, and no shell is involved.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use envd_client::{ExecEvent, ExecRequest};
use futures::{Stream, StreamExt as _};
use sandbox_core::ManagerError;
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiPath, JsonBody};

/// The longest a command may run: 1 hour.
pub const MAX_EXEC_TIMEOUT_S: u64 = 3600;

/// `{cmd, args?, env?, cwd?, user?, stdin?, timeout_s?}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    cmd: String,
    args: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    /// Guest user; envd's default (`user`) when absent.
    user: Option<String>,
    /// Written to the process's stdin, which is then closed.
    stdin: Option<String>,
    timeout_s: Option<u64>,
}

impl ExecBody {
    fn into_request(self) -> Result<ExecRequest, ApiError> {
        if self.cmd.is_empty() {
            return Err(ApiError::invalid_request("cmd must not be empty"));
        }
        let mut request = match self.args {
            None => ExecRequest::shell(self.cmd),
            Some(args) => ExecRequest::new(self.cmd).args(args),
        };
        request.envs = self.env;
        request.cwd = self.cwd;
        request.user = self.user;
        request.stdin = self.stdin.map(String::into_bytes);
        request.timeout = match self.timeout_s {
            Some(seconds @ 1..=MAX_EXEC_TIMEOUT_S) => Some(Duration::from_secs(seconds)),
            Some(seconds) => {
                return Err(ApiError::invalid_request(format!(
                    "timeout_s must be 1..={MAX_EXEC_TIMEOUT_S}, got {seconds}"
                )));
            }
            None => None,
        };
        Ok(request)
    }
}

/// A finished command; output is UTF-8 (invalid bytes replaced), at most
/// the agent's `exec_output_limit` bytes of each stream: beyond, the rest
/// is dropped and `stdout_truncated`/`stderr_truncated` is true.
#[derive(Debug, Serialize)]
pub struct ExecResult {
    stdout: String,
    stderr: String,
    stdout_truncated: bool,
    stderr_truncated: bool,
    exit_code: i32,
    pid: u32,
}

pub async fn exec(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<ExecBody>,
) -> Result<Json<ExecResult>, ApiError> {
    let mut request = body.into_request()?;
    request.output_limit = Some(state.app.policy.exec_output_limit);
    let output = state.app.manager.exec(&id, request).await?;
    tracing::debug!(sandbox = %id, pid = output.pid, exit_code = output.exit_code, truncated = output.stdout_truncated || output.stderr_truncated, "exec finished");
    Ok(Json(ExecResult {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        stdout_truncated: output.stdout_truncated,
        stderr_truncated: output.stderr_truncated,
        exit_code: output.exit_code,
        pid: output.pid,
    }))
}

/// Events: `start` `{"pid":N}`, then `stdout`/`stderr` `{"data":"…"}` as
/// output comes (not capped: envd is read only as fast as the client reads
/// the events, so a slow client slows the command, never grows memory), then `exit` `{"exit_code":N,"status":"…"}`; a failure
/// mid-stream is an `error` event `{"code":"…","message":"…"}`.
pub async fn stream(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<ExecBody>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let request = body.into_request()?;
    let envd = state.app.manager.envd(&id).await?;
    let events = envd.exec_stream(request).await.map_err(ApiError::from)?;
    // A VM that goes away sends nothing more: end the stream at once.
    let events = crate::gone::until_gone(state.app.manager.clone(), id.clone(), events).map({
        let id = id.clone();
        move |item| match item {
            Ok(event) => event.map_err(ApiError::from),
            Err(state) => Err(ApiError::from(ManagerError::InvalidState {
                id: id.clone(),
                state,
                operation: "finish the command",
            })),
        }
    });
    let sandbox = id.clone();
    let events = events.map(move |event| {
        Ok(match event {
            Ok(event) => sse_event(&event),
            Err(err) => {
                tracing::warn!(%sandbox, %err, "exec stream failed");
                json_event(
                    "error",
                    &serde_json::json!({"code": err.code, "message": err.message}),
                )
            }
        })
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

fn sse_event(event: &ExecEvent) -> Event {
    match event {
        ExecEvent::Started { pid } => json_event("start", &serde_json::json!({"pid": pid})),
        ExecEvent::Stdout(data) => json_event(
            "stdout",
            &serde_json::json!({"data": String::from_utf8_lossy(data)}),
        ),
        ExecEvent::Stderr(data) => json_event(
            "stderr",
            &serde_json::json!({"data": String::from_utf8_lossy(data)}),
        ),
        ExecEvent::Exited {
            exit_code,
            status,
            error,
            ..
        } => json_event(
            "exit",
            &serde_json::json!({"exit_code": exit_code, "status": status, "error": error}),
        ),
    }
}

fn json_event(name: &str, data: &serde_json::Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> ExecBody {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn cmd_without_args_runs_through_bash() {
        let request = body(serde_json::json!({"cmd": "echo hi"}))
            .into_request()
            .unwrap();

        assert_eq!(
            (request.cmd.as_str(), request.args),
            (
                "/bin/bash",
                vec!["-l".into(), "-c".into(), "echo hi".into()]
            )
        );
    }

    #[test]
    fn cmd_with_args_runs_the_program() {
        let request = body(serde_json::json!({"cmd": "ls", "args": ["-l"], "cwd": "/tmp"}))
            .into_request()
            .unwrap();

        assert_eq!(
            (request.cmd.as_str(), request.args, request.cwd),
            ("ls", vec!["-l".to_string()], Some("/tmp".to_string()))
        );
    }

    #[test]
    fn empty_cmd_is_400() {
        let err = body(serde_json::json!({"cmd": ""}))
            .into_request()
            .unwrap_err();

        assert_eq!(err.code, "invalid_request");
    }
}
