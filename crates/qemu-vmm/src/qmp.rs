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

/// How long a plain QMP command (`stop`, `cont`, `query-status`, ...) may
/// take unless [`QmpClient::set_command_timeout`] says otherwise: such a
/// command is answered in milliseconds by a QEMU that is alive.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A QMP session in command mode. Asynchronous events are logged and skipped.
///
/// Every call has a deadline ([`QemuError::QmpDeadline`] past it). Requests
/// carry an `id` and replies are matched by it, and a partly read line is
/// kept across calls, so a reply that comes after its call gave up is
/// skipped rather than taken for the next call's. A request cut off while
/// being written leaves the session unusable (later calls fail at once).
#[derive(Debug)]
pub struct QmpClient {
    path: PathBuf,
    /// Names the VM in errors (the socket path until [`QmpClient::set_vm`]).
    vm: String,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// The bytes of a line not fully read yet.
    partial: Vec<u8>,
    next_id: u64,
    command_timeout: Duration,
    /// Set when a request was cut off mid-write: the stream is garbled.
    broken: Option<String>,
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
            vm: path.display().to_string(),
            reader: BufReader::new(read),
            writer,
            partial: Vec::new(),
            next_id: 0,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            broken: None,
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

    /// Names the VM in errors (its id).
    pub fn set_vm(&mut self, vm: &str) {
        vm.clone_into(&mut self.vm);
    }

    /// Bounds each later [`execute`](Self::execute) (default
    /// [`DEFAULT_COMMAND_TIMEOUT`]).
    pub fn set_command_timeout(&mut self, timeout: Duration) {
        self.command_timeout = timeout;
    }

    /// Runs one command and returns its `return` value, within the command
    /// timeout ([`QemuError::QmpDeadline`] past it).
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QemuError> {
        let timeout = self.command_timeout;
        if let Some(why) = &self.broken {
            return Err(self.protocol(format!("{command}: the session is unusable: {why}")));
        }
        self.next_id += 1;
        let id = self.next_id;
        let request = match arguments {
            Some(arguments) => json!({ "execute": command, "arguments": arguments, "id": id }),
            None => json!({ "execute": command, "id": id }),
        };
        let mut line = request.to_string();
        line.push('\n');
        let mut written = false;
        let call = async {
            self.writer
                .write_all(line.as_bytes())
                .await
                .map_err(|source| self.io(source))?;
            written = true;
            self.read_reply(command, id).await
        };
        if let Ok(result) = tokio::time::timeout(timeout, call).await {
            return result;
        }
        if !written {
            self.broken = Some(format!("{command} was cut off while being sent"));
        }
        Err(self.deadline_error(command, timeout))
    }

    /// Reads messages until the reply to `command` (the one with `id`),
    /// logging events and skipping replies to calls that gave up earlier.
    async fn read_reply(&mut self, command: &str, id: u64) -> Result<Value, QemuError> {
        loop {
            let message = self.read_message().await?;
            if let Some(event) = message.get("event") {
                tracing::debug!(qmp = %self.path.display(), %event, "QMP event");
                continue;
            }
            if message.get("id").and_then(Value::as_u64) != Some(id) {
                tracing::debug!(qmp = %self.path.display(), %message, "late QMP reply skipped");
                continue;
            }
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
        }
    }

