//! Egress policy and the nftables rulesets that implement NAT and filtering,
//! in each sandbox namespace and on the host.
//!
//! In the namespace (`ip petrel_nat`, `inet petrel_filter`):
//! - DNAT of the slot's host-reachable address to the guest, SNAT of the
//!   guest to the vpeer address;
//! - `forward` (policy drop): host-opened connections to the guest (DNATed)
//!   pass; every packet from the guest goes through `egress`, so a policy
//!   change also cuts connections already open; replies to the guest pass;
//! - `egress`: new connections beyond the sandbox's concurrent-connection
//!   limit (`ct count`) or its new-connection rate (`limit rate`) are
//!   dropped; then DNS to the sandbox's resolvers is accepted (where the
//!   policy reaches them); then the special-purpose IPv4 ranges
//!   ([`DENIED_V4`]: private, shared, loopback, link-local, documentation,
//!   benchmarking, multicast, reserved...) and TCP port 25 (unless the
//!   policy allows SMTP) are rejected, all IPv6 is rejected (fc00::/7 and
//!   fe80::/10 included); then the sandbox's `allow` ranges are accepted,
//!   its `deny` ranges rejected, and the rest is accepted (internet on) or
//!   rejected (internet off);
//! - `egress_names` (nat prerouting, where the policy has domain rules):
//!   the guest's TCP connections to ports 80 and 443 that the ranges would
//!   reject (and that are not special-purpose) are redirected to the
//!   namespace's egress proxy ([`NAME_PROXY_PORT`] on the gateway address),
//!   which relays those whose HTTP Host or TLS server name a rule allows;
//!   DNS to the resolvers is then accepted whatever the ranges say;
//! - `input`: the guest may ping its gateway and reach the egress proxy
//!   through the redirect, and nothing else on the namespace's own
//!   addresses.
//!
//! On the host (`ip petrel_nat`, `inet petrel_filter`, one tagged rule set per
//! slot): MASQUERADE of the vpeer address; `input` rejects new connections
//! from the slot's veth (the host's own addresses and services, the agent's
//! API included, are unreachable from a guest; a resolver on the host itself
//! stays reachable on port 53); `forward` rejects new connections into the
//! slot's veth (other sandboxes, or anything routed in from outside).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

pub use egress_proxy::DomainRule;
pub use ipnet::Ipv4Net;

use crate::addressing::{GATEWAY_IP, GUEST_IP, SlotPlan, TAP_NAME};

/// Table for NAT, in the host and in every namespace (family `ip`).
pub const NAT_TABLE: &str = "petrel_nat";
/// Table for filtering, in the host and in every namespace (family `inet`).
pub const FILTER_TABLE: &str = "petrel_filter";

/// IPv4 destinations a guest may never reach (besides its resolvers): every
/// range of the IANA IPv4 Special-Purpose Address Registry (RFC 6890 and
/// its updates) that is not globally reachable, the deprecated 6to4 relay
/// anycast, multicast and the reserved class E block (which holds the
/// limited broadcast address). The registry's globally reachable entries
/// (AS112 192.31.196.0/24 and 192.175.48.0/24, AMT 192.52.193.0/24) stay
/// reachable; the PCP and TURN anycast addresses go with 192.0.0.0/24.
/// The ranges must not overlap (nft interval set).
pub const DENIED_V4: [&str; 15] = [
    "0.0.0.0/8",       // "this network" (RFC 791)
    "10.0.0.0/8",      // private (RFC 1918)
    "100.64.0.0/10",   // shared address space, carrier-grade NAT (RFC 6598)
    "127.0.0.0/8",     // loopback (RFC 1122)
    "169.254.0.0/16",  // link local, cloud metadata services (RFC 3927)
    "172.16.0.0/12",   // private (RFC 1918)
    "192.0.0.0/24",    // IETF protocol assignments (RFC 6890)
    "192.0.2.0/24",    // documentation, TEST-NET-1 (RFC 5737)
    "192.88.99.0/24",  // deprecated 6to4 relay anycast (RFC 7526)
    "192.168.0.0/16",  // private (RFC 1918)
    "198.18.0.0/15",   // benchmarking (RFC 2544)
    "198.51.100.0/24", // documentation, TEST-NET-2 (RFC 5737)
    "203.0.113.0/24",  // documentation, TEST-NET-3 (RFC 5737)
    "224.0.0.0/4",     // multicast (RFC 5771)
    "240.0.0.0/4",     // reserved, and 255.255.255.255 broadcast (RFC 1112, 919)
];
/// IPv6 destinations named by the policy; all IPv6 from a guest is rejected
/// anyway (sandboxes have no IPv6 path: the namespace has IPv6 switched off
/// and the guest link is IPv4 only).
pub const DENIED_V6: [&str; 3] = ["::1/128", "fc00::/7", "fe80::/10"];

