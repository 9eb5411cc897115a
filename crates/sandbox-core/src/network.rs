//! Per-sandbox network namespaces (on `netns`): a pool of slots, each slot
//! one namespace with a TAP for the VM, NAT and the egress policy.
//!
//! The guest's own address is the same in every slot (169.254.0.21), so a
//! VM saved in one slot restores into any other; the host reaches a sandbox
//! through its slot's host-reachable address.
//!
//! A pool can keep spare networks made ahead of demand
//! ([`NetworkPool::with_spares`], kept full by [`NetworkPool::run_spares`]):
//! a create takes one and only sets its egress policy, instead of making a
//! namespace, links, routes and two nftables rulesets on its hot path.
//! Likewise a pause can leave the removal of its network (~60 ms of link
//! deletions and an `nft` run) to the background
//! ([`NetworkPool::with_background_release`], [`NetworkPool::release`]).

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use netns::{DomainRule, EgressPolicy, Ipv4Net};
use netns::{Network, NetworkOptions, Slot, SlotAllocator};

use crate::error::SandboxError;

/// A sandbox's own egress rules: E2B's `allowOut` (CIDRs, single
/// addresses and domain names) and `denyOut` (CIDRs and addresses). Allow
/// wins over deny, and allowed ranges pass with internet off too;
/// `deny: [0.0.0.0/0]` denies all but `allow`. A name lets HTTP (by Host)
/// and TLS (by server name) connections on ports 80 and 443 through where
/// the ranges deny their address (see the `egress-proxy` crate). The
/// special-purpose ranges (the host, private networks, other sandboxes)
/// stay unreachable whatever they say. Needs a namespace network.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EgressRules {
    #[serde(default)]
    pub allow: Vec<Ipv4Net>,
    #[serde(default)]
    pub deny: Vec<Ipv4Net>,
    /// Allowed names (`example.com`, `*.example.com`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<DomainRule>,
}

impl EgressRules {
    /// Neither allows nor denies anything of its own.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty() && self.names.is_empty()
    }

    /// Why these rules make no sense for a sandbox with `internet` as
    /// given, if they do not: names only matter where the ranges deny.
    pub fn problem(&self, internet: bool) -> Option<String> {
        (!self.names.is_empty() && internet && self.deny.is_empty()).then(|| {
            "domain names in the allow list only let through what the address rules deny: \
             deny 0.0.0.0/0 too (E2B's ALL_TRAFFIC) or turn internet access off"
                .to_string()
        })
    }

    /// The allow list as given: ranges, then names.
    pub fn allow_texts(&self) -> Vec<String> {
        self.allow
            .iter()
            .map(ToString::to_string)
            .chain(self.names.iter().map(ToString::to_string))
            .collect()
    }
}

/// Whether a sandbox gets outbound internet, from what was asked
/// (`requested`) and how it is networked (`namespaces`: its own namespace
/// from a [`NetworkPool`]; otherwise QEMU's user-mode network).
///
/// - In a namespace: as asked, on when not said.
/// - In user mode the guest is always isolated (`restrict=on`: only the
///   envd forward carries traffic), because a user-mode network that lets
///   the guest out also lets it reach the host's loopback through 10.0.2.2,
///   the agent's API included. Not said means off; asking for internet is
///   refused with an error saying why.
pub fn resolve_internet(requested: Option<bool>, namespaces: bool) -> Result<bool, String> {
    match (requested, namespaces) {
        (requested, true) => Ok(requested.unwrap_or(true)),
        (None | Some(false), false) => Ok(false),
        (Some(true), false) => Err(
            "internet access needs per-sandbox network namespaces (agent running as root, \
             network mode \"namespace\"): in QEMU's user-mode network a guest that can reach \
             the internet can also reach the host's loopback (10.0.2.2), the agent's API \
             included, so user-mode sandboxes are isolated; create it with internet false \
             (or unset)"
                .to_string(),
        ),
    }
}

/// Spare networks an agent keeps by default (see
/// [`NetworkPool::with_spares`]).
pub const DEFAULT_SPARES: usize = 2;

/// Slots the agent uses (the netns crate allows up to 32768).
pub const DEFAULT_SLOTS: Range<u16> = 1..4096;

/// Time between tries to make spares after one failed.
const SPARE_BACKOFF: Duration = Duration::from_secs(5);
/// Time between checks of a full set of spares (a take wakes it at once).
const SPARE_RECHECK: Duration = Duration::from_secs(30);

/// Allocates slots and creates, adopts and removes sandbox networks.
#[derive(Debug)]
pub struct NetworkPool {
    slots: SlotAllocator,
    /// Limits and SMTP for every sandbox; `internet` is set per sandbox.
    policy: EgressPolicy,
    /// How many spare networks to keep.
    spare_target: usize,
    /// Networks made ahead of demand, with internet on.
    spares: Mutex<Vec<Network>>,
    /// Spares handed to sandboxes since the pool was made (for metrics).
    spares_taken: AtomicUsize,
    /// Wakes [`NetworkPool::run_spares`] when a spare was taken.
    wake: tokio::sync::Notify,
    /// Whether [`NetworkPool::release`] removes in the background.
    background_release: bool,
    /// Background removals under way.
    releasing: AtomicUsize,
}

