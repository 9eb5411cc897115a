//! Creating a sandbox's network in one call, with rollback; removing it;
//! cleaning up what a crashed run left behind.

use std::net::Ipv4Addr;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::addressing::{
    GATEWAY_IP, GATEWAY_MAC, GUEST_PREFIX, GuestNetConfig, SlotPlan, TAP_NAME, host_dns,
    slot_of_link, slot_of_namespace, slot_of_reachable,
};
use crate::error::{NetError, RemoveError};
use crate::forwarding::{self, ForwardingFiles};
use crate::links::Netlink;
use crate::names;
use crate::namespace::{self, command_in_netns, run_in_netns};
use crate::nft;
use crate::policy::{EgressPolicy, egress_replacement, host_ruleset, namespace_ruleset};
use crate::slot::Slot;
use crate::tap::create_persistent_tap;

/// The steps of [`create_network`], in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Named namespace `petrel-<slot>`, and the slot recorded as holding
    /// host IPv4 forwarding on (see the `forwarding` module).
    Namespace,
    /// Loopback up in the namespace.
    Loopback,
    /// Veth pair, host end in the host, peer created inside the namespace.
    Veth,
    /// Persistent TAP `tap0` in the namespace, with the gateway MAC.
    Tap,
    /// Addresses on the veth ends and the TAP.
    Addresses,
    /// Veth ends and TAP up.
    LinksUp,
    /// Default route in the namespace, host route to the host-reachable /32.
    Routes,
    /// Forwarding on in the namespace (IPv6 off there).
    Forwarding,
    /// NAT and filter tables in the namespace.
    NamespaceNft,
    /// This slot's MASQUERADE and filter rules on the host.
    HostNft,
}

impl Step {
    pub const ALL: [Step; 10] = [
        Step::Namespace,
        Step::Loopback,
        Step::Veth,
        Step::Tap,
        Step::Addresses,
        Step::LinksUp,
        Step::Routes,
        Step::Forwarding,
        Step::NamespaceNft,
        Step::HostNft,
    ];
}

/// How to build a sandbox's network.
#[derive(Debug, Clone, Default)]
pub struct NetworkOptions {
    pub policy: EgressPolicy,
    /// Resolvers for the guest; `None` takes the host's first usable
    /// nameserver from `/etc/resolv.conf` ([`crate::host_dns`]).
    pub dns: Option<Vec<Ipv4Addr>>,
    /// Tests only: fail right after this step's resources were made (so its
    /// rollback is exercised too).
    #[doc(hidden)]
    pub fail_after: Option<Step>,
}

/// Something [`create_network`] made, undone in reverse order by rollback
/// and by [`remove_network`]. Addresses, in-namespace routes, sysctls and
/// nft tables inside the namespace go with the namespace; the host veth's
/// address goes with the link; the slot's hold on host forwarding goes with
/// the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resource {
    Namespace(PathBuf),
    HostVeth(String),
    Tap,
    HostRoute { dest: Ipv4Addr, gateway: Ipv4Addr },
    HostNft,
}

/// A sandbox's network. Remove it with [`remove_network`]; dropping it
/// leaves everything in place (for [`cleanup_stale`] to find).
#[derive(Debug)]
#[must_use = "a network left unremoved stays on the host until cleanup_stale"]
pub struct Network {
    plan: SlotPlan,
    guest: GuestNetConfig,
    policy: EgressPolicy,
    netns_path: PathBuf,
    resources: Vec<Resource>,
    /// Serves the policy's domain rules (none: no proxy).
    name_proxy: Option<egress_proxy::Proxy>,
}

impl Network {
    pub fn slot(&self) -> Slot {
        self.plan.slot
    }

    /// Every name and address of this slot.
    pub fn plan(&self) -> &SlotPlan {
        &self.plan
    }

    /// Namespace name, `petrel-<slot>`.
    pub fn namespace(&self) -> &str {
        &self.plan.namespace
    }

