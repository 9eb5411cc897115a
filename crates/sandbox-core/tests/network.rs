//! Sandboxes in their own network namespaces, with real VMs: NAT out to an
//! "outside" host (a namespace this test makes), the host reaching a guest
//! port, isolation between guests and from the host, and the internet-off
//! policy. Needs root (namespaces, nftables).

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestDir, backend, images};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sandbox_core::{NetworkPool, Sandbox, SandboxConfig};

fn sh(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(status.success(), "{args:?} failed");
}

/// A host outside every sandbox: namespace `petrel-test-<name>` with a
/// veth to the host (`198.51.100.1/30` host side, `.2` inside) and an HTTP
/// server on port 8080 serving `hello.txt`.
struct Outside {
    ns: String,
    link: String,
    server: Child,
    dir: tempfile::TempDir,
}

const OUTSIDE_IP: &str = "198.51.100.2";

impl Outside {
    fn new(name: &str) -> Self {
        let ns = format!("petrel-test-{name}");
        let link = format!("pto{name}");
        sh(&["ip", "netns", "add", &ns]);
        sh(&[
            "ip", "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        sh(&["ip", "addr", "add", "198.51.100.1/30", "dev", &link]);
        sh(&["ip", "link", "set", &link, "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            "198.51.100.2/30",
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello.txt"), "hello from outside\n").unwrap();
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "python3",
                "-m",
                "http.server",
                "8080",
                "--bind",
                OUTSIDE_IP,
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        Self {
            ns,
            link,
            server,
            dir,
        }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = &self.dir;
    }
}

async fn boot(name: &str, dir: &TestDir, pool: &Arc<NetworkPool>, internet: bool) -> Sandbox {
    let config = SandboxConfig {
        network: Some(pool.clone()),
        internet,
        ..SandboxConfig::new(name, images().unwrap(), &dir.0)
    };
    Sandbox::boot(&backend(), config).await.unwrap()
}

/// `curl` from the guest; prints the body or `FAILED`.
async fn guest_curl(sandbox: &Sandbox, url: &str) -> String {
    let out = sandbox
        .exec_shell(&format!("curl -s -m 3 {url} || echo FAILED"))
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// These tests share the `Outside` host's fixed addresses: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn guest_reaches_outside_through_nat_and_host_reaches_guest_port() {
    let Some(_) = images() else { return };
    let _serial = SERIAL.lock().await;
    let outside = Outside::new("nat");
    let dir = TestDir::new("nat");
    let pool = Arc::new(NetworkPool::new(3000..3010).unwrap());
    let sandbox = boot("nat", &dir, &pool, true).await;
    sandbox
        .exec_shell("mkdir -p /tmp/www && echo in-guest > /tmp/www/g.txt && (cd /tmp/www && nohup python3 -m http.server 8000 >/dev/null 2>&1 &)")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let guest_ip = sandbox.envd().addr().ip().to_string();

    let fetched = guest_curl(&sandbox, &format!("http://{OUTSIDE_IP}:8080/hello.txt")).await;
    let from_host = Command::new("curl")
        .args(["-s", "-m", "5", &format!("http://{guest_ip}:8000/g.txt")])
        .output()
        .unwrap();
    sandbox.destroy().await.unwrap();
    drop(outside);

    assert_eq!(fetched, "hello from outside\n");
    assert_eq!(String::from_utf8_lossy(&from_host.stdout), "in-guest\n");
    assert!(guest_ip.starts_with("10.13."), "{guest_ip}");
}

#[tokio::test]
async fn guest_cannot_reach_another_guest_or_host_services() {
    let Some(_) = images() else { return };
    let _serial = SERIAL.lock().await;
    let dir = TestDir::new("iso");
    let pool = Arc::new(NetworkPool::new(3010..3020).unwrap());
    let host_service = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let port = host_service.local_addr().unwrap().port();
    let a = boot("iso-a", &dir, &pool, true).await;
    let b = boot("iso-b", &dir, &pool, true).await;
    let b_envd = b.envd().addr();
    let a_envd = a.envd().addr();
    // The host side of a's veth: the agent's address as a's guest sees it.
    let host_side = match a_envd.ip() {
        std::net::IpAddr::V4(ip) => {
            let slot = u32::from(ip) - u32::from(Ipv4Addr::new(10, 13, 0, 0));
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 12, 0, 0)) + 2 * slot)
        }
        std::net::IpAddr::V6(_) => unreachable!(),
    };

    let to_b = guest_curl(&a, &format!("http://{b_envd}/health")).await;
    let to_host = guest_curl(&a, &format!("http://{host_side}:{port}/")).await;
    let to_loopback = guest_curl(&a, &format!("http://127.0.0.1:{port}/")).await;
    let b_still_fine = b.exec_shell("echo ok").await.unwrap();
    a.destroy().await.unwrap();
    b.destroy().await.unwrap();

    assert_eq!(to_b, "FAILED\n");
    assert_eq!(to_host, "FAILED\n");
    assert_eq!(to_loopback, "FAILED\n");
    assert_eq!(b_still_fine.stdout, b"ok\n");
}

#[tokio::test]
async fn internet_off_blocks_outside_while_envd_works() {
    let Some(_) = images() else { return };
    let _serial = SERIAL.lock().await;
    let outside = Outside::new("off");
    let dir = TestDir::new("off");
    let pool = Arc::new(NetworkPool::new(3020..3030).unwrap());
    let sandbox = boot("off", &dir, &pool, false).await;

    let fetched = guest_curl(&sandbox, &format!("http://{OUTSIDE_IP}:8080/hello.txt")).await;
    let envd_works = sandbox.exec_shell("echo still-here").await.unwrap();
    sandbox.destroy().await.unwrap();
    drop(outside);

    assert_eq!(fetched, "FAILED\n");
    assert_eq!(envd_works.stdout, b"still-here\n");
}

#[tokio::test]
async fn paused_sandbox_releases_its_namespace_and_resumes_in_a_new_one() {
    let Some(_) = images() else { return };
    let _serial = SERIAL.lock().await;
    let dir = TestDir::new("pausenet");
    let pool = Arc::new(NetworkPool::new(3030..3040).unwrap());
    let mut sandbox = boot("pausenet", &dir, &pool, true).await;
    sandbox.exec_shell("echo kept > /tmp/k").await.unwrap();
    let before = sandbox.record().net_slot.unwrap();

    sandbox.pause().await.unwrap();
    let paused_slot = sandbox.record().net_slot;
    let ns_while_paused = PathBuf::from(format!("/run/netns/petrel-{before}")).exists();
    sandbox.resume().await.unwrap();
    let kept = sandbox.exec_shell("cat /tmp/k").await.unwrap();
    sandbox.destroy().await.unwrap();
    let ns_after = std::fs::read_dir("/run/netns").map_or(0, |d| {
        d.flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("petrel-30"))
            .count()
    });

    assert_eq!(paused_slot, None);
    assert!(!ns_while_paused);
    assert_eq!(kept.stdout, b"kept\n");
    assert_eq!(ns_after, 0);
}
