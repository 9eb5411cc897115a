//! `GET /v1/sandboxes/{id}/pty?cols=C&rows=R[&cmd=…][&user=…]`: an
//! interactive terminal session in a sandbox, over a WebSocket.
//!
//! Without `cmd` the process is `/bin/bash -i -l` (what E2B's `pty.create`
//! runs); with it, `/bin/bash -l -c <cmd>`. Either way with
//! `TERM=xterm-256color` and `LANG`/`LC_ALL=C.UTF-8`, on a pseudo-terminal
//! of `cols` x `rows` cells, as `user` (envd's default, `user`, when
//! absent).
//!
//! The process is started before the upgrade, so a bad query (400), an
//! unknown sandbox (404), one that is not running (409) or a failing envd
//! (502) are ordinary JSON error responses; a request that is not a
//! WebSocket handshake is 400 `websocket_required`.
//!
//! Messages:
//! - binary, both ways: raw terminal bytes (client: keystrokes; server:
//!   the terminal's output, escape sequences included);
//! - text from the client: JSON control, `{"resize":{"cols":C,"rows":R}}`;
//! - text from the server: `{"exit":{"code":N}}` when the process ended,
//!   the last message before the close; `{"error":{"code","message"}}`
//!   for a control message it did not understand (the session goes on) or
//!   a failure that ends the session (then no `exit` follows).
//!
//! When the client goes away first, the process is killed (`SIGKILL`).

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::StatusCode;
use axum::response::Response;
use envd_client::{EnvdClient, EnvdError, ExecRequest, PtyEvent, PtyStream, Signal};
use futures::stream::SplitStream;
use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery};

/// The largest terminal dimension accepted, in cells.
pub const MAX_PTY_CELLS: u16 = 1000;

/// The query of `GET .../pty`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PtyQuery {
    cols: u16,
    rows: u16,
    /// A shell command line; an interactive login bash when absent.
    cmd: Option<String>,
    /// Guest user; envd's default (`user`) when absent.
    user: Option<String>,
}

/// A control message from the client (a text message).
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Control {
    Resize { cols: u16, rows: u16 },
}

/// Checks that `cols` x `rows` is a terminal size envd can be given.
fn check_size(cols: u16, rows: u16) -> Result<(), ApiError> {
    let valid = 1..=MAX_PTY_CELLS;
    if valid.contains(&cols) && valid.contains(&rows) {
        Ok(())
    } else {
        Err(ApiError::invalid_request(format!(
            "cols and rows must be 1..={MAX_PTY_CELLS}, got {cols}x{rows}"
        )))
    }
}

impl PtyQuery {
    fn into_request(self) -> Result<(ExecRequest, u16, u16), ApiError> {
        check_size(self.cols, self.rows)?;
        let mut request = match self.cmd {
            None => ExecRequest::new("/bin/bash").args(["-i", "-l"]),
            Some(cmd) if cmd.trim().is_empty() => {
                return Err(ApiError::invalid_request("cmd must not be empty"));
            }
            Some(cmd) => ExecRequest::shell(cmd),
        };
        request = request
            .env("TERM", "xterm-256color")
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8");
        request.user = self.user;
        Ok((request, self.cols, self.rows))
    }
}

pub async fn open(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<PtyQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let (request, cols, rows) = query.into_request()?;
    let envd = state.app.manager.envd(&id).await?;
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "websocket_required",
            format!(
                "this route is a WebSocket (GET with Upgrade: websocket): {}",
                rejection.body_text()
            ),
        )
    })?;
    let mut events = envd.start_pty(request, cols, rows).await?;
    let pid = match events.next().await {
        Some(Ok(PtyEvent::Started { pid })) => pid,
        Some(Err(err)) => return Err(err.into()),
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "envd_error",
                "envd started no PTY process",
            ));
        }
    };
    tracing::info!(sandbox = %id, pid, cols, rows, "pty session starting");
    let on_failure = envd.clone();
    Ok(upgrade
        .on_failed_upgrade(move |err| {
            tracing::warn!(pid, %err, "pty upgrade failed; killing the process");
            tokio::spawn(async move { kill(&on_failure, pid).await });
        })
        .on_upgrade(move |socket| session(socket, envd, pid, events, id)))
}

/// Why the input side of a session stopped.
enum InputEnd {
    /// The client closed the socket or it broke.
    ClientGone,
    /// envd refused input or a resize.
    Failed(EnvdError),
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Exited,
    ClientGone,
    Failed,
}

