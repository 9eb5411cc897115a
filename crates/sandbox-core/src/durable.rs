//! Putting saved files on stable storage: the one place every save path
//! (pause, snapshot, warm snapshot, template import) goes through before it
//! reports success.
//!
//! A file is durable once its data is synced (`fsync`) and its name is
//! synced in its directory (`fsync` of the directory); a renamed or newly
//! made directory needs its parent synced too. Errors name the file.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::SandboxError;

/// Syncs the data of `path` (a file, or a block device such as a dm disk:
/// its flush reaches the loop device's backing file). A missing file is an
/// error: a save relies on every file it names.
pub fn sync_file(path: &Path) -> Result<(), SandboxError> {
    File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|source| SandboxError::Io {
            what: "fsync",
            path: path.to_path_buf(),
            source,
        })
}

/// Syncs the entries of directory `dir` (names made, renamed or removed in
/// it).
pub fn sync_dir(dir: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY)
        .open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| SandboxError::Io {
            what: "fsync directory",
            path: dir.to_path_buf(),
            source,
        })
}

/// Syncs every regular file directly in `dir`, then `dir` itself, then its
/// parent (which holds `dir`'s own name): for a directory the caller wrote
/// whole, such as a snapshot's. Symlinks and sockets are left alone.
pub fn sync_dir_contents(dir: &Path) -> Result<(), SandboxError> {
    let entries = std::fs::read_dir(dir).map_err(|source| SandboxError::Io {
        what: "list for fsync",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| SandboxError::Io {
            what: "list for fsync",
            path: dir.to_path_buf(),
            source,
        })?;
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            files.push(entry.path());
        }
    }
    files.sort();
    for file in &files {
        sync_file(file)?;
    }
    sync_dir(dir)?;
    sync_parent(dir)
}

/// Syncs the directory holding `path`'s name (after `path` was made or
/// renamed into place).
pub fn sync_parent(path: &Path) -> Result<(), SandboxError> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

/// [`sync_file`] of each of `files`, then [`sync_dir`] of each of `dirs`,
/// on a blocking thread (a guest's RAM file takes a while to write back).
pub async fn sync_all(files: Vec<PathBuf>, dirs: Vec<PathBuf>) -> Result<(), SandboxError> {
    let join = tokio::task::spawn_blocking(move || {
        for file in &files {
            sync_file(file)?;
        }
        for dir in &dirs {
            sync_dir(dir)?;
        }
        Ok(())
    })
    .await;
    join.map_err(|err| SandboxError::Io {
        what: "fsync (the syncing thread failed)",
        path: PathBuf::new(),
        source: std::io::Error::other(err),
    })?
}

/// [`sync_dir_contents`] on a blocking thread.
pub async fn sync_dir_contents_blocking(dir: PathBuf) -> Result<(), SandboxError> {
    let join = tokio::task::spawn_blocking(move || sync_dir_contents(&dir)).await;
    join.map_err(|err| SandboxError::Io {
        what: "fsync (the syncing thread failed)",
        path: PathBuf::new(),
        source: std::io::Error::other(err),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_file_fails_naming_a_missing_file() {
        // Arrange
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("vmstate");

        // Act
        let err = sync_file(&missing).unwrap_err();

        // Assert
        let text = err.to_string();
        assert!(text.starts_with("fsync "), "{text}");
        assert!(text.contains(&*missing.to_string_lossy()), "{text}");
    }

    #[test]
    fn sync_dir_contents_syncs_the_files_the_dir_and_its_parent() {
        // Arrange
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("snap");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("vmstate"), b"state").unwrap();
        std::fs::write(dir.join("machine.json"), b"{}").unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.join("dangling")).unwrap();

        // Act
        let result = sync_dir_contents(&dir);

        // Assert: a dangling symlink is not a file it relies on.
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn sync_dir_fails_naming_a_file_that_is_not_a_directory() {
        // Arrange
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ram");
        std::fs::write(&file, b"x").unwrap();

        // Act
        let err = sync_dir(&file).unwrap_err();

        // Assert
        assert!(err.to_string().contains(&*file.to_string_lossy()), "{err}");
    }

    #[tokio::test]
    async fn sync_all_fails_naming_the_first_missing_file() {
        // Arrange
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("ram");
        std::fs::write(&present, b"x").unwrap();
        let missing = dir.path().join("root.qcow2");

        // Act
        let err = sync_all(vec![present, missing.clone()], vec![dir.path().into()])
            .await
            .unwrap_err();

        // Assert
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );
    }
}
