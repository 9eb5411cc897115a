//! The OpenAPI 3 document of the API, served at `GET /openapi.json`.
//!
//! Its `paths` come from [`super::routes`] (the table the router is built
//! from); each operation's text, parameters, bodies and responses from
//! [`operation`], keyed by `operationId`. Path parameters are derived from
//! the `{param}` segments of the path.

use axum::Json;
use serde_json::{Map, Value, json};

use super::{FILE_BODY_LIMIT, JSON_BODY_LIMIT, routes};

/// `GET /openapi.json`.
pub async fn serve() -> Json<Value> {
    Json(document())
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in routes() {
        let mut op = operation(route.operation_id);
        let mut parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(path_parameter)
            .collect();
        if let Some(Value::Array(query)) = op.get("parameters") {
            parameters.extend(query.iter().cloned());
        }
        if let Value::Object(map) = &mut op {
            map.insert("operationId".into(), json!(route.operation_id));
            // The listener's guard answers every operation.
            let has_body = map_has_body(map);
            if let Some(Value::Object(responses)) = map.get_mut("responses") {
                for status in ["401", "403", "421"] {
                    responses.insert(
                        status.into(),
                        json!({"$ref": format!("#/components/responses/E{status}")}),
                    );
                }
                if has_body {
                    responses.insert("415".into(), json!({"$ref": "#/components/responses/E415"}));
                }
            }
            if parameters.is_empty() {
                map.remove("parameters");
            } else {
                map.insert("parameters".into(), Value::Array(parameters));
            }
        }
        let item = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        if let Value::Object(item) = item {
            item.insert(route.method.as_str().to_ascii_lowercase(), op);
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Petrel host agent API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Sandboxes (microVMs), commands, files, snapshots and templates of one Petrel host. \
                 Every request needs an API key (X-API-KEY header, or Authorization: Bearer): 401 without. \
                 Request bodies must be sent as application/json (file uploads: application/octet-stream), else 415; \
                 an empty body reads as {{}}; \
                 unknown fields are refused. Times are RFC 3339 strings in UTC with milliseconds. \
                 Every error is {{\"error\":{{\"code\":\"…\",\"message\":\"…\"}}}}. \
                 JSON bodies are limited to {JSON_BODY_LIMIT} bytes and file uploads to {FILE_BODY_LIMIT} bytes (413 beyond). \
                 Nothing a guest sends is held whole without a cap: exec output is capped per stream (the agent's `exec_output_limit`, default 4 MiB; \
                 `stdout_truncated`/`stderr_truncated` say so), exec/stream and file reads and uploads stream with back-pressure. \
                 Every path that starts a VM (create, resume, start from a snapshot) is refused with 503 `capacity` when the host runs its most sandboxes; \
                 pausing beyond the paused quota or snapshotting beyond the snapshot quotas is 429 `quota_exceeded`; paused sandboxes are destroyed after the agent's `paused_ttl_s` (default 30 days). \
                 Template and snapshot names must be SafeNames: 1-64 ASCII letters, digits, '.', '_', '-', \
                 starting with a letter or digit, without '..'; anything else is 400 invalid_name. \
                 Requests naming a Host other than an IP address, localhost or a configured name are 421; \
                 browser requests from a foreign Origin are 403."
            ),
        },
        "tags": [
            {"name": "sandboxes"}, {"name": "exec"}, {"name": "files"},
            {"name": "snapshots"}, {"name": "templates"}, {"name": "operations"},
        ],
        "paths": paths,
        "security": [{"apiKey": []}, {"bearer": []}],
        "components": {
            "schemas": schemas(),
            "responses": error_responses(),
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-KEY"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    })
}

fn map_has_body(op: &Map<String, Value>) -> bool {
    op.contains_key("requestBody")
}

fn path_parameter(name: &str) -> Value {
    let description = match name {
        "id" => "Sandbox id (16 lowercase hex digits).",
        "name" => "Template or snapshot name (a SafeName; anything else is 400 invalid_name).",
        _ => "",
    };
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

fn query(name: &str, required: bool, description: &str, schema: &Value) -> Value {
    json!({"name": name, "in": "query", "required": required, "description": description, "schema": schema})
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn json_body(schema: &str, required: bool) -> Value {
    json!({"required": required, "content": {"application/json": {"schema": schema_ref(schema)}}})
}

fn json_response(description: &str, schema: &Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn array_of(name: &str) -> Value {
    json!({"type": "array", "items": schema_ref(name)})
}

/// `responses` with the success entries given and `errors` by status.
fn responses(success: &[(&str, Value)], errors: &[&str]) -> Value {
    let mut map = Map::new();
    for (status, response) in success {
        map.insert((*status).to_string(), response.clone());
    }
    for status in errors {
        map.insert(
            (*status).to_string(),
            json!({"$ref": format!("#/components/responses/E{status}")}),
        );
    }
    Value::Object(map)
}

/// The error responses every operation refers to.
fn error_responses() -> Value {
    let text = [
        (
            "400",
            "Bad request: malformed JSON, unknown field, invalid value or a name that fails SafeName (code invalid_name).",
        ),
        (
            "401",
            "No API key, or not a configured one (code unauthorized).",
        ),
        (
            "403",
            "Permission denied in the guest, or a browser request from a foreign Origin (code forbidden_origin).",
        ),
        (
            "415",
            "The body is not of the operation's media type (code unsupported_media_type).",
        ),
        (
            "421",
            "The Host header names a host this agent does not serve (code forbidden_host).",
        ),
        ("404", "Unknown sandbox, template, snapshot or file."),
        (
            "409",
            "Wrong state (e.g. pausing a paused sandbox, exec in a paused one) or a name in use.",
        ),
        ("413", "Request body over the limit."),
        (
            "429",
            "A quota is full (code quota_exceeded: paused sandboxes, snapshots, snapshot bytes) or too many uploads run at once (code too_many_uploads).",
        ),
        ("500", "Internal failure (VMM, disk, store)."),
        ("502", "envd in the guest failed or could not be reached."),
        (
            "503",
            "The host is out of capacity (code capacity: it runs its most sandboxes); on every path that starts a VM.",
        ),
        (
            "504",
            "The command or envd request timed out (code timeout), or the sandbox's VMM missed a deadline (code vmm_timeout).",
        ),
    ];
    let mut map = Map::new();
    for (status, description) in text {
        map.insert(
            format!("E{status}"),
            json_response(description, &schema_ref("Error")),
        );
    }
    Value::Object(map)
}

/// The documentation of one operation (without `operationId` and path
/// parameters, which [`document`] adds).
pub fn operation(operation_id: &str) -> Value {
    let sandbox = schema_ref("Sandbox");
    match operation_id {
        "createSandbox" => json!({
            "tags": ["sandboxes"],
            "summary": "Create and boot a sandbox",
            "description": "Boots a sandbox from a template, or from a snapshot when `template` names one. Answers when envd in the guest is ready.",
            "requestBody": json_body("CreateSandbox", true),
            "responses": responses(
                &[("201", json_response("The running sandbox.", &sandbox))],
                &["400", "404", "409", "413", "500", "503"],
            ),
        }),
        "listSandboxes" => json!({
            "tags": ["sandboxes"],
            "summary": "List sandboxes",
            "description": "Oldest first. Filters combine with AND.",
            "parameters": [
                query("state", false, "States, comma-separated and/or repeated (`state=running,paused`).", &json!({"type": "string"})),
                query("metadata", false, "Metadata pairs the sandbox must have, repeated (`metadata=k=v&metadata=k2=v2`) or form-encoded in one value (`metadata=k%3Dv%26k2%3Dv2`).", &json!({"type": "string"})),
                query("template", false, "Template (or snapshot) the sandbox was created from.", &json!({"type": "string"})),
            ],
            "responses": responses(&[("200", json_response("The sandboxes.", &array_of("Sandbox")))], &["400"]),
        }),
        "getSandbox" => json!({
            "tags": ["sandboxes"],
            "summary": "Get a sandbox",
            "responses": responses(&[("200", json_response("The sandbox.", &sandbox))], &["404"]),
        }),
        "deleteSandbox" => json!({
            "tags": ["sandboxes"],
            "summary": "Destroy a sandbox",
            "description": "Stops the VM in any state and removes its files and record.",
            "responses": responses(&[("204", json!({"description": "Destroyed."}))], &["404", "500"]),
        }),
        "pauseSandbox" => json!({
            "tags": ["sandboxes"],
            "summary": "Pause a running sandbox to disk",
            "description": "The VM's memory and devices are saved; no VMM process remains. Answers once the saved state, RAM and disk are on stable storage. 409 unless running; 429 quota_exceeded when the agent holds its most paused sandboxes; 504 vmm_timeout when the VMM stopped answering (the sandbox stays running; DELETE still works). A paused sandbox is destroyed after the agent's paused_ttl_s (default 30 days).",
            "responses": responses(&[("200", json_response("The paused sandbox.", &sandbox))], &["404", "409", "429", "500", "504"]),
        }),
        "resumeSandbox" => json!({
            "tags": ["sandboxes"],
            "summary": "Resume a paused sandbox",
            "description": "The TTL starts again from now: `timeout_s` from the optional body, or the default. 503 capacity when the host runs its most sandboxes.",
            "requestBody": json_body("Timeout", false),
            "responses": responses(&[("200", json_response("The running sandbox.", &sandbox))], &["400", "404", "409", "413", "500", "503"]),
        }),
        "setSandboxTimeout" => json!({
            "tags": ["sandboxes"],
            "summary": "Set a sandbox's TTL",
            "description": "The sandbox ends (or pauses, with `auto_pause`) `timeout_s` seconds from now; shorter or longer than before.",
            "requestBody": json_body("Timeout", true),
            "responses": responses(&[("200", json_response("The sandbox with its new `end_at`.", &sandbox))], &["400", "404", "413", "500"]),
        }),
        "setSandboxNetwork" => json!({
            "tags": ["sandboxes"],
            "summary": "Replace a sandbox's egress rules",
            "description": "On a running sandbox at once (connections open to a range now denied are cut); on a paused one at its resume. A list left out is cleared. allow_out may hold domain names (example.com, *.example.com: HTTP by Host and TLS by server name on ports 80 and 443 where the ranges deny the address; they need deny_out 0.0.0.0/0 or internet off). 400 for a domain name in deny_out, IPv6 or more than 256 entries; needs per-sandbox network namespaces (400 otherwise).",
            "requestBody": json_body("Network", true),
            "responses": responses(&[("200", json_response("The sandbox with its new rules.", &sandbox))], &["400", "404", "409", "413", "500"]),
        }),
        "exec" => json!({
            "tags": ["exec"],
            "summary": "Run a command to completion",
            "description": "Without `args`, `cmd` is a shell command line run by `/bin/bash -l -c`; with `args` (even `[]`), `cmd` is the program. A non-zero exit code is not an error. 409 unless running. Each of stdout and stderr carries at most the agent's `exec_output_limit` bytes (default 4 MiB); the command runs to its end, the rest of its output is dropped and `stdout_truncated`/`stderr_truncated` is true. Use exec/stream for more.",
            "requestBody": json_body("ExecRequest", true),
            "responses": responses(
                &[("200", json_response("The finished command.", &schema_ref("ExecResult")))],
                &["400", "403", "404", "409", "413", "500", "502", "504"],
            ),
        }),
        "execStream" => json!({
            "tags": ["exec"],
            "summary": "Run a command, streaming its events (Server-Sent Events)",
            "description": "Same body as exec. Events, each with JSON data: `start` {\"pid\"}, `stdout` {\"data\"}, `stderr` {\"data\"} (UTF-8, invalid bytes replaced), then `exit` {\"exit_code\",\"status\",\"error\"}; a failure after the start is an `error` event {\"code\",\"message\"}. Failures before the start are ordinary error responses.",
            "requestBody": json_body("ExecRequest", true),
            "responses": responses(
                &[("200", json!({"description": "The event stream.", "content": {"text/event-stream": {"schema": {"type": "string"}}}}))],
                &["400", "403", "404", "409", "413", "500", "502", "504"],
            ),
        }),
        "openPty" => json!({
            "tags": ["exec"],
            "summary": "Open an interactive terminal (WebSocket)",
            "description": "A WebSocket handshake (GET with `Upgrade: websocket`; anything else is 400 websocket_required). The process is `/bin/bash -i -l` (or `/bin/bash -l -c <cmd>`) with TERM=xterm-256color and LANG/LC_ALL=C.UTF-8 on a pseudo-terminal of `cols` x `rows`; it is started before the upgrade, so failures are ordinary error responses. Messages: binary both ways are raw terminal bytes (keystrokes in, terminal output out); text from the client is JSON control, {\"resize\":{\"cols\":C,\"rows\":R}}; text from the server is {\"exit\":{\"code\":N}} when the process ended (the last message before the close) or {\"error\":{\"code\",\"message\"}} (a control message not understood, or a failure that ends the session). When the client goes away first the process is killed. 409 unless running.",
            "parameters": [
                query("cols", true, "Terminal width in cells, 1 to 1000.", &json!({"type": "integer", "minimum": 1, "maximum": super::pty::MAX_PTY_CELLS})),
                query("rows", true, "Terminal height in cells, 1 to 1000.", &json!({"type": "integer", "minimum": 1, "maximum": super::pty::MAX_PTY_CELLS})),
                query("cmd", false, "A shell command line to run instead of an interactive login bash.", &json!({"type": "string"})),
                query("user", false, "Guest user (default `user`; `root` works).", &json!({"type": "string"})),
            ],
            "responses": responses(
                &[("101", json!({"description": "Switching to the WebSocket protocol; the session follows."}))],
                &["400", "404", "409", "500", "502"],
            ),
        }),
        "writeFile" => json!({
            "tags": ["files"],
            "summary": "Upload a file",
            "description": "Writes the raw body to `path` in the guest, creating parent directories and replacing an existing file. The body streams to the guest as it arrives (never held whole). At most the agent's `max_concurrent_uploads` uploads run at once: 429 too_many_uploads beyond.",
            "parameters": file_query(),
            "requestBody": {"required": true, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": responses(&[("204", json!({"description": "Written."}))], &["400", "403", "404", "409", "413", "429", "500", "502"]),
        }),
        "readFile" => json!({
            "tags": ["files"],
            "summary": "Download a file",
            "description": "Streams the file from the guest as the caller reads it (never held whole; any size).",
            "parameters": file_query(),
            "responses": responses(
                &[("200", json!({"description": "The file's bytes.", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}))],
                &["400", "403", "404", "409", "500", "502"],
            ),
        }),
        "listFiles" => json!({
            "tags": ["files"],
            "summary": "List a directory",
            "parameters": [
                query("path", true, "Directory in the guest.", &json!({"type": "string"})),
                query("depth", false, "Levels to descend, 1 (default) to 10.", &json!({"type": "integer", "minimum": 1, "maximum": 10})),
                query("user", false, "Guest user to list as (default `user`).", &json!({"type": "string"})),
            ],
            "responses": responses(
                &[("200", json_response("The entries.", &array_of("FileEntry")))],
                &["400", "403", "404", "409", "500", "502"],
            ),
        }),
        "createSnapshot" => json!({
            "tags": ["snapshots"],
            "summary": "Snapshot a running sandbox",
            "description": "The sandbox keeps running. Create sandboxes from the snapshot by passing its name as `template`. Answers once the snapshot's files are on stable storage. 409 when the name is taken by a template or snapshot or is being created by another request (of two concurrent requests for one name, exactly one succeeds), or the sandbox is not running; 429 quota_exceeded beyond the agent's max_snapshots or max_snapshot_bytes; 504 vmm_timeout when the VMM stopped answering.",
            "requestBody": json_body("CreateSnapshot", true),
            "responses": responses(
                &[("201", json_response("The snapshot.", &schema_ref("Snapshot")))],
                &["400", "404", "409", "413", "429", "500", "504"],
            ),
        }),
        "listSnapshots" => json!({
            "tags": ["snapshots"],
            "summary": "List snapshots",
            "responses": responses(&[("200", json_response("The snapshots, oldest first.", &array_of("Snapshot")))], &["500"]),
        }),
        "getSnapshot" => json!({
            "tags": ["snapshots"],
            "summary": "Get a snapshot",
            "responses": responses(&[("200", json_response("The snapshot.", &schema_ref("Snapshot")))], &["400", "404", "500"]),
        }),
        "deleteSnapshot" => json!({
            "tags": ["snapshots"],
            "summary": "Delete a snapshot",
            "description": "409 (the message names them) while anything stands on it: sandboxes started from it, in any state but stopped, and snapshots taken from such sandboxes, whose disks back onto its disk. Delete those first; then the template files nothing stands on any more are removed.",
            "responses": responses(&[("204", json!({"description": "Deleted."}))], &["400", "404", "409", "500"]),
        }),
        "listTemplates" => json!({
            "tags": ["templates"],
            "summary": "List templates",
            "responses": responses(&[("200", json_response("The templates by name.", &array_of("Template")))], &["500"]),
        }),
        "getTemplate" => json!({
            "tags": ["templates"],
            "summary": "Get a template",
            "responses": responses(&[("200", json_response("The template.", &schema_ref("Template")))], &["400", "404", "500"]),
        }),
        "deleteTemplate" => json!({
            "tags": ["templates"],
            "summary": "Delete a template",
            "description": "Removes the record and the template's own files (its copies of the base image, its warm snapshots), not the registered image or kernel. 409 (the message names them) while a sandbox of it, in any state but stopped, or a snapshot of it exists.",
            "responses": responses(&[("204", json!({"description": "Deleted."}))], &["400", "404", "409", "500"]),
        }),
        "getOpenApi" => json!({
            "tags": ["operations"],
            "summary": "This document",
            "responses": {"200": json_response("OpenAPI 3 document.", &json!({"type": "object"}))},
        }),
        "getMetrics" => json!({
            "tags": ["operations"],
            "summary": "Prometheus metrics",
            "description": "Text exposition format 0.0.4: petrel_sandboxes{state} (gauge), petrel_snapshots, petrel_templates, petrel_uptime_seconds, petrel_api_request_duration_seconds{operation} (histogram), petrel_api_requests_total{operation,status}, petrel_api_errors_total{operation,code}.",
            "responses": {"200": {"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }),
        _ => json!({}),
    }
}

fn file_query() -> Value {
    json!([
        query(
            "path",
            true,
            "Path in the guest (relative: to the user's home).",
            &json!({"type": "string"})
        ),
        query(
            "user",
            false,
            "Guest user to act as (default `user`).",
            &json!({"type": "string"})
        ),
    ])
}

fn egress_list(description: &str) -> Value {
    json!({"type": "array", "maxItems": crate::policy::MAX_EGRESS_ENTRIES, "items": {"type": "string"}, "description": description})
}

fn string_map() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}})
}

fn schemas() -> Value {
    let time = json!({"type": "string", "format": "date-time", "description": "RFC 3339, UTC, milliseconds."});
    json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "Stable, machine-readable: invalid_request, invalid_json, invalid_name, invalid_query, invalid_path, invalid_body, sandbox_not_found, template_not_found, snapshot_not_found, file_not_found, not_found, invalid_state, conflict, already_exists, permission_denied, payload_too_large, capacity, quota_exceeded, too_many_uploads, timeout, envd_unavailable, envd_error, envd_reply_too_large, websocket_required, internal."},
                    "message": {"type": "string"},
                },
            }},
        },
        "CreateSandbox": {
            "type": "object",
            "required": ["template"],
            "additionalProperties": false,
            "properties": {
                "template": {"type": "string", "description": "Template or snapshot name (SafeName), e.g. `base`."},
                "vcpus": {"type": "integer", "minimum": 1, "maximum": 255, "description": "Default: the agent's (1); at most the manager's maximum (8)."},
                "memory_mb": {"type": "integer", "minimum": 128, "description": "MiB. Default: the agent's (512); at most 8192."},
                "timeout_s": {"type": "integer", "minimum": 1, "maximum": crate::policy::MAX_TTL.as_secs(), "description": "TTL in seconds (default 300)."},
                "env": string_map(),
                "metadata": string_map(),
                "internet": {"type": "boolean", "description": "Outbound internet. Unset: on with per-sandbox network namespaces; off in QEMU user-mode networking, which is always isolated from the host and the internet and refuses true (400)."},
                "auto_pause": {"type": "boolean", "default": false, "description": "At expiry: pause instead of kill."},
                "allow_out": egress_list("IPv4 CIDRs or addresses the sandbox may reach even where deny_out covers them or internet is off (allow wins), and domain names (example.com, *.example.com) whose HTTP (Host) and TLS (server name) connections on ports 80 and 443 pass where the ranges deny the address (names need deny_out 0.0.0.0/0 or internet off). The host, private ranges and other sandboxes stay unreachable."),
                "deny_out": egress_list("IPv4 CIDRs or addresses the sandbox may not reach; 0.0.0.0/0 denies all but allow_out."),
            },
        },
        "Network": {
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "allow_out": egress_list("As on create; left out: none."),
                "deny_out": egress_list("As on create; left out: none."),
            },
        },
        "Sandbox": {
            "type": "object",
            "required": ["id", "template", "state", "vcpus", "memory_mb", "created_at", "end_at", "auto_pause", "internet", "allow_out", "deny_out", "metadata", "timings_ms"],
            "properties": {
                "id": {"type": "string"},
                "template": {"type": "string"},
                "state": {"type": "string", "enum": ["starting", "running", "pausing", "paused", "resuming", "stopping", "stopped", "error"], "description": "stopped: its VM was lost (nothing saved), files removed, record kept until deleted. error: a resume failed after the guest ran and it could not be saved again, or an agent crash interrupted such a resume; its saved state no longer matches its disk; its files are kept for inspection until it is deleted (DELETE works in every state)."},
                "vcpus": {"type": "integer"},
                "memory_mb": {"type": "integer"},
                "created_at": time,
                "end_at": {"type": "string", "format": "date-time", "description": "When the sandbox is killed (or paused, with auto_pause). RFC 3339."},
                "auto_pause": {"type": "boolean"},
                "internet": {"type": "boolean"},
                "allow_out": {"type": "array", "items": {"type": "string"}, "description": "The sandbox's allowed egress ranges (CIDRs) and names."},
                "deny_out": {"type": "array", "items": {"type": "string"}, "description": "The sandbox's denied egress ranges (CIDRs)."},
                "metadata": string_map(),
                "envd_url": {"type": "string", "nullable": true, "description": "Where envd answers while running (it requires an access token the API does not give out)."},
                "error": {"type": "string", "nullable": true, "description": "The last failure."},
                "timings_ms": {"type": "object", "additionalProperties": {"type": "integer"}, "description": "Milliseconds of the last create/pause/resume steps (prepare, vm_start, envd_ready, init, create, pause, resume)."},
            },
        },
        "Timeout": {
            "type": "object",
            "additionalProperties": false,
            "properties": {"timeout_s": {"type": "integer", "minimum": 1, "maximum": crate::policy::MAX_TTL.as_secs()}},
        },
        "ExecRequest": {
            "type": "object",
            "required": ["cmd"],
            "additionalProperties": false,
            "properties": {
                "cmd": {"type": "string", "description": "A shell command line (without args) or a program (with args)."},
                "args": {"type": "array", "items": {"type": "string"}},
                "env": string_map(),
                "cwd": {"type": "string", "description": "Working directory (default: the user's home)."},
                "user": {"type": "string", "description": "Guest user (default `user`; `root` works)."},
                "stdin": {"type": "string", "description": "Written to stdin, which is then closed (default: no stdin)."},
                "timeout_s": {"type": "integer", "minimum": 1, "maximum": super::exec::MAX_EXEC_TIMEOUT_S, "description": "Deadline of the run (504 beyond)."},
            },
        },
        "ExecResult": {
            "type": "object",
            "required": ["stdout", "stderr", "stdout_truncated", "stderr_truncated", "exit_code", "pid"],
            "properties": {
                "stdout": {"type": "string", "description": "UTF-8, invalid bytes replaced; at most the agent's exec_output_limit bytes (default 4 MiB) of output."},
                "stderr": {"type": "string", "description": "As stdout."},
                "stdout_truncated": {"type": "boolean", "description": "The command wrote more than exec_output_limit bytes to stdout; the rest was dropped."},
                "stderr_truncated": {"type": "boolean", "description": "As stdout_truncated, for stderr."},
                "exit_code": {"type": "integer"},
                "pid": {"type": "integer"},
            },
        },
        "FileEntry": {
            "type": "object",
            "required": ["name", "path", "type", "size", "mode", "permissions", "owner", "group"],
            "properties": {
                "name": {"type": "string"},
                "path": {"type": "string"},
                "type": {"type": "string", "enum": ["file", "directory", "symlink", "unknown"]},
                "size": {"type": "integer"},
                "mode": {"type": "integer"},
                "permissions": {"type": "string"},
                "owner": {"type": "string"},
                "group": {"type": "string"},
                "modified_at": {"type": "string", "format": "date-time", "nullable": true},
                "symlink_target": {"type": "string", "nullable": true},
            },
        },
        "CreateSnapshot": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": false,
            "properties": {"name": {"type": "string", "description": "SafeName, unique among templates and snapshots."}},
        },
        "Snapshot": {
            "type": "object",
            "required": ["name", "sandbox_id", "template", "created_at", "size_bytes"],
            "properties": {
                "name": {"type": "string"},
                "sandbox_id": {"type": "string"},
                "template": {"type": "string", "description": "The template at its root."},
                "created_at": time,
                "size_bytes": {"type": "integer"},
            },
        },
        "Template": {
            "type": "object",
            "required": ["name", "kernel", "rootfs", "created_at", "size_bytes", "source", "warm"],
            "properties": {
                "name": {"type": "string"},
                "kernel": {"type": "string"},
                "rootfs": {"type": "string"},
                "created_at": time,
                "size_bytes": {"type": "integer"},
                "source": {"type": "string"},
                "warm": {"type": "boolean", "description": "Creates restore the template's warm snapshot (false: they cold-boot, e.g. while it is being warmed up)"},
            },
        },
    })
}
