//! What an earlier run may have left that no record owns, found from the
//! host itself: VMM processes and run directories of sandboxes, partial
//! snapshots, partial warm snapshots and partial base image imports.
//!
//! A VMM is marked by its command line: every VMM the agent starts names
//! files in its sandbox's run directory `data_dir/sandboxes/<id>/` (QMP and
//! console sockets, disk, API socket), so `/proc/<pid>/cmdline` says which
//! sandbox of which data directory a process belongs to. Processes of other
//! data directories (other agents) are never touched.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Manager, Table, lock};

/// VMM processes under `sandboxes_dir`, by sandbox id: every process
/// (other than this one) whose command line names a path
/// `sandboxes_dir/<id>/...`.
pub(super) fn vmm_processes(sandboxes_dir: &Path) -> HashMap<String, Vec<u32>> {
    let me = std::process::id();
    let mut found: HashMap<String, Vec<u32>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
    {
        for id in sandboxes_named(pid, sandboxes_dir) {
            found.entry(id).or_default().push(pid);
        }
    }
    found
}

/// The sandbox ids whose run dirs (`sandboxes_dir/<id>/...`) process
/// `pid`'s command line names (none when it ended meanwhile).
pub(super) fn sandboxes_named(pid: u32, sandboxes_dir: &Path) -> HashSet<String> {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return HashSet::new();
    };
    let dir = sandboxes_dir.as_os_str().as_encoded_bytes();
    cmdline
        // Options name paths as `file=PATH,...` or `unix:PATH,...`.
        .split(|&b| b == 0 || b == b',' || b == b'=' || b == b':')
        .filter_map(|arg| arg.strip_prefix(dir)?.strip_prefix(b"/"))
        .filter_map(|rest| {
            // Only `<id>/...`: a path naming the sandboxes dir itself is no mark.
            let end = rest.iter().position(|&b| b == b'/')?;
            std::str::from_utf8(&rest[..end]).ok().map(str::to_string)
        })
        .filter(|id| !id.is_empty())
        .collect()
}

/// Kills `pids` (SIGKILL) and waits, at most 5 s, until they are gone, so
/// the disks, TAPs and sockets they held are free.
pub(super) async fn kill_all(pids: &[u32]) {
    for &pid in pids {
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(raw),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let start = Instant::now();
    while pids.iter().any(|pid| crate::vmm::process_alive(*pid))
        && start.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Manager {
    /// Ends what is left of sandbox `id` on the host: its VMM processes
    /// (`pids`), what the backend keeps outside the run dir (a cgroup), the
    /// root disk (a dm device) and the run directory. For sandboxes
    /// recovery gives up (nothing saved to lose) and for orphans.
    pub(super) async fn discard(&self, id: &str, pids: &[u32]) {
        kill_all(pids).await;
        let run_dir = self.inner.config.data_dir.join("sandboxes").join(id);
        self.inner.hypervisor.release_leftovers(id, &run_dir);
        if run_dir.exists()
            && let Err(err) = crate::disk::remove_root_disk(id, &run_dir).await
        {
            tracing::warn!(sandbox = %id, %err, "cannot release a discarded sandbox's root disk");
        }
        if let Err(err) = std::fs::remove_dir_all(&run_dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %run_dir.display(), %err, "cannot remove a discarded sandbox's files");
        }
    }

    /// Removes what no record owns: VMM processes and run directories of
    /// unknown sandboxes (a create or warm-up cut short before its intent
    /// was recorded), snapshot directories without a snapshot record,
    /// partial warm snapshots and partial imports.
    pub(super) async fn sweep_orphans(
        &self,
        known: &HashSet<String>,
        vmms: &HashMap<String, Vec<u32>>,
    ) {
        let data_dir = &self.inner.config.data_dir;
        let mut orphans: HashSet<String> = vmms
            .keys()
            .filter(|id| !known.contains(*id))
            .cloned()
            .collect();
        for dir in subdirs(&data_dir.join("sandboxes")) {
            if let Some(id) = dir.file_name().and_then(|n| n.to_str())
                && !known.contains(id)
            {
                orphans.insert(id.to_string());
            }
        }
        for id in orphans {
            let pids = vmms.get(&id).cloned().unwrap_or_default();
            tracing::warn!(sandbox = %id, ?pids, "removing an orphan sandbox (no record owns it)");
            self.discard(&id, &pids).await;
        }
        let snapshots: HashSet<String> = lock(&self.inner.store)
            .all::<serde_json::Value>(Table::Snapshots)
            .map(|rows| rows.into_iter().map(|(name, _)| name).collect())
            .unwrap_or_default();
        let mut partial: Vec<PathBuf> = subdirs(&data_dir.join("snapshots"))
            .into_iter()
            .filter(|dir| {
                dir.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|name| !snapshots.contains(name))
            })
            .collect();
        for template in subdirs(&data_dir.join("templates")) {
            let Ok(entries) = std::fs::read_dir(&template) else {
                continue;
            };
            partial.extend(entries.flatten().map(|e| e.path()).filter(|path| {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let ext = path.extension().and_then(|e| e.to_str());
                (name.starts_with("warm-") && ext == Some("partial"))
                    || (name.starts_with(".import-") && ext == Some("tmp"))
            }));
        }
        for path in partial {
            tracing::warn!(path = %path.display(), "removing a partial file of an interrupted operation");
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(err) = removed {
                tracing::warn!(path = %path.display(), %err, "cannot remove a partial file");
            }
        }
    }
}

/// The directories in `dir` (none when it does not exist).
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_processes_finds_a_process_by_the_run_dir_its_command_line_names() {
        // Arrange: a process whose command line names a run dir.
        let dir = tempfile::tempdir().unwrap();
        let sandboxes = dir.path().join("sandboxes");
        let socket = format!("path={}/abc123/vmm/qmp.sock,server=on", sandboxes.display());
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; :", "sh", &socket])
            .spawn()
            .unwrap();

        // Act (the child names the dir once it has exec'd the shell)
        let mut found = vmm_processes(&sandboxes);
        for _ in 0..500 {
            if found.contains_key("abc123") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            found = vmm_processes(&sandboxes);
        }
        let elsewhere = vmm_processes(&dir.path().join("other"));
        let _ = child.kill();
        let _ = child.wait();

        // Assert
        assert_eq!(found.get("abc123"), Some(&vec![child.id()]));
        assert!(elsewhere.is_empty(), "{elsewhere:?}");
    }
}
