//! The rules both HTTP APIs apply, in one place: `/v1` ([`crate::api`]) and
//! the E2B routes ([`crate::e2b`]) call this module for TTL ranges, waiting
//! out transitional states, the caps on what the agent buffers, the upload
//! limit and how manager failures map to HTTP statuses; neither has a copy
//! of its own. What needs the sandbox table (capacity, paused and snapshot
//! quotas) is [`sandbox_core::Manager`]'s, so no route can skip it.
//!
//! | rule | value |
//! |---|---|
//! | TTL (create, resume, connect, timeout, refresh) | 1 s ..= [`MAX_TTL`] (30 days) |
//! | a sandbox starting, pausing, resuming or stopping | lifecycle calls wait for it to settle, at most [`SETTLE_TIMEOUT`] |
//! | out of capacity (every path that starts a VM) | 503, code `capacity` |
//! | paused/snapshot quota | 429, code `quota_exceeded` |
//! | a template or snapshot name taken or being created | 409, code `conflict` |
//! | the VMM missed a QMP deadline (stuck or stopped QEMU) | 504, code `vmm_timeout` |
//! | exec output (JSON route) | `exec_output_limit` bytes per stream, then `truncated` |
//! | concurrent uploads | `max_concurrent_uploads`, then 429 `too_many_uploads` |
//! | egress allow/deny entries | IPv4 CIDRs or addresses, and in allow lists domain names (`example.com`, `*.example.com`), at most [`MAX_EGRESS_ENTRIES`] per list; IPv6 and names in deny lists 400 |

use std::sync::Arc;
use std::time::{Duration, Instant};

use envd_client::EnvdError;
use http::StatusCode;
use sandbox_core::network::{DomainRule, EgressRules, Ipv4Net};
use sandbox_core::{Manager, ManagerError, SandboxError, SandboxInfo, State};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::AgentConfig;

/// The longest TTL a request may ask for: 30 days.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The longest a lifecycle call waits for a sandbox to leave a transitional
/// state.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Entries an egress allow or deny list may hold.
pub const MAX_EGRESS_ENTRIES: usize = 256;

/// A request refused by a rule: status, stable code, message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

/// The agent's limits, made once from its configuration.
#[derive(Debug)]
pub struct Policy {
    /// Bytes of each of stdout and stderr an exec's JSON reply carries.
    pub exec_output_limit: usize,
    uploads: Arc<Semaphore>,
    max_uploads: usize,
}

impl Policy {
    pub fn new(config: &AgentConfig) -> Self {
        Self {
            exec_output_limit: config.exec_output_limit,
            uploads: Arc::new(Semaphore::new(config.max_concurrent_uploads)),
            max_uploads: config.max_concurrent_uploads,
        }
    }

    /// A place for one upload, held until the permit is dropped; 429
    /// `too_many_uploads` when all are taken.
    pub fn upload_permit(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        self.uploads.clone().try_acquire_owned().map_err(|_| {
            Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_uploads",
                format!(
                    "{} uploads are in progress, the most this agent takes at once; try again when one has finished",
                    self.max_uploads
                ),
            )
        })
    }
}

