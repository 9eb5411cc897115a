//! The egress proxy of a network whose policy has domain rules: a listener
//! inside the namespace (where the `egress_names` redirect sends the
//! guest's connections) and outbound connections opened from there too, so
//! relayed traffic leaves through the namespace's NAT like the guest's own.

use std::io;
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use egress_proxy::{Limits, Proxy, Route};

use crate::addressing::GATEWAY_IP;
use crate::error::NetError;
use crate::namespace::run_in_netns;
use crate::policy::{EgressPolicy, NAME_PROXY_PORT, is_special_purpose};

/// Time an outbound connection of the proxy may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts, updates or stops `proxy` so that it serves `policy`'s domain
/// rules (none: no proxy).
pub(crate) async fn sync(
    proxy: &mut Option<Proxy>,
    policy: &EgressPolicy,
    netns_path: &Path,
    label: &str,
) -> Result<(), NetError> {
    if policy.names.is_empty() {
        *proxy = None;
        return Ok(());
    }
    if let Some(running) = proxy.as_ref() {
        running.set_rules(policy.names.clone());
        return Ok(());
    }
    let listener = run_in_netns(netns_path, || {
        let listener = TcpListener::bind(SocketAddrV4::new(GATEWAY_IP, NAME_PROXY_PORT))?;
        listener.set_nonblocking(true)?;
        Ok::<_, io::Error>(listener)
    })
    .await?
    .and_then(tokio::net::TcpListener::from_std)
    .map_err(|err| NetError::Thread {
        netns: label.to_string(),
        detail: format!("egress proxy listener on {GATEWAY_IP}:{NAME_PROXY_PORT}: {err}"),
    })?;
    let limits = Limits {
        max_connections: usize::try_from(policy.max_connections)
            .unwrap_or(usize::MAX)
            .clamp(1, Limits::default().max_connections),
        connect: CONNECT_TIMEOUT,
        ..Limits::default()
    };
    *proxy = Some(Proxy::spawn(
        listener,
        policy.names.clone(),
        route(netns_path.to_path_buf()),
        limits,
        label.to_string(),
    ));
    tracing::info!(
        netns = label,
        rules = policy.names.len(),
        "egress proxy started"
    );
    Ok(())
}

/// Connections from inside the namespace; special-purpose destinations
/// refused whatever name they carry.
fn route(netns_path: PathBuf) -> Route {
    let netns_path = Arc::new(netns_path);
    Route {
        connect: Arc::new(move |to: SocketAddrV4| {
            let netns_path = Arc::clone(&netns_path);
            Box::pin(async move {
                let stream = run_in_netns(&netns_path, move || {
                    let stream = TcpStream::connect_timeout(&to.into(), CONNECT_TIMEOUT)?;
                    stream.set_nonblocking(true)?;
                    Ok::<_, io::Error>(stream)
                })
                .await
                .map_err(io::Error::other)??;
                tokio::net::TcpStream::from_std(stream)
            })
        }),
        permit: Arc::new(|ip| !is_special_purpose(ip)),
    }
}
