//! A real child confined by `Prepared::enter` (needs root; skipped with a
//! reason otherwise): what it sees, who it is, which limits it has.

#![allow(clippy::unwrap_used)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use jail::{Bind, Jail, Rlimits};

fn jail(root: PathBuf, extra: Vec<Bind>) -> Jail {
    let mut binds = Jail::system_binds();
    binds.extend(extra);
    Jail {
        root,
        uid: 3_999_999_000,
        gid: 3_999_999_000,
        groups: Vec::new(),
        binds,
        symlinks: Jail::system_symlinks(),
        rlimits: Rlimits {
            open_files: 64,
            processes: 32,
            file_size: 4096,
        },
        cgroup_procs: Vec::new(),
        workdir: None,
    }
}

fn run_in(jail: &Jail, program: &str, args: &[&str]) -> Output {
    let prepared = jail.prepare().unwrap();
    let mut command = Command::new(program);
    command.args(args);
    // SAFETY: `enter` only makes system calls on data prepared above.
    unsafe { command.pre_exec(move || prepared.enter()) };
    command.output().unwrap()
}

fn skip_unless_root() -> bool {
    if jail::can_confine() {
        return false;
    }
    eprintln!("skipped: confining a process needs root");
    true
}

#[test]
fn confined_child_sees_only_its_binds_and_runs_as_the_jail_uid() {
    if skip_unless_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("visible"), "yes").unwrap();
    std::fs::write(dir.path().join("hidden"), "secret").unwrap();
    let jail = jail(root, vec![Bind::read_only(&shared)]);

    let id = run_in(&jail, "/usr/bin/id", &["-u"]);
    let proc_status = run_in(
        &jail,
        "/usr/bin/grep",
        &["-E", "^(CapEff|NoNewPrivs)", "/proc/self/status"],
    );
    let visible = run_in(
        &jail,
        "/usr/bin/cat",
        &[shared.join("visible").to_str().unwrap()],
    );
    let hidden = run_in(
        &jail,
        "/usr/bin/cat",
        &[dir.path().join("hidden").to_str().unwrap()],
    );
    let shadow = run_in(&jail, "/usr/bin/cat", &["/etc/shadow"]);
    let write_ro = run_in(
        &jail,
        "/usr/bin/touch",
        &[shared.join("new").to_str().unwrap()],
    );

    assert_eq!(String::from_utf8_lossy(&id.stdout), "3999999000\n");
    assert!(
        !proc_status.status.success(),
        "no /proc in the jail: {proc_status:?}"
    );
    assert_eq!(String::from_utf8_lossy(&visible.stdout), "yes");
    assert!(!hidden.status.success());
    assert!(!shadow.status.success());
    assert!(!write_ro.status.success(), "a read-only bind was writable");
    assert!(!shared.join("new").exists());
}

#[test]
fn confined_child_cannot_write_past_its_file_size_limit() {
    if skip_unless_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::chown(&out, Some(3_999_999_000), Some(3_999_999_000)).unwrap();
    let jail = jail(root, vec![Bind::writable(&out)]);
    let target = out.join("big");

    let result = run_in(
        &jail,
        "/usr/bin/dd",
        &[
            "if=/dev/zero",
            &format!("of={}", target.display()),
            "bs=1024",
            "count=64",
        ],
    );

    assert!(!result.status.success(), "{result:?}");
    assert!(std::fs::metadata(&target).unwrap().len() <= 4096);
}

#[test]
fn bind_at_shows_a_host_path_elsewhere_and_workdir_is_the_start_directory() {
    if skip_unless_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let own = dir.path().join("own");
    std::fs::create_dir(&own).unwrap();
    std::fs::write(own.join("file"), "mine").unwrap();
    let mut jail = jail(root, vec![Bind::read_only(&own).at("/elsewhere")]);
    jail.workdir = Some(PathBuf::from("/elsewhere"));

    let cwd = run_in(&jail, "/usr/bin/pwd", &[]);
    let relative = run_in(&jail, "/usr/bin/cat", &["file"]);
    let original = run_in(&jail, "/usr/bin/cat", &[own.join("file").to_str().unwrap()]);

    assert_eq!(String::from_utf8_lossy(&cwd.stdout), "/elsewhere\n");
    assert_eq!(String::from_utf8_lossy(&relative.stdout), "mine");
    assert!(
        !original.status.success(),
        "the host path itself is not in the jail: {original:?}"
    );
}
