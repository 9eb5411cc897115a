//! Snapshot lineage: what every sandbox and snapshot stands on, so that
//! nothing is deleted while anything depends on it.
//!
//! ```text
//! base image <- warm snapshot <- sandbox <- snapshot <- sandbox <- child snapshot
//! ```
//!
//! The records in SQLite are the source of truth, not the files:
//! - a sandbox's row holds its [`SandboxRecord`], whose `snapshot` and
//!   `images.rootfs` are what its root disk was made from; it stands on
//!   them while it has files (starting, running, paused, in error), and on
//!   nothing once stopped;
//! - a snapshot's row holds [`SnapshotInfo::stands_on`], recorded when it
//!   is taken (what its sandbox stood on, or nothing when its disk is
//!   self-contained). A row from before lineage was recorded gets it once,
//!   from the agent's record of the disk's backing chain, and keeps it.
//!
//! Dependents are found by a query over the rows (not a stored count that
//! could drift from them): a snapshot with dependents is not deleted
//! ([`Manager::delete_snapshot`]), and a template's base images and warm
//! snapshots are pruned only when nothing stands on them
//! (`Manager::prune_unreferenced`).

use super::{
    Manager, ManagerError, Path, PathBuf, Persisted, SandboxRecord, SnapshotInfo, StandsOn, State,
    Table, lock,
};

/// A record that stands on something.
pub(super) struct Dependent {
    /// How messages name it: `sandbox <id> (<state>)` or `snapshot <name>`.
    pub(super) name: String,
    pub(super) stands_on: StandsOn,
}

impl Manager {
    /// Every sandbox with files and every snapshot, with what each stands
    /// on. A sandbox still being created (no row yet) is listed when it
    /// starts from a named snapshot; callers that prune also wait until no
    /// sandbox is between states.
    pub(super) fn dependents(&self) -> Result<Vec<Dependent>, ManagerError> {
        let (sandboxes, snapshots) = {
            let store = lock(&self.inner.store);
            (
                store.all::<Persisted>(Table::Sandboxes)?,
                store.all::<SnapshotInfo>(Table::Snapshots)?,
            )
        };
        let infos = lock(&self.inner.infos).clone();
        let mut out = Vec::new();
        for (id, persisted) in &sandboxes {
            let Some(record) = &persisted.record else {
                continue;
            };
            let state = infos.get(id).map_or(persisted.info.state, |i| i.state);
            out.push(Dependent {
                name: format!("sandbox {id} ({state})"),
                stands_on: sandbox_stands_on(record),
            });
        }
        for (name, snapshot) in snapshots {
            let stands_on = match snapshot.stands_on {
                Some(stands_on) => stands_on,
                None => self.record_legacy_lineage(snapshot)?,
            };
            out.push(Dependent {
                name: format!("snapshot {name}"),
                stands_on,
            });
        }
        let recorded: Vec<&String> = sandboxes.iter().map(|(id, _)| id).collect();
        for info in infos.values() {
            if info.state == State::Stopped || recorded.contains(&&info.id) {
                continue;
            }
            if lock(&self.inner.store)
                .get::<SnapshotInfo>(Table::Snapshots, &info.template)?
                .is_some()
            {
                out.push(Dependent {
                    name: format!("sandbox {} ({})", info.id, info.state),
                    stands_on: StandsOn::Snapshot {
                        name: info.template.clone(),
                    },
                });
            }
        }
        Ok(out)
    }

