//! A small cgroup v1/v2 writer: one cgroup per VMM with memory, CPU and
//! pids limits.
//!
//! Hand-written rather than a crate (cgroups-rs): we need a handful of files
//! per version (create a directory, write four limits, join through
//! `cgroup.procs` from a forked child, remove the directory), and the join
//! must happen between fork and exec through an already open descriptor,
//! which a general crate does not offer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::JailError;

/// The parent of every VMM cgroup, under each hierarchy.
const PARENT: &str = "petrel";

/// How the host's cgroups can be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified hierarchy mounted at `root` with memory, cpu and pids
    /// available.
    V2 { root: PathBuf },
    /// Legacy per-controller hierarchies.
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
    },
}

impl Hierarchy {
    /// Finds a usable hierarchy from `/proc/self/mountinfo`: cgroup v2 when
    /// its root offers memory, cpu and pids; else v1 when all three
    /// controllers are mounted; else an error saying what is missing.
    pub fn detect() -> Result<Self, JailError> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| JailError::io("read", "/proc/self/mountinfo", e))?;
        Self::from_mountinfo(&mountinfo, |p| std::fs::read_to_string(p).ok())
    }

    fn from_mountinfo(
        mountinfo: &str,
        read: impl Fn(&Path) -> Option<String>,
    ) -> Result<Self, JailError> {
        let mut v2_note = "cgroup2 not mounted".to_string();
        let (mut memory, mut cpu, mut pids) = (None, None, None);
        for line in mountinfo.lines() {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mountpoint) = left.split(' ').nth(4) else {
                continue;
            };
            let mut right = right.split(' ');
            let fstype = right.next().unwrap_or("");
            let superopts = right.nth(1).unwrap_or("");
            let mountpoint = PathBuf::from(mountpoint);
            if fstype == "cgroup2" {
                let controllers = read(&mountpoint.join("cgroup.controllers")).unwrap_or_default();
                let have: Vec<&str> = controllers.split_whitespace().collect();
                let missing: Vec<&str> = ["memory", "cpu", "pids"]
                    .into_iter()
                    .filter(|c| !have.contains(c))
                    .collect();
                if missing.is_empty() {
                    return Ok(Self::V2 { root: mountpoint });
                }
                v2_note = format!(
                    "cgroup2 at {} lacks controllers {}",
                    mountpoint.display(),
                    missing.join(",")
                );
            } else if fstype == "cgroup" {
                let opts: Vec<&str> = superopts.split(',').collect();
                if opts.contains(&"memory") {
                    memory.get_or_insert(mountpoint.clone());
                }
                if opts.contains(&"cpu") {
                    cpu.get_or_insert(mountpoint.clone());
                }
                if opts.contains(&"pids") {
                    pids.get_or_insert(mountpoint.clone());
                }
            }
        }
        match (memory, cpu, pids) {
            (Some(memory), Some(cpu), Some(pids)) => Ok(Self::V1 { memory, cpu, pids }),
            (memory, cpu, pids) => {
                let missing: Vec<&str> = [("memory", memory), ("cpu", cpu), ("pids", pids)]
                    .into_iter()
                    .filter(|(_, m)| m.is_none())
                    .map(|(name, _)| name)
                    .collect();
                Err(JailError::NoCgroups(format!(
                    "{v2_note}; cgroup v1 lacks controllers {}",
                    missing.join(",")
                )))
            }
        }
    }

    /// One line for `doctor`: which version and where.
    pub fn describe(&self) -> String {
        match self {
            Hierarchy::V2 { root } => format!("v2 at {} (memory, cpu, pids)", root.display()),
            Hierarchy::V1 { memory, cpu, pids } => format!(
                "v1 (memory at {}, cpu at {}, pids at {})",
                memory.display(),
                cpu.display(),
                pids.display()
            ),
        }
    }
}

/// The limits of one VMM's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory (RSS + page cache the VMM faults in, e.g. guest RAM).
    pub memory_bytes: u64,
    /// CPU time in percent of one core (150 = one and a half cores).
    pub cpu_percent: u32,
    /// Processes and threads.
    pub pids: u32,
}

const CPU_PERIOD_US: u64 = 100_000;

/// One VMM's cgroup (a directory per hierarchy for v1, one for v2). Not
/// removed on drop: the VMM may outlive this handle (agent restart); call
/// [`Cgroup::remove`] when the VMM is gone for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// `petrel/NAME` under each hierarchy used.
    dirs: Vec<PathBuf>,
    v2: bool,
}

impl Cgroup {
    /// The cgroup `petrel/name` in `hierarchy` (nothing is created).
    pub fn new(hierarchy: &Hierarchy, name: &str) -> Self {
        match hierarchy {
            Hierarchy::V2 { root } => Self {
                dirs: vec![root.join(PARENT).join(name)],
                v2: true,
            },
            Hierarchy::V1 { memory, cpu, pids } => {
                let mut dirs: Vec<PathBuf> = Vec::new();
                for root in [memory, cpu, pids] {
                    let dir = root.join(PARENT).join(name);
                    if !dirs.contains(&dir) {
                        dirs.push(dir);
                    }
                }
                Self { dirs, v2: false }
            }
        }
    }

