//! The one error type of the crate, [`EnvdError`].

use std::{error::Error as StdError, fmt::Write as _, net::SocketAddr, time::Duration};

use crate::connect;

/// A boxed error used as the `source` of transport and decoding failures.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What went wrong while talking to envd, naming the address and the endpoint
/// (`process.Process/Start`, `GET /files`, ...) involved.
///
/// Use [`EnvdError::code`] to match on the Connect error code
/// (`"not_found"`, `"already_exists"`, ...) whatever the variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvdError {
    /// No TCP connection to envd could be opened.
    #[error("cannot connect to envd at {addr} for {endpoint}: {}", chain(source.as_ref()))]
    Connect {
        addr: SocketAddr,
        endpoint: String,
        #[source]
        source: BoxError,
    },
    /// The HTTP exchange failed after the connection was opened (request not
    /// sent, connection reset, body cut off).
    #[error("HTTP exchange with envd at {addr} for {endpoint} failed: {}", chain(source.as_ref()))]
    Transport {
        addr: SocketAddr,
        endpoint: String,
        #[source]
        source: BoxError,
    },
    /// envd answered an RPC with a Connect error.
    #[error("envd RPC {method} at {addr} failed with {code}: {message}")]
    Rpc {
        addr: SocketAddr,
        /// `package.Service/Method`, e.g. `filesystem.Filesystem/Stat`.
        method: String,
        /// The Connect error code, e.g. `not_found`.
        code: String,
        message: String,
    },
    /// A plain HTTP endpoint of envd (`/files`, `/init`, `/health`) answered
    /// with an unexpected status.
    #[error("envd {endpoint} at {addr} answered HTTP {status}: {message}")]
    Http {
        addr: SocketAddr,
        endpoint: String,
        status: u16,
        message: String,
    },
    /// A reply could not be decoded (bad protobuf, bad JSON).
    #[error("cannot decode {what} from envd {endpoint} at {addr}: {source}")]
    Decode {
        addr: SocketAddr,
        endpoint: String,
        what: &'static str,
        #[source]
        source: BoxError,
    },
    /// The operation did not finish in time.
    #[error(
        "envd {operation} at {addr} did not finish within {} ms{}",
        timeout.as_millis(),
        last_failure_suffix(last_failure.as_deref())
    )]
    Timeout {
        addr: SocketAddr,
        operation: String,
        timeout: Duration,
        /// The last failure seen before giving up, when the operation was
        /// retried (e.g. while waiting for `/health`).
        last_failure: Option<String>,
    },
    /// envd's reply broke the Connect protocol (wrong content type, truncated
    /// envelope, missing end-of-stream, unexpected event order).
    #[error("envd {endpoint} at {addr} broke the protocol: {detail}")]
    Protocol {
        addr: SocketAddr,
        endpoint: String,
        detail: String,
    },
    /// A reply was bigger than the client collects (see
    /// [`MAX_UNARY_REPLY`](crate::MAX_UNARY_REPLY) and
    /// [`MAX_FILE_READ`](crate::MAX_FILE_READ)); reading stopped at the cap.
    #[error("reply of envd {endpoint} at {addr} exceeds the cap of {limit} bytes")]
    TooLarge {
        addr: SocketAddr,
        endpoint: String,
        limit: usize,
    },
    /// The request could not be built from the given arguments (e.g. an access
    /// token that is not a valid header value).
    #[error("cannot build request to envd {endpoint} at {addr}: {detail}")]
    InvalidRequest {
        addr: SocketAddr,
        endpoint: String,
        detail: String,
    },
}

impl EnvdError {
    /// The Connect error code this error stands for, if any.
    ///
    /// RPC errors give the code envd sent; plain HTTP errors map their status
    /// (404 -> `not_found`, 401 -> `unauthenticated`, ...); timeouts give
    /// `deadline_exceeded` and connection failures `unavailable`.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Rpc { code, .. } => Some(code),
            Self::Http { status, .. } => connect::code_for_plain_status(*status),
            Self::Timeout { .. } => Some("deadline_exceeded"),
            Self::Connect { .. } => Some("unavailable"),
            Self::TooLarge { .. } => Some("resource_exhausted"),
            Self::Transport { .. }
            | Self::Decode { .. }
            | Self::Protocol { .. }
            | Self::InvalidRequest { .. } => None,
        }
    }

    /// Whether [`code`](Self::code) is `not_found`.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some("not_found")
    }
}

/// `err` followed by its sources, joined with `: `.
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(source) = next {
        let text = source.to_string();
        if !out.ends_with(&text) {
            let _ = write!(out, ": {text}");
        }
        next = source.source();
    }
    out
}

fn last_failure_suffix(last_failure: Option<&str>) -> String {
    last_failure
        .map(|failure| format!(" (last failure: {failure})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 49983))
    }

    #[test]
    fn rpc_error_exposes_its_code_and_names_method_and_address() {
        let err = EnvdError::Rpc {
            addr: addr(),
            method: "filesystem.Filesystem/Stat".into(),
            code: "not_found".into(),
            message: "no such file /nope".into(),
        };

        let text = err.to_string();

        assert!(err.is_not_found());
        assert_eq!(
            text,
            "envd RPC filesystem.Filesystem/Stat at 127.0.0.1:49983 failed with not_found: no such file /nope"
        );
    }

    #[test]
    fn http_404_maps_to_not_found() {
        let err = EnvdError::Http {
            addr: addr(),
            endpoint: "GET /files".into(),
            status: 404,
            message: "file not found".into(),
        };

        let code = err.code();

        assert_eq!(code, Some("not_found"));
    }

    #[test]
    fn timeout_names_the_last_failure() {
        let err = EnvdError::Timeout {
            addr: addr(),
            operation: "GET /health".into(),
            timeout: Duration::from_millis(300),
            last_failure: Some("connection refused".into()),
        };

        let text = err.to_string();

        assert_eq!(
            text,
            "envd GET /health at 127.0.0.1:49983 did not finish within 300 ms (last failure: connection refused)"
        );
    }
}
