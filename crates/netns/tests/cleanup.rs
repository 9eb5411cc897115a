//! `cleanup_stale` after a "crash" (a network dropped without removal). In
//! its own test binary: the dropped network keeps this process's reference
//! on host forwarding, which no other test must see.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;

use common::{SlotGuard, listing, serial};
use netns::{NetworkOptions, Slot, cleanup_stale, create_network, remove_network};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_stale_removes_leftovers_in_its_range_only() {
    let _serial = serial().await;
    let _guard = SlotGuard(250..252);
    let before = listing();
    let no_dns = NetworkOptions {
        dns: Some(vec![]),
        ..NetworkOptions::default()
    };
    let crashed = create_network(Slot::new(250).unwrap(), &no_dns)
        .await
        .unwrap();
    let live = create_network(Slot::new(251).unwrap(), &no_dns)
        .await
        .unwrap();
    drop(crashed);

    let report = cleanup_stale(250..251).await.unwrap();
    let live_left = listing();
    let again = cleanup_stale(250..251).await.unwrap();
    remove_network(live).await.unwrap();
    let after = listing();
    // A crashed run cannot give back host forwarding: put it back by hand.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", &before.ip_forward).unwrap();

    assert_eq!(report.namespaces, vec!["petrel-250".to_string()]);
    assert_eq!(report.links, vec!["ptl250h".to_string()]);
    assert_eq!(report.routes, vec![Ipv4Addr::new(10, 13, 0, 250)]);
    assert_eq!(report.nft_rules, 5);
    assert!(again.is_empty(), "{again:?}");
    assert!(
        live_left.namespaces.contains("petrel-251") && !live_left.namespaces.contains("petrel-250")
    );
    assert!(live_left.links.contains("ptl251h@") && !live_left.links.contains("ptl250h"));
    assert!(
        live_left.nft.contains("petrel-slot-251") && !live_left.nft.contains("petrel-slot-250")
    );
    assert_eq!(after.links, before.links);
    assert_eq!(after.namespaces, before.namespaces);
    assert_eq!(after.addresses, before.addresses);
    assert_eq!(after.routes, before.routes);
    assert_eq!(after.nft, before.nft);
}