/// TCP ports a guest may not connect to unless the policy allows it: SMTP
/// (25), so that sandboxes cannot send spam straight to mail exchangers.
/// Submission ports (465, 587) need credentials and stay open.
pub const SMTP_PORT: u16 = 25;

/// TCP ports whose connections domain rules judge (HTTP by `Host`, TLS by
/// server name); other ports follow the ranges only.
pub const NAME_PORTS: [u16; 2] = [80, 443];

/// Port the egress proxy listens on, on the namespace's gateway address
/// (reached only through the redirect: the `input` chain rejects the
/// guest's direct connections to it).
pub const NAME_PROXY_PORT: u16 = 15080;

/// Whether `ip` is in one of the special-purpose ranges ([`DENIED_V4`]);
/// the egress proxy asks for every connection, so they are parsed once.
pub fn is_special_purpose(ip: Ipv4Addr) -> bool {
    static RANGES: std::sync::LazyLock<Vec<Ipv4Net>> = std::sync::LazyLock::new(|| {
        DENIED_V4
            .iter()
            .filter_map(|range| range.parse().ok())
            .collect()
    });
    RANGES.iter().any(|range| range.contains(&ip))
}

const REJECT: &str = "reject with icmpx admin-prohibited";

/// What a sandbox's guest may reach, and how hard it may hit the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Public internet (and the sandbox's DNS resolvers). Private ranges,
    /// the host and other sandboxes are denied either way.
    pub internet: bool,
    /// Outbound TCP port 25 (SMTP). Off by default.
    pub smtp: bool,
    /// Concurrent connections (conntrack entries, any protocol) the guest
    /// may have open to the outside; the first packets of new ones beyond
    /// it are dropped. 0: no limit. Bounds what one sandbox can put into the host's conntrack
    /// table (`nf_conntrack_max`, shared by every sandbox).
    pub max_connections: u32,
    /// New outbound connections per second (token bucket with a burst of
    /// twice this); the first packets of new ones beyond it are dropped.
    /// 0: no limit.
    pub new_connections_per_sec: u32,
    /// IPv4 ranges the guest may reach even where `internet` is off or a
    /// `deny` range covers them (allow wins, as in E2B's `allowOut`). The
    /// special-purpose ranges ([`DENIED_V4`]) stay unreachable: no rule
    /// opens the host, private networks or other sandboxes.
    pub allow: Vec<Ipv4Net>,
    /// IPv4 ranges the guest may not reach (E2B's `denyOut`; `0.0.0.0/0`:
    /// everything but `allow`), the sandbox's DNS resolvers included.
    pub deny: Vec<Ipv4Net>,
    /// Names the guest may reach on ports 80 and 443 ([`NAME_PORTS`]) where
    /// the ranges would reject the address (E2B's domains in `allowOut`),
    /// judged by the HTTP Host or TLS server name the client sends. With
    /// any, the sandbox's resolvers are reachable whatever the ranges say.
    pub names: Vec<DomainRule>,
}

