use std::path::PathBuf;

/// What went wrong while running QEMU, naming the resource involved.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("failed to start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU for vm {vm} exited early ({status}); its log ends with:\n{log_tail}")]
    ExitedEarly {
        vm: String,
        status: String,
        log_tail: String,
    },
    #[error("QMP socket {path} did not come up within {waited_ms} ms")]
    QmpTimeout { path: PathBuf, waited_ms: u128 },
    #[error("QMP I/O on {path}: {source}")]
    QmpIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A QMP call (or a migration it started) did not finish within its
    /// deadline: QEMU is stuck, stopped or far too slow.
    #[error("vm {vm}: QMP {command} did not finish within {waited_ms} ms (socket {path})")]
    QmpDeadline {
        vm: String,
        command: String,
        path: PathBuf,
        waited_ms: u128,
    },
    #[error("QMP protocol error on {path}: {message}")]
    QmpProtocol { path: PathBuf, message: String },
    #[error("QMP command {command} failed: {class}: {desc}")]
    QmpCommand {
        command: String,
        class: String,
        desc: String,
    },
    #[error("{what} on {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "QEMU pid {pid} is still there {waited_ms} ms after SIGKILL (state {state}, waiting in {wchan}): the kernel holds it"
    )]
    Unkillable {
        pid: u32,
        waited_ms: u128,
        state: String,
        wchan: String,
    },
    #[error("failed to signal QEMU pid {pid}: {source}")]
    Signal {
        pid: u32,
        #[source]
        source: nix::Error,
    },
    #[error(
        "vm {vm}: the console did not show {marker:?} within {waited_ms} ms; it ends with:\n{log_tail}"
    )]
    ConsoleTimeout {
        vm: String,
        marker: String,
        waited_ms: u128,
        log_tail: String,
    },
    #[error("cannot confine QEMU of vm {vm}: {source}")]
    Jail {
        vm: String,
        #[source]
        source: jail::JailError,
    },
    #[error("invalid VM configuration: {0}")]
    Config(String),
}
