//! The `network` options of E2B sandboxes: what the proxy sends to their
//! ports (`maskRequestHost`) and their own egress ranges (`allowOut`,
//! `denyOut`, on create and `PUT /sandboxes/{id}/network`).
//!
//! Egress entries are IPv4 CIDRs or addresses, and in `allowOut` domain
//! names (`example.com`, `*.example.com`: HTTP by Host and TLS by server
//! name on ports 80 and 443, where the ranges deny the address); allow
//! wins over deny, and `denyOut: ["0.0.0.0/0"]` denies all but `allowOut`
//! (E2B's semantics; names need it, or internet access off).
//! `allowPublicTraffic: false` makes the proxy require the sandbox's
//! traffic token on requests to its ports (see [`super::proxy`]).
//! What is not implemented is refused with 400, never ignored:
//! `dnsServers`, `egressProxy`, `httpsPorts`, per-host `rules`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use sandbox_core::SandboxInfo;
use sandbox_core::network::{EgressRules, Ipv4Net};
use serde_json::{Map, Value};

use super::error::ApiError;
use super::models::NetworkInfo;
use super::{Control, ENVD_PORT, parse_required};

/// Longest `network.maskRequestHost`.
const MAX_HOST_MASK: usize = 255;

/// Refuses the `network` options (of a create or an update) that are not
/// implemented.
pub(super) fn check_supported(network: &Value) -> Result<(), ApiError> {
    let Some(network) = network.as_object() else {
        if network.is_null() {
            return Ok(());
        }
        return Err(ApiError::bad_request("network must be an object"));
    };
    let has_rules = network.get("rules").is_some_and(|v| match v {
        Value::Object(items) => !items.is_empty(),
        Value::Null => false,
        _ => true,
    });
    if has_rules {
        return Err(ApiError::bad_request(
            "network.rules (per-host request transforms) are not supported yet",
        ));
    }
    for key in ["dnsServers", "egressProxy", "httpsPorts"] {
        if network.get(key).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::bad_request(format!(
                "network.{key} is not supported yet"
            )));
        }
    }
    Ok(())
}

/// `network.allowPublicTraffic: false`: requests to the sandbox's ports
/// through the proxy need its `trafficAccessToken` in the
/// `e2b-traffic-access-token` header.
pub(super) fn private_traffic(network: Option<&Value>) -> Result<bool, ApiError> {
    match network.and_then(|n| n.get("allowPublicTraffic")) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(public)) => Ok(!public),
        Some(_) => Err(ApiError::bad_request(
            "network.allowPublicTraffic must be a boolean",
        )),
    }
}

/// `network.maskRequestHost`: the `Host` header of requests the proxy
/// sends to the sandbox's ports, `${PORT}` replaced by the port.
pub(super) fn host_mask(network: Option<&Value>) -> Result<Option<String>, ApiError> {
    let Some(mask) = network
        .and_then(|n| n.get("maskRequestHost"))
        .filter(|v| !v.is_null())
    else {
        return Ok(None);
    };
    let mask = mask
        .as_str()
        .ok_or_else(|| ApiError::bad_request("network.maskRequestHost must be a string"))?;
    let example = super::proxy::masked_host(mask, ENVD_PORT);
    if mask.is_empty()
        || mask.len() > MAX_HOST_MASK
        || example.contains(['/', ' ', '@', '?', '#'])
        || http::HeaderValue::from_str(&example).is_err()
    {
        return Err(ApiError::bad_request(format!(
            "network.maskRequestHost must be a host name (1..={MAX_HOST_MASK} characters, `${{PORT}}` allowed), got {mask:?}"
        )));
    }
    Ok(Some(mask.to_owned()))
}

/// `network.allowOut` and `network.denyOut` as the sandbox's egress
/// rules (none given: none).
pub(super) fn egress_rules(network: Option<&Value>) -> Result<EgressRules, ApiError> {
    let empty = Map::new();
    let network = network.and_then(Value::as_object).unwrap_or(&empty);
    let allow = entries(network, "allowOut")?;
    let deny = entries(network, "denyOut")?;
    Ok(crate::policy::egress_rules(
        ("network.allowOut", &allow),
        ("network.denyOut", &deny),
    )?)
}

/// The entries of `network[key]`, a list of strings.
fn entries(network: &Map<String, Value>, key: &str) -> Result<Vec<String>, ApiError> {
    let not_strings = || ApiError::bad_request(format!("network.{key} must be a list of strings"));
    match network.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or_else(not_strings))
            .collect(),
        Some(_) => Err(not_strings()),
    }
}

