//! Test support: host listings, a slot guard that cleans up even on panic,
//! a guest stand-in attached to a sandbox's TAP, and "outside" servers.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use netns::{GATEWAY_IP, GUEST_IP, GUEST_PREFIX, Network, run_in_netns};

/// Tests in one binary change host-wide state; they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "netns=info".into()),
        ))
        .with_test_writer()
        .try_init();
    SERIAL.lock().await
}

/// Polls `cond` every 20 ms for up to `secs` seconds; returns its last value.
pub async fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut ok = cond();
    while !ok && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ok = cond();
    }
    ok
}

/// Connects from the host (off the runtime's threads) and reads one line.
pub async fn connect_host(to: SocketAddrV4) -> io::Result<String> {
    tokio::task::spawn_blocking(move || connect_line(to))
        .await
        .unwrap()
}

/// Runs a command, panicking on failure; returns stdout.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What the host shows of links, namespaces, addresses, routes, nft rules
/// and forwarding.
#[derive(Debug, PartialEq, Eq)]
pub struct Listing {
    pub links: String,
    pub namespaces: String,
    pub addresses: String,
    pub routes: String,
    pub nft: String,
    pub ip_forward: String,
}

pub fn listing() -> Listing {
    Listing {
        links: sh(&["ip", "-o", "link"]),
        namespaces: sh(&["ip", "netns", "list"]),
        addresses: sh(&["ip", "-o", "addr"]),
        routes: sh(&["ip", "route"]),
        nft: sh(&["nft", "list", "ruleset"]),
        ip_forward: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
    }
}

/// Removes every leftover of its slots when dropped, even after a panic.
pub struct SlotGuard(pub std::ops::Range<u16>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let range = self.0.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(netns::cleanup_stale(range)).map(drop)
        })
        .join()
        .unwrap()
        .unwrap();
    }
}

/// ifreq as TUNSETIFF reads it.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    pad: [u8; 22],
}

fn attach_tap(name: &str) -> io::Result<OwnedFd> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: valid fd and a live ifreq-sized struct.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &raw mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tun.into())
}

fn packet_socket(ifname: &str) -> io::Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let cname = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: sll is a live sockaddr_ll of the given size.
    let rc = unsafe {
        libc::bind(
            owned.as_raw_fd(),
            (&raw const sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

/// Turns off checksum offload and segmentation offloads on `ifname` (in the
/// caller's namespace), so frames captured from it carry real checksums and
/// are at most one MTU, as a VM's NIC would hand them over.
fn disable_offloads(ifname: &str) -> io::Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    const ETHTOOL_STSO: u32 = 0x1f;
    const ETHTOOL_SGSO: u32 = 0x24;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReqData {
        name: [u8; 16],
        data: *mut EthtoolValue,
        pad: [u8; 16],
    }
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2).
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    for cmd in [ETHTOOL_STSO, ETHTOOL_SGSO, ETHTOOL_STXCSUM] {
        let mut value = EthtoolValue { cmd, data: 0 };
        let mut req = IfReqData {
            name: [0; 16],
            data: &raw mut value,
            pad: [0; 16],
        };
        req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
        // SAFETY: req and the value it points to are live for the call.
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &raw mut req) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn readable(fd: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&raw mut pfd, 1, 50) > 0 }
}

/// Copies frames from the TAP to the packet socket (the VM transmitting).
fn tap_to_wire(tap: &OwnedFd, wire: &OwnedFd, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        if !readable(tap.as_raw_fd()) {
            continue;
        }
        // SAFETY: buf is live and writable for its length.
        let n = unsafe { libc::read(tap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            // SAFETY: the first n bytes of buf are initialised.
            unsafe { libc::send(wire.as_raw_fd(), buf.as_ptr().cast(), n as usize, 0) };
        }
    }
}

