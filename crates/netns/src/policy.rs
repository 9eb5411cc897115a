//! Egress policy and the nftables rulesets that implement NAT and filtering,
//! in each sandbox namespace and on the host.
//!
//! In the namespace (`ip petrel_nat`, `inet petrel_filter`):
//! - DNAT of the slot's host-reachable address to the guest, SNAT of the
//!   guest to the vpeer address;
//! - `forward` (policy drop): host-opened connections to the guest (DNATed)
//!   pass; every packet from the guest goes through `egress`, so a policy
//!   change also cuts connections already open; replies to the guest pass;
//! - `egress`: DNS to the sandbox's resolvers (internet on only), then the
//!   private, loopback, link-local, multicast and reserved IPv4 ranges are
//!   rejected, all IPv6 is rejected (fc00::/7 and fe80::/10 included), the
//!   rest is accepted (internet on) or rejected (internet off);
//! - `input`: the guest may ping its gateway and nothing else on the
//!   namespace's own addresses.
//!
//! On the host (`ip petrel_nat`, `inet petrel_filter`, one tagged rule set per
//! slot): MASQUERADE of the vpeer address; `input` rejects new connections
//! from the slot's veth (the host's own addresses and services, the agent's
//! API included, are unreachable from a guest; a resolver on the host itself
//! stays reachable on port 53); `forward` rejects new connections into the
//! slot's veth (other sandboxes, or anything routed in from outside).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::addressing::{GATEWAY_IP, GUEST_IP, SlotPlan, TAP_NAME};

/// Table for NAT, in the host and in every namespace (family `ip`).
pub const NAT_TABLE: &str = "petrel_nat";
/// Table for filtering, in the host and in every namespace (family `inet`).
pub const FILTER_TABLE: &str = "petrel_filter";

/// IPv4 destinations a guest may never reach (besides its resolvers).
pub const DENIED_V4: [&str; 9] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];
/// IPv6 destinations named by the policy; all IPv6 from a guest is rejected
/// anyway (sandboxes have no IPv6 path).
pub const DENIED_V6: [&str; 3] = ["::1/128", "fc00::/7", "fe80::/10"];

const REJECT: &str = "reject with icmpx admin-prohibited";

/// What a sandbox's guest may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Public internet (and the sandbox's DNS resolvers). Private ranges,
    /// the host and other sandboxes are denied either way.
    pub internet: bool,
}

impl EgressPolicy {
    pub const INTERNET_ON: Self = Self { internet: true };
    pub const INTERNET_OFF: Self = Self { internet: false };
}

impl Default for EgressPolicy {
    fn default() -> Self {
        Self::INTERNET_ON
    }
}

/// The rules of the namespace's `egress` chain.
fn egress_rules(out: &mut String, plan: &SlotPlan, policy: EgressPolicy, dns: &[Ipv4Addr]) {
    let tag = plan.rule_tag();
    let mut rule = |body: &str| {
        let _ = writeln!(
            out,
            "add rule inet {FILTER_TABLE} egress {body} comment \"{tag}\""
        );
    };
    if policy.internet {
        for server in dns {
            rule(&format!(
                "ip daddr {server} meta l4proto {{ tcp, udp }} th dport 53 accept"
            ));
        }
    }
    rule(&format!("ip daddr {{ {} }} {REJECT}", DENIED_V4.join(", ")));
    rule(&format!(
        "ip6 daddr {{ {} }} {REJECT}",
        DENIED_V6.join(", ")
    ));
    rule(&format!("meta nfproto ipv6 {REJECT}"));
    rule(if policy.internet { "accept" } else { REJECT });
}

/// The whole ruleset of a fresh sandbox namespace.
pub(crate) fn namespace_ruleset(plan: &SlotPlan, policy: EgressPolicy, dns: &[Ipv4Addr]) -> String {
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
    line(format!(
        "add rule ip {NAT_TABLE} prerouting iifname \"{p}\" ip daddr {} dnat to {GUEST_IP} comment \"{tag}\"",
        plan.reachable_ip
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
    out
}

/// Replaces the namespace's `egress` chain atomically.
pub(crate) fn egress_replacement(
    plan: &SlotPlan,
    policy: EgressPolicy,
    dns: &[Ipv4Addr],
) -> String {
    let mut out = format!("flush chain inet {FILTER_TABLE} egress\n");
    egress_rules(&mut out, plan, policy, dns);
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
        let text = namespace_ruleset(&plan(), EgressPolicy::default(), &[]);

        assert!(
            text.contains("iifname \"ptl7p\" ip daddr 10.13.0.7 dnat to 169.254.0.21"),
            "{text}"
        );
        assert!(
            text.contains("oifname \"ptl7p\" ip saddr 169.254.0.21 snat to 10.12.0.15"),
            "{text}"
        );
    }

    #[test]
    fn internet_on_allows_dns_then_rejects_private_ranges_then_accepts() {
        let dns = [Ipv4Addr::new(10, 255, 255, 53)];

        let text = namespace_ruleset(&plan(), EgressPolicy::INTERNET_ON, &dns);
        let egress: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("add rule inet petrel_filter egress "))
            .collect();

        assert_eq!(egress.len(), 5, "{egress:#?}");
        assert!(
            egress[0]
                .contains("ip daddr 10.255.255.53 meta l4proto { tcp, udp } th dport 53 accept")
        );
        assert!(
            egress[1].contains("10.0.0.0/8")
                && egress[1].contains("100.64.0.0/10")
                && egress[1].contains("reject")
        );
        assert!(egress[2].contains("fc00::/7") && egress[2].contains("fe80::/10"));
        assert!(egress[4].contains("egress accept comment \"petrel-slot-7\""));
    }

    #[test]
    fn internet_off_rejects_everything_including_dns() {
        let dns = [Ipv4Addr::new(10, 255, 255, 53)];

        let text = egress_replacement(&plan(), EgressPolicy::INTERNET_OFF, &dns);

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
}
