//! One test program run in a vmtest guest: its output streamed as it
//! comes, and a stall watchdog. A program silent too long is taken as
//! hung: the guest's processes (their states, wait channels and kernel
//! stacks) and the end of its kernel log are printed, then the job fails,
//! instead of holding CI until the whole run's bound.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use envd_client::{EnvdError, ExecEvent, ExecRequest};
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

/// What the guest shows after the stream of a job broke: memory, socket
/// counts, the TCP counters that count aborted or pruned connections, and
/// the kernel log's end.
const BROKEN: &str = r#"
echo "== memory"; free -m; cat /proc/net/sockstat
echo "== TCP abort, prune and drop counters (non-zero)"
awk '/^TcpExt:/ { if (!seen) { split($0, name); seen = 1 } else { for (i = 2; i <= NF; i++) if (name[i] ~ /Abort|Prune|Drop|Memory/ && $i != 0) print name[i], $i } }' /proc/net/netstat
echo "== dmesg"
dmesg 2>&1 | tail -30
"#;

/// How often one job's broken stream is re-attached before the job fails.
const MAX_REATTACH: u32 = 3;

/// Runs `request` in the guest, its stderr (and stdout when `echo_stdout`)
/// shown as it comes; its exit code and stdout. Fails, after printing the
/// guest's state, when the program is silent for `stall` (libtest prints a
/// line as each test ends; the slowest single test, a nested dm provider
/// test, takes a few minutes).
///
/// The connection to the guest's envd is test plumbing (QEMU user-mode
/// networking), not the program under test: when it breaks mid-run, the
/// guest's state is printed and the stream re-attached to the still
/// running program (output written in between is lost, and said so). The
/// program runs under `/bin/sh`, which records its exit code in a file, so
/// a program that ended while no stream was attached still has one.
pub async fn stream(
    sandbox: &Sandbox,
    request: ExecRequest,
    echo_stdout: bool,
    stall: Duration,
) -> Result<(i32, Vec<u8>)> {
    let exit_file = format!(
        "/tmp/vmtest-exit-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let timeout = request.timeout;
    let mut events = sandbox
        .envd()
        .exec_stream(recording_exit(request, &exit_file))
        .await?;
    let mut stdout = Vec::new();
    let mut exit_code = None;
    let mut pid = None;
    let mut reattached = 0;
    loop {
        let event = match tokio::time::timeout(stall, events.next()).await {
            Ok(Some(Ok(event))) => event,
            Ok(Some(Err(err))) => {
                let Some(pid) = pid.filter(|_| broken(&err) && reattached < MAX_REATTACH) else {
                    return Err(err.into());
                };
                reattached += 1;
                eprintln!(
                    "\n[vmtest] the stream of pid {pid} broke ({err}); re-attaching ({reattached} of {MAX_REATTACH}); output written until then is lost"
                );
                diagnose(sandbox, "after the stream broke", BROKEN).await;
                match sandbox.envd().attach(pid, timeout).await {
                    Ok(attached) => {
                        events = attached;
                        continue;
                    }
                    Err(err) if err.is_not_found() => {
                        exit_code = Some(recorded_exit(sandbox, &exit_file).await?);
                        break;
                    }
                    Err(err) => {
                        return Err(err).context(format!("re-attaching to pid {pid}"));
                    }
                }
            }
            Ok(None) => break,
            Err(_) => {
                diagnose(sandbox, "while the program was silent", DIAGNOSE).await;
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
            ExecEvent::Started { pid: started } => pid = Some(started),
        }
    }
    let exit_code = exit_code.context("the guest's process stream ended without an exit")?;
    Ok((exit_code, stdout))
}

/// `request` run by `/bin/sh`, which writes its exit code to `exit_file`.
fn recording_exit(request: ExecRequest, exit_file: &str) -> ExecRequest {
    let mut args = vec![
        "-c".to_string(),
        format!("\"$0\" \"$@\"; code=$?; echo $code > {exit_file}; exit $code"),
        request.cmd.clone(),
    ];
    args.extend(request.args.iter().cloned());
    ExecRequest {
        cmd: "/bin/sh".to_string(),
        args,
        ..request
    }
}

/// The exit code [`recording_exit`] wrote to `exit_file`.
async fn recorded_exit(sandbox: &Sandbox, exit_file: &str) -> Result<i32> {
    let out = sandbox
        .exec(ExecRequest::new("/bin/cat").arg(exit_file).user("root"))
        .await
        .with_context(|| format!("reading {exit_file} in the guest"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().with_context(|| {
        format!(
            "the program ended while its stream was broken and {exit_file} holds no exit code ({:?})",
            text.trim()
        )
    })
}

/// Whether `err` is the connection failing, not envd or the program.
fn broken(err: &EnvdError) -> bool {
    matches!(
        err,
        EnvdError::Transport { .. } | EnvdError::Connect { .. } | EnvdError::Protocol { .. }
    )
}

/// Prints the output of `script` (what the guest shows `when`), or why it
/// could not be had.
async fn diagnose(sandbox: &Sandbox, when: &str, script: &str) {
    let request = ExecRequest::new("/bin/sh")
        .args(["-c", script])
        .user("root")
        .timeout(DIAGNOSE_TIMEOUT);
    match sandbox.exec(request).await {
        Ok(out) => eprintln!(
            "[vmtest] the guest {when}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(err) => eprintln!("[vmtest] could not read the guest's state: {err}"),
    }
}
