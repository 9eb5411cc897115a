//! The Firecracker backend (on `fc-client`).
//!
//! Needs a `firecracker` binary and a usable KVM. Guests get their root disk
//! as a raw image or block device and their network through a TAP device;
//! Firecracker has no user-mode network.
//!
//! Pause and snapshots use Firecracker's own snapshots: `vmstate` (vCPU and
//! device state) and `mem` (all of guest memory) in the state or snapshot
//! directory. Resume and start from a snapshot load them into a fresh
//! process with the Uffd memory backend: a page server thread of this
//! process ([`uffd::UffdServer`]) fills guest pages from `mem` on first
//! touch, so the file is shared read-only by every VM restored from it and
//! must not change while they live (a later save writes new files and
//! renames them into place). A resumed guest is served from `run_dir/memory`,
//! a second name of its saved `mem`, as the state dir goes once it ran. A restored Firecracker is adoptable after an
//! agent restart: the run directory records which memory file it was
//! restored from and its page-server handshake's regions, and
//! [`Hypervisor::adopt`] starts a page server that takes the process's
//! userfaultfd over ([`uffd::UffdServer::spawn_adopted`]); between the two
//! agents the guest waits on its next page fault.
//!
//! Firecracker works in its own directory `run_dir/vmm` (its API and page
//! server sockets, snapshot files while it writes them) and opens the root
//! disk as `rootfs`, a symlink there to the spec's disk: the path saved in
//! a snapshot is then relative, and a VM restored from it opens its own
//! disk, never the disk of the VM that was saved.
//!
//! When the agent runs as root, each Firecracker is confined as its jailer
//! would: its own uid from a range with no capabilities, a private mount
//! namespace holding only its directory, kernel, root disk, `/dev/kvm`,
//! `/dev/net/tun` and a `/dev/userfaultfd` node of its own, rlimits, a
//! cgroup sized from the VM, in the sandbox's network namespace, under
//! Firecracker's own seccomp filter (see [`crate::confine`]). It writes
//! snapshots into its directory; the agent moves them into place, owned by
//! root, and gives a restored Firecracker a copy of `vmstate`. No PID
//! namespace: Firecracker stays the agent's direct child, as QEMU does.
//!
//! Here the backend ([`FirecrackerBackend`]: create, adopt, leftovers);
//! `instance.rs` one guest's process and its [`Vm`] operations,
//! `snapshot.rs` its saves and loads, `layout.rs` where its files live,
//! `host.rs` and `console.rs` the host-side file and console helpers.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use fc_client::{FirecrackerConfig, FirecrackerProcess};

mod console;
mod host;
mod instance;
mod layout;
mod snapshot;

use instance::FirecrackerInstance;
use layout::{
    API_SOCKET, MEM, REGIONS_RECORD, ROOTFS_LINK, SNAPSHOT_DISK, UFFD_SOCKET, VMM_DIR, VMSTATE,
    restored_from,
};

use host::check_socket_paths;

use crate::confine::VmmConfinement;
use crate::error::SandboxError;
use crate::vmm::{BackendKind, Hypervisor, Vm, VmSpec};

/// Runs guests with Firecracker.
#[derive(Debug, Clone)]
pub struct FirecrackerBackend {
    pub binary: PathBuf,
    /// How each Firecracker is confined; `Err`: not at all, and why.
    pub confinement: Result<VmmConfinement, String>,
}

impl FirecrackerBackend {
    /// The backend if a `firecracker` binary is found (`PETREL_FIRECRACKER`
    /// or PATH), confined ([`VmmConfinement::for_host`]) when the agent
    /// runs as root.
    pub fn find() -> Option<Self> {
        fc_client::find_firecracker().map(Self::with_binary)
    }

    /// The backend running `binary`, confined as [`FirecrackerBackend::find`]'s.
    pub fn with_binary(binary: PathBuf) -> Self {
        // Absolute: a confined Firecracker starts in its own directory.
        let binary = std::path::absolute(&binary).unwrap_or(binary);
        let confinement = VmmConfinement::for_host(BackendKind::Firecracker);
        if let Err(why) = &confinement {
            tracing::warn!(%why, "Firecracker runs unconfined");
        }
        Self {
            binary,
            confinement,
        }
    }
}

