//! The process table: running processes by pid and tag, and the fan-out of
//! their output to every attached stream (`Start` and `Connect`).

use crate::error::EnvdError;
use crate::process::pty::PtyMaster;
use envd_proto::process::process_event::{DataEvent, EndEvent, data_event};
use envd_proto::process::{ProcessConfig, ProcessInfo, ProcessSelector, process_selector};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::io::AsyncWriteExt as _;
use tokio::process::ChildStdin;
use tokio::sync::mpsc;

/// One event of a running process, as delivered to subscribers.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Output (stdout, stderr or pty).
    Data(DataEvent),
    /// The process ended; always the last event.
    End(EndEvent),
}

#[derive(Debug, Default)]
struct Subscribers {
    senders: Vec<mpsc::UnboundedSender<Event>>,
    end: Option<EndEvent>,
}

/// A process started by envd.
#[derive(Debug)]
pub struct ProcessHandle {
    pid: u32,
    tag: Option<String>,
    config: ProcessConfig,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    pty: Option<Arc<PtyMaster>>,
    subscribers: Mutex<Subscribers>,
}

impl ProcessHandle {
    /// A handle for a just-spawned process.
    pub fn new(
        pid: u32,
        tag: Option<String>,
        config: ProcessConfig,
        stdin: Option<ChildStdin>,
        pty: Option<Arc<PtyMaster>>,
    ) -> Self {
        Self {
            pid,
            tag,
            config,
            stdin: tokio::sync::Mutex::new(stdin),
            pty,
            subscribers: Mutex::new(Subscribers::default()),
        }
    }

    /// The guest pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The tag given at start, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The `ProcessInfo` that `List` reports.
    pub fn info(&self) -> ProcessInfo {
        ProcessInfo {
            config: Some(self.config.clone()),
            pid: self.pid,
            tag: self.tag.clone(),
        }
    }

    fn subscribers(&self) -> MutexGuard<'_, Subscribers> {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Attaches a new listener: it gets all further output and the end
    /// event (immediately, if the process already ended).
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut subs = self.subscribers();
        match &subs.end {
            Some(end) => {
                // The receiver is alive: it is returned below.
                let _ = tx.send(Event::End(end.clone()));
            }
            None => subs.senders.push(tx),
        }
        rx
    }

    /// Delivers output to every listener (dropped after the end).
    pub fn publish(&self, output: data_event::Output) {
        let mut subs = self.subscribers();
        if subs.end.is_some() {
            return;
        }
        let event = Event::Data(DataEvent {
            output: Some(output),
        });
        subs.senders.retain(|tx| tx.send(event.clone()).is_ok());
    }

    /// Records the end and delivers it to every listener, detaching them.
    pub fn finish(&self, end: EndEvent) {
        let mut subs = self.subscribers();
        for tx in subs.senders.drain(..) {
            let _ = tx.send(Event::End(end.clone()));
        }
        subs.end = Some(end);
    }

    /// Whether the process has ended.
    pub fn has_ended(&self) -> bool {
        self.subscribers().end.is_some()
    }

    /// Writes to the process stdin (or to its terminal for a PTY process).
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), EnvdError> {
        let mut stdin = self.stdin.lock().await;
        match (stdin.as_mut(), &self.pty) {
            (Some(pipe), _) => pipe
                .write_all(data)
                .await
                .map_err(|e| EnvdError::io(format!("writing to stdin of {}", self.pid), &e)),
            (None, Some(pty)) => pty.write_all(data.to_vec()).await,
            (None, None) => Err(EnvdError::FailedPrecondition(format!(
                "stdin of process {} is not open",
                self.pid
            ))),
        }
    }

    /// Writes to the terminal of a PTY process.
    pub async fn write_pty(&self, data: &[u8]) -> Result<(), EnvdError> {
        let pty = self.pty.as_ref().ok_or_else(|| {
            EnvdError::FailedPrecondition(format!("process {} has no pty", self.pid))
        })?;
        pty.write_all(data.to_vec()).await
    }

    /// Closes stdin, so the process reads EOF.
    pub async fn close_stdin(&self) -> Result<(), EnvdError> {
        if self.pty.is_some() {
            return Err(EnvdError::FailedPrecondition(
                "cannot close stdin of a pty process, send Ctrl+D (0x04) instead".to_owned(),
            ));
        }
        let mut stdin = self.stdin.lock().await;
        match stdin.take() {
            Some(mut pipe) => {
                // Flush errors are irrelevant: the pipe is closed either way.
                let _ = pipe.shutdown().await;
                Ok(())
            }
            None => Err(EnvdError::FailedPrecondition(format!(
                "stdin of process {} is not open",
                self.pid
            ))),
        }
    }

    /// Resizes the terminal of a PTY process.
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), EnvdError> {
        let pty = self.pty.as_ref().ok_or_else(|| {
            EnvdError::FailedPrecondition(format!("process {} has no pty", self.pid))
        })?;
        pty.resize(cols, rows)
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) -> Result<(), EnvdError> {
        if self.has_ended() {
            return Err(EnvdError::NotFound(format!(
                "process with pid {} not found",
                self.pid
            )));
        }
        let pid = i32::try_from(self.pid)
            .map_err(|_| EnvdError::Internal(format!("pid {} out of range", self.pid)))?;
        nix::sys::signal::kill(Pid::from_raw(pid), signal)
            .map_err(|e| EnvdError::Internal(format!("sending {signal} to {pid}: {e}")))
    }
}

