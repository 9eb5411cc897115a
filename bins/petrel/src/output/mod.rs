//! What the commands print: the agent's JSON (`--json`), or the human
//! forms built from the API's views ([`Sandbox`], [`Snapshot`],
//! [`Template`]): aligned tables ([`table`]), `key: value` blocks, times
//! relative to now and sizes in binary units.

pub mod table;

use std::collections::BTreeMap;
use std::io::Write as _;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::client::Reply;

/// A sandbox as the API shows it (the fields the CLI uses).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Sandbox {
    pub id: String,
    pub template: String,
    pub state: String,
    pub vcpus: u64,
    pub memory_mb: u64,
    pub created_at: String,
    pub end_at: String,
    pub auto_pause: bool,
    pub internet: bool,
    pub metadata: BTreeMap<String, String>,
    pub envd_url: Option<String>,
    pub error: Option<String>,
    pub timings_ms: BTreeMap<String, u64>,
}

/// A snapshot as the API shows it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Snapshot {
    pub name: String,
    pub sandbox_id: String,
    pub template: String,
    pub created_at: String,
    pub size_bytes: u64,
}

/// A template as the API shows it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Template {
    pub name: String,
    pub kernel: String,
    pub rootfs: String,
    pub created_at: String,
    pub size_bytes: u64,
    pub source: String,
}

/// `value` (a view, or an array of them) as `T`.
pub fn view<T: DeserializeOwned>(value: &Value) -> anyhow::Result<T> {
    T::deserialize(value)
        .map_err(|err| anyhow::anyhow!("the agent's reply is not what this petrel expects: {err}"))
}

/// Prints the agent's JSON reply, indented, on stdout.
pub fn print_json(reply: &Reply) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", indent_json(&reply.text))?;
    Ok(())
}

/// Valid JSON `text` re-indented by two spaces, its keys in the order they
/// came (which a round trip through [`Value`] would sort).
pub fn indent_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0_usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.trim().chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                // Skip blanks to see whether it is empty: `{}`, `[]`.
                while chars.peek().is_some_and(char::is_ascii_whitespace) {
                    chars.next();
                }
                if matches!(chars.peek(), Some('}' | ']')) {
                    if let Some(close) = chars.next() {
                        out.push(close);
                    }
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// Prints `text` (lines ending in `\n`) on stdout.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// `k=v,k2=v2`.
pub fn metadata(pairs: &BTreeMap<String, String>) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// An RFC 3339 time of the API relative to `now`: `12s ago`, `in 4m`,
/// `now` (within a second); the text as it came when it does not parse.
pub fn relative(time: &str, now: DateTime<Utc>) -> String {
    let Ok(then) = DateTime::parse_from_rfc3339(time) else {
        return time.to_owned();
    };
    let seconds = then
        .with_timezone(&Utc)
        .signed_duration_since(now)
        .num_seconds();
    if seconds == 0 {
        return "now".to_owned();
    }
    let amount = span(seconds.unsigned_abs());
    if seconds < 0 {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

/// `time (relative)`, for `info`.
pub fn absolute_and_relative(time: &str, now: DateTime<Utc>) -> String {
    format!("{time} ({})", relative(time, now))
}

/// The biggest unit or two of `seconds`: `45s`, `3m 20s`, `5h 2m`, `3d 4h`.
fn span(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if s == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) if m == 0 => format!("{h}h"),
        (0, _, _) => format!("{h}h {m}m"),
        _ if h == 0 => format!("{d}d"),
        _ => format!("{d}d {h}h"),
    }
}

/// `512 B`, `1.5 KiB`, `20.0 MiB`, `2.0 GiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-01-31T12:00:00.000Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn times_are_shown_relative_to_now() {
        let shown = [
            relative("2025-01-31T11:59:48.000Z", now()),
            relative("2025-01-31T12:04:00.000Z", now()),
            relative("2025-01-31T09:58:00.000Z", now()),
            relative("2025-02-03T16:00:00.000Z", now()),
            relative("2025-01-31T12:00:00.400Z", now()),
            relative("not a time", now()),
        ];

        assert_eq!(
            shown,
            [
                "12s ago",
                "in 4m",
                "2h 2m ago",
                "in 3d 4h",
                "now",
                "not a time"
            ]
        );
    }

    #[test]
    fn sizes_use_binary_units() {
        let shown = [0, 512, 1536, 20 * 1024 * 1024, 3 << 30].map(size);

        assert_eq!(shown, ["0 B", "512 B", "1.5 KiB", "20.0 MiB", "3.0 GiB"]);
    }

    #[test]
    fn json_is_indented_in_the_agents_key_order() {
        let text = r#"{"id":"a","state":"x, \"y\" {z}","metadata":{},"list":[1, {"b":[]}]}"#;

        let indented = indent_json(text);

        assert_eq!(
            indented,
            "{\n  \"id\": \"a\",\n  \"state\": \"x, \\\"y\\\" {z}\",\n  \"metadata\": {},\n  \"list\": [\n    1,\n    {\n      \"b\": []\n    }\n  ]\n}"
        );
    }

    #[test]
    fn indented_json_parses_to_the_same_value() {
        let text = r#"[{"id":"a","n":-1.5e3,"s":"\\","m":{"k":"v"}},[],{}]"#;

        let indented = indent_json(text);

        assert_eq!(
            serde_json::from_str::<Value>(&indented).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
    }

    #[test]
    fn sandbox_view_tolerates_missing_and_extra_fields() {
        let value = serde_json::json!({"id": "abc", "state": "running", "new_field": 1});

        let sandbox: Sandbox = view(&value).unwrap();

        assert_eq!(
            (sandbox.id.as_str(), sandbox.state.as_str()),
            ("abc", "running")
        );
        assert!(sandbox.metadata.is_empty());
    }
}
