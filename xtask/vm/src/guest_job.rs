//! One test program run in a vmtest guest: its output streamed as it
//! comes, and a stall watchdog. A program silent too long is taken as
//! hung: the guest's processes (their states, wait channels and kernel
//! stacks) and the end of its kernel log are printed, then the job fails,
//! instead of holding CI until the whole run's bound.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use envd_client::{ExecEvent, ExecRequest};
use futures::StreamExt as _;
use sandbox_core::Sandbox;

/// Bound of the diagnostics run after a stall.
const DIAGNOSE_TIMEOUT: Duration = Duration::from_secs(120);

/// What the guest shows of a hang: every thread with its state and wait
/// channel; the system call each thread of the test programs and VMMs is
/// in (the guest kernel keeps no stack traces); the recent consoles of the
/// tests' own VMs; the kernel log's end.
const DIAGNOSE: &str = r#"
echo "== processes and threads"
ps -eLo pid,tid,ppid,stat,etimes,wchan:32,comm,args 2>&1 | cut -c1-220 | head -400
echo "== system calls the test programs' and VMMs' threads are in"
for p in $(ps -eo pid=,args= | awk '$2 ~ /petrel-vmtest|qemu|firecracker/ {print $1}'); do
  for t in /proc/$p/task/*; do
    echo "$p/$(basename $t) $(cat $t/comm 2>/dev/null): $(cat $t/syscall 2>&1 | cut -d' ' -f1-3)"
  done
done
echo "== consoles of inner VMs (last 15 lines each)"
for f in $(find /tmp /mnt/petrel-vmtest/tmp -name console.log -mmin -30 2>/dev/null | head -8); do
  echo "-- $f"; tail -15 "$f"
done
echo "== dmesg"
dmesg 2>&1 | tail -40
"#;

/// Runs `request` in the guest, its stderr (and stdout when `echo_stdout`)
/// shown as it comes; its exit code and stdout. Fails, after printing the
/// guest's state, when the program is silent for `stall` (libtest prints a
/// line as each test ends; the slowest single test, a nested dm provider
/// test, takes a few minutes).
pub async fn stream(
    sandbox: &Sandbox,
    request: ExecRequest,
    echo_stdout: bool,
    stall: Duration,
) -> Result<(i32, Vec<u8>)> {
    let mut events = sandbox.envd().exec_stream(request).await?;
    let mut stdout = Vec::new();
    let mut exit_code = None;
    loop {
        let event = match tokio::time::timeout(stall, events.next()).await {
            Ok(Some(event)) => event?,
            Ok(None) => break,
            Err(_) => {
                diagnose(sandbox).await;
                bail!(
                    "no output for {} min: the program is taken as hung (the guest's state is above)",
                    stall.as_secs() / 60
                );
            }
        };
        match event {
            ExecEvent::Stdout(data) => {
                if echo_stdout {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&data)?;
                    out.flush()?;
                }
                stdout.extend_from_slice(&data);
            }
            ExecEvent::Stderr(data) => std::io::stderr().lock().write_all(&data)?,
            ExecEvent::Exited {
                exit_code: code, ..
            } => exit_code = Some(code),
            ExecEvent::Started { .. } => {}
        }
    }
    let exit_code = exit_code.context("the guest's process stream ended without an exit")?;
    Ok((exit_code, stdout))
}

/// Prints [`DIAGNOSE`]'s output, or why it could not be had.
async fn diagnose(sandbox: &Sandbox) {
    let request = ExecRequest::new("/bin/sh")
        .args(["-c", DIAGNOSE])
        .user("root")
        .timeout(DIAGNOSE_TIMEOUT);
    match sandbox.exec(request).await {
        Ok(out) => eprintln!(
            "[vmtest] the guest while the program was silent:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(err) => eprintln!("[vmtest] could not read the guest's state: {err}"),
    }
}
