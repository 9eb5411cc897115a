//! The process table: running processes by pid and tag, and the fan-out of
//! their output to every attached stream (`Start` and `Connect`).
//!
//! Each attached stream has a small bounded queue ([`LISTENER_QUEUE`]
//! events). When a stream's reader falls behind, publishing waits for it,
//! so the output pipe fills and the process blocks in `write`: a process
//! that prints faster than its reader reads (`head -c 2G /dev/zero` read
//! over a slow link) costs envd at most a queue per stream, not the guest's
//! memory. A stream that goes away (its connection closed) stops holding
//! the process back at once; with no stream attached, output is dropped.

use crate::error::EnvdError;
use crate::process::pty::PtyMaster;
use envd_proto::process::process_event::{DataEvent, EndEvent, data_event};
use envd_proto::process::{ProcessConfig, ProcessInfo, ProcessSelector, process_selector};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::collections::HashMap;
use std::future::Future;
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

/// Events queued for one attached stream before publishing waits for it
/// (each data event holds at most one 32 KiB read: ~0.5 MiB per stream).
pub const LISTENER_QUEUE: usize = 16;

#[derive(Debug, Default)]
struct Subscribers {
    senders: Vec<mpsc::Sender<Event>>,
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
    pub fn subscribe(&self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(LISTENER_QUEUE);
        let mut subs = self.subscribers();
        match &subs.end {
            Some(end) => {
                // The queue is empty and its receiver is returned below.
                let _ = tx.try_send(Event::End(end.clone()));
            }
            None => subs.senders.push(tx),
        }
        rx
    }

    /// The listeners to deliver output to, or `None` after the end.
    fn listeners(&self, output: data_event::Output) -> Option<(Vec<mpsc::Sender<Event>>, Event)> {
        let subs = self.subscribers();
        if subs.end.is_some() || subs.senders.is_empty() {
            return None;
        }
        let event = Event::Data(DataEvent {
            output: Some(output),
        });
        Some((subs.senders.clone(), event))
    }

    /// Forgets listeners whose stream went away.
    fn prune(&self) {
        self.subscribers().senders.retain(|tx| !tx.is_closed());
    }

    /// Delivers output to every listener, waiting while a listener's queue
    /// is full (dropped after the end, and when nobody listens).
    pub async fn publish(&self, output: data_event::Output) {
        let Some((senders, event)) = self.listeners(output) else {
            return;
        };
        let mut gone = false;
        for tx in &senders {
            gone |= tx.send(event.clone()).await.is_err();
        }
        if gone {
            self.prune();
        }
    }

    /// [`publish`](Self::publish) for a reader on a plain thread (the pty).
    pub fn publish_blocking(&self, output: data_event::Output) {
        let Some((senders, event)) = self.listeners(output) else {
            return;
        };
        let mut gone = false;
        for tx in &senders {
            gone |= tx.blocking_send(event.clone()).is_err();
        }
        if gone {
            self.prune();
        }
    }

    /// Records the end and detaches every listener; the returned future
    /// delivers the end event to them, after the output queued before it
    /// (it waits for slow readers, so the process can be forgotten first).
    pub fn finish(&self, end: EndEvent) -> impl Future<Output = ()> + Send + 'static {
        let senders = {
            let mut subs = self.subscribers();
            subs.end = Some(end.clone());
            std::mem::take(&mut subs.senders)
        };
        async move {
            for tx in senders {
                let _ = tx.send(Event::End(end.clone())).await;
            }
        }
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

    fn stdout(data: &[u8]) -> data_event::Output {
        data_event::Output::Stdout(data.to_vec())
    }

    #[tokio::test]
    async fn late_subscriber_gets_the_end_event() {
        let handle = handle();
        handle.finish(end()).await;

        let mut rx = handle.subscribe();

        assert_eq!(rx.try_recv().unwrap(), Event::End(end()));
    }

    #[tokio::test]
    async fn output_after_the_end_is_dropped() {
        let handle = handle();
        let mut rx = handle.subscribe();
        handle.finish(end()).await;

        handle.publish(stdout(b"late")).await;

        assert_eq!(rx.try_recv().unwrap(), Event::End(end()));
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn publish_waits_for_a_full_queue_and_the_end_comes_after_the_data() {
        let handle = Arc::new(handle());
        let mut rx = handle.subscribe();
        for _ in 0..LISTENER_QUEUE {
            handle.publish(stdout(b"x")).await;
        }

        let mut blocked = tokio::spawn({
            let handle = Arc::clone(&handle);
            async move { handle.publish(stdout(b"last")).await }
        });
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(100), &mut blocked).await;
        let first = rx.recv().await;
        blocked.await.unwrap();
        // The queue is full again: the end waits behind the data.
        let ending = tokio::spawn(handle.finish(end()));
        let mut rest = Vec::new();
        while let Some(event) = rx.recv().await {
            rest.push(event);
        }
        ending.await.unwrap();

        assert!(waited.is_err(), "publish did not wait for the full queue");
        assert_eq!(
            first,
            Some(Event::Data(DataEvent {
                output: Some(stdout(b"x"))
            }))
        );
        assert_eq!(rest.len(), LISTENER_QUEUE + 1);
        assert_eq!(
            rest[LISTENER_QUEUE - 1],
            Event::Data(DataEvent {
                output: Some(stdout(b"last"))
            })
        );
        assert_eq!(rest[LISTENER_QUEUE], Event::End(end()));
    }

    #[tokio::test]
    async fn a_closed_listener_neither_blocks_nor_stays_attached() {
        let handle = handle();
        let rx = handle.subscribe();
        drop(rx);

        for _ in 0..LISTENER_QUEUE * 4 {
            handle.publish(stdout(b"x")).await;
        }

        assert!(handle.subscribers().senders.is_empty());
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
