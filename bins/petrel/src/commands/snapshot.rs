//! `petrel snapshot list|delete`.

use anyhow::Result;
use chrono::Utc;

use crate::client::{Client, segment};
use crate::output::table::Table;
use crate::output::{self, Snapshot};

pub async fn list(client: &Client, json: bool) -> Result<u8> {
    let reply = client.get("/v1/snapshots").await?;
    if json {
        output::print_json(&reply)?;
        return Ok(0);
    }
    let snapshots: Vec<Snapshot> = output::view(&reply.value)?;
    if snapshots.is_empty() {
        eprintln!("no snapshots");
        return Ok(0);
    }
    output::print(&snapshot_table(&snapshots))?;
    Ok(0)
}

/// The human form of `list`.
pub fn snapshot_table(snapshots: &[Snapshot]) -> String {
    let now = Utc::now();
    let mut table = Table::new(["NAME", "SANDBOX", "TEMPLATE", "SIZE", "CREATED"]);
    for s in snapshots {
        table.row([
            s.name.clone(),
            s.sandbox_id.clone(),
            s.template.clone(),
            output::size(s.size_bytes),
            output::relative(&s.created_at, now),
        ]);
    }
    table.render()
}

/// Deletes `names` one after the other; stops at the first failure.
pub async fn delete(client: &Client, names: &[String]) -> Result<u8> {
    for name in names {
        client
            .delete(&format!("/v1/snapshots/{}", segment(name)))
            .await?;
        output::print(&format!("{name} deleted\n"))?;
    }
    Ok(0)
}