/// Copies frames the stand-in guest sent (seen on g1) into the TAP.
fn wire_to_tap(wire: &OwnedFd, tap: &OwnedFd, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        if !readable(wire.as_raw_fd()) {
            continue;
        }
        // SAFETY: sockaddr_ll is plain data.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: buf and from are live and writable for the given sizes.
        let n = unsafe {
            libc::recvfrom(
                wire.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &raw mut len,
            )
        };
        if n > 0 && from.sll_pkttype != libc::PACKET_OUTGOING {
            // SAFETY: the first n bytes of buf are initialised.
            unsafe { libc::write(tap.as_raw_fd(), buf.as_ptr().cast(), n as usize) };
        }
    }
}

/// Stands in for the VM: a namespace with a veth `g0` holding the guest's
/// address and MAC, whose peer `g1` is bridged in user space to the sandbox's
/// TAP (frames copied both ways), exactly where a VM's NIC would be.
pub struct GuestStandIn {
    pub ns_name: String,
    pub ns_path: PathBuf,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl GuestStandIn {
    pub async fn attach(net: &Network) -> Self {
        let ns_name = format!("petrel-test-guest-{}", net.slot());
        sh(&["ip", "netns", "add", &ns_name]);
        let stand_in = Self {
            ns_path: PathBuf::from("/run/netns").join(&ns_name),
            ns_name: ns_name.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        let addr = format!("{GUEST_IP}/{GUEST_PREFIX}");
        let gw = GATEWAY_IP.to_string();
        let n = ns_name.as_str();
        for args in [
            vec!["link", "add", "g0", "type", "veth", "peer", "name", "g1"],
            vec!["link", "set", "g0", "address", &net.guest().mac],
            vec!["addr", "add", &addr, "dev", "g0"],
            vec!["link", "set", "lo", "up"],
            vec!["link", "set", "g0", "up"],
            vec!["link", "set", "g1", "up"],
            vec!["route", "add", "default", "via", &gw],
        ] {
            let mut full = vec!["ip", "-n", n];
            full.extend(args);
            sh(&full);
        }
        let tap_name = net.guest().tap_name.clone();
        let tap = Arc::new(
            net.run_in_netns(move || attach_tap(&tap_name))
                .await
                .unwrap()
                .unwrap(),
        );
        run_in_netns(&stand_in.ns_path, || disable_offloads("g0"))
            .await
            .unwrap()
            .unwrap();
        let wire = Arc::new(
            run_in_netns(&stand_in.ns_path, || packet_socket("g1"))
                .await
                .unwrap()
                .unwrap(),
        );
        let mut stand_in = stand_in;
        let (t1, w1, s1) = (
            Arc::clone(&tap),
            Arc::clone(&wire),
            Arc::clone(&stand_in.stop),
        );
        stand_in
            .threads
            .push(std::thread::spawn(move || tap_to_wire(&t1, &w1, &s1)));
        let s2 = Arc::clone(&stand_in.stop);
        stand_in
            .threads
            .push(std::thread::spawn(move || wire_to_tap(&wire, &tap, &s2)));
        stand_in
    }

    /// A TCP server on the guest address that answers each connection with
    /// the peer's address and closes.
    pub async fn serve(&self) -> u16 {
        serve_peer_address(&self.ns_path, GUEST_IP, 0).await
    }

    /// Connects from the guest to `to` and returns the first line the server
    /// sent.
    pub async fn connect(&self, to: SocketAddrV4) -> io::Result<String> {
        connect_from(&self.ns_path, to).await
    }
}

impl Drop for GuestStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns_name])
            .status();
    }
}

/// Binds `ip:port` inside the namespace at `ns` and answers every
/// connection with the peer's IP; returns the bound port.
pub async fn serve_peer_address(ns: &Path, ip: Ipv4Addr, port: u16) -> u16 {
    let listener = run_in_netns(ns, move || TcpListener::bind((ip, port)))
        .await
        .unwrap()
        .unwrap();
    serve_on(listener)
}

