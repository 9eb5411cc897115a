//! Guest users: lookup in the passwd database and path resolution.

use crate::error::EnvdError;
use nix::unistd::{Gid, Group, Uid, User};
use std::ffi::CString;
use std::path::{Component, Path, PathBuf};

/// What envd needs to know about a user to act on its behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: Uid,
    /// Primary group id.
    pub gid: Gid,
    /// Home directory (the default cwd, and the base of relative paths).
    pub home: PathBuf,
    /// Login shell.
    pub shell: PathBuf,
    /// All groups of the user (primary and supplementary), as `initgroups` sets.
    pub groups: Vec<Gid>,
}

impl UserInfo {
    /// Looks `name` up in the passwd and group databases.
    pub fn lookup(name: &str) -> Result<Self, EnvdError> {
        let user = User::from_name(name)
            .map_err(|e| EnvdError::Internal(format!("looking up user '{name}': {e}")))?
            .ok_or_else(|| EnvdError::Unauthenticated(format!("user '{name}' does not exist")))?;
        Ok(Self::from_user(user))
    }

    /// The user this process runs as.
    pub fn current() -> Result<Self, EnvdError> {
        let uid = Uid::current();
        let user = User::from_uid(uid)
            .map_err(|e| EnvdError::Internal(format!("looking up uid {uid}: {e}")))?
            .ok_or_else(|| EnvdError::Internal(format!("uid {uid} has no passwd entry")))?;
        Ok(Self::from_user(user))
    }

    fn from_user(user: User) -> Self {
        let groups = CString::new(user.name.as_bytes())
            .ok()
            .and_then(|name| nix::unistd::getgrouplist(&name, user.gid).ok())
            .unwrap_or_else(|| vec![user.gid]);
        let shell = if user.shell.as_os_str().is_empty() {
            PathBuf::from("/bin/sh")
        } else {
            user.shell
        };
        Self {
            name: user.name,
            uid: user.uid,
            gid: user.gid,
            home: user.dir,
            shell,
            groups,
        }
    }

    /// Resolves a path the way envd does for this user: `~` and `~/x` are
    /// relative to the home directory, relative paths too; `.`/`..` are
    /// resolved lexically.
    pub fn resolve_path(&self, path: &str) -> PathBuf {
        let joined = if path == "~" {
            self.home.clone()
        } else if let Some(rest) = path.strip_prefix("~/") {
            self.home.join(rest)
        } else if Path::new(path).is_absolute() {
            PathBuf::from(path)
        } else {
            self.home.join(path)
        };
        normalize(&joined)
    }
}

/// Lexically normalizes an absolute path (like Go's `filepath.Clean`).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The name of `uid`, or the number when it has no passwd entry.
pub fn user_name(uid: u32) -> String {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

/// The name of `gid`, or the number when it has no group entry.
pub fn group_name(gid: u32) -> String {
    Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |g| g.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserInfo {
        UserInfo {
            name: "alice".to_owned(),
            uid: Uid::from_raw(1000),
            gid: Gid::from_raw(1000),
            home: PathBuf::from("/home/alice"),
            shell: PathBuf::from("/bin/bash"),
            groups: vec![Gid::from_raw(1000)],
        }
    }

    #[test]
    fn relative_path_resolves_against_home() {
        let user = alice();

        let resolved = user.resolve_path("docs/a.txt");

        assert_eq!(resolved, PathBuf::from("/home/alice/docs/a.txt"));
    }

    #[test]
    fn tilde_path_resolves_against_home() {
        let user = alice();

        let resolved = user.resolve_path("~/x/../y");

        assert_eq!(resolved, PathBuf::from("/home/alice/y"));
    }

    #[test]
    fn absolute_path_is_cleaned_but_kept() {
        let user = alice();

        let resolved = user.resolve_path("/tmp/./a//b/..");

        assert_eq!(resolved, PathBuf::from("/tmp/a"));
    }

    #[test]
    fn root_user_is_found_with_uid_zero() {
        let root = UserInfo::lookup("root").unwrap();

        assert_eq!(root.uid.as_raw(), 0);
    }

    #[test]
    fn unknown_user_is_unauthenticated() {
        let err = UserInfo::lookup("no-such-user-petrel").unwrap_err();

        assert!(matches!(err, EnvdError::Unauthenticated(_)));
    }
}
