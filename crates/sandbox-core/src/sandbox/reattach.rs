//! Handing a sandbox from one agent run to the next: detach at shutdown,
//! reattach at start.

use super::{
    Attach, BootTimings, Sandbox, SandboxConfig, SandboxRecord, SandboxState, root_base, vm_spec,
};
use crate::disk;
use crate::error::SandboxError;
use crate::network::NetworkPool;
use crate::vmm::Hypervisor;
use envd_client::EnvdClient;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

impl Sandbox {
    /// Takes over a sandbox of an earlier agent run: a running one by
    /// adopting its VMM process (it must still run and envd answer), a
    /// paused one as it lies on disk.
    pub async fn reattach(
        hypervisor: &dyn Hypervisor,
        record: SandboxRecord,
        pool: Option<Arc<NetworkPool>>,
    ) -> Result<Self, SandboxError> {
        let rc = record.config;
        let config = SandboxConfig {
            vcpus: rc.vcpus,
            memory_mib: rc.memory_mib,
            env_vars: rc.env_vars,
            snapshot: rc.snapshot,
            network: pool.clone(),
            // A user-mode sandbox is isolated whatever an older record says.
            internet: Some(rc.internet && pool.is_some()),
            egress: rc.egress,
            extra_drives: rc.extra_drives,
            ..SandboxConfig::new(rc.id, rc.images, rc.data_dir)
        };
        let run_dir = config.data_dir.join("sandboxes").join(&config.id);
        let provider = disk::provider_of(&run_dir)?;
        let placeholder = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut net = None;
        let (vm, envd) = match (record.state, record.vmm_pid, record.envd_addr) {
            (SandboxState::Running, Some(pid), Some(addr)) => {
                // The VM runs on its disk: a dm device is taken over as is.
                let (base, _) = root_base(hypervisor, &config.images, config.snapshot.as_deref());
                provider.restore(&config.id, &base, &run_dir).await?;
                let adopted: Result<_, SandboxError> = async {
                    let attach = match (record.net_slot, &pool) {
                        (Some(slot), Some(pool)) => Attach::Namespace(
                            net.insert(
                                pool.adopt(slot, config.internet.unwrap_or(true), &config.egress)
                                    .await?,
                            ),
                        ),
                        (Some(slot), None) => {
                            return Err(SandboxError::Network(format!(
                                "sandbox {} ran in network slot {slot} but no network pool is configured",
                                config.id
                            )));
                        }
                        (None, _) => Attach::User(addr),
                    };
                    let mut vm = hypervisor
                        .adopt(vm_spec(&config, &run_dir, &attach), pid)
                        .await?;
                    // An agent that crashed mid-pause or mid-snapshot left
                    // the vCPUs stopped.
                    if vm.continue_if_stopped().await? {
                        tracing::info!(sandbox = %config.id, "adopted guest was stopped: continued");
                    }
                    let envd = EnvdClient::new(addr).with_access_token(record.token.clone());
                    // A slow guest is kept: it is waited for in the
                    // background, and the agent serves meanwhile.
                    if envd.wait_healthy(Duration::from_millis(500)).await.is_err() {
                        let (id, slow) = (config.id.clone(), envd.clone());
                        let patience = config.boot_timeout;
                        tokio::spawn(async move {
                            match slow.wait_healthy(patience).await {
                                Ok(took) => tracing::info!(sandbox = %id, took_ms = took.as_millis() as u64, "adopted guest's envd answers"),
                                Err(err) => tracing::warn!(sandbox = %id, %err, "adopted guest's envd does not answer; kept running (destroy it if it stays so)"),
                            }
                        });
                    }
                    Ok((vm, envd))
                }
                .await;
                match adopted {
                    Ok(adopted) => adopted,
                    Err(err) => {
                        // What was taken over goes back (the caller cleans up).
                        if let (Some(pool), Some(net)) = (&pool, net.take()) {
                            let _ = pool.remove(net).await;
                        }
                        if let Err(undo) = provider.release(&config.id, &run_dir).await {
                            tracing::warn!(sandbox = %config.id, %undo, "releasing the disk of a failed reattach");
                        }
                        return Err(err);
                    }
                }
            }
            (SandboxState::Paused | SandboxState::Broken, _, _) => {
                let vm = hypervisor
                    .create(vm_spec(&config, &run_dir, &Attach::User(placeholder)))
                    .await?;
                (vm, EnvdClient::new(placeholder))
            }
            (state, pid, addr) => {
                return Err(SandboxError::InvalidState {
                    sandbox: config.id,
                    operation: format!("reattach (pid {pid:?}, envd {addr:?})"),
                    state,
                });
            }
        };
        tracing::info!(sandbox = %config.id, state = ?record.state, "sandbox reattached");
        let base = root_base(hypervisor, &config.images, config.snapshot.as_deref());
        Ok(Self {
            id: config.id,
            run_dir,
            vm,
            envd,
            token: record.token,
            images: config.images,
            data_dir: config.data_dir,
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            snapshot: config.snapshot,
            env_vars: config.env_vars,
            boot_timeout: config.boot_timeout,
            state: record.state,
            timings: BootTimings::default(),
            pool,
            net,
            internet: config.internet.unwrap_or(false),
            egress: config.egress,
            provider,
            root_base: base,
            extra_drives: config.extra_drives,
        })
    }

    /// Leaves the VMM process running when this handle is dropped (agent
    /// shutdown: sandboxes keep running and are reattached at the next
    /// start).
    pub fn detach(self) -> SandboxRecord {
        let record = self.record();
        self.vm.detach();
        record
    }
}