impl EgressPolicy {
    /// Default [`Self::max_connections`].
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
    /// Default [`Self::new_connections_per_sec`].
    pub const DEFAULT_NEW_CONNECTIONS_PER_SEC: u32 = 100;

    pub const INTERNET_ON: Self = Self {
        internet: true,
        smtp: false,
        max_connections: Self::DEFAULT_MAX_CONNECTIONS,
        new_connections_per_sec: Self::DEFAULT_NEW_CONNECTIONS_PER_SEC,
        allow: Vec::new(),
        deny: Vec::new(),
        names: Vec::new(),
    };
    pub const INTERNET_OFF: Self = Self {
        internet: false,
        smtp: false,
        max_connections: Self::DEFAULT_MAX_CONNECTIONS,
        new_connections_per_sec: Self::DEFAULT_NEW_CONNECTIONS_PER_SEC,
        allow: Vec::new(),
        deny: Vec::new(),
        names: Vec::new(),
    };

    /// This policy with internet on or off (limits and SMTP as they are).
    #[must_use]
    pub fn with_internet(self, internet: bool) -> Self {
        Self { internet, ..self }
    }

    /// This policy with the given allow and deny ranges.
    #[must_use]
    pub fn with_ranges(self, allow: Vec<Ipv4Net>, deny: Vec<Ipv4Net>) -> Self {
        Self {
            allow,
            deny,
            ..self
        }
    }

    /// This policy with the given domain rules.
    #[must_use]
    pub fn with_names(self, names: Vec<DomainRule>) -> Self {
        Self { names, ..self }
    }

    /// Whether the guest may reach `ip` as far as `allow`, `deny` and
    /// `internet` go (the special-purpose ranges aside).
    pub fn reaches(&self, ip: Ipv4Addr) -> bool {
        let covers = |nets: &[Ipv4Net]| nets.iter().any(|net| net.contains(&ip));
        covers(&self.allow) || (self.internet && !covers(&self.deny))
    }
}