    /// `/run/netns/petrel-<slot>`: for [`command_in_netns`] or `setns`.
    pub fn netns_path(&self) -> &Path {
        &self.netns_path
    }

    /// The address the host reaches the guest at (all ports, DNATed).
    pub fn host_reachable_ip(&self) -> Ipv4Addr {
        self.plan.reachable_ip
    }

    /// What the guest needs: address, gateway, DNS, TAP name, MAC.
    pub fn guest(&self) -> &GuestNetConfig {
        &self.guest
    }

    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// Switches the egress policy; takes effect at once, for connections
    /// already open too.
    pub async fn set_policy(&mut self, policy: EgressPolicy) -> Result<(), NetError> {
        let start = Instant::now();
        // The proxy is ready before the redirect sends it anything, and
        // stops only after the redirect is gone.
        if !policy.names.is_empty() {
            names::sync(
                &mut self.name_proxy,
                &policy,
                &self.netns_path,
                &self.plan.namespace,
            )
            .await?;
        }
        let rules = egress_replacement(&self.plan, &policy, &self.guest.dns);
        let what = format!("egress chain of slot {}", self.plan.slot);
        nft::apply(
            Some((&self.netns_path, &self.plan.namespace)),
            &what,
            &rules,
        )
        .await?;
        if policy.names.is_empty() {
            self.name_proxy = None;
        }
        tracing::info!(slot = %self.plan.slot, internet = policy.internet, allow = policy.allow.len(), deny = policy.deny.len(), names = policy.names.len(), took_us = start.elapsed().as_micros() as u64, "egress policy set");
        self.policy = policy;
        Ok(())
    }

    /// Makes `cmd` start inside this network's namespace (see
    /// [`command_in_netns`]).
    pub fn command_in_netns(&self, cmd: &mut Command) -> Result<(), NetError> {
        command_in_netns(cmd, &self.netns_path)
    }

    /// Runs `f` on a thread inside this network's namespace.
    pub async fn run_in_netns<F, R>(&self, f: F) -> Result<R, NetError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        run_in_netns(&self.netns_path, f).await
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if !self.resources.is_empty() {
            tracing::warn!(slot = %self.plan.slot, "network dropped without remove_network; its resources stay until cleanup_stale");
        }
    }
}

/// Builds a network step by step, recording what it made.
struct Builder<'a> {
    plan: &'a SlotPlan,
    fail_after: Option<Step>,
    host: Netlink,
    ns: Option<Netlink>,
    resources: Vec<Resource>,
}

