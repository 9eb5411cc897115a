//! The lifecycle manager with real VMs (see tests/vm.rs for how images are
//! found). Each test has its own data directory and manager.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::images;
use envd_client::ExecRequest;
use sandbox_core::network::EgressRules;
use sandbox_core::{
    CreateSandbox, GuestImages, ListFilter, Manager, ManagerConfig, ManagerError, QemuBackend,
    State,
};

fn backend() -> Arc<QemuBackend> {
    Arc::new(common::backend())
}

async fn open(dir: &std::path::Path, images: &GuestImages) -> Manager {
    common::open_with_base(dir, images).await
}

fn base() -> CreateSandbox {
    common::from("base")
}

use common::destroy_all;

#[tokio::test]
async fn lifecycle_moves_through_states_and_rejects_invalid_transitions() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manager = open(dir.path(), &images).await;
    let request = CreateSandbox {
        metadata: BTreeMap::from([("owner".into(), "test".into())]),
        env_vars: BTreeMap::from([("GREETING".into(), "hi".into())]),
        ..base()
    };

    let created = manager.create(request).await.unwrap();
    let out = manager
        .exec(&created.id, ExecRequest::shell("echo $GREETING"))
        .await
        .unwrap();
    let paused = manager.pause(&created.id).await.unwrap();
    let double_pause = manager.pause(&created.id).await.unwrap_err();
    let exec_paused = manager
        .exec(&created.id, ExecRequest::shell("true"))
        .await
        .unwrap_err();
    let listed_paused = manager.list(&ListFilter {
        states: vec![State::Paused],
        metadata: BTreeMap::from([("owner".into(), "test".into())]),
        template: None,
    });
    let resumed = manager.resume(&created.id, None).await.unwrap();
    manager.destroy(&created.id).await.unwrap();
    let gone = manager.get(&created.id).unwrap_err();

    assert_eq!(created.state, State::Running);
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(paused.state, State::Paused);
    assert!(matches!(
        double_pause,
        ManagerError::InvalidState {
            state: State::Paused,
            ..
        }
    ));
    assert!(
        matches!(exec_paused, ManagerError::InvalidState { .. }),
        "{exec_paused}"
    );
    assert_eq!(listed_paused.len(), 1);
    assert_eq!(resumed.state, State::Running);
    assert!(matches!(gone, ManagerError::SandboxNotFound(_)));
    assert!(!dir.path().join("sandboxes").join(&created.id).exists());
}

#[tokio::test]
async fn expired_sandboxes_are_killed_or_paused_by_the_reaper() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manager = open(dir.path(), &images).await;
    let short = Some(Duration::from_millis(100));
    let killed = manager
        .create(CreateSandbox {
            timeout: short,
            ..base()
        })
        .await
        .unwrap();
    let paused = manager
        .create(CreateSandbox {
            timeout: short,
            auto_pause: true,
            ..base()
        })
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_millis(200)).await;
    manager.reap().await;

    let killed_state = manager.get(&killed.id).map(|i| i.state);
    let paused_state = manager.get(&paused.id).unwrap().state;
    destroy_all(&manager).await;
    assert!(matches!(
        killed_state,
        Err(ManagerError::SandboxNotFound(_))
    ));
    assert_eq!(paused_state, State::Paused);
}

#[tokio::test]
async fn set_timeout_resets_and_extend_never_shortens() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manager = open(dir.path(), &images).await;
    let created = manager.create(base()).await.unwrap();

    let extended = manager
        .extend_timeout(&created.id, Duration::from_secs(1))
        .unwrap();
    let shortened = manager
        .set_timeout(&created.id, Duration::from_secs(1))
        .unwrap();
    destroy_all(&manager).await;

    assert_eq!(extended.end_at, created.end_at);
    assert!(shortened.end_at < created.end_at);
}