fn net_err(what: impl std::fmt::Display) -> SandboxError {
    SandboxError::Network(what.to_string())
}

impl NetworkPool {
    /// A pool over `slots` with the default egress limits
    /// ([`EgressPolicy::default`]: SMTP blocked, at most
    /// [`EgressPolicy::DEFAULT_MAX_CONNECTIONS`] concurrent connections and
    /// [`EgressPolicy::DEFAULT_NEW_CONNECTIONS_PER_SEC`] new ones per second
    /// per sandbox).
    pub fn new(slots: Range<u16>) -> Result<Self, SandboxError> {
        Ok(Self {
            slots: SlotAllocator::new(slots).map_err(net_err)?,
            policy: EgressPolicy::default(),
            spare_target: 0,
            spares: Mutex::new(Vec::new()),
            spares_taken: AtomicUsize::new(0),
            wake: tokio::sync::Notify::new(),
            background_release: false,
            releasing: AtomicUsize::new(0),
        })
    }

    /// Makes [`NetworkPool::release`] return at once and remove the network
    /// in the background (a failure is logged; the slot stays taken until
    /// the removal ends; what a crash leaves, the next start removes).
    /// [`NetworkPool::settle`] waits for removals under way.
    #[must_use]
    pub fn with_background_release(mut self) -> Self {
        self.background_release = true;
        self
    }

    /// Keeps `count` spare networks made ahead of demand once
    /// [`NetworkPool::run_spares`] runs (0, the default: none). Each holds a
    /// slot and a namespace, and keeps host forwarding on.
    #[must_use]
    pub fn with_spares(mut self, count: usize) -> Self {
        self.spare_target = count;
        self
    }