impl Builder<'_> {
    fn ns(&self) -> Result<&Netlink, NetError> {
        self.ns.as_ref().ok_or_else(|| NetError::Thread {
            netns: self.plan.namespace.clone(),
            detail: "namespace netlink connection used before it was opened".into(),
        })
    }

    async fn step(
        &mut self,
        step: Step,
        policy: &EgressPolicy,
        dns: &[Ipv4Addr],
    ) -> Result<(), NetError> {
        let start = Instant::now();
        let plan = self.plan;
        let path = plan.netns_path();
        let ns_label = plan.namespace.as_str();
        match step {
            Step::Namespace => {
                let made = create_namespace_holding_forwarding(plan).await?;
                self.resources.push(Resource::Namespace(made));
            }
            Step::Loopback => {
                let ns = Netlink::in_netns(&path, ns_label).await?;
                ns.set_up("lo").await?;
                self.ns = Some(ns);
            }
            Step::Veth => {
                let fd = namespace::open_netns(&path)?;
                self.host
                    .add_veth_into(&plan.host_veth, &plan.ns_veth, fd.as_raw_fd())
                    .await?;
                self.resources
                    .push(Resource::HostVeth(plan.host_veth.clone()));
            }
            Step::Tap => {
                run_in_netns(&path, || create_persistent_tap(TAP_NAME))
                    .await?
                    .map_err(|source| NetError::Link {
                        link: TAP_NAME.into(),
                        netns: ns_label.into(),
                        op: "create TAP",
                        source,
                    })?;
                self.resources.push(Resource::Tap);
                self.ns()?.set_mac(TAP_NAME, GATEWAY_MAC).await?;
            }
            Step::Addresses => {
                self.host
                    .add_address(&plan.host_veth, plan.host_ip, 31)
                    .await?;
                let ns = self.ns()?;
                ns.add_address(&plan.ns_veth, plan.vpeer_ip, 31).await?;
                ns.add_address(TAP_NAME, GATEWAY_IP, GUEST_PREFIX).await?;
            }
            Step::LinksUp => {
                self.host.set_up(&plan.host_veth).await?;
                let ns = self.ns()?;
                ns.set_up(&plan.ns_veth).await?;
                ns.set_up(TAP_NAME).await?;
            }
            Step::Routes => {
                self.ns()?
                    .add_route(Ipv4Addr::UNSPECIFIED, 0, plan.host_ip, None)
                    .await?;
                self.host
                    .add_route(plan.reachable_ip, 32, plan.vpeer_ip, Some(&plan.host_veth))
                    .await?;
                self.resources.push(Resource::HostRoute {
                    dest: plan.reachable_ip,
                    gateway: plan.vpeer_ip,
                });
            }
            Step::Forwarding => {
                forwarding::configure_namespace(&path, ns_label).await?;
            }
            Step::NamespaceNft => {
                let rules = namespace_ruleset(plan, policy, dns);
                let what = format!("ruleset of slot {}", plan.slot);
                nft::apply(Some((&path, ns_label)), &what, &rules).await?;
            }
            Step::HostNft => {
                let rules = host_ruleset(plan, dns);
                let _lock = nft::lock_host().await?;
                nft::apply(None, &format!("host rules of slot {}", plan.slot), &rules).await?;
                self.resources.push(Resource::HostNft);
            }
        }
        tracing::debug!(slot = %plan.slot, ?step, took_us = start.elapsed().as_micros() as u64, "create_network step done");
        if self.fail_after == Some(step) {
            return Err(NetError::Injected {
                step,
                slot: plan.slot.index(),
            });
        }
        Ok(())
    }
}

/// Creates the slot's namespace and records the slot as a holder of host
/// forwarding (switching it on), in one critical section under the host
/// lock; on failure the hold is dropped again.
async fn create_namespace_holding_forwarding(plan: &SlotPlan) -> Result<PathBuf, NetError> {
    let slot = plan.slot.index();
    let files = ForwardingFiles::host();
    let _lock = nft::lock_host().await?;
    let acquired = files.acquire_locked(slot)?;
    match namespace::create_named(&plan.namespace).await {
        Ok(path) => Ok(path),
        Err(e) => {
            if let Err(release) = files.undo_acquire_locked(slot, acquired) {
                tracing::error!(slot, error = %release, "dropping the forwarding hold of a namespace not made");
            }
            Err(e)
        }
    }
}

/// Deletes the slot's namespace and then drops its hold on host
/// forwarding (the last holder restores the original value), under the
/// host lock.
async fn delete_namespace_releasing_forwarding(slot: u16, path: &Path) -> Result<(), NetError> {
    let _lock = nft::lock_host().await?;
    namespace::delete_named(path)?;
    ForwardingFiles::host()
        .release_locked(|s| s == slot)
        .map(drop)
}

