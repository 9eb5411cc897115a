//! The Connect protocol, binary proto codec, without any I/O: envelope
//! framing, end-of-stream and error bodies, status-to-code mapping, the
//! `Connect-Timeout-Ms` header value.
//!
//! See <https://connectrpc.com/docs/protocol>.

use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use serde::Deserialize;

/// Content type of unary proto requests and replies.
pub(crate) const UNARY_CONTENT_TYPE: &str = "application/proto";
/// Content type of streaming proto requests and replies.
pub(crate) const STREAM_CONTENT_TYPE: &str = "application/connect+proto";
/// `Connect-Protocol-Version` header name (value `1`).
pub(crate) const PROTOCOL_VERSION_HEADER: &str = "connect-protocol-version";
/// `Connect-Timeout-Ms` header name.
pub(crate) const TIMEOUT_HEADER: &str = "connect-timeout-ms";

/// Envelope flag: the payload is compressed (never requested by us).
pub(crate) const FLAG_COMPRESSED: u8 = 0x01;
/// Envelope flag: the end-of-stream message (JSON).
pub(crate) const FLAG_END_STREAM: u8 = 0x02;

/// Size of an envelope header: one flag byte and a big-endian `u32` length.
const HEADER_LEN: usize = 5;

/// Largest envelope payload accepted; guards against a corrupt length prefix
/// making us buffer gigabytes.
pub(crate) const MAX_ENVELOPE_LEN: usize = 64 * 1024 * 1024;

/// One enveloped message of a Connect stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Envelope {
    pub(crate) flags: u8,
    pub(crate) payload: Bytes,
}

impl Envelope {
    pub(crate) fn is_end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }

    pub(crate) fn is_compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }
}

/// Frames `payload` as one envelope with `flags`.
pub(crate) fn encode_envelope(flags: u8, payload: &[u8]) -> Result<Bytes, EnvelopeError> {
    let len = u32::try_from(payload.len()).map_err(|_| EnvelopeError::TooLarge {
        len: payload.len(),
        max: u32::MAX as usize,
    })?;
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    out.put_u8(flags);
    out.put_u32(len);
    out.put_slice(payload);
    Ok(out.freeze())
}

/// What is wrong with the envelopes of a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EnvelopeError {
    #[error("envelope of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("body ended inside an envelope ({buffered} bytes left undecoded)")]
    Truncated { buffered: usize },
}

/// Reassembles envelopes from body chunks that may split them anywhere.
#[derive(Debug, Default)]
pub(crate) struct EnvelopeDecoder {
    buf: BytesMut,
}

impl EnvelopeDecoder {
    /// Appends one body chunk.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete envelope, or `None` when more bytes are needed.
    pub(crate) fn next_envelope(&mut self) -> Result<Option<Envelope>, EnvelopeError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_ENVELOPE_LEN {
            return Err(EnvelopeError::TooLarge {
                len,
                max: MAX_ENVELOPE_LEN,
            });
        }
        if self.buf.len() < HEADER_LEN + len {
            self.buf.reserve(HEADER_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Envelope { flags, payload }))
    }

    /// Called when the body ended: fails if a partial envelope is buffered.
    pub(crate) fn finish(&self) -> Result<(), EnvelopeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(EnvelopeError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }
}

/// A Connect error as JSON: `{"code": "not_found", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct ConnectError {
    pub(crate) code: String,
    #[serde(default)]
    pub(crate) message: String,
}

/// The JSON end-of-stream message: `{}` or `{"error": {...}}`.
#[derive(Debug, Deserialize)]
struct EndStream {
    #[serde(default)]
    error: Option<ConnectError>,
}

/// Parses an end-of-stream payload; `Ok(Some(_))` when the stream failed.
pub(crate) fn parse_end_stream(payload: &[u8]) -> Result<Option<ConnectError>, serde_json::Error> {
    serde_json::from_slice::<EndStream>(payload).map(|end| end.error)
}