/// Running processes, by pid. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ProcessManager {
    table: Arc<Mutex<HashMap<u32, Arc<ProcessHandle>>>>,
}

impl ProcessManager {
    fn table(&self) -> MutexGuard<'_, HashMap<u32, Arc<ProcessHandle>>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a started process.
    pub fn insert(&self, handle: Arc<ProcessHandle>) {
        self.table().insert(handle.pid(), handle);
    }

    /// Forgets an ended process.
    pub fn remove(&self, pid: u32) {
        self.table().remove(&pid);
    }

    /// Finds a running process by pid or tag.
    pub fn get(&self, selector: Option<&ProcessSelector>) -> Result<Arc<ProcessHandle>, EnvdError> {
        let selector = selector
            .and_then(|s| s.selector.as_ref())
            .ok_or_else(|| EnvdError::InvalidArgument("process selector is required".to_owned()))?;
        let table = self.table();
        match selector {
            process_selector::Selector::Pid(pid) => table
                .get(pid)
                .cloned()
                .ok_or_else(|| EnvdError::NotFound(format!("process with pid {pid} not found"))),
            process_selector::Selector::Tag(tag) => table
                .values()
                .find(|h| h.tag() == Some(tag.as_str()))
                .cloned()
                .ok_or_else(|| EnvdError::NotFound(format!("process with tag {tag} not found"))),
        }
    }

    /// All running processes, by pid.
    pub fn list(&self) -> Vec<ProcessInfo> {
        let mut infos: Vec<ProcessInfo> = self.table().values().map(|h| h.info()).collect();
        infos.sort_by_key(|i| i.pid);
        infos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> ProcessHandle {
        ProcessHandle::new(
            42,
            Some("t".to_owned()),
            ProcessConfig::default(),
            None,
            None,
        )
    }

    fn end() -> EndEvent {
        EndEvent {
            exit_code: 0,
            exited: true,
            status: "exit status 0".to_owned(),
            error: None,
        }
    }

    #[test]
    fn late_subscriber_gets_the_end_event() {
        let handle = handle();
        handle.finish(end());

        let mut rx = handle.subscribe();

        assert_eq!(rx.try_recv().unwrap(), Event::End(end()));
    }

    #[test]
    fn output_after_the_end_is_dropped() {
        let handle = handle();
        let mut rx = handle.subscribe();
        handle.finish(end());

        handle.publish(data_event::Output::Stdout(b"late".to_vec()));

        assert_eq!(rx.try_recv().unwrap(), Event::End(end()));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn unknown_pid_is_not_found() {
        let manager = ProcessManager::default();
        let selector = ProcessSelector {
            selector: Some(process_selector::Selector::Pid(7)),
        };

        let err = manager.get(Some(&selector)).unwrap_err();

        assert!(matches!(err, EnvdError::NotFound(_)));
    }

    #[test]
    fn process_is_found_by_tag() {
        let manager = ProcessManager::default();
        manager.insert(Arc::new(handle()));
        let selector = ProcessSelector {
            selector: Some(process_selector::Selector::Tag("t".to_owned())),
        };

        let found = manager.get(Some(&selector)).unwrap();

        assert_eq!(found.pid(), 42);
    }
}
