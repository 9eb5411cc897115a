//! IPv4 forwarding: on in every sandbox namespace, and on the host while this
//! process has networks (restored when its last network is removed if it was
//! off before).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::error::{HOST_NETNS, NetError};
use crate::namespace::run_in_netns;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Host forwarding users in this process and the value found before the
/// first one.
#[derive(Debug)]
struct HostState {
    users: usize,
    /// `Some(old)` if we switched forwarding on and must put `old` back.
    restore: Option<String>,
}

static HOST: Mutex<HostState> = Mutex::new(HostState {
    users: 0,
    restore: None,
});

fn sysctl_err(path: &str, netns: &str, source: std::io::Error) -> NetError {
    NetError::Sysctl {
        path: PathBuf::from(path),
        netns: netns.into(),
        source,
    }
}

/// Takes a reference on host forwarding, switching it on if it is off.
pub(crate) fn acquire_host() -> Result<(), NetError> {
    let mut st = HOST.lock().unwrap_or_else(PoisonError::into_inner);
    if st.users == 0 {
        let old = fs::read_to_string(IP_FORWARD)
            .map_err(|e| sysctl_err(IP_FORWARD, HOST_NETNS, e))?
            .trim()
            .to_string();
        if old != "1" {
            fs::write(IP_FORWARD, "1").map_err(|e| sysctl_err(IP_FORWARD, HOST_NETNS, e))?;
            tracing::info!(was = %old, "host IPv4 forwarding switched on");
            st.restore = Some(old);
        }
    }
    st.users += 1;
    Ok(())
}

/// Drops a reference on host forwarding; the last one puts back the value
/// found by the first.
pub(crate) fn release_host() -> Result<(), NetError> {
    let mut st = HOST.lock().unwrap_or_else(PoisonError::into_inner);
    st.users = st.users.saturating_sub(1);
    if st.users == 0
        && let Some(old) = st.restore.take()
    {
        fs::write(IP_FORWARD, &old).map_err(|e| sysctl_err(IP_FORWARD, HOST_NETNS, e))?;
        tracing::info!(to = %old, "host IPv4 forwarding restored");
    }
    Ok(())
}

/// Inside the namespace at `path`: IPv4 forwarding on, IPv6 off (the guest
/// link is IPv4 only, so no IPv6 path exists in or out of the sandbox; a
/// kernel without IPv6 has no such sysctls, which is fine).
pub(crate) async fn configure_namespace(path: &Path, netns: &str) -> Result<(), NetError> {
    const IPV6_OFF: [&str; 2] = [
        "/proc/sys/net/ipv6/conf/all/disable_ipv6",
        "/proc/sys/net/ipv6/conf/default/disable_ipv6",
    ];
    let label = netns.to_string();
    run_in_netns(path, move || {
        fs::write(IP_FORWARD, "1").map_err(|e| sysctl_err(IP_FORWARD, &label, e))?;
        IPV6_OFF
            .iter()
            .try_for_each(|file| match fs::write(file, "1") {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(sysctl_err(file, &label, e))
                }
                _ => Ok(()),
            })
    })
    .await?
}
