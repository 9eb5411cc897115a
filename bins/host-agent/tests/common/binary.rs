//! The real `host-agent` binary (the one cargo built for the test) serving
//! a data dir on 127.0.0.1: for tests that kill it like a crash would and
//! start another on the same data.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How to start the binary.
pub struct Spawn<'a> {
    pub data_dir: &'a Path,
    pub port: u16,
    pub kernel: &'a Path,
    pub rootfs: &'a Path,
    /// First of 32 network slots, disjoint from other tests' (an agent
    /// clears stale slots of its range).
    pub slot_first: u16,
    pub warm_templates: bool,
    /// Extra environment (e.g. `PETREL_TEST_CRASH_AT`).
    pub env: Vec<(&'a str, String)>,
}

/// A running agent binary; killed (SIGKILL, by its pid) when dropped, even
/// on panic.
pub struct Agent(Child);

impl Agent {
    pub fn spawn(how: &Spawn<'_>) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_host-agent"))
            .args(["serve", "--listen", &format!("127.0.0.1:{}", how.port)])
            .arg("--data-dir")
            .arg(how.data_dir)
            .arg("--kernel")
            .arg(how.kernel)
            .arg("--rootfs")
            .arg(how.rootfs)
            .args(["--accel", "tcg"])
            .args(["--warm-templates", &how.warm_templates.to_string()])
            .args(["--api-key", super::API_KEY])
            .args([
                "--net-slot-first",
                &how.slot_first.to_string(),
                "--net-slot-count",
                "32",
            ])
            // No networks made ahead unless a test asks (`env`).
            .env("PETREL_NET_SPARES", "0")
            .envs(how.env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Like `kill -9`: the agent gets no chance to clean up.
    pub fn kill_9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Waits (at most `limit`) for the agent to end by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the agent listens on `port` (at most 120 s).
pub async fn wait_ready(port: u16) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the agent did not listen on port {port} within 120 s");
}

/// The `petrel-<slot>` network namespaces of `slots` that exist now.
pub fn namespaces(slots: std::ops::Range<u16>) -> Vec<String> {
    slots
        .map(|slot| format!("petrel-{slot}"))
        .filter(|name| Path::new("/run/netns").join(name).exists())
        .collect()
}

/// Live (not zombie) processes whose command line names `dir`.
pub fn processes_naming(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(&needle)
                && stat
                    .rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
        .collect()
}
