//! Helpers shared by the Connect handlers: request headers (deadline,
//! keepalive period, user) and server-stream plumbing.

// connectrpc-axum fixes the handlers' error type to `ConnectError`.
#![allow(clippy::result_large_err)]

use crate::auth::basic_auth_user;
use crate::error::EnvdError;
use crate::state::AppState;
use crate::user::UserInfo;
use axum::http::HeaderMap;
use connectrpc_axum::{Code, ConnectError, ConnectResponse, StreamBody};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt as _};
use std::time::Duration;
use tokio::time::Instant;

/// Header with the client's deadline in milliseconds.
pub const CONNECT_TIMEOUT_HEADER: &str = "connect-timeout-ms";

/// Header with the keepalive period, in seconds, the SDK wants on streams.
pub const KEEPALIVE_HEADER: &str = "keepalive-ping-interval";

/// The boxed server-stream body every streaming handler returns.
pub type EventStream<T> = BoxStream<'static, Result<T, ConnectError>>;

/// What a streaming handler returns.
pub type StreamReply<T> = Result<ConnectResponse<StreamBody<EventStream<T>>>, ConnectError>;

/// The longest deadline or keepalive period honoured (a year); larger
/// values are clamped so that `now + value` cannot overflow.
pub const MAX_WAIT: Duration = Duration::from_secs(86_400 * 365);

/// The request deadline from `Connect-Timeout-Ms`, if any. Any number of
/// milliseconds is accepted; more than [`MAX_WAIT`] counts as `MAX_WAIT`.
pub fn deadline(headers: &HeaderMap) -> Result<Option<Instant>, EnvdError> {
    let Some(value) = headers.get(CONNECT_TIMEOUT_HEADER) else {
        return Ok(None);
    };
    let ms: u64 = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| EnvdError::InvalidArgument("invalid Connect-Timeout-Ms".to_owned()))?;
    Ok(Some(after(Duration::from_millis(ms))))
}

/// The keepalive period from `Keepalive-Ping-Interval` (seconds, at least
/// 1, at most [`MAX_WAIT`]).
pub fn keepalive_period(headers: &HeaderMap, default: Duration) -> Duration {
    headers
        .get(KEEPALIVE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(default, |secs| {
            Duration::from_secs(secs.max(1)).min(MAX_WAIT)
        })
}

/// `now + wait`, with `wait` clamped to [`MAX_WAIT`].
fn after(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait.min(MAX_WAIT)).unwrap_or(now)
}

/// The user a request acts as (`Authorization: Basic`, else the default).
pub fn request_user(state: &AppState, headers: &HeaderMap) -> Result<UserInfo, EnvdError> {
    let name = basic_auth_user(headers)?;
    state.user(name.as_deref())
}

/// Wraps an event stream: adds a keepalive message every `period` and ends
/// with `deadline_exceeded` at `deadline`. Ends when `inner` ends.
pub fn with_keepalive<T>(
    inner: impl Stream<Item = Result<T, ConnectError>> + Send + 'static,
    period: Duration,
    deadline: Option<Instant>,
    keepalive: fn() -> T,
) -> EventStream<T>
where
    T: Send + 'static,
{
    let stream = async_stream::stream! {
        let mut inner = std::pin::pin!(inner);
        let period = period.clamp(Duration::from_millis(1), MAX_WAIT);
        let mut ticker = tokio::time::interval_at(after(period), period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(far_future));
        let mut sleep = std::pin::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                () = &mut sleep, if deadline.is_some() => {
                    yield Err(ConnectError::new(Code::DeadlineExceeded, "deadline exceeded"));
                    break;
                }
                item = inner.next() => match item {
                    Some(item) => yield item,
                    None => break,
                },
                _ = ticker.tick() => yield Ok(keepalive()),
            }
        }
    };
    stream.boxed()
}

fn far_future() -> Instant {
    after(MAX_WAIT)
}

/// Wraps a stream into the handler reply.
pub fn stream_reply<T>(stream: EventStream<T>) -> StreamReply<T> {
    Ok(ConnectResponse::new(StreamBody::new(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn keepalive_header_sets_the_period() {
        let mut headers = HeaderMap::new();
        headers.insert(KEEPALIVE_HEADER, HeaderValue::from_static("7"));

        let period = keepalive_period(&headers, Duration::from_secs(50));

        assert_eq!(period, Duration::from_secs(7));
    }

    #[test]
    fn missing_keepalive_header_uses_the_default() {
        let headers = HeaderMap::new();

        let period = keepalive_period(&headers, Duration::from_secs(50));

        assert_eq!(period, Duration::from_secs(50));
    }

    #[test]
    fn huge_timeout_and_keepalive_are_clamped_not_overflowed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONNECT_TIMEOUT_HEADER,
            HeaderValue::from_static("18446744073709551615"),
        );
        headers.insert(
            KEEPALIVE_HEADER,
            HeaderValue::from_static("18446744073709551615"),
        );

        let when = deadline(&headers).unwrap().unwrap();
        let period = keepalive_period(&headers, Duration::from_secs(50));

        assert!(when <= Instant::now() + MAX_WAIT);
        assert_eq!(period, MAX_WAIT);
    }

    #[test]
    fn garbage_timeout_is_invalid_argument() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECT_TIMEOUT_HEADER, HeaderValue::from_static("soon"));

        let err = deadline(&headers).unwrap_err();

        assert!(matches!(err, EnvdError::InvalidArgument(_)));
    }
}
