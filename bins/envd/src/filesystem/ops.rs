//! Filesystem operations done on behalf of a user: directories created for
//! the user are owned by them, listings walk to a depth.

use crate::error::EnvdError;
use crate::filesystem::entry::entry_info;
use crate::user::UserInfo;
use envd_proto::filesystem::EntryInfo;
use std::fs;
use std::path::{Path, PathBuf};

/// Gives `path` to `user` (only possible, and only done, when envd is root).
pub fn chown_to(path: &Path, user: &UserInfo) -> Result<(), EnvdError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .map_err(|e| EnvdError::io(format!("chown {}", path.display()), &e))
}

/// Creates `dir` and its missing parents, each owned by `user`.
/// Returns whether `dir` itself was created.
pub fn create_dirs(dir: &Path, user: &UserInfo) -> Result<bool, EnvdError> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|p| fs::symlink_metadata(p).is_err())
        .collect();
    for path in missing.iter().rev() {
        match fs::create_dir(path) {
            Ok(()) => chown_to(path, user)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(EnvdError::io(format!("mkdir {}", path.display()), &e)),
        }
    }
    if !missing.is_empty() || dir.is_dir() {
        return Ok(!missing.is_empty());
    }
    Err(EnvdError::InvalidArgument(format!(
        "{} exists and is not a directory",
        dir.display()
    )))
}

/// The entries under `dir`, down to `depth` levels (1 = direct children),
/// each directory's children sorted by name, never following symlinks
/// below `dir`.
pub fn list_dir(dir: &Path, depth: u32) -> Result<Vec<EntryInfo>, EnvdError> {
    let meta =
        fs::metadata(dir).map_err(|e| EnvdError::io(format!("stat {}", dir.display()), &e))?;
    if !meta.is_dir() {
        return Err(EnvdError::InvalidArgument(format!(
            "path {} is not a directory",
            dir.display()
        )));
    }
    let mut entries = Vec::new();
    walk(dir, depth.max(1), &mut entries)?;
    Ok(entries)
}

fn walk(dir: &Path, depth: u32, out: &mut Vec<EntryInfo>) -> Result<(), EnvdError> {
    let reader =
        fs::read_dir(dir).map_err(|e| EnvdError::io(format!("reading {}", dir.display()), &e))?;
    let mut children: Vec<PathBuf> = reader.filter_map(|e| e.ok().map(|e| e.path())).collect();
    children.sort();
    for child in children {
        // Entries can vanish while we walk; skip those.
        let Ok(info) = entry_info(&child) else {
            continue;
        };
        let descend = depth > 1 && !info.is_symlink && child.is_dir();
        out.push(info);
        if descend {
            walk(&child, depth - 1, out)?;
        }
    }
    Ok(())
}

/// Removes a file, symlink or directory tree; a missing path is not an
/// error (like `os.RemoveAll`).
pub fn remove(path: &Path) -> Result<(), EnvdError> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(|e| EnvdError::io(format!("removing {}", path.display()), &e))
}

/// Renames `source` to `destination`, creating the destination's parents.
pub fn rename(source: &Path, destination: &Path, user: &UserInfo) -> Result<(), EnvdError> {
    fs::symlink_metadata(source)
        .map_err(|e| EnvdError::io(format!("stat {}", source.display()), &e))?;
    if let Some(parent) = destination.parent() {
        create_dirs(parent, user)?;
    }
    fs::rename(source, destination).map_err(|e| {
        EnvdError::io(
            format!("moving {} to {}", source.display(), destination.display()),
            &e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_two_listing_includes_grandchildren_in_order() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("b")).unwrap();
        fs::write(dir.path().join("b/inner"), b"").unwrap();
        fs::write(dir.path().join("a"), b"").unwrap();

        let entries = list_dir(dir.path(), 2).unwrap();

        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "inner"]);
    }

    #[test]
    fn removing_a_missing_path_succeeds() {
        let dir = tempfile::tempdir().unwrap();

        let result = remove(&dir.path().join("nope"));

        assert!(result.is_ok());
    }

    #[test]
    fn listing_a_file_is_invalid_argument() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"").unwrap();

        let err = list_dir(&file, 1).unwrap_err();

        assert!(matches!(err, EnvdError::InvalidArgument(_)));
    }
}
