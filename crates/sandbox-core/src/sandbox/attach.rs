//! How a sandbox's VMM is wired: its network attachment (a namespace's
//! TAP or QEMU's user-mode network), its VM spec and its root disk's base.

use super::{SandboxConfig, USER_NET_KERNEL_ARGS};
use crate::disk;
use crate::error::SandboxError;
use crate::images::GuestImages;
use crate::vmm::{Hypervisor, VmNetwork, VmSpec};
use envd_client::ENVD_PORT;
use netns::Network;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

/// The read-only base of a sandbox's root disk: its snapshot's disk, else
/// its template's raw image.
pub(super) fn root_base(
    hypervisor: &dyn Hypervisor,
    images: &GuestImages,
    snapshot: Option<&Path>,
) -> (PathBuf, disk::DiskFormat) {
    match snapshot {
        Some(snapshot) => hypervisor.snapshot_disk(snapshot),
        None => (images.rootfs.clone(), disk::DiskFormat::Raw),
    }
}

/// How the host reaches a sandbox's guest.
pub(super) enum Attach<'a> {
    /// QEMU's user-mode network, envd forwarded from this local address.
    User(SocketAddr),
    /// The sandbox's own network namespace.
    Namespace(&'a Network),
}

impl Attach<'_> {
    pub(super) fn vm_network(&self) -> VmNetwork {
        match self {
            Attach::User(host) => VmNetwork::UserForward { host: *host },
            Attach::Namespace(net) => VmNetwork::Tap {
                ifname: net.guest().tap_name.clone(),
                mac: net.guest().mac.clone(),
                netns: Some(net.netns_path().to_path_buf()),
            },
        }
    }

    pub(super) fn envd_addr(&self) -> SocketAddr {
        match self {
            Attach::User(host) => *host,
            Attach::Namespace(net) => SocketAddr::from((net.host_reachable_ip(), ENVD_PORT)),
        }
    }

    /// The guest's address, gateway and DNS on the kernel command line.
    pub(super) fn kernel_args(&self) -> String {
        match self {
            Attach::User(_) => USER_NET_KERNEL_ARGS.to_string(),
            Attach::Namespace(net) => {
                let guest = net.guest();
                match guest.kernel_dns_arg() {
                    Some(dns) => format!("{} {dns}", guest.kernel_ip_arg()),
                    None => guest.kernel_ip_arg(),
                }
            }
        }
    }
}

/// The guest kernel's command line for sandbox `id` attached as `attach`
/// (the network part follows the attachment), `extra` appended.
pub(super) fn guest_kernel_args(id: &str, attach: &Attach<'_>, extra: &str) -> String {
    format!(
        "console=ttyS0 root=/dev/vda rw init=/sbin/petrel-init panic=-1 quiet tsc=reliable {} petrel.hostname={id}{}{extra}",
        attach.kernel_args(),
        if extra.is_empty() { "" } else { " " },
    )
}

/// The VM of a sandbox: its overlay disk in `run_dir`, attached as `attach`.
pub(super) fn vm_spec(config: &SandboxConfig, run_dir: &Path, attach: &Attach<'_>) -> VmSpec {
    VmSpec {
        id: config.id.clone(),
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
        kernel: config.images.kernel.clone(),
        kernel_args: guest_kernel_args(&config.id, attach, &config.extra_kernel_args),
        root_disk: disk::locate(run_dir).path,
        root_disk_qcow2: disk::locate(run_dir).is_qcow2(),
        extra_drives: config.extra_drives.clone(),
        network: attach.vm_network(),
        run_dir: run_dir.to_path_buf(),
        base_image: Some(config.images.rootfs.clone()),
    }
}

pub(super) fn free_local_port() -> Result<SocketAddr, SandboxError> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| SandboxError::Io {
            what: "reserve a local port on",
            path: PathBuf::from("127.0.0.1"),
            source,
        })?;
    listener.local_addr().map_err(|source| SandboxError::Io {
        what: "read the local port of",
        path: PathBuf::from("127.0.0.1"),
        source,
    })
}
