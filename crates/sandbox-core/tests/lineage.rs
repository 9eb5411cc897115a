//! Snapshot lineage with real VMs: what a snapshot or sandbox stands on
//! (a template's base image, its warm snapshot, another snapshot) is kept
//! while it does, whatever re-registrations and deletions come between,
//! and goes once its last dependent is gone.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::images;
use envd_client::ExecRequest;
use sandbox_core::{GuestImages, ManagerError};

use common::{destroy_all, from, open_manager as open, rebuilt};

/// The files in the template's directory whose names start with `prefix`.
fn template_files(data: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.join("templates/base"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn a_snapshot_on_the_old_base_and_warm_snapshot_starts_after_the_image_is_rebuilt() {
    // Arrange: a warm template; a sandbox started from its warm snapshot
    // writes a file and is snapshotted, then destroyed; another one writes
    // a file and is paused; the agent stops.
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = open(&data).await;
    first
        .register_template("base", &images, "test")
        .await
        .unwrap();
    let warm = first
        .warm_template("base")
        .await
        .unwrap()
        .warm_snapshot
        .unwrap();
    let old_base = first.template("base").unwrap().rootfs;
    let source = first.create(from("base")).await.unwrap();
    first
        .exec(
            &source.id,
            ExecRequest::shell("echo lineage > ~/f.txt && sync"),
        )
        .await
        .unwrap();
    first.snapshot(&source.id, "keep").await.unwrap();
    first.destroy(&source.id).await.unwrap();
    let paused = first.create(from("base")).await.unwrap();
    first
        .exec(
            &paused.id,
            ExecRequest::shell("echo paused > ~/p.txt && sync"),
        )
        .await
        .unwrap();
    first.pause(&paused.id).await.unwrap();
    first.shutdown().await.unwrap();
    drop(first);

    // Act: the agent restarts with the image at another path (a rebuild),
    // then starts the snapshot and resumes the paused sandbox; then the
    // last dependents of the old base and warm snapshot go.
    let second = open(&data).await;
    second
        .register_template("base", &rebuilt(&images, dir.path()), "test")
        .await
        .unwrap();
    let kept_base = old_base.exists();
    let kept_warm = warm.exists();
    let started = second.create(from("keep")).await;
    let read = match &started {
        Ok(clone) => Some(
            second
                .exec(&clone.id, ExecRequest::shell("cat ~/f.txt"))
                .await
                .unwrap(),
        ),
        Err(_) => None,
    };
    second.resume(&paused.id, None).await.unwrap();
    let resumed_read = second
        .exec(&paused.id, ExecRequest::shell("cat ~/p.txt"))
        .await
        .unwrap();
    destroy_all(&second).await;
    let kept_for_snapshot = old_base.exists() && warm.exists();
    second.delete_snapshot("keep").unwrap();
    let bases_after = template_files(&data, "rootfs-");
    let warm_after = template_files(&data, "warm-");

    // Assert
    assert!(kept_base, "the old base a snapshot stands on was removed");
    assert!(
        kept_warm,
        "the warm snapshot a snapshot stands on was removed"
    );
    let started = started.unwrap();
    assert_eq!(started.template, "keep");
    assert_eq!(read.unwrap().stdout, b"lineage\n");
    assert_eq!(resumed_read.stdout, b"paused\n");
    assert!(
        kept_for_snapshot,
        "removed while the snapshot stood on them"
    );
    assert!(
        !old_base.exists(),
        "the old base outlived its last dependent"
    );
    assert!(
        !warm.exists(),
        "the old warm snapshot outlived its last dependent"
    );
    assert_eq!(
        bases_after,
        [second.template("base").unwrap().rootfs],
        "only the current base is left"
    );
    assert!(warm_after.is_empty(), "{warm_after:?}");
}

#[tokio::test]
async fn deleting_a_snapshot_that_another_chains_through_is_refused_naming_it() {
    // Arrange: s1 of a sandbox; s2 of a sandbox started from s1 (its disk
    // backs onto s1's); both sandboxes gone.
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manager = open(dir.path()).await;
    manager
        .register_template("base", &images, "test")
        .await
        .unwrap();
    let first = manager.create(from("base")).await.unwrap();
    manager
        .exec(&first.id, ExecRequest::shell("echo one > ~/f.txt && sync"))
        .await
        .unwrap();
    manager.snapshot(&first.id, "s1").await.unwrap();
    let second = manager.create(from("s1")).await.unwrap();
    manager
        .exec(
            &second.id,
            ExecRequest::shell("echo two >> ~/f.txt && sync"),
        )
        .await
        .unwrap();
    manager.snapshot(&second.id, "s2").await.unwrap();
    destroy_all(&manager).await;

    // Act: delete s1 while s2 stands on it, and their template; start s2;
    // a paused sandbox on s2 holds s2; then s2 and s1 in that order.
    let refused = manager.delete_snapshot("s1");
    let template_refused = manager.delete_template("base");
    let clone = manager.create(from("s2")).await.unwrap();
    let read = manager
        .exec(&clone.id, ExecRequest::shell("cat ~/f.txt"))
        .await
        .unwrap();
    manager.pause(&clone.id).await.unwrap();
    let refused_paused = manager.delete_snapshot("s2");
    destroy_all(&manager).await;
    let s2_deleted = manager.delete_snapshot("s2");
    let s1_deleted = manager.delete_snapshot("s1");
    let listed = manager.snapshots().unwrap();

    // Assert
    assert!(
        matches!(&refused, Err(ManagerError::Conflict(m)) if m.contains("s2")),
        "{refused:?}"
    );
    assert!(
        matches!(&template_refused, Err(ManagerError::Conflict(m)) if m.contains("snapshot s1") && m.contains("snapshot s2")),
        "{template_refused:?}"
    );
    assert_eq!(read.stdout, b"one\ntwo\n");
    assert!(
        matches!(&refused_paused, Err(ManagerError::Conflict(m)) if m.contains(&clone.id)),
        "{refused_paused:?}"
    );
    s2_deleted.unwrap();
    s1_deleted.unwrap();
    assert!(listed.is_empty(), "{listed:?}");
    assert!(!dir.path().join("snapshots/s1").exists());
    assert!(!dir.path().join("snapshots/s2").exists());
}

#[tokio::test]
async fn a_snapshot_from_before_lineage_keeps_its_base_and_gets_its_lineage_recorded() {
    // Arrange: a template on image A; a snapshot row as an earlier version
    // wrote it (no lineage), whose disk backs onto A's base (no VM needed:
    // only the files and the row).
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"kernel").unwrap();
    let image = |name: &str, byte: u8| {
        let rootfs = dir.path().join(name);
        std::fs::write(&rootfs, vec![byte; 65536]).unwrap();
        GuestImages {
            kernel: kernel.clone(),
            rootfs,
        }
    };
    let manager = open(&data).await;
    let old_base = manager
        .register_template("base", &image("a.ext4", 1), "test")
        .await
        .unwrap()
        .rootfs
        .canonicalize()
        .unwrap();
    let snapshot_dir = data.join("snapshots/legacy");
    std::fs::create_dir_all(&snapshot_dir).unwrap();
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&old_base)
        .arg(snapshot_dir.join("disk.qcow2"))
        .status()
        .unwrap();
    assert!(made.success());
    let mut row = serde_json::to_value(sandbox_core::SnapshotInfo {
        name: "legacy".into(),
        sandbox_id: "0123456789abcdef".into(),
        template: "base".into(),
        created_at: std::time::SystemTime::now(),
        size_bytes: 0,
        stands_on: None,
    })
    .unwrap();
    row.as_object_mut().unwrap().remove("stands_on");
    rusqlite::Connection::open(data.join("petrel.db"))
        .unwrap()
        .execute(
            "INSERT INTO snapshots (key, value) VALUES ('legacy', ?1)",
            [row.to_string()],
        )
        .unwrap();

    // Act: the image is rebuilt (B) and registered; then the snapshot goes.
    manager
        .register_template("base", &image("b.ext4", 2), "test")
        .await
        .unwrap();
    let kept = old_base.exists();
    let recorded = manager.snapshots().unwrap()[0].stands_on.clone();
    manager.delete_snapshot("legacy").unwrap();

    // Assert
    assert!(kept, "the base a legacy snapshot stands on was removed");
    assert_eq!(
        recorded,
        Some(sandbox_core::StandsOn::Base {
            file: old_base.clone()
        })
    );
    assert!(
        !old_base.exists(),
        "the old base outlived its last dependent"
    );
    assert_eq!(template_files(&data, "rootfs-").len(), 1);
}
