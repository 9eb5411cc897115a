//! Which VMM backend `serve` runs sandboxes on, and why: one decision that
//! `serve` acts on and `doctor` reports.
//!
//! Firecracker needs a `firecracker` binary (`PETREL_FIRECRACKER` or
//! PATH), a usable KVM (the accelerator probe's verdict, or `--accel kvm`)
//! and network namespaces (it has no user-mode network). `--vmm
//! firecracker` without one of them is an error naming it; `--vmm auto`
//! takes Firecracker when all three hold and QEMU otherwise, saying why.
//! QEMU runs under KVM when it is usable, else under TCG.

use std::path::{Path, PathBuf};

use qemu_vmm::{Accel, ProbeOutcome};

use crate::config::{AccelChoice, VmmChoice};

/// Whether KVM can run guests here, as far as is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmVerdict {
    /// A probe VM reached init under it, or `--accel kvm` says so.
    Usable(String),
    /// The probe failed, or `--accel tcg` was asked for.
    Unusable(String),
    /// Nothing was probed (no kernel and rootfs to probe with).
    Unprobed(String),
}

impl KvmVerdict {
    /// The verdict for `--accel accel`: forced by it, else the probe's
    /// `outcome` (run with the base template's images), else unprobed.
    pub fn of(accel: AccelChoice, outcome: Option<&ProbeOutcome>) -> Self {
        match (accel, outcome) {
            (AccelChoice::Kvm, _) => KvmVerdict::Usable("forced by --accel kvm".to_string()),
            (AccelChoice::Tcg, _) => KvmVerdict::Unusable("--accel tcg".to_string()),
            (AccelChoice::Auto, Some(outcome)) if outcome.accel == Accel::Kvm => {
                KvmVerdict::Usable(outcome.reason.clone())
            }
            (AccelChoice::Auto, Some(outcome)) => KvmVerdict::Unusable(outcome.reason.clone()),
            (AccelChoice::Auto, None) => {
                KvmVerdict::Unprobed("no kernel/rootfs to probe KVM with".to_string())
            }
        }
    }

    fn usable(&self) -> bool {
        matches!(self, KvmVerdict::Usable(_))
    }

    fn reason(&self) -> &str {
        match self {
            KvmVerdict::Usable(why) | KvmVerdict::Unusable(why) | KvmVerdict::Unprobed(why) => why,
        }
    }
}

/// What the decision is made from.
#[derive(Debug, Clone)]
pub struct Facts {
    pub kvm: KvmVerdict,
    /// The `firecracker` binary found, if any.
    pub firecracker: Option<PathBuf>,
    /// Sandboxes get network namespaces (not QEMU's user-mode network).
    pub namespaces: bool,
}

/// The backend to run, with the reason in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Qemu { accel: Accel, why: String },
    Firecracker { binary: PathBuf, why: String },
}

impl Choice {
    /// `"qemu (kvm): ..."` or `"firecracker: ..."`, as `doctor` shows it.
    pub fn describe(&self) -> String {
        match self {
            Choice::Qemu { accel, why } => format!("qemu ({accel}): {why}"),
            Choice::Firecracker { binary, why } => {
                format!("firecracker ({}): {why}", binary.display())
            }
        }
    }
}

/// The Firecracker binary when Firecracker can run here, else why not.
fn firecracker_usable(facts: &Facts) -> Result<&Path, String> {
    let Some(binary) = &facts.firecracker else {
        return Err(
            "no firecracker binary (PETREL_FIRECRACKER or PATH; it is in no Debian registry: \
             install Firecracker's release binary)"
                .to_string(),
        );
    };
    match &facts.kvm {
        KvmVerdict::Usable(_) => {}
        KvmVerdict::Unusable(why) => {
            return Err(format!(
                "KVM is not usable here ({why}), and Firecracker runs only on KVM"
            ));
        }
        KvmVerdict::Unprobed(why) => {
            return Err(format!(
                "KVM was not probed ({why}; or pass --accel kvm), and Firecracker runs only on KVM"
            ));
        }
    }
    if !facts.namespaces {
        return Err(
            "sandboxes use the user-mode network (not root, or --network user), which \
             Firecracker does not have: it needs network namespaces"
                .to_string(),
        );
    }
    Ok(binary)
}

