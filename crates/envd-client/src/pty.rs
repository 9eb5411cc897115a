//! Processes on a pseudo-terminal (`StartRequest.pty`): start one
//! ([`EnvdClient::start_pty`]), type into it
//! ([`EnvdClient::send_pty_input`]), resize it
//! ([`EnvdClient::resize_pty`], `Process/Update`).
//!
//! A PTY process has one output, the terminal's (`DataEvent.pty`): what
//! it writes to stdout and stderr, and the echo of what was typed, in the
//! order the terminal produced it. Its input is the terminal too
//! (`ProcessInput.pty`); there is no stdin to close (send Ctrl-D, `0x04`,
//! for end-of-file).

use bytes::Bytes;
use envd_proto::process as pb;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tracing::debug;

use crate::process::{SEND_INPUT, START, selector};
use crate::{EnvdClient, EnvdError, ExecRequest};

const UPDATE: &str = "process.Process/Update";

/// One event of a process started by [`EnvdClient::start_pty`].
/// Keepalives are not passed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtyEvent {
    /// Always the first event.
    Started { pid: u32 },
    /// Bytes the terminal produced, as they came (escape sequences and
    /// `\r\n` line ends included).
    Output(Bytes),
    /// Always the last event of a successful stream.
    Exited {
        exit_code: i32,
        status: String,
        exited: bool,
        error: Option<String>,
    },
}

/// The events of one PTY process; ends after [`PtyEvent::Exited`], or with
/// an error.
pub type PtyStream = BoxStream<'static, Result<PtyEvent, EnvdError>>;

impl EnvdClient {
    /// Starts `request` on a new pseudo-terminal of `cols` x `rows` cells
    /// and returns its events: first [`PtyEvent::Started`] (already
    /// received when this returns), then [`PtyEvent::Output`], then
    /// [`PtyEvent::Exited`].
    ///
    /// The stream has no deadline unless [`ExecRequest::timeout`] is set.
    /// Dropping it does not end the process: send it a signal
    /// ([`EnvdClient::send_signal`]) or make it exit. `request.stdin` must
    /// be `None` (the input is [`send_pty_input`](Self::send_pty_input)).
    pub async fn start_pty(
        &self,
        request: ExecRequest,
        cols: u16,
        rows: u16,
    ) -> Result<PtyStream, EnvdError> {
        if request.stdin.is_some() {
            return Err(EnvdError::InvalidRequest {
                addr: self.addr(),
                endpoint: START.to_owned(),
                detail: "a PTY process has no stdin: send its input with send_pty_input".into(),
            });
        }
        let start = pb::StartRequest {
            process: Some(request.process_config()),
            pty: Some(pty(cols, rows)),
            tag: None,
            stdin: None,
        };
        debug!(addr = %self.addr(), cmd = %request.cmd, args = ?request.args, cols, rows, "envd start pty process");
        let (pid, events) = self
            .start_events(&start, &request, Self::pty_event, |event| match event {
                PtyEvent::Started { pid } => Some(*pid),
                _ => None,
            })
            .await?;
        debug!(addr = %self.addr(), pid, "envd pty process started");
        let first = Ok::<_, EnvdError>(PtyEvent::Started { pid });
        Ok(futures::stream::iter([first]).chain(events).boxed())
    }

    /// Types `data` into the terminal of `pid` (`Process/SendInput` with
    /// `ProcessInput.pty`); `failed_precondition` when `pid` has no PTY,
    /// `not_found` when envd runs no such process.
    pub async fn send_pty_input(&self, pid: u32, data: &[u8]) -> Result<(), EnvdError> {
        let request = pb::SendInputRequest {
            process: Some(selector(pid)),
            input: Some(pb::ProcessInput {
                input: Some(pb::process_input::Input::Pty(data.to_vec())),
            }),
        };
        let _: pb::SendInputResponse = self.transport.unary(SEND_INPUT, &request, None).await?;
        Ok(())
    }

    /// Sets the terminal size of `pid` to `cols` x `rows` (`Process/Update`);
    /// the process gets `SIGWINCH`.
    pub async fn resize_pty(&self, pid: u32, cols: u16, rows: u16) -> Result<(), EnvdError> {
        debug!(addr = %self.addr(), pid, cols, rows, "envd resize pty");
        let request = pb::UpdateRequest {
            process: Some(selector(pid)),
            pty: Some(pty(cols, rows)),
        };
        let _: pb::UpdateResponse = self.transport.unary(UPDATE, &request, None).await?;
        Ok(())
    }

    /// The [`PtyEvent`] of one `Start` message; `None` for keepalives.
    fn pty_event(&self, response: pb::StartResponse) -> Result<Option<PtyEvent>, EnvdError> {
        use pb::process_event::{Event, data_event::Output};
        let event = response
            .event
            .and_then(|event| event.event)
            .ok_or_else(|| self.protocol(START, "message without an event"))?;
        Ok(match event {
            Event::Start(start) => Some(PtyEvent::Started { pid: start.pid }),
            // envd sends a PTY process's output as `pty`; accept the pipes
            // too rather than lose output.
            Event::Data(data) => match data.output {
                Some(Output::Pty(bytes) | Output::Stdout(bytes) | Output::Stderr(bytes)) => {
                    Some(PtyEvent::Output(Bytes::from(bytes)))
                }
                None => None,
            },
            Event::End(end) => Some(PtyEvent::Exited {
                exit_code: end.exit_code,
                status: end.status,
                exited: end.exited,
                error: end.error,
            }),
            Event::Keepalive(_) => None,
        })
    }
}

fn pty(cols: u16, rows: u16) -> pb::Pty {
    pb::Pty {
        size: Some(pb::pty::Size {
            cols: u32::from(cols),
            rows: u32::from(rows),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pty_size_is_cols_then_rows() {
        let size = pty(120, 40).size.unwrap();

        assert_eq!((size.cols, size.rows), (120, 40));
    }
}
