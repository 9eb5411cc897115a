//! A running QEMU process and its lifecycle.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::config::VmConfig;
use crate::error::QemuError;
use crate::qmp::QmpClient;

/// How long QEMU gets to create its QMP socket after the process started.
const QMP_STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

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
}

impl QemuVm {
    /// Starts QEMU and returns once QMP answers. The guest is already
    /// booting unless the config asked for `-incoming defer`.
    pub async fn spawn(config: VmConfig) -> Result<Self, QemuError> {
        config.validate()?;
        std::fs::create_dir_all(&config.run_dir).map_err(|source| QemuError::Io {
            what: "create run dir",
            path: config.run_dir.clone(),
            source,
        })?;
        remove_if_exists(&config.qmp_socket())?;
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
        let mut command = Command::new(&config.binary);
        command
            .args(config.args())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(false);
        if let Some(netns) = &config.netns {
            enter_netns_on_exec(&mut command, netns)?;
        }
        let mut child = command.spawn().map_err(|source| QemuError::Spawn {
            binary: config.binary.clone(),
            source,
        })?;
        let Some(pid) = child.id() else {
            return Err(early_exit(&config, &mut child).await);
        };
        tracing::debug!(vm = %config.id, pid, "qemu started");
        let qmp = match wait_for_qmp(&config, &mut child).await {
            Ok(qmp) => qmp,
            Err(err) => {
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
        })
    }

    /// Takes over a QEMU process started by an earlier run (e.g. before an
    /// agent restart): checks that `pid` is the QEMU of `config` (its
    /// command line names the QMP socket) and reconnects QMP.
    pub async fn adopt(config: VmConfig, pid: u32) -> Result<Self, QemuError> {
        let socket = config.qmp_socket();
        let cmdline =
            std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|source| QemuError::Io {
                what: "read the command line of adopted pid",
                path: PathBuf::from(format!("/proc/{pid}")),
                source,
            })?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !cmdline.contains(&*socket.to_string_lossy()) {
            return Err(QemuError::Config(format!(
                "pid {pid} is not the QEMU of vm {} (its command line does not name {})",
                config.id,
                socket.display()
            )));
        }
        let qmp = QmpClient::connect(&socket).await?;
        tracing::info!(vm = %config.id, pid, "adopted running qemu");
        Ok(Self {
            config,
            child: None,
            pid,
            qmp,
            armed: true,
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
            self.wait_exit().await;
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
        if self.armed && self.exit_status().is_none() {
            tracing::warn!(vm = %self.config.id, pid = self.pid, "dropping a running VM: killing qemu");
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            if let Some(child) = &mut self.child {
                let _ = child.try_wait();
            }
        }
    }
}

/// Makes the child join the network namespace at `path` before it execs.
fn enter_netns_on_exec(command: &mut Command, path: &Path) -> Result<(), QemuError> {
    let netns = File::open(path).map_err(|source| QemuError::Io {
        what: "open network namespace",
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: the closure runs in the forked child before exec and only
    // calls setns(2), which is async-signal-safe, on a descriptor opened
    // (and kept alive by the closure) in the parent.
    unsafe {
        command.pre_exec(move || {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    Ok(())
}

/// Whether `pid` runs (a zombie counts as gone).
fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state letter follows the parenthesised command name.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
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

fn console_contains(path: &Path, marker: &str) -> bool {
    std::fs::read(path).is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(marker))
}

/// The last `lines` lines of a text file (a console or QEMU log), or a
/// note that it could not be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
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
