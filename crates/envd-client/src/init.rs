//! `POST /init`: the host hands envd its access token, default env, user,
//! working directory and the wall clock (at boot and after every resume),
//! and a restored clone its own hostname and CRNG seed (Petrel's envd;
//! [`InitReply::identity_applied`] says whether the guest's envd took them).

use std::{
    collections::BTreeMap,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use bytes::Bytes;
use http::Method;
use serde::Serialize;

use crate::{EnvdClient, EnvdError};

const INIT_PATH: &str = "/init";

/// What `POST /init` sets inside the guest. Fields left `None` (or an empty
/// map) are not sent, so envd keeps its current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitRequest {
    /// From now on envd requires this token in `X-Access-Token`.
    pub access_token: Option<String>,
    /// Environment variables every process gets.
    pub env_vars: BTreeMap<String, String>,
    /// The user processes run as when a request names none.
    pub default_user: Option<String>,
    /// The working directory processes start in when a request names none.
    pub default_workdir: Option<String>,
    /// The host's wall clock; envd sets the guest clock from it.
    pub timestamp: Option<SystemTime>,
    /// Petrel: the guest's hostname from now on.
    pub hostname: Option<String>,
    /// Petrel: host randomness (32 to 512 bytes) mixed into the guest
    /// kernel's pool before it reseeds its CRNG.
    pub entropy_seed: Option<Vec<u8>>,
}

/// What envd said to a `POST /init`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InitReply {
    /// Whether envd applied `hostname` and `entropy_seed`: false when none
    /// was sent, or when the guest's envd predates them (it ignores unknown
    /// fields), so the caller must set them another way.
    pub identity_applied: bool,
}

/// Response header by which envd says it applied the identity fields.
const IDENTITY_HEADER: &str = "x-petrel-identity";

/// The JSON body, with the spec's camelCase names.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InitBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env_vars: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_workdir: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entropy_seed: Option<String>,
}

impl InitRequest {
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&InitBody {
            access_token: self.access_token.as_deref(),
            env_vars: &self.env_vars,
            default_user: self.default_user.as_deref(),
            default_workdir: self.default_workdir.as_deref(),
            timestamp: self.timestamp.map(rfc3339),
            hostname: self.hostname.as_deref(),
            entropy_seed: self
                .entropy_seed
                .as_deref()
                .map(|seed| base64::engine::general_purpose::STANDARD.encode(seed)),
        })
    }
}

impl EnvdClient {
    /// Sends `POST /init`. A new `access_token` applies to later requests:
    /// build the client you keep using with
    /// [`with_access_token`](Self::with_access_token). An envd that cannot
    /// apply a requested identity fails the call before changing anything.
    pub async fn init(&self, request: &InitRequest) -> Result<InitReply, EnvdError> {
        let endpoint = format!("POST {INIT_PATH}");
        let body = request
            .to_json()
            .map_err(|source| EnvdError::InvalidRequest {
                addr: self.addr(),
                endpoint,
                detail: format!("cannot encode the init body: {source}"),
            })?;
        tracing::debug!(
            addr = %self.addr(),
            env_vars = request.env_vars.len(),
            default_user = ?request.default_user,
            sets_token = request.access_token.is_some(),
            hostname = ?request.hostname,
            "envd init"
        );
        let (headers, _) = self
            .transport
            .plain_with_headers(
                Method::POST,
                INIT_PATH,
                Some(("application/json", Bytes::from(body))),
                self.transport.request_timeout(),
                crate::transport::MAX_UNARY_REPLY,
            )
            .await?;
        Ok(InitReply {
            identity_applied: headers
                .get(IDENTITY_HEADER)
                .is_some_and(|v| v.as_bytes() == b"applied"),
        })
    }
}

/// `time` as RFC 3339 in UTC with nanoseconds (`2023-11-14T22:13:20.5Z`);
/// times before 1970 are clamped to the epoch.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let nanos = since_epoch.subsec_nanos();
    let days = secs / 86_400;
    let second_of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60,
    );
    let fraction = if nanos == 0 {
        String::new()
    } else {
        let digits = format!(".{nanos:09}");
        digits.trim_end_matches('0').to_owned()
    };
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z")
}

/// Gregorian (year, month, day) of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`, for non-negative inputs).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        let instants = [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            UNIX_EPOCH + Duration::new(951_825_600, 500_000_000),
            UNIX_EPOCH + Duration::new(4_107_542_399, 1),
        ];

        let formatted = instants.map(rfc3339);

        assert_eq!(
            formatted,
            [
                "1970-01-01T00:00:00Z",
                "2023-11-14T22:13:20Z",
                "2000-02-29T12:00:00.5Z",
                "2100-02-28T23:59:59.000000001Z",
            ]
        );
    }

    #[test]
    fn init_body_uses_camel_case_and_omits_unset_fields() {
        let request = InitRequest {
            access_token: Some("secret".into()),
            env_vars: BTreeMap::from([("FOO".into(), "bar".into())]),
            default_user: Some("root".into()),
            default_workdir: None,
            timestamp: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            hostname: Some("clone-1".into()),
            entropy_seed: Some(vec![0xff; 3]),
        };

        let json: serde_json::Value = serde_json::from_slice(&request.to_json().unwrap()).unwrap();

        assert_eq!(
            json,
            serde_json::json!({
                "accessToken": "secret",
                "envVars": {"FOO": "bar"},
                "defaultUser": "root",
                "timestamp": "2023-11-14T22:13:20Z",
                "hostname": "clone-1",
                "entropySeed": "////",
            })
        );
    }
}