    /// The directories of this cgroup, one per hierarchy.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The `cgroup.procs` files a process writes `0` to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Creates the cgroup (idempotent) and sets `limits`.
    pub fn create(&self, limits: Limits) -> Result<(), JailError> {
        for dir in &self.dirs {
            if self.v2
                && let Some(parent) = dir.parent()
            {
                // Controllers must be enabled on the way down: in the root
                // and in `petrel`.
                mkdir(parent)?;
                if let Some(root) = parent.parent() {
                    enable_controllers(root)?;
                }
                enable_controllers(parent)?;
            }
            mkdir(dir)?;
        }
        self.set_limits(limits)
    }

    fn set_limits(&self, limits: Limits) -> Result<(), JailError> {
        let quota = u64::from(limits.cpu_percent) * CPU_PERIOD_US / 100;
        if self.v2 {
            let dir = &self.dirs[0];
            write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
            write_if_present(&dir.join("memory.swap.max"), "0")?;
            // A kernel without CFS bandwidth control (CONFIG_CFS_BANDWIDTH,
            // as our own guest kernel) lists `cpu` but has no `cpu.max`:
            // the VMM then runs without a CPU cap, memory and pids still hold.
            if !write_if_present(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))? {
                tracing::warn!(cgroup = %dir.display(), "no cpu.max (kernel without CFS bandwidth control): no CPU limit for this VMM");
            }
            write(&dir.join("pids.max"), &limits.pids.to_string())?;
            return Ok(());
        }
        for dir in &self.dirs {
            if dir.join("memory.limit_in_bytes").exists() {
                write(
                    &dir.join("memory.limit_in_bytes"),
                    &limits.memory_bytes.to_string(),
                )?;
                // With swap accounting, memory + swap gets the same limit:
                // the VMM may not spill into swap.
                write_if_present(
                    &dir.join("memory.memsw.limit_in_bytes"),
                    &limits.memory_bytes.to_string(),
                )?;
            }
            if dir.join("cpu.cfs_quota_us").exists() {
                write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
            if dir.join("pids.max").exists() {
                write(&dir.join("pids.max"), &limits.pids.to_string())?;
            }
        }
        Ok(())
    }

    /// The processes in the cgroup (from its first directory).
    pub fn procs(&self) -> Vec<u32> {
        self.dirs.first().map_or_else(Vec::new, |dir| {
            std::fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        })
    }

    /// Reads a control file of the hierarchy that has it (e.g.
    /// `memory.limit_in_bytes`, `pids.current`), trimmed.
    pub fn read(&self, file: &str) -> Option<String> {
        self.dirs
            .iter()
            .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .map(|s| s.trim().to_string())
    }

    /// Removes the cgroup's directories. Processes still in it are killed
    /// first (a VMM that outlived its stop); a directory that does not
    /// exist is fine. Waits up to two seconds for exiting tasks to leave.
    pub fn remove(&self) -> Result<(), JailError> {
        for pid in self.procs() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let mut errors = Vec::new();
        for dir in &self.dirs {
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 200 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => {
                        errors.push(JailError::io("remove cgroup", dir, e));
                        break;
                    }
                }
            }
        }
        match errors.into_iter().next() {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }
}

fn enable_controllers(dir: &Path) -> Result<(), JailError> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&file).unwrap_or_default();
    for controller in ["memory", "cpu", "pids"] {
        if !enabled.split_whitespace().any(|c| c == controller) {
            write(&file, &format!("+{controller}"))?;
        }
    }
    Ok(())
}

fn mkdir(dir: &Path) -> Result<(), JailError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                mkdir(parent)?;
            }
            std::fs::create_dir(dir).map_err(|e| JailError::io("create cgroup", dir, e))
        }
        Err(e) => Err(JailError::io("create cgroup", dir, e)),
    }
}

fn write(file: &Path, value: &str) -> Result<(), JailError> {
    std::fs::write(file, value).map_err(|e| JailError::io("write cgroup file", file, e))
}

