//! The one namespace templates and snapshots share, and its atomic
//! reservations: a name being created (a snapshot being taken, a template
//! being registered) is held in a pending set under one lock, so two
//! concurrent creations of one name cannot both pass the "is it free?"
//! check; the second is a [`ManagerError::Conflict`]. The reservation ends
//! when its guard drops: after the record is stored, or on failure.

use std::collections::HashSet;
use std::sync::Mutex;

use super::{Manager, ManagerError, SafeName, SnapshotInfo, Table, TemplateInfo, lock};

/// What a name is reserved for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NameUse {
    /// A new snapshot: the name must be neither a snapshot nor a template.
    Snapshot,
    /// A template registration: it may replace the template of that name,
    /// never a snapshot.
    Template,
}

/// A name held while it is being created (released on drop).
#[derive(Debug)]
pub(super) struct NameReservation<'a> {
    pending: &'a Mutex<HashSet<String>>,
    name: String,
}

impl Drop for NameReservation<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.name);
    }
}

impl Manager {
    /// Reserves `name` for `purpose`: refused with
    /// [`ManagerError::Conflict`] when another creation holds it, or when a
    /// snapshot (or, for a snapshot, a template) of that name exists. The
    /// check and the reservation happen under one lock.
    pub(super) fn reserve_name(
        &self,
        name: &SafeName,
        purpose: NameUse,
    ) -> Result<NameReservation<'_>, ManagerError> {
        let mut pending = lock(&self.inner.names_pending);
        if pending.contains(name.as_str()) {
            return Err(ManagerError::Conflict(format!(
                "a template or snapshot named {name} is being created"
            )));
        }
        {
            let store = lock(&self.inner.store);
            let snapshot = store
                .get::<SnapshotInfo>(Table::Snapshots, name.as_str())?
                .is_some();
            let template = purpose == NameUse::Snapshot
                && store
                    .get::<TemplateInfo>(Table::Templates, name.as_str())?
                    .is_some();
            if snapshot || template {
                return Err(ManagerError::Conflict(format!(
                    "a {} named {name} exists",
                    if snapshot { "snapshot" } else { "template" }
                )));
            }
        }
        pending.insert(name.to_string());
        Ok(NameReservation {
            pending: &self.inner.names_pending,
            name: name.to_string(),
        })
    }
}
