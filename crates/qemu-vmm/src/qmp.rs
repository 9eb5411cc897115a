//! A minimal QMP (QEMU Machine Protocol) client over a Unix socket.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::error::QemuError;

/// A QMP session in command mode. Asynchronous events are logged and skipped.
#[derive(Debug)]
pub struct QmpClient {
    path: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl QmpClient {
    /// Connects, reads the greeting and negotiates capabilities.
    pub async fn connect(path: &Path) -> Result<Self, QemuError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QemuError::QmpIo {
                path: path.to_path_buf(),
                source,
            })?;
        let (read, writer) = stream.into_split();
        let mut client = Self {
            path: path.to_path_buf(),
            reader: BufReader::new(read),
            writer,
        };
        // QEMU serves one QMP client at a time: a second one gets no
        // greeting while the first stays connected.
        let greeting = tokio::time::timeout(Duration::from_secs(5), client.read_message())
            .await
            .map_err(|_| {
                client
                    .protocol("no QMP greeting within 5 s (another client connected?)".to_string())
            })??;
        if greeting.get("QMP").is_none() {
            return Err(client.protocol(format!("unexpected greeting {greeting}")));
        }
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    /// Connects, retrying until `timeout` while the socket is not there yet.
    pub async fn connect_with_retry(path: &Path, timeout: Duration) -> Result<Self, QemuError> {
        let start = Instant::now();
        loop {
            match Self::connect(path).await {
                Ok(client) => return Ok(client),
                Err(QemuError::QmpIo { .. }) if start.elapsed() < timeout => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(QemuError::QmpIo { .. }) => {
                    return Err(QemuError::QmpTimeout {
                        path: path.to_path_buf(),
                        waited_ms: start.elapsed().as_millis(),
                    });
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QemuError> {
        let request = match arguments {
            Some(arguments) => json!({ "execute": command, "arguments": arguments }),
            None => json!({ "execute": command }),
        };
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|source| self.io(source))?;
        self.read_reply(command).await
    }

    /// Reads messages until the reply to `command`, logging events.
    async fn read_reply(&mut self, command: &str) -> Result<Value, QemuError> {
        loop {
            let message = self.read_message().await?;
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                return Err(QemuError::QmpCommand {
                    command: command.to_string(),
                    class: error["class"].as_str().unwrap_or("unknown").to_string(),
                    desc: error["desc"].as_str().unwrap_or("").to_string(),
                });
            }
            if let Some(event) = message.get("event") {
                tracing::debug!(qmp = %self.path.display(), %event, "QMP event");
            }
        }
    }

    /// Hands QEMU the descriptor `fd` under `name` (QMP `getfd`, the
    /// descriptor travelling as `SCM_RIGHTS` with the command), for a later
    /// `fd:NAME` URI. QEMU keeps its own copy; the caller may close `fd`.
    pub async fn send_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), QemuError> {
        let mut line = json!({ "execute": "getfd", "arguments": { "fdname": name } }).to_string();
        line.push('\n');
        let raw = [fd.as_raw_fd()];
        let sent = loop {
            let stream: &UnixStream = self.writer.as_ref();
            if let Err(source) = stream.writable().await {
                return Err(self.io(source));
            }
            let attempt = stream.try_io(Interest::WRITABLE, || {
                let iov = [IoSlice::new(line.as_bytes())];
                let cmsg = [ControlMessage::ScmRights(&raw)];
                sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
                    .map_err(std::io::Error::from)
            });
            match attempt {
                Ok(n) => break n,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(source) => return Err(self.io(source)),
            }
        };
        if sent < line.len() {
            // The descriptor went with the first bytes; the rest of the
            // line is plain data.
            self.writer
                .write_all(&line.as_bytes()[sent..])
                .await
                .map_err(|source| self.io(source))?;
        }
        self.read_reply("getfd").await.map(drop)
    }

    /// Waits for an asynchronous event by name (e.g. `MIGRATION` or `STOP`)
    /// and returns it, for at most `timeout`.
    pub async fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Value, QemuError> {
        let wait = async {
            loop {
                let message = self.read_message().await?;
                if message.get("event").and_then(Value::as_str) == Some(name) {
                    return Ok(message);
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            self.protocol(format!("no {name} event within {} ms", timeout.as_millis()))
        })?
    }

    /// `query-status`'s `status` (`running`, `paused`, `inmigrate`, ...).
    pub async fn status(&mut self) -> Result<String, QemuError> {
        let value = self.execute("query-status", None).await?;
        value["status"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.protocol(format!("query-status answered {value}")))
    }

    async fn read_message(&mut self) -> Result<Value, QemuError> {
        let mut line = String::new();
        let read = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(|source| self.io(source))?;
        if read == 0 {
            return Err(self.protocol("connection closed by QEMU".to_string()));
        }
        serde_json::from_str(&line).map_err(|e| self.protocol(format!("bad JSON {line:?}: {e}")))
    }

    fn io(&self, source: std::io::Error) -> QemuError {
        QemuError::QmpIo {
            path: self.path.clone(),
            source,
        }
    }

    fn protocol(&self, message: String) -> QemuError {
        QemuError::QmpProtocol {
            path: self.path.clone(),
            message,
        }
    }
}
