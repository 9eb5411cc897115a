//! `petrel sandbox shell` against a host agent with real VMs, driven
//! through a pseudo-terminal the test opens (petrel's controlling
//! terminal, as in a real session): the window size reaches the remote
//! shell at the start and after a resize, typed input runs, the remote
//! exit code is petrel's, and the local terminal leaves raw mode at the
//! end. Also without a terminal: piped stdin, `--cmd`.
//!
//! Needs `PETREL_KERNEL`/`PETREL_ROOTFS` like `tests/cli.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::termios::{self, LocalFlags};

nix::ioctl_write_ptr_bad!(set_window_size, libc::TIOCSWINSZ, libc::winsize);
nix::ioctl_write_int_bad!(set_controlling_terminal, libc::TIOCSCTTY);

/// The test's side of a pseudo-terminal: what petrel wrote to it so far
/// (read by a thread) and a way to type and resize.
struct Terminal {
    master: File,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Terminal {
    /// Opens a terminal of `cols` x `rows`; returns it and the slave side.
    fn open(cols: u16, rows: u16) -> (Self, OwnedFd) {
        let size = winsize(cols, rows);
        let pty = nix::pty::openpty(Some(&size), None).unwrap();
        let master = File::from(pty.master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut buf = [0_u8; 4096];
            // Ends with EIO once every slave descriptor is closed.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        (Self { master, output }, pty.slave)
    }

    fn len(&self) -> usize {
        self.output.lock().unwrap().len()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    fn type_text(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).unwrap();
    }

    /// Whether `needle` shows up in the output after byte `from` within
    /// `timeout`.
    async fn wait_for(&self, needle: &str, from: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let found = {
                let output = self.output.lock().unwrap();
                String::from_utf8_lossy(&output[from.min(output.len())..]).contains(needle)
            };
            if found {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Sets the window size, as a terminal emulator does when its window
    /// changes; the kernel sends SIGWINCH to the foreground process group.
    fn resize(&self, cols: u16, rows: u16) {
        let size = winsize(cols, rows);
        // SAFETY: the master descriptor is open for the whole call and
        // `size` is a valid `winsize` that outlives it; TIOCSWINSZ only
        // reads it.
        unsafe { set_window_size(self.master.as_raw_fd(), &raw const size) }.unwrap();
    }
}

/// Whether the terminal `fd` is in canonical mode with echo and signals (a
/// shell's cooked mode, not raw).
fn cooked(fd: BorrowedFd<'_>) -> bool {
    let attrs = termios::tcgetattr(fd).unwrap();
    attrs
        .local_flags
        .contains(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG)
}

fn winsize(cols: u16, rows: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// In a forked child: a new session whose controlling terminal is stdin
/// (the pty slave), so the child is its foreground process group.
fn controlling_terminal_on_stdin() -> std::io::Result<()> {
    nix::unistd::setsid()?;
    // SAFETY: fd 0 is the pty slave in the child; TIOCSCTTY takes an
    // integer argument and no pointer.
    unsafe { set_controlling_terminal(0, 0) }?;
    Ok(())
}

/// `petrel sandbox shell ID` on `slave` as its controlling terminal.
fn spawn_shell(url: &str, id: &str, slave: OwnedFd) -> tokio::process::Child {
    let mut command = common::command();
    command
        .args(["--url", url, "--api-key", common::API_KEY])
        .args(["sandbox", "shell", id])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // SAFETY: `controlling_terminal_on_stdin` runs in the child between
    // fork and exec and only makes two async-signal-safe system calls; it
    // allocates nothing and touches no lock.
    unsafe {
        command.pre_exec(controlling_terminal_on_stdin);
    }
    command.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_follows_the_window_size_and_passes_the_exit_code_through() {
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let (agent, id) = agent.create_sandbox(&[]).await;
    let (mut terminal, slave) = Terminal::open(101, 33);
    // Kept open so the terminal's settings can be read after petrel exits.
    let probe = slave.try_clone().unwrap();
    let cooked_before = cooked(probe.as_fd());
    let mut child = spawn_shell(&agent.url(), &id, slave);

    terminal.type_text("stty size\n");
    let first_size = terminal
        .wait_for("33 101", 0, Duration::from_secs(60))
        .await;
    let raw_during = !cooked(probe.as_fd());
    terminal.resize(127, 41);
    let mut resized = false;
    for _ in 0..10 {
        let from = terminal.len();
        terminal.type_text("stty size\n");
        if terminal
            .wait_for("41 127", from, Duration::from_secs(3))
            .await
        {
            resized = true;
            break;
        }
    }
    terminal.type_text("exit 7\n");
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    let cooked_after = cooked(probe.as_fd());
    drop(probe);
    let screen = terminal.text();

    agent.stop().await;

    assert!(cooked_before, "the test terminal starts cooked");
    assert!(first_size, "no `33 101` from stty size:\n{screen}");
    assert!(
        raw_during,
        "the local terminal was not raw during the session"
    );
    assert!(resized, "no `41 127` after the resize:\n{screen}");
    let code = status.expect("petrel did not exit").unwrap().code();
    assert_eq!(code, Some(7), "{screen}");
    assert!(cooked_after, "the local terminal was left raw");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_without_a_terminal_runs_piped_input_and_commands() {
    let Some(agent) = common::start_agent().await else {
        return;
    };
    let (agent, id) = agent.create_sandbox(&[]).await;

    let piped = common::petrel(
        &agent.url(),
        &["sandbox", "shell", &id],
        Some("echo piped-$((40 + 2))\nexit 3\n"),
    )
    .await;
    let cmd = common::petrel(
        &agent.url(),
        &[
            "sandbox",
            "shell",
            &id,
            "--cmd",
            "echo $TERM; stty size; exit 5",
        ],
        None,
    )
    .await;
    let until_eof = common::petrel(
        &agent.url(),
        &["sandbox", "shell", &id],
        Some("echo before-eof\n"),
    )
    .await;

    agent.stop().await;

    assert_eq!(piped.code, Some(3), "{}", piped.describe());
    assert!(piped.stdout.contains("piped-42"), "{}", piped.describe());
    assert_eq!(cmd.code, Some(5), "{}", cmd.describe());
    assert!(cmd.stdout.contains("xterm-256color"), "{}", cmd.describe());
    assert!(cmd.stdout.contains("24 80"), "{}", cmd.describe());
    assert_eq!(until_eof.code, Some(0), "{}", until_eof.describe());
    assert!(
        until_eof.stdout.contains("before-eof"),
        "{}",
        until_eof.describe()
    );
}
