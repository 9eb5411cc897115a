//! `host-agent doctor`: what this host can do, and what `serve` would choose
//! with the same flags.
//!
//! It looks at `/dev/kvm` (present, openable, which module), runs the
//! accelerator probe of [`qemu_vmm::probe_accelerator`] when a kernel and
//! rootfs are given (a probe VM must reach init under KVM; the outcome is
//! cached in the data dir like `serve` does), and reports device-mapper
//! (`/proc/misc`), userfaultfd, nftables (`nft --version`), QEMU's version
//! and Firecracker ([`fc_client::find_firecracker`]), and each VMM
//! confinement feature (uid drop, mount namespace, seccomp, rlimits,
//! cgroup v1/v2, PID namespace) as on or off with the reason. It changes
//! nothing on the host except the probe's cache file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qemu_vmm::{Accel, AccelProbe, ProbeOutcome};

use sandbox_core::{BackendKind, choose_provider};

use crate::backend::{Facts, KvmVerdict};
use crate::config::{AccelChoice, NetworkChoice, RootfsProviderChoice, VmmChoice};

/// What `doctor` is asked about (the subset of `serve`'s flags that
/// matter).
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    pub data_dir: PathBuf,
    pub vmm: VmmChoice,
    pub accel: AccelChoice,
    pub network: NetworkChoice,
    /// `--rootfs-provider`; `None`: chosen per backend.
    pub rootfs_provider: Option<RootfsProviderChoice>,
    pub kernel: Option<PathBuf>,
    pub rootfs: Option<PathBuf>,
}

/// The findings, one labelled line each, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub lines: Vec<(&'static str, String)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
        for (label, value) in &self.lines {
            writeln!(f, "{:<width$} {value}", format!("{label}:"), width = width)?;
        }
        Ok(())
    }
}

/// Looks at the host and returns the report.
pub async fn run(options: &DoctorOptions) -> Report {
    let mut lines = Vec::new();
    let osrelease = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|e| format!("unknown ({e})"), |s| s.trim().to_string());
    lines.push(("host kernel", osrelease));
    lines.push(("/dev/kvm", kvm_device()));
    let misc = std::fs::read_to_string("/proc/misc").unwrap_or_default();
    let accel = accelerator(options).await;
    lines.push(("KVM usable", accel.kvm_usable.clone()));
    lines.push(("qemu", accel.qemu_version.clone()));
    lines.push(("firecracker", firecracker().await));
    lines.push((
        "device-mapper",
        yes_no(has_misc_device(&misc, "device-mapper")).to_string(),
    ));
    lines.push(("userfaultfd", userfaultfd(&misc)));
    lines.push(("nftables", first_line_of("nft", &["--version"]).await));
    let facts = Facts {
        kvm: KvmVerdict::of(options.accel, accel.outcome.as_ref()),
        firecracker: fc_client::find_firecracker(),
        namespaces: options.network.namespaces(),
    };
    lines.push((
        "vmm backend",
        crate::backend::decide(options.vmm, &facts)
            .map_or_else(|why| format!("none ({why})"), |choice| choice.describe()),
    ));
    lines.push(("accelerator", accel.choice));
    for (label, backend) in [
        ("rootfs provider (qemu)", BackendKind::Qemu),
        ("rootfs provider (firecracker)", BackendKind::Firecracker),
    ] {
        lines.push((label, rootfs_provider(backend, options.rootfs_provider)));
    }
    let confinement = sandbox_core::confine::VmmConfinement::for_host(BackendKind::Qemu);
    let seccomp = sandbox_core::confine::qemu_seccomp(&qemu_vmm::default_qemu_binary());
    lines.extend(sandbox_core::confine::report(&confinement, &seccomp));
    lines.push((
        "base template",
        match (&options.kernel, &options.rootfs) {
            (Some(k), Some(r)) => format!("kernel {}, rootfs {}", k.display(), r.display()),
            _ => "none (pass --kernel and --rootfs, or PETREL_KERNEL/PETREL_ROOTFS)".to_string(),
        },
    ));
    Report { lines }
}