/// `nets` as an nft set body (`a/8, b/16`): host bits cleared, overlapping
/// and adjacent ranges merged (an interval set refuses overlaps).
fn set_elements(nets: &[Ipv4Net]) -> String {
    Ipv4Net::aggregate(&nets.to_vec())
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Default for EgressPolicy {
    fn default() -> Self {
        Self::INTERNET_ON
    }
}

/// The rules of the namespace's `egress` chain (every packet from the
/// guest to the outside passes it; new connections are limited first, so
/// DNS floods count too). Over a limit the packet is dropped, not
/// rejected: a flood costs the host nothing (no ICMP or RST back, which the
/// kernel would rate-limit anyway), and a well-behaved client's
/// retransmission gets through once it is under the limit again.
fn egress_rules(out: &mut String, plan: &SlotPlan, policy: &EgressPolicy, dns: &[Ipv4Addr]) {
    let tag = plan.rule_tag();
    let mut rule = |body: &str| {
        let _ = writeln!(
            out,
            "add rule inet {FILTER_TABLE} egress {body} comment \"{tag}\""
        );
    };
    if policy.max_connections > 0 {
        rule(&format!(
            "ct state new ct count over {} drop",
            policy.max_connections
        ));
    }
    if policy.new_connections_per_sec > 0 {
        let rate = policy.new_connections_per_sec;
        rule(&format!(
            "ct state new limit rate over {rate}/second burst {} packets drop",
            rate.saturating_mul(2)
        ));
    }
    // The resolvers may be private addresses (the host's own), so they are
    // accepted before the special-purpose ranges are rejected; a sandbox's
    // own rules decide whether it reaches them at all.
    let resolvers_needed = !policy.names.is_empty();
    for server in dns
        .iter()
        .filter(|server| resolvers_needed || policy.reaches(**server))
    {
        rule(&format!(
            "ip daddr {server} meta l4proto {{ tcp, udp }} th dport 53 accept"
        ));
    }
    rule(&format!("ip daddr {{ {} }} {REJECT}", DENIED_V4.join(", ")));
    if !policy.smtp {
        rule(&format!("tcp dport {SMTP_PORT} {REJECT}"));
    }
    rule(&format!(
        "ip6 daddr {{ {} }} {REJECT}",
        DENIED_V6.join(", ")
    ));
    rule(&format!("meta nfproto ipv6 {REJECT}"));
    if !policy.allow.is_empty() {
        rule(&format!(
            "ip daddr {{ {} }} accept",
            set_elements(&policy.allow)
        ));
    }
    if policy.internet && !policy.deny.is_empty() {
        rule(&format!(
            "ip daddr {{ {} }} {REJECT}",
            set_elements(&policy.deny)
        ));
    }
    rule(if policy.internet { "accept" } else { REJECT });
}

/// The rules of the namespace's `egress_names` nat chain: what the ranges
/// would reject on [`NAME_PORTS`] goes to the egress proxy instead.
fn name_redirect_rules(out: &mut String, plan: &SlotPlan, policy: &EgressPolicy) {
    if policy.names.is_empty() {
        return;
    }
    let rejected = match (policy.internet, policy.deny.is_empty()) {
        // Internet on and nothing denied: the ranges reject nothing.
        (true, true) => return,
        (true, false) => format!("ip daddr {{ {} }} ", set_elements(&policy.deny)),
        (false, _) => String::new(),
    };
    let allowed = if policy.allow.is_empty() {
        String::new()
    } else {
        format!("ip daddr != {{ {} }} ", set_elements(&policy.allow))
    };
    let ports = NAME_PORTS.map(|p| p.to_string()).join(", ");
    let _ = writeln!(
        out,
        "add rule ip {NAT_TABLE} egress_names ip saddr {GUEST_IP} tcp dport {{ {ports} }} \
         ip daddr != {{ {} }} {rejected}{allowed}redirect to :{NAME_PROXY_PORT} comment \"{}\"",
        DENIED_V4.join(", "),
        plan.rule_tag()
    );
}

/// The whole ruleset of a fresh sandbox namespace.
pub(crate) fn namespace_ruleset(
    plan: &SlotPlan,
    policy: &EgressPolicy,
    dns: &[Ipv4Addr],
) -> String {
    let tag = plan.rule_tag();
    let (p, tap) = (&plan.ns_veth, TAP_NAME);
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("add table ip {NAT_TABLE}"));
    line(format!(
        "add chain ip {NAT_TABLE} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}"
    ));
    line(format!(
        "add chain ip {NAT_TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}"
    ));
    line(format!("add chain ip {NAT_TABLE} egress_names"));
    line(format!(
        "add rule ip {NAT_TABLE} prerouting iifname \"{p}\" ip daddr {} dnat to {GUEST_IP} comment \"{tag}\"",
        plan.reachable_ip
    ));
    line(format!(
        "add rule ip {NAT_TABLE} prerouting iifname \"{tap}\" jump egress_names comment \"{tag}\""
    ));
    line(format!(
        "add rule ip {NAT_TABLE} postrouting oifname \"{p}\" ip saddr {GUEST_IP} snat to {} comment \"{tag}\"",
        plan.vpeer_ip
    ));
    line(format!("add table inet {FILTER_TABLE}"));
    line(format!(
        "add chain inet {FILTER_TABLE} input {{ type filter hook input priority filter; policy accept; }}"
    ));
    line(format!(
        "add chain inet {FILTER_TABLE} forward {{ type filter hook forward priority filter; policy drop; }}"
    ));
    line(format!("add chain inet {FILTER_TABLE} egress"));
    let rules = [
        (
            "input",
            format!("iifname \"{tap}\" ct state established,related accept"),
        ),
        (
            "input",
            format!("iifname \"{tap}\" ip daddr {GATEWAY_IP} icmp type echo-request accept"),
        ),
        (
            "input",
            format!(
                "iifname \"{tap}\" ct status dnat ip daddr {GATEWAY_IP} tcp dport {NAME_PROXY_PORT} accept"
            ),
        ),
        ("input", format!("iifname \"{tap}\" {REJECT}")),
        ("forward", "ct status dnat accept".to_string()),
        (
            "forward",
            format!("iifname \"{tap}\" oifname \"{p}\" ip saddr {GUEST_IP} jump egress"),
        ),
        (
            "forward",
            format!("iifname \"{p}\" oifname \"{tap}\" ct state established,related accept"),
        ),
        ("forward", format!("iifname \"{tap}\" {REJECT}")),
    ];
    for (chain, body) in rules {
        line(format!(
            "add rule inet {FILTER_TABLE} {chain} {body} comment \"{tag}\""
        ));
    }
    egress_rules(&mut out, plan, policy, dns);
    name_redirect_rules(&mut out, plan, policy);
    out
}

