//! The addressing plan: every name and address of a sandbox's network follows
//! from its slot, except the guest's, which is the same in every sandbox.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::slot::Slot;

/// Host-side /31s live here: slot `s` gets `10.12.0.0 + 2s` (host end) and
/// `+ 1` (the namespace end, "vpeer").
pub const VETH_NET: Ipv4Addr = Ipv4Addr::new(10, 12, 0, 0);
/// Host-reachable /32s live here: slot `s` gets `10.13.0.0 + s`, routed on
/// the host via the slot's vpeer and DNATed to the guest in the namespace.
pub const REACHABLE_NET: Ipv4Addr = Ipv4Addr::new(10, 13, 0, 0);
/// Prefix length of [`VETH_NET`] and [`REACHABLE_NET`].
pub const PLAN_PREFIX: u8 = 16;

/// The guest's address, the same in every sandbox (snapshots restore into
/// any slot).
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 21);
/// The TAP's address in the namespace: the guest's default gateway.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 22);
/// Prefix length of the guest link (`169.254.0.20/30`).
pub const GUEST_PREFIX: u8 = 30;
/// Name of the TAP device inside every namespace.
pub const TAP_NAME: &str = "tap0";
/// MAC address for the guest's NIC, the same in every sandbox.
pub const GUEST_MAC: [u8; 6] = [0x06, 0x00, 0xa9, 0xfe, 0x00, 0x15];
/// MAC address of the TAP (the gateway as the guest sees it), the same in
/// every sandbox so a restored guest's ARP cache stays right.
pub const GATEWAY_MAC: [u8; 6] = [0x06, 0x00, 0xa9, 0xfe, 0x00, 0x16];

/// Namespaces are `petrel-<slot>`, mounted under [`NETNS_DIR`].
pub const NETNS_PREFIX: &str = "petrel-";
/// Where named namespaces are mounted (as `ip netns` does).
pub const NETNS_DIR: &str = "/run/netns";
/// Veth ends are `ptl<slot>h` (host) and `ptl<slot>p` (namespace).
pub const LINK_PREFIX: &str = "ptl";
/// nft rules of a slot carry the comment `petrel-slot-<slot>`.
pub const RULE_TAG_PREFIX: &str = "petrel-slot-";

/// Every name and address of one slot's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPlan {
    pub slot: Slot,
    /// Namespace name, `petrel-<slot>`.
    pub namespace: String,
    /// Veth end in the host namespace, `ptl<slot>h`.
    pub host_veth: String,
    /// Veth end in the sandbox namespace, `ptl<slot>p`.
    pub ns_veth: String,
    /// Address of the host veth end (`10.12.0.0 + 2*slot`, /31).
    pub host_ip: Ipv4Addr,
    /// Address of the namespace veth end (`10.12.0.0 + 2*slot + 1`, /31).
    pub vpeer_ip: Ipv4Addr,
    /// Address the host uses to reach the guest (`10.13.0.0 + slot`).
    pub reachable_ip: Ipv4Addr,
}

impl SlotPlan {
    pub fn new(slot: Slot) -> Self {
        let s = u32::from(slot.index());
        Self {
            slot,
            namespace: format!("{NETNS_PREFIX}{s}"),
            host_veth: format!("{LINK_PREFIX}{s}h"),
            ns_veth: format!("{LINK_PREFIX}{s}p"),
            host_ip: Ipv4Addr::from(u32::from(VETH_NET) + 2 * s),
            vpeer_ip: Ipv4Addr::from(u32::from(VETH_NET) + 2 * s + 1),
            reachable_ip: Ipv4Addr::from(u32::from(REACHABLE_NET) + s),
        }
    }

    /// `/run/netns/petrel-<slot>`.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.namespace)
    }

    /// The comment on this slot's nft rules.
    pub fn rule_tag(&self) -> String {
        format!("{RULE_TAG_PREFIX}{}", self.slot)
    }
}

fn parse_slot(digits: &str) -> Option<u16> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|s| *s <= Slot::MAX)
}

/// The slot of a namespace named `petrel-<slot>`.
pub(crate) fn slot_of_namespace(name: &str) -> Option<u16> {
    name.strip_prefix(NETNS_PREFIX).and_then(parse_slot)
}

/// The slot of a veth end named `ptl<slot>h` or `ptl<slot>p`.
pub(crate) fn slot_of_link(name: &str) -> Option<u16> {
    let rest = name.strip_prefix(LINK_PREFIX)?;
    let digits = rest.strip_suffix('h').or_else(|| rest.strip_suffix('p'))?;
    parse_slot(digits)
}

/// The slot of a rule comment `petrel-slot-<slot>`.
pub(crate) fn slot_of_tag(comment: &str) -> Option<u16> {
    comment.strip_prefix(RULE_TAG_PREFIX).and_then(parse_slot)
}

