//! What the Firecracker backend does on the host around the process:
//! socket path limits, the `rootfs` link, the TAP check, moving and
//! copying state files.

use std::path::Path;

use super::{API_SOCKET, ROOTFS_LINK, UFFD_SOCKET, VMM_DIR};
use crate::error::SandboxError;
use crate::vmm::VmSpec;

/// Longest Unix socket path (`sun_path` holds 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Fails, naming the path, when the run directory is too deep for the API
/// and page server sockets in it (Firecracker would exit at start with
/// "path must be shorter than SUN_LEN").
pub(super) fn check_socket_paths(spec: &VmSpec) -> Result<(), SandboxError> {
    for name in [API_SOCKET, UFFD_SOCKET] {
        let path = spec.run_dir.join(VMM_DIR).join(name);
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(SandboxError::Firecracker {
                vm: spec.id.clone(),
                message: format!(
                    "socket path {} is {len} bytes, longer than Unix sockets allow ({MAX_SOCKET_PATH}): use a shorter data dir",
                    path.display()
                ),
            });
        }
    }
    Ok(())
}

/// Points `vmm_dir/rootfs` at the spec's root disk (replacing an old link).
pub(super) fn link_rootfs(spec: &VmSpec, vmm_dir: &Path) -> Result<(), SandboxError> {
    let link = vmm_dir.join(ROOTFS_LINK);
    crate::disk::remove_file_if_exists(&link)?;
    std::os::unix::fs::symlink(&spec.root_disk, &link).map_err(|source| SandboxError::Io {
        what: "link the root disk at",
        path: link,
        source,
    })
}

/// Fails unless network interface `ifname` exists in namespace `netns` (or
/// in this process's namespace).
pub(super) async fn check_tap(ifname: &str, netns: Option<&Path>) -> Result<(), String> {
    let ifname_owned = ifname.to_string();
    let found = match netns {
        // `/proc/thread-self/net` shows the namespace of the calling thread.
        Some(netns) => netns::run_in_netns(netns, move || interface_exists(&ifname_owned))
            .await
            .map_err(|e| e.to_string())?,
        None => interface_exists(ifname),
    }
    .map_err(|e| format!("cannot list network interfaces: {e}"))?;
    if found {
        Ok(())
    } else {
        Err(format!(
            "TAP device {ifname} does not exist{}",
            netns.map_or_else(String::new, |p| format!(" in {}", p.display()))
        ))
    }
}

pub(super) fn interface_exists(ifname: &str) -> std::io::Result<bool> {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev")?;
    Ok(dev
        .lines()
        .skip(2)
        .filter_map(|line| line.split_once(':'))
        .any(|(name, _)| name.trim() == ifname))
}

pub(super) fn create_dir(dir: &Path) -> Result<(), SandboxError> {
    std::fs::create_dir_all(dir).map_err(|source| SandboxError::Io {
        what: "create directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// Moves a file Firecracker wrote to `to` (renamed, or copied when `to` is
/// on another filesystem), owned by root, mode 0600: a confined
/// Firecracker's uid keeps no hold on saved state.
pub(super) fn move_into(from: &Path, to: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what, source| SandboxError::Io {
        what,
        path: to.to_path_buf(),
        source,
    };
    std::os::unix::fs::chown(from, Some(0), Some(0)).map_err(|e| io("give root", e))?;
    std::fs::set_permissions(from, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("set mode of", e))?;
    match std::fs::rename(from, to) {
        Err(err) if err.kind() == std::io::ErrorKind::CrossesDevices => {
            let partial = to.with_extension("partial");
            copy_file(from, &partial)?;
            std::fs::rename(&partial, to).map_err(|e| io("rename into", e))?;
            std::fs::remove_file(from).map_err(|e| io("remove the source of", e))
        }
        other => other.map_err(|e| io("rename into", e)),
    }
}

/// Copies `from` to `to` (replacing it), sparse as the kernel copies.
pub(super) fn copy_file(from: &Path, to: &Path) -> Result<(), SandboxError> {
    crate::disk::remove_file_if_exists(to)?;
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|source| SandboxError::Io {
            what: "copy into",
            path: to.to_path_buf(),
            source,
        })
}

pub(super) fn file_size(path: &Path) -> Result<u64, SandboxError> {
    std::fs::metadata(path)
        .map(|meta| meta.len())
        .map_err(|source| SandboxError::Io {
            what: "stat",
            path: path.to_path_buf(),
            source,
        })
}

/// The real uid of process `pid` (a confined Firecracker's own).
pub(super) fn process_uid(pid: u32) -> Result<u32, SandboxError> {
    let path = std::path::PathBuf::from(format!("/proc/{pid}/status"));
    let status = std::fs::read_to_string(&path).map_err(|source| SandboxError::Io {
        what: "read",
        path: path.clone(),
        source,
    })?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
        .ok_or_else(|| SandboxError::Io {
            what: "find the uid in",
            path,
            source: std::io::Error::other("no Uid: line"),
        })
}

#[cfg(test)]
mod tests {
    use super::super::tests::tap_spec;
    use super::*;

    #[test]
    fn create_rejects_a_run_dir_too_deep_for_its_sockets_naming_the_path() {
        let deep = format!("/var/lib/{}/sandboxes/vm1", "d".repeat(80));

        let short = check_socket_paths(&tap_spec("/var/lib/petrel/sandboxes/0123456789abcdef"));
        let err = check_socket_paths(&tap_spec(&deep))
            .unwrap_err()
            .to_string();

        assert!(short.is_ok());
        assert!(
            err.contains(&deep) && err.contains("shorter data dir"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn check_tap_finds_loopback_and_refuses_a_missing_device() {
        let found = check_tap("lo", None).await;
        let missing = check_tap("ptl-no-such", None).await;

        assert_eq!(found, Ok(()));
        assert_eq!(
            missing,
            Err("TAP device ptl-no-such does not exist".to_string())
        );
    }
}
