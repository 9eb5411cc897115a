//! Starting, watching and stopping a `firecracker` process.

use std::env;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::client::FcClient;
use crate::error::LaunchError;

/// Environment variable naming the firecracker binary; see
/// [`find_firecracker`].
pub const FIRECRACKER_ENV: &str = "PETREL_FIRECRACKER";

/// Default of [`FirecrackerConfig::ready_timeout`].
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between two readiness polls.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Longest single readiness poll.
const READY_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);

/// How much of the end of the log an [`LaunchError::ExitedEarly`] carries.
const LOG_TAIL_BYTES: u64 = 4096;

/// Longest instance id firecracker accepts.
const MAX_INSTANCE_ID_LEN: usize = 64;

/// The firecracker binary to use: the path in `PETREL_FIRECRACKER` when that
/// is set and not empty (returned as is, so a wrong setting fails loudly at
/// spawn instead of silently skipping), else the first executable
/// `firecracker` file in a `PATH` directory. Empty `PATH` entries (the
/// current directory) are not searched.
pub fn find_firecracker() -> Option<PathBuf> {
    find_in(env::var_os(FIRECRACKER_ENV), env::var_os("PATH"))
}

fn find_in(explicit: Option<OsString>, path_var: Option<OsString>) -> Option<PathBuf> {
    if let Some(explicit) = explicit.filter(|value| !value.is_empty()) {
        return Some(PathBuf::from(explicit));
    }
    env::split_paths(&path_var?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join("firecracker"))
        .find(|candidate| is_executable_file(candidate))
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// How to start one firecracker process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrackerConfig {
    /// The firecracker binary.
    pub binary: PathBuf,
    /// Where firecracker creates its API socket (`--api-sock`). Its
    /// directory must exist. A stale socket left there by a dead process is
    /// removed before the start; a live one makes the start fail.
    pub api_socket: PathBuf,
    /// File (created if needed, appended to) that receives firecracker's
    /// stdout and stderr, which carry its log unless a `PUT /logger` moves
    /// it. `None` discards both. Also the file whose end an
    /// [`LaunchError::ExitedEarly`] carries.
    pub log_path: Option<PathBuf>,
    /// Where stdout and stderr go instead, opened write-only (e.g. a FIFO
    /// a caller drains into `log_path` with a size cap; its reader must be
    /// open before the spawn).
    pub output: Option<PathBuf>,
    /// Instance id (`--id`): 1 to 64 ASCII letters, digits or `-`.
    pub id: String,
    /// More arguments, after `--api-sock` and `--id` (`--level Debug`, say).
    pub extra_args: Vec<OsString>,
    /// How long [`FirecrackerProcess::spawn`] waits for the API to answer.
    pub ready_timeout: Duration,
}