/// Undoes `resources` in reverse order, trying every one; returns the errors.
async fn undo(plan: &SlotPlan, resources: Vec<Resource>) -> Vec<NetError> {
    let mut errors = Vec::new();
    let host = match Netlink::host() {
        Ok(h) => Some(h),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    for res in resources.into_iter().rev() {
        let start = Instant::now();
        let result = match (&res, &host) {
            (Resource::HostNft, _) => {
                let slot = plan.slot.index();
                let what = format!("host rules of slot {slot}");
                nft::remove_host_rules(&what, |s| s == slot).await.map(drop)
            }
            (Resource::HostRoute { dest, gateway }, Some(h)) => {
                h.del_route(*dest, 32, *gateway).await.map(drop)
            }
            (Resource::Tap, _) => {
                match Netlink::in_netns(&plan.netns_path(), &plan.namespace).await {
                    Ok(ns) => ns.del_link(TAP_NAME).await.map(drop),
                    Err(e) => Err(e),
                }
            }
            (Resource::HostVeth(name), Some(h)) => h.del_link(name).await.map(drop),
            (Resource::Namespace(path), _) => {
                delete_namespace_releasing_forwarding(plan.slot.index(), path).await
            }
            // No host netlink connection: its error is already recorded.
            (Resource::HostRoute { .. } | Resource::HostVeth(_), None) => Ok(()),
        };
        tracing::debug!(slot = %plan.slot, resource = ?res, ok = result.is_ok(), took_us = start.elapsed().as_micros() as u64, "undone");
        if let Err(e) = result {
            errors.push(e);
        }
    }
    errors
}

/// Creates the whole network of `slot` in one call: namespace, loopback,
/// veth pair, TAP, addresses, routes, forwarding, NAT and egress filtering.
/// On any error, everything made so far is removed in reverse order and the
/// original error returned (rollback errors are logged). If the future is
/// dropped before it completes, what was made stays for [`cleanup_stale`].
pub async fn create_network(slot: Slot, options: &NetworkOptions) -> Result<Network, NetError> {
    let start = Instant::now();
    let plan = SlotPlan::new(slot);
    let dns = options.dns.clone().unwrap_or_else(host_dns);
    let mut b = Builder {
        plan: &plan,
        fail_after: options.fail_after,
        host: Netlink::host()?,
        ns: None,
        resources: Vec::new(),
    };
    let mut outcome = Ok(());
    for step in Step::ALL {
        outcome = b.step(step, &options.policy, &dns).await;
        if outcome.is_err() {
            break;
        }
    }
    let resources = std::mem::take(&mut b.resources);
    drop(b);
    if let Err(e) = outcome {
        let rollback_errors = undo(&plan, resources).await;
        for re in &rollback_errors {
            tracing::error!(slot = %slot, error = %re, "rollback of create_network failed");
        }
        tracing::warn!(slot = %slot, error = %e, rollback_errors = rollback_errors.len(), took_ms = start.elapsed().as_millis() as u64, "create_network failed and was rolled back");
        return Err(e);
    }
    let mut network = Network {
        netns_path: plan.netns_path(),
        guest: GuestNetConfig::new(dns),
        policy: options.policy.clone(),
        plan,
        resources,
        name_proxy: None,
    };
    if let Err(e) = names::sync(
        &mut network.name_proxy,
        &network.policy,
        &network.netns_path,
        &network.plan.namespace,
    )
    .await
    {
        if let Err(re) = remove_network(network).await {
            tracing::error!(slot = %slot, error = %re, "rollback of create_network failed");
        }
        return Err(e);
    }
    tracing::info!(slot = %slot, took_ms = start.elapsed().as_millis() as u64, "network created");
    Ok(network)
}

/// Takes over the network of `slot` that an earlier run of this agent made
/// with the same `options` (after a restart, with the slot
/// [reserved](crate::SlotAllocator::reserve)), so that [`remove_network`]
/// and [`Network::set_policy`] work on it. Checks only that the namespace
/// exists; the egress policy is re-applied so it is known to match.
pub async fn adopt_network(slot: Slot, options: &NetworkOptions) -> Result<Network, NetError> {
    let plan = SlotPlan::new(slot);
    let path = plan.netns_path();
    drop(namespace::open_netns(&path)?);
    {
        let _lock = nft::lock_host().await?;
        ForwardingFiles::host().acquire_locked(slot.index())?;
    }
    let mut net = Network {
        netns_path: path.clone(),
        guest: GuestNetConfig::new(options.dns.clone().unwrap_or_else(host_dns)),
        policy: options.policy.clone(),
        resources: vec![
            Resource::Namespace(path),
            Resource::HostVeth(plan.host_veth.clone()),
            Resource::Tap,
            Resource::HostRoute {
                dest: plan.reachable_ip,
                gateway: plan.vpeer_ip,
            },
            Resource::HostNft,
        ],
        plan,
        name_proxy: None,
    };
    net.set_policy(options.policy.clone()).await?;
    tracing::info!(slot = %slot, "network adopted");
    Ok(net)
}

/// Removes a network made by [`create_network`], trying every removal and
/// returning all errors met. The VMM should be stopped first.
pub async fn remove_network(mut network: Network) -> Result<(), RemoveError> {
    let start = Instant::now();
    network.name_proxy = None;
    let resources = std::mem::take(&mut network.resources);
    let errors = undo(&network.plan, resources).await;
    tracing::info!(slot = %network.plan.slot, errors = errors.len(), took_ms = start.elapsed().as_millis() as u64, "network removed");
    if errors.is_empty() {
        Ok(())
    } else {
        Err(RemoveError {
            what: format!("network of slot {}", network.plan.slot),
            errors,
        })
    }
}

/// What [`cleanup_stale`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub namespaces: Vec<String>,
    pub links: Vec<String>,
    pub routes: Vec<Ipv4Addr>,
    pub nft_rules: usize,
}

