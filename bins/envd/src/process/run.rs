//! Starting a process and supervising it: output readers, the exit waiter,
//! the deadline kill and the end event.

use crate::error::EnvdError;
use crate::process::manager::{Event, ProcessHandle, ProcessManager};
use crate::process::spawn::{SpawnSpec, spawn};
use envd_proto::process::ProcessConfig;
use envd_proto::process::process_event::{EndEvent, data_event};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::io::Read as _;
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// After the process exited, a pipe reader stops once the pipe stays empty
/// this long (a background grandchild may hold the pipes open forever).
const OUTPUT_GRACE: Duration = Duration::from_millis(250);
/// After the process exited, a pipe reader stops reading this long after
/// the exit even if output keeps coming (a grandchild printing forever);
/// output already read is still delivered, however slow its reader.
const OUTPUT_TAIL: Duration = Duration::from_secs(2);

/// Size of one read from stdout/stderr/pty, hence the largest data event.
const CHUNK: usize = 32 * 1024;

/// A process to start.
#[derive(Debug)]
pub struct StartOptions {
    /// What to spawn.
    pub spec: SpawnSpec,
    /// Tag for `Connect`/selectors.
    pub tag: Option<String>,
    /// The config reported by `List`.
    pub config: ProcessConfig,
    /// When set, the process (group) is killed at this instant.
    pub deadline: Option<Instant>,
}

/// Starts a process, registers it and returns its handle with a
/// subscription that sees all its output from the very first byte.
pub fn start(
    manager: &ProcessManager,
    options: StartOptions,
) -> Result<(Arc<ProcessHandle>, mpsc::Receiver<Event>), EnvdError> {
    let spawned = spawn(&options.spec)?;
    let mut child = spawned.child;
    let pid = child
        .id()
        .ok_or_else(|| EnvdError::Internal("spawned process has no pid".to_owned()))?;
    let pty = spawned.pty.map(Arc::new);
    let handle = Arc::new(ProcessHandle::new(
        pid,
        options.tag,
        options.config,
        child.stdin.take(),
        pty.clone(),
    ));
    let events = handle.subscribe();
    manager.insert(Arc::clone(&handle));
    tracing::info!(pid, cmd = %options.spec.cmd, user = %options.spec.user.name, "process started");

    let (exited_tx, exited) = watch::channel(None);
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    let mut pty_done = None;
    if let Some(stdout) = child.stdout.take() {
        readers.push(tokio::spawn(pump(
            stdout,
            Arc::clone(&handle),
            data_event::Output::Stdout,
            exited.clone(),
        )));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(tokio::spawn(pump(
            stderr,
            Arc::clone(&handle),
            data_event::Output::Stderr,
            exited,
        )));
    }
    if let Some(pty) = &pty {
        pty_done = Some(pump_pty(pty.reader()?, Arc::clone(&handle)));
    }

    let manager = manager.clone();
    let supervised = Arc::clone(&handle);
    tokio::spawn(async move {
        let handle = supervised;
        let status = wait_with_deadline(&mut child, pid, options.deadline).await;
        exited_tx.send_replace(Some(Instant::now()));
        drain_readers(readers, pty_done).await;
        let end = end_event(&status);
        tracing::info!(pid, status = %end.status, "process ended");
        let deliver = handle.finish(end);
        manager.remove(pid);
        deliver.await;
    });
    Ok((handle, events))
}

async fn wait_with_deadline(
    child: &mut tokio::process::Child,
    pid: u32,
    deadline: Option<Instant>,
) -> std::io::Result<ExitStatus> {
    let Some(deadline) = deadline else {
        return child.wait().await;
    };
    tokio::select! {
        status = child.wait() => status,
        () = tokio::time::sleep_until(deadline) => {
            tracing::info!(pid, "deadline reached, killing process group");
            // The child is not reaped yet, so its pid (= its process group,
            // it called setsid) cannot have been reused.
            if let Ok(raw) = i32::try_from(pid) {
                let _ = nix::sys::signal::killpg(Pid::from_raw(raw), Signal::SIGKILL);
            }
            let _ = child.start_kill();
            child.wait().await
        }
    }
}

/// Waits for the pipe readers (they stop on their own after the exit) and
/// gives the pty reader, a thread, [`OUTPUT_GRACE`] to finish.
async fn drain_readers(readers: Vec<JoinHandle<()>>, pty_done: Option<oneshot::Receiver<()>>) {
    for reader in readers {
        let _ = reader.await;
    }
    if let Some(done) = pty_done {
        let _ = tokio::time::timeout(OUTPUT_GRACE, done).await;
    }
}