impl FirecrackerConfig {
    /// A configuration with no log file, no extra arguments and the default
    /// ready timeout.
    pub fn new(
        binary: impl Into<PathBuf>,
        api_socket: impl Into<PathBuf>,
        id: impl Into<String>,
    ) -> Self {
        Self {
            binary: binary.into(),
            api_socket: api_socket.into(),
            log_path: None,
            output: None,
            id: id.into(),
            extra_args: Vec::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }

    /// The command line for this configuration:
    /// `BINARY --api-sock API_SOCKET --id ID EXTRA_ARGS...`.
    ///
    /// [`FirecrackerProcess::spawn_command`] takes it back, so a caller can
    /// adjust it in between (a `pre_exec` hook entering a network namespace,
    /// say). Standard streams are set at spawn and need no setting here.
    pub fn command(&self) -> std::process::Command {
        let mut command = std::process::Command::new(&self.binary);
        command
            .arg("--api-sock")
            .arg(&self.api_socket)
            .arg("--id")
            .arg(&self.id)
            .args(&self.extra_args);
        command
    }
}

/// A running firecracker process whose API has answered.
///
/// Dropping it kills the process (SIGKILL, by its own pid; the tokio runtime
/// reaps it) and removes the API socket, which firecracker leaves behind.
#[derive(Debug)]
pub struct FirecrackerProcess {
    handle: Handle,
    pid: u32,
    id: String,
    api_socket: PathBuf,
    log_path: Option<PathBuf>,
    client: FcClient,
    socket_removed: bool,
}

/// How the process is held.
#[derive(Debug)]
enum Handle {
    /// Our child (spawned here).
    Child(tokio::process::Child),
    /// Not our child (adopted): watched and killed through a pidfd. Its
    /// exit status is not ours to read: reported as killed by SIGKILL
    /// when this handle killed it, else as exit code 0.
    Adopted {
        pidfd: std::os::fd::OwnedFd,
        killed: bool,
    },
}

impl FirecrackerProcess {
    /// Takes over firecracker `pid`, started by an earlier run of this
    /// program with `config`'s API socket (checked on its command line, so
    /// a reused pid is refused) and answering on it. Dropping or killing
    /// the handle kills the process, as for a spawned one.
    pub async fn adopt(pid: u32, config: FirecrackerConfig) -> Result<Self, LaunchError> {
        let not_adoptable = |reason: String| LaunchError::NotAdoptable {
            id: config.id.clone(),
            pid,
            socket: config.api_socket.clone(),
            reason,
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map_err(|e| not_adoptable(format!("cannot read its command line: {e}")))?;
        let mut args = cmdline.split(|b| *b == 0);
        let names_socket = args
            .by_ref()
            .skip_while(|arg| *arg != b"--api-sock")
            .nth(1)
            .is_some_and(|arg| Path::new(std::ffi::OsStr::from_bytes(arg)) == config.api_socket);
        if !names_socket {
            return Err(not_adoptable(
                "its command line does not name this API socket".to_string(),
            ));
        }
        let pidfd =
            crate::pidfd::open(pid).map_err(|e| not_adoptable(format!("pidfd_open: {e}")))?;
        let client = FcClient::new(&config.api_socket);
        match tokio::time::timeout(config.ready_timeout, client.describe_instance()).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return Err(not_adoptable(format!("its API fails: {err}"))),
            Err(_) => {
                return Err(not_adoptable(format!(
                    "its API did not answer within {:?}",
                    config.ready_timeout
                )));
            }
        }
        Ok(Self {
            handle: Handle::Adopted {
                pidfd,
                killed: false,
            },
            pid,
            client,
            id: config.id,
            api_socket: config.api_socket,
            log_path: config.log_path,
            socket_removed: false,
        })
    }

    /// Starts firecracker as `config` says and waits, up to
    /// `config.ready_timeout`, until `GET /` on its API socket answers.
    ///
    /// On a timeout the process is killed and the socket removed; if the
    /// process exits first, the error carries the end of its log.
    pub async fn spawn(config: FirecrackerConfig) -> Result<Self, LaunchError> {
        let command = config.command();
        Self::spawn_command(config, command).await
    }