/// The `network` a sandbox's detail shows; `None` when it has no options.
pub(super) fn info_of(info: &SandboxInfo) -> Option<NetworkInfo> {
    let texts = |nets: &[Ipv4Net]| nets.iter().map(ToString::to_string).collect::<Vec<_>>();
    let network = NetworkInfo {
        allow_out: info.egress.allow_texts(),
        deny_out: texts(&info.egress.deny),
        mask_request_host: info.host_mask.clone(),
        allow_public_traffic: info.traffic_token.is_some().then_some(false),
    };
    let empty = network.allow_out.is_empty()
        && network.deny_out.is_empty()
        && network.mask_request_host.is_none()
        && network.allow_public_traffic.is_none();
    (!empty).then_some(network)
}

/// `PUT /sandboxes/{id}/network` (the SDKs' `update_network`): replaces
/// the sandbox's egress ranges; a field left out clears it. 204.
pub(super) async fn update(
    State(control): State<Control>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let network: Value = parse_required(&body)?;
    check_supported(&network)?;
    let egress = egress_rules(Some(&network))?;
    control.app.manager.set_egress(&id, egress).await?;
    tracing::info!(sandbox = %id, "e2b: egress rules replaced");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn host_mask_takes_host_names_with_a_port_placeholder() {
        let mask = |m: Value| host_mask(Some(&json!({"maskRequestHost": m})));

        let plain = host_mask(None);
        let placeholder = mask(json!("${PORT}-app.example.test"));
        let refused: Vec<_> = ["", "a b", "x/y", "u@h", "\n"]
            .into_iter()
            .map(|m| mask(json!(m)))
            .chain([mask(json!(3)), mask(json!("h".repeat(256)))])
            .collect();

        assert_eq!(plain.unwrap(), None);
        assert_eq!(
            placeholder.unwrap().as_deref(),
            Some("${PORT}-app.example.test")
        );
        assert!(refused.iter().all(Result::is_err), "{refused:?}");
    }

    #[test]
    fn egress_entries_are_cidrs_or_addresses() {
        let rules = egress_rules(Some(&json!({
            "allowOut": ["1.1.1.1", "8.8.8.0/24", " 10.1.2.3/8 "],
            "denyOut": ["0.0.0.0/0"],
        })))
        .unwrap();

        let text: Vec<String> = rules.allow.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["1.1.1.1/32", "8.8.8.0/24", "10.0.0.0/8"]);
        assert_eq!(rules.deny[0].to_string(), "0.0.0.0/0");
    }

    #[test]
    fn egress_takes_names_in_allow_lists_only() {
        let rules = egress_rules(Some(&json!({
            "allowOut": ["Example.com", "*.example.org", "1.1.1.1"],
            "denyOut": ["0.0.0.0/0"],
        })))
        .unwrap();

        assert_eq!(
            rules.allow_texts(),
            ["1.1.1.1/32", "example.com", "*.example.org"]
        );
        assert_eq!(rules.names.len(), 2);
    }

    #[test]
    fn egress_refuses_denied_names_bad_names_ipv6_garbage_and_too_many_entries() {
        let refused = |network: Value| {
            egress_rules(Some(&network))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };

        let denied_name = refused(json!({"denyOut": ["example.com"]}));
        let bad_name = refused(json!({"allowOut": ["a.*.example.com"]}));
        let ipv6 = refused(json!({"denyOut": ["::/0"]}));
        let garbage = refused(json!({"denyOut": ["1.2.3.4/33"]}));
        let not_a_list = refused(json!({"denyOut": "0.0.0.0/0"}));
        let too_many =
            refused(json!({"denyOut": vec!["1.1.1.1"; crate::policy::MAX_EGRESS_ENTRIES + 1]}));

        assert!(denied_name.contains("deny lists take"), "{denied_name}");
        assert!(bad_name.contains("wildcard"), "{bad_name}");
        assert!(ipv6.contains("IPv6"), "{ipv6}");
        assert!(garbage.contains("not an IPv4 CIDR"), "{garbage}");
        assert!(not_a_list.contains("list of strings"), "{not_a_list}");
        assert!(too_many.contains("at most"), "{too_many}");
    }

    #[test]
    fn unsupported_network_options_are_refused() {
        for network in [
            json!({"dnsServers": ["1.1.1.1"]}),
            json!({"egressProxy": {"address": "x:1"}}),
            json!({"httpsPorts": [8443]}),
            json!({"rules": {"api.example.com": []}}),
            json!("x"),
        ] {
            assert!(check_supported(&network).is_err(), "{network}");
        }
        assert!(check_supported(&json!({"allowOut": ["1.1.1.1"], "dnsServers": null})).is_ok());
    }
}
