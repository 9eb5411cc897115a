//! The egress policy against a guest stand-in on a real sandbox network
//! (needs root): special-purpose ranges and SMTP are unreachable while a
//! public address works, and the per-sandbox connection and
//! new-connection-rate limits hold while the host still reaches the guest.
//! The sandbox's own allow and deny ranges hold, allow winning, and change
//! on a live network. Domain rules let HTTP (Host) and TLS (SNI)
//! connections to allowed names through on ports 80 and 443, and nothing
//! else. Slots 270..280, one test at a time (`serial`).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::{GuestStandIn, Outside, SlotGuard, connect_host, open_many, serial};
use netns::{
    DomainRule, EgressPolicy, NAME_PROXY_PORT, NetworkOptions, Slot, create_network,
    remove_network, run_in_netns,
};

fn options(policy: EgressPolicy) -> NetworkOptions {
    NetworkOptions {
        policy,
        dns: Some(Vec::new()),
        ..NetworkOptions::default()
    }
}

fn slot(n: u16) -> Slot {
    Slot::new(u32::from(n)).unwrap()
}

/// A public address (just past 198.18.0.0/15) standing for the internet;
/// only ever routed to the test's own namespace.
const PUBLIC_HOST: Ipv4Addr = Ipv4Addr::new(198, 20, 0, 1);
const PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 20, 0, 2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_cannot_reach_special_purpose_ranges_while_a_public_address_works() {
    let _serial = serial().await;
    let _guard = SlotGuard(270..271);
    let outside = Outside::new("ptespec", PUBLIC_HOST, PUBLIC);
    // One /30 in each range the deny list gained, and two it always had.
    let special = [
        ([192, 0, 0, 1], [192, 0, 0, 2]),
        ([192, 0, 2, 1], [192, 0, 2, 2]),
        ([198, 18, 0, 1], [198, 18, 0, 2]),
        ([198, 19, 255, 1], [198, 19, 255, 2]),
        ([198, 51, 100, 1], [198, 51, 100, 2]),
        ([203, 0, 113, 1], [203, 0, 113, 2]),
        ([192, 88, 99, 1], [192, 88, 99, 2]),
        ([100, 64, 7, 1], [100, 64, 7, 2]),
    ]
    .map(|(h, i)| (Ipv4Addr::from(h), Ipv4Addr::from(i)));
    for (host_ip, ip) in special {
        outside.add_address(host_ip, ip);
    }
    let port = outside.serve_any(0).await;
    let net = create_network(slot(270), &options(EgressPolicy::INTERNET_ON))
        .await
        .unwrap();
    let guest = GuestStandIn::attach(&net).await;

    let public = guest.connect(SocketAddrV4::new(PUBLIC, port)).await;
    let mut reached = Vec::new();
    for (_, ip) in special {
        if let Ok(line) = guest.connect(SocketAddrV4::new(ip, port)).await {
            reached.push((ip, line));
        }
    }
    drop(guest);
    remove_network(net).await.unwrap();
    drop(outside);

    assert_eq!(public.unwrap(), PUBLIC_HOST.to_string());
    assert!(reached.is_empty(), "guest reached {reached:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_is_blocked_while_another_port_to_the_same_address_works() {
    let _serial = serial().await;
    let _guard = SlotGuard(271..272);
    let outside = Outside::new("ptesmtp", PUBLIC_HOST, PUBLIC);
    outside.serve(25).await;
    let other = outside.serve(0).await;
    let mut net = create_network(slot(271), &options(EgressPolicy::INTERNET_ON))
        .await
        .unwrap();
    let guest = GuestStandIn::attach(&net).await;

    let smtp = guest.connect(SocketAddrV4::new(PUBLIC, 25)).await;
    let web = guest.connect(SocketAddrV4::new(PUBLIC, other)).await;
    let allowed = EgressPolicy {
        smtp: true,
        ..EgressPolicy::INTERNET_ON
    };
    net.set_policy(allowed).await.unwrap();
    let smtp_allowed = guest.connect(SocketAddrV4::new(PUBLIC, 25)).await;
    drop(guest);
    remove_network(net).await.unwrap();
    drop(outside);

    assert!(smtp.is_err(), "{smtp:?}");
    assert_eq!(web.unwrap(), PUBLIC_HOST.to_string());
    assert_eq!(smtp_allowed.unwrap(), PUBLIC_HOST.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_sandbox_limit_are_refused_until_some_close() {
    let _serial = serial().await;
    let _guard = SlotGuard(272..273);
    let outside = Outside::new("ptecount", PUBLIC_HOST, PUBLIC);
    let port = outside.hold().await;
    let policy = EgressPolicy {
        max_connections: 8,
        new_connections_per_sec: 0,
        ..EgressPolicy::INTERNET_ON
    };
    let net = create_network(slot(272), &options(policy)).await.unwrap();
    let guest = GuestStandIn::attach(&net).await;
    let guest_port = guest.serve().await;
    let to = SocketAddrV4::new(PUBLIC, port);

    let held = open_many(&guest.ns_path, to, 12).await;
    let opened = held.iter().filter(|c| c.is_ok()).count();
    let host_to_guest = connect_host(SocketAddrV4::new(net.host_reachable_ip(), guest_port)).await;
    drop(held);
    // Closed connections leave the count (conntrack sees the FINs).
    let mut again = 0;
    for _ in 0..50 {
        let conns = open_many(&guest.ns_path, to, 4).await;
        again = conns.iter().filter(|c| c.is_ok()).count();
        if again == 4 {
            break;
        }
        drop(conns);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    drop(guest);
    remove_network(net).await.unwrap();
    drop(outside);

    assert_eq!(opened, 8);
    assert!(host_to_guest.is_ok(), "{host_to_guest:?}");
    assert_eq!(again, 4, "after closing the first ones");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_hits_the_rate_limit_while_the_host_reaches_the_guest() {
    let _serial = serial().await;
    let _guard = SlotGuard(273..274);
    let outside = Outside::new("pterate", PUBLIC_HOST, PUBLIC);
    let port = outside.serve(0).await;
    let policy = EgressPolicy {
        max_connections: 0,
        new_connections_per_sec: 10,
        ..EgressPolicy::INTERNET_ON
    };
    let net = create_network(slot(273), &options(policy)).await.unwrap();
    let guest = GuestStandIn::attach(&net).await;
    let guest_port = guest.serve().await;

    let start = std::time::Instant::now();
    let flood = open_many(&guest.ns_path, SocketAddrV4::new(PUBLIC, port), 100).await;
    let took = start.elapsed();
    let succeeded = flood.iter().filter(|c| c.is_ok()).count();
    drop(flood);
    let host_to_guest = connect_host(SocketAddrV4::new(net.host_reachable_ip(), guest_port)).await;
    drop(guest);
    remove_network(net).await.unwrap();
    drop(outside);

    // 10/s with a burst of 20 allows at most 20 + 10 per second taken.
    let allowed = 20 + 10 * (took.as_secs() as usize + 1);
    assert!(succeeded >= 1, "none got through");
    assert!(
        succeeded <= allowed,
        "{succeeded} of 100 in {took:?} (at most {allowed} allowed)"
    );
    assert!(succeeded < 100);
    assert!(host_to_guest.is_ok(), "{host_to_guest:?}");
}

/// A second public address on the outside namespace.
const OTHER_HOST: Ipv4Addr = Ipv4Addr::new(198, 21, 0, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 21, 0, 2);

fn net(text: &str) -> netns::Ipv4Net {
    text.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_wins_over_deny_and_rules_change_on_a_live_network() {
    let _serial = serial().await;
    let _guard = SlotGuard(274..275);
    let outside = Outside::new("pterule", PUBLIC_HOST, PUBLIC);
    outside.add_address(OTHER_HOST, OTHER);
    // 198.18.0.0/15 (benchmarking) is a special-purpose range.
    outside.add_address(Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
    let port = outside.serve_any(0).await;
    let only_public = EgressPolicy::INTERNET_ON.with_ranges(
        vec![net("198.20.0.2/32"), net("198.18.0.0/15")],
        vec![net("0.0.0.0/0")],
    );
    let mut network = create_network(slot(274), &options(only_public))
        .await
        .unwrap();
    let guest = GuestStandIn::attach(&network).await;
    let reach = |ip: Ipv4Addr| guest.connect(SocketAddrV4::new(ip, port));

    let deny_all = (reach(PUBLIC).await, reach(OTHER).await);
    let special = reach(Ipv4Addr::new(198, 18, 0, 2)).await;
    network
        .set_policy(EgressPolicy::INTERNET_ON.with_ranges(Vec::new(), vec![net("198.21.0.0/16")]))
        .await
        .unwrap();
    let deny_one = (reach(PUBLIC).await, reach(OTHER).await);
    network
        .set_policy(EgressPolicy::INTERNET_OFF.with_ranges(vec![net("198.21.0.2/32")], Vec::new()))
        .await
        .unwrap();
    let internet_off = (reach(PUBLIC).await, reach(OTHER).await);
    network.set_policy(EgressPolicy::INTERNET_ON).await.unwrap();
    let cleared = (reach(PUBLIC).await, reach(OTHER).await);
    drop(guest);
    remove_network(network).await.unwrap();
    drop(outside);

    assert!(deny_all.0.is_ok() && deny_all.1.is_err(), "{deny_all:?}");
    assert!(
        special.is_err(),
        "allow opened a special-purpose range: {special:?}"
    );
    assert!(deny_one.0.is_ok() && deny_one.1.is_err(), "{deny_one:?}");
    assert!(
        internet_off.0.is_err() && internet_off.1.is_ok(),
        "{internet_off:?}"
    );
    assert!(cleared.0.is_ok() && cleared.1.is_ok(), "{cleared:?}");
}

/// Connects from the namespace at `ns`, sends `first` and returns the line
/// the server answers; an empty answer (closed or reset) is an error.
async fn exchange(ns: &Path, to: SocketAddrV4, first: Vec<u8>) -> io::Result<String> {
    run_in_netns(ns, move || {
        let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(&first)?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        if line.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed without an answer",
            ));
        }
        Ok(line.trim().to_string())
    })
    .await
    .unwrap()
}

fn http_get(host: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: test\r\n\r\n").into_bytes()
}

/// A minimal TLS ClientHello record naming `name` (what a TLS client sends
/// first).
fn client_hello(name: &str) -> Vec<u8> {
    fn vec16(body: &[u8]) -> Vec<u8> {
        let mut out = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[1; 32]);
    body.push(0);
    body.extend(vec16(&[0x13, 0x01]));
    body.extend_from_slice(&[1, 0]);
    let mut entry = vec![0];
    entry.extend(vec16(name.as_bytes()));
    let mut extensions = vec![0, 0];
    extensions.extend(vec16(&vec16(&entry)));
    body.extend(vec16(&extensions));
    let mut handshake = vec![1];
    handshake.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![22, 3, 1];
    record.extend(vec16(&handshake));
    record
}

fn rules(names: &[&str]) -> Vec<DomainRule> {
    names.iter().map(|n| n.parse().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_rules_pass_allowed_http_hosts_and_tls_names_and_nothing_else() {
    let _serial = serial().await;
    let _guard = SlotGuard(275..276);
    let outside = Outside::new("ptename", PUBLIC_HOST, PUBLIC);
    outside.add_address(Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
    for port in [80, 443, 8080] {
        outside.serve_any(port).await;
    }
    let deny_all_but_names = EgressPolicy::INTERNET_ON
        .with_ranges(Vec::new(), vec![net("0.0.0.0/0")])
        .with_names(rules(&["allowed.test", "*.wild.test"]));
    let mut network = create_network(slot(275), &options(deny_all_but_names.clone()))
        .await
        .unwrap();
    let guest = GuestStandIn::attach(&network).await;
    let ns = guest.ns_path.clone();
    let at = |port| SocketAddrV4::new(PUBLIC, port);

    let http_allowed = exchange(&ns, at(80), http_get("Allowed.test:80")).await;
    let http_denied = exchange(&ns, at(80), http_get("denied.test")).await;
    let tls_wild = exchange(&ns, at(443), client_hello("api.wild.test")).await;
    let tls_apex = exchange(&ns, at(443), client_hello("wild.test")).await;
    let other_port = exchange(&ns, at(8080), http_get("allowed.test")).await;
    let special = exchange(
        &ns,
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 80),
        http_get("allowed.test"),
    )
    .await;
    let proxy_direct = exchange(
        &ns,
        SocketAddrV4::new(netns::GATEWAY_IP, NAME_PROXY_PORT),
        http_get("allowed.test"),
    )
    .await;
    network
        .set_policy(
            deny_all_but_names
                .clone()
                .with_names(rules(&["denied.test"])),
        )
        .await
        .unwrap();
    let switched = (
        exchange(&ns, at(80), http_get("allowed.test")).await,
        exchange(&ns, at(80), http_get("denied.test")).await,
    );
    network
        .set_policy(deny_all_but_names.with_names(Vec::new()))
        .await
        .unwrap();
    let cleared = exchange(&ns, at(80), http_get("denied.test")).await;
    drop(guest);
    remove_network(network).await.unwrap();
    drop(outside);

    assert!(http_allowed.is_ok(), "{http_allowed:?}");
    assert!(http_denied.is_err(), "{http_denied:?}");
    assert!(tls_wild.is_ok(), "{tls_wild:?}");
    assert!(
        tls_apex.is_err(),
        "a wildcard matched its apex: {tls_apex:?}"
    );
    assert!(
        other_port.is_err(),
        "a name opened port 8080: {other_port:?}"
    );
    assert!(
        special.is_err(),
        "a name opened a special-purpose range: {special:?}"
    );
    assert!(
        proxy_direct.is_err(),
        "the guest reached the proxy directly: {proxy_direct:?}"
    );
    assert!(switched.0.is_err() && switched.1.is_ok(), "{switched:?}");
    assert!(cleared.is_err(), "{cleared:?}");
}
