//! Sandboxes in their own network namespaces, with real VMs: NAT out to an
//! "outside" host (a namespace this test makes), the host reaching a guest
//! port, isolation between guests and from the host, and the internet-off
//! policy. Needs root (namespaces, nftables).

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestDir, backend, images, namespaces_in};
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
/// veth to the host (`198.20.0.1/30` host side, `.2` inside: a public
/// address, routed only to this namespace) and an HTTP server serving
/// `hello.txt` on ports 8080 and 25 of every address of the namespace.
struct Outside {
    ns: String,
    link: String,
    servers: Vec<Child>,
    dir: tempfile::TempDir,
}

const OUTSIDE_IP: &str = "198.20.0.2";

impl Outside {
    fn new(name: &str) -> Self {
        let ns = format!("petrel-test-{name}");
        let link = format!("pto{name}");
        sh(&["ip", "netns", "add", &ns]);
        sh(&[
            "ip", "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        sh(&["ip", "link", "set", &link, "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello.txt"), "hello from outside\n").unwrap();
        let mut outside = Self {
            ns,
            link,
            servers: Vec::new(),
            dir,
        };
        outside.add_address("198.20.0.1", OUTSIDE_IP);
        for port in ["8080", "25"] {
            let server = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &outside.ns,
                    "python3",
                    "-m",
                    "http.server",
                    port,
                    "--bind",
                    "0.0.0.0",
                ])
                .current_dir(outside.dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            outside.servers.push(server);
        }
        std::thread::sleep(Duration::from_millis(500));
        outside
    }

    /// Another /30 on the veth: `host_ip` on the host, `ip` inside.
    fn add_address(&self, host_ip: &str, ip: &str) {
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &self.link,
        ]);
        sh(&[
            "ip",
            "-n",
            &self.ns,
            "addr",
            "add",
            &format!("{ip}/30"),
            "dev",
            "eth0",
        ]);
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
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
        internet: Some(internet),
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
async fn sandboxes_on_spare_networks_get_their_own_egress_policy() {
    let Some(_) = images() else { return };
    let _serial = SERIAL.lock().await;
    let outside = Outside::new("spare");
    let dir = TestDir::new("spare");
    let slots = 3060..3070;
    let pool = Arc::new(NetworkPool::new(slots.clone()).unwrap().with_spares(1));
    pool.fill_spares().await.unwrap();
    let made_ahead = namespaces_in(slots.clone());
    // The spare was made with internet on; this sandbox asks for none.
    let off = boot("spare-off", &dir, &pool, false).await;
    let taken_by_off = pool.spares_taken();
    pool.fill_spares().await.unwrap();
    let on = boot("spare-on", &dir, &pool, true).await;
    let url = format!("http://{OUTSIDE_IP}:8080/hello.txt");

    let off_fetched = guest_curl(&off, &url).await;
    let on_fetched = guest_curl(&on, &url).await;
    off.destroy().await.unwrap();
    on.destroy().await.unwrap();
    pool.drain_spares().await.unwrap();
    let left = namespaces_in(slots);
    drop(outside);

    assert_eq!(made_ahead.len(), 1, "{made_ahead:?}");
    assert_eq!(taken_by_off, 1);
    assert_eq!(off_fetched, "FAILED\n");
    assert_eq!(on_fetched, "hello from outside\n");
    assert_eq!(pool.spares_taken(), 2);
    assert!(left.is_empty(), "{left:?}");
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

#[tokio::test]
async fn a_pause_can_leave_its_namespace_to_the_background_and_settle_waits_for_it() {
    let Some(_) = images() else { return };
    let _serial = SERIAL.lock().await;
    let dir = TestDir::new("bgnet");
    let slots = 3070..3080;
    let pool = Arc::new(
        NetworkPool::new(slots.clone())
            .unwrap()
            .with_background_release(),
    );
    let mut sandbox = boot("bgnet", &dir, &pool, true).await;
    sandbox.exec_shell("echo kept > /tmp/k").await.unwrap();

    sandbox.pause().await.unwrap();
    pool.settle().await;
    let left_after_settle = namespaces_in(slots.clone());
    sandbox.resume().await.unwrap();
    let kept = sandbox.exec_shell("cat /tmp/k").await.unwrap();
    sandbox.destroy().await.unwrap();
    let left = namespaces_in(slots);

    assert!(left_after_settle.is_empty(), "{left_after_settle:?}");
    assert_eq!(kept.stdout, b"kept\n");
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn guest_cannot_reach_special_ranges_or_smtp_while_a_public_port_works() {
    let Some(_) = images() else { return };
    let _serial = SERIAL.lock().await;
    let outside = Outside::new("deny");
    let special = [
        ("192.0.0.1", "192.0.0.2"),
        ("192.0.2.1", "192.0.2.2"),
        ("198.18.0.1", "198.18.0.2"),
        ("198.51.100.1", "198.51.100.2"),
        ("203.0.113.1", "203.0.113.2"),
    ];
    for (host_ip, ip) in special {
        outside.add_address(host_ip, ip);
    }
    let dir = TestDir::new("deny");
    let pool = Arc::new(NetworkPool::new(3040..3050).unwrap());
    let sandbox = boot("deny", &dir, &pool, true).await;

    let public = guest_curl(&sandbox, &format!("http://{OUTSIDE_IP}:8080/hello.txt")).await;
    let smtp = guest_curl(&sandbox, &format!("http://{OUTSIDE_IP}:25/hello.txt")).await;
    let mut denied = Vec::new();
    for (_, ip) in special {
        denied.push((
            ip,
            guest_curl(&sandbox, &format!("http://{ip}:8080/hello.txt")).await,
        ));
    }
    sandbox.destroy().await.unwrap();
    drop(outside);

    assert_eq!(public, "hello from outside\n");
    assert_eq!(smtp, "FAILED\n");
    for (ip, got) in denied {
        assert_eq!(got, "FAILED\n", "{ip}");
    }
}

/// Opens `count` TCP connections to `to` from the guest as fast as it can,
/// keeping them open; prints how many opened.
const FLOOD: &str = r"
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held, ok = [], 0
for _ in range(count):
    s = socket.socket()
    s.settimeout(0.5)
    try:
        s.connect((host, port))
        held.append(s)
        ok += 1
    except OSError:
        s.close()
print(ok)
";

#[tokio::test]
async fn connection_flood_hits_the_sandbox_limit_while_envd_answers() {
    let Some(_) = images() else { return };
    let _serial = SERIAL.lock().await;
    let outside = Outside::new("flood");
    let dir = TestDir::new("flood");
    let policy = netns::EgressPolicy {
        max_connections: 40,
        new_connections_per_sec: 20,
        ..netns::EgressPolicy::default()
    };
    let pool = Arc::new(NetworkPool::new(3050..3060).unwrap().with_policy(policy));
    let sandbox = boot("flood", &dir, &pool, true).await;
    sandbox
        .envd()
        .write_file("/tmp/flood.py", None, FLOOD.as_bytes().to_vec())
        .await
        .unwrap();

    let command = format!("python3 /tmp/flood.py {OUTSIDE_IP} 8080 100");
    let flood = sandbox.exec_shell(&command);
    let during = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        sandbox.exec_shell("echo alive").await
    };
    let (flood, during) = tokio::join!(flood, during);
    let after = sandbox.exec_shell("echo still-alive").await.unwrap();
    sandbox.destroy().await.unwrap();
    drop(outside);

    let flood = flood.unwrap();
    let opened: usize = String::from_utf8_lossy(&flood.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{flood:?}"));
    assert!(opened >= 1, "none opened");
    assert!(opened <= 40, "{opened} connections held open, limit 40");
    assert_eq!(during.unwrap().stdout, b"alive\n");
    assert_eq!(after.stdout, b"still-alive\n");
}

/// A TCP listener on the host's 127.0.0.1 that answers `host-secret` and
/// counts the connections it accepted.
fn host_loopback_service() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Write as _;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = conn.write_all(b"host-secret\n");
        }
    });
    (port, accepted)
}