/// The backend for `vmm` given `facts`; `Err`: `--vmm firecracker` cannot
/// run here, and why.
pub fn decide(vmm: VmmChoice, facts: &Facts) -> Result<Choice, String> {
    let qemu = |why: String| Choice::Qemu {
        accel: if facts.kvm.usable() {
            Accel::Kvm
        } else {
            Accel::Tcg
        },
        why,
    };
    let kvm = format!("KVM: {}", facts.kvm.reason());
    match (vmm, firecracker_usable(facts)) {
        (VmmChoice::Qemu, _) => Ok(qemu(format!("requested by --vmm; {kvm}"))),
        (VmmChoice::Firecracker, Err(why)) => Err(format!(
            "--vmm firecracker cannot run here: {why}; use --vmm qemu"
        )),
        (VmmChoice::Auto, Err(why)) => Ok(qemu(format!("{kvm}; not firecracker: {why}"))),
        (VmmChoice::Firecracker | VmmChoice::Auto, Ok(binary)) => Ok(Choice::Firecracker {
            binary: binary.to_path_buf(),
            why: format!(
                "{}; {kvm}; sandboxes have network namespaces",
                if vmm == VmmChoice::Auto {
                    "found, chosen by --vmm auto"
                } else {
                    "requested by --vmm"
                }
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kvm: bool, firecracker: bool, namespaces: bool) -> Facts {
        Facts {
            kvm: if kvm {
                KvmVerdict::Usable("probe VM reached init".into())
            } else {
                KvmVerdict::Unusable("probe VM never reached init".into())
            },
            firecracker: firecracker.then(|| PathBuf::from("/usr/local/bin/firecracker")),
            namespaces,
        }
    }

    #[test]
    fn auto_takes_firecracker_only_when_binary_kvm_and_namespaces_all_hold() {
        let all = decide(VmmChoice::Auto, &facts(true, true, true));
        let no_kvm = decide(VmmChoice::Auto, &facts(false, true, true));
        let no_binary = decide(VmmChoice::Auto, &facts(true, false, true));
        let no_netns = decide(VmmChoice::Auto, &facts(true, true, false));

        assert!(matches!(all, Ok(Choice::Firecracker { .. })), "{all:?}");
        assert!(
            matches!(&no_kvm, Ok(Choice::Qemu { accel: Accel::Tcg, why }) if why.contains("KVM is not usable")),
            "{no_kvm:?}"
        );
        assert!(
            matches!(&no_binary, Ok(Choice::Qemu { accel: Accel::Kvm, why }) if why.contains("no firecracker binary")),
            "{no_binary:?}"
        );
        assert!(
            matches!(&no_netns, Ok(Choice::Qemu { accel: Accel::Kvm, why }) if why.contains("user-mode network")),
            "{no_netns:?}"
        );
    }

    #[test]
    fn firecracker_request_is_refused_naming_what_is_missing() {
        let no_kvm = decide(VmmChoice::Firecracker, &facts(false, true, true)).unwrap_err();
        let no_binary = decide(VmmChoice::Firecracker, &facts(true, false, true)).unwrap_err();

        assert!(
            no_kvm.starts_with("--vmm firecracker cannot run here: KVM is not usable")
                && no_kvm.ends_with("use --vmm qemu"),
            "{no_kvm}"
        );
        assert!(no_binary.contains("PETREL_FIRECRACKER"), "{no_binary}");
    }

    #[test]
    fn qemu_request_stays_qemu_with_the_kvm_verdict() {
        let kvm = decide(VmmChoice::Qemu, &facts(true, true, true));
        let unprobed = decide(
            VmmChoice::Qemu,
            &Facts {
                kvm: KvmVerdict::Unprobed("no kernel/rootfs to probe KVM with".into()),
                firecracker: None,
                namespaces: true,
            },
        );

        assert!(
            matches!(
                kvm,
                Ok(Choice::Qemu {
                    accel: Accel::Kvm,
                    ..
                })
            ),
            "{kvm:?}"
        );
        assert!(
            matches!(&unprobed, Ok(Choice::Qemu { accel: Accel::Tcg, why }) if why.contains("no kernel/rootfs")),
            "{unprobed:?}"
        );
    }
}
