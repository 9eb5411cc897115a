//! The one well-known type the envd protocol uses, `google.protobuf.Timestamp`,
//! with canonical proto3-JSON: RFC 3339, always `Z`-normalized, with 0, 3, 6
//! or 9 fractional digits (pbjson-types prints `+00:00`, which some SDK
//! parsers reject when fractional seconds are present).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::Error as _;

/// `google.protobuf.Timestamp`: seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Non-negative fraction of a second, in nanoseconds (0..=999_999_999).
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    /// The timestamp as a UTC date-time, if it is in chrono's range.
    pub fn to_datetime(self) -> Option<DateTime<Utc>> {
        let nanos = u32::try_from(self.nanos).ok()?;
        DateTime::from_timestamp(self.seconds, nanos)
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(t: DateTime<Utc>) -> Self {
        Self {
            seconds: t.timestamp(),
            nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
        }
    }
}

/// Any `SystemTime`, however far from 1970 (chrono's `DateTime` would
/// panic beyond its range); seconds saturate at `i64`'s bounds.
impl From<std::time::SystemTime> for Timestamp {
    fn from(t: std::time::SystemTime) -> Self {
        let (seconds, nanos) = match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(after) => (
                i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
                after.subsec_nanos(),
            ),
            Err(before) => {
                let d = before.duration();
                let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                if d.subsec_nanos() == 0 {
                    (-secs, 0)
                } else {
                    ((-secs).saturating_sub(1), 1_000_000_000 - d.subsec_nanos())
                }
            }
        };
        Self {
            seconds,
            nanos: i32::try_from(nanos).unwrap_or(0),
        }
    }
}

impl From<pbjson_types::Timestamp> for Timestamp {
    fn from(t: pbjson_types::Timestamp) -> Self {
        Self {
            seconds: t.seconds,
            nanos: t.nanos,
        }
    }
}

impl From<Timestamp> for pbjson_types::Timestamp {
    fn from(t: Timestamp) -> Self {
        Self {
            seconds: t.seconds,
            nanos: t.nanos,
        }
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let t = self
            .to_datetime()
            .ok_or_else(|| serde::ser::Error::custom("timestamp out of range"))?;
        serializer.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let t = DateTime::parse_from_rfc3339(&text).map_err(D::Error::custom)?;
        Ok(t.with_timezone(&Utc).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_serializes_z_normalized_with_millis() {
        let t = Timestamp {
            seconds: 1_700_000_000,
            nanos: 120_000_000,
        };

        let json = serde_json::to_string(&t).unwrap();

        assert_eq!(json, r#""2023-11-14T22:13:20.120Z""#);
    }

    #[test]
    fn whole_second_timestamp_has_no_fraction() {
        let t = Timestamp {
            seconds: 0,
            nanos: 0,
        };

        let json = serde_json::to_string(&t).unwrap();

        assert_eq!(json, r#""1970-01-01T00:00:00Z""#);
    }

    #[test]
    fn offset_timestamp_is_parsed_to_utc() {
        let t: Timestamp = serde_json::from_str(r#""1970-01-01T01:00:00.5+01:00""#).unwrap();

        assert_eq!(
            t,
            Timestamp {
                seconds: 0,
                nanos: 500_000_000
            }
        );
    }
}
