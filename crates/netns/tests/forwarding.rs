//! Host IPv4 forwarding shared by several agents: the original value is
//! recorded once and survives a crash; one agent never switches it off
//! under another. The bookkeeping runs on stand-in files (a fake sysctl and
//! namespace directory) so it can start from `0` without touching the
//! host's forwarding that other tests rely on; the last test drives it
//! through real networks (needs root; slots 280..290).

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;

use common::{SlotGuard, serial};
use netns::{
    FORWARD_STATE, ForwardingFiles, NetworkOptions, SlotAllocator, cleanup_stale, create_network,
    remove_network,
};

/// A fake host: sysctl file at `0`, state file, namespace directory.
struct FakeHost {
    _dir: tempfile::TempDir,
    files: ForwardingFiles,
}

impl FakeHost {
    fn new(forwarding: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = ForwardingFiles {
            sysctl: dir.path().join("ip_forward"),
            state: dir.path().join("state"),
            netns_dir: dir.path().join("netns"),
        };
        fs::write(&files.sysctl, forwarding).unwrap();
        fs::create_dir(&files.netns_dir).unwrap();
        Self { _dir: dir, files }
    }

    fn forwarding(&self) -> String {
        fs::read_to_string(&self.files.sysctl)
            .unwrap()
            .trim()
            .to_string()
    }

    fn state(&self) -> Option<String> {
        fs::read_to_string(&self.files.state).ok()
    }

    /// What `create_network` does under the host lock.
    fn create(&self, slot: u16) {
        self.files.acquire_locked(slot).unwrap();
        fs::write(self.files.netns_dir.join(format!("petrel-{slot}")), "").unwrap();
    }

    /// What `remove_network` does under the host lock.
    fn remove(&self, slot: u16) -> bool {
        fs::remove_file(self.files.netns_dir.join(format!("petrel-{slot}"))).unwrap();
        self.files.release_locked(|s| s == slot).unwrap()
    }
}

#[test]
fn two_agents_do_not_switch_forwarding_off_under_each_other() {
    let host = FakeHost::new("0");

    host.create(3); // agent A, slots 0..10
    host.create(40); // agent B, slots 40..50
    host.create(4);
    let a_done = host.remove(3) | host.remove(4);
    let while_b_runs = host.forwarding();
    let b_done = host.remove(40);

    assert!(!a_done);
    assert_eq!(while_b_runs, "1");
    assert!(b_done);
    assert_eq!(host.forwarding(), "0");
    assert_eq!(host.state(), None);
}

#[test]
fn crashed_agent_leaves_the_original_recorded_for_the_next_start() {
    let host = FakeHost::new("0");
    host.create(7);
    host.create(8);
    // kill -9: nothing is released; forwarding stays on, the record stays.
    let after_crash = host.forwarding();

    // The next start creates before cleaning up, then cleans up the
    // crashed run's namespaces (cleanup_stale prunes holds without one).
    host.create(9);
    let original_kept = host.state().unwrap();
    for slot in [7, 8] {
        fs::remove_file(host.files.netns_dir.join(format!("petrel-{slot}"))).unwrap();
    }
    let pruned = host.files.release_locked(|_| false).unwrap();
    let restored = host.remove(9);

    assert_eq!(after_crash, "1");
    assert!(original_kept.starts_with("original=0\n"), "{original_kept}");
    assert!(!pruned);
    assert!(restored);
    assert_eq!(host.forwarding(), "0");
}

#[test]
fn forwarding_found_on_is_left_on() {
    let host = FakeHost::new("1");

    host.create(1);
    let restored = host.remove(1);

    assert!(restored);
    assert_eq!(host.forwarding(), "1");
}

#[test]
fn namespaces_of_agents_that_do_not_record_themselves_keep_forwarding_on() {
    let host = FakeHost::new("0");
    fs::write(host.files.netns_dir.join("petrel-99"), "").unwrap();
    fs::write(host.files.netns_dir.join("petrel-test-x"), "").unwrap();
    host.create(1);

    let restored = host.remove(1);
    let kept = host.forwarding();
    fs::remove_file(host.files.netns_dir.join("petrel-99")).unwrap();
    let later = host.files.release_locked(|_| false).unwrap();

    assert!(!restored);
    assert_eq!(kept, "1");
    assert!(later);
    assert_eq!(host.forwarding(), "0");
}

fn recorded_slots() -> Vec<u16> {
    fs::read_to_string(FORWARD_STATE)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("slots="))
        .map(|l| l.split_whitespace().map(|s| s.parse().unwrap()).collect())
        .unwrap_or_default()
}

fn host_forwarding() -> String {
    fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_networks_of_two_pools_hold_forwarding_and_a_crashed_one_is_released() {
    let _serial = serial().await;
    let _guards = (SlotGuard(280..283), SlotGuard(285..288));
    let pool_a = SlotAllocator::new(280..283).unwrap();
    let pool_b = SlotAllocator::new(285..288).unwrap();
    let no_dns = NetworkOptions {
        dns: Some(Vec::new()),
        ..NetworkOptions::default()
    };

    let a = create_network(pool_a.allocate().unwrap(), &no_dns)
        .await
        .unwrap();
    let b = create_network(pool_b.allocate().unwrap(), &no_dns)
        .await
        .unwrap();
    let both = recorded_slots();
    remove_network(a).await.unwrap();
    let b_alone = recorded_slots();
    let forwarding_for_b = host_forwarding();
    // B's agent "crashes": its network is dropped, never removed.
    let crashed_slot = b.slot().index();
    drop(b);
    let after_crash = recorded_slots();
    cleanup_stale(285..288).await.unwrap();
    let after_cleanup = recorded_slots();

    assert!(both.contains(&280) && both.contains(&285), "{both:?}");
    assert!(
        !b_alone.contains(&280) && b_alone.contains(&285),
        "{b_alone:?}"
    );
    assert_eq!(forwarding_for_b, "1");
    assert!(after_crash.contains(&crashed_slot), "{after_crash:?}");
    assert!(!after_cleanup.contains(&crashed_slot), "{after_cleanup:?}");
    assert!(!Path::new(&format!("/run/netns/petrel-{crashed_slot}")).exists());
}
