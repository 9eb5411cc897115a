//! A decoder of Server-Sent Events (the `text/event-stream` of
//! `POST /v1/sandboxes/{id}/exec/stream`), fed body chunks that may split
//! lines and events anywhere.
//!
//! It follows the WHATWG rules that matter here: `event:` and `data:`
//! fields (several `data:` lines join with `\n`), one optional space after
//! the colon, comment lines (`:` first, the agent's keep-alives) ignored,
//! an event dispatched at a blank line, lines ending in `\n`, `\r\n` or
//! `\r`. `id:` and `retry:` are ignored.

/// One event: its name (`message` when the stream gave none) and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Reassembles events from chunks.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes of a line not ended yet.
    line: Vec<u8>,
    /// A `\r` ended the last line: a `\n` right after it is part of it.
    after_cr: bool,
    event: Option<String>,
    data: Option<String>,
}

impl SseDecoder {
    /// Feeds one chunk; returns the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &byte in chunk {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_ended(&String::from_utf8_lossy(&line)) {
                        events.push(event);
                    }
                }
                _ => self.line.push(byte),
            }
        }
        events
    }

    fn line_ended(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            return data.map(|data| SseEvent {
                event: event
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "message".to_owned()),
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, data: &str) -> SseEvent {
        SseEvent {
            event: name.into(),
            data: data.into(),
        }
    }

    #[test]
    fn events_split_across_chunks_are_reassembled() {
        let mut decoder = SseDecoder::default();
        let stream =
            b"event: start\ndata: {\"pid\":5}\n\nevent: stdout\ndata: {\"data\":\"hi\\n\"}\n\n";

        let mut events = Vec::new();
        for chunk in stream.chunks(3) {
            events.extend(decoder.push(chunk));
        }

        assert_eq!(
            events,
            [
                event("start", r#"{"pid":5}"#),
                event("stdout", r#"{"data":"hi\n"}"#)
            ]
        );
    }

    #[test]
    fn comments_are_ignored_and_multiline_data_is_joined() {
        let mut decoder = SseDecoder::default();

        let events = decoder.push(b":\n\n: keep-alive\r\n\r\ndata:a\r\ndata: b\r\n\r\n");

        assert_eq!(events, [event("message", "a\nb")]);
    }

    #[test]
    fn an_event_without_a_blank_line_is_not_dispatched_yet() {
        let mut decoder = SseDecoder::default();

        let first = decoder.push(b"event: exit\ndata: {}\n");
        let second = decoder.push(b"\n");

        assert!(first.is_empty());
        assert_eq!(second, [event("exit", "{}")]);
    }
}
