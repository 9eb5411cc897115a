//! `petrel sandbox shell ID`: an interactive terminal in a sandbox, like
//! `e2b sandbox connect`, over the agent's `GET /v1/sandboxes/{id}/pty`
//! WebSocket.
//!
//! The local terminal goes into raw mode for the session (and back on
//! every way out: exit, error, panic, SIGTERM, SIGHUP); its size is sent
//! at the start and again on every SIGWINCH; keystrokes go out as binary
//! messages and the remote terminal's bytes are written to stdout as they
//! are. The remote shell's exit code is petrel's.
//!
//! When stdin is not a terminal (a pipe, a file), it is sent as typed and
//! then a Ctrl-D (again whenever the remote has gone quiet, see
//! [`EotRetry`]), so `echo 'exit 3' | petrel sandbox shell ID` and
//! `echo ls | petrel sandbox shell ID` both end.

pub mod terminal;

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::cli::ShellArgs;
use crate::client::{self, API_KEY_HEADER, Client, segment};
use crate::commands::exit_status;

/// The size used when no local terminal tells one.
const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// How long the WebSocket handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Ctrl-D: end of file for the remote terminal.
const EOT: u8 = 0x04;

/// The first pause before Ctrl-D is typed again after stdin ended, and the
/// longest (the pause doubles each time).
const EOT_FIRST_PAUSE: Duration = Duration::from_millis(500);
const EOT_MAX_PAUSE: Duration = Duration::from_secs(5);

/// When to type Ctrl-D again after a stdin that is not a terminal ended.
///
/// A Ctrl-D typed while the remote terminal is in canonical mode, just
/// before a program switches it to raw mode (bash starting readline), is
/// lost: it reaches the program as a NUL byte. So it is typed again each
/// time the remote has been quiet for a pause that doubles up to
/// [`EOT_MAX_PAUSE`]; a shell at its prompt ends at the first that arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EotRetry {
    /// The last output from the remote or Ctrl-D sent.
    last: Instant,
    pause: Duration,
}

impl EotRetry {
    fn new(now: Instant) -> Self {
        Self {
            last: now,
            pause: EOT_FIRST_PAUSE,
        }
    }

    /// When to type Ctrl-D again if nothing else happens.
    fn due(&self) -> Instant {
        self.last + self.pause
    }

    /// The remote wrote something: it is not idle yet.
    fn output(&mut self, now: Instant) {
        self.last = now;
    }

    /// Ctrl-D was typed again.
    fn sent(&mut self, now: Instant) {
        self.last = now;
        self.pause = (self.pause * 2).min(EOT_MAX_PAUSE);
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A text message from the agent.
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ServerMessage {
    Exit { code: i64 },
    Error { code: String, message: String },
}

/// `/v1/sandboxes/{id}/pty?cols=C&rows=R[&cmd=…][&user=…]`.
pub fn pty_path(args: &ShellArgs, (cols, rows): (u16, u16)) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("cols", &cols.to_string());
    query.append_pair("rows", &rows.to_string());
    if let Some(cmd) = &args.cmd {
        query.append_pair("cmd", cmd);
    }
    if let Some(user) = &args.user {
        query.append_pair("user", user);
    }
    format!("/v1/sandboxes/{}/pty?{}", segment(&args.id), query.finish())
}

/// `{"resize":{"cols":C,"rows":R}}`.
pub fn resize_message((cols, rows): (u16, u16)) -> String {
    serde_json::json!({"resize": {"cols": cols, "rows": rows}}).to_string()
}

pub async fn run(client: &Client, args: ShellArgs) -> Result<u8> {
    let interactive = std::io::stdin().is_terminal();
    let size = terminal::size().unwrap_or(DEFAULT_SIZE);
    let socket = connect(client, &pty_path(&args, size)).await?;
    let raw = if interactive {
        Some(terminal::RawMode::enter().context("putting the terminal in raw mode")?)
    } else {
        None
    };
    let outcome = session(socket, interactive).await;
    drop(raw);
    outcome
}

/// Opens the WebSocket; the agent's refusal (unknown sandbox, not
/// running, ...) comes back as its API error.
async fn connect(client: &Client, path: &str) -> Result<Socket, client::Error> {
    let url = client.ws_url(path);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|err| client::Error::Config(format!("cannot build a request to {url}: {err}")))?;
    if let Some(key) = client.api_key() {
        request.headers_mut().insert(API_KEY_HEADER, key.clone());
    }
    let unreachable = |reason: String| client::Error::Unreachable {
        url: client.base_url().to_owned(),
        reason,
    };
    let connected =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
            .map_err(|_| unreachable("no answer to the WebSocket handshake".into()))?;
    match connected {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => Err(client::api_error(
            response.status(),
            response.body().as_deref().unwrap_or_default(),
        )),
        Err(tungstenite::Error::Io(err)) => Err(unreachable(match err.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            _ => err.to_string(),
        })),
        Err(err) => Err(client::Error::Protocol {
            url: client.base_url().to_owned(),
            what: "a failed terminal handshake",
            reason: err.to_string(),
        }),
    }
}