/// The provider `backend` would get (the requested one, if usable) and why.
fn rootfs_provider(backend: BackendKind, requested: Option<RootfsProviderChoice>) -> String {
    match choose_provider(backend, requested.map(RootfsProviderChoice::as_str)) {
        Ok((provider, why)) => format!("{} ({why})", provider.name()),
        Err(err) => format!("none ({err})"),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Whether `/proc/misc` (`"MINOR NAME"` lines) lists `name`.
pub fn has_misc_device(misc: &str, name: &str) -> bool {
    misc.lines()
        .any(|line| line.split_whitespace().nth(1) == Some(name))
}

fn kvm_device() -> String {
    let module = ["kvm_pvm", "kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|m| Path::new("/sys/module").join(m).exists())
        .unwrap_or("none loaded");
    let device = Path::new("/dev/kvm");
    if !device.exists() {
        return format!("absent (module {module})");
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
    {
        Ok(_) => format!("present, opens read-write (module {module})"),
        Err(err) => format!("present, cannot open: {err} (module {module})"),
    }
}

fn userfaultfd(misc: &str) -> String {
    let device = Path::new("/dev/userfaultfd").exists() || has_misc_device(misc, "userfaultfd");
    let sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .map(|s| s.trim().to_string())
        .ok();
    match (device, sysctl) {
        (true, Some(v)) => format!("yes (/dev/userfaultfd; vm.unprivileged_userfaultfd={v})"),
        (true, None) => "yes (/dev/userfaultfd)".to_string(),
        (false, Some(v)) => format!("syscall only (vm.unprivileged_userfaultfd={v})"),
        (false, None) => "no".to_string(),
    }
}

async fn firecracker() -> String {
    match fc_client::find_firecracker() {
        Some(path) => {
            let version = first_line_of(&path.display().to_string(), &["--version"]).await;
            format!("{} ({version})", path.display())
        }
        None => "not found (PETREL_FIRECRACKER or PATH)".to_string(),
    }
}

/// The first line of `program args...`'s stdout, or why it did not run.
async fn first_line_of(program: &str, args: &[&str]) -> String {
    let run = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(output)) => String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
        Ok(Err(err)) => format!("not runnable ({err})"),
        Err(_) => "did not answer within 10 s".to_string(),
    }
}

struct AccelFindings {
    /// The probe's, when one ran.
    outcome: Option<ProbeOutcome>,
    kvm_usable: String,
    qemu_version: String,
    choice: String,
}

/// The accelerator as `serve` chooses it: forced by `--accel`, else the
/// probe's outcome with the base template's images, else TCG.
async fn accelerator(options: &DoctorOptions) -> AccelFindings {
    let qemu = qemu_vmm::default_qemu_binary();
    let Some((kernel, rootfs)) = options.kernel.as_ref().zip(options.rootfs.as_ref()) else {
        let qemu_version = qemu_vmm::qemu_version(&qemu)
            .await
            .unwrap_or_else(|err| format!("{} not runnable ({err})", qemu.display()));
        let choice = match options.accel {
            AccelChoice::Kvm => "kvm (forced by --accel)",
            AccelChoice::Tcg => "tcg (forced by --accel)",
            AccelChoice::Auto => "tcg (no kernel/rootfs to probe KVM with)",
        };
        return AccelFindings {
            outcome: None,
            kvm_usable:
                "not probed: pass --kernel and --rootfs (a probe VM must reach init under KVM)"
                    .to_string(),
            qemu_version,
            choice: choice.to_string(),
        };
    };
    let cache_dir = options.data_dir.is_dir().then(|| options.data_dir.clone());
    let probe = AccelProbe {
        qemu,
        ..AccelProbe::new(
            kernel,
            rootfs,
            cache_dir.as_deref(),
            cache_dir.clone().unwrap_or_else(std::env::temp_dir),
        )
    };
    let outcome = qemu_vmm::probe_accelerator(&probe).await;
    let cached = if outcome.cached { ", cached" } else { "" };
    let kvm_usable = format!(
        "{} ({}{cached})",
        yes_no(outcome.accel == Accel::Kvm),
        outcome.reason
    );
    let choice = match options.accel {
        AccelChoice::Kvm => "kvm (forced by --accel)".to_string(),
        AccelChoice::Tcg => "tcg (forced by --accel)".to_string(),
        AccelChoice::Auto => format!("{} (from the probe)", outcome.accel),
    };
    AccelFindings {
        kvm_usable,
        qemu_version: outcome.qemu_version.clone(),
        choice,
        outcome: Some(outcome),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misc_device_is_found_by_name() {
        let misc = " 58 memory_bandwidth\n236 device-mapper\n124 userfaultfd\n";

        let found = [
            has_misc_device(misc, "device-mapper"),
            has_misc_device(misc, "userfaultfd"),
            has_misc_device(misc, "device"),
        ];

        assert_eq!(found, [true, true, false]);
    }

    #[test]
    fn report_aligns_its_values() {
        let report = Report {
            lines: vec![("qemu", "10.0".into()), ("nftables", "v1.0.6".into())],
        };

        let text = report.to_string();

        assert_eq!(text, "qemu:     10.0\nnftables: v1.0.6\n");
    }

    #[tokio::test]
    async fn without_images_the_accelerator_is_tcg_and_unprobed() {
        let options = DoctorOptions {
            data_dir: PathBuf::from("/nonexistent"),
            vmm: VmmChoice::Auto,
            accel: AccelChoice::Auto,
            network: NetworkChoice::Auto,
            rootfs_provider: None,
            kernel: None,
            rootfs: None,
        };

        let report = run(&options).await;

        let accel = report
            .lines
            .iter()
            .find(|(k, _)| *k == "accelerator")
            .map(|(_, v)| v.as_str());
        assert_eq!(accel, Some("tcg (no kernel/rootfs to probe KVM with)"));
    }

    #[tokio::test]
    async fn report_lists_every_confinement_feature_as_on_or_off() {
        let report = run(&DoctorOptions {
            data_dir: std::env::temp_dir(),
            vmm: VmmChoice::Qemu,
            accel: AccelChoice::Tcg,
            network: NetworkChoice::Auto,
            rootfs_provider: None,
            kernel: None,
            rootfs: None,
        })
        .await;

        for label in [
            "vmm uid drop",
            "vmm mount ns",
            "vmm seccomp",
            "vmm rlimits",
            "vmm cgroup",
            "vmm pid ns",
        ] {
            let (_, value) = report
                .lines
                .iter()
                .find(|(l, _)| *l == label)
                .unwrap_or_else(|| panic!("no {label} in {report}"));
            assert!(
                value.starts_with("on") || value.starts_with("off ("),
                "{label}: {value}"
            );
        }
    }

    #[test]
    fn rootfs_provider_is_shown_with_its_reason_per_backend() {
        let qemu = rootfs_provider(BackendKind::Qemu, None);
        let copy = rootfs_provider(BackendKind::Firecracker, Some(RootfsProviderChoice::Copy));
        let refused = rootfs_provider(BackendKind::Firecracker, Some(RootfsProviderChoice::Qcow2));

        assert!(qemu.starts_with("qcow2 ("), "{qemu}");
        assert!(
            copy.starts_with("copy (") && copy.contains("requested"),
            "{copy}"
        );
        assert!(
            refused.starts_with("none (") && refused.contains("firecracker"),
            "{refused}"
        );
    }
}
