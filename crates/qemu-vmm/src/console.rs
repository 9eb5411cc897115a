//! The guest's serial console, bounded.
//!
//! QEMU serves the console on a Unix socket (`console.sock`, `server=on,
//! wait=off`); a task of the agent drains it into `console.log` and rotates
//! that file to `console.log.1` once it passes the cap, so the console
//! takes at most twice the cap on disk and a fixed buffer in the agent, no
//! matter how much the guest writes. While no agent is connected (between
//! an agent's exit and its successor's adoption) QEMU drops console output
//! instead of blocking the guest.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

/// How much of a log [`log_tail`] reads at most.
const TAIL_BYTES: u64 = 64 * 1024;

/// Drains `socket` into `log` (rotating to `old` past `cap` bytes) until
/// QEMU closes the socket. Retries the connection for up to 10 s while the
/// socket is not there yet.
pub(crate) fn spawn_drain(socket: PathBuf, log: PathBuf, old: PathBuf, cap: u64) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut stream = None;
        for _ in 0..1000 {
            match UnixStream::connect(&socket).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        let Some(mut stream) = stream else {
            tracing::warn!(socket = %socket.display(), "console socket never came up");
            return;
        };
        if let Err(err) = drain_to_log(&mut stream, &log, &old, cap).await {
            tracing::warn!(log = %log.display(), %err, "console drain stopped");
        }
    })
}

/// Copies `stream` into `log` until end of file, rotating `log` to `old`
/// whenever it would pass `cap` bytes, through a fixed 16 KiB buffer: the
/// console takes at most twice `cap` on disk, whatever the guest writes.
/// Also drains other VMMs' consoles (Firecracker's stdout through a FIFO).
pub async fn drain_to_log<R: AsyncRead + Unpin>(
    stream: &mut R,
    log: &Path,
    old: &Path,
    cap: u64,
) -> std::io::Result<()> {
    let mut file = open_append(log).await?;
    let mut size = file.metadata().await?.len();
    let mut buf = vec![0_u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if size + n as u64 > cap {
            file.flush().await?;
            tokio::fs::rename(log, old).await?;
            file = open_append(log).await?;
            size = 0;
        }
        // A single read larger than the cap (cap < 16 KiB) is cut.
        let take = n.min(usize::try_from(cap).unwrap_or(usize::MAX));
        file.write_all(&buf[..take]).await?;
        size += take as u64;
    }
}

async fn open_append(path: &Path) -> std::io::Result<tokio::fs::File> {
    let mut options = tokio::fs::OpenOptions::new();
    options.create(true).append(true).mode(0o600);
    options.open(path).await
}

/// The last `lines` lines of a text file (a console or QEMU log), read from
/// at most its last 64 KiB, or a note that it could not be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<Vec<u8>> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let start = len.saturating_sub(TAIL_BYTES);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::with_capacity((len - start) as usize);
        file.take(TAIL_BYTES).read_to_end(&mut bytes)?;
        if start > 0 {
            // Drop the partial first line.
            let cut = bytes.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
            bytes.drain(..cut);
        }
        Ok(bytes)
    };
    match read() {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_reads_only_the_end_of_a_large_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut text = "x".repeat(200_000);
        text.push_str("\nsecond to last\nlast\n");
        std::fs::write(&path, text).unwrap();

        let tail = log_tail(&path, 2);

        assert_eq!(tail, "second to last\nlast");
    }

    #[tokio::test]
    async fn drain_rotates_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("console.sock");
        let log = dir.path().join("console.log");
        let old = dir.path().join("console.log.1");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();

        let task = spawn_drain(socket, log.clone(), old.clone(), 4096);
        let (mut peer, _) = listener.accept().await.unwrap();
        for _ in 0..100 {
            peer.write_all(&[b'a'; 1000]).await.unwrap();
        }
        drop(peer);
        task.await.unwrap();

        let new_len = std::fs::metadata(&log).unwrap().len();
        let old_len = std::fs::metadata(&old).unwrap().len();
        assert!(new_len <= 4096, "{new_len}");
        assert!(old_len <= 4096, "{old_len}");
        assert!(new_len + old_len > 0);
    }
}
