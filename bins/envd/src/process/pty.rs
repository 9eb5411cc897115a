//! Pseudo-terminals for PTY processes (`StartRequest.pty`).

use crate::error::EnvdError;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsRawFd as _, OwnedFd};

/// The master side of a pseudo-terminal.
#[derive(Debug)]
pub struct PtyMaster {
    fd: OwnedFd,
}

impl PtyMaster {
    /// Opens a pty pair of the given size; returns the master and the slave.
    pub fn open(cols: u16, rows: u16) -> Result<(Self, OwnedFd), EnvdError> {
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pair = nix::pty::openpty(Some(&size), None)
            .map_err(|e| EnvdError::Internal(format!("openpty: {e}")))?;
        Ok((Self { fd: pair.master }, pair.slave))
    }

    /// Sets the terminal size (the child gets `SIGWINCH`).
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), EnvdError> {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: `self.fd` is an open pty master for the whole call and
        // `size` is a valid `winsize` that outlives it; TIOCSWINSZ only reads it.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TIOCSWINSZ, &raw const size) };
        if rc < 0 {
            return Err(EnvdError::Internal(format!(
                "resizing pty: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// A separate handle on the master for a (blocking) reader.
    pub fn reader(&self) -> Result<File, EnvdError> {
        self.fd
            .try_clone()
            .map(File::from)
            .map_err(|e| EnvdError::io("duplicating pty master", &e))
    }

    /// Writes all of `data` to the terminal (on the blocking pool, since a
    /// terminal whose reader stalls can block).
    pub async fn write_all(&self, data: Vec<u8>) -> Result<(), EnvdError> {
        let mut file = self.reader()?;
        tokio::task::spawn_blocking(move || file.write_all(&data))
            .await
            .map_err(|e| EnvdError::Internal(format!("pty writer task: {e}")))?
            .map_err(|e| EnvdError::io("writing to pty", &e))
    }
}