/// Resolves once the process has exited and `quiet` more has passed.
async fn exited_and(exited: &mut watch::Receiver<Option<Instant>>, quiet: Duration) {
    // A dropped sender means the supervisor is gone: as good as exited.
    let _ = exited.wait_for(Option::is_some).await;
    tokio::time::sleep(quiet).await;
}

/// Copies a pipe into data events until EOF, or, after the process exited
/// (`exited`), until the pipe stays empty for [`OUTPUT_GRACE`] or
/// [`OUTPUT_TAIL`] has passed. Publishing waits for slow listeners, so a
/// process that prints faster than it is read blocks on its full pipe.
async fn pump<R>(
    mut reader: R,
    handle: Arc<ProcessHandle>,
    wrap: fn(Vec<u8>) -> data_event::Output,
    mut exited: watch::Receiver<Option<Instant>>,
) where
    R: AsyncRead + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let read = tokio::select! {
            // Output already in the pipe wins over the grace timer.
            biased;
            read = reader.read(&mut buf) => read,
            () = exited_and(&mut exited, OUTPUT_GRACE) => break,
        };
        match read {
            Ok(0) => break,
            Ok(n) => handle.publish(wrap(buf[..n].to_vec())).await,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(pid = handle.pid(), error = %e, "output pipe read failed");
                break;
            }
        }
        let exited_at = *exited.borrow();
        if exited_at.is_some_and(|at| at.elapsed() >= OUTPUT_TAIL) {
            tracing::debug!(
                pid = handle.pid(),
                "output still coming after the exit; stopped"
            );
            break;
        }
    }
}

/// Copies the pty master into data events on a thread (reads block) until
/// the terminal is closed (EIO); signals `done` when finished.
fn pump_pty(mut master: std::fs::File, handle: Arc<ProcessHandle>) -> oneshot::Receiver<()> {
    let (done_tx, done_rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("pty-{}", handle.pid()))
        .spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match master.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => handle.publish_blocking(data_event::Output::Pty(buf[..n].to_vec())),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // EIO: every slave descriptor is closed.
                    Err(_) => break,
                }
            }
            let _ = done_tx.send(());
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start pty reader thread");
    }
    done_rx
}

/// Human name of a signal, as Go's `os.ProcessState.String()` prints it.
fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "hangup",
        libc::SIGINT => "interrupt",
        libc::SIGQUIT => "quit",
        libc::SIGILL => "illegal instruction",
        libc::SIGTRAP => "trace/breakpoint trap",
        libc::SIGABRT => "aborted",
        libc::SIGBUS => "bus error",
        libc::SIGFPE => "floating point exception",
        libc::SIGKILL => "killed",
        libc::SIGUSR1 => "user defined signal 1",
        libc::SIGSEGV => "segmentation fault",
        libc::SIGUSR2 => "user defined signal 2",
        libc::SIGPIPE => "broken pipe",
        libc::SIGALRM => "alarm clock",
        libc::SIGTERM => "terminated",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

/// The `end` event for an exit status (exit code -1 when killed by a signal).
pub fn end_event(status: &std::io::Result<ExitStatus>) -> EndEvent {
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => {
                let text = format!("exit status {code}");
                EndEvent {
                    exit_code: code,
                    exited: true,
                    error: (code != 0).then(|| text.clone()),
                    status: text,
                }
            }
            (None, signal) => {
                let mut text = format!("signal: {}", signal_name(signal.unwrap_or(0)));
                if status.core_dumped() {
                    text.push_str(" (core dumped)");
                }
                EndEvent {
                    exit_code: -1,
                    exited: false,
                    error: Some(text.clone()),
                    status: text,
                }
            }
        },
        Err(e) => EndEvent {
            exit_code: -1,
            exited: false,
            status: "error".to_owned(),
            error: Some(e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_one_reports_exit_status_text() {
        let status = Ok(ExitStatus::from_raw(1 << 8));

        let end = end_event(&status);

        assert_eq!(end.exit_code, 1);
        assert!(end.exited);
        assert_eq!(end.status, "exit status 1");
        assert_eq!(end.error.as_deref(), Some("exit status 1"));
    }

    #[test]
    fn killed_process_reports_signal_and_minus_one() {
        let status = Ok(ExitStatus::from_raw(libc::SIGKILL));

        let end = end_event(&status);

        assert_eq!(end.exit_code, -1);
        assert!(!end.exited);
        assert_eq!(end.status, "signal: killed");
    }

    #[test]
    fn success_has_no_error() {
        let status = Ok(ExitStatus::from_raw(0));

        let end = end_event(&status);

        assert_eq!(end.error, None);
        assert_eq!(end.status, "exit status 0");
    }
}
