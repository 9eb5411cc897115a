//! Headless Chromium for the browser test: Debian's `chromium` driven over
//! WebDriver by Debian's `chromedriver` (package `chromium-driver`, same
//! version as the browser), through `fantoccini`.
//!
//! `chromedriver` runs in a process group of its own; [`Browser::quit`] ends
//! the WebDriver session (chromedriver then closes the browser) and kills
//! that group, so no chromium process outlives the test.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The flags the browser runs with: headless, and nothing that reaches out
/// to the network on its own.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1200",
];

/// Whether the browser test can run; prints why not, and panics under
/// `PETREL_REQUIRE_VM=1` (set by `cargo xtask test`), where it must.
pub fn available() -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|path| !Path::new(path).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let reason = format!(
        "{} missing: install Debian's `chromium` and `chromium-driver` packages (`cargo xtask setup`)",
        missing.join(" and ")
    );
    assert!(
        std::env::var("PETREL_REQUIRE_VM").as_deref() != Ok("1"),
        "PETREL_REQUIRE_VM=1 but {reason}"
    );
    eprintln!("skipped: {reason}");
    false
}

/// A browser session; call [`Browser::quit`] at the end.
pub struct Browser {
    pub client: Client,
    driver: Child,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a session.
    pub async fn start() -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("picking a free port")?
            .port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {CHROMEDRIVER}"))?;
        match Self::connect(port).await {
            Ok(client) => Ok(Self { client, driver }),
            Err(err) => {
                kill_group(&mut driver).await;
                Err(err)
            }
        }
    }

    async fn connect(port: u16) -> Result<Client> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                bail!("chromedriver did not listen on {addr} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": CHROMIUM_ARGS },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://{addr}"))
            .await
            .context("opening a WebDriver session in chromium")
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub async fn eval(&self, script: &str) -> Result<Value> {
        self.client
            .execute(script, Vec::new())
            .await
            .with_context(|| format!("evaluating `{script}`"))
    }

    /// Polls `script` until it returns something truthy (not `null`,
    /// `false`, `""`, `0`) and returns that. Fails at once when the page
    /// shows its error banner (an API error), and on timeout; both errors
    /// carry `describe`, the banner and the sandbox rows.
    pub async fn wait_for(&self, describe: &str, timeout: Duration, script: &str) -> Result<Value> {
        self.poll(describe, timeout, script, true).await
    }

    /// [`Browser::wait_for`] for a step whose error banner is expected.
    pub async fn wait_for_banner(&self, timeout: Duration) -> Result<String> {
        let text = self
            .poll(
                "the error banner",
                timeout,
                "const e = document.querySelector('[data-testid=error]');
                 return !e.hidden && document.querySelector('[data-testid=error-text]').textContent;",
                false,
            )
            .await?;
        Ok(text.as_str().unwrap_or_default().to_string())
    }

    async fn poll(
        &self,
        describe: &str,
        timeout: Duration,
        script: &str,
        banner_fails: bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(script).await?;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return Ok(value);
            }
            let page = self.eval(PAGE_SUMMARY).await?;
            if banner_fails && !page["error"].is_null() {
                bail!("the page shows an error while waiting for {describe}; page: {page}");
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {describe}; page: {page}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Clicks `css` once it exists and is enabled.
    pub async fn click(&self, css: &str, timeout: Duration) -> Result<()> {
        let selector = serde_json::to_string(css)?;
        self.wait_for(
            &format!("an enabled `{css}`"),
            timeout,
            &format!("const e = document.querySelector({selector}); return !!e && !e.disabled;"),
        )
        .await?;
        self.client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("finding `{css}`"))?
            .click()
            .await
            .with_context(|| format!("clicking `{css}`"))
    }

    /// Replaces the value of the input `css` by typing `text`.
    pub async fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let input = self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("finding `{css}`"))?;
        input.clear().await?;
        input.send_keys(text).await?;
        Ok(())
    }

    /// Answers the `window.prompt` that is (or is about to be) open.
    pub async fn answer_prompt(&self, text: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(err) = self.client.get_alert_text().await {
            if Instant::now() > deadline {
                return Err(err).context("no prompt opened within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.client.send_alert_text(text).await?;
        self.client.accept_alert().await?;
        Ok(())
    }

    /// Saves a PNG of the viewport at `path` (creating its directory).
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let png = self
            .client
            .screenshot()
            .await
            .context("taking a screenshot")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Ends the session (closing chromium) and stops chromedriver's process
    /// group.
    pub async fn quit(mut self) {
        if let Err(err) = self.client.close().await {
            eprintln!("closing the WebDriver session: {err}");
        }
        kill_group(&mut self.driver).await;
    }
}

/// What the page shows, for timeout messages.
const PAGE_SUMMARY: &str = r"
    const rows = [...document.querySelectorAll('[data-testid=sandbox-row]')]
        .map((tr) => `${tr.dataset.id}:${tr.dataset.state}`);
    const banner = document.querySelector('[data-testid=error]');
    const text = document.querySelector('[data-testid=error-text]').textContent;
    return { sandboxes: rows, error: banner.hidden ? null : text };
";

/// Kills the process group led by `child` (chromedriver and any browser it
/// left behind), reaps `child`, and waits (up to 5 s) until no process of
/// the group is left, so the test ends without chromium processes.
async fn kill_group(child: &mut Child) {
    let Some(pid) = child.id() else {
        return;
    };
    let group = format!("-{pid}");
    let signal = |sig: &'static str| {
        let group = group.clone();
        async move {
            Command::new("kill")
                .args([sig, "--", &group])
                .stderr(std::process::Stdio::null())
                .status()
                .await
                .is_ok_and(|status| status.success())
        }
    };
    signal("-KILL").await;
    let _ = child.kill().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while signal("-0").await && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
