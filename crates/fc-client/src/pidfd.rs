//! A process that is not our child (adopted after an agent restart),
//! watched and signalled through a pidfd (rustix), so a reused pid is
//! never hit.

use std::io;
use std::os::fd::OwnedFd;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

/// A pidfd of process `pid`.
pub(crate) fn open(pid: u32) -> io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::other(format!("{pid} is not a process id")))?;
    Ok(pidfd_open(pid, PidfdFlags::empty())?)
}

/// Sends SIGKILL; a process that already exited is fine.
pub(crate) fn kill(pidfd: &OwnedFd) -> io::Result<()> {
    match pidfd_send_signal(pidfd, Signal::KILL) {
        Err(err) if err != rustix::io::Errno::SRCH => Err(err.into()),
        _ => Ok(()),
    }
}

/// Whether the process has exited (its pidfd is readable).
pub(crate) fn exited(pidfd: &OwnedFd) -> io::Result<bool> {
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let ready = poll(&mut fds, Some(&Timespec::default()))?;
    Ok(ready > 0 && fds[0].revents().contains(PollFlags::IN))
}
