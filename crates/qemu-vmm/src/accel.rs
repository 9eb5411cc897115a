//! Choosing the accelerator by a real probe, never by the mere presence of
//! `/dev/kvm`: some hosts expose a KVM (e.g. `kvm_pvm`) that stock guest
//! kernels cannot run under.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::{Drive, NetConfig, VmConfig};
use crate::error::QemuError;
use crate::vm::QemuVm;

/// The CPU accelerator QEMU runs a guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulator (slow but works everywhere).
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// What to probe with.
#[derive(Debug, Clone)]
pub struct AccelProbe {
    pub qemu: PathBuf,
    /// The guest kernel the platform will boot.
    pub kernel: PathBuf,
    /// A root filesystem image (opened read-only) whose `/usr/bin/printf` the
    /// probe runs as init.
    pub rootfs: PathBuf,
    /// How long the probe guest may take to reach init under KVM.
    pub timeout: Duration,
    /// Where the outcome is cached; `None` probes every time.
    pub cache_file: Option<PathBuf>,
    /// Scratch space for the probe VM (a subdirectory is made and removed).
    pub work_dir: PathBuf,
}

impl AccelProbe {
    /// How long a probe guest gets to reach init under KVM by default.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

    /// A probe with the default QEMU binary and timeout, booting `kernel`
    /// over `rootfs`, its outcome cached as `accel-probe.json` in
    /// `cache_dir` (if any), its VM's scratch space in `work_dir`.
    pub fn new(
        kernel: impl Into<PathBuf>,
        rootfs: impl Into<PathBuf>,
        cache_dir: Option<&Path>,
        work_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            qemu: crate::default_qemu_binary(),
            kernel: kernel.into(),
            rootfs: rootfs.into(),
            timeout: Self::DEFAULT_TIMEOUT,
            cache_file: cache_dir.map(|dir| dir.join("accel-probe.json")),
            work_dir: work_dir.into(),
        }
    }
}

/// The probe's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeOutcome {
    pub accel: Accel,
    /// Why this accelerator was chosen, in words for `doctor`.
    pub reason: String,
    /// How long the KVM probe VM took (0 when none ran).
    pub probe_ms: u64,
    pub qemu_version: String,
    pub kernel: PathBuf,
    pub kernel_size: u64,
    /// Unix seconds of the probe.
    pub probed_at: u64,
    /// Whether this outcome came from the cache file.
    #[serde(skip)]
    pub cached: bool,
}

/// The string init prints. The kernel command line carries it split in two
/// (`printf PETREL%sOK\\n _PROBE_`) so the kernel's own echo of its command line
/// cannot be mistaken for it.
const MARKER: &str = "PETREL_PROBE_OK";

/// Decides between KVM and TCG: KVM only when a probe VM with the real kernel
/// reaches init under KVM within the bound. The result is cached per QEMU
/// version and kernel.
pub async fn probe_accelerator(probe: &AccelProbe) -> ProbeOutcome {
    let qemu_version = qemu_version(&probe.qemu)
        .await
        .unwrap_or_else(|err| format!("unknown ({err})"));
    let kernel_size = std::fs::metadata(&probe.kernel).map_or(0, |m| m.len());
    if let Some(cached) = read_cache(probe, &qemu_version, kernel_size) {
        return cached;
    }
    let start = Instant::now();
    let (accel, reason) = match kvm_usable(probe).await {
        Ok(()) => (Accel::Kvm, "a probe VM reached init under KVM".to_string()),
        Err(why) => (Accel::Tcg, why),
    };
    let probe_ms = start.elapsed().as_millis() as u64;
    let outcome = ProbeOutcome {
        accel,
        reason,
        probe_ms,
        qemu_version,
        kernel: probe.kernel.clone(),
        kernel_size,
        probed_at: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        cached: false,
    };
    tracing::info!(accel = %outcome.accel, reason = %outcome.reason, probe_ms, "accelerator chosen");
    write_cache(probe, &outcome);
    outcome
}

/// The first line of `qemu-system-x86_64 --version`.
pub async fn qemu_version(qemu: &Path) -> Result<String, std::io::Error> {
    let output = tokio::process::Command::new(qemu)
        .arg("--version")
        .output()
        .await?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

async fn kvm_usable(probe: &AccelProbe) -> Result<(), String> {
    if let Err(err) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Err(format!("/dev/kvm cannot be opened ({err})"));
    }
    let run_dir = probe
        .work_dir
        .join(format!("accel-probe-{}", std::process::id()));
    let config = VmConfig {
        binary: probe.qemu.clone(),
        kernel: probe.kernel.clone(),
        // Words without `=` that the kernel does not know become init's
        // arguments (`--` cannot be used: QEMU appends its virtio-mmio
        // device list after our command line).
        kernel_args:
            "console=ttyS0 root=/dev/vda ro panic=-1 init=/usr/bin/printf PETREL%sOK\\n _PROBE_"
                .to_string(),
        drives: vec![Drive {
            read_only: true,
            ..Drive::raw(&probe.rootfs)
        }],
        net: NetConfig::None,
        memory_mib: 256,
        ..VmConfig::new("accel-probe", &run_dir, Accel::Kvm)
    };
    let result = match QemuVm::spawn(config).await {
        Ok(mut vm) => {
            let reached = vm.wait_for_console(MARKER, probe.timeout).await;
            let _ = vm.kill().await;
            reached.map(|_| ()).map_err(|err| match err {
                QemuError::ConsoleTimeout { waited_ms, log_tail, .. } => format!(
                    "the KVM probe VM did not reach init within {waited_ms} ms (its console ends with {:?})",
                    log_tail.lines().last().unwrap_or("")
                ),
                other => format!("the KVM probe VM failed: {other}"),
            })
        }
        Err(err) => Err(format!("QEMU could not start a KVM guest: {err}")),
    };
    let _ = std::fs::remove_dir_all(&run_dir);
    result
}

fn read_cache(probe: &AccelProbe, qemu_version: &str, kernel_size: u64) -> Option<ProbeOutcome> {
    let path = probe.cache_file.as_ref()?;
    let text = std::fs::read_to_string(path).ok()?;
    let mut outcome: ProbeOutcome = serde_json::from_str(&text).ok()?;
    let same = outcome.qemu_version == qemu_version
        && outcome.kernel == probe.kernel
        && outcome.kernel_size == kernel_size;
    same.then(|| {
        outcome.cached = true;
        outcome
    })
}

fn write_cache(probe: &AccelProbe, outcome: &ProbeOutcome) {
    let Some(path) = &probe.cache_file else {
        return;
    };
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            let text = serde_json::to_string_pretty(outcome).map_err(std::io::Error::other)?;
            std::fs::write(path, text)
        });
    if let Err(err) = written {
        tracing::warn!(path = %path.display(), %err, "cannot cache the accelerator probe");
    }
}