    /// Like [`spawn`](Self::spawn), running `command` instead of
    /// `config.command()`. `command` should come from `config.command()`:
    /// the socket, id and log of `config` are what the launcher watches and
    /// cleans up. Its standard streams are replaced (stdin from /dev/null,
    /// stdout and stderr to the log).
    pub async fn spawn_command(
        config: FirecrackerConfig,
        command: std::process::Command,
    ) -> Result<Self, LaunchError> {
        check_instance_id(&config.id)?;
        clear_stale_socket(&config.api_socket)?;
        let (stdout, stderr) = match &config.output {
            Some(output) => output_streams(output)?,
            None => log_streams(config.log_path.as_deref())?,
        };

        let mut command = tokio::process::Command::from(command);
        command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        let child = command.spawn().map_err(|source| LaunchError::Spawn {
            binary: config.binary.clone(),
            source,
        })?;
        // `id()` is only `None` once the child has been reaped, which
        // nothing has done yet.
        let pid = child.id().ok_or_else(|| LaunchError::Spawn {
            binary: config.binary.clone(),
            source: io::Error::other("the child had no pid right after spawning"),
        })?;
        tracing::debug!(pid, id = %config.id, socket = %config.api_socket.display(), "started firecracker");

        let mut process = Self {
            handle: Handle::Child(child),
            pid,
            client: FcClient::new(&config.api_socket),
            id: config.id,
            api_socket: config.api_socket,
            log_path: config.log_path,
            socket_removed: false,
        };
        process.wait_for_api(config.ready_timeout).await?;
        Ok(process)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The API socket.
    pub fn api_socket(&self) -> &Path {
        &self.api_socket
    }

    /// The log file, if any.
    pub fn log_path(&self) -> Option<&Path> {
        self.log_path.as_deref()
    }

    /// A client of this process's API.
    pub fn client(&self) -> &FcClient {
        &self.client
    }

    /// The exit status if the process has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, LaunchError> {
        use std::os::unix::process::ExitStatusExt;
        match &mut self.handle {
            Handle::Child(child) => child.try_wait(),
            Handle::Adopted { pidfd, killed } => crate::pidfd::exited(pidfd).map(|exited| {
                exited.then(|| ExitStatus::from_raw(if *killed { libc::SIGKILL } else { 0 }))
            }),
        }
        .map_err(|source| self.process_error("waiting for", source))
    }

    /// Kills the process with SIGKILL (unless it has already exited), reaps
    /// it and removes the API socket. Calling it again returns the same
    /// status.
    pub async fn kill(&mut self) -> Result<ExitStatus, LaunchError> {
        let status = if let Some(status) = self.try_wait()? {
            status
        } else {
            let waited = match &mut self.handle {
                Handle::Child(child) => match child.start_kill() {
                    Ok(()) => child.wait().await,
                    Err(err) => Err(err),
                },
                Handle::Adopted { pidfd, killed } => {
                    let sent = crate::pidfd::kill(pidfd);
                    *killed = sent.is_ok();
                    match sent {
                        // Not our child: its parent (init) reaps it.
                        Ok(()) => wait_exited(pidfd).await,
                        Err(err) => Err(err),
                    }
                }
            };
            let waited = waited.map_err(|source| self.process_error("killing", source))?;
            match &self.handle {
                Handle::Child(_) => waited,
                Handle::Adopted { .. } => {
                    std::os::unix::process::ExitStatusExt::from_raw(libc::SIGKILL)
                }
            }
        };
        self.remove_socket()?;
        Ok(status)
    }

    /// Polls the API until it answers, the process exits, or `timeout`
    /// passes (then kills the process).
    async fn wait_for_api(&mut self, timeout: Duration) -> Result<(), LaunchError> {
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                // Whatever the process left at the socket path is stale now.
                let _ = self.remove_socket();
                return Err(LaunchError::ExitedEarly {
                    id: self.id.clone(),
                    pid: self.pid,
                    socket: self.api_socket.clone(),
                    status,
                    log_tail: self.log_tail(),
                });
            }
            let attempt_deadline = (Instant::now() + READY_ATTEMPT_TIMEOUT).min(deadline);
            let last_error =
                match tokio::time::timeout_at(attempt_deadline, self.client.describe_instance())
                    .await
                {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(err)) => err.to_string(),
                    Err(_elapsed) => "GET / did not answer in time".to_owned(),
                };
            if Instant::now() >= deadline {
                if let Err(err) = self.kill().await {
                    tracing::warn!(%err, "cleaning up firecracker that never answered");
                }
                return Err(LaunchError::NotReady {
                    id: self.id.clone(),
                    pid: self.pid,
                    socket: self.api_socket.clone(),
                    waited: started.elapsed(),
                    last_error,
                });
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
    }

