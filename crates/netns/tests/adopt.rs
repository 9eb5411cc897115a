//! `adopt_network` after an agent "restart" (the first run's `Network` value
//! is dropped). In its own test binary: the dropped value keeps this
//! process's reference on host forwarding, which no other test must see.

#![allow(clippy::unwrap_used)]

mod common;

use common::{SlotGuard, listing, serial, sh};
use netns::{
    EgressPolicy, NetError, NetworkOptions, Slot, adopt_network, create_network, remove_network,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopted_network_takes_new_policy_and_removes_cleanly() {
    let _serial = serial().await;
    let _guard = SlotGuard(252..253);
    let before = listing();
    let first_run = NetworkOptions {
        dns: Some(vec![]),
        ..NetworkOptions::default()
    };
    drop(
        create_network(Slot::new(252).unwrap(), &first_run)
            .await
            .unwrap(),
    );
    let second_run = NetworkOptions {
        policy: EgressPolicy::INTERNET_OFF,
        ..first_run
    };

    let net = adopt_network(Slot::new(252).unwrap(), &second_run)
        .await
        .unwrap();
    let egress = sh(&[
        "ip",
        "netns",
        "exec",
        "petrel-252",
        "nft",
        "list",
        "chain",
        "inet",
        "petrel_filter",
        "egress",
    ]);
    remove_network(net).await.unwrap();
    let after = listing();
    // The dropped first-run value still counts as a forwarding user.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", &before.ip_forward).unwrap();

    assert!(
        egress.contains("\t\treject with icmpx admin-prohibited comment \"petrel-slot-252\"\n\t}"),
        "{egress}"
    );
    assert!(!egress.contains("accept"), "{egress}");
    assert_eq!(after.links, before.links);
    assert_eq!(after.namespaces, before.namespaces);
    assert_eq!(after.addresses, before.addresses);
    assert_eq!(after.routes, before.routes);
    assert_eq!(after.nft, before.nft);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopting_a_slot_without_namespace_fails() {
    let _serial = serial().await;

    let err = adopt_network(Slot::new(253).unwrap(), &NetworkOptions::default())
        .await
        .unwrap_err();

    assert!(
        matches!(&err, NetError::Namespace { name, op: "open", .. } if name == "petrel-253"),
        "{err}"
    );
}
