//! File metadata stored as `user.e2b.<key>` extended attributes.

use crate::error::EnvdError;
use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// Prefix of the extended attributes that hold user metadata.
pub const PREFIX: &str = "user.e2b.";

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn list_names(path: &CString) -> io::Result<Vec<u8>> {
    // SAFETY: a null buffer of size 0 only asks for the needed size.
    let size = unsafe { libc::llistxattr(path.as_ptr(), std::ptr::null_mut(), 0) };
    let size = usize::try_from(size).map_err(|_| io::Error::last_os_error())?;
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` is writable for `buf.len()` bytes for the whole call.
    let read = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let read = usize::try_from(read).map_err(|_| io::Error::last_os_error())?;
    buf.truncate(read);
    Ok(buf)
}

fn get_value(path: &CString, name: &CString) -> io::Result<Vec<u8>> {
    // SAFETY: a null buffer of size 0 only asks for the needed size.
    let size = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    let size = usize::try_from(size).map_err(|_| io::Error::last_os_error())?;
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` is writable for `buf.len()` bytes for the whole call.
    let read = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let read = usize::try_from(read).map_err(|_| io::Error::last_os_error())?;
    buf.truncate(read);
    Ok(buf)
}

/// The metadata attribute names (with [`PREFIX`]) in a `listxattr` buffer.
fn metadata_names(names: &[u8]) -> impl Iterator<Item = &[u8]> {
    names
        .split(|b| *b == 0)
        .filter(|n| n.starts_with(PREFIX.as_bytes()))
}

/// The metadata of `path` (keys without the prefix). Filesystems without
/// xattr support simply have none.
pub fn read_metadata(path: &Path) -> HashMap<String, String> {
    let mut metadata = HashMap::new();
    let Ok(cpath) = c_path(path) else {
        return metadata;
    };
    let Ok(names) = list_names(&cpath) else {
        return metadata;
    };
    for raw in metadata_names(&names) {
        let Some(key) = std::str::from_utf8(raw)
            .ok()
            .and_then(|n| n.strip_prefix(PREFIX))
        else {
            continue;
        };
        let Ok(name) = CString::new(raw) else {
            continue;
        };
        if let Ok(value) = get_value(&cpath, &name) {
            metadata.insert(key.to_owned(), String::from_utf8_lossy(&value).into_owned());
        }
    }
    metadata
}

/// Stores `metadata` on `path` (keys lowercased, as the SDK documents).
pub fn write_metadata<'a>(
    path: &Path,
    metadata: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), EnvdError> {
    let cpath = c_path(path).map_err(|e| EnvdError::io(path.display(), &e))?;
    for (key, value) in metadata {
        let name = CString::new(format!("{PREFIX}{}", key.to_ascii_lowercase()))
            .map_err(|_| EnvdError::InvalidArgument(format!("invalid metadata key '{key}'")))?;
        // SAFETY: all pointers are valid for the given lengths for the call.
        let rc = unsafe {
            libc::lsetxattr(
                cpath.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return Err(EnvdError::io(
                format!("setting metadata '{key}' on {}", path.display()),
                &err,
            ));
        }
    }
    Ok(())
}

/// Removes every metadata attribute of `path` (an overwritten file keeps
/// its extended attributes otherwise). A filesystem without xattr support
/// has none to remove.
pub fn clear_metadata(path: &Path) -> Result<(), EnvdError> {
    let cpath = c_path(path).map_err(|e| EnvdError::io(path.display(), &e))?;
    let names = match list_names(&cpath) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => {
            return Err(EnvdError::io(
                format!("listing metadata of {}", path.display()),
                &e,
            ));
        }
    };
    for raw in metadata_names(&names) {
        let Ok(name) = CString::new(raw) else {
            continue;
        };
        // SAFETY: both pointers are valid NUL-terminated strings for the call.
        let rc = unsafe { libc::lremovexattr(cpath.as_ptr(), name.as_ptr()) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENODATA) {
                return Err(EnvdError::io(
                    format!("clearing metadata of {}", path.display()),
                    &err,
                ));
            }
        }
    }
    Ok(())
}
