//! A running QEMU process and its lifecycle.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::config::{NetConfig, TAP_FD, VmConfig};
use crate::console::log_tail;
use crate::error::QemuError;
use crate::qmp::QmpClient;

/// How long QEMU gets to create its QMP socket after the process started.
const QMP_STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SIGKILLed QEMU gets to be gone. Past it the process is held
/// in the kernel (a stuck device or accelerator call) and the kill fails,
/// naming where it waits, instead of waiting forever.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// A QEMU process we started (or adopted after an agent restart). Dropping
/// it kills the process (by its pid) unless [`QemuVm::detach`] was called.
#[derive(Debug)]
pub struct QemuVm {
    config: VmConfig,
    /// `None` for a process adopted from an earlier agent run: not our
    /// child, so it is watched through `/proc` instead.
    child: Option<Child>,
    pid: u32,
    qmp: QmpClient,
    armed: bool,
    /// Drains the console socket into the capped log.
    console: JoinHandle<()>,
}

impl QemuVm {
    /// Starts QEMU and returns once QMP answers. The guest is already
    /// booting unless the config asked for `-incoming defer`.
    pub async fn spawn(config: VmConfig) -> Result<Self, QemuError> {
        config.validate()?;
        std::fs::create_dir_all(config.socket_dir()).map_err(|source| QemuError::Io {
            what: "create run dir",
            path: config.socket_dir(),
            source,
        })?;
        remove_if_exists(&config.qmp_socket())?;
        remove_if_exists(&config.console_socket())?;
        let log = File::create(config.qemu_log()).map_err(|source| QemuError::Io {
            what: "create log",
            path: config.qemu_log(),
            source,
        })?;
        let log_err = log.try_clone().map_err(|source| QemuError::Io {
            what: "duplicate log handle",
            path: config.qemu_log(),
            source,
        })?;
        let started = Instant::now();
        let binary = if config.jail.is_some() {
            // Resolved now: inside the jail PATH is searched in its root.
            absolute_binary(&config.binary)?
        } else {
            config.binary.clone()
        };
        let mut command = Command::new(&binary);
        command
            .args(config.args())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(false);
        confine_on_exec(&mut command, &config)?;
        let mut child = command.spawn().map_err(|source| QemuError::Spawn {
            binary: config.binary.clone(),
            source,
        })?;
        let Some(pid) = child.id() else {
            return Err(early_exit(&config, &mut child).await);
        };
        tracing::debug!(vm = %config.id, pid, "qemu started");
        let console = drain_console(&config);
        let qmp = match wait_for_qmp(&config, &mut child).await {
            Ok(mut qmp) => {
                qmp.set_vm(&config.id);
                qmp
            }
            Err(err) => {
                console.abort();
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(err);
            }
        };
        tracing::info!(vm = %config.id, pid, qmp_ms = started.elapsed().as_millis() as u64, "qemu ready");
        Ok(Self {
            config,
            child: Some(child),
            pid,
            qmp,
            armed: true,
            console,
        })
    }