/// Replaces the namespace's `egress` and `egress_names` chains atomically.
pub(crate) fn egress_replacement(
    plan: &SlotPlan,
    policy: &EgressPolicy,
    dns: &[Ipv4Addr],
) -> String {
    // `add` first: a namespace made by an older agent has no
    // `egress_names` chain (nor the jump to it, so its domain rules stay
    // closed: nothing is redirected and the ranges reject).
    let mut out = format!(
        "flush chain inet {FILTER_TABLE} egress\nadd chain ip {NAT_TABLE} egress_names\nflush chain ip {NAT_TABLE} egress_names\n"
    );
    egress_rules(&mut out, plan, policy, dns);
    name_redirect_rules(&mut out, plan, policy);
    out
}

/// The host's tables and chains (idempotent `add`s) and this slot's rules.
pub(crate) fn host_ruleset(plan: &SlotPlan, dns: &[Ipv4Addr]) -> String {
    let tag = plan.rule_tag();
    let h = &plan.host_veth;
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("add table ip {NAT_TABLE}"));
    line(format!(
        "add chain ip {NAT_TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}"
    ));
    line(format!(
        "add rule ip {NAT_TABLE} postrouting ip saddr {} masquerade comment \"{tag}\"",
        plan.vpeer_ip
    ));
    line(format!("add table inet {FILTER_TABLE}"));
    line(format!(
        "add chain inet {FILTER_TABLE} input {{ type filter hook input priority filter; policy accept; }}"
    ));
    line(format!(
        "add chain inet {FILTER_TABLE} forward {{ type filter hook forward priority filter; policy accept; }}"
    ));
    let mut rules = vec![(
        "input",
        format!("iifname \"{h}\" ct state established,related accept"),
    )];
    for server in dns {
        rules.push((
            "input",
            format!(
                "iifname \"{h}\" ip daddr {server} meta l4proto {{ tcp, udp }} th dport 53 accept"
            ),
        ));
    }
    rules.push(("input", format!("iifname \"{h}\" {REJECT}")));
    rules.push((
        "forward",
        format!("oifname \"{h}\" ct state established,related accept"),
    ));
    rules.push(("forward", format!("oifname \"{h}\" {REJECT}")));
    for (chain, body) in rules {
        line(format!(
            "add rule inet {FILTER_TABLE} {chain} {body} comment \"{tag}\""
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::Slot;

    fn plan() -> SlotPlan {
        SlotPlan::new(Slot::new(7).unwrap())
    }

    #[test]
    fn namespace_ruleset_nats_both_ways() {
        let text = namespace_ruleset(&plan(), &EgressPolicy::default(), &[]);

        assert!(
            text.contains("iifname \"ptl7p\" ip daddr 10.13.0.7 dnat to 169.254.0.21"),
            "{text}"
        );
        assert!(
            text.contains("oifname \"ptl7p\" ip saddr 169.254.0.21 snat to 10.12.0.15"),
            "{text}"
        );
    }

    fn egress_lines(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with("add rule inet petrel_filter egress "))
            .collect()
    }

    #[test]
    fn internet_on_limits_then_allows_dns_then_rejects_special_ranges_and_smtp_then_accepts() {
        let dns = [Ipv4Addr::new(10, 255, 255, 53)];

        let text = namespace_ruleset(&plan(), &EgressPolicy::INTERNET_ON, &dns);
        let egress = egress_lines(&text);

        assert_eq!(egress.len(), 8, "{egress:#?}");
        assert!(egress[0].contains("ct state new ct count over 1024 drop"));
        assert!(
            egress[1].contains("ct state new limit rate over 100/second burst 200 packets drop")
        );
        assert!(
            egress[2]
                .contains("ip daddr 10.255.255.53 meta l4proto { tcp, udp } th dport 53 accept")
        );
        for range in DENIED_V4 {
            assert!(egress[3].contains(range), "{range} in {}", egress[3]);
        }
        assert!(egress[3].contains("reject"));
        assert!(egress[4].contains("tcp dport 25 reject"));
        assert!(egress[5].contains("fc00::/7") && egress[5].contains("fe80::/10"));
        assert!(egress[7].contains("egress accept comment \"petrel-slot-7\""));
    }

    #[test]
    fn deny_list_holds_the_special_purpose_ranges() {
        for range in [
            "192.0.0.0/24",
            "192.0.2.0/24",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "100.64.0.0/10",
            "169.254.0.0/16",
        ] {
            assert!(DENIED_V4.contains(&range), "{range}");
        }
    }

    #[test]
    fn smtp_and_limits_can_be_switched_off() {
        let policy = EgressPolicy {
            smtp: true,
            max_connections: 0,
            new_connections_per_sec: 0,
            ..EgressPolicy::INTERNET_ON
        };

        let text = egress_replacement(&plan(), &policy, &[]);

        assert!(!text.contains("dport 25"), "{text}");
        assert!(!text.contains("ct count"), "{text}");
        assert!(!text.contains("limit rate"), "{text}");
    }

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn allow_is_accepted_before_deny_is_rejected_and_special_ranges_come_first() {
        let policy = EgressPolicy::INTERNET_ON
            .with_ranges(vec![net("198.20.0.2/32")], vec![net("0.0.0.0/0")]);

        let text = egress_replacement(&plan(), &policy, &[]);
        let egress = egress_lines(&text);
        let position = |needle: &str| egress.iter().position(|l| l.contains(needle)).unwrap();

        assert!(position("192.168.0.0/16") < position("{ 198.20.0.2/32 } accept"));
        assert!(
            position("{ 198.20.0.2/32 } accept")
                < position("{ 0.0.0.0/0 } reject with icmpx admin-prohibited")
        );
        assert!(
            egress.last().unwrap().contains("egress accept"),
            "{egress:#?}"
        );
    }

    #[test]
    fn ranges_are_merged_and_host_bits_cleared_for_the_interval_set() {
        let policy = EgressPolicy::INTERNET_OFF.with_ranges(
            vec![net("8.8.8.8/8"), net("8.1.0.0/16"), net("9.0.0.0/8")],
            Vec::new(),
        );

        let text = egress_replacement(&plan(), &policy, &[]);

        assert!(text.contains("ip daddr { 8.0.0.0/7 } accept"), "{text}");
    }

    #[test]
    fn a_denied_resolver_gets_no_dns_rule_unless_allowed() {
        let dns = [Ipv4Addr::new(10, 255, 255, 53)];
        let deny_all = EgressPolicy::INTERNET_ON.with_ranges(Vec::new(), vec![net("0.0.0.0/0")]);
        let allowed = EgressPolicy::INTERNET_OFF
            .with_ranges(vec![net("10.255.255.53/32")], vec![net("0.0.0.0/0")]);

        let denied_text = egress_replacement(&plan(), &deny_all, &dns);
        let allowed_text = egress_replacement(&plan(), &allowed, &dns);

        assert!(!denied_text.contains("dport 53"), "{denied_text}");
        assert!(
            allowed_text.contains("ip daddr 10.255.255.53 "),
            "{allowed_text}"
        );
    }

    #[test]
    fn internet_off_rejects_everything_including_dns() {
        let dns = [Ipv4Addr::new(10, 255, 255, 53)];

        let text = egress_replacement(&plan(), &EgressPolicy::INTERNET_OFF, &dns);

        assert!(text.starts_with("flush chain inet petrel_filter egress\n"));
        assert!(!text.contains("dport 53"), "{text}");
        assert!(
            text.lines()
                .last()
                .unwrap()
                .contains("egress reject with icmpx admin-prohibited")
        );
    }

    #[test]
    fn host_ruleset_masquerades_vpeer_and_tags_every_rule() {
        let text = host_ruleset(&plan(), &[Ipv4Addr::new(192, 0, 2, 53)]);
        let rules: Vec<&str> = text.lines().filter(|l| l.starts_with("add rule")).collect();

        assert!(
            text.contains("postrouting ip saddr 10.12.0.15 masquerade"),
            "{text}"
        );
        assert!(
            rules
                .iter()
                .all(|r| r.ends_with("comment \"petrel-slot-7\"")),
            "{rules:#?}"
        );
        assert!(text.contains("input iifname \"ptl7h\" reject"), "{text}");
        assert!(text.contains("forward oifname \"ptl7h\" reject"), "{text}");
    }

    fn redirect_lines(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with("add rule ip petrel_nat egress_names "))
            .collect()
    }

    #[test]
    fn domain_rules_redirect_only_what_the_ranges_reject_on_name_ports() {
        let names = vec!["example.test".parse::<DomainRule>().unwrap()];
        let dns = [Ipv4Addr::new(10, 255, 255, 53)];
        let deny_all = EgressPolicy::INTERNET_ON
            .with_ranges(
                vec!["1.2.3.0/24".parse().unwrap()],
                vec!["0.0.0.0/0".parse().unwrap()],
            )
            .with_names(names.clone());

        let text = namespace_ruleset(&plan(), &deny_all, &dns);
        let open = namespace_ruleset(&plan(), &EgressPolicy::INTERNET_ON.with_names(names), &dns);
        let none = egress_replacement(&plan(), &EgressPolicy::INTERNET_OFF, &dns);

        let redirect = redirect_lines(&text);
        assert_eq!(redirect.len(), 1, "{text}");
        assert!(
            redirect[0].contains("tcp dport { 80, 443 }"),
            "{}",
            redirect[0]
        );
        assert!(
            redirect[0].contains("ip daddr { 0.0.0.0/0 }"),
            "{}",
            redirect[0]
        );
        assert!(
            redirect[0].contains("ip daddr != { 1.2.3.0/24 }"),
            "{}",
            redirect[0]
        );
        assert!(
            redirect[0].contains("ip daddr != { 0.0.0.0/8, 10.0.0.0/8"),
            "{}",
            redirect[0]
        );
        assert!(
            redirect[0].contains("redirect to :15080"),
            "{}",
            redirect[0]
        );
        // The resolver is reachable although 0.0.0.0/0 is denied.
        assert!(
            text.contains("ip daddr 10.255.255.53 meta l4proto { tcp, udp } th dport 53 accept")
        );
        assert!(text.contains("ct status dnat ip daddr 169.254.0.22 tcp dport 15080 accept"));
        assert!(redirect_lines(&open).is_empty(), "{open}");
        assert!(
            none.contains("flush chain ip petrel_nat egress_names"),
            "{none}"
        );
        assert!(redirect_lines(&none).is_empty(), "{none}");
    }

    #[test]
    fn every_special_purpose_range_parses_and_is_recognised() {
        for range in DENIED_V4 {
            let net: Ipv4Net = range.parse().unwrap();

            assert!(is_special_purpose(net.network()), "{range}");
            assert!(is_special_purpose(net.broadcast()), "{range}");
        }
        assert!(!is_special_purpose(Ipv4Addr::new(198, 20, 0, 2)));
    }
}