/// The slot whose host-reachable address is `ip`.
pub(crate) fn slot_of_reachable(ip: Ipv4Addr) -> Option<u16> {
    let off = u32::from(ip).checked_sub(u32::from(REACHABLE_NET))?;
    u16::try_from(off).ok().filter(|s| *s <= Slot::MAX)
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What the guest needs to configure its network, identical for every slot
/// except `dns` (which follows the host's resolver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNetConfig {
    pub guest_ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub prefix_len: u8,
    /// Resolvers the guest may use (reached through the NAT); empty when the
    /// host has none usable and none was given.
    pub dns: Vec<Ipv4Addr>,
    /// TAP device in the namespace, for the VMM (`-netdev tap,ifname=`).
    pub tap_name: String,
    /// MAC address for the guest's NIC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

impl GuestNetConfig {
    pub(crate) fn new(dns: Vec<Ipv4Addr>) -> Self {
        Self {
            guest_ip: GUEST_IP,
            gateway: GATEWAY_IP,
            netmask: Ipv4Addr::from(u32::MAX << (32 - u32::from(GUEST_PREFIX))),
            prefix_len: GUEST_PREFIX,
            dns,
            tap_name: TAP_NAME.to_string(),
            mac: format_mac(GUEST_MAC),
        }
    }

    /// The kernel's `ip=` argument:
    /// `ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off`.
    pub fn kernel_ip_arg(&self) -> String {
        format!(
            "ip={}::{}:{}::eth0:off",
            self.guest_ip, self.gateway, self.netmask
        )
    }

    /// `petrel.dns=A[,B]` for the guest's init to write `/etc/resolv.conf`,
    /// or `None` without resolvers.
    pub fn kernel_dns_arg(&self) -> Option<String> {
        if self.dns.is_empty() {
            return None;
        }
        let list: Vec<String> = self.dns.iter().map(ToString::to_string).collect();
        Some(format!("petrel.dns={}", list.join(",")))
    }
}

/// The first IPv4 `nameserver` of a resolv.conf text that a guest can reach
/// through the NAT (not loopback, not unspecified).
pub fn first_usable_nameserver(resolv_conf: &str) -> Option<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(addr)) => addr.parse::<Ipv4Addr>().ok(),
                _ => None,
            }
        })
        .find(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

/// The host's resolver for guests: [`first_usable_nameserver`] of
/// `/etc/resolv.conf`, or none if the file is missing or has none.
pub fn host_dns() -> Vec<Ipv4Addr> {
    match std::fs::read_to_string("/etc/resolv.conf") {
        Ok(text) => first_usable_nameserver(&text).into_iter().collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read /etc/resolv.conf; guests get no resolver");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_plan_follows_the_addressing_table() {
        let plan = SlotPlan::new(Slot::new(300).unwrap());

        assert_eq!(plan.namespace, "petrel-300");
        assert_eq!(plan.host_veth, "ptl300h");
        assert_eq!(plan.ns_veth, "ptl300p");
        assert_eq!(plan.host_ip, Ipv4Addr::new(10, 12, 2, 88));
        assert_eq!(plan.vpeer_ip, Ipv4Addr::new(10, 12, 2, 89));
        assert_eq!(plan.reachable_ip, Ipv4Addr::new(10, 13, 1, 44));
        assert_eq!(plan.netns_path(), PathBuf::from("/run/netns/petrel-300"));
        assert_eq!(plan.rule_tag(), "petrel-slot-300");
    }

    #[test]
    fn largest_slot_fits_names_and_networks() {
        let plan = SlotPlan::new(Slot::new(u32::from(Slot::MAX)).unwrap());

        assert!(plan.host_veth.len() <= 15, "{}", plan.host_veth);
        assert_eq!(plan.vpeer_ip, Ipv4Addr::new(10, 12, 255, 255));
        assert_eq!(plan.reachable_ip, Ipv4Addr::new(10, 13, 127, 255));
    }

    #[test]
    fn names_parse_back_to_their_slot() {
        let plan = SlotPlan::new(Slot::new(42).unwrap());

        assert_eq!(slot_of_namespace(&plan.namespace), Some(42));
        assert_eq!(slot_of_link(&plan.host_veth), Some(42));
        assert_eq!(slot_of_link(&plan.ns_veth), Some(42));
        assert_eq!(slot_of_tag(&plan.rule_tag()), Some(42));
        assert_eq!(slot_of_reachable(plan.reachable_ip), Some(42));
    }

    #[test]
    fn foreign_names_are_not_slots() {
        let names = [
            "petrel-",
            "petrel-x1",
            "petrel-test-1",
            "ptl",
            "ptlh",
            "ptl1x",
            "ptl99999h",
            "eth0",
        ];

        let parsed: Vec<Option<u16>> = names
            .iter()
            .map(|n| slot_of_namespace(n).or_else(|| slot_of_link(n)))
            .collect();

        assert!(parsed.iter().all(Option::is_none), "{parsed:?}");
        assert_eq!(slot_of_reachable(Ipv4Addr::new(10, 12, 0, 1)), None);
    }

    #[test]
    fn kernel_args_describe_guest_network() {
        let cfg = GuestNetConfig::new(vec![Ipv4Addr::new(10, 255, 255, 53)]);

        assert_eq!(
            cfg.kernel_ip_arg(),
            "ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off"
        );
        assert_eq!(
            cfg.kernel_dns_arg().as_deref(),
            Some("petrel.dns=10.255.255.53")
        );
        assert_eq!(cfg.mac, "06:00:a9:fe:00:15");
        assert_eq!(GuestNetConfig::new(vec![]).kernel_dns_arg(), None);
    }

    #[test]
    fn nameserver_skips_loopback_and_ipv6() {
        let text = "# generated\nsearch example\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n";

        assert_eq!(
            first_usable_nameserver(text),
            Some(Ipv4Addr::new(192, 0, 2, 53))
        );
        assert_eq!(first_usable_nameserver("nameserver 127.0.0.1\n"), None);
    }
}