    /// Removes the API socket once; a socket already gone is fine.
    fn remove_socket(&mut self) -> Result<(), LaunchError> {
        if self.socket_removed {
            return Ok(());
        }
        match fs::remove_file(&self.api_socket) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(LaunchError::Io {
                what: "removing API socket",
                path: self.api_socket.clone(),
                source: err,
            }),
            _ => {
                self.socket_removed = true;
                Ok(())
            }
        }
    }

    /// The end of the log file, for error messages.
    fn log_tail(&self) -> String {
        let Some(path) = &self.log_path else {
            return "(no log file configured)".to_owned();
        };
        read_tail(path, LOG_TAIL_BYTES)
            .unwrap_or_else(|err| format!("(log file {} unreadable: {err})", path.display()))
    }

    fn process_error(&self, what: &'static str, source: io::Error) -> LaunchError {
        LaunchError::Process {
            what,
            id: self.id.clone(),
            pid: self.pid,
            source,
        }
    }
}

impl Drop for FirecrackerProcess {
    fn drop(&mut self) {
        // Kill before removing the socket so nothing can answer on a path
        // that is being cleaned up; `kill_on_drop` would only do it after
        // this function, and the runtime reaps the child.
        match &mut self.handle {
            Handle::Child(child) => {
                if matches!(child.try_wait(), Ok(None)) {
                    let _ = child.start_kill();
                }
            }
            Handle::Adopted { pidfd, .. } => {
                let _ = crate::pidfd::kill(pidfd);
            }
        }
        if let Err(err) = self.remove_socket() {
            tracing::warn!(%err, "dropping firecracker process");
        }
    }
}