#[tokio::test]
async fn restart_readopts_running_and_keeps_paused_resumable() {
    // The agent binary's kill -9 test is in bins/host-agent; here the first
    // manager lets go of its VMs (QMP admits one client at a time) without
    // stopping them, then a second manager opens the same store.
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path(), &images).await;
    let running = first.create(base()).await.unwrap();
    let paused = first.create(base()).await.unwrap();
    first
        .exec(&running.id, ExecRequest::shell("echo alive > /tmp/mark"))
        .await
        .unwrap();
    first
        .exec(&paused.id, ExecRequest::shell("echo kept > /tmp/mark"))
        .await
        .unwrap();
    first.pause(&paused.id).await.unwrap();
    first.shutdown().await.unwrap();

    let second = open(dir.path(), &images).await;
    let running_after = second.get(&running.id).unwrap();
    let still_alive = second
        .exec(&running.id, ExecRequest::shell("cat /tmp/mark"))
        .await
        .unwrap();
    let resumed = second.resume(&paused.id, None).await.unwrap();
    let kept = second
        .exec(&paused.id, ExecRequest::shell("cat /tmp/mark"))
        .await
        .unwrap();
    destroy_all(&second).await;

    assert_eq!(running_after.state, State::Running);
    assert_eq!(still_alive.stdout, b"alive\n");
    assert_eq!(resumed.state, State::Running);
    assert_eq!(kept.stdout, b"kept\n");
}