/// Relays one session until the process exits or the client goes away.
async fn session(socket: WebSocket, envd: EnvdClient, pid: u32, mut events: PtyStream, id: String) {
    let (mut sink, incoming) = socket.split();
    let (notices, mut notice) = mpsc::unbounded_channel::<String>();
    let mut input = tokio::spawn(forward_input(incoming, envd.clone(), pid, notices));
    let mut input_running = true;
    let outcome = loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(PtyEvent::Output(data))) => {
                    if sink.send(Message::Binary(data)).await.is_err() {
                        break Outcome::ClientGone;
                    }
                }
                Some(Ok(PtyEvent::Exited { exit_code, .. })) => {
                    let exit = serde_json::json!({"exit": {"code": exit_code}}).to_string();
                    let _ = sink.send(Message::Text(exit.into())).await;
                    let _ = sink.send(close(close_code::NORMAL, "exited")).await;
                    tracing::info!(sandbox = %id, pid, exit_code, "pty session ended");
                    break Outcome::Exited;
                }
                Some(Ok(PtyEvent::Started { .. })) => {}
                Some(Err(err)) => {
                    tracing::warn!(sandbox = %id, pid, %err, "pty stream failed");
                    let err = ApiError::from(err);
                    let _ = sink.send(error_message(err.code, &err.message)).await;
                    let _ = sink.send(close(close_code::ERROR, "envd failed")).await;
                    break Outcome::Failed;
                }
                None => {
                    let _ = sink.send(error_message("envd_error", "the process stream ended without an exit")).await;
                    let _ = sink.send(close(close_code::ERROR, "envd failed")).await;
                    break Outcome::Failed;
                }
            },
            Some(text) = notice.recv() => {
                if sink.send(Message::Text(text.into())).await.is_err() {
                    break Outcome::ClientGone;
                }
            }
            ended = &mut input, if input_running => {
                input_running = false;
                match ended {
                    Ok(InputEnd::ClientGone) | Err(_) => break Outcome::ClientGone,
                    // The process has exited: its exit event is coming.
                    Ok(InputEnd::Failed(err)) if err.is_not_found() => {}
                    Ok(InputEnd::Failed(err)) => {
                        tracing::warn!(sandbox = %id, pid, %err, "pty input failed");
                        let err = ApiError::from(err);
                        let _ = sink.send(error_message(err.code, &err.message)).await;
                        let _ = sink.send(close(close_code::ERROR, "envd failed")).await;
                        break Outcome::Failed;
                    }
                }
            }
        }
    };
    input.abort();
    if outcome != Outcome::Exited {
        tracing::info!(sandbox = %id, pid, ?outcome, "pty session closed; killing the process");
        kill(&envd, pid).await;
    }
}

/// Forwards keystrokes and resizes from the client to envd, in order.
async fn forward_input(
    mut incoming: SplitStream<WebSocket>,
    envd: EnvdClient,
    pid: u32,
    notices: mpsc::UnboundedSender<String>,
) -> InputEnd {
    while let Some(message) = incoming.next().await {
        let sent = match message {
            Ok(Message::Binary(data)) => envd.send_pty_input(pid, &data).await,
            Ok(Message::Text(text)) => match parse_control(text.as_str()) {
                Ok(Control::Resize { cols, rows }) => envd.resize_pty(pid, cols, rows).await,
                Err(message) => {
                    let _ = notices.send(error_json("invalid_control", &message));
                    Ok(())
                }
            },
            Ok(Message::Ping(_) | Message::Pong(_)) => Ok(()),
            Ok(Message::Close(_)) | Err(_) => return InputEnd::ClientGone,
        };
        if let Err(err) = sent {
            return InputEnd::Failed(err);
        }
    }
    InputEnd::ClientGone
}

/// A control message, or why it is not one.
fn parse_control(text: &str) -> Result<Control, String> {
    let control: Control = serde_json::from_str(text).map_err(|err| {
        format!(r#"control messages are {{"resize":{{"cols":C,"rows":R}}}}: {err}"#)
    })?;
    let Control::Resize { cols, rows } = control;
    check_size(cols, rows).map_err(|err| err.message)?;
    Ok(control)
}

async fn kill(envd: &EnvdClient, pid: u32) {
    match envd.send_signal(pid, Signal::Kill).await {
        Ok(()) => {}
        Err(err) if err.is_not_found() => {}
        Err(err) => tracing::warn!(pid, %err, "killing the pty process failed"),
    }
}

fn error_json(code: &str, message: &str) -> String {
    serde_json::json!({"error": {"code": code, "message": message}}).to_string()
}

fn error_message(code: &str, message: &str) -> Message {
    Message::Text(error_json(code, message).into())
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(json: serde_json::Value) -> PtyQuery {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn pty_without_cmd_runs_an_interactive_login_bash_with_e2b_env() {
        let (request, cols, rows) = query(serde_json::json!({"cols": 120, "rows": 40}))
            .into_request()
            .unwrap();

        assert_eq!((request.cmd.as_str(), cols, rows), ("/bin/bash", 120, 40));
        assert_eq!(request.args, ["-i", "-l"]);
        assert_eq!(
            request.envs.get("TERM").map(String::as_str),
            Some("xterm-256color")
        );
        assert_eq!(
            request.envs.get("LC_ALL").map(String::as_str),
            Some("C.UTF-8")
        );
    }

    #[test]
    fn pty_with_cmd_runs_it_through_a_login_bash() {
        let (request, _, _) =
            query(serde_json::json!({"cols": 80, "rows": 24, "cmd": "top", "user": "root"}))
                .into_request()
                .unwrap();

        assert_eq!(request.args, ["-l", "-c", "top"]);
        assert_eq!(request.user.as_deref(), Some("root"));
    }

    #[test]
    fn pty_of_zero_rows_is_400() {
        let err = query(serde_json::json!({"cols": 80, "rows": 0}))
            .into_request()
            .unwrap_err();

        assert_eq!(
            (err.status, err.code),
            (StatusCode::BAD_REQUEST, "invalid_request")
        );
    }

    #[test]
    fn resize_control_message_parses() {
        let control = parse_control(r#"{"resize":{"cols":100,"rows":30}}"#).unwrap();

        assert_eq!(
            control,
            Control::Resize {
                cols: 100,
                rows: 30
            }
        );
    }

    #[test]
    fn unknown_or_oversized_control_messages_are_refused() {
        let refused = [
            r#"{"paste":"x"}"#,
            r#"{"resize":{"cols":100}}"#,
            r#"{"resize":{"cols":5000,"rows":30}}"#,
            "not json",
        ]
        .map(|text| parse_control(text).is_err());

        assert_eq!(refused, [true; 4]);
    }
}