/// Waits until the process behind `pidfd` has exited (SIGKILL was sent).
async fn wait_exited(pidfd: &std::os::fd::OwnedFd) -> io::Result<ExitStatus> {
    loop {
        if crate::pidfd::exited(pidfd)? {
            return Ok(std::os::unix::process::ExitStatusExt::from_raw(
                libc::SIGKILL,
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Firecracker aborts at startup on an id that is not 1 to 64 alphanumeric
/// characters or `-`; refuse it here with a proper error (ASCII only).
fn check_instance_id(id: &str) -> Result<(), LaunchError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_INSTANCE_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(LaunchError::InvalidInstanceId { id: id.to_owned() })
    }
}

/// Makes the socket path free for firecracker, which refuses to start when
/// something is there: removes a socket nobody listens on, refuses a live
/// socket or anything that is not a socket.
fn clear_stale_socket(socket: &Path) -> Result<(), LaunchError> {
    let meta = match fs::symlink_metadata(socket) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(LaunchError::Io {
                what: "inspecting API socket path",
                path: socket.to_path_buf(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(LaunchError::SocketPathOccupied {
            socket: socket.to_path_buf(),
        });
    }
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(LaunchError::SocketInUse {
            socket: socket.to_path_buf(),
        });
    }
    tracing::debug!(socket = %socket.display(), "removing stale firecracker API socket");
    fs::remove_file(socket).map_err(|source| LaunchError::Io {
        what: "removing stale API socket",
        path: socket.to_path_buf(),
        source,
    })
}

/// Stdout and stderr for the child: both appending to the log file, or
/// both discarded.
fn log_streams(log_path: Option<&Path>) -> Result<(Stdio, Stdio), LaunchError> {
    let Some(path) = log_path else {
        return Ok((Stdio::null(), Stdio::null()));
    };
    let io_error = |source| LaunchError::Io {
        what: "opening log file",
        path: path.to_path_buf(),
        source,
    };
    let stdout = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_error)?;
    let stderr = stdout.try_clone().map_err(io_error)?;
    Ok((Stdio::from(stdout), Stdio::from(stderr)))
}

/// Stdout and stderr for the child: both writing to `path` (no create, no
/// append: a FIFO works).
fn output_streams(path: &Path) -> Result<(Stdio, Stdio), LaunchError> {
    let io_error = |source| LaunchError::Io {
        what: "opening output",
        path: path.to_path_buf(),
        source,
    };
    let stdout = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error)?;
    let stderr = stdout.try_clone().map_err(io_error)?;
    Ok((Stdio::from(stdout), Stdio::from(stderr)))
}

/// The last `max` bytes of the file at `path`, as lossy UTF-8.
fn read_tail(path: &Path, max: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::os::unix::process::ExitStatusExt;

    use tempfile::TempDir;

    use super::*;
    use crate::models::InstanceState;

    /// A stand-in for firecracker: takes `--api-sock` and `--id`, waits a
    /// little, then answers `GET /` on the socket like a fresh instance.
    const FAKE_FIRECRACKER: &str = r#"
import http.server, json, socketserver, sys, time
args = sys.argv[1:]
sock = args[args.index("--api-sock") + 1]
vm_id = args[args.index("--id") + 1]

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def address_string(self):
        return "unix"
    def do_GET(self):
        body = json.dumps({"app_name": "Firecracker", "id": vm_id,
                           "state": "Not started", "vmm_version": "0.0.0-fake"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

print("fake firecracker starting", flush=True)
time.sleep(0.2)
Server(sock, Handler).serve_forever()
"#;

    struct Fixture {
        dir: TempDir,
        config: FirecrackerConfig,
    }

    /// A config whose socket and log live in a fresh temporary directory.
    fn fixture(binary: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = FirecrackerConfig::new(binary, dir.path().join("api.sock"), "vm-test-1");
        config.log_path = Some(dir.path().join("firecracker.log"));
        config.ready_timeout = Duration::from_secs(10);
        Fixture { dir, config }
    }

    /// `python3 FAKE --api-sock SOCKET --id ID`, run through the script
    /// interpreter rather than exec'ing a freshly written file (which races
    /// with concurrent forks into ETXTBSY).
    fn fake_command(fixture: &Fixture) -> std::process::Command {
        let script = fixture.dir.path().join("fake_firecracker.py");
        fs::write(&script, FAKE_FIRECRACKER).unwrap();
        let mut command = std::process::Command::new("python3");
        command
            .arg(script)
            .arg("--api-sock")
            .arg(&fixture.config.api_socket)
            .arg("--id")
            .arg(&fixture.config.id);
        command
    }

    fn process_exists(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn command_passes_api_sock_id_and_extra_args() {
        let mut config = FirecrackerConfig::new("/opt/fc/firecracker", "/run/vm.sock", "vm-1");
        config.extra_args = vec!["--level".into(), "Debug".into()];

        let command = config.command();

        assert_eq!(command.get_program(), "/opt/fc/firecracker");
        assert_eq!(
            command.get_args().collect::<Vec<_>>(),
            [
                "--api-sock",
                "/run/vm.sock",
                "--id",
                "vm-1",
                "--level",
                "Debug"
            ]
        );
    }

    #[test]
    fn find_in_prefers_explicit_env_value() {
        let path_var = OsString::from("/usr/bin");

        let found = find_in(Some("/opt/fc/firecracker".into()), Some(path_var));

        assert_eq!(found, Some(PathBuf::from("/opt/fc/firecracker")));
    }

    #[test]
    fn find_in_searches_path_for_executable() {
        let empty = tempfile::tempdir().unwrap();
        let with_binary = tempfile::tempdir().unwrap();
        let binary = with_binary.path().join("firecracker");
        fs::write(&binary, "").unwrap();
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
        let path_var = env::join_paths([empty.path(), with_binary.path()]).unwrap();

        let found = find_in(Some(OsString::new()), Some(path_var));

        assert_eq!(found, Some(binary));
    }

    #[test]
    fn find_in_skips_non_executable_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("firecracker"), "").unwrap();
        let path_var = env::join_paths([dir.path()]).unwrap();

        let found = find_in(None, Some(path_var));

        assert_eq!(found, None);
    }

    #[test]
    fn find_in_without_path_finds_nothing() {
        let found = find_in(None, None);

        assert_eq!(found, None);
    }

    #[test]
    fn check_instance_id_accepts_firecracker_ids() {
        let results = ["a", "vm-1", "ABC-123", &"x".repeat(64)].map(check_instance_id);

        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }

    #[test]
    fn check_instance_id_rejects_what_firecracker_aborts_on() {
        let results = ["", "vm_1", "vm.1", "../vm", "vm 1", &"x".repeat(65)].map(check_instance_id);

        assert!(results.iter().all(Result::is_err), "{results:?}");
    }

    #[tokio::test]
    async fn spawn_rejects_invalid_instance_id() {
        let mut fixture = fixture("/bin/false");
        fixture.config.id = "vm_1".to_owned();

        let result = FirecrackerProcess::spawn(fixture.config).await;

        assert!(matches!(result, Err(LaunchError::InvalidInstanceId { ref id }) if id == "vm_1"));
    }

    #[tokio::test]
    async fn spawn_rejects_socket_in_use() {
        let fixture = fixture("/bin/false");
        let _listener = UnixListener::bind(&fixture.config.api_socket).unwrap();
        let socket = fixture.config.api_socket.clone();

        let result = FirecrackerProcess::spawn(fixture.config).await;

        assert!(matches!(result, Err(LaunchError::SocketInUse { socket: ref s }) if *s == socket));
        assert!(socket.exists());
    }

    #[tokio::test]
    async fn spawn_rejects_regular_file_at_socket_path() {
        let fixture = fixture("/bin/false");
        fs::write(&fixture.config.api_socket, "not a socket").unwrap();

        let result = FirecrackerProcess::spawn(fixture.config).await;

        assert!(matches!(
            result,
            Err(LaunchError::SocketPathOccupied { .. })
        ));
    }

    #[tokio::test]
    async fn spawn_reports_missing_binary() {
        let fixture = fixture("/nonexistent/firecracker");

        let err = FirecrackerProcess::spawn(fixture.config).await.unwrap_err();

        assert!(matches!(err, LaunchError::Spawn { .. }));
        assert!(
            err.to_string()
                .starts_with("starting /nonexistent/firecracker: "),
            "{err}"
        );
    }

    #[tokio::test]
    async fn spawn_reports_log_file_that_cannot_be_opened() {
        let mut fixture = fixture("/bin/false");
        fixture.config.log_path = Some(fixture.dir.path().join("missing-dir/fc.log"));

        let result = FirecrackerProcess::spawn(fixture.config).await;

        assert!(matches!(
            result,
            Err(LaunchError::Io {
                what: "opening log file",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn spawn_reports_early_exit() {
        let fixture = fixture("/bin/false");

        let err = FirecrackerProcess::spawn(fixture.config).await.unwrap_err();

        assert!(
            matches!(err, LaunchError::ExitedEarly { ref status, .. } if status.code() == Some(1)),
            "{err}"
        );
    }

    #[tokio::test]
    async fn spawn_command_reports_early_exit_with_log_tail() {
        let fixture = fixture("sh");
        let mut command = std::process::Command::new("sh");
        command.args(["-c", "echo 'Error: Invalid instance ID' >&2; exit 3"]);

        let err = FirecrackerProcess::spawn_command(fixture.config, command)
            .await
            .unwrap_err();

        let LaunchError::ExitedEarly {
            status, log_tail, ..
        } = err
        else {
            panic!("expected ExitedEarly, got {err}");
        };
        assert_eq!(
            (status.code(), log_tail.as_str()),
            (Some(3), "Error: Invalid instance ID\n")
        );
    }

    #[tokio::test]
    async fn spawn_command_times_out_and_kills_silent_process() {
        let mut fixture = fixture("sleep");
        fixture.config.ready_timeout = Duration::from_millis(200);
        let socket = fixture.config.api_socket.clone();
        let mut command = std::process::Command::new("sleep");
        command.arg("30");

        let err = FirecrackerProcess::spawn_command(fixture.config, command)
            .await
            .unwrap_err();

        let LaunchError::NotReady { pid, .. } = err else {
            panic!("expected NotReady, got {err}");
        };
        assert!(!process_exists(pid), "pid {pid} still exists");
        assert!(!socket.exists());
    }

    #[tokio::test]
    async fn spawn_command_waits_for_api_and_kill_removes_socket() {
        let fixture = fixture("python3");
        let command = fake_command(&fixture);

        let mut process = FirecrackerProcess::spawn_command(fixture.config, command)
            .await
            .unwrap();
        let info = process.client().describe_instance().await.unwrap();
        let (pid, socket) = (process.pid(), process.api_socket().to_path_buf());
        let status = process.kill().await.unwrap();

        assert_eq!(
            (info.id.as_str(), info.state),
            ("vm-test-1", InstanceState::NotStarted)
        );
        assert_eq!(status.signal(), Some(9));
        assert!(!socket.exists());
        assert!(!process_exists(pid), "pid {pid} still exists");
    }

    #[tokio::test]
    async fn adopt_takes_over_a_process_it_did_not_start_and_kills_it() {
        // Arrange: a fake firecracker started by someone else (a std
        // child, as if by an earlier agent run), answering on its socket.
        let fixture = fixture("python3");
        let mut started = fake_command(&fixture).spawn().unwrap();
        let pid = started.id();
        let client = FcClient::new(&fixture.config.api_socket);
        let answered = tokio::time::timeout(Duration::from_secs(10), async {
            while client.describe_instance().await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(answered.is_ok(), "the fake never answered");

        // Act
        let mut adopted = FirecrackerProcess::adopt(pid, fixture.config.clone())
            .await
            .unwrap();
        let before = adopted.try_wait().unwrap();
        let info = adopted.client().describe_instance().await.unwrap();
        let status = adopted.kill().await.unwrap();
        let reaped = started.wait().unwrap();

        // Assert
        assert_eq!(before, None);
        assert_eq!(info.id, "vm-test-1");
        assert_eq!(status.signal(), Some(9));
        assert_eq!(reaped.signal(), Some(9));
        assert!(!fixture.config.api_socket.exists());
    }

    #[tokio::test]
    async fn adopt_refuses_a_process_that_does_not_serve_the_socket() {
        let fixture = fixture("python3");

        let err = FirecrackerProcess::adopt(std::process::id(), fixture.config.clone())
            .await
            .unwrap_err();

        assert!(matches!(err, LaunchError::NotAdoptable { .. }), "{err}");
        assert!(
            err.to_string().contains("does not name this API socket"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn kill_twice_returns_same_status() {
        let fixture = fixture("python3");
        let command = fake_command(&fixture);
        let mut process = FirecrackerProcess::spawn_command(fixture.config, command)
            .await
            .unwrap();

        let first = process.kill().await.unwrap();
        let second = process.kill().await.unwrap();

        assert_eq!(first, second);
    }

    #[tokio::test]
    async fn drop_kills_process_and_removes_socket() {
        let fixture = fixture("python3");
        let command = fake_command(&fixture);
        let process = FirecrackerProcess::spawn_command(fixture.config, command)
            .await
            .unwrap();
        let socket = process.api_socket().to_path_buf();
        let pid = process.pid();

        drop(process);
        let killed = tokio::time::timeout(Duration::from_secs(5), async {
            while process_exists(pid) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;

        assert!(!socket.exists());
        assert!(killed.is_ok(), "pid {pid} still exists");
    }

    #[tokio::test]
    async fn spawn_command_removes_stale_socket() {
        let fixture = fixture("python3");
        drop(UnixListener::bind(&fixture.config.api_socket).unwrap());
        let command = fake_command(&fixture);

        let mut process = FirecrackerProcess::spawn_command(fixture.config, command)
            .await
            .unwrap();
        let info = process.client().describe_instance().await;
        process.kill().await.unwrap();

        assert_eq!(info.unwrap().state, InstanceState::NotStarted);
    }

    #[tokio::test]
    async fn log_file_receives_process_output() {
        let fixture = fixture("python3");
        let log = fixture.config.log_path.clone().unwrap();
        let command = fake_command(&fixture);

        let mut process = FirecrackerProcess::spawn_command(fixture.config, command)
            .await
            .unwrap();
        process.kill().await.unwrap();

        assert_eq!(
            fs::read_to_string(log).unwrap(),
            "fake firecracker starting\n"
        );
    }
}