#[tokio::test]
async fn restart_marks_a_sandbox_whose_vm_died_stopped_and_cleans_it() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path(), &images).await;
    let created = first.create(base()).await.unwrap();
    let pid = first
        .exec(&created.id, ExecRequest::shell("true"))
        .await
        .map(|_| {
            std::fs::read_to_string(
                dir.path()
                    .join("sandboxes")
                    .join(&created.id)
                    .join("qemu.json"),
            )
        })
        .unwrap();
    assert!(pid.is_ok());
    // The VM dies while the agent is down.
    first.shutdown().await.unwrap();
    let qemu_pids = String::from_utf8(
        std::process::Command::new("pgrep")
            .args([
                "-f",
                &dir.path()
                    .join("sandboxes")
                    .join(&created.id)
                    .display()
                    .to_string(),
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for pid in qemu_pids.split_whitespace() {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid.parse().unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let second = open(dir.path(), &images).await;
    let after = second.get(&created.id).unwrap();
    destroy_all(&second).await;

    assert_eq!(after.state, State::Stopped);
    assert!(after.error.is_some());
    assert!(!dir.path().join("sandboxes").join(&created.id).exists());
}

#[tokio::test]
async fn a_sandbox_whose_vmm_exited_is_stopped_and_cleaned_without_a_restart() {
    // Arrange: a running sandbox.
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manager = open(dir.path(), &images).await;
    let created = manager.create(base()).await.unwrap();
    let run_dir = dir.path().join("sandboxes").join(&created.id);

    // Act: its VMM dies (as on an OOM kill), then the reaper passes.
    let vmms = common::processes_naming(&run_dir);
    for pid in &vmms {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(*pid).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    // A kill takes effect asynchronously (a dying process loses its command
    // line before it stops running): wait for the pids, at most 10 s.
    for _ in 0..500 {
        if !vmms.iter().any(|pid| common::alive(*pid)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    manager.reap().await;
    let after = manager.get(&created.id).unwrap();
    let exec = manager.exec(&created.id, ExecRequest::shell("true")).await;
    let replacement = manager.create(base()).await;
    destroy_all(&manager).await;

    // Assert: stopped with the reason, its files and VMM gone, and a new
    // sandbox starts.
    assert_eq!(after.state, State::Stopped);
    let reason = after.error.unwrap_or_default();
    assert!(reason.contains("exited by itself"), "{reason}");
    assert!(exec.is_err());
    assert!(!run_dir.exists());
    assert!(common::processes_naming(&run_dir).is_empty());
    assert!(replacement.is_ok(), "{replacement:?}");
}

#[tokio::test]
async fn snapshot_serves_as_template_and_cannot_be_deleted_while_used() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manager = open(dir.path(), &images).await;
    let source = manager.create(base()).await.unwrap();
    manager
        .exec(&source.id, ExecRequest::shell("echo snap > ~/s.txt"))
        .await
        .unwrap();

    let snapshot = manager.snapshot(&source.id, "my-snap").await.unwrap();
    let clone = manager
        .create(CreateSandbox {
            template: "my-snap".into(),
            ..base()
        })
        .await
        .unwrap();
    let seen = manager
        .exec(&clone.id, ExecRequest::shell("cat ~/s.txt"))
        .await
        .unwrap();
    let refused = manager.delete_snapshot("my-snap").unwrap_err();
    manager.destroy(&clone.id).await.unwrap();
    manager.delete_snapshot("my-snap").unwrap();
    let listed = manager.snapshots().unwrap();
    destroy_all(&manager).await;

    assert_eq!(snapshot.template, "base");
    assert!(snapshot.size_bytes > 0);
    assert_eq!(seen.stdout, b"snap\n");
    assert!(matches!(refused, ManagerError::Conflict(_)), "{refused}");
    assert!(listed.is_empty());
    assert!(!dir.path().join("snapshots/my-snap").exists());
}

#[tokio::test]
async fn bad_names_are_rejected_before_touching_disk() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manager = open(dir.path(), &images).await;
    let before: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();

    let create = manager
        .create(CreateSandbox {
            template: "../x".into(),
            ..base()
        })
        .await
        .unwrap_err();
    let delete = manager.delete_snapshot("a/b").unwrap_err();
    let template = manager.template("..").unwrap_err();
    let after: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();

    assert!(matches!(create, ManagerError::InvalidName(_)));
    assert!(matches!(delete, ManagerError::InvalidName(_)));
    assert!(matches!(template, ManagerError::InvalidName(_)));
    assert_eq!(before, after);
}

#[tokio::test]
async fn capacity_limit_refuses_more_running_sandboxes() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = ManagerConfig {
        max_running: 1,
        ..ManagerConfig::new(dir.path())
    };
    let manager = Manager::open(config, backend()).await.unwrap();
    manager
        .register_template("base", &images, "test")
        .await
        .unwrap();
    manager.create(base()).await.unwrap();

    let err = manager.create(base()).await.unwrap_err();
    destroy_all(&manager).await;

    assert!(
        matches!(
            err,
            ManagerError::Capacity {
                running: 1,
                limit: 1
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn warm_up_and_fork_at_capacity_are_refused_before_starting_anything() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = ManagerConfig {
        max_running: 1,
        ..ManagerConfig::new(dir.path())
    };
    let manager = Manager::open(config, backend()).await.unwrap();
    manager
        .register_template("base", &images, "test")
        .await
        .unwrap();
    let running = manager.create(base()).await.unwrap();

    let warm = manager.warm_template("base").await.unwrap_err();
    let fork = manager.fork(&running.id, 1, None).await.unwrap_err();
    let snapshots = manager.snapshots().unwrap();
    destroy_all(&manager).await;

    assert!(matches!(warm, ManagerError::Capacity { .. }), "{warm}");
    assert!(matches!(fork, ManagerError::Capacity { .. }), "{fork}");
    assert!(snapshots.is_empty(), "{snapshots:?}");
}

#[tokio::test]
async fn warm_template_creates_from_its_snapshot_with_own_identity() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manager = open(dir.path(), &images).await;

    let warmed = manager.warm_template("base").await.unwrap();
    let a = manager.create(base()).await.unwrap();
    let b = manager.create(base()).await.unwrap();
    let a_name = manager
        .exec(&a.id, ExecRequest::shell("hostname"))
        .await
        .unwrap();
    let b_name = manager
        .exec(&b.id, ExecRequest::shell("hostname"))
        .await
        .unwrap();
    let reregistered = manager
        .register_template("base", &images, "test")
        .await
        .unwrap();
    destroy_all(&manager).await;

    assert!(warmed.warm_snapshot.is_some());
    assert_eq!(String::from_utf8_lossy(&a_name.stdout).trim(), a.id);
    assert_eq!(String::from_utf8_lossy(&b_name.stdout).trim(), b.id);
    assert_eq!(a.template, "base");
    assert_eq!(reregistered.warm_snapshot, warmed.warm_snapshot);
}

#[tokio::test]
async fn starts_keep_the_shape_of_what_they_restore_and_other_shapes_boot_cold() {
    // Arrange: a warm template (default shape: 1 vCPU, 512 MiB).
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manager = open(dir.path(), &images).await;
    manager.warm_template("base").await.unwrap();
    let mem_total = |id: String| {
        let manager = &manager;
        async move {
            let out = manager
                .exec(&id, ExecRequest::shell("grep MemTotal /proc/meminfo"))
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.split_whitespace()
                .nth(1)
                .and_then(|kib| kib.parse::<u64>().ok())
                .unwrap()
                / 1024
        }
    };

    // Act: another shape than the warm snapshot's; a snapshot of it; starts
    // from that snapshot with its shape left unset, and with another.
    let small = manager
        .create(CreateSandbox {
            memory_mib: Some(256),
            ..base()
        })
        .await
        .unwrap();
    let small_mem = mem_total(small.id.clone()).await;
    manager.snapshot(&small.id, "small").await.unwrap();
    let from_small = manager
        .create(CreateSandbox {
            template: "small".into(),
            ..base()
        })
        .await
        .unwrap();
    let from_small_mem = mem_total(from_small.id.clone()).await;
    let reshaped = manager
        .create(CreateSandbox {
            template: "small".into(),
            memory_mib: Some(512),
            ..base()
        })
        .await
        .unwrap_err();
    let default = manager.create(base()).await.unwrap();
    destroy_all(&manager).await;
    manager.delete_snapshot("small").unwrap();

    // Assert
    assert_eq!(small.memory_mib, 256);
    assert!(
        (200..=256).contains(&small_mem),
        "guest sees {small_mem} MiB"
    );
    assert_eq!(from_small.memory_mib, 256);
    assert!(
        (200..=256).contains(&from_small_mem),
        "guest sees {from_small_mem} MiB"
    );
    assert!(
        matches!(&reshaped, ManagerError::InvalidRequest(m) if m.contains("1 vCPU and 256 MiB")),
        "{reshaped}"
    );
    assert_eq!(default.memory_mib, 512);
}

#[tokio::test]
async fn fork_makes_independent_copies_of_a_running_sandbox() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manager = open(dir.path(), &images).await;
    let source = manager.create(base()).await.unwrap();
    manager
        .exec(&source.id, ExecRequest::shell("echo original > ~/f.txt"))
        .await
        .unwrap();

    let forks = manager.fork(&source.id, 2, None).await.unwrap();
    let ids: Vec<String> = forks.into_iter().map(|f| f.unwrap().id).collect();
    manager
        .exec(&ids[0], ExecRequest::shell("echo changed > ~/f.txt"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    for id in [&source.id, &ids[0], &ids[1]] {
        let out = manager
            .exec(id, ExecRequest::shell("cat ~/f.txt"))
            .await
            .unwrap();
        seen.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let too_many = manager.fork(&source.id, 21, None).await.unwrap_err();
    destroy_all(&manager).await;

    assert_eq!(seen, ["original\n", "changed\n", "original\n"]);
    assert!(matches!(too_many, ManagerError::InvalidRequest(_)));
}

/// Image files in `dir` for tests without a VM (registering a template
/// only needs them to exist): a 4 KiB rootfs filled with `byte`.
fn fake_images(dir: &std::path::Path, byte: u8) -> GuestImages {
    let images = GuestImages {
        kernel: dir.join("vmlinux"),
        rootfs: dir.join("rootfs.ext4"),
    };
    std::fs::write(&images.kernel, b"kernel").unwrap();
    std::fs::write(&images.rootfs, vec![byte; 4096]).unwrap();
    images
}

#[tokio::test]
async fn templates_live_on_disk_and_bad_names_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let images = fake_images(dir.path(), 0);
    let data = dir.path().join("data");
    let manager = Manager::open(ManagerConfig::new(&data), backend())
        .await
        .unwrap();
    let templates = data.join("templates");
    let tpl_dir = templates.join("my-tpl");

    let info = manager
        .register_template("my-tpl", &images, "test")
        .await
        .unwrap();
    let again = manager
        .register_template("my-tpl", &images, "test")
        .await
        .unwrap();
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tpl_dir.join("template.json")).unwrap()).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&tpl_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let base_content = std::fs::read(&info.rootfs).unwrap();
    let listed = manager.templates().unwrap();
    let before_bad: Vec<_> = std::fs::read_dir(&templates)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let bad = manager
        .register_template("../evil", &images, "test")
        .await
        .unwrap_err();
    let bad_delete = manager.delete_template("a/b").unwrap_err();
    let after_bad: Vec<_> = std::fs::read_dir(&templates)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    manager.delete_template("my-tpl").unwrap();

    assert_eq!(on_disk["name"], "my-tpl");
    assert_eq!(on_disk["source"], "test");
    assert_eq!(on_disk["size_bytes"], 4096);
    assert_eq!(
        on_disk["kernel"].as_str(),
        images.kernel.to_str(),
        "{on_disk}"
    );
    assert_eq!(info.rootfs.parent(), Some(tpl_dir.as_path()), "{info:?}");
    assert_eq!(on_disk["rootfs"].as_str(), info.rootfs.to_str());
    assert_eq!(base_content, vec![0u8; 4096]);
    assert_eq!(again.rootfs, info.rootfs, "the same image is imported once");
    assert!(on_disk["created_at"].is_object(), "{on_disk}");
    assert_eq!(files.len(), 2, "no temporary file left behind: {files:?}");
    let base = std::path::Path::new(&files[0]);
    assert!(files[0].starts_with("rootfs-"), "{files:?}");
    assert_eq!(base.extension().and_then(|e| e.to_str()), Some("ext4"));
    assert_eq!(files[1], "template.json");
    assert_eq!(listed, [again]);
    assert!(matches!(bad, ManagerError::InvalidName(_)), "{bad}");
    assert!(
        matches!(bad_delete, ManagerError::InvalidName(_)),
        "{bad_delete}"
    );
    assert_eq!(before_bad, after_bad);
    assert!(!dir.path().join("evil").exists());
    assert!(!tpl_dir.exists());
    assert!(manager.templates().unwrap().is_empty());
}

#[tokio::test]
async fn a_new_image_gets_a_new_base_file_and_the_unused_old_one_goes() {
    let dir = tempfile::tempdir().unwrap();
    let images = fake_images(dir.path(), 1);
    let manager = Manager::open(ManagerConfig::new(dir.path().join("data")), backend())
        .await
        .unwrap();
    let old = manager
        .register_template("tpl", &images, "test")
        .await
        .unwrap();
    let old_content = std::fs::read(&old.rootfs).unwrap();
    // A rebuilt image: a new file in the source's place.
    std::fs::remove_file(&images.rootfs).unwrap();
    std::fs::write(&images.rootfs, vec![2u8; 4096]).unwrap();

    let new = manager
        .register_template("tpl", &images, "test")
        .await
        .unwrap();

    assert_ne!(new.rootfs, old.rootfs);
    assert_eq!(old_content, vec![1u8; 4096]);
    assert!(!old.rootfs.exists(), "nothing used the old base");
    assert_eq!(std::fs::read(&new.rootfs).unwrap(), vec![2u8; 4096]);
    assert_eq!(manager.template("tpl").unwrap().rootfs, new.rootfs);
}

#[tokio::test]
async fn an_old_base_stays_while_a_sandbox_or_snapshot_uses_it() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manager = open(&dir.path().join("data"), &images).await;
    let old_base = manager.template("base").unwrap().rootfs;
    let sandbox = manager.create(base()).await.unwrap();
    manager
        .exec(
            &sandbox.id,
            ExecRequest::shell("echo kept > ~/f.txt && sync"),
        )
        .await
        .unwrap();
    manager.snapshot(&sandbox.id, "keep-me").await.unwrap();
    let rebuilt = common::rebuilt(&images, dir.path());

    manager
        .register_template("base", &rebuilt, "test")
        .await
        .unwrap();
    let kept_for_both = old_base.exists();
    manager.pause(&sandbox.id).await.unwrap();
    manager.resume(&sandbox.id, None).await.unwrap();
    let after_resume = manager
        .exec(&sandbox.id, ExecRequest::shell("cat ~/f.txt"))
        .await
        .unwrap();
    manager.destroy(&sandbox.id).await.unwrap();
    manager
        .register_template("base", &rebuilt, "test")
        .await
        .unwrap();
    let kept_for_snapshot = old_base.exists();
    manager.delete_snapshot("keep-me").unwrap();
    manager
        .register_template("base", &rebuilt, "test")
        .await
        .unwrap();
    let kept_for_nothing = old_base.exists();
    destroy_all(&manager).await;

    assert!(kept_for_both);
    assert_eq!(String::from_utf8_lossy(&after_resume.stdout), "kept\n");
    assert!(kept_for_snapshot);
    assert!(!kept_for_nothing);
}

#[tokio::test]
async fn user_mode_refuses_internet_and_egress_rules_and_defaults_to_isolated() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manager = open(dir.path(), &images).await;

    let err = manager
        .create(CreateSandbox {
            internet: Some(true),
            ..base()
        })
        .await
        .unwrap_err();
    let rules = EgressRules {
        deny: vec!["0.0.0.0/0".parse().unwrap()],
        ..EgressRules::default()
    };
    let create_with_rules = manager
        .create(CreateSandbox {
            egress: rules.clone(),
            ..base()
        })
        .await
        .unwrap_err();
    let listed = manager.list(&ListFilter::default()).len();
    let unset = manager.create(base()).await.unwrap();
    let set_rules = manager.set_egress(&unset.id, rules).await.unwrap_err();
    let cleared = manager.set_egress(&unset.id, EgressRules::default()).await;
    destroy_all(&manager).await;

    assert!(matches!(err, ManagerError::InvalidRequest(_)), "{err}");
    for refused in [&create_with_rules, &set_rules] {
        assert!(
            matches!(refused, ManagerError::InvalidRequest(_)),
            "{refused}"
        );
        assert!(refused.to_string().contains("namespaces"), "{refused}");
    }
    assert!(cleared.is_ok(), "{cleared:?}");
    assert!(err.to_string().contains("10.0.2.2"), "{err}");
    assert_eq!(listed, 0);
    assert!(!unset.internet);
}

#[tokio::test]
async fn a_destroy_that_waited_for_another_says_not_found_not_killed() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manager = open(dir.path(), &images).await;
    let id = manager.create(base()).await.unwrap().id;

    // The second caller (a user's kill while expiry destroys the sandbox)
    // comes while the first destroy is under way.
    let (first, second) = tokio::join!(manager.destroy(&id), async {
        while manager
            .get(&id)
            .is_ok_and(|info| info.state != State::Stopping)
        {
            tokio::task::yield_now().await;
        }
        manager.destroy(&id).await
    });

    assert!(first.is_ok(), "{first:?}");
    assert!(
        matches!(second, Err(ManagerError::SandboxNotFound(ref missing)) if *missing == id),
        "{second:?}"
    );
    assert!(manager.get(&id).is_err());
}
