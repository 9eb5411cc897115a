//! Per-sandbox networking: a network namespace per sandbox, a veth pair to
//! the host, a TAP for the VM, NAT both ways, forwarding, DNS and an egress
//! policy, created in one call with rollback.
//!
//! # What it does
//!
//! - [`SlotAllocator`] hands out [`Slot`]s (reused after release, safe under
//!   concurrency, [`SlotAllocator::reserve`] for slots known at restart).
//!   A slot determines every name and address ([`SlotPlan`]).
//! - [`create_network`] builds a slot's network ([`Step`] lists the steps):
//!   namespace `petrel-<slot>` (bind-mounted under `/run/netns` like
//!   `ip netns add`), loopback up, veth `ptl<slot>h` (host) /
//!   `ptl<slot>p` (namespace), persistent TAP `tap0` in the namespace,
//!   addresses and routes (rtnetlink), IPv4 forwarding (namespace; host
//!   while any Petrel network exists, in any process: the original value
//!   is recorded once in [`FORWARD_STATE`] and put back after the last
//!   network, also across agent crashes), and nftables: DNAT
//!   host-reachable -> guest and SNAT guest -> vpeer in the namespace,
//!   MASQUERADE of the vpeer on the host, and the egress policy (see
//!   [`EgressPolicy`]: special-purpose ranges and SMTP denied, a per-sandbox
//!   connection and new-connection-rate limit; the `policy` module docs). Any failure undoes
//!   what was made, in reverse order, and returns the original error.
//! - [`remove_network`] undoes it all, trying every removal and returning
//!   every error; [`cleanup_stale`] removes leftovers of a crashed run;
//!   [`adopt_network`] takes over a live network after an agent restart.
//! - [`command_in_netns`] / [`Network::command_in_netns`] make a VMM start
//!   inside the namespace (it opens `tap0` by name there);
//!   [`run_in_netns`] runs a closure on a thread inside it.
//!
//! # Addressing (slot `s`)
//!
//! | what | value |
//! |---|---|
//! | namespace | `petrel-<s>`, `/run/netns/petrel-<s>` |
//! | veth ends | `ptl<s>h` in the host, `ptl<s>p` in the namespace |
//! | host end / vpeer | `10.12.0.0 + 2s` / `+ 1`, a /31 |
//! | host-reachable | `10.13.0.0 + s`/32, routed via the vpeer, DNATed to the guest |
//! | TAP (gateway) | `tap0`, `169.254.0.22/30`, MAC `06:00:a9:fe:00:16` |
//! | guest | `169.254.0.21/30`, MAC `06:00:a9:fe:00:15`, gateway `169.254.0.22` |
//! | nft | host and namespace tables `ip petrel_nat`, `inet petrel_filter`; rules commented `petrel-slot-<s>` |
//!
//! ```text
//!  host namespace                  namespace petrel-<s>                 guest (VM)
//!  eth0 (MASQUERADE src vpeer)
//!  route 10.13.0.s/32 via vpeer
//!  ptl<s>h 10.12.0.(2s)/31 <-veth-> ptl<s>p 10.12.0.(2s+1)/31 (vpeer)
//!                                  DNAT 10.13.0.s -> 169.254.0.21
//!                                  SNAT 169.254.0.21 -> vpeer
//!                                  tap0 169.254.0.22/30 <-TAP-> eth0 169.254.0.21/30
//!                                                               gw 169.254.0.22
//! ```
//! (`10.12.0.(2s)` means `10.12.0.0 + 2s`, carrying into the third octet.)
//!
//! The guest's side is the same in every sandbox, so a snapshot restores
//! into any slot. Slots go up to [`Slot::MAX`] (32767). A guest's packets
//! leave the namespace SNATed to its vpeer and the host MASQUERADEs the
//! vpeer; the host reaches a guest port `P` at `10.13.0.0+s:P`.
//!
//! # What it does not do
//!
//! It starts no VMM and does not configure the guest: the launcher passes
//! [`GuestNetConfig::kernel_ip_arg`] / [`GuestNetConfig::kernel_dns_arg`]
//! and [`GuestNetConfig::tap_name`] / [`GuestNetConfig::mac`] to the VMM.
//! No IPv6 for guests. The base prefixes `10.12/16` and `10.13/16` are
//! fixed. The host's own firewall is not changed: if another table drops
//! forwarded traffic, sandboxes have no internet. Needs root.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use netns::{NetworkOptions, SlotAllocator, cleanup_stale, create_network, remove_network};
//! let slots = SlotAllocator::new(0..1024)?;
//! cleanup_stale(slots.range()).await?; // at startup
//! let slot = slots.allocate()?;
//! let net = create_network(slot, &NetworkOptions::default()).await?;
//! let mut qemu = std::process::Command::new("qemu-system-x86_64");
//! net.command_in_netns(&mut qemu)?; // QEMU opens tap0 inside the namespace
//! let args = format!("{} {}", net.guest().kernel_ip_arg(), net.guest().kernel_dns_arg().unwrap_or_default());
//! println!("guest args {args}; envd at {}:49983", net.host_reachable_ip());
//! remove_network(net).await?;
//! slots.release(slot)?;
//! # Ok(()) }
//! ```

mod addressing;
mod error;
mod forwarding;
mod links;
mod names;
mod namespace;
mod network;
mod nft;
mod policy;
mod slot;
mod tap;

pub use addressing::{
    GATEWAY_IP, GATEWAY_MAC, GUEST_IP, GUEST_MAC, GUEST_PREFIX, GuestNetConfig, LINK_PREFIX,
    NETNS_DIR, NETNS_PREFIX, PLAN_PREFIX, REACHABLE_NET, RULE_TAG_PREFIX, SlotPlan, TAP_NAME,
    VETH_NET, first_usable_nameserver, format_mac, host_dns,
};
pub use error::{HOST_NETNS, NetError, RemoveError};
pub use forwarding::FORWARD_STATE;
#[doc(hidden)]
pub use forwarding::ForwardingFiles;
pub use namespace::{command_in_netns, run_in_netns};
pub use network::{
    CleanupReport, Network, NetworkOptions, Step, adopt_network, cleanup_stale, create_network,
    remove_network,
};
pub use nft::HOST_LOCK;
pub use policy::{
    DENIED_V4, DENIED_V6, DomainRule, EgressPolicy, FILTER_TABLE, Ipv4Net, NAME_PORTS,
    NAME_PROXY_PORT, NAT_TABLE, SMTP_PORT, is_special_purpose,
};
pub use slot::{Slot, SlotAllocator};
