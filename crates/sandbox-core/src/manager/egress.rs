//! Changing a sandbox's own egress ranges while it runs or is paused.

use super::{Manager, ManagerError, Persisted, SandboxInfo, State};
use crate::network::EgressRules;

impl Manager {
    /// Replaces sandbox `id`'s own allow and deny ranges (E2B's
    /// `update_network`; empty rules clear them): at once on a running
    /// sandbox's network, cutting open connections to ranges now denied,
    /// and for a paused one at its resume. Kept across agent restarts.
    pub async fn set_egress(
        &self,
        id: &str,
        egress: EgressRules,
    ) -> Result<SandboxInfo, ManagerError> {
        self.check_egress(&egress, self.get(id)?.internet)?;
        let handle = self.handle(id)?;
        let mut guard = handle.lock().await;
        self.require(
            id,
            &[State::Running, State::Paused],
            "change the egress rules of",
        )?;
        let sandbox = guard
            .as_mut()
            .ok_or_else(|| ManagerError::SandboxNotFound(id.to_string()))?;
        sandbox.set_egress(egress.clone()).await?;
        let info = self.update_info(id, |info| info.egress = egress)?;
        self.save(&Persisted {
            info: info.clone(),
            record: Some(sandbox.record()),
        })?;
        tracing::info!(sandbox = %id, allow = info.egress.allow.len(), deny = info.egress.deny.len(), names = info.egress.names.len(), "egress rules set");
        Ok(info)
    }

    /// Refuses egress rules where sandboxes have no namespace to hold them
    /// (QEMU's user-mode network), and names that could let nothing
    /// through (a sandbox with `internet` whose ranges deny nothing); no
    /// rules are always fine.
    pub(super) fn check_egress(
        &self,
        egress: &EgressRules,
        internet: bool,
    ) -> Result<(), ManagerError> {
        if let Some(problem) = egress.problem(internet) {
            return Err(ManagerError::InvalidRequest(problem));
        }
        if egress.is_empty() || self.config().network.is_some() {
            return Ok(());
        }
        Err(ManagerError::InvalidRequest(
            "egress rules need per-sandbox network namespaces (agent running as root, \
             network mode \"namespace\")"
                .to_string(),
        ))
    }
}
