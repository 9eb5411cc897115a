//! `petrel template list|delete`.

use anyhow::Result;
use chrono::Utc;

use crate::client::{Client, segment};
use crate::output::table::Table;
use crate::output::{self, Template};

pub async fn list(client: &Client, json: bool) -> Result<u8> {
    let reply = client.get("/v1/templates").await?;
    if json {
        output::print_json(&reply)?;
        return Ok(0);
    }
    let templates: Vec<Template> = output::view(&reply.value)?;
    if templates.is_empty() {
        eprintln!("no templates");
        return Ok(0);
    }
    output::print(&template_table(&templates))?;
    Ok(0)
}

/// The human form of `list`.
pub fn template_table(templates: &[Template]) -> String {
    let now = Utc::now();
    let mut table = Table::new(["NAME", "SIZE", "CREATED", "SOURCE", "ROOTFS"]);
    for t in templates {
        table.row([
            t.name.clone(),
            output::size(t.size_bytes),
            output::relative(&t.created_at, now),
            t.source.clone(),
            t.rootfs.clone(),
        ]);
    }
    table.render()
}

/// Deletes `names` one after the other; stops at the first failure.
pub async fn delete(client: &Client, names: &[String]) -> Result<u8> {
    for name in names {
        client
            .delete(&format!("/v1/templates/{}", segment(name)))
            .await?;
        output::print(&format!("{name} deleted\n"))?;
    }
    Ok(0)
}
