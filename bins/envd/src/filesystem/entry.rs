//! Building `EntryInfo` from a path.

use crate::error::EnvdError;
use crate::user::{group_name, user_name};
use crate::xattr::read_metadata;
use envd_proto::filesystem::{EntryInfo, FileType};
use std::fs::{self, FileType as FsType, Metadata};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;

fn file_type(ft: FsType) -> FileType {
    if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else {
        FileType::File
    }
}

/// Permissions the way Go's `os.FileMode.String()` prints them
/// (`-rw-r--r--`, `drwxr-xr-x`, `Lrwxrwxrwx`, ...), as E2B's envd reports.
pub fn permissions_string(meta: &Metadata) -> String {
    let ft = meta.file_type();
    let mode = meta.mode();
    let mut out = String::new();
    let flags = [
        (ft.is_dir(), 'd'),
        (ft.is_symlink(), 'L'),
        (ft.is_block_device() || ft.is_char_device(), 'D'),
        (ft.is_fifo(), 'p'),
        (ft.is_socket(), 'S'),
        (mode & 0o4000 != 0, 'u'),
        (mode & 0o2000 != 0, 'g'),
        (ft.is_char_device(), 'c'),
        (mode & 0o1000 != 0, 't'),
    ];
    out.extend(flags.iter().filter(|(set, _)| *set).map(|(_, c)| *c));
    if out.is_empty() {
        out.push('-');
    }
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        out.push(if mode & (1 << (8 - i)) != 0 { c } else { '-' });
    }
    out
}

/// The `EntryInfo` of `path` (not following a final symlink; for a symlink,
/// `type` is the target's type and `symlinkTarget` the resolved target).
pub fn entry_info(path: &Path) -> Result<EntryInfo, EnvdError> {
    let meta = fs::symlink_metadata(path)
        .map_err(|e| EnvdError::io(format!("stat {}", path.display()), &e))?;
    let is_symlink = meta.file_type().is_symlink();
    let (ty, symlink_target) = if is_symlink {
        let target = fs::canonicalize(path).ok();
        let target_type = target
            .as_deref()
            .and_then(|t| fs::metadata(t).ok())
            .map_or(FileType::Symlink, |m| file_type(m.file_type()));
        let shown = target.map_or_else(
            || {
                fs::read_link(path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default()
            },
            |t| t.display().to_string(),
        );
        (target_type, Some(shown))
    } else {
        (file_type(meta.file_type()), None)
    };
    let name = path
        .file_name()
        .map_or_else(|| "/".to_owned(), |n| n.to_string_lossy().into_owned());
    Ok(EntryInfo {
        name,
        r#type: ty.into(),
        path: path.display().to_string(),
        size: i64::try_from(meta.len()).unwrap_or(i64::MAX),
        mode: meta.mode() & 0o7777,
        permissions: permissions_string(&meta),
        owner: user_name(meta.uid()),
        group: group_name(meta.gid()),
        modified_time: Some(envd_proto::wkt::Timestamp {
            seconds: meta.mtime(),
            nanos: i32::try_from(meta.mtime_nsec()).unwrap_or(0),
        }),
        symlink_target,
        metadata: read_metadata(path),
        is_symlink,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn regular_file_permissions_look_like_go() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();

        let perms = permissions_string(&fs::metadata(&file).unwrap());

        assert_eq!(perms, "-rw-r--r--");
    }

    #[test]
    fn directory_permissions_start_with_d() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();

        let perms = permissions_string(&fs::metadata(dir.path()).unwrap());

        assert_eq!(perms, "drwxr-xr-x");
    }

    #[test]
    fn symlink_reports_target_type_and_flag() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::create_dir(&target).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();

        let info = entry_info(&link).unwrap();

        assert!(info.is_symlink);
        assert_eq!(info.r#type(), FileType::Directory);
        assert_eq!(
            info.symlink_target.as_deref(),
            Some(fs::canonicalize(&target).unwrap().to_str().unwrap())
        );
    }
}
