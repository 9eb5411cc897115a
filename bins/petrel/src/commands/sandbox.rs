//! `petrel sandbox create|list|info|pause|resume|kill|snapshot`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Result;
use chrono::Utc;
use serde_json::{Value, json};

use crate::cli::{CreateArgs, ListArgs};
use crate::client::{Client, Reply, segment};
use crate::output::table::Table;
use crate::output::{self, Sandbox, Snapshot};
use crate::progress::Spinner;

fn path(id: &str) -> String {
    format!("/v1/sandboxes/{}", segment(id))
}

/// The body of `POST /v1/sandboxes`.
pub fn create_body(args: &CreateArgs) -> Value {
    let mut body = json!({"template": args.template});
    if let Some(timeout) = args.timeout {
        body["timeout_s"] = json!(timeout);
    }
    if !args.metadata.is_empty() {
        body["metadata"] = json!(args.metadata.iter().cloned().collect::<BTreeMap<_, _>>());
    }
    if !args.env.is_empty() {
        body["env"] = json!(args.env.iter().cloned().collect::<BTreeMap<_, _>>());
    }
    if let Some(vcpus) = args.vcpus {
        body["vcpus"] = json!(vcpus);
    }
    if let Some(memory) = args.memory_mb {
        body["memory_mb"] = json!(memory);
    }
    body
}

/// Prints the new sandbox's id (its JSON with `--json`).
pub async fn create(client: &Client, args: CreateArgs) -> Result<u8> {
    let spinner = Spinner::start(format!("creating a sandbox from {}", args.template));
    let reply = client.post("/v1/sandboxes", &create_body(&args)).await;
    spinner.finish();
    let reply = reply?;
    if args.json.json {
        output::print_json(&reply)?;
    } else {
        let sandbox: Sandbox = output::view(&reply.value)?;
        output::print(&format!("{}\n", sandbox.id))?;
    }
    Ok(0)
}

/// `GET /v1/sandboxes?...` for the filters of `args`.
pub fn list_path(args: &ListArgs) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(state) = &args.state {
        query.append_pair("state", state);
    }
    for (key, value) in &args.metadata {
        // The agent decodes each side of the pair once more.
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        query.append_pair("metadata", &format!("{}={}", encode(key), encode(value)));
    }
    if let Some(template) = &args.template {
        query.append_pair("template", template);
    }
    let query = query.finish();
    if query.is_empty() {
        "/v1/sandboxes".to_owned()
    } else {
        format!("/v1/sandboxes?{query}")
    }
}

/// A table of sandboxes; "no sandboxes" on stderr when there are none.
pub async fn list(client: &Client, args: ListArgs) -> Result<u8> {
    let reply = client.get(&list_path(&args)).await?;
    if args.json.json {
        output::print_json(&reply)?;
        return Ok(0);
    }
    let sandboxes: Vec<Sandbox> = output::view(&reply.value)?;
    if sandboxes.is_empty() {
        eprintln!("no sandboxes");
        return Ok(0);
    }
    output::print(&sandbox_table(&sandboxes))?;
    Ok(0)
}

/// The human form of `list`.
pub fn sandbox_table(sandboxes: &[Sandbox]) -> String {
    let now = Utc::now();
    let mut table = Table::new([
        "ID", "TEMPLATE", "STATE", "VCPUS", "MEMORY", "CREATED", "ENDS", "METADATA",
    ]);
    for s in sandboxes {
        table.row([
            s.id.clone(),
            s.template.clone(),
            s.state.clone(),
            s.vcpus.to_string(),
            format!("{} MiB", s.memory_mb),
            output::relative(&s.created_at, now),
            output::relative(&s.end_at, now),
            output::metadata(&s.metadata),
        ]);
    }
    table.render()
}

