//! Real namespaces, links, routes and nft rules (needs root). Every test uses
//! its own slots at 200 and above, runs alone (`serial`) and compares what
//! the host lists before and after.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::unix::fs::MetadataExt;

use common::{
    GuestStandIn, Outside, SlotGuard, connect_host, eventually, listing, serial, serve_on, sh,
};
use futures::future::join_all;
use netns::{
    EgressPolicy, NetError, NetworkOptions, Slot, SlotAllocator, Step, create_network,
    remove_network,
};

fn slot(n: u16) -> Slot {
    Slot::new(u32::from(n)).unwrap()
}

fn options(policy: EgressPolicy, dns: &[Ipv4Addr]) -> NetworkOptions {
    NetworkOptions {
        policy,
        dns: Some(dns.to_vec()),
        ..NetworkOptions::default()
    }
}

/// A public address (198.51.100.0/24 is denied now): only ever routed to
/// the test's own namespace.
const OUTSIDE_HOST: Ipv4Addr = Ipv4Addr::new(198, 20, 0, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 20, 0, 2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_remove_network_leaves_host_listings_unchanged() {
    let _serial = serial().await;
    let _guard = SlotGuard(200..201);
    let before = listing();

    let net = create_network(slot(200), &NetworkOptions::default())
        .await
        .unwrap();
    let during = listing();
    remove_network(net).await.unwrap();
    let after = listing();

    assert_eq!(after, before);
    assert!(
        during.namespaces.contains("petrel-200"),
        "{}",
        during.namespaces
    );
    assert!(during.links.contains("ptl200h@"), "{}", during.links);
    assert!(
        during
            .routes
            .contains("10.13.0.200 via 10.12.1.145 dev ptl200h"),
        "{}",
        during.routes
    );
    assert!(
        during
            .nft
            .contains("ip saddr 10.12.1.145 masquerade comment \"petrel-slot-200\""),
        "{}",
        during.nft
    );
    assert_eq!(during.ip_forward.trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_namespace_has_links_addresses_routes_forwarding_and_rules() {
    let _serial = serial().await;
    let _guard = SlotGuard(201..202);
    let dns = [Ipv4Addr::new(192, 0, 2, 53)];

    let net = create_network(slot(201), &options(EgressPolicy::INTERNET_ON, &dns))
        .await
        .unwrap();
    let addrs = sh(&["ip", "-n", "petrel-201", "-o", "-4", "addr"]);
    let routes = sh(&["ip", "-n", "petrel-201", "route"]);
    let tap = sh(&["ip", "-n", "petrel-201", "-d", "-o", "link", "show", "tap0"]);
    let rules = sh(&[
        "ip",
        "netns",
        "exec",
        "petrel-201",
        "nft",
        "list",
        "ruleset",
    ]);
    let forward = net
        .run_in_netns(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"))
        .await
        .unwrap()
        .unwrap();
    let guest = net.guest().clone();
    remove_network(net).await.unwrap();

    assert!(addrs.contains("lo    inet 127.0.0.1/8"), "{addrs}");
    assert!(addrs.contains("ptl201p    inet 10.12.1.147/31"), "{addrs}");
    assert!(addrs.contains("tap0    inet 169.254.0.22/30"), "{addrs}");
    assert!(
        routes.contains("default via 10.12.1.146 dev ptl201p"),
        "{routes}"
    );
    assert!(
        tap.contains("link/ether 06:00:a9:fe:00:16") && tap.contains("tun type tap"),
        "{tap}"
    );
    assert!(
        rules.contains("iifname \"ptl201p\" ip daddr 10.13.0.201 dnat to 169.254.0.21"),
        "{rules}"
    );
    assert!(
        rules.contains("oifname \"ptl201p\" ip saddr 169.254.0.21 snat to 10.12.1.147"),
        "{rules}"
    );
    assert!(
        rules.contains("ip daddr 192.0.2.53 meta l4proto { tcp, udp } th dport 53 accept"),
        "{rules}"
    );
    assert_eq!(forward.trim(), "1");
    assert_eq!(guest.dns, dns);
    assert_eq!(
        guest.kernel_dns_arg().as_deref(),
        Some("petrel.dns=192.0.2.53")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_in_netns_starts_the_process_inside_the_namespace() {
    let _serial = serial().await;
    let _guard = SlotGuard(202..203);
    let net = create_network(slot(202), &NetworkOptions::default())
        .await
        .unwrap();
    let ino = std::fs::metadata(net.netns_path()).unwrap().ino();

    let mut cmd = std::process::Command::new("readlink");
    cmd.arg("/proc/self/ns/net");
    net.command_in_netns(&mut cmd).unwrap();
    let out = cmd.output().unwrap();
    remove_network(net).await.unwrap();

    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("net:[{ino}]")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_reaches_guest_through_host_reachable_address() {
    let _serial = serial().await;
    let _guard = SlotGuard(203..204);
    let net = create_network(slot(203), &options(EgressPolicy::INTERNET_OFF, &[]))
        .await
        .unwrap();
    let guest = GuestStandIn::attach(&net).await;
    let port = guest.serve().await;

    let seen = connect_host(SocketAddrV4::new(net.host_reachable_ip(), port)).await;
    drop(guest);
    let host_ip = net.plan().host_ip;
    remove_network(net).await.unwrap();

    assert_eq!(seen.unwrap(), host_ip.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_reaches_outside_server_through_host_masquerade() {
    let _serial = serial().await;
    let _guard = SlotGuard(204..205);
    let before = listing();
    let outside = Outside::new("pttout", OUTSIDE_HOST, OUTSIDE);
    let port = outside.serve(0).await;
    let net = create_network(slot(204), &options(EgressPolicy::INTERNET_ON, &[]))
        .await
        .unwrap();
    let guest = GuestStandIn::attach(&net).await;

    let seen = guest.connect(SocketAddrV4::new(OUTSIDE, port)).await;
    drop(guest);
    remove_network(net).await.unwrap();
    drop(outside);

    assert_eq!(seen.unwrap(), OUTSIDE_HOST.to_string());
    assert!(
        eventually(2, || listing() == before).await,
        "{:#?}",
        listing()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internet_off_blocks_outside_while_host_still_reaches_guest() {
    let _serial = serial().await;
    let _guard = SlotGuard(205..206);
    let outside = Outside::new("pttout", OUTSIDE_HOST, OUTSIDE);
    let port = outside.serve(0).await;
    let net = create_network(slot(205), &options(EgressPolicy::INTERNET_OFF, &[]))
        .await
        .unwrap();
    let guest = GuestStandIn::attach(&net).await;
    let guest_port = guest.serve().await;

    let out = guest.connect(SocketAddrV4::new(OUTSIDE, port)).await;
    let envd_like = connect_host(SocketAddrV4::new(net.host_reachable_ip(), guest_port)).await;
    drop(guest);
    remove_network(net).await.unwrap();

    assert!(out.is_err(), "{out:?}");
    assert!(envd_like.is_ok(), "{envd_like:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_policy_switches_internet_off_and_on_again() {
    let _serial = serial().await;
    let _guard = SlotGuard(206..207);
    let outside = Outside::new("pttout", OUTSIDE_HOST, OUTSIDE);
    let port = outside.serve(0).await;
    let mut net = create_network(slot(206), &options(EgressPolicy::INTERNET_ON, &[]))
        .await
        .unwrap();
    let guest = GuestStandIn::attach(&net).await;
    let to = SocketAddrV4::new(OUTSIDE, port);

    let on = guest.connect(to).await;
    net.set_policy(EgressPolicy::INTERNET_OFF).await.unwrap();
    let off = guest.connect(to).await;
    net.set_policy(EgressPolicy::INTERNET_ON).await.unwrap();
    let on_again = guest.connect(to).await;
    drop(guest);
    remove_network(net).await.unwrap();

    assert!(on.is_ok(), "{on:?}");
    assert!(off.is_err(), "{off:?}");
    assert!(on_again.is_ok(), "{on_again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_cannot_reach_host_services() {
    let _serial = serial().await;
    let _guard = SlotGuard(207..208);
    let outside = Outside::new("pttout", OUTSIDE_HOST, OUTSIDE);
    let outside_port = outside.serve(0).await;
    let agent_port = serve_on(TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap());
    let net = create_network(slot(207), &options(EgressPolicy::INTERNET_ON, &[]))
        .await
        .unwrap();
    let guest = GuestStandIn::attach(&net).await;

    let via_veth = guest
        .connect(SocketAddrV4::new(net.plan().host_ip, agent_port))
        .await;
    let via_public = guest
        .connect(SocketAddrV4::new(OUTSIDE_HOST, agent_port))
        .await;
    let via_gateway = guest
        .connect(SocketAddrV4::new(netns::GATEWAY_IP, agent_port))
        .await;
    let outside_ok = guest
        .connect(SocketAddrV4::new(OUTSIDE, outside_port))
        .await;
    let from_host = connect_host(SocketAddrV4::new(Ipv4Addr::LOCALHOST, agent_port)).await;
    drop(guest);
    remove_network(net).await.unwrap();

    assert!(via_veth.is_err(), "{via_veth:?}");
    assert!(via_public.is_err(), "{via_public:?}");
    assert!(via_gateway.is_err(), "{via_gateway:?}");
    assert!(outside_ok.is_ok(), "{outside_ok:?}");
    assert!(from_host.is_ok(), "{from_host:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_reaches_its_private_resolver_on_port_53_only() {
    let _serial = serial().await;
    let _guard = SlotGuard(208..209);
    let resolver_host = Ipv4Addr::new(10, 201, 0, 1);
    let resolver = Ipv4Addr::new(10, 201, 0, 2);
    let outside = Outside::new("pttdns", resolver_host, resolver);
    outside.serve(53).await;
    let other_port = outside.serve(0).await;
    let mut net = create_network(slot(208), &options(EgressPolicy::INTERNET_ON, &[resolver]))
        .await
        .unwrap();
    let guest = GuestStandIn::attach(&net).await;

    let dns = guest.connect(SocketAddrV4::new(resolver, 53)).await;
    let other = guest.connect(SocketAddrV4::new(resolver, other_port)).await;
    net.set_policy(EgressPolicy::INTERNET_OFF).await.unwrap();
    let dns_off = guest.connect(SocketAddrV4::new(resolver, 53)).await;
    drop(guest);
    remove_network(net).await.unwrap();

    assert_eq!(dns.unwrap(), resolver_host.to_string());
    assert!(other.is_err(), "{other:?}");
    assert!(dns_off.is_err(), "{dns_off:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_networks_get_different_slots_and_guests_cannot_reach_each_other() {
    let _serial = serial().await;
    let _guard = SlotGuard(210..212);
    let slots = SlotAllocator::new(210..212).unwrap();
    let (sa, sb) = (slots.allocate().unwrap(), slots.allocate().unwrap());
    let a = create_network(sa, &options(EgressPolicy::INTERNET_ON, &[]))
        .await
        .unwrap();
    let b = create_network(sb, &options(EgressPolicy::INTERNET_ON, &[]))
        .await
        .unwrap();
    let guest_a = GuestStandIn::attach(&a).await;
    let guest_b = GuestStandIn::attach(&b).await;
    let port_b = guest_b.serve().await;
    let port_a = guest_a.serve().await;

    let a_to_b = guest_a
        .connect(SocketAddrV4::new(b.host_reachable_ip(), port_b))
        .await;
    let a_to_b_vpeer = guest_a
        .connect(SocketAddrV4::new(b.plan().vpeer_ip, port_b))
        .await;
    let b_to_a = guest_b
        .connect(SocketAddrV4::new(a.host_reachable_ip(), port_a))
        .await;
    let host_to_b = connect_host(SocketAddrV4::new(b.host_reachable_ip(), port_b)).await;
    let host_to_a = connect_host(SocketAddrV4::new(a.host_reachable_ip(), port_a)).await;
    drop((guest_a, guest_b));
    remove_network(a).await.unwrap();
    remove_network(b).await.unwrap();

    assert_ne!(sa, sb);
    assert!(a_to_b.is_err(), "{a_to_b:?}");
    assert!(a_to_b_vpeer.is_err(), "{a_to_b_vpeer:?}");
    assert!(b_to_a.is_err(), "{b_to_a:?}");
    assert!(host_to_b.is_ok(), "{host_to_b:?}");
    assert!(host_to_a.is_ok(), "{host_to_a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_and_removes_leave_host_listings_unchanged() {
    let _serial = serial().await;
    let _guard = SlotGuard(220..226);
    let before = listing();
    let slots = SlotAllocator::new(220..226).unwrap();
    let wanted: Vec<Slot> = (0..6).map(|_| slots.allocate().unwrap()).collect();

    let created = join_all(wanted.iter().map(|s| {
        let s = *s;
        tokio::spawn(async move { create_network(s, &NetworkOptions::default()).await })
    }))
    .await;
    let nets: Vec<_> = created.into_iter().map(|r| r.unwrap().unwrap()).collect();
    let during = listing();
    let removed = join_all(nets.into_iter().map(|n| tokio::spawn(remove_network(n)))).await;
    let after = listing();

    assert!(removed.into_iter().all(|r| r.unwrap().is_ok()));
    assert_eq!(
        during.nft.matches("masquerade comment").count(),
        6,
        "{}",
        during.nft
    );
    assert_eq!(after, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_create_remove_cycles_leave_host_listings_unchanged() {
    let _serial = serial().await;
    let _guard = SlotGuard(230..240);
    let before = listing();
    let slots = SlotAllocator::new(230..240).unwrap();

    for _ in 0..50 {
        let s = slots.allocate().unwrap();
        let net = create_network(s, &NetworkOptions::default()).await.unwrap();
        remove_network(net).await.unwrap();
        slots.release(s).unwrap();
    }
    let after = listing();

    assert_eq!(after, before);
    assert_eq!(slots.in_use(), 0);
}

macro_rules! failure_leaves_nothing {
    ($($name:ident => $step:expr,)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let _serial = serial().await;
            let _guard = SlotGuard(240..241);
            let before = listing();
            let opts = NetworkOptions { fail_after: Some($step), ..NetworkOptions::default() };

            let err = create_network(slot(240), &opts).await.unwrap_err();
            let after = listing();

            assert!(matches!(err, NetError::Injected { step, slot: 240 } if step == $step), "{err}");
            assert_eq!(after, before);
        }
    )*};
}

failure_leaves_nothing! {
    create_network_failure_at_namespace_leaves_nothing => Step::Namespace,
    create_network_failure_at_loopback_leaves_nothing => Step::Loopback,
    create_network_failure_at_veth_leaves_nothing => Step::Veth,
    create_network_failure_at_tap_leaves_nothing => Step::Tap,
    create_network_failure_at_addresses_leaves_nothing => Step::Addresses,
    create_network_failure_at_links_up_leaves_nothing => Step::LinksUp,
    create_network_failure_at_routes_leaves_nothing => Step::Routes,
    create_network_failure_at_forwarding_leaves_nothing => Step::Forwarding,
    create_network_failure_at_namespace_nft_leaves_nothing => Step::NamespaceNft,
    create_network_failure_at_host_nft_leaves_nothing => Step::HostNft,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_network_over_a_foreign_link_fails_and_keeps_that_link() {
    let _serial = serial().await;
    let _guard = SlotGuard(241..242);
    sh(&[
        "ip",
        "link",
        "add",
        "ptl241h",
        "type",
        "veth",
        "peer",
        "name",
        "pttforeign",
    ]);
    let before = listing();

    let err = create_network(slot(241), &NetworkOptions::default())
        .await
        .unwrap_err();
    let after = listing();

    assert!(
        matches!(&err, NetError::Link { link, op: "create veth", .. } if link == "ptl241h"),
        "{err}"
    );
    assert_eq!(after, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_network_over_a_foreign_namespace_fails_and_keeps_it() {
    let _serial = serial().await;
    let _guard = SlotGuard(242..243);
    sh(&["ip", "netns", "add", "petrel-242"]);
    let before = listing();

    let err = create_network(slot(242), &NetworkOptions::default())
        .await
        .unwrap_err();
    let after = listing();

    assert!(
        matches!(&err, NetError::Namespace { name, .. } if name == "petrel-242"),
        "{err}"
    );
    assert_eq!(after, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_network_collects_errors_and_removes_the_rest() {
    let _serial = serial().await;
    let _guard = SlotGuard(243..244);
    let before = listing();
    let net = create_network(slot(243), &NetworkOptions::default())
        .await
        .unwrap();
    sh(&["ip", "netns", "del", "petrel-243"]);

    let err = remove_network(net).await.unwrap_err();

    assert_eq!(err.errors.len(), 1, "{err}");
    assert!(
        matches!(&err.errors[0], NetError::Namespace { name, op: "open", .. } if name == "petrel-243"),
        "{err}"
    );
    assert!(
        eventually(2, || listing() == before).await,
        "{:#?}",
        listing()
    );
}
