//! Named crash points for recovery tests: with `PETREL_TEST_CRASH_AT=<point>`
//! in its environment, the process aborts (as `kill -9` would stop it: no
//! destructor, no cleanup) the moment it reaches that point.
//!
//! Every step of create (from a pool too), pause, resume, snapshot, fork,
//! destroy and template registration that makes or removes a host resource has a
//! point between it and the next, listed in [`POINTS`]
//! (`host-agent crash-points` prints them). Without the variable a point
//! costs one load of a cached value.

use std::sync::OnceLock;

/// The environment variable naming the point to crash at.
pub const ENV: &str = "PETREL_TEST_CRASH_AT";

/// Every crash point: (name, what has happened when it is reached).
pub const POINTS: &[(&str, &str)] = &[
    (
        "create.recorded",
        "a create's intent (state starting) is durable; nothing made yet",
    ),
    (
        "create.disk_made",
        "the sandbox's directory and root disk exist",
    ),
    (
        "create.vm_started",
        "the VMM process runs (guest booting or restored)",
    ),
    (
        "create.booted",
        "envd answered and /init is done; the record still says starting",
    ),
    (
        "pool.taken",
        "a create took a pooled sandbox and its intent (state starting) is durable; other pooled sandboxes run unrecorded",
    ),
    (
        "pause.recorded",
        "a pause's intent (state pausing) is durable; the guest runs",
    ),
    (
        "pause.state_saved",
        "the guest's state is saved; its VMM still runs, vCPUs stopped",
    ),
    (
        "pause.vm_stopped",
        "the VMM is gone; disk and network are not yet released",
    ),
    (
        "pause.released",
        "disk and network released; the record still says pausing",
    ),
    (
        "resume.recorded",
        "a resume's intent (state resuming) is durable; nothing made yet",
    ),
    (
        "resume.vm_restored",
        "the VMM restored the state and its record is durable; vCPUs not yet run",
    ),
    (
        "resume.ready",
        "envd answered and /init is done; the record still says resuming",
    ),
    (
        "snapshot.recorded",
        "a snapshot's name is reserved; nothing saved yet",
    ),
    (
        "snapshot.state_saved",
        "the guest's state is saved; its vCPUs are stopped",
    ),
    (
        "snapshot.copied",
        "RAM and disk copied into the snapshot; vCPUs still stopped",
    ),
    (
        "snapshot.continued",
        "the guest runs again; the snapshot is not yet recorded",
    ),
    (
        "fork.snapshotted",
        "a fork's snapshot is recorded; no fork started yet",
    ),
    (
        "destroy.recorded",
        "a destroy's intent (state stopping) is durable",
    ),
    (
        "destroy.vm_stopped",
        "the VMM is gone; files and network remain",
    ),
    (
        "destroy.removed",
        "files and network removed; the record remains",
    ),
    (
        "template.imported",
        "a template's base image is imported; not yet recorded",
    ),
    (
        "template.warm_booted",
        "a warm-up guest booted; its snapshot not taken",
    ),
    (
        "template.warm_saved",
        "the warm snapshot is saved under its partial name",
    ),
];

/// Aborts the process if `PETREL_TEST_CRASH_AT` names `point`.
pub fn point(point: &'static str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()));
    if at.as_deref() == Some(point) {
        debug_assert!(POINTS.iter().any(|(name, _)| *name == point));
        eprintln!("petrel: {ENV}={point}: aborting here");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_unique_and_named_by_operation() {
        let mut names: Vec<&str> = POINTS.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();

        assert_eq!(names.len(), before);
        for name in names {
            let (op, step) = name.split_once('.').unwrap();
            assert!(
                [
                    "create", "pool", "pause", "resume", "snapshot", "fork", "destroy", "template"
                ]
                .contains(&op)
                    && !step.is_empty(),
                "{name}"
            );
        }
    }
}
