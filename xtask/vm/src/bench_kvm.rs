//! `cargo xtask bench kvm`: the lifecycle bench (boot to envd-ready, create
//! from a warm snapshot, pause, resume, exec) inside one KVM-host VM, on
//! QEMU under KVM, QEMU under nested TCG and Firecracker (when a binary is
//! found: `PETREL_FIRECRACKER` or PATH), one after the other in the same
//! run. QEMU's figures come with raw QEMU's (boot to init, save, restore)
//! measured beside them. JSON on the last line of stdout.

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::vmtest::{self, GuestJob, Nesting};

pub fn run(runs: usize) -> Result<()> {
    let exe = std::env::current_exe().context("locating the xtask-vm binary")?;
    let bench = |which: &str, accel: Option<&str>| GuestJob {
        binary: exe.clone(),
        args: ["bench", which, "--runs", &runs.to_string()]
            .map(String::from)
            .to_vec(),
        env: accel
            .map(|accel| vec![("PETREL_ACCEL".to_string(), accel.to_string())])
            .unwrap_or_default(),
    };
    // Nested TCG, by far the slowest (minutes per run), goes last, so the
    // KVM backends' figures are in the log early.
    let mut jobs = vec![("qemu_kvm", bench("lifecycle", Some("kvm")))];
    let firecracker = crate::nested_kvm::host_firecracker();
    if firecracker.is_some() {
        jobs.push(("firecracker", bench("firecracker-lifecycle", None)));
    }
    jobs.push(("qemu_nested_tcg", bench("lifecycle", Some("tcg"))));
    let (names, jobs): (Vec<&str>, Vec<GuestJob>) = jobs.into_iter().unzip();
    let outputs = vmtest::run_in_guest("bench-kvm", &jobs, Nesting::Kvm, false)?;
    let mut report = json!({
        "bench": "kvm",
        "runs": runs,
        "where": "inside a KVM-host VM (this host's QEMU, TCG -cpu max: emulated AMD SVM), nested",
    });
    // One failed backend does not hide the others' figures: it is named in
    // the report (its error is in the log above) and fails the run after.
    let mut failed = Vec::new();
    for (name, output) in names.iter().zip(&outputs) {
        report[*name] = output.json_report().unwrap_or_else(|err| {
            failed.push(*name);
            json!(format!("failed: {err:#} (its log is above)"))
        });
    }
    if firecracker.is_none() {
        report["firecracker"] =
            json!("skipped: no firecracker binary (PETREL_FIRECRACKER or PATH)");
    }
    println!("{report}");
    if !failed.is_empty() {
        bail!("the {} bench failed in the VM", failed.join(" and "));
    }
    Ok(())
}