/// `key: value` lines of one sandbox.
pub fn sandbox_details(s: &Sandbox) -> String {
    let now = Utc::now();
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut rows: Vec<(&str, String)> = vec![
        ("id", s.id.clone()),
        ("template", s.template.clone()),
        ("state", s.state.clone()),
        ("vcpus", s.vcpus.to_string()),
        ("memory", format!("{} MiB", s.memory_mb)),
        ("created", output::absolute_and_relative(&s.created_at, now)),
        (
            if s.auto_pause { "pauses" } else { "ends" },
            output::absolute_and_relative(&s.end_at, now),
        ),
        ("auto pause", yes_no(s.auto_pause).to_owned()),
        ("internet", yes_no(s.internet).to_owned()),
        ("metadata", output::metadata(&s.metadata)),
    ];
    if let Some(url) = &s.envd_url {
        rows.push(("envd", url.clone()));
    }
    if let Some(error) = &s.error {
        rows.push(("error", error.clone()));
    }
    if !s.timings_ms.is_empty() {
        let timings = s
            .timings_ms
            .iter()
            .map(|(step, ms)| format!("{step} {ms} ms"))
            .collect::<Vec<_>>()
            .join(", ");
        rows.push(("timings", timings));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in rows {
        let _ = writeln!(
            out,
            "{:width$}  {value}",
            format!("{key}:"),
            width = width + 1
        );
    }
    out
}

pub async fn info(client: &Client, id: &str, json: bool) -> Result<u8> {
    let reply = client.get(&path(id)).await?;
    if json {
        output::print_json(&reply)?;
    } else {
        output::print(&sandbox_details(&output::view(&reply.value)?))?;
    }
    Ok(0)
}

/// `<id> <state>`, with how long the step took when the agent says.
fn transitioned(reply: &Reply, step: &str) -> Result<String> {
    let sandbox: Sandbox = output::view(&reply.value)?;
    Ok(match sandbox.timings_ms.get(step) {
        Some(ms) => format!("{} {} ({step} took {ms} ms)\n", sandbox.id, sandbox.state),
        None => format!("{} {}\n", sandbox.id, sandbox.state),
    })
}

pub async fn pause(client: &Client, id: &str, json: bool) -> Result<u8> {
    transition(client, id, ("pause", "pausing"), &json!({}), json).await
}

pub async fn resume(client: &Client, id: &str, timeout: Option<u64>, json: bool) -> Result<u8> {
    let body = match timeout {
        Some(seconds) => json!({"timeout_s": seconds}),
        None => json!({}),
    };
    transition(client, id, ("resume", "resuming"), &body, json).await
}

/// `POST /v1/sandboxes/{id}/{verb}` under a spinner saying `doing`, then
/// the new state.
async fn transition(
    client: &Client,
    id: &str,
    (verb, doing): (&str, &str),
    body: &serde_json::Value,
    json: bool,
) -> Result<u8> {
    let spinner = Spinner::start(format!("{doing} {id}"));
    let reply = client.post(&format!("{}/{verb}", path(id)), body).await;
    spinner.finish();
    let reply = reply?;
    if json {
        output::print_json(&reply)?;
    } else {
        output::print(&transitioned(&reply, verb)?)?;
    }
    Ok(0)
}

/// Destroys `ids` (or every sandbox), one after the other; stops at the
/// first failure.
pub async fn kill(client: &Client, ids: Vec<String>, all: bool) -> Result<u8> {
    let ids = if all {
        let sandboxes: Vec<Sandbox> = output::view(&client.get("/v1/sandboxes").await?.value)?;
        sandboxes.into_iter().map(|s| s.id).collect()
    } else {
        ids
    };
    for id in ids {
        client.delete(&path(&id)).await?;
        output::print(&format!("{id} killed\n"))?;
    }
    Ok(0)
}

pub async fn snapshot(client: &Client, id: &str, name: &str, json: bool) -> Result<u8> {
    let spinner = Spinner::start(format!("snapshotting {id} as {name}"));
    let reply = client
        .post(&format!("{}/snapshots", path(id)), &json!({"name": name}))
        .await;
    spinner.finish();
    let reply = reply?;
    if json {
        output::print_json(&reply)?;
    } else {
        let snapshot: Snapshot = output::view(&reply.value)?;
        output::print(&format!(
            "{} (of {}, {})\n",
            snapshot.name,
            snapshot.sandbox_id,
            output::size(snapshot.size_bytes)
        ))?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Json;

    fn list_args(metadata: &[(&str, &str)]) -> ListArgs {
        ListArgs {
            state: Some("running,paused".into()),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            template: None,
            json: Json { json: false },
        }
    }

    #[test]
    fn list_filters_encode_metadata_pairs_twice() {
        let path = list_path(&list_args(&[("team", "blue"), ("a&b", "x=y z")]));

        assert_eq!(
            path,
            "/v1/sandboxes?state=running%2Cpaused&metadata=team%3Dblue&metadata=a%2526b%3Dx%253Dy%2Bz"
        );
    }

    #[test]
    fn create_body_has_only_what_was_given() {
        let args = CreateArgs {
            template: "base".into(),
            timeout: Some(600),
            metadata: vec![("owner".into(), "me".into())],
            env: Vec::new(),
            vcpus: None,
            memory_mb: None,
            json: Json { json: false },
        };

        let body = create_body(&args);

        assert_eq!(
            body,
            json!({"template": "base", "timeout_s": 600, "metadata": {"owner": "me"}})
        );
    }

    #[test]
    fn details_align_their_values() {
        let sandbox = Sandbox {
            id: "abc".into(),
            state: "running".into(),
            ..Sandbox::default()
        };

        let text = sandbox_details(&sandbox);

        assert!(text.starts_with("id:          abc\n"), "{text}");
        assert!(text.contains("\nstate:       running\n"), "{text}");
    }
}