impl CleanupReport {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Removes leftovers of networks in `slots` (e.g. a crashed run's): tagged
/// host nft rules (and the Petrel tables once empty), host routes into
/// `10.13.0.0/16`, links `ptl<slot>h`/`ptl<slot>p` and namespaces
/// `petrel-<slot>`. Call it at startup, before creating networks in that
/// range. Tries everything and returns all errors.
pub async fn cleanup_stale(slots: Range<u16>) -> Result<CleanupReport, RemoveError> {
    let start = Instant::now();
    let mut report = CleanupReport::default();
    let mut errors = Vec::new();
    let in_range = |s: u16| slots.contains(&s);

    match nft::remove_host_rules("stale host rules", in_range).await {
        Ok(n) => report.nft_rules = n,
        Err(e) => errors.push(e),
    }
    match Netlink::host() {
        Ok(host) => {
            match host.routes_v4().await {
                Ok(routes) => {
                    for r in routes {
                        let ours =
                            r.prefix == 32 && slot_of_reachable(r.dest).is_some_and(in_range);
                        if let (true, Some(gw)) = (ours, r.gateway) {
                            match host.del_route(r.dest, 32, gw).await {
                                Ok(true) => report.routes.push(r.dest),
                                Ok(false) => {}
                                Err(e) => errors.push(e),
                            }
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
            match host.link_names().await {
                Ok(names) => {
                    for name in names
                        .into_iter()
                        .filter(|n| slot_of_link(n).is_some_and(in_range))
                    {
                        match host.del_link(&name).await {
                            Ok(true) => report.links.push(name),
                            Ok(false) => {}
                            Err(e) => errors.push(e),
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        Err(e) => errors.push(e),
    }
    match nft::lock_host().await {
        Ok(_lock) => {
            match namespace::list_named() {
                Ok(names) => {
                    for name in names
                        .into_iter()
                        .filter(|n| slot_of_namespace(n).is_some_and(in_range))
                    {
                        let path = PathBuf::from(crate::addressing::NETNS_DIR).join(&name);
                        match namespace::delete_named(&path) {
                            Ok(()) => report.namespaces.push(name),
                            Err(e) => errors.push(e),
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
            // Holds on host forwarding whose namespace is gone are pruned
            // (a namespace that could not be deleted keeps its hold).
            if let Err(e) = ForwardingFiles::host().release_locked(|_| false) {
                errors.push(e);
            }
        }
        Err(e) => errors.push(e),
    }
    tracing::info!(
        ?slots,
        ?report,
        errors = errors.len(),
        took_ms = start.elapsed().as_millis() as u64,
        "stale networks cleaned up"
    );
    if errors.is_empty() {
        Ok(report)
    } else {
        Err(RemoveError {
            what: format!("stale networks of slots {}..{}", slots.start, slots.end),
            errors,
        })
    }
}
