//! Errors of the API client ([`FcError`]) and of the process launcher
//! ([`LaunchError`]).

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use http::{Method, StatusCode};
use serde::Deserialize;
use thiserror::Error;

/// A failed call to Firecracker's API.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FcError {
    /// The API socket could not be connected to.
    #[error("connecting to the Firecracker API socket {}: {source}", socket.display())]
    Connect {
        /// The API socket.
        socket: PathBuf,
        /// The connect error.
        #[source]
        source: io::Error,
    },

    /// The HTTP exchange broke (handshake, send, or reading the answer).
    #[error("{method} {path} on Firecracker API socket {}: {source}", socket.display())]
    Http {
        /// The API socket.
        socket: PathBuf,
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
        /// The HTTP error.
        #[source]
        source: hyper::Error,
    },

    /// Firecracker answered with a non-success status.
    #[error("{method} {path}: Firecracker answered {status}: {fault_message}")]
    Api {
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
        /// The answer's status.
        status: StatusCode,
        /// The `fault_message` of the answer's body, or the raw body when it
        /// is not a Firecracker error object.
        fault_message: String,
    },

    /// The request could not be built (a path that is not a valid URI).
    #[error("{method} {path}: building the request: {source}")]
    Request {
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
        /// The error from `http`.
        #[source]
        source: http::Error,
    },

    /// The request body could not be encoded (a path that is not UTF-8, say).
    #[error("{method} {path}: encoding the request body: {source}")]
    Encode {
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
        /// The encoding error.
        #[source]
        source: serde_json::Error,
    },

    /// A success answer's body was not the expected JSON.
    #[error("{method} {path}: decoding the answer body: {source}")]
    Decode {
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },

    /// A drive or network interface id that Firecracker would refuse, and
    /// that could not be put in a request path as is.
    #[error(
        "invalid {kind} id {id:?}: Firecracker accepts only ASCII letters, digits and '_', at least one"
    )]
    InvalidResourceId {
        /// What the id names (`"drive"`, `"network interface"`).
        kind: &'static str,
        /// The rejected id.
        id: String,
    },

    /// [`FcClient::wait_ready`](crate::FcClient::wait_ready) ran out of time.
    #[error("Firecracker API socket {} not ready after {waited:?}; last error: {last_error}", socket.display())]
    NotReady {
        /// The API socket.
        socket: PathBuf,
        /// How long it was polled.
        waited: Duration,
        /// The last failure seen.
        last_error: String,
    },
}

/// A failure to start, watch or stop a firecracker process.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The instance id would make firecracker abort at startup.
    #[error(
        "invalid Firecracker instance id {id:?}: it must be 1 to 64 ASCII letters, digits or '-'"
    )]
    InvalidInstanceId {
        /// The rejected id.
        id: String,
    },

    /// A process is already listening on the API socket path.
    #[error("Firecracker API socket {} is in use by a running process", socket.display())]
    SocketInUse {
        /// The API socket.
        socket: PathBuf,
    },

    /// Something other than a socket sits at the API socket path.
    #[error("Firecracker API socket path {} exists and is not a socket", socket.display())]
    SocketPathOccupied {
        /// The API socket.
        socket: PathBuf,
    },

    /// A filesystem operation on a launcher resource failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done (`"opening log file"`, ...).
        what: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },

    /// The binary could not be started.
    #[error("starting {}: {source}", binary.display())]
    Spawn {
        /// The firecracker binary.
        binary: PathBuf,
        /// The spawn error.
        #[source]
        source: io::Error,
    },

    /// The process exited before its API answered.
    #[error(
        "firecracker {id} (pid {pid}) exited ({status}) before its API socket {} answered; log tail:\n{log_tail}",
        socket.display()
    )]
    ExitedEarly {
        /// Instance id.
        id: String,
        /// Process id.
        pid: u32,
        /// The API socket.
        socket: PathBuf,
        /// Exit status.
        status: ExitStatus,
        /// The end of the log file, or a note that there is none.
        log_tail: String,
    },

    /// The API did not answer in time; the process has been killed.
    #[error(
        "firecracker {id} (pid {pid}): API socket {} did not answer within {waited:?} (process killed); last error: {last_error}",
        socket.display()
    )]
    NotReady {
        /// Instance id.
        id: String,
        /// Process id.
        pid: u32,
        /// The API socket.
        socket: PathBuf,
        /// How long it was polled.
        waited: Duration,
        /// The last failure seen.
        last_error: String,
    },

    /// [`FirecrackerProcess::adopt`](crate::FirecrackerProcess::adopt)
    /// refused the process.
    #[error("cannot adopt firecracker {id} (pid {pid}, API socket {}): {reason}", socket.display())]
    NotAdoptable {
        /// Instance id.
        id: String,
        /// Process id.
        pid: u32,
        /// The API socket it should serve.
        socket: PathBuf,
        /// Why not.
        reason: String,
    },

    /// Signalling or reaping the process failed.
    #[error("{what} firecracker {id} (pid {pid}): {source}")]
    Process {
        /// What was being done (`"killing"`, `"waiting for"`).
        what: &'static str,
        /// Instance id.
        id: String,
        /// Process id.
        pid: u32,
        /// The IO error.
        #[source]
        source: io::Error,
    },
}

/// Firecracker's error body: `{"fault_message": "..."}`.
#[derive(Debug, Deserialize)]
struct Fault {
    fault_message: String,
}

/// Longest raw body kept as a fault message when it is not an error object.
const RAW_FAULT_MAX_BYTES: usize = 1024;

/// The fault message of an error answer's body: its `fault_message` when it
/// is a Firecracker error object, else the body itself as text (cut to
/// 1 KiB), else a note that it was empty.
pub(crate) fn fault_message(body: &[u8]) -> String {
    if let Ok(fault) = serde_json::from_slice::<Fault>(body) {
        return fault.fault_message;
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(RAW_FAULT_MAX_BYTES)]);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_message_reads_error_object() {
        let body = br#"{"fault_message": "The requested operation is not supported after starting the microVM."}"#;

        let message = fault_message(body);

        assert_eq!(
            message,
            "The requested operation is not supported after starting the microVM."
        );
    }

    #[test]
    fn fault_message_falls_back_to_raw_text() {
        let body = b"  Bad Request\n";

        let message = fault_message(body);

        assert_eq!(message, "Bad Request");
    }

    #[test]
    fn fault_message_notes_empty_body() {
        let message = fault_message(b"");

        assert_eq!(message, "(empty body)");
    }

    #[test]
    fn fault_message_cuts_long_raw_body() {
        let body = vec![b'x'; 4096];

        let message = fault_message(&body);

        assert_eq!(message.len(), RAW_FAULT_MAX_BYTES);
    }

    #[test]
    fn api_error_display_names_request_and_fault() {
        let err = FcError::Api {
            method: Method::PUT,
            path: "/actions".to_owned(),
            status: StatusCode::BAD_REQUEST,
            fault_message: "boom".to_owned(),
        };

        let message = err.to_string();

        assert_eq!(
            message,
            "PUT /actions: Firecracker answered 400 Bad Request: boom"
        );
    }
}