#[async_trait]
impl Hypervisor for FirecrackerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }

    async fn create(&self, spec: VmSpec) -> Result<Box<dyn Vm>, SandboxError> {
        if spec.root_disk_qcow2 {
            return Err(SandboxError::Unsupported {
                backend: "firecracker",
                what: "boot from a qcow2 disk (it needs a raw image or block device)".to_string(),
            });
        }
        if !spec.extra_drives.is_empty() {
            return Err(SandboxError::Unsupported {
                backend: "firecracker",
                what: "attach extra drives".to_string(),
            });
        }
        // The network is checked where it is used (start, restore): a
        // paused VM is prepared before it has one.
        check_socket_paths(&spec)?;
        Ok(Box::new(FirecrackerInstance {
            binary: self.binary.clone(),
            spec,
            process: None,
            page_server: None,
            confinement: self.confinement.as_ref().ok().cloned(),
            uid: None,
            cgroup: None,
            console: None,
        }))
    }

    /// Takes over Firecracker `pid` (started by an earlier agent run); a
    /// guest restored from a snapshot gets a new page server that takes
    /// the process's userfaultfd over (see
    /// [`uffd::UffdServer::spawn_adopted`]).
    async fn adopt(&self, spec: VmSpec, pid: u32) -> Result<Box<dyn Vm>, SandboxError> {
        let error = |message: String| SandboxError::Firecracker {
            vm: spec.id.clone(),
            message,
        };
        let vmm_dir = spec.run_dir.join(VMM_DIR);
        let mut config = FirecrackerConfig::new(&self.binary, vmm_dir.join(API_SOCKET), &spec.id);
        config.log_path = Some(spec.console_log());
        // Drained first: Firecracker may be waiting on a full console FIFO
        // (it logs the API request below there too). It holds its own
        // writer and keeper: ours are not needed.
        let (console, _writer, _keeper) =
            console::Drain::start(&spec.id, &spec.run_dir, &spec.console_log())?;
        let process = FirecrackerProcess::adopt(pid, config)
            .await
            .map_err(|e| error(e.to_string()))?;
        let page_server = match restored_from(&spec.run_dir)? {
            Some(restored) => Some(
                uffd::UffdServer::spawn_adopted(
                    pid,
                    vmm_dir.join(UFFD_SOCKET),
                    restored.memory_file,
                    &spec.run_dir.join(REGIONS_RECORD),
                    uffd::ServerOptions::default(),
                )
                .map_err(|e| error(e.to_string()))?,
            ),
            None => None,
        };
        let confinement = self.confinement.as_ref().ok().cloned();
        let cgroup = confinement
            .as_ref()
            .and_then(|c| c.cgroup(&spec.id, &spec.run_dir));
        let uid = match confinement {
            Some(_) => Some(host::process_uid(pid)?),
            None => None,
        };
        Ok(Box::new(FirecrackerInstance {
            binary: self.binary.clone(),
            spec,
            process: Some(process),
            page_server,
            confinement,
            uid,
            cgroup,
            console: Some(console),
        }))
    }

    fn release_leftovers(&self, id: &str, run_dir: &Path) {
        if let Some(cgroup) = self
            .confinement
            .as_ref()
            .ok()
            .and_then(|c| c.cgroup(id, run_dir))
            && let Err(err) = cgroup.remove()
        {
            tracing::warn!(vm = %id, %err, "cannot remove the cgroup of a lost VM");
        }
    }

    /// The save renames its memory file into place last.
    fn saved_state_complete(&self, state_dir: &Path) -> bool {
        state_dir.join(VMSTATE).is_file() && state_dir.join(MEM).is_file()
    }

    /// A raw copy of the root disk (Firecracker has no qcow2).
    fn snapshot_disk(&self, snapshot_dir: &Path) -> (PathBuf, crate::disk::DiskFormat) {
        (
            snapshot_dir.join(SNAPSHOT_DISK),
            crate::disk::DiskFormat::Raw,
        )
    }
}

/// Firecracker refuses user-mode networks: it needs a TAP device.
fn user_mode_refused() -> SandboxError {
    SandboxError::Unsupported {
        backend: "firecracker",
        what: "use a user-mode network (it needs a TAP device)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::VmNetwork;

    /// A spec on a TAP in `run_dir` (also for `host`'s tests).
    pub(super) fn tap_spec(run_dir: &str) -> VmSpec {
        VmSpec {
            id: "vm1".to_string(),
            vcpus: 1,
            memory_mib: 128,
            kernel: PathBuf::from("/vmlinux"),
            kernel_args: String::new(),
            root_disk: PathBuf::from("/disk.raw"),
            root_disk_qcow2: false,
            extra_drives: Vec::new(),
            network: VmNetwork::Tap {
                ifname: "tap0".to_string(),
                mac: "02:00:00:00:00:01".to_string(),
                netns: None,
            },
            run_dir: PathBuf::from(run_dir),
            base_image: None,
        }
    }

    #[tokio::test]
    async fn create_and_start_refuse_what_firecracker_cannot_do_saying_so() {
        let backend = FirecrackerBackend {
            binary: PathBuf::from("/nonexistent/firecracker"),
            confinement: Err("a unit test".to_string()),
        };
        let refusal = |spec: VmSpec| {
            let backend = backend.clone();
            async move {
                match backend.create(spec).await {
                    Err(SandboxError::Unsupported { backend, what }) => {
                        format!("{backend}: {what}")
                    }
                    other => panic!("expected a refusal, got {other:?}"),
                }
            }
        };
        let run_dir = "/var/lib/petrel/sandboxes/vm1";

        let mut user_mode_vm = backend
            .create(VmSpec {
                network: VmNetwork::UserForward {
                    host: "127.0.0.1:1".parse().unwrap(),
                },
                ..tap_spec(run_dir)
            })
            .await
            .unwrap();
        let user_mode = match user_mode_vm.start().await {
            Err(SandboxError::Unsupported { backend, what }) => format!("{backend}: {what}"),
            other => panic!("expected a refusal, got {other:?}"),
        };
        let qcow2 = refusal(VmSpec {
            root_disk_qcow2: true,
            ..tap_spec(run_dir)
        })
        .await;
        let drives = refusal(VmSpec {
            extra_drives: vec![PathBuf::from("/data.img")],
            ..tap_spec(run_dir)
        })
        .await;

        assert!(user_mode.contains("user-mode network"), "{user_mode}");
        assert!(qcow2.contains("qcow2"), "{qcow2}");
        assert!(drives.contains("extra drives"), "{drives}");
    }
}
