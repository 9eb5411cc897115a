//! Durability and deadlines with real VMs: snapshot names are reserved
//! atomically, a stuck VMM fails a pause within its deadline and cannot
//! hold up a destroy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::images;
use envd_client::ExecRequest;
use sandbox_core::{CreateSandbox, GuestImages, Manager, ManagerError, SandboxError, State};

/// A guard against a hang, not a timing assertion.
const GUARD: Duration = Duration::from_mins(5);

async fn open(dir: &Path, images: &GuestImages) -> Manager {
    common::open_with_base(dir, images).await
}

fn base() -> CreateSandbox {
    common::from("base")
}

use common::destroy_all;

/// The QEMU of sandbox `id` (its command line names the sandbox's QMP
/// socket).
fn vmm_pid(data_dir: &Path, id: &str) -> u32 {
    let socket = data_dir.join("sandboxes").join(id).join("vmm/qmp.sock");
    *common::processes_naming(&socket)
        .first()
        .expect("the sandbox's QEMU runs")
}

#[tokio::test]
async fn two_concurrent_snapshots_with_one_name_one_wins_and_its_clone_has_the_files() {
    // Arrange
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manager = open(dir.path(), &images).await;
    let source = manager.create(base()).await.unwrap();
    let wrote = manager
        .exec(
            &source.id,
            ExecRequest::shell("echo kept > before-snapshot.txt && sync"),
        )
        .await
        .unwrap();

    // Act
    let (first, second) = tokio::time::timeout(GUARD, async {
        tokio::join!(
            manager.snapshot(&source.id, "snap"),
            manager.snapshot(&source.id, "snap")
        )
    })
    .await
    .unwrap();
    let template_named_like_it = manager.register_template("snap", &images, "test").await;
    let clone = manager
        .create(CreateSandbox {
            template: "snap".into(),
            ..CreateSandbox::default()
        })
        .await
        .unwrap();
    let read = manager
        .exec(&clone.id, ExecRequest::shell("cat before-snapshot.txt"))
        .await
        .unwrap();
    let listed = manager.snapshots().unwrap();
    destroy_all(&manager).await;

    // Assert
    assert_eq!(wrote.exit_code, 0);
    let (won, lost) = match (first, second) {
        (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
        (first, second) => panic!("exactly one must win: {first:?} / {second:?}"),
    };
    assert_eq!(won.name, "snap");
    assert!(matches!(lost, ManagerError::Conflict(_)), "{lost}");
    assert!(
        matches!(template_named_like_it, Err(ManagerError::Conflict(_))),
        "{template_named_like_it:?}"
    );
    assert_eq!(read.stdout, b"kept\n");
    assert_eq!(listed.len(), 1);
}

#[tokio::test]
async fn a_pause_of_a_stopped_qemu_times_out_and_destroy_meanwhile_removes_it() {
    // Arrange
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manager = open(dir.path(), &images).await;
    let sandbox = manager.create(base()).await.unwrap();
    let run_dir = dir.path().join("sandboxes").join(&sandbox.id);
    let pid = vmm_pid(dir.path(), &sandbox.id);
    let raw_pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(raw_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();

    // Act: a pause on its own gives up at its deadline...
    let timed_out = tokio::time::timeout(GUARD, manager.pause(&sandbox.id))
        .await
        .unwrap();
    let after_timeout = manager.get(&sandbox.id).unwrap();
    // ...and another, stuck in the background, does not hold up a destroy.
    let background = {
        let manager = manager.clone();
        let id = sandbox.id.clone();
        tokio::spawn(async move { manager.pause(&id).await })
    };
    tokio::time::timeout(GUARD, async {
        while manager.get(&sandbox.id).unwrap().state != State::Pausing {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let destroyed = tokio::time::timeout(GUARD, manager.destroy(&sandbox.id))
        .await
        .unwrap();
    let stuck = tokio::time::timeout(GUARD, background)
        .await
        .unwrap()
        .unwrap();

    // Assert
    let err = timed_out.unwrap_err();
    let is_deadline = matches!(
        &err,
        ManagerError::Sandbox(boxed) if matches!(
            boxed.as_ref(),
            SandboxError::Qemu { source: qemu_vmm::QemuError::QmpDeadline { .. }, .. }
        )
    );
    assert!(is_deadline, "{err}");
    assert!(err.to_string().contains(&sandbox.id), "{err}");
    assert_eq!(after_timeout.state, State::Running);
    assert!(destroyed.is_ok(), "{destroyed:?}");
    // Ended by the destroy (its QEMU killed), not by its own deadline.
    let stuck = stuck.unwrap_err();
    let stuck_deadline = matches!(
        &stuck,
        ManagerError::Sandbox(boxed) if matches!(
            boxed.as_ref(),
            SandboxError::Qemu { source: qemu_vmm::QemuError::QmpDeadline { .. }, .. }
        )
    );
    assert!(!stuck_deadline, "{stuck}");
    assert!(!common::alive(pid));
    assert!(!run_dir.exists());
    assert!(matches!(
        manager.get(&sandbox.id),
        Err(ManagerError::SandboxNotFound(_))
    ));
}