    /// Uses `policy`'s SMTP switch and connection limits for every sandbox
    /// (its `internet` is ignored: each sandbox sets its own).
    #[must_use]
    pub fn with_policy(mut self, policy: EgressPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The pool's limits and SMTP switch with a sandbox's `internet` and
    /// `rules`.
    pub fn policy_for(&self, internet: bool, rules: &EgressRules) -> EgressPolicy {
        self.policy
            .clone()
            .with_internet(internet)
            .with_ranges(rules.allow.clone(), rules.deny.clone())
            .with_names(rules.names.clone())
    }

    fn options(&self, internet: bool, rules: &EgressRules) -> NetworkOptions {
        NetworkOptions {
            policy: self.policy_for(internet, rules),
            ..NetworkOptions::default()
        }
    }

    /// A network for a new sandbox: a spare with its egress policy set to
    /// `internet` and `rules`, or else a new one in a free slot; nothing is
    /// left behind on failure.
    pub async fn create(
        &self,
        internet: bool,
        rules: &EgressRules,
    ) -> Result<Network, SandboxError> {
        if let Some(network) = self.take_spare(internet, rules).await {
            return Ok(network);
        }
        self.make(internet, rules).await
    }

    /// A spare with that policy, if one is ready (a spare whose policy
    /// cannot be switched is removed, and `None` returned).
    async fn take_spare(&self, internet: bool, rules: &EgressRules) -> Option<Network> {
        let mut network = lock(&self.spares).pop()?;
        self.spares_taken.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
        let policy = self.policy_for(internet, rules);
        if *network.policy() == policy {
            return Some(network);
        }
        match network.set_policy(policy).await {
            Ok(()) => Some(network),
            Err(err) => {
                tracing::warn!(slot = %network.slot(), %err, "setting a spare network's policy failed; removing it");
                if let Err(err) = self.remove(network).await {
                    tracing::warn!(%err, "removing a spare network failed");
                }
                None
            }
        }
    }

    /// Spares ready now.
    pub fn spares(&self) -> usize {
        lock(&self.spares).len()
    }

    /// Spares handed to sandboxes since the pool was made.
    pub fn spares_taken(&self) -> usize {
        self.spares_taken.load(Ordering::Relaxed)
    }

    /// Makes spares until there are as many as [`NetworkPool::with_spares`]
    /// asked for; the first failure ends it.
    pub async fn fill_spares(&self) -> Result<(), SandboxError> {
        while self.spares() < self.spare_target {
            let network = self.make(true, &EgressRules::default()).await?;
            lock(&self.spares).push(network);
        }
        Ok(())
    }

    /// Keeps the spares made until `stop` completes (checked between
    /// networks: one under way is finished and kept), then removes them.
    pub async fn run_spares(&self, stop: impl std::future::Future<Output = ()>) {
        if self.spare_target == 0 {
            return;
        }
        let cadence = crate::refill::Cadence {
            idle: SPARE_RECHECK,
            backoff: SPARE_BACKOFF,
        };
        crate::refill::keep_filled("making spare networks", cadence, &self.wake, stop, || {
            self.fill_spares()
        })
        .await;
        if let Err(err) = self.drain_spares().await {
            tracing::warn!(%err, "removing spare networks failed; the next start removes them");
        }
    }

    /// Removes every spare; all are tried, their errors collected.
    pub async fn drain_spares(&self) -> Result<(), SandboxError> {
        let spares: Vec<Network> = lock(&self.spares).drain(..).collect();
        let mut errors = Vec::new();
        for network in spares {
            if let Err(err) = self.remove(network).await {
                errors.push(err.to_string());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SandboxError::Teardown {
                resource: "spare sandbox networks".to_string(),
                errors,
            })
        }
    }

    /// A new network in a free slot; nothing is left behind on failure.
    async fn make(&self, internet: bool, rules: &EgressRules) -> Result<Network, SandboxError> {
        let slot = self.slots.allocate().map_err(net_err)?;
        match netns::create_network(slot, &self.options(internet, rules)).await {
            Ok(network) => Ok(network),
            Err(err) => {
                let _ = self.slots.release(slot);
                Err(net_err(err))
            }
        }
    }

    /// Removes a network and frees its slot (also when some removal failed:
    /// the startup cleanup catches what is left).
    pub async fn remove(&self, network: Network) -> Result<(), SandboxError> {
        let slot = network.slot();
        let removed = netns::remove_network(network).await;
        let _ = self.slots.release(slot);
        removed.map_err(net_err)
    }

    /// Gives back the network of a sandbox that no longer runs on it (a
    /// pause): removed now, or, with
    /// [`NetworkPool::with_background_release`], in the background.
    pub async fn release(self: &Arc<Self>, network: Network) -> Result<(), SandboxError> {
        if !self.background_release {
            return self.remove(network).await;
        }
        self.releasing.fetch_add(1, Ordering::SeqCst);
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            let slot = network.slot();
            if let Err(err) = pool.remove(network).await {
                tracing::warn!(%slot, %err, "removing a released network failed; the next start removes it");
            }
            pool.releasing.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(())
    }

    /// Waits until no network released in the background is still being
    /// removed.
    pub async fn settle(&self) {
        while self.releasing.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Takes over the network of `slot` made by an earlier agent run.
    pub async fn adopt(
        &self,
        slot: u16,
        internet: bool,
        rules: &EgressRules,
    ) -> Result<Network, SandboxError> {
        let slot = Slot::new(u32::from(slot)).map_err(net_err)?;
        self.slots.reserve(slot).map_err(net_err)?;
        match netns::adopt_network(slot, &self.options(internet, rules)).await {
            Ok(network) => Ok(network),
            Err(err) => {
                let _ = self.slots.release(slot);
                Err(net_err(err))
            }
        }
    }

    /// Removes networks of crashed runs: every `petrel-<slot>` namespace in
    /// the pool's range whose slot is neither in use nor a spare's.
    pub async fn cleanup_stale(&self, in_use: &[u16]) -> Result<usize, SandboxError> {
        let range = self.slots.range();
        let spares: Vec<u16> = lock(&self.spares)
            .iter()
            .map(|n| n.slot().index())
            .collect();
        let mut stale: Vec<u16> = std::fs::read_dir(netns::NETNS_DIR)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_prefix(netns::NETNS_PREFIX)?
                            .parse()
                            .ok()
                    })
                    .filter(|slot| {
                        range.contains(slot) && !in_use.contains(slot) && !spares.contains(slot)
                    })
                    .collect()
            })
            .unwrap_or_default();
        stale.sort_unstable();
        let mut errors = Vec::new();
        for slot in &stale {
            if let Err(err) = netns::cleanup_stale(*slot..*slot + 1).await {
                errors.push(err.to_string());
            }
        }
        if errors.is_empty() {
            Ok(stale.len())
        } else {
            Err(SandboxError::Teardown {
                resource: "stale sandbox networks".to_string(),
                errors,
            })
        }
    }
}

/// The guard of `mutex`, also when a holder panicked (the spares list
/// stays consistent: every change is one push or pop).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_default_to_internet_and_follow_the_request() {
        assert_eq!(resolve_internet(None, true), Ok(true));
        assert_eq!(resolve_internet(Some(false), true), Ok(false));
        assert_eq!(resolve_internet(Some(true), true), Ok(true));
    }

    #[test]
    fn user_mode_is_isolated_and_refuses_internet_saying_why() {
        assert_eq!(resolve_internet(None, false), Ok(false));
        assert_eq!(resolve_internet(Some(false), false), Ok(false));
        let err = resolve_internet(Some(true), false).unwrap_err();
        assert!(
            err.contains("10.0.2.2") && err.contains("namespace"),
            "{err}"
        );
    }
}