/// `seconds` (from the request field `field`) as a TTL: 1 s ..= [`MAX_TTL`].
pub fn ttl(field: &str, seconds: f64) -> Result<Duration, Refusal> {
    if !seconds.is_finite() || !(1.0..=MAX_TTL.as_secs_f64()).contains(&seconds) {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "{field} must be 1..={} seconds, got {seconds}",
                MAX_TTL.as_secs()
            ),
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A request's egress allow and deny lists (named `allow_field` and
/// `deny_field` in errors) as a sandbox's rules. Entries are `a.b.c.d/n`
/// (host bits cleared) or `a.b.c.d` (a /32), and in the allow list also
/// domain names (`example.com`, `*.example.com`: see
/// [`sandbox_core::network::EgressRules`]); at most [`MAX_EGRESS_ENTRIES`]
/// per list. IPv6, malformed names and names in the deny list are refused
/// with the reason.
pub fn egress_rules(
    (allow_field, allow): (&str, &[String]),
    (deny_field, deny): (&str, &[String]),
) -> Result<EgressRules, Refusal> {
    let refuse = |why: String| Refusal::new(StatusCode::BAD_REQUEST, "invalid_request", why);
    let mut rules = EgressRules::default();
    for (field, entries) in [(allow_field, allow), (deny_field, deny)] {
        if entries.len() > MAX_EGRESS_ENTRIES {
            return Err(refuse(format!(
                "{field} holds {} entries; at most {MAX_EGRESS_ENTRIES}",
                entries.len()
            )));
        }
    }
    for entry in allow {
        let entry = entry.trim();
        if DomainRule::looks_like_domain(entry) {
            let name = entry
                .parse::<DomainRule>()
                .map_err(|err| refuse(format!("{allow_field}: {err}")))?;
            rules.names.push(name);
        } else {
            rules
                .allow
                .push(egress_range(entry).map_err(|why| refuse(format!("{allow_field}: {why}")))?);
        }
    }
    for entry in deny {
        let entry = entry.trim();
        if DomainRule::looks_like_domain(entry) {
            return Err(refuse(format!(
                "{deny_field}: {entry:?} is a domain name: deny lists take IPv4 CIDRs and \
                 addresses only (deny 0.0.0.0/0 and allow names instead)"
            )));
        }
        rules
            .deny
            .push(egress_range(entry).map_err(|why| refuse(format!("{deny_field}: {why}")))?);
    }
    Ok(rules)
}

/// One egress entry as an IPv4 range, or why it is none.
fn egress_range(text: &str) -> Result<Ipv4Net, String> {
    if let Ok(net) = text.parse::<Ipv4Net>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = text.parse::<std::net::Ipv4Addr>() {
        return Ok(Ipv4Net::from(ip));
    }
    if text.contains(':') {
        return Err(format!(
            "{text:?} is IPv6: sandboxes have no IPv6 egress (all of it is denied)"
        ));
    }
    Err(format!(
        "{text:?} is not an IPv4 CIDR (a.b.c.d/n), an address or a domain name"
    ))
}

/// The sandbox once it is out of a transitional state (starting, pausing,
/// resuming, stopping), or as it is after [`SETTLE_TIMEOUT`].
pub async fn settled(manager: &Manager, id: &str) -> Result<SandboxInfo, ManagerError> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let info = manager.get(id)?;
        let moving = matches!(
            info.state,
            State::Starting | State::Pausing | State::Resuming | State::Stopping
        );
        if !moving || Instant::now() >= deadline {
            return Ok(info);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What [`wake`] found.
#[derive(Debug)]
pub enum Wake {
    /// It was running already.
    Running(SandboxInfo),
    /// It was paused and is running now.
    Resumed(SandboxInfo),
    /// Neither running nor paused (stopped, failed).
    NotResumable,
    /// Concurrent pauses or resumes won every try.
    Contended,
}

/// Sandbox `id` running: transitional states are waited out and a paused
/// one is resumed (TTL `timeout`, the default when `None`; with `reboot`
/// booted afresh from its disk, see [`Manager::resume_as`]); a resume that
/// loses a race with a concurrent pause or resume is tried again, 3 tries
/// in all. Shared by E2B's connect and the proxy's auto-resume.
pub async fn wake(
    manager: &Manager,
    id: &str,
    timeout: Option<Duration>,
    reboot: bool,
) -> Result<Wake, ManagerError> {
    for _ in 0..3 {
        let info = settled(manager, id).await?;
        match info.state {
            State::Running => return Ok(Wake::Running(info)),
            State::Paused => match manager.resume_as(id, timeout, reboot).await {
                Ok(info) => return Ok(Wake::Resumed(info)),
                Err(ManagerError::InvalidState { .. }) => {}
                Err(err) => return Err(err),
            },
            _ => return Ok(Wake::NotResumable),
        }
    }
    Ok(Wake::Contended)
}

/// The status and code of a manager failure, the same on both APIs.
pub fn classify(err: &ManagerError) -> (StatusCode, &'static str) {
    match err {
        ManagerError::InvalidName(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
        ManagerError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        ManagerError::SandboxNotFound(_) => (StatusCode::NOT_FOUND, "sandbox_not_found"),
        ManagerError::TemplateNotFound(_) => (StatusCode::NOT_FOUND, "template_not_found"),
        ManagerError::SnapshotNotFound(_) => (StatusCode::NOT_FOUND, "snapshot_not_found"),
        ManagerError::InvalidState { .. } => (StatusCode::CONFLICT, "invalid_state"),
        ManagerError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        ManagerError::Capacity { .. } => (StatusCode::SERVICE_UNAVAILABLE, "capacity"),
        ManagerError::Quota { .. } => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"),
        ManagerError::Sandbox(err) => match err.as_ref() {
            SandboxError::Envd { source, .. } => classify_envd(source),
            SandboxError::InvalidState { .. } => (StatusCode::CONFLICT, "invalid_state"),
            SandboxError::Qemu {
                source: qemu_vmm::QemuError::QmpDeadline { .. },
                ..
            } => (StatusCode::GATEWAY_TIMEOUT, "vmm_timeout"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        },
        ManagerError::Store { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

/// envd's Connect codes as statuses; anything else is a bad gateway.
pub fn classify_envd(err: &EnvdError) -> (StatusCode, &'static str) {
    if matches!(err, EnvdError::TooLarge { .. }) {
        return (StatusCode::BAD_GATEWAY, "envd_reply_too_large");
    }
    match err.code() {
        Some("not_found") => (StatusCode::NOT_FOUND, "not_found"),
        Some("permission_denied") => (StatusCode::FORBIDDEN, "permission_denied"),
        Some("invalid_argument") => (StatusCode::BAD_REQUEST, "invalid_argument"),
        Some("already_exists") => (StatusCode::CONFLICT, "already_exists"),
        Some("deadline_exceeded") => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        Some("unavailable") => (StatusCode::BAD_GATEWAY, "envd_unavailable"),
        _ => (StatusCode::BAD_GATEWAY, "envd_error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_takes_one_second_to_thirty_days() {
        let ok = [
            ttl("timeout", 1.0),
            ttl("timeout", 0.5e1),
            ttl("timeout", 2_592_000.0),
        ];
        let refused = [-1.0, 0.0, 0.5, f64::NAN, f64::INFINITY, 2_592_001.0, 1e13]
            .map(|s| ttl("timeout", s).map_err(|r| r.status));

        assert!(ok.iter().all(Result::is_ok));
        assert!(refused.iter().all(|r| *r == Err(StatusCode::BAD_REQUEST)));
    }

    #[test]
    fn a_vmm_deadline_is_504_naming_it() {
        let err = ManagerError::from(SandboxError::Qemu {
            vm: "sbx".into(),
            source: qemu_vmm::QemuError::QmpDeadline {
                vm: "sbx".into(),
                command: "stop".into(),
                path: "/run/sbx/vmm/qmp.sock".into(),
                waited_ms: 10_000,
            },
        });

        let code = classify(&err);

        assert_eq!(code, (StatusCode::GATEWAY_TIMEOUT, "vmm_timeout"));
    }

    #[test]
    fn capacity_is_503_and_quota_429() {
        let capacity = ManagerError::Capacity {
            running: 2,
            limit: 2,
        };
        let quota = ManagerError::Quota {
            what: "paused sandboxes",
            used: 1,
            limit: 1,
            hint: "",
        };

        let codes = [classify(&capacity), classify(&quota)];

        assert_eq!(
            codes,
            [
                (StatusCode::SERVICE_UNAVAILABLE, "capacity"),
                (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded")
            ]
        );
    }
}
