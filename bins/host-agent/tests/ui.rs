//! The test UI at `GET /test`, driven in headless Chromium against an agent
//! running real VMs: create a sandbox, exec `uname -a` and read the output,
//! pause, resume, a refused snapshot name, a snapshot listed then deleted,
//! destroy. Screenshots go to `<target>/test-artifacts/ui*.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver` packages (skipped with a
//! printed reason without them, unless `PETREL_REQUIRE_VM=1`) and the guest
//! images (`PETREL_KERNEL`, `PETREL_ROOTFS`, as for the other VM tests).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "ui/browser.rs"]
mod browser;
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use browser::Browser;
use serde_json::Value;

/// Creating, pausing, resuming and snapshotting a sandbox take seconds under
/// TCG; this is the most any one of them may take here.
const VM_STEP: Duration = Duration::from_secs(180);
/// Everything else the page does.
const UI_STEP: Duration = Duration::from_secs(15);

/// Where screenshots are kept: `<target>/test-artifacts`.
fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .join("test-artifacts")
}

/// What the browser saw along the way.
#[derive(Debug, Default)]
struct Observed {
    sandbox_id: String,
    created_state: String,
    created_size: String,
    exec_stdout: String,
    exec_exit_code: String,
    paused_state: String,
    resumed_state: String,
    bad_name_error: String,
    snapshot_row: String,
    snapshots_after_delete: usize,
    sandboxes_after_destroy: usize,
    empty_message_shown: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_ui_runs_a_sandbox_through_its_lifecycle_in_chromium() {
    // Arrange
    if !browser::available() {
        return;
    }
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let browser = match Browser::start().await {
        Ok(browser) => browser,
        Err(err) => {
            agent.stop().await;
            panic!("starting the browser: {err:#}");
        }
    };
    // The browser's Basic-auth prompt, answered through the URL (any user
    // name; the password is the API key).
    let page = format!(
        "http://petrel:{}@{}/test",
        common::API_KEY,
        agent.agent.api_addr
    );

    // Act
    let mut seen = Observed::default();
    let outcome = drive(&browser, &page, &mut seen).await;
    if outcome.is_err() {
        let _ = browser
            .screenshot(&artifacts().join("ui-failure.png"))
            .await;
    }
    browser.quit().await;
    agent.stop().await;

    // Assert
    if let Err(err) = outcome {
        panic!("{err:#}\nobserved so far: {seen:#?}");
    }
    assert!(!seen.sandbox_id.is_empty());
    assert_eq!(seen.created_state, "running");
    assert_eq!(seen.created_size, "1 vCPU · 256 MiB");
    assert!(
        seen.exec_stdout.starts_with("Linux "),
        "uname -a printed {:?}",
        seen.exec_stdout
    );
    assert_eq!(seen.exec_exit_code, "0");
    assert_eq!(seen.paused_state, "paused");
    assert_eq!(seen.resumed_state, "running");
    assert!(
        seen.bad_name_error.contains("400"),
        "the banner for a snapshot named ../x: {:?}",
        seen.bad_name_error
    );
    assert!(
        seen.snapshot_row.contains(&seen.sandbox_id),
        "{}",
        seen.snapshot_row
    );
    assert_eq!(seen.snapshots_after_delete, 0);
    assert_eq!(seen.sandboxes_after_destroy, 0);
    assert!(seen.empty_message_shown);
    assert!(artifacts().join("ui.png").exists());
}

/// The user's path through the page; fills `seen` as it goes.
async fn drive(b: &Browser, page: &str, seen: &mut Observed) -> Result<()> {
    let started = Instant::now();
    let step = |name: &str| eprintln!("[ui +{:>5.1}s] {name}", started.elapsed().as_secs_f64());

    step("open the page");
    b.client.goto(page).await.context("opening /test")?;
    b.wait_for(
        "the base template in the template list",
        UI_STEP,
        "return !!document.querySelector('#template option[value=base]');",
    )
    .await?;

    step("create a sandbox");
    b.type_into("[data-testid=vcpus]", "1").await?;
    b.type_into("[data-testid=memory]", "256").await?;
    b.click("[data-testid=create]", UI_STEP).await?;
    let id = b
        .wait_for(
            "a running sandbox",
            VM_STEP,
            "const tr = document.querySelector('[data-testid=sandbox-row][data-state=running]');
             return tr && tr.dataset.id;",
        )
        .await?;
    seen.sandbox_id = id.as_str().context("a sandbox id")?.to_string();
    let row = format!("[data-testid=sandbox-row][data-id='{}']", seen.sandbox_id);
    seen.created_state = state_of(b, &row).await?;
    seen.created_size = text_of(b, &format!("{row} td.size")).await?;

    step("exec `uname -a`");
    b.type_into("[data-testid=exec-cmd]", "uname -a").await?;
    b.click("[data-testid=exec-run]", UI_STEP).await?;
    b.wait_for(
        "exec output",
        VM_STEP,
        "return !document.querySelector('[data-testid=exec-result]').hidden;",
    )
    .await?;
    seen.exec_stdout = text_of(b, "[data-testid=exec-stdout]").await?;
    seen.exec_exit_code = text_of(b, "[data-testid=exec-exit]").await?;

    step("pause");
    b.click(&format!("{row} [data-action=pause]"), UI_STEP)
        .await?;
    seen.paused_state = wait_for_state(b, &row, "paused").await?;

    step("resume");
    b.click(&format!("{row} [data-action=resume]"), UI_STEP)
        .await?;
    seen.resumed_state = wait_for_state(b, &row, "running").await?;

    step("snapshot named ../x (refused)");
    b.click(&format!("{row} [data-action=snapshot]"), UI_STEP)
        .await?;
    b.answer_prompt("../x").await?;
    seen.bad_name_error = b.wait_for_banner(UI_STEP).await?;
    b.screenshot(&artifacts().join("ui-error.png")).await?;
    b.click("#error-close", UI_STEP).await?;

    step("snapshot named ui-snap");
    b.click(&format!("{row} [data-action=snapshot]"), UI_STEP)
        .await?;
    b.answer_prompt("ui-snap").await?;
    let snapshot = b
        .wait_for(
            "ui-snap in the snapshot list",
            VM_STEP,
            "const tr = document.querySelector('[data-testid=snapshot-row][data-name=ui-snap]');
             return tr && tr.textContent;",
        )
        .await?;
    seen.snapshot_row = snapshot.as_str().unwrap_or_default().to_string();
    wait_for_state(b, &row, "running").await?;
    b.screenshot(&artifacts().join("ui.png")).await?;

    step("delete the snapshot");
    b.click(
        "[data-testid=snapshot-row][data-name=ui-snap] [data-testid=delete-snapshot]",
        UI_STEP,
    )
    .await?;
    b.wait_for(
        "no snapshot rows",
        UI_STEP,
        "return !document.querySelector('[data-testid=snapshot-row]');",
    )
    .await?;
    seen.snapshots_after_delete = count(b, "[data-testid=snapshot-row]").await?;

    step("destroy the sandbox");
    b.click(&format!("{row} [data-action=destroy]"), UI_STEP)
        .await?;
    b.wait_for(
        "no sandbox rows",
        VM_STEP,
        "return !document.querySelector('[data-testid=sandbox-row]');",
    )
    .await?;
    seen.sandboxes_after_destroy = count(b, "[data-testid=sandbox-row]").await?;
    seen.empty_message_shown = b
        .eval("return !document.querySelector('[data-testid=sandboxes-empty]').hidden;")
        .await?
        == Value::Bool(true);
    b.screenshot(&artifacts().join("ui-end.png")).await?;
    step("done");
    Ok(())
}

/// Waits until the row `row` is in `state`; returns the state it shows.
async fn wait_for_state(b: &Browser, row: &str, state: &str) -> Result<String> {
    let selector = serde_json::to_string(row)?;
    b.wait_for(
        &format!("state {state}"),
        VM_STEP,
        &format!(
            "const tr = document.querySelector({selector}); return tr && tr.dataset.state === '{state}';"
        ),
    )
    .await?;
    state_of(b, row).await
}

/// The state shown in the row `row`'s state cell.
async fn state_of(b: &Browser, row: &str) -> Result<String> {
    text_of(b, &format!("{row} [data-testid=state]")).await
}

async fn text_of(b: &Browser, css: &str) -> Result<String> {
    let selector = serde_json::to_string(css)?;
    let value = b
        .eval(&format!(
            "const e = document.querySelector({selector}); return e && e.textContent;"
        ))
        .await?;
    let text = value.as_str().map(str::to_string);
    ensure!(text.is_some(), "no `{css}` on the page");
    Ok(text.unwrap_or_default())
}

async fn count(b: &Browser, css: &str) -> Result<usize> {
    let selector = serde_json::to_string(css)?;
    let value = b
        .eval(&format!(
            "return document.querySelectorAll({selector}).length;"
        ))
        .await?;
    Ok(value.as_u64().unwrap_or(u64::MAX) as usize)
}