    /// Hands QEMU the descriptor `fd` under `name` (QMP `getfd`, the
    /// descriptor travelling as `SCM_RIGHTS` with the command), for a later
    /// `fd:NAME` URI. QEMU keeps its own copy; the caller may close `fd`.
    pub async fn send_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), QemuError> {
        if let Some(why) = &self.broken {
            return Err(self.protocol(format!("getfd: the session is unusable: {why}")));
        }
        self.next_id += 1;
        let id = self.next_id;
        let mut line =
            json!({ "execute": "getfd", "arguments": { "fdname": name }, "id": id }).to_string();
        line.push('\n');
        let raw = [fd.as_raw_fd()];
        let timeout = self.command_timeout;
        let mut written = false;
        let call = async {
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
            written = true;
            self.read_reply("getfd", id).await.map(drop)
        };
        if let Ok(result) = tokio::time::timeout(timeout, call).await {
            return result;
        }
        if !written {
            self.broken = Some("getfd was cut off while being sent".to_string());
        }
        Err(self.deadline_error("getfd", timeout))
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

    /// Reads one message. Cancel-safe: the bytes of a line cut off by a
    /// timeout stay in `partial` for the next read.
    async fn read_message(&mut self) -> Result<Value, QemuError> {
        loop {
            let read = self
                .reader
                .read_until(b'\n', &mut self.partial)
                .await
                .map_err(|source| self.io(source))?;
            if read == 0 {
                return Err(self.protocol("connection closed by QEMU".to_string()));
            }
            if self.partial.ends_with(b"\n") {
                break;
            }
        }
        let line = std::mem::take(&mut self.partial);
        serde_json::from_slice(&line).map_err(|e| {
            self.protocol(format!(
                "bad JSON {:?}: {e}",
                String::from_utf8_lossy(&line)
            ))
        })
    }

    /// The [`QemuError::QmpDeadline`] of `command` (or of a wait such as a
    /// migration's) after `timeout`.
    pub fn deadline_error(&self, command: &str, timeout: Duration) -> QemuError {
        QemuError::QmpDeadline {
            vm: self.vm.clone(),
            command: command.to_string(),
            path: self.path.clone(),
            waited_ms: timeout.as_millis(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A QMP server that greets, accepts `qmp_capabilities`, and answers
    /// each later request as `answer` decides (`None`: never).
    fn fake_qmp(
        path: &Path,
        answer: impl Fn(&Value) -> Option<Value> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            write
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let mut held: Vec<String> = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                let request: Value = serde_json::from_str(&line).unwrap();
                let reply = if request["execute"] == "qmp_capabilities" {
                    Some(json!({ "return": {}, "id": request["id"] }))
                } else {
                    answer(&request)
                };
                match reply {
                    Some(reply) => {
                        // Late replies to earlier requests go first.
                        for late in held.drain(..) {
                            write.write_all(late.as_bytes()).await.unwrap();
                        }
                        write
                            .write_all(format!("{reply}\n").as_bytes())
                            .await
                            .unwrap();
                    }
                    None => held.push(format!(
                        "{}\n",
                        json!({ "return": { "late": true }, "id": request["id"] })
                    )),
                }
            }
        })
    }

    #[tokio::test]
    async fn a_command_qemu_does_not_answer_fails_with_a_deadline_naming_it_and_the_vm() {
        // Arrange
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let server = fake_qmp(&socket, |_| None);
        let mut client = QmpClient::connect(&socket).await.unwrap();
        client.set_vm("vm7");
        client.set_command_timeout(Duration::from_millis(200));

        // Act
        let err = client.execute("stop", None).await.unwrap_err();

        // Assert
        assert!(
            matches!(&err, QemuError::QmpDeadline { vm, command, .. } if vm == "vm7" && command == "stop"),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("vm vm7: QMP stop did not finish within 200 ms")
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_late_reply_is_not_taken_for_the_next_commands() {
        // Arrange: the first query-status is answered only with the second.
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let first = std::sync::atomic::AtomicBool::new(true);
        let server = fake_qmp(&socket, move |request| {
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                None
            } else {
                Some(json!({ "return": { "status": "running" }, "id": request["id"] }))
            }
        });
        let mut client = QmpClient::connect(&socket).await.unwrap();
        client.set_command_timeout(Duration::from_millis(200));
        let timed_out = client.status().await;

        // Act
        client.set_command_timeout(Duration::from_secs(30));
        let status = client.status().await.unwrap();

        // Assert
        assert!(matches!(timed_out, Err(QemuError::QmpDeadline { .. })));
        assert_eq!(status, "running");
        server.abort();
    }
}
