//! Spawning a child as a given user: credentials, environment, cwd, stdio.

use crate::error::EnvdError;
use crate::process::pty::PtyMaster;
use crate::user::UserInfo;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;
use std::process::Stdio;

/// `PATH` given to processes unless `/init` or the request sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything needed to spawn one process.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// Program (looked up in the child's `PATH` when not a path).
    pub cmd: String,
    /// Arguments.
    pub args: Vec<String>,
    /// The complete environment.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// The user to run as.
    pub user: UserInfo,
    /// Whether stdin is a pipe (otherwise `/dev/null`); ignored with a pty.
    pub stdin: bool,
    /// Terminal size `(cols, rows)` when the process gets a pty.
    pub pty: Option<(u16, u16)>,
}

/// A spawned child and its terminal, if any.
#[derive(Debug)]
pub struct Spawned {
    /// The child (stdio pipes not yet taken).
    pub child: tokio::process::Child,
    /// The pty master of a PTY process.
    pub pty: Option<PtyMaster>,
}

/// The environment of a process: login variables of `user`, then the
/// `/init` variables, then the request's own.
pub fn build_env<H: std::hash::BuildHasher>(
    user: &UserInfo,
    init_vars: &BTreeMap<String, String>,
    request_vars: &std::collections::HashMap<String, String, H>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_owned(), DEFAULT_PATH.to_owned());
    env.insert("HOME".to_owned(), user.home.display().to_string());
    env.insert("USER".to_owned(), user.name.clone());
    env.insert("LOGNAME".to_owned(), user.name.clone());
    env.insert("SHELL".to_owned(), user.shell.display().to_string());
    env.extend(init_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(request_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Credentials to switch to in the child (only when envd runs as root).
#[derive(Debug, Clone)]
struct Credentials {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

fn credentials_for(user: &UserInfo) -> Result<Option<Credentials>, EnvdError> {
    let me = nix::unistd::geteuid();
    if me.is_root() {
        return Ok(Some(Credentials {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups: user.groups.iter().map(|g| g.as_raw()).collect(),
        }));
    }
    if me == user.uid {
        return Ok(None);
    }
    Err(EnvdError::PermissionDenied(format!(
        "envd runs as uid {me} and cannot run processes as '{}'",
        user.name
    )))
}

/// Runs in the child between fork and exec: default OOM score, new
/// session, controlling terminal, groups, gid, uid, then the working directory (entered as the
/// user, so a directory the user may not enter fails the start). Only
/// async-signal-safe calls on memory allocated before the fork.
fn child_setup(creds: Option<&Credentials>, pty: bool, cwd: &CStr) -> io::Result<()> {
    // envd itself is exempt from the guest's OOM killer; what it starts is not.
    crate::oom::reset_in_child();
    // SAFETY: setsid has no memory-safety preconditions.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    if pty {
        // SAFETY: fd 0 is the pty slave (set up by Command before this
        // closure runs); TIOCSCTTY takes an integer argument.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some(creds) = creds {
        // SAFETY: the pointer and length describe `creds.groups`, which is
        // alive and unmodified for the whole call.
        if unsafe { libc::setgroups(creds.groups.len(), creds.groups.as_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: setgid has no memory-safety preconditions.
        if unsafe { libc::setgid(creds.gid) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: setuid has no memory-safety preconditions.
        if unsafe { libc::setuid(creds.uid) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: `cwd` is a valid NUL-terminated string alive for the call.
    if unsafe { libc::chdir(cwd.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Spawns the process described by `spec`.
pub fn spawn(spec: &SpawnSpec) -> Result<Spawned, EnvdError> {
    let creds = credentials_for(&spec.user)?;
    let cwd = CString::new(spec.cwd.as_os_str().as_bytes())
        .map_err(|_| EnvdError::InvalidArgument("cwd contains a NUL byte".to_owned()))?;
    let mut command = tokio::process::Command::new(&spec.cmd);
    command
        .args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .kill_on_drop(false);

    let pty = if let Some((cols, rows)) = spec.pty {
        let (master, slave) = PtyMaster::open(cols, rows)?;
        let dup = |fd: &std::os::fd::OwnedFd| {
            fd.try_clone()
                .map_err(|e| EnvdError::io("duplicating pty slave", &e))
        };
        command
            .stdin(Stdio::from(dup(&slave)?))
            .stdout(Stdio::from(dup(&slave)?))
            .stderr(Stdio::from(slave));
        Some(master)
    } else {
        let stdin = if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        None
    };

    let is_pty = pty.is_some();
    // SAFETY: `child_setup` only makes async-signal-safe system calls
    // (open, write, close, setsid, ioctl, setgroups, setgid, setuid, chdir) on data moved into the
    // closure before the fork; it neither allocates nor takes locks.
    unsafe {
        command.pre_exec(move || child_setup(creds.as_ref(), is_pty, &cwd));
    }
    let child = command
        .spawn()
        .map_err(|e| EnvdError::io(format!("starting '{}'", spec.cmd), &e))?;
    // Dropping the command closes our copies of the pty slave, so reads on
    // the master see EOF once the child side is gone.
    drop(command);
    Ok(Spawned { child, pty })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::{Gid, Uid};
    use std::collections::HashMap;

    fn bob() -> UserInfo {
        UserInfo {
            name: "bob".to_owned(),
            uid: Uid::from_raw(1001),
            gid: Gid::from_raw(1001),
            home: PathBuf::from("/home/bob"),
            shell: PathBuf::from("/bin/bash"),
            groups: vec![Gid::from_raw(1001)],
        }
    }

    #[test]
    fn request_env_overrides_init_env_and_login_vars() {
        let init = BTreeMap::from([("A".to_owned(), "init".to_owned())]);
        let request = HashMap::from([
            ("A".to_owned(), "req".to_owned()),
            ("HOME".to_owned(), "/x".to_owned()),
        ]);

        let env = build_env(&bob(), &init, &request);

        assert_eq!(env["A"], "req");
        assert_eq!(env["HOME"], "/x");
        assert_eq!(env["USER"], "bob");
        assert_eq!(env["LOGNAME"], "bob");
        assert_eq!(env["PATH"], DEFAULT_PATH);
    }
}