/// Answers every connection on `listener` with the peer's IP.
pub fn serve_on(listener: TcpListener) -> u16 {
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let peer = conn
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let _ = writeln!(conn, "{peer}");
        }
    });
    port
}

/// Connects from inside the namespace at `ns` and reads one line.
pub async fn connect_from(ns: &Path, to: SocketAddrV4) -> io::Result<String> {
    run_in_netns(ns, move || connect_line(to)).await.unwrap()
}

/// Connects (2 s timeout) and reads one line.
pub fn connect_line(to: SocketAddrV4) -> io::Result<String> {
    let stream = TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// A namespace standing for the internet: veth `<name>h` (host, `host_ip`/30)
/// to `<name>o` (inside, `ip`/30).
pub struct Outside {
    pub ns_name: String,
    pub ns_path: PathBuf,
    pub host_ip: Ipv4Addr,
    pub ip: Ipv4Addr,
    host_link: String,
    inner_link: String,
}

impl Outside {
    pub fn new(name: &str, host_ip: Ipv4Addr, ip: Ipv4Addr) -> Self {
        let ns_name = format!("petrel-test-{name}");
        let host_link = format!("{name}h");
        let inner = format!("{name}o");
        sh(&["ip", "netns", "add", &ns_name]);
        sh(&[
            "ip", "link", "add", &host_link, "type", "veth", "peer", "name", &inner, "netns",
            &ns_name,
        ]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &host_link,
        ]);
        sh(&["ip", "link", "set", &host_link, "up"]);
        sh(&[
            "ip",
            "-n",
            &ns_name,
            "addr",
            "add",
            &format!("{ip}/30"),
            "dev",
            &inner,
        ]);
        sh(&["ip", "-n", &ns_name, "link", "set", &inner, "up"]);
        sh(&["ip", "-n", &ns_name, "link", "set", "lo", "up"]);
        Self {
            ns_path: PathBuf::from("/run/netns").join(&ns_name),
            ns_name,
            host_ip,
            ip,
            host_link,
            inner_link: inner,
        }
    }

    pub async fn serve(&self, port: u16) -> u16 {
        serve_peer_address(&self.ns_path, self.ip, port).await
    }

    /// Adds another /30 between the host (`host_ip`) and this namespace
    /// (`ip`) on the same veth pair.
    pub fn add_address(&self, host_ip: Ipv4Addr, ip: Ipv4Addr) {
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &self.host_link,
        ]);
        sh(&[
            "ip",
            "-n",
            &self.ns_name,
            "addr",
            "add",
            &format!("{ip}/30"),
            "dev",
            &self.inner_link,
        ]);
    }

    /// Answers with the peer's address on `port` of every address of the
    /// namespace; returns the port.
    pub async fn serve_any(&self, port: u16) -> u16 {
        serve_peer_address(&self.ns_path, Ipv4Addr::UNSPECIFIED, port).await
    }

    /// Accepts connections on `ip:0` and keeps every one open until its
    /// peer closes it; returns the port.
    pub async fn hold(&self) -> u16 {
        let ip = self.ip;
        let listener = run_in_netns(&self.ns_path, move || TcpListener::bind((ip, 0)))
            .await
            .unwrap()
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                // Open until the peer closes, then closed from this side too.
                std::thread::spawn(move || {
                    let _ = io::copy(&mut conn, &mut io::sink());
                });
            }
        });
        port
    }
}

/// Opens `count` TCP connections from inside the namespace at `ns` to `to`
/// (1 s timeout each) and returns them, open, or the errors.
pub async fn open_many(ns: &Path, to: SocketAddrV4, count: usize) -> Vec<io::Result<TcpStream>> {
    run_in_netns(ns, move || {
        (0..count)
            .map(|_| TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(1)))
            .collect()
    })
    .await
    .unwrap()
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns_name])
            .status();
    }
}
