//! The proxy: accepts redirected connections, reads their first bytes,
//! and relays the allowed ones to their original destination.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::rules::{DomainRule, allowed};
use crate::sniff::{Sniff, server_name};

/// Opens the outbound connection to an allowed destination (from the
/// sandbox's network namespace, so it leaves the way the guest's own
/// traffic does).
pub type Connect =
    Arc<dyn Fn(SocketAddrV4) -> BoxFuture<'static, io::Result<TcpStream>> + Send + Sync>;

/// Whether a destination may be reached at all, whatever name the client
/// gives (the platform's special-purpose ranges may not).
pub type Permit = Arc<dyn Fn(Ipv4Addr) -> bool + Send + Sync>;

/// Bounds of one proxy.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections relayed or being sniffed at once; more wait to be
    /// accepted.
    pub max_connections: usize,
    /// Time a client has to send the bytes that name the server.
    pub first_bytes: Duration,
    /// Time the outbound connection may take.
    pub connect: Duration,
    /// Bytes read while looking for the name before giving up.
    pub max_first_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            first_bytes: Duration::from_secs(10),
            connect: Duration::from_secs(10),
            max_first_bytes: 32 * 1024,
        }
    }
}

/// How the proxy reaches destinations.
#[derive(Clone)]
pub struct Route {
    pub connect: Connect,
    pub permit: Permit,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route").finish_non_exhaustive()
    }
}

/// A running proxy. Dropping it stops it and cuts the connections it
/// relays.
#[derive(Debug)]
pub struct Proxy {
    rules: watch::Sender<Arc<[DomainRule]>>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Serves `listener` (where the namespace's nft redirect sends the
    /// guest's connections) until dropped. `label` names the sandbox or
    /// network in logs.
    pub fn spawn(
        listener: TcpListener,
        rules: Vec<DomainRule>,
        route: Route,
        limits: Limits,
        label: String,
    ) -> Self {
        let (tx, rx) = watch::channel::<Arc<[DomainRule]>>(rules.into());
        let task = tokio::spawn(accept_loop(listener, rx, route, limits, label));
        Self { rules: tx, task }
    }

    /// Replaces the rules; connections already relayed stay open (the nft
    /// redirect decides which new connections come here at all).
    pub fn set_rules(&self, rules: Vec<DomainRule>) {
        self.rules.send_replace(rules.into());
    }

    /// The rules in force.
    pub fn rules(&self) -> Vec<DomainRule> {
        self.rules.borrow().to_vec()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    rules: watch::Receiver<Arc<[DomainRule]>>,
    route: Route,
    limits: Limits,
    label: String,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Owned here: aborting this task aborts every connection's task too.
    let mut connections = JoinSet::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(err) => {
                tracing::warn!(%label, error = %err, "egress proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let rules = rules.borrow().clone();
        let (route, label) = (route.clone(), label.clone());
        connections.spawn(async move {
            let _slot = slot;
            serve(client, &rules, &route, limits, &label).await;
        });
    }
}

/// The original destination of a connection the nft redirect sent here.
fn original_destination(client: &TcpStream) -> io::Result<SocketAddrV4> {
    let addr = nix::sys::socket::getsockopt(client, nix::sys::socket::sockopt::OriginalDst)
        .map_err(io::Error::from)?;
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}

/// Reads until the first bytes name a server (or cannot).
async fn read_name(
    client: &mut TcpStream,
    first: &mut Vec<u8>,
    limits: Limits,
) -> Result<String, String> {
    let mut chunk = [0u8; 4096];
    loop {
        match server_name(first) {
            Sniff::Name(name) => return Ok(name),
            Sniff::NoName(why) => return Err(why.to_string()),
            Sniff::NeedMore if first.len() >= limits.max_first_bytes => {
                return Err(format!("no server name in the first {} bytes", first.len()));
            }
            Sniff::NeedMore => {}
        }
        let n = client
            .read(&mut chunk)
            .await
            .map_err(|err| format!("reading the first bytes: {err}"))?;
        if n == 0 {
            return Err("client closed before naming a server".into());
        }
        first.extend_from_slice(&chunk[..n]);
    }
}

async fn serve(
    mut client: TcpStream,
    rules: &[DomainRule],
    route: &Route,
    limits: Limits,
    label: &str,
) {
    let start = Instant::now();
    let to = match original_destination(&client) {
        Ok(to) => to,
        Err(err) => {
            tracing::warn!(%label, error = %err, "egress proxy: no original destination");
            return;
        }
    };
    let mut first = Vec::new();
    let decision = if (route.permit)(*to.ip()) {
        match tokio::time::timeout(
            limits.first_bytes,
            read_name(&mut client, &mut first, limits),
        )
        .await
        {
            Ok(Ok(name)) if allowed(rules, &name) => Ok(name),
            Ok(Ok(name)) => Err(format!("{name} is not allowed")),
            Ok(Err(why)) => Err(why),
            Err(_) => Err(format!("no server name within {:?}", limits.first_bytes)),
        }
    } else {
        Err("special-purpose destination".into())
    };
    let name = match decision {
        Ok(name) => name,
        Err(why) => {
            tracing::info!(%label, %to, reason = %why, "egress proxy: connection refused");
            refuse(client);
            return;
        }
    };
    let upstream = match tokio::time::timeout(limits.connect, (route.connect)(to)).await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(err)) => {
            tracing::info!(%label, %to, %name, error = %err, "egress proxy: destination unreachable");
            refuse(client);
            return;
        }
        Err(_) => {
            tracing::info!(%label, %to, %name, "egress proxy: destination did not answer in time");
            refuse(client);
            return;
        }
    };
    tracing::debug!(%label, %to, %name, took_us = start.elapsed().as_micros() as u64, "egress proxy: relaying");
    if let Err(err) = relay(client, upstream, &first).await {
        tracing::debug!(%label, %to, %name, error = %err, "egress proxy: relay ended");
    }
}

async fn relay(mut client: TcpStream, mut upstream: TcpStream, first: &[u8]) -> io::Result<()> {
    upstream.write_all(first).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// Closes with a reset, so the client fails at once instead of seeing an
/// orderly end of a connection that never reached anything.
fn refuse(client: TcpStream) {
    let _ = client.set_zero_linger();
    drop(client);
}
