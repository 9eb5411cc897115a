//! A restored clone's own identity, applied by `POST /init` without running
//! a program in the guest: its hostname (kernel, `/etc/hostname`, the
//! `127.0.1.1` line of `/etc/hosts`) and a CRNG stirred with host
//! randomness and reseeded at once, so clones of one snapshot neither share
//! a name nor a random stream.
//!
//! Only an envd that owns its system applies it ([`crate::Config`]'s
//! `manage_identity`, on in a guest); elsewhere a request for it is refused.

use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::path::Path;

use crate::error::EnvdError;

/// Longest hostname the kernel takes (`HOST_NAME_MAX`).
const HOST_NAME_MAX: usize = 64;
/// Most seed bytes `/init` accepts (more adds nothing).
pub const MAX_SEED_BYTES: usize = 512;
/// Least seed bytes `/init` accepts: a full CRNG key.
pub const MIN_SEED_BYTES: usize = 32;

// RNDRESEEDCRNG = _IO('R', 0x07): reseed the CRNG from the input pool now.
nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);

/// Checks `name` is a hostname: 1 to 64 letters, digits, `-` and `.`, not
/// starting or ending with `-` or `.`.
pub fn check_hostname(name: &str) -> Result<(), EnvdError> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    let edges_ok = !name.starts_with(['-', '.']) && !name.ends_with(['-', '.']);
    if name.is_empty() || name.len() > HOST_NAME_MAX || !valid_chars || !edges_ok {
        return Err(EnvdError::InvalidArgument(format!(
            "invalid hostname '{name}': 1 to {HOST_NAME_MAX} letters, digits, '-' or '.', \
             not starting or ending with '-' or '.'"
        )));
    }
    Ok(())
}

/// Decodes the base64 `seed` and checks its length.
pub fn decode_seed(seed: &str) -> Result<Vec<u8>, EnvdError> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(seed)
        .map_err(|e| EnvdError::InvalidArgument(format!("invalid entropy seed: {e}")))?;
    if !(MIN_SEED_BYTES..=MAX_SEED_BYTES).contains(&bytes.len()) {
        return Err(EnvdError::InvalidArgument(format!(
            "entropy seed of {} bytes: {MIN_SEED_BYTES} to {MAX_SEED_BYTES} are taken",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Makes `name` the system's hostname: the kernel's, `etc/hostname` and
/// the `127.0.1.1` line of `etc/hosts` (added when missing).
pub fn set_hostname(name: &str, etc: &Path) -> Result<(), EnvdError> {
    nix::unistd::sethostname(name)
        .map_err(|e| EnvdError::PermissionDenied(format!("sethostname {name}: {e}")))?;
    replace_file(&etc.join("hostname"), format!("{name}\n").as_bytes())?;
    let hosts_path = etc.join("hosts");
    let hosts = match std::fs::read_to_string(&hosts_path) {
        Ok(hosts) => hosts,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(EnvdError::io(hosts_path.display(), &err)),
    };
    replace_file(&hosts_path, hosts_with_name(&hosts, name).as_bytes())
}

/// `hosts` with its `127.0.1.1` line naming `name` (appended when there
/// is none); every other line kept as it is.
pub fn hosts_with_name(hosts: &str, name: &str) -> String {
    let mut out = String::with_capacity(hosts.len() + name.len() + 16);
    let mut found = false;
    for line in hosts.lines() {
        if line.split_whitespace().next() == Some("127.0.1.1") {
            if !found {
                out.push_str(&format!("127.0.1.1 {name}\n"));
                found = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !found {
        out.push_str(&format!("127.0.1.1 {name}\n"));
    }
    out
}

/// Mixes `seed` into the kernel's input pool and makes the CRNG reseed
/// from it at once (`RNDRESEEDCRNG`, root only).
pub fn reseed(seed: &[u8]) -> Result<(), EnvdError> {
    let mut urandom = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| EnvdError::io("/dev/urandom", &e))?;
    urandom
        .write_all(seed)
        .map_err(|e| EnvdError::io("writing the seed to /dev/urandom", &e))?;
    // SAFETY: RNDRESEEDCRNG takes no argument; the fd is an open
    // /dev/urandom owned by `urandom` for the whole call.
    unsafe { rnd_reseed_crng(urandom.as_raw_fd()) }
        .map_err(|e| EnvdError::PermissionDenied(format!("RNDRESEEDCRNG on /dev/urandom: {e}")))?;
    Ok(())
}

/// Replaces `path` with `contents` through a temporary file and a rename,
/// so a reader never sees it half written.
fn replace_file(path: &Path, contents: &[u8]) -> Result<(), EnvdError> {
    let tmp = path.with_extension("petrel-tmp");
    let written = std::fs::write(&tmp, contents).and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        EnvdError::io(path.display(), &e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_line_is_replaced_and_others_kept() {
        let hosts = "127.0.0.1 localhost\n127.0.1.1 template\n::1 ip6-localhost\n";

        let out = hosts_with_name(hosts, "clone-1");

        assert_eq!(
            out,
            "127.0.0.1 localhost\n127.0.1.1 clone-1\n::1 ip6-localhost\n"
        );
    }

    #[test]
    fn hosts_line_is_added_when_missing() {
        let out = hosts_with_name("127.0.0.1 localhost", "box");

        assert_eq!(out, "127.0.0.1 localhost\n127.0.1.1 box\n");
    }

    #[test]
    fn check_hostname_rejects_what_the_kernel_or_hosts_cannot_take() {
        let long = "a".repeat(65);

        for bad in ["", "-a", "a.", "a b", "a/b", "a\nb", long.as_str()] {
            assert!(
                matches!(check_hostname(bad), Err(EnvdError::InvalidArgument(_))),
                "{bad:?} accepted"
            );
        }
        assert!(check_hostname("sbx-1.petrel").is_ok());
    }

    #[test]
    fn decode_seed_rejects_short_long_and_non_base64() {
        use base64::Engine as _;
        let encode = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7_u8; n]);

        assert!(decode_seed(&encode(31)).is_err());
        assert!(decode_seed(&encode(513)).is_err());
        assert!(decode_seed("not base64!").is_err());
        assert_eq!(decode_seed(&encode(32)).unwrap(), vec![7; 32]);
    }
}