/// Reads a line from `ip:port` in the guest with bash's `/dev/tcp`;
/// prints it or `FAILED`.
async fn guest_tcp_line(sandbox: &Sandbox, ip: &str, port: u16) -> String {
    let out = sandbox
        .exec_shell(&format!(
            "timeout 5 bash -c 'exec 3<>/dev/tcp/{ip}/{port} && head -n1 <&3' 2>/dev/null || echo FAILED"
        ))
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn boot_user_mode(
    name: &str,
    dir: &TestDir,
    internet: Option<bool>,
) -> Result<Sandbox, sandbox_core::SandboxError> {
    let config = SandboxConfig {
        internet,
        ..SandboxConfig::new(name, images().unwrap(), &dir.0)
    };
    Sandbox::boot(&backend(), config).await
}

#[tokio::test]
async fn user_mode_guest_cannot_reach_host_loopback_or_outside() {
    let Some(_) = images() else { return };
    let _serial = SERIAL.lock().await;
    let (port, accepted) = host_loopback_service();
    // Reachable from the host; without isolation slirp would connect there.
    let outside = Outside::new("user");
    let dir = TestDir::new("usernet");
    let sandbox = boot_user_mode("usernet", &dir, None).await.unwrap();

    let via_gateway = guest_tcp_line(&sandbox, "10.0.2.2", port).await;
    let outside_http = guest_curl(&sandbox, &format!("http://{OUTSIDE_IP}:8080/hello.txt")).await;
    let dns = guest_tcp_line(&sandbox, "10.0.2.3", 53).await;
    let envd_works = sandbox.exec_shell("echo still-here").await.unwrap();
    let record_internet = sandbox.record().config.internet;
    sandbox.destroy().await.unwrap();
    drop(outside);

    assert_eq!(via_gateway, "FAILED\n");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(outside_http, "FAILED\n");
    assert_eq!(dns, "FAILED\n");
    assert_eq!(envd_works.stdout, b"still-here\n");
    assert!(!record_internet);
}

#[tokio::test]
async fn user_mode_refuses_a_sandbox_asking_for_internet_and_says_why() {
    let Some(_) = images() else { return };
    let dir = TestDir::new("userinet");

    let err = boot_user_mode("userinet", &dir, Some(true))
        .await
        .unwrap_err();

    let message = err.to_string();
    assert!(message.contains("10.0.2.2"), "{message}");
    assert!(message.contains("namespace"), "{message}");
    assert!(!dir.0.join("sandboxes").join("userinet").exists());
}
