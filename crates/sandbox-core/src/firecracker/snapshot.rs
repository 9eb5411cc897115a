//! Firecracker's snapshots of one guest: a full save into a directory, and
//! a load into a fresh process whose memory the page server fills.

use super::host::{check_tap, copy_file, create_dir, file_size, move_into};
use super::layout::{
    GUEST_IFACE, MEM, REGIONS_RECORD, RESTORED_RECORD, Restored, UFFD_SOCKET, VMSTATE,
    forget_restored,
};
use super::{FirecrackerInstance, user_mode_refused};
use crate::error::SandboxError;
use crate::vmm::{PauseStats, VmNetwork};
use fc_client::{
    MemoryBackend, MemoryBackendType, NetworkOverride, SnapshotCreateParams, SnapshotLoadParams,
    SnapshotType,
};
use std::path::Path;
use std::time::{Duration, Instant};

impl FirecrackerInstance {
    /// Pauses the vCPUs and writes a full snapshot into `dir` (`vmstate`,
    /// `mem`). The files are written under new names and renamed into
    /// place, so a memory file that a page server still maps is never
    /// changed. The vCPUs stay paused on success; on failure they are
    /// resumed and the partial files removed.
    pub(super) async fn save(
        &self,
        dir: &Path,
        operation: &str,
    ) -> Result<PauseStats, SandboxError> {
        let start = Instant::now();
        create_dir(dir)?;
        let api = self.running(operation)?.client();
        api.pause().await.map_err(|e| self.error(e))?;
        let (vmstate, mem) = (dir.join(VMSTATE), dir.join(MEM));
        // Written where a confined Firecracker can write, then moved into
        // `dir` and made root's.
        let vmm_dir = self.vmm_dir();
        let (vmstate_new, mem_new) = (vmm_dir.join("vmstate.new"), vmm_dir.join("mem.new"));
        let params = SnapshotCreateParams {
            snapshot_type: SnapshotType::Full,
            snapshot_path: vmstate_new.clone(),
            mem_file_path: mem_new.clone(),
        };
        let saved = match api.create_snapshot(&params).await {
            Ok(()) => move_into(&vmstate_new, &vmstate).and_then(|()| move_into(&mem_new, &mem)),
            Err(err) => Err(self.error(err)),
        };
        if let Err(err) = saved {
            crate::disk::remove_file_if_exists(&vmstate_new)?;
            crate::disk::remove_file_if_exists(&mem_new)?;
            // Leave a running guest running when the save failed.
            if let Err(resume) = api.resume().await {
                tracing::warn!(vm = %self.spec.id, error = %resume, "cannot resume the guest after a failed save");
            }
            return Err(err);
        }
        Ok(PauseStats {
            took: start.elapsed(),
            state_bytes: file_size(&vmstate)? + file_size(&mem)?,
        })
    }

    /// Starts a fresh Firecracker and loads `dir/vmstate` into it, guest
    /// memory served from `memory` (a copy of `dir/mem`, or it) by a page
    /// server, reachable through `network`; the guest runs when this
    /// returns.
    pub(super) async fn load(
        &mut self,
        dir: &Path,
        memory: &Path,
        network: VmNetwork,
    ) -> Result<Duration, SandboxError> {
        let start = Instant::now();
        if self.process.is_some() {
            return Err(self.error("cannot restore: it is running"));
        }
        let VmNetwork::Tap { ifname, netns, .. } = &network else {
            return Err(user_mode_refused());
        };
        // Firecracker running as root silently makes a missing TAP, which
        // leaves the guest unreachable: make sure it is there.
        check_tap(ifname, netns.as_deref())
            .await
            .map_err(|e| self.error(e))?;
        // A page server left over by a failed restore of this VM.
        self.stop_page_server();
        let vmm_dir = self.vmm_dir();
        create_dir(&vmm_dir)?;
        let socket = vmm_dir.join(UFFD_SOCKET);
        crate::disk::remove_file_if_exists(&socket)?;
        // Recorded first: an agent that adopts this Firecracker later
        // serves its faults from the same file, with the same regions.
        forget_restored(&self.spec.run_dir)?;
        crate::qemu::write_json(
            &self.spec.run_dir.join(RESTORED_RECORD),
            &Restored {
                memory_file: memory.to_path_buf(),
            },
        )?;
        let options = uffd::ServerOptions {
            regions_record: Some(self.spec.run_dir.join(REGIONS_RECORD)),
            ..uffd::ServerOptions::default()
        };
        let server = uffd::UffdServer::bind_with_options(&socket, memory, options)
            .and_then(uffd::UffdServer::spawn)
            .map_err(|e| self.error(e))?;
        self.page_server = Some(server);
        let mut process = match self.spawn(&network).await {
            Ok(process) => process,
            Err(err) => {
                self.stop_page_server();
                return Err(err);
            }
        };
        // Firecracker reads its own copy of the (small) vmstate and
        // connects to the page server as its uid.
        let vmstate = vmm_dir.join(VMSTATE);
        let handed = copy_file(&dir.join(VMSTATE), &vmstate)
            .and_then(|()| self.give(&vmstate))
            .and_then(|()| self.give(&socket));
        if let Err(err) = handed {
            if let Err(kill) = process.kill().await {
                tracing::warn!(vm = %self.spec.id, error = %kill, "cannot kill Firecracker after a failed restore");
            }
            self.stop_page_server();
            self.release_cgroup();
            return Err(err);
        }
        let params = SnapshotLoadParams {
            mem_backend: MemoryBackend {
                backend_type: MemoryBackendType::Uffd,
                backend_path: socket,
            },
            resume_vm: Some(true),
            network_overrides: vec![NetworkOverride {
                iface_id: GUEST_IFACE.to_string(),
                host_dev_name: ifname.clone(),
            }],
            ..SnapshotLoadParams::from_file(vmstate, memory)
        };
        if let Err(err) = process.client().load_snapshot(&params).await {
            let err = self.error(err);
            if let Err(kill) = process.kill().await {
                tracing::warn!(vm = %self.spec.id, error = %kill, "cannot kill Firecracker after a failed load");
            }
            self.stop_page_server();
            self.release_cgroup();
            return Err(err);
        }
        self.process = Some(process);
        self.spec.network = network;
        Ok(start.elapsed())
    }
}
