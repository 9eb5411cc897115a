//! Persistent TAP devices through the tun driver's ioctls (rtnetlink cannot
//! create them). A TAP is made in the namespace of the thread that opens
//! `/dev/net/tun`, so call this on a thread inside the target namespace.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

/// `struct ifreq` as the tun ioctls read it: the name, then the flags in the
/// union (the rest of the 40-byte union is padding).
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates TAP `name` (`IFF_TAP | IFF_NO_PI`), persistent so it outlives this
/// call and a VMM can attach to it by name later.
pub(crate) fn create_persistent_tap(name: &str) -> io::Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `tun` is an open /dev/net/tun fd and `req` is a live,
    // ifreq-sized struct that the kernel reads (and writes the name back
    // into) only during the call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &raw mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNSETPERSIST takes an integer argument, no memory.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
    if rc < 0 {
        // Closing `tun` destroys the not-yet-persistent device.
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
