//! Warm pools with real VMs (see tests/vm.rs for how images are found):
//! creates served from a template's pool, refills, capacity, shutdown.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{destroy_all, from, images, processes_naming};
use envd_client::ExecRequest;
use sandbox_core::{CreateSandbox, GuestImages, Manager, ManagerConfig, ManagerError, PoolStats};

/// A manager on `dir` with a warm `base` template pooling `pool_size`
/// sandboxes, at most `max_running` VMs, and its pool filler running until
/// the returned sender is dropped or sent to.
async fn pooled_manager(
    dir: &std::path::Path,
    images: &GuestImages,
    pool_size: usize,
    max_running: usize,
) -> (
    Manager,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let config = ManagerConfig {
        pool_size,
        max_running,
        ..ManagerConfig::new(dir)
    };
    let manager = Manager::open(config, Arc::new(common::backend()))
        .await
        .unwrap();
    manager
        .register_template("base", images, "test")
        .await
        .unwrap();
    manager.warm_template("base").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let filler = tokio::spawn({
        let manager = manager.clone();
        async move {
            manager
                .run_pool_filler(async move {
                    let _ = stopped.await;
                })
                .await;
        }
    });
    (manager, stop, filler)
}

fn base_pool(manager: &Manager) -> PoolStats {
    manager
        .pool_stats()
        .into_iter()
        .find(|p| p.template == "base")
        .unwrap()
}

/// Waits (at most 3 minutes: restores under nested TCG are slow) until
/// the base pool has `ready` sandboxes.
async fn wait_ready(manager: &Manager, ready: usize) {
    let start = Instant::now();
    while base_pool(manager).ready != ready {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the pool never had {ready} ready: {:?}",
            base_pool(manager)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn pooled_creates_get_their_own_identity_and_env_and_the_pool_refills() {
    // Arrange: a pool of one, filled.
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (manager, stop, filler) = pooled_manager(dir.path(), &images, 1, 8).await;
    wait_ready(&manager, 1).await;

    // Act: two creates naming env vars and metadata, the second after the
    // pool refilled.
    let with_env = |value: &str| CreateSandbox {
        env_vars: BTreeMap::from([("GREETING".to_string(), value.to_string())]),
        metadata: BTreeMap::from([("who".to_string(), value.to_string())]),
        ..from("base")
    };
    let a = manager.create(with_env("first")).await.unwrap();
    wait_ready(&manager, 1).await;
    let b = manager.create(with_env("second")).await.unwrap();
    let seen = |id: String| {
        let manager = &manager;
        async move {
            let out = manager
                .exec(
                    &id,
                    ExecRequest::shell("echo $GREETING; hostname; cat /etc/hostname"),
                )
                .await
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let a_seen = seen(a.id.clone()).await;
    let b_seen = seen(b.id.clone()).await;
    let stats = base_pool(&manager);
    wait_ready(&manager, 1).await;
    destroy_all(&manager).await;
    stop.send(()).unwrap();
    filler.await.unwrap();
    manager.shutdown().await.unwrap();
    let left = processes_naming(&dir.path().join("sandboxes"));

    // Assert: both came from the pool, each with its own name and env; the
    // pool refilled; a shutdown leaves no pooled VMM behind.
    assert!(a.timings_ms.contains_key("pool"), "{:?}", a.timings_ms);
    assert!(b.timings_ms.contains_key("pool"), "{:?}", b.timings_ms);
    assert_eq!(a_seen, format!("first\n{0}\n{0}\n", a.id));
    assert_eq!(b_seen, format!("second\n{0}\n{0}\n", b.id));
    assert_eq!(a.metadata["who"], "first");
    assert_eq!((stats.size, stats.hits, stats.misses), (1, 2, 0));
    assert!(left.is_empty(), "VMMs left after shutdown: {left:?}");
}

#[tokio::test]
async fn pooled_sandboxes_count_against_capacity_and_make_room_for_creates() {
    // Arrange: at most 2 VMs, a pool of one (the filler keeps a slot free).
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (manager, stop, filler) = pooled_manager(dir.path(), &images, 1, 2).await;
    wait_ready(&manager, 1).await;
    let other_shape = || CreateSandbox {
        memory_mib: Some(256),
        ..from("base")
    };

    // Act: creates the pool cannot serve (another shape: cold boots).
    let a = manager.create(other_shape()).await.unwrap();
    let pool_beside_a = base_pool(&manager).ready;
    let b = manager.create(other_shape()).await;
    let pool_beside_b = base_pool(&manager).ready;
    let c = manager.create(other_shape()).await.unwrap_err();
    stop.send(()).unwrap();
    filler.await.unwrap();
    destroy_all(&manager).await;
    manager.shutdown().await.unwrap();

    // Assert: the pooled VM counted, then made room for b; c is refused.
    assert_eq!(pool_beside_a, 1);
    let b = b.unwrap();
    assert_eq!(pool_beside_b, 0);
    assert!(matches!(c, ManagerError::Capacity { .. }), "{c}");
    assert_ne!(a.id, b.id);
}
