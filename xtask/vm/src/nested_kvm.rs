//! The KVM-host VM of `vmtest --kvm`: the host's TSC frequency it is booted
//! with (`tsc_early_khz`), the check that it calibrated its TSC and has a
//! `/dev/kvm` before any test runs, and the Firecracker it carries.
//!
//! QEMU's TCG `-cpu max` emulates AMD SVM with nested paging, so a TCG VM
//! whose kernel has KVM_AMD gets a working `/dev/kvm`. One pitfall: an
//! outer guest that could not calibrate its TSC (`tsc: Marking TSC
//! unstable due to could not calculate TSC khz`, seen on a loaded host)
//! hangs every nested KVM guest, so the VM is told the host's frequency
//! and the run refused when it still logs that failure. Another: the VM
//! must have one vCPU ([`KVM_HOST_VCPUS`]). Measured facts:
//! `../shared/notes/nested-kvm.md`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use envd_client::ExecRequest;
use sandbox_core::Sandbox;

use crate::env;
use crate::vmtest::{copy_sparse, which};

/// vCPUs of the KVM-host VM. One: with two, QEMU runs them on two host
/// threads (multi-threaded TCG) and its SVM emulation then loses inner
/// guests: measured with pairs of inner QEMU-KVM boots, 11 of 47 ended in a
/// triple fault (QEMU exits under `-no-reboot`; paused under `-action
/// shutdown=pause`) or a hung vCPU at 100 %, with and without
/// `kvm_amd.vgif=0`; with one vCPU 0 of 24 did. The one vCPU is shared by
/// the inner guests and the host side of the tests, so they are slower.
pub const KVM_HOST_VCPUS: u8 = 1;

/// What the outer guest logs when its TSC could not be calibrated.
const TSC_FAILURE: &str = "could not calculate TSC khz";

/// The host's TSC frequency in kHz, for the outer guest's `tsc_early_khz`.
pub fn host_tsc_khz() -> Result<u64> {
    let dmesg = Command::new("dmesg")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    tsc_khz(&dmesg, &cpuinfo).context(
        "cannot tell the host's TSC frequency (no `tsc:` line in dmesg, no `cpu MHz` in /proc/cpuinfo)",
    )
}

/// The TSC frequency from a kernel log (the refined calibration if there
/// is one, else the detected one), else from `/proc/cpuinfo`'s `cpu MHz`
/// (on a VM host, its TSC frequency), in whole kHz.
fn tsc_khz(dmesg: &str, cpuinfo: &str) -> Option<u64> {
    let from_log = |marker: &str| {
        dmesg
            .lines()
            .filter_map(|line| line.split_once(marker))
            .filter_map(|(_, rest)| rest.split_whitespace().next()?.parse::<f64>().ok())
            .next_back()
    };
    let mhz = from_log("Refined TSC clocksource calibration: ")
        .or_else(|| from_log("tsc: Detected "))
        .or_else(|| {
            cpuinfo.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "cpu MHz").then(|| value.trim().parse::<f64>().ok())?
            })
        })
        .filter(|mhz| *mhz > 0.0)?;
    // A few GHz at most: the kHz fit a u64 and are not negative.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((mhz * 1000.0).round() as u64)
}

/// Refuses to go on unless the outer guest calibrated its TSC (nested KVM
/// guests hang otherwise) and has a `/dev/kvm`.
pub async fn check_guest(sandbox: &Sandbox) -> Result<()> {
    let out = sandbox
        .exec(
            ExecRequest::new("/bin/sh")
                .args([
                    "-c",
                    "dmesg; echo; test -c /dev/kvm && echo PETREL_KVM_PRESENT; grep -m1 -ow svm /proc/cpuinfo",
                ])
                .user("root"),
        )
        .await
        .context("inspecting the KVM-host guest")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(line) = text.lines().find(|line| line.contains(TSC_FAILURE)) {
        bail!(
            "the KVM-host guest could not calibrate its TSC ({}); nested KVM guests would hang there, so the run stops",
            line.trim()
        );
    }
    if !text.contains("PETREL_KVM_PRESENT") {
        let kvm_lines: Vec<&str> = text.lines().filter(|l| l.contains("kvm")).collect();
        bail!(
            "the KVM-host guest has no /dev/kvm (svm in its CPU flags: {}; its kvm log lines: {kvm_lines:?})",
            text.lines().any(|l| l.trim() == "svm")
        );
    }
    env::step("the guest has /dev/kvm and a calibrated TSC");
    Ok(())
}

/// Firecracker to carry into a KVM-host guest: `PETREL_FIRECRACKER`, else
/// `firecracker` on PATH (Firecracker is in no registry; CI has none).
pub fn host_firecracker() -> Option<PathBuf> {
    std::env::var_os("PETREL_FIRECRACKER")
        .map(PathBuf::from)
        .filter(|path| path.is_file())
        .or_else(|| which("firecracker").ok())
}

/// Copies the host's Firecracker (if any) to `bin/firecracker`; whether
/// there was one.
pub fn add_firecracker(tree: &Path) -> Result<bool> {
    let Some(path) = host_firecracker() else {
        env::step(
            "no Firecracker here (PETREL_FIRECRACKER unset, none on PATH): its tests will skip",
        );
        return Ok(false);
    };
    env::step(&format!("adding Firecracker ({})", path.display()));
    copy_sparse(&path, &tree.join("bin/firecracker"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_khz_prefers_the_refined_calibration_then_the_detected_one() {
        let dmesg = "[    0.000052] tsc: Detected 2596.128 MHz processor\n\
                     [    1.234567] tsc: Refined TSC clocksource calibration: 2596.001 MHz\n";

        assert_eq!(tsc_khz(dmesg, ""), Some(2_596_001));
        assert_eq!(
            tsc_khz("[    0.000052] tsc: Detected 2596.128 MHz processor\n", ""),
            Some(2_596_128)
        );
    }

    #[test]
    fn tsc_khz_falls_back_to_cpuinfo_and_refuses_nothing_or_zero() {
        let cpuinfo = "model name\t: AMD EPYC\ncpu MHz\t\t: 2596.128\n";

        assert_eq!(tsc_khz("no tsc lines\n", cpuinfo), Some(2_596_128));
        assert_eq!(tsc_khz("", "model name\t: x\n"), None);
        assert_eq!(tsc_khz("", "cpu MHz\t\t: 0.000\n"), None);
    }
}
