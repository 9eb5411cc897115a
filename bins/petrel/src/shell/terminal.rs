//! The local terminal: raw mode for the length of a session (restored when
//! the guard drops, on every way out, panics included) and its size.

use std::io::{IsTerminal as _, Stdin};
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};

use nix::libc;
use nix::sys::termios::{self, SetArg, Termios};

nix::ioctl_read_bad!(get_window_size, libc::TIOCGWINSZ, libc::winsize);

/// The terminal on stdin in raw mode: no line editing, no echo, no signals
/// from Ctrl-C/Ctrl-Z (they go to the remote shell as bytes), no output
/// processing. Dropping it restores the settings found at the start.
#[derive(Debug)]
pub struct RawMode {
    stdin: Stdin,
    original: Termios,
}

impl RawMode {
    /// Puts the terminal on stdin in raw mode.
    pub fn enter() -> nix::Result<Self> {
        let stdin = std::io::stdin();
        let original = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = original.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(Self { stdin, original })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Nothing to do about a failure here: the terminal is going away.
        let _ = termios::tcsetattr(self.stdin.as_fd(), SetArg::TCSANOW, &self.original);
    }
}

/// The size `(cols, rows)` of the terminal on stdout, stdin or stderr
/// (the first that is one), if any.
pub fn size() -> Option<(u16, u16)> {
    let stdout = std::io::stdout();
    let stdin = std::io::stdin();
    let stderr = std::io::stderr();
    if stdout.is_terminal() {
        size_of(stdout.as_fd())
    } else if stdin.is_terminal() {
        size_of(stdin.as_fd())
    } else if stderr.is_terminal() {
        size_of(stderr.as_fd())
    } else {
        None
    }
}

/// The size `(cols, rows)` of the terminal `fd`; `None` when it is not
/// one or reports no size.
pub fn size_of(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `fd` is an open descriptor borrowed for the whole call and
    // `size` is a valid, writable `winsize` that outlives it; TIOCGWINSZ
    // writes exactly one `winsize` there and nothing else.
    let result = unsafe { get_window_size(fd.as_raw_fd(), &raw mut size) };
    match result {
        Ok(_) if size.ws_col > 0 && size.ws_row > 0 => Some((size.ws_col, size.ws_row)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_has_no_window_size() {
        let file = tempfile::tempfile().unwrap();

        let size = size_of(file.as_fd());

        assert_eq!(size, None);
    }

    #[test]
    fn a_pseudo_terminal_reports_the_size_it_was_opened_with() {
        let winsize = nix::pty::Winsize {
            ws_row: 33,
            ws_col: 101,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&winsize), None).unwrap();

        let size = size_of(pty.slave.as_fd());

        assert_eq!(size, Some((101, 33)));
    }
}