/// The Connect error carried by a non-2xx RPC reply. When the body is not a
/// Connect error JSON (e.g. a proxy answered), the code is derived from the
/// HTTP status as the Connect spec says and the body becomes the message.
pub(crate) fn parse_rpc_error(status: u16, body: &[u8]) -> ConnectError {
    if let Ok(err) = serde_json::from_slice::<ConnectError>(body)
        && !err.code.is_empty()
    {
        return err;
    }
    ConnectError {
        code: code_for_rpc_status(status).to_owned(),
        message: body_text(body, status),
    }
}

/// The Connect code for an HTTP status when the reply carries no Connect
/// error body (table "HTTP to Connect" of the Connect protocol spec).
pub(crate) fn code_for_rpc_status(status: u16) -> &'static str {
    match status {
        400 => "internal",
        401 => "unauthenticated",
        403 => "permission_denied",
        404 => "unimplemented",
        429 | 502..=504 => "unavailable",
        _ => "unknown",
    }
}

/// The Connect code closest to the status of a plain HTTP endpoint
/// (`/files`, `/init`), where 404 means a missing resource, not a missing
/// route.
pub(crate) fn code_for_plain_status(status: u16) -> Option<&'static str> {
    let code = match status {
        400 => "invalid_argument",
        401 => "unauthenticated",
        403 => "permission_denied",
        404 => "not_found",
        409 => "already_exists",
        412 => "failed_precondition",
        429 | 507 => "resource_exhausted",
        499 => "canceled",
        500 => "internal",
        501 => "unimplemented",
        503 => "unavailable",
        504 => "deadline_exceeded",
        _ => return None,
    };
    Some(code)
}

/// The message of a plain HTTP error body: the `message` field of a JSON
/// object when there is one (envd sends `{"code":404,"message":"..."}`), the
/// body text otherwise.
pub(crate) fn plain_error_message(status: u16, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Message {
        message: String,
    }
    match serde_json::from_slice::<Message>(body) {
        Ok(parsed) => parsed.message,
        Err(_) => body_text(body, status),
    }
}

fn body_text(body: &[u8], status: u16) -> String {
    let text = String::from_utf8_lossy(body).trim().to_owned();
    if text.is_empty() {
        format!("HTTP status {status} with an empty body")
    } else {
        text
    }
}