/// Relays until the agent closes the session; the remote exit code.
async fn session(socket: Socket, interactive: bool) -> Result<u8> {
    let (mut sink, mut incoming) = socket.split();
    let mut input = stdin_reader()?;
    let mut input_open = true;
    let mut winch = signal(SignalKind::window_change()).context("watching SIGWINCH")?;
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut hangup = signal(SignalKind::hangup()).context("watching SIGHUP")?;
    let mut stdout = std::io::stdout();
    let mut exit = None;
    let mut remote_error = None;
    let mut eot_retry: Option<EotRetry> = None;
    loop {
        let eot_due = eot_retry.map_or_else(|| Instant::now() + EOT_MAX_PAUSE, |r| r.due());
        tokio::select! {
            message = incoming.next() => match message {
                Some(Ok(Message::Binary(data))) => {
                    stdout.write_all(&data)?;
                    stdout.flush()?;
                    if let Some(retry) = &mut eot_retry {
                        retry.output(Instant::now());
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    match serde_json::from_str::<ServerMessage>(text.as_str()) {
                        Ok(ServerMessage::Exit { code }) => exit = Some(code),
                        Ok(ServerMessage::Error { code, message }) => {
                            remote_error = Some(client::Error::Remote { code, message });
                        }
                        // A newer agent's message this petrel does not know.
                        Err(_) => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(_)) if exit.is_some() => break,
                Some(Err(err)) => {
                    return Err(anyhow::anyhow!("the terminal session broke: {err}"));
                }
            },
            bytes = input.recv(), if input_open => {
                let message = if let Some(bytes) = bytes {
                    Message::Binary(bytes.into())
                } else {
                    input_open = false;
                    if interactive {
                        continue;
                    }
                    eot_retry = Some(EotRetry::new(Instant::now()));
                    Message::Binary(vec![EOT].into())
                };
                if sink.send(message).await.is_err() && exit.is_none() {
                    // The agent closed first; its reason is coming.
                    input_open = false;
                }
            }
            () = tokio::time::sleep_until(eot_due), if eot_retry.is_some() => {
                if let Some(retry) = &mut eot_retry {
                    retry.sent(Instant::now());
                }
                let _ = sink.send(Message::Binary(vec![EOT].into())).await;
            }
            _ = winch.recv() => {
                if let Some(size) = terminal::size() {
                    let _ = sink.send(Message::Text(resize_message(size).into())).await;
                }
            }
            _ = term.recv() => {
                let _ = sink.close().await;
                return Ok(128 + 15);
            }
            _ = hangup.recv() => {
                let _ = sink.close().await;
                return Ok(128 + 1);
            }
        }
    }
    match (exit, remote_error) {
        (Some(code), _) => Ok(exit_status(code)),
        (None, Some(err)) => Err(err.into()),
        (None, None) => Err(anyhow::anyhow!(
            "the terminal session closed before the shell exited"
        )),
    }
}

/// Reads stdin on a thread of its own (a blocking read cannot be
/// cancelled; the thread ends with the process) and hands the chunks over.
/// The channel closes at end of file.
fn stdin_reader() -> Result<mpsc::Receiver<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0_u8; 4096];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        })
        .context("starting the stdin reader")?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pty_path_carries_the_size_and_encodes_the_command() {
        let args = ShellArgs {
            id: "abc".into(),
            cmd: Some("top -d 1".into()),
            user: Some("root".into()),
        };

        let path = pty_path(&args, (120, 40));

        assert_eq!(
            path,
            "/v1/sandboxes/abc/pty?cols=120&rows=40&cmd=top+-d+1&user=root"
        );
    }

    #[test]
    fn server_messages_parse() {
        let parsed = [
            serde_json::from_str::<ServerMessage>(r#"{"exit":{"code":7}}"#).unwrap(),
            serde_json::from_str::<ServerMessage>(
                r#"{"error":{"code":"envd_error","message":"gone"}}"#,
            )
            .unwrap(),
        ];

        assert_eq!(
            parsed,
            [
                ServerMessage::Exit { code: 7 },
                ServerMessage::Error {
                    code: "envd_error".into(),
                    message: "gone".into()
                }
            ]
        );
    }

    #[test]
    fn ctrl_d_is_retyped_after_quiet_pauses_that_double_up_to_a_limit() {
        let start = Instant::now();
        let mut retry = EotRetry::new(start);
        let first = retry.due();
        retry.output(start + Duration::from_millis(300));
        let after_output = retry.due();
        let mut pauses = Vec::new();
        for _ in 0..6 {
            let due = retry.due();
            retry.sent(due);
            pauses.push(retry.pause.as_millis());
        }

        assert_eq!(first, start + EOT_FIRST_PAUSE);
        assert_eq!(after_output, start + Duration::from_millis(800));
        assert_eq!(pauses, [1000, 2000, 4000, 5000, 5000, 5000]);
    }

    #[test]
    fn resize_is_the_documented_control_message() {
        let text = resize_message((100, 30));

        assert_eq!(text, r#"{"resize":{"cols":100,"rows":30}}"#);
    }
}
