//! The per-sandbox state machine: lookups, checked transitions, and
//! their persistence.

use super::{
    Handle, Manager, ManagerError, Persisted, Sandbox, SandboxInfo, SandboxRecord, SandboxState,
    State, Table, lock,
};

impl Manager {
    pub(super) fn handle(&self, id: &str) -> Result<Handle, ManagerError> {
        lock(&self.inner.handles)
            .get(id)
            .cloned()
            .ok_or_else(|| ManagerError::SandboxNotFound(id.to_string()))
    }

    pub(super) fn require(
        &self,
        id: &str,
        allowed: &[State],
        operation: &'static str,
    ) -> Result<State, ManagerError> {
        let state = self.get(id)?.state;
        if allowed.contains(&state) {
            Ok(state)
        } else {
            Err(ManagerError::InvalidState {
                id: id.to_string(),
                state,
                operation,
            })
        }
    }

    /// Moves `id` from one of `from` to `to`, admitted by
    /// [`Manager::admit`] (capacity, paused quota) under the same lock.
    pub(super) fn transition(
        &self,
        id: &str,
        from: &[State],
        to: State,
        operation: &'static str,
    ) -> Result<(), ManagerError> {
        let mut infos = lock(&self.inner.infos);
        let state = infos
            .get(id)
            .ok_or_else(|| ManagerError::SandboxNotFound(id.to_string()))?
            .state;
        if !from.contains(&state) {
            return Err(ManagerError::InvalidState {
                id: id.to_string(),
                state,
                operation,
            });
        }
        self.admit(&infos, Some(state), to)?;
        if let Some(info) = infos.get_mut(id) {
            info.state = to;
        }
        Ok(())
    }

    /// Makes the state `id` has now (a transitional one: starting,
    /// pausing, resuming, stopping) durable with `record`, before the step
    /// it announces touches the host: after a crash, recovery reads what
    /// was about to happen from it (see `recovery.rs`).
    pub(super) fn record_intent(
        &self,
        id: &str,
        record: Option<SandboxRecord>,
    ) -> Result<(), ManagerError> {
        let info = self.get(id)?;
        self.save(&Persisted { info, record })
    }

    /// Drops a sandbox that never came to be (a failed create) from memory
    /// and from the store.
    pub(super) fn forget(&self, id: &str) {
        lock(&self.inner.infos).remove(id);
        lock(&self.inner.handles).remove(id);
        if let Err(err) = lock(&self.inner.store).delete(Table::Sandboxes, id) {
            tracing::warn!(sandbox = %id, %err, "cannot remove the record of a failed create");
        }
    }

    pub(super) fn set_state(&self, id: &str, state: State) {
        if let Some(info) = lock(&self.inner.infos).get_mut(id) {
            info.state = state;
        }
    }

    /// Changes `id`'s info in memory by `update`; returns the new info.
    pub(super) fn update_info(
        &self,
        id: &str,
        update: impl FnOnce(&mut SandboxInfo),
    ) -> Result<SandboxInfo, ManagerError> {
        let mut infos = lock(&self.inner.infos);
        let info = infos
            .get_mut(id)
            .ok_or_else(|| ManagerError::SandboxNotFound(id.to_string()))?;
        update(info);
        Ok(info.clone())
    }

    pub(super) fn finish(
        &self,
        id: &str,
        sandbox: &Sandbox,
        state: State,
        update: impl FnOnce(&mut SandboxInfo),
    ) -> Result<SandboxInfo, ManagerError> {
        let info = self.update_info(id, |info| {
            info.state = state;
            info.error = None;
            update(info);
        })?;
        self.save(&Persisted {
            info: info.clone(),
            record: Some(sandbox.record()),
        })?;
        Ok(info)
    }

    /// Records a failed operation. The sandbox keeps the state its VM is
    /// really in (a failed pause leaves it running; a failed resume leaves
    /// it paused, saved again if the guest had run), `error` when its saved
    /// state no longer holds (files kept until destroyed).
    pub(super) fn fail(
        &self,
        id: &str,
        sandbox: &Sandbox,
        err: crate::SandboxError,
    ) -> Result<SandboxInfo, ManagerError> {
        let state = match sandbox.state() {
            SandboxState::Running => State::Running,
            SandboxState::Paused => State::Paused,
            SandboxState::Broken => State::Error,
        };
        let message = err.to_string();
        let _ = self.finish(id, sandbox, state, |info| info.error = Some(message));
        Err(err.into())
    }

    pub(super) fn save(&self, persisted: &Persisted) -> Result<(), ManagerError> {
        lock(&self.inner.store).put(Table::Sandboxes, &persisted.info.id, persisted)
    }

    pub(super) fn save_info(&self, info: &SandboxInfo) -> Result<(), ManagerError> {
        let store = lock(&self.inner.store);
        let mut persisted: Persisted = store
            .get(Table::Sandboxes, &info.id)?
            .ok_or_else(|| ManagerError::SandboxNotFound(info.id.clone()))?;
        persisted.info = info.clone();
        store.put(Table::Sandboxes, &info.id, &persisted)
    }
}

impl State {
    /// States in which the sandbox holds (or is about to hold) a VM.
    pub(super) fn holds_vm(self) -> bool {
        matches!(
            self,
            State::Starting | State::Running | State::Pausing | State::Resuming
        )
    }
}