/// The `Connect-Timeout-Ms` value for `timeout`: at least 1, at most the ten
/// digits the spec allows.
pub(crate) fn timeout_header_value(timeout: Duration) -> String {
    timeout.as_millis().clamp(1, 9_999_999_999).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(flags: u8, payload: &[u8]) -> Bytes {
        encode_envelope(flags, payload).unwrap()
    }

    #[test]
    fn encode_envelope_prefixes_flag_and_big_endian_length() {
        let framed = envelope(0, b"abc");

        assert_eq!(&framed[..], b"\x00\x00\x00\x00\x03abc");
    }

    #[test]
    fn decoder_yields_envelopes_from_one_chunk() {
        let mut body = BytesMut::new();
        body.extend_from_slice(&envelope(0, b"first"));
        body.extend_from_slice(&envelope(0, b""));
        body.extend_from_slice(&envelope(FLAG_END_STREAM, b"{}"));
        let mut decoder = EnvelopeDecoder::default();

        decoder.push(&body);
        let decoded = [
            decoder.next_envelope().unwrap(),
            decoder.next_envelope().unwrap(),
            decoder.next_envelope().unwrap(),
            decoder.next_envelope().unwrap(),
        ];

        assert_eq!(
            decoded,
            [
                Some(Envelope {
                    flags: 0,
                    payload: Bytes::from_static(b"first")
                }),
                Some(Envelope {
                    flags: 0,
                    payload: Bytes::new()
                }),
                Some(Envelope {
                    flags: FLAG_END_STREAM,
                    payload: Bytes::from_static(b"{}")
                }),
                None,
            ]
        );
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn decoder_reassembles_envelopes_split_byte_by_byte() {
        let mut body = BytesMut::new();
        body.extend_from_slice(&envelope(0, b"hello"));
        body.extend_from_slice(&envelope(0, b"world!"));
        let mut decoder = EnvelopeDecoder::default();
        let mut payloads = Vec::new();

        for byte in body.chunks(1) {
            decoder.push(byte);
            while let Some(env) = decoder.next_envelope().unwrap() {
                payloads.push(env.payload);
            }
        }

        assert_eq!(payloads, [&b"hello"[..], &b"world!"[..]]);
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn decoder_waits_for_the_rest_of_a_split_header() {
        let framed = envelope(0, b"xyz");
        let mut decoder = EnvelopeDecoder::default();

        decoder.push(&framed[..3]);
        let before = decoder.next_envelope().unwrap();
        decoder.push(&framed[3..]);
        let after = decoder.next_envelope().unwrap();

        assert_eq!(before, None);
        assert_eq!(after.unwrap().payload, Bytes::from_static(b"xyz"));
    }

    #[test]
    fn decoder_reports_a_truncated_body() {
        let framed = envelope(0, b"truncated");
        let mut decoder = EnvelopeDecoder::default();

        decoder.push(&framed[..8]);
        let next = decoder.next_envelope().unwrap();
        let finished = decoder.finish();

        assert_eq!(next, None);
        assert_eq!(finished, Err(EnvelopeError::Truncated { buffered: 8 }));
    }

    #[test]
    fn decoder_rejects_an_oversized_length_prefix() {
        let mut decoder = EnvelopeDecoder::default();

        decoder.push(b"\x00\xff\xff\xff\xff");
        let next = decoder.next_envelope();

        assert_eq!(
            next,
            Err(EnvelopeError::TooLarge {
                len: u32::MAX as usize,
                max: MAX_ENVELOPE_LEN
            })
        );
    }

    #[test]
    fn end_stream_with_error_is_parsed() {
        let payload = br#"{"error":{"code":"deadline_exceeded","message":"process timed out"},"metadata":{}}"#;
        let framed = envelope(FLAG_END_STREAM, payload);
        let mut decoder = EnvelopeDecoder::default();
        decoder.push(&framed);

        let env = decoder.next_envelope().unwrap().unwrap();
        let error = parse_end_stream(&env.payload).unwrap();

        assert!(env.is_end_stream());
        assert_eq!(
            error,
            Some(ConnectError {
                code: "deadline_exceeded".into(),
                message: "process timed out".into()
            })
        );
    }

    #[test]
    fn end_stream_without_error_is_success() {
        let error = parse_end_stream(b"{}").unwrap();

        assert_eq!(error, None);
    }

    #[test]
    fn rpc_error_body_is_parsed() {
        let error = parse_rpc_error(404, br#"{"code":"not_found","message":"no such file"}"#);

        assert_eq!(
            error,
            ConnectError {
                code: "not_found".into(),
                message: "no such file".into()
            }
        );
    }

    #[test]
    fn rpc_error_without_json_uses_the_status_mapping() {
        let error = parse_rpc_error(503, b"upstream down");

        assert_eq!(
            error,
            ConnectError {
                code: "unavailable".into(),
                message: "upstream down".into()
            }
        );
    }

    #[test]
    fn plain_error_message_reads_envd_json() {
        let message = plain_error_message(404, br#"{"code":404,"message":"file not found"}"#);

        assert_eq!(message, "file not found");
    }

    #[test]
    fn timeout_header_is_clamped_to_ten_digits() {
        let values = [
            timeout_header_value(Duration::ZERO),
            timeout_header_value(Duration::from_millis(1500)),
            timeout_header_value(Duration::MAX),
        ];

        assert_eq!(values, ["1", "1500", "9999999999"]);
    }
}
