//! Per-sandbox network namespaces (on `netns`): a pool of slots, each slot
//! one namespace with a TAP for the VM, NAT and the egress policy.
//!
//! The guest's own address is the same in every slot (169.254.0.21), so a
//! VM saved in one slot restores into any other; the host reaches a sandbox
//! through its slot's host-reachable address.

use std::ops::Range;

use netns::{EgressPolicy, Network, NetworkOptions, Slot, SlotAllocator};

use crate::error::SandboxError;

/// Slots the agent uses (the netns crate allows up to 32768).
pub const DEFAULT_SLOTS: Range<u16> = 1..4096;

/// Allocates slots and creates, adopts and removes sandbox networks.
#[derive(Debug)]
pub struct NetworkPool {
    slots: SlotAllocator,
}

fn net_err(what: impl std::fmt::Display) -> SandboxError {
    SandboxError::Network(what.to_string())
}

fn options(internet: bool) -> NetworkOptions {
    NetworkOptions {
        policy: EgressPolicy { internet },
        ..NetworkOptions::default()
    }
}

impl NetworkPool {
    pub fn new(slots: Range<u16>) -> Result<Self, SandboxError> {
        Ok(Self {
            slots: SlotAllocator::new(slots).map_err(net_err)?,
        })
    }

    /// A new network in a free slot; nothing is left behind on failure.
    pub async fn create(&self, internet: bool) -> Result<Network, SandboxError> {
        let slot = self.slots.allocate().map_err(net_err)?;
        match netns::create_network(slot, &options(internet)).await {
            Ok(network) => Ok(network),
            Err(err) => {
                let _ = self.slots.release(slot);
                Err(net_err(err))
            }
        }
    }

    /// Removes a network and frees its slot (also when some removal failed:
    /// the startup cleanup catches what is left).
    pub async fn remove(&self, network: Network) -> Result<(), SandboxError> {
        let slot = network.slot();
        let removed = netns::remove_network(network).await;
        let _ = self.slots.release(slot);
        removed.map_err(net_err)
    }

    /// Takes over the network of `slot` made by an earlier agent run.
    pub async fn adopt(&self, slot: u16, internet: bool) -> Result<Network, SandboxError> {
        let slot = Slot::new(u32::from(slot)).map_err(net_err)?;
        self.slots.reserve(slot).map_err(net_err)?;
        match netns::adopt_network(slot, &options(internet)).await {
            Ok(network) => Ok(network),
            Err(err) => {
                let _ = self.slots.release(slot);
                Err(net_err(err))
            }
        }
    }

    /// Removes networks of crashed runs: every `petrel-<slot>` namespace in
    /// the pool's range whose slot is not in use.
    pub async fn cleanup_stale(&self, in_use: &[u16]) -> Result<usize, SandboxError> {
        let range = self.slots.range();
        let mut stale: Vec<u16> = std::fs::read_dir(netns::NETNS_DIR)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_prefix(netns::NETNS_PREFIX)?
                            .parse()
                            .ok()
                    })
                    .filter(|slot| range.contains(slot) && !in_use.contains(slot))
                    .collect()
            })
            .unwrap_or_default();
        stale.sort_unstable();
        let mut errors = Vec::new();
        for slot in &stale {
            if let Err(err) = netns::cleanup_stale(*slot..*slot + 1).await {
                errors.push(err.to_string());
            }
        }
        if errors.is_empty() {
            Ok(stale.len())
        } else {
            Err(SandboxError::Teardown {
                resource: "stale sandbox networks".to_string(),
                errors,
            })
        }
    }
}
