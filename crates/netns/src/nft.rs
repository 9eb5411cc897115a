//! Running `nft` (in the host or inside a namespace), finding the host rules
//! tagged for a slot and removing them by handle.
//!
//! Host tables are shared by all slots. Adding is idempotent, and removal of
//! a slot's rules (plus the tables once they hold no rule) happens under an
//! exclusive `flock` on [`HOST_LOCK`], which every Petrel process takes
//! around host ruleset changes, so a table is never dropped while another
//! creator is adding to it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::process::Stdio;

use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::addressing::slot_of_tag;
use crate::error::{HOST_NETNS, NetError};
use crate::namespace::command_in_netns;
use crate::policy::{FILTER_TABLE, NAT_TABLE};

/// Lock file serialising host ruleset changes between Petrel processes.
pub const HOST_LOCK: &str = "/run/petrel-netns.lock";

/// Host tables: family, name.
pub(crate) const HOST_TABLES: [(&str, &str); 2] = [("ip", NAT_TABLE), ("inet", FILTER_TABLE)];

fn nft_err(what: impl Into<String>, netns: &str, detail: impl Into<String>) -> NetError {
    NetError::Nft {
        what: what.into(),
        netns: netns.into(),
        detail: detail.into(),
    }
}

/// Runs `nft ARGS` (in the namespace at `netns` if given) feeding `stdin`,
/// and returns its standard output.
async fn run(
    netns: Option<(&Path, &str)>,
    what: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, NetError> {
    let label = netns.map_or(HOST_NETNS, |(_, l)| l);
    let mut cmd = tokio::process::Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some((path, _)) = netns {
        command_in_netns(cmd.as_std_mut(), path)?;
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| nft_err(what, label, format!("cannot run nft: {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|e| nft_err(what, label, format!("writing ruleset to nft: {e}")))?;
        drop(pipe);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| nft_err(what, label, format!("waiting for nft: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(nft_err(
            what,
            label,
            format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }
}

/// Applies a ruleset (`nft -f -`, one atomic transaction).
pub(crate) async fn apply(
    netns: Option<(&Path, &str)>,
    what: &str,
    ruleset: &str,
) -> Result<(), NetError> {
    run(netns, what, &["-f", "-"], Some(ruleset))
        .await
        .map(drop)
}

/// Exclusive hold on [`HOST_LOCK`]; released on drop.
#[derive(Debug)]
pub(crate) struct HostLock {
    _held: Flock<File>,
}

/// Takes the host ruleset lock (waiting for other holders).
pub(crate) async fn lock_host() -> Result<HostLock, NetError> {
    let locked = tokio::task::spawn_blocking(|| {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(HOST_LOCK)
            .map_err(|e| format!("open {HOST_LOCK}: {e}"))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| format!("flock {HOST_LOCK}: {e}"))
    })
    .await
    .map_err(|e| nft_err("host lock", HOST_NETNS, e.to_string()))?
    .map_err(|e| nft_err("host lock", HOST_NETNS, e))?;
    Ok(HostLock { _held: locked })
}

/// A host rule carrying a slot tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaggedRule {
    pub family: String,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub slot: u16,
}

/// What the host's Petrel tables hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct HostListing {
    pub tagged: Vec<TaggedRule>,
    /// Rules per existing Petrel table (tagged or not), keyed by
    /// (family, table).
    pub rule_counts: BTreeMap<(String, String), usize>,
}

/// Parses `nft -j -a list ruleset` output, keeping the Petrel tables.
pub(crate) fn parse_listing(json: &str) -> Result<HostListing, String> {
    let root: Value = serde_json::from_str(json).map_err(|e| format!("bad nft JSON: {e}"))?;
    let items = root
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("nft JSON without an nftables array")?;
    let ours = |family: &str, table: &str| HOST_TABLES.contains(&(family, table));
    let mut listing = HostListing::default();
    for item in items {
        if let Some(t) = item.get("table") {
            let (family, name) = (str_field(t, "family"), str_field(t, "name"));
            if ours(family, name) {
                listing
                    .rule_counts
                    .entry((family.into(), name.into()))
                    .or_insert(0);
            }
        }
        let Some(r) = item.get("rule") else { continue };
        let (family, table) = (str_field(r, "family"), str_field(r, "table"));
        if !ours(family, table) {
            continue;
        }
        *listing
            .rule_counts
            .entry((family.into(), table.into()))
            .or_insert(0) += 1;
        let slot = r
            .get("comment")
            .and_then(Value::as_str)
            .and_then(slot_of_tag);
        let handle = r.get("handle").and_then(Value::as_u64);
        if let (Some(slot), Some(handle)) = (slot, handle) {
            listing.tagged.push(TaggedRule {
                family: family.into(),
                table: table.into(),
                chain: str_field(r, "chain").into(),
                handle,
                slot,
            });
        }
    }
    Ok(listing)
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Lists the host's Petrel tables.
pub(crate) async fn list_host() -> Result<HostListing, NetError> {
    let json = run(None, "list ruleset", &["-j", "-a", "list", "ruleset"], None).await?;
    parse_listing(&json).map_err(|e| nft_err("list ruleset", HOST_NETNS, e))
}

/// The batch deleting the tagged rules of the slots `remove` selects, and
/// every Petrel table left without rules. `None` if there is nothing to do.
pub(crate) fn removal_batch(listing: &HostListing, remove: impl Fn(u16) -> bool) -> Option<String> {
    let mut out = String::new();
    let mut left = listing.rule_counts.clone();
    for r in listing.tagged.iter().filter(|r| remove(r.slot)) {
        let _ = writeln!(
            out,
            "delete rule {} {} {} handle {}",
            r.family, r.table, r.chain, r.handle
        );
        if let Some(n) = left.get_mut(&(r.family.clone(), r.table.clone())) {
            *n = n.saturating_sub(1);
        }
    }
    for ((family, table), _) in left.iter().filter(|(_, n)| **n == 0) {
        let _ = writeln!(out, "delete table {family} {table}");
    }
    (!out.is_empty()).then_some(out)
}

/// Removes the host rules of the slots `remove` selects, and the Petrel
/// tables once empty; returns how many rules were removed. Takes the host
/// lock.
pub(crate) async fn remove_host_rules(
    what: &str,
    remove: impl Fn(u16) -> bool,
) -> Result<usize, NetError> {
    let _lock = lock_host().await?;
    let listing = list_host().await?;
    let count = listing.tagged.iter().filter(|r| remove(r.slot)).count();
    match removal_batch(&listing, remove) {
        Some(batch) => apply(None, what, &batch).await.map(|()| count),
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = r#"{"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "ip", "name": "petrel_nat", "handle": 1}},
        {"chain": {"family": "ip", "table": "petrel_nat", "name": "postrouting", "handle": 1}},
        {"rule": {"family": "ip", "table": "petrel_nat", "chain": "postrouting", "handle": 4, "comment": "petrel-slot-3", "expr": []}},
        {"rule": {"family": "ip", "table": "petrel_nat", "chain": "postrouting", "handle": 5, "comment": "petrel-slot-9", "expr": []}},
        {"table": {"family": "inet", "name": "petrel_filter", "handle": 2}},
        {"rule": {"family": "inet", "table": "petrel_filter", "chain": "input", "handle": 7, "comment": "petrel-slot-3", "expr": []}},
        {"table": {"family": "inet", "name": "other", "handle": 3}},
        {"rule": {"family": "inet", "table": "other", "chain": "input", "handle": 2, "comment": "petrel-slot-3", "expr": []}}
    ]}"#;

    #[test]
    fn listing_keeps_only_petrel_tables() {
        let listing = parse_listing(LISTING).unwrap();

        assert_eq!(listing.tagged.len(), 3);
        assert_eq!(listing.rule_counts.len(), 2);
        assert_eq!(
            listing.rule_counts[&("ip".to_string(), NAT_TABLE.to_string())],
            2
        );
    }

    #[test]
    fn removal_deletes_slot_rules_and_tables_left_empty() {
        let listing = parse_listing(LISTING).unwrap();

        let batch = removal_batch(&listing, |s| s == 3).unwrap();

        assert_eq!(
            batch,
            "delete rule ip petrel_nat postrouting handle 4\n\
             delete rule inet petrel_filter input handle 7\n\
             delete table inet petrel_filter\n"
        );
    }

    #[test]
    fn removal_of_absent_slot_with_tables_in_use_does_nothing() {
        let listing = parse_listing(LISTING).unwrap();

        let batch = removal_batch(&listing, |s| s == 42);

        assert_eq!(batch, None);
    }
}