    /// Who stands on snapshot `name`: sandboxes started from it (in any
    /// state but stopped) and snapshots whose disks back onto its disk.
    pub(super) fn snapshot_dependents(&self, name: &str) -> Result<Vec<String>, ManagerError> {
        let on = StandsOn::Snapshot {
            name: name.to_string(),
        };
        let mut names: Vec<String> = self
            .dependents()?
            .into_iter()
            .filter(|d| d.stands_on == on)
            .map(|d| d.name)
            .collect();
        // A create that resolved the snapshot before its row was written.
        for info in lock(&self.inner.infos).values() {
            let named = format!("sandbox {} ({})", info.id, info.state);
            if info.template == name && info.state != State::Stopped && !names.contains(&named) {
                names.push(named);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Fails when snapshot `name` is gone. A create calls it while it
    /// enters the sandbox table, after resolving the snapshot: a delete
    /// removes the row before it looks for dependents in that table, so
    /// either the delete sees the create (and is refused) or the create
    /// sees the row gone (and starts nothing).
    pub(super) fn require_snapshot(&self, name: &str) -> Result<(), ManagerError> {
        lock(&self.inner.store)
            .get::<SnapshotInfo>(Table::Snapshots, name)?
            .map(drop)
            .ok_or_else(|| ManagerError::TemplateNotFound(name.to_string()))
    }

    /// Works out what a snapshot taken before lineage was recorded stands
    /// on, from the agent's record of its disk's backing chain (or the
    /// disk's header when there is none), and writes it to its row.
    fn record_legacy_lineage(&self, mut snapshot: SnapshotInfo) -> Result<StandsOn, ManagerError> {
        let dir = self
            .inner
            .config
            .data_dir
            .join("snapshots")
            .join(&snapshot.name);
        let disk = dir.join("disk.qcow2");
        let unreadable = |message: String| ManagerError::Store {
            path: disk.clone(),
            message: format!("the lineage of snapshot {}: {message}", snapshot.name),
        };
        let chain = if disk.is_file() {
            match crate::disk::qcow2::recorded_chain(&disk) {
                Ok(Some(chain)) => chain,
                Ok(None) => crate::disk::qcow2::backing_chain(&disk)
                    .map_err(|e| unreadable(e.to_string()))?,
                Err(err) => return Err(unreadable(err.to_string())),
            }
        } else {
            Vec::new()
        };
        let stands_on = from_chain(&chain, &self.inner.config.data_dir.join("snapshots"));
        tracing::info!(snapshot = %snapshot.name, ?stands_on, "recorded the lineage of a snapshot from before lineage was recorded");
        snapshot.stands_on = Some(stands_on.clone());
        lock(&self.inner.store).put(Table::Snapshots, &snapshot.name, &snapshot)?;
        Ok(stands_on)
    }
}

/// What a sandbox stands on, from its record: the snapshot it was started
/// from (named: under `snapshots/`; otherwise a template's warm snapshot,
/// made of its `images.rootfs`), or its template's base image.
pub(super) fn sandbox_stands_on(record: &SandboxRecord) -> StandsOn {
    let config = &record.config;
    match &config.snapshot {
        None => StandsOn::Base {
            file: config.images.rootfs.clone(),
        },
        Some(dir) => match named_snapshot(dir, &config.data_dir.join("snapshots")) {
            Some(name) => StandsOn::Snapshot { name },
            None => StandsOn::Warm {
                dir: dir.clone(),
                base: config.images.rootfs.clone(),
            },
        },
    }
}

/// The name of the snapshot in `dir`, when `dir` is one under `snapshots`.
fn named_snapshot(dir: &Path, snapshots: &Path) -> Option<String> {
    let parent = dir.parent()?;
    (parent == snapshots || canonical(parent) == canonical(snapshots))
        .then(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .flatten()
}

/// What a disk with backing `chain` (nearest first) stands on.
fn from_chain(chain: &[PathBuf], snapshots: &Path) -> StandsOn {
    let Some(first) = chain.first() else {
        return StandsOn::Nothing;
    };
    if first.file_name().is_some_and(|n| n == "disk.qcow2")
        && let Some(dir) = first.parent()
    {
        if let Some(name) = named_snapshot(dir, snapshots) {
            return StandsOn::Snapshot { name };
        }
        let warm = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("warm-"));
        if warm && let Some(base) = chain.last() {
            return StandsOn::Warm {
                dir: dir.to_path_buf(),
                base: base.clone(),
            };
        }
    }
    StandsOn::Base {
        file: first.clone(),
    }
}

/// `path` with symlinks resolved, or as given when it cannot be.
pub(super) fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

impl std::fmt::Display for StandsOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StandsOn::Nothing => f.write_str("nothing"),
            StandsOn::Base { file } => write!(f, "base image {}", file.display()),
            StandsOn::Warm { dir, .. } => write!(f, "warm snapshot {}", dir.display()),
            StandsOn::Snapshot { name } => write!(f, "snapshot {name}"),
        }
    }
}