/// Writes `value` to `file` when the kernel offers it; whether it did.
fn write_if_present(file: &Path, value: &str) -> Result<bool, JailError> {
    if !file.exists() {
        return Ok(false);
    }
    write(file, value)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "\
30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime shared:5 - cgroup cgroup rw,cpu
31 25 0:27 / /sys/fs/cgroup/memory rw,relatime shared:6 - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/pids rw,relatime shared:7 - cgroup cgroup rw,pids
33 25 0:29 / /sys/fs/cgroup/unified rw,relatime shared:8 - cgroup2 cgroup2 rw
";

    #[test]
    fn detect_picks_v1_when_cgroup2_has_no_controllers() {
        let found = Hierarchy::from_mountinfo(V1, |_| Some(String::new())).unwrap();

        assert_eq!(
            found,
            Hierarchy::V1 {
                memory: "/sys/fs/cgroup/memory".into(),
                cpu: "/sys/fs/cgroup/cpu".into(),
                pids: "/sys/fs/cgroup/pids".into(),
            }
        );
    }

    #[test]
    fn detect_prefers_v2_with_all_controllers() {
        let found =
            Hierarchy::from_mountinfo(V1, |_| Some("cpuset cpu io memory pids".into())).unwrap();

        assert_eq!(
            found,
            Hierarchy::V2 {
                root: "/sys/fs/cgroup/unified".into()
            }
        );
    }

    #[test]
    fn detect_says_what_is_missing_when_neither_is_usable() {
        let only_cpu = "30 25 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct\n";

        let err = Hierarchy::from_mountinfo(only_cpu, |_| None).unwrap_err();

        assert!(err.to_string().contains("cgroup2 not mounted"), "{err}");
        assert!(
            err.to_string().contains("lacks controllers memory,pids"),
            "{err}"
        );
    }

    const LIMITS: Limits = Limits {
        memory_bytes: 640 << 20,
        cpu_percent: 125,
        pids: 144,
    };

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn v2_create_enables_controllers_and_writes_limits() {
        let root = tempfile::tempdir().unwrap();
        let hierarchy = Hierarchy::V2 {
            root: root.path().to_path_buf(),
        };
        let cgroup = Cgroup::new(&hierarchy, "sb-1");
        let dir = root.path().join("petrel/sb-1");
        // The kernel offers cpu.max where it has CFS bandwidth control.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.max"), "max 100000").unwrap();

        cgroup.create(LIMITS).unwrap();

        assert_eq!(read(&dir.join("memory.max")), (640_u64 << 20).to_string());
        assert_eq!(read(&dir.join("cpu.max")), "125000 100000");
        assert_eq!(read(&dir.join("pids.max")), "144");
        // A plain directory keeps only the last "+controller" write.
        assert_eq!(
            read(&root.path().join("petrel/cgroup.subtree_control")),
            "+pids"
        );
        assert_eq!(cgroup.procs_files(), vec![dir.join("cgroup.procs")]);
    }

    #[test]
    fn v2_create_without_cpu_max_keeps_memory_and_pids_limits() {
        let root = tempfile::tempdir().unwrap();
        let hierarchy = Hierarchy::V2 {
            root: root.path().to_path_buf(),
        };
        let cgroup = Cgroup::new(&hierarchy, "sb-2");

        cgroup.create(LIMITS).unwrap();

        let dir = root.path().join("petrel/sb-2");
        assert_eq!(read(&dir.join("memory.max")), (640_u64 << 20).to_string());
        assert_eq!(read(&dir.join("pids.max")), "144");
        assert!(!dir.join("cpu.max").exists());
    }

    #[test]
    fn v1_create_writes_limits_where_each_controller_has_its_files() {
        let root = tempfile::tempdir().unwrap();
        let hierarchy = Hierarchy::V1 {
            memory: root.path().join("memory"),
            cpu: root.path().join("cpu"),
            pids: root.path().join("pids"),
        };
        let cgroup = Cgroup::new(&hierarchy, "sb-1");
        for (controller, file) in [
            ("memory", "memory.limit_in_bytes"),
            ("memory", "memory.memsw.limit_in_bytes"),
            ("cpu", "cpu.cfs_quota_us"),
            ("pids", "pids.max"),
        ] {
            let dir = root.path().join(controller).join("petrel/sb-1");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(file), "").unwrap();
        }

        cgroup.create(LIMITS).unwrap();

        let at = |c: &str, f: &str| read(&root.path().join(c).join("petrel/sb-1").join(f));
        assert_eq!(
            at("memory", "memory.limit_in_bytes"),
            (640_u64 << 20).to_string()
        );
        assert_eq!(
            at("memory", "memory.memsw.limit_in_bytes"),
            (640_u64 << 20).to_string()
        );
        assert_eq!(at("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(at("cpu", "cpu.cfs_quota_us"), "125000");
        assert_eq!(at("pids", "pids.max"), "144");
    }

    #[test]
    fn remove_of_a_missing_cgroup_is_fine() {
        let root = tempfile::tempdir().unwrap();
        let cgroup = Cgroup::new(
            &Hierarchy::V2 {
                root: root.path().to_path_buf(),
            },
            "gone",
        );

        cgroup.remove().unwrap();
    }

    #[test]
    fn v1_cgroup_has_one_dir_per_hierarchy() {
        let hierarchy = Hierarchy::from_mountinfo(V1, |_| None).unwrap();

        let cgroup = Cgroup::new(&hierarchy, "sb-1");

        assert_eq!(
            cgroup.procs_files(),
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/petrel/sb-1/cgroup.procs"),
                PathBuf::from("/sys/fs/cgroup/cpu/petrel/sb-1/cgroup.procs"),
                PathBuf::from("/sys/fs/cgroup/pids/petrel/sb-1/cgroup.procs"),
            ]
        );
    }
}