    /// Takes over a QEMU process started by an earlier run (e.g. before an
    /// agent restart): checks that `pid` is the QEMU of `config` (its
    /// command line names the QMP socket) and reconnects QMP.
    ///
    /// A QEMU started by an agent from before confinement has its QMP
    /// socket in the run dir itself (`run_dir/qmp.sock`) and its console in
    /// a plain file: it is adopted as it is (unconfined until its next
    /// pause and resume), so an upgrade loses no running sandbox.
    pub async fn adopt(config: VmConfig, pid: u32) -> Result<Self, QemuError> {
        let cmdline =
            std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|source| QemuError::Io {
                what: "read the command line of adopted pid",
                path: PathBuf::from(format!("/proc/{pid}")),
                source,
            })?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        let legacy_socket = config.run_dir.join("qmp.sock");
        let legacy = !cmdline.contains(&*config.qmp_socket().to_string_lossy())
            && cmdline.contains(&format!("unix:{},", legacy_socket.display()));
        let socket = if legacy {
            legacy_socket
        } else {
            config.qmp_socket()
        };
        if !cmdline.contains(&*socket.to_string_lossy()) {
            return Err(QemuError::Config(format!(
                "pid {pid} is not the QEMU of vm {} (its command line does not name {})",
                config.id,
                socket.display()
            )));
        }
        let mut qmp = QmpClient::connect(&socket).await?;
        qmp.set_vm(&config.id);
        // A legacy QEMU writes its console to the file itself.
        let console = if legacy {
            tokio::spawn(async {})
        } else {
            drain_console(&config)
        };
        tracing::info!(vm = %config.id, pid, legacy, "adopted running qemu");
        Ok(Self {
            config,
            child: None,
            pid,
            qmp,
            armed: true,
            console,
        })
    }

    /// The QEMU process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The configuration the VM was started with.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The QMP session.
    pub fn qmp(&mut self) -> &mut QmpClient {
        &mut self.qmp
    }

    /// `Some(description)` once the QEMU process has exited.
    pub fn exit_status(&mut self) -> Option<String> {
        match &mut self.child {
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(err) => Some(format!("unknown ({err})")),
            },
            None => (!pid_alive(self.pid)).then(|| "exited (adopted process)".to_string()),
        }
    }

    /// Waits until the guest's console shows `marker`; returns the time spent.
    pub async fn wait_for_console(
        &mut self,
        marker: &str,
        timeout: Duration,
    ) -> Result<Duration, QemuError> {
        let start = Instant::now();
        let path = self.config.console_log();
        loop {
            if console_contains(&path, marker) {
                return Ok(start.elapsed());
            }
            if let Some(status) = self.exit_status() {
                return Err(QemuError::ExitedEarly {
                    vm: self.config.id.clone(),
                    status,
                    log_tail: log_tail(&path, 20),
                });
            }
            if start.elapsed() > timeout {
                return Err(QemuError::ConsoleTimeout {
                    vm: self.config.id.clone(),
                    marker: marker.to_string(),
                    waited_ms: timeout.as_millis(),
                    log_tail: log_tail(&path, 20),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Asks QEMU to quit through QMP and waits up to `grace` for it to exit;
    /// kills it when it does not.
    pub async fn shutdown(&mut self, grace: Duration) -> Result<(), QemuError> {
        if self.exit_status().is_none() {
            // QEMU may close the socket before it answers; the wait decides.
            let _ = self.qmp.execute("quit", None).await;
            if tokio::time::timeout(grace, self.wait_exit()).await.is_err() {
                tracing::warn!(vm = %self.config.id, pid = self.pid, "qemu ignored quit, killing it");
                return self.kill().await;
            }
        }
        self.armed = false;
        Ok(())
    }

    /// Kills QEMU with SIGKILL (by its pid) and reaps it.
    pub async fn kill(&mut self) -> Result<(), QemuError> {
        if self.exit_status().is_none() {
            kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL).map_err(|source| {
                QemuError::Signal {
                    pid: self.pid,
                    source,
                }
            })?;
            if tokio::time::timeout(KILL_WAIT, self.wait_exit())
                .await
                .is_err()
            {
                // Stays armed: dropping the handle signals it again.
                return Err(QemuError::Unkillable {
                    pid: self.pid,
                    waited_ms: KILL_WAIT.as_millis(),
                    state: proc_state(self.pid).map_or_else(|| "?".to_string(), String::from),
                    wchan: std::fs::read_to_string(format!("/proc/{}/wchan", self.pid))
                        .map_or_else(|_| "?".to_string(), |w| w.trim().to_string()),
                });
            }
        }
        self.armed = false;
        Ok(())
    }

    /// Waits until the process is gone (reaped when it is our child).
    async fn wait_exit(&mut self) {
        match &mut self.child {
            Some(child) => {
                let _ = child.wait().await;
            }
            None => {
                while pid_alive(self.pid) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }

    /// Leaves the process running when this handle is dropped (for an
    /// orderly agent shutdown whose sandboxes keep running).
    pub fn detach(mut self) -> u32 {
        self.armed = false;
        self.pid
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        self.console.abort();
        if self.armed && self.exit_status().is_none() {
            tracing::warn!(vm = %self.config.id, pid = self.pid, "dropping a running VM: killing qemu");
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            if let Some(child) = &mut self.child {
                let _ = child.try_wait();
            }
        }
    }
}

fn drain_console(config: &VmConfig) -> JoinHandle<()> {
    crate::console::spawn_drain(
        config.console_socket(),
        config.console_log(),
        config.console_log_old(),
        config.console_cap_bytes,
    )
}

/// `binary` as an absolute path (searched in PATH when it has no `/`).
pub fn absolute_binary(binary: &Path) -> Result<PathBuf, QemuError> {
    if binary.components().count() > 1 {
        return std::path::absolute(binary).map_err(|source| QemuError::Spawn {
            binary: binary.to_path_buf(),
            source,
        });
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| QemuError::Spawn {
            binary: binary.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not found in PATH"),
        })
}

/// What the child does between fork and exec, in this order: join the
/// network namespace, open and attach the TAP (needs root), enter the jail
/// (cgroup, mount namespace, rlimits, uid drop), then put the TAP on
/// [`TAP_FD`] for `-netdev tap,fd=`.
fn confine_on_exec(command: &mut Command, config: &VmConfig) -> Result<(), QemuError> {
    let netns = match &config.netns {
        Some(path) => Some(File::open(path).map_err(|source| QemuError::Io {
            what: "open network namespace",
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let tap = match &config.net {
        NetConfig::Tap { ifname, .. } => Some(tap_request(ifname)?),
        _ => None,
    };
    let jail = match &config.jail {
        Some(jail) => Some(jail.prepare().map_err(|source| QemuError::Jail {
            vm: config.id.clone(),
            source,
        })?),
        None => None,
    };
    if netns.is_none() && tap.is_none() && jail.is_none() {
        return Ok(());
    }
    // SAFETY: the closure runs in the forked child before exec and only
    // makes system calls (setns, open, ioctl, dup2, fcntl and those of
    // `Prepared::enter`) on descriptors and buffers prepared in the parent
    // and owned by the closure; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if let Some(netns) = &netns {
                nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
            }
            let tap_fd = match &tap {
                Some(request) => Some(open_tap(request)?),
                None => None,
            };
            if let Some(jail) = &jail {
                jail.enter()?;
            }
            if let Some(fd) = tap_fd {
                if fd == TAP_FD {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, TAP_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}

/// The name of a TAP to attach to, as `struct ifreq` wants it.
#[derive(Debug, Clone, Copy)]
struct TapRequest {
    name: [libc::c_char; libc::IFNAMSIZ],
}

fn tap_request(ifname: &str) -> Result<TapRequest, QemuError> {
    let bytes = ifname.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(QemuError::Config(format!("bad TAP name {ifname:?}")));
    }
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    for (slot, byte) in name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    Ok(TapRequest { name })
}

/// Opens `/dev/net/tun` and attaches it to the TAP (no packet info, with
/// virtio-net headers, as QEMU asks for it); only system calls (runs
/// between fork and exec).
fn open_tap(request: &TapRequest) -> std::io::Result<i32> {
    // SAFETY: ifreq is plain data, all zeroes is a valid value; open and
    // ioctl get a C string literal and a pointer to that local ifreq.
    unsafe {
        let mut ifreq: libc::ifreq = std::mem::zeroed();
        ifreq.ifr_name = request.name;
        ifreq.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::ioctl(fd, libc::TUNSETIFF, &raw mut ifreq) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// Whether `pid` runs (a zombie counts as gone).
/// The state letter of `pid` (`R`, `S`, `D`, `Z`, ...), `None` when it is
/// gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state letter follows the parenthesised command name.
    stat.rsplit_once(") ")?.1.chars().next()
}

fn pid_alive(pid: u32) -> bool {
    proc_state(pid).is_some_and(|state| state != 'Z')
}

async fn wait_for_qmp(config: &VmConfig, child: &mut Child) -> Result<QmpClient, QemuError> {
    let socket = config.qmp_socket();
    let start = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return Err(early_exit(config, child).await);
        }
        if socket.exists() {
            match QmpClient::connect(&socket).await {
                Ok(client) => return Ok(client),
                Err(QemuError::QmpIo { .. }) => {}
                Err(other) => return Err(other),
            }
        }
        if start.elapsed() > QMP_STARTUP_TIMEOUT {
            return Err(QemuError::QmpTimeout {
                path: socket,
                waited_ms: start.elapsed().as_millis(),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn early_exit(config: &VmConfig, child: &mut Child) -> QemuError {
    let status = match child.wait().await {
        Ok(status) => status.to_string(),
        Err(err) => format!("unknown ({err})"),
    };
    QemuError::ExitedEarly {
        vm: config.id.clone(),
        status,
        log_tail: log_tail(&config.qemu_log(), 20),
    }
}

/// Whether the console log (at most the cap, see `console.rs`) shows
/// `marker`.
fn console_contains(path: &Path, marker: &str) -> bool {
    std::fs::read(path).is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(marker))
}

fn remove_if_exists(path: &Path) -> Result<(), QemuError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(QemuError::Io {
            what: "remove stale socket",
            path: path.to_path_buf(),
            source,
        }),
    }
}
