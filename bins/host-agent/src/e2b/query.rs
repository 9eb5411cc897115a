//! Query strings: percent-decoding, the twice-encoded `metadata` filter of
//! E2B's list endpoint, and opaque pagination tokens.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`); invalid
/// escapes stay as they are; invalid UTF-8 is replaced.
pub fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    out.push(hi << 4 | lo);
                    i += 3;
                } else {
                    out.push(b'%');
                    i += 1;
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `application/x-www-form-urlencoded` pairs of `text` (`a=1&b=2`).
pub fn form_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            (percent_decode(key, true), percent_decode(value, true))
        })
        .collect()
}

/// The `metadata` filter of `GET /v2/sandboxes`, as the outer query decoding
/// left it: a form-encoded `k=v&k2=v2` whose keys and values the SDK had
/// percent-encoded first (`k=v%2520w` here means `{"k": "v w"}`).
pub fn decode_metadata_filter(value: &str) -> BTreeMap<String, String> {
    form_pairs(value)
        .into_iter()
        .map(|(k, v)| (percent_decode(&k, false), percent_decode(&v, false)))
        .collect()
}

/// A pagination cursor: the sort key (creation time, then a unique name)
/// of the last item of a page. Rendered as `<nanos hex>-<name>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub nanos: u128,
    pub name: String,
}

impl Cursor {
    pub fn new(time: SystemTime, name: &str) -> Self {
        Self {
            nanos: time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
            name: name.to_string(),
        }
    }

    pub fn parse(token: &str) -> Option<Self> {
        let (nanos, name) = token.split_once('-')?;
        Some(Self {
            nanos: u128::from_str_radix(nanos, 16).ok()?,
            name: name.to_string(),
        })
    }

    pub fn render(&self) -> String {
        format!("{:x}-{}", self.nanos, self.name)
    }
}

/// One page of `items` (already sorted by `key`, ascending when `!desc`):
/// those after `after` in that order, at most `limit`, and the token of the
/// next page when more remain.
pub fn paginate<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> Cursor,
    desc: bool,
    after: Option<&Cursor>,
    limit: usize,
) -> (Vec<T>, Option<String>) {
    let mut rest: Vec<T> = items
        .into_iter()
        .filter(|item| {
            after.is_none_or(|after| {
                let k = key(item);
                if desc { &k < after } else { &k > after }
            })
        })
        .collect();
    let more = rest.len() > limit;
    rest.truncate(limit);
    let next = if more {
        rest.last().map(|last| key(last).render())
    } else {
        None
    };
    (rest, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_and_plus() {
        assert_eq!(percent_decode("a%20b+c", true), "a b c");
        assert_eq!(percent_decode("a%20b+c", false), "a b+c");
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(percent_decode("%zz%4", false), "%zz%4");
        assert_eq!(percent_decode("%C3%A9", false), "é");
    }

    #[test]
    fn decodes_the_twice_encoded_metadata_filter() {
        // The raw query `metadata=k%3Dv%252520w` after the outer decoding.
        let m = decode_metadata_filter("k=v%2520w");
        assert_eq!(m, BTreeMap::from([("k".into(), "v w".into())]));
        // Python: urlencode({quote(k): quote(v)}) for {"a b": "x&y=z", "p": "100%"}.
        let m = decode_metadata_filter("a%2520b=x%2526y%253Dz&p=100%2525");
        assert_eq!(
            m,
            BTreeMap::from([("a b".into(), "x&y=z".into()), ("p".into(), "100%".into())])
        );
        assert!(decode_metadata_filter("").is_empty());
    }

    #[test]
    fn cursors_round_trip_and_paginate() {
        let c = Cursor {
            nanos: 0x1234,
            name: "snap-a-b".into(),
        };
        assert_eq!(Cursor::parse(&c.render()), Some(c));
        assert_eq!(Cursor::parse("xyz"), None);

        let items: Vec<u128> = (1..=5).collect();
        let key = |n: &u128| Cursor {
            nanos: *n,
            name: n.to_string(),
        };
        let (page, next) = paginate(items.clone(), key, false, None, 2);
        assert_eq!(page, vec![1, 2]);
        let after = Cursor::parse(&next.unwrap()).unwrap();
        let (page, next) = paginate(items.clone(), key, false, Some(&after), 2);
        assert_eq!(page, vec![3, 4]);
        let after = Cursor::parse(&next.unwrap()).unwrap();
        let (page, next) = paginate(items.clone(), key, false, Some(&after), 2);
        assert_eq!((page, next), (vec![5], None));

        let desc: Vec<u128> = items.into_iter().rev().collect();
        let (page, next) = paginate(desc.clone(), key, true, None, 3);
        assert_eq!(page, vec![5, 4, 3]);
        let after = Cursor::parse(&next.unwrap()).unwrap();
        let (page, next) = paginate(desc, key, true, Some(&after), 3);
        assert_eq!((page, next), (vec![2, 1], None));
    }
}
