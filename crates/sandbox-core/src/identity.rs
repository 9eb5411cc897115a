//! A restored clone's own identity: its hostname and a CRNG reseeded with
//! host randomness, so clones of one snapshot share neither a name nor a
//! random stream.
//!
//! Set with the clone's first `POST /init` (envd applies it without running
//! a program, which under TCG would cost hundreds of milliseconds of fresh
//! translation). A guest whose envd predates that (a snapshot made by an
//! older Petrel) ignores the fields and says so by omission; it then gets
//! the old way, a root shell in the guest.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use envd_client::{EnvdClient, ExecRequest, InitRequest};

use crate::error::SandboxError;

/// Bytes of host randomness a clone's CRNG is reseeded with.
const SEED_BYTES: usize = 64;

/// `request` with the clone identity for sandbox `id` added.
pub(crate) fn with_clone_identity(
    mut request: InitRequest,
    id: &str,
) -> Result<InitRequest, SandboxError> {
    request.hostname = Some(id.to_string());
    request.entropy_seed = Some(host_random(SEED_BYTES)?);
    Ok(request)
}

/// Sets the identity of clone `id` through a root shell in the guest: for
/// an envd that did not apply it from `/init`. Bounded by `timeout` (a
/// guest under nested TCG takes longer than any fixed bound to run its
/// first python after a restore).
pub(crate) async fn set_by_shell(
    envd: &EnvdClient,
    id: &str,
    timeout: Duration,
) -> Result<(), SandboxError> {
    tracing::warn!(
        sandbox = %id,
        "this guest's envd predates identity in /init: setting it with a shell (slow)"
    );
    let seed: String = host_random(SEED_BYTES)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // RNDRESEEDCRNG (0x5207) makes the kernel reseed its CRNG at once.
    let script = format!(
        "hostname {id} && echo {id} > /etc/hostname && \
         sed -i 's/^127.0.1.1 .*/127.0.1.1 {id}/' /etc/hosts && \
         python3 -c 'import fcntl,os; f=os.open(\"/dev/urandom\",os.O_WRONLY); \
         os.write(f,bytes.fromhex(\"{seed}\")); fcntl.ioctl(f,0x5207)'"
    );
    let request = ExecRequest::new("/bin/bash")
        .args(["-c", script.as_str()])
        .user("root")
        .timeout(timeout);
    let out = envd
        .exec(request)
        .await
        .map_err(|source| SandboxError::Envd {
            sandbox: id.to_string(),
            source: Box::new(source),
        })?;
    if out.exit_code != 0 {
        return Err(SandboxError::EnvdNotReady {
            sandbox: id.to_string(),
            message: format!(
                "setting the clone's identity failed ({}): {}",
                out.exit_code,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            console: String::new(),
        });
    }
    Ok(())
}

/// `n` bytes from the host's `/dev/urandom`.
pub(crate) fn host_random(n: usize) -> Result<Vec<u8>, SandboxError> {
    let mut bytes = vec![0_u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| SandboxError::Io {
            what: "read",
            path: PathBuf::from("/dev/urandom"),
            source,
        })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_identity_names_the_sandbox_and_carries_a_fresh_seed() {
        let a = with_clone_identity(InitRequest::default(), "sbx-a").unwrap();
        let b = with_clone_identity(InitRequest::default(), "sbx-a").unwrap();

        assert_eq!(a.hostname.as_deref(), Some("sbx-a"));
        assert_eq!(a.entropy_seed.as_ref().map(Vec::len), Some(SEED_BYTES));
        assert_ne!(a.entropy_seed, b.entropy_seed);
    }
}
