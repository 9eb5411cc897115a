//! IPv4 forwarding: on in every sandbox namespace, and on the host while any
//! Petrel network exists, in this process or in any other (several agents
//! with disjoint slot ranges, tests running in parallel).
//!
//! The host's value before the first network is recorded once, in the
//! state file [`FORWARD_STATE`], together with the slots that hold
//! forwarding on. Every change to it happens under the host lock
//! ([`crate::HOST_LOCK`]) in the same critical section as creating or
//! deleting the slot's namespace, so a slot listed there either has its
//! namespace or is being rolled back, and a slot listed without a namespace
//! is a leftover (a crash between the two) that the next release prunes.
//! When the last holder goes and no `petrel-<slot>` namespace is left
//! (whoever made it), the recorded value is put back and the file removed.
//!
//! A crashed agent (kill -9) leaves the file and forwarding on: the next
//! start keeps the recorded original instead of taking the `1` it finds,
//! and its [`crate::cleanup_stale`] releases the crashed run's slots.
//! Under `/run` (a tmpfs), the file goes with a reboot, as the sysctl's
//! value does.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use crate::addressing::{NETNS_DIR, NETNS_PREFIX};
use crate::error::{HOST_NETNS, NetError};
use crate::namespace::run_in_netns;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Where the host's original `ip_forward` and the holding slots are kept.
pub const FORWARD_STATE: &str = "/run/petrel-netns.ip_forward";

/// What [`ForwardingFiles::acquire_locked`] did, for
/// [`ForwardingFiles::undo_acquire_locked`].
#[derive(Debug, Clone, Copy)]
pub struct Acquired {
    /// No slot held forwarding before: this one recorded the value found.
    first: bool,
}

fn sysctl_err(path: &Path, netns: &str, source: io::Error) -> NetError {
    NetError::Sysctl {
        path: path.to_path_buf(),
        netns: netns.into(),
        source,
    }
}

/// The files host forwarding is kept in: the sysctl, the state file and
/// the directory of named namespaces. [`ForwardingFiles::host`] in
/// production; tests point them elsewhere.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardingFiles {
    pub sysctl: PathBuf,
    pub state: PathBuf,
    pub netns_dir: PathBuf,
}

impl ForwardingFiles {
    pub fn host() -> Self {
        Self {
            sysctl: PathBuf::from(IP_FORWARD),
            state: PathBuf::from(FORWARD_STATE),
            netns_dir: PathBuf::from(NETNS_DIR),
        }
    }
}

/// The state file's content: `original=<value>` and `slots=<s> <s> ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    original: String,
    slots: BTreeSet<u16>,
}

impl State {
    fn parse(text: &str) -> Option<Self> {
        let mut original = None;
        let mut slots = BTreeSet::new();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("original", v)) => original = Some(v.trim().to_string()),
                Some(("slots", v)) => {
                    slots = v
                        .split_whitespace()
                        .filter_map(|s| s.parse().ok())
                        .collect();
                }
                _ => {}
            }
        }
        // Only values the sysctl takes are ever written back.
        original
            .filter(|o| o == "0" || o == "1")
            .map(|original| Self { original, slots })
    }

    fn render(&self) -> String {
        let slots: Vec<String> = self.slots.iter().map(u16::to_string).collect();
        format!("original={}\nslots={}\n", self.original, slots.join(" "))
    }
}

impl ForwardingFiles {
    fn state_err(&self, source: io::Error) -> NetError {
        sysctl_err(&self.state, HOST_NETNS, source)
    }

    fn load(&self) -> Result<Option<State>, NetError> {
        match fs::read_to_string(&self.state) {
            Ok(text) => {
                let state = State::parse(&text);
                if state.is_none() {
                    tracing::warn!(file = %self.state.display(), "unreadable forwarding state; recording the current value afresh");
                }
                Ok(state)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.state_err(e)),
        }
    }

    /// Writes the state file atomically (temporary file, fsync, rename).
    fn save(&self, state: &State) -> Result<(), NetError> {
        let mut tmp = self.state.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let write = || -> io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(state.render().as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.state)
        };
        write().map_err(|e| self.state_err(e))
    }

    fn read_sysctl(&self) -> Result<String, NetError> {
        fs::read_to_string(&self.sysctl)
            .map(|v| v.trim().to_string())
            .map_err(|e| sysctl_err(&self.sysctl, HOST_NETNS, e))
    }

    fn write_sysctl(&self, value: &str) -> Result<(), NetError> {
        fs::write(&self.sysctl, value).map_err(|e| sysctl_err(&self.sysctl, HOST_NETNS, e))
    }

    fn namespace_exists(&self, slot: u16) -> bool {
        self.netns_dir
            .join(format!("{NETNS_PREFIX}{slot}"))
            .exists()
    }

    /// Records `slot` as holding host forwarding and switches it on. The
    /// first holder records the value found. Call with the host lock held.
    pub fn acquire_locked(&self, slot: u16) -> Result<Acquired, NetError> {
        let existing = self.load()?;
        let acquired = Acquired {
            first: existing.is_none(),
        };
        let mut state = match existing {
            Some(state) => state,
            None => State {
                original: self.read_sysctl()?,
                slots: BTreeSet::new(),
            },
        };
        state.slots.insert(slot);
        self.save(&state)?;
        if self.read_sysctl()? != "1" {
            self.write_sysctl("1")?;
            tracing::info!(was = %state.original, slot, "host IPv4 forwarding switched on");
        }
        Ok(acquired)
    }

    /// Takes back exactly what [`ForwardingFiles::acquire_locked`] did for
    /// `slot` whose namespace was never made: its hold and, when it was the
    /// first holder and no other came since, the recorded value and the
    /// state file, whatever `petrel-*` namespaces exist (none of them relied
    /// on a value recorded just now). Call with the host lock held.
    pub fn undo_acquire_locked(&self, slot: u16, acquired: Acquired) -> Result<(), NetError> {
        let Some(mut state) = self.load()? else {
            return Ok(());
        };
        state.slots.remove(&slot);
        if !(acquired.first && state.slots.is_empty()) {
            return self.save(&state);
        }
        self.write_sysctl(&state.original)?;
        match fs::remove_file(&self.state) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(self.state_err(e)),
            _ => {}
        }
        tracing::info!(to = %state.original, slot, "host IPv4 forwarding restored (namespace not made)");
        Ok(())
    }

    /// Whether any `petrel-<slot>` namespace exists (of any agent, also one
    /// that does not record itself here, like an older version).
    fn any_namespace(&self) -> bool {
        fs::read_dir(&self.netns_dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(NETNS_PREFIX))
                    .is_some_and(|n| n.parse::<u16>().is_ok())
            })
        })
    }

    /// Drops the slots `release` selects (and every listed slot whose
    /// namespace is gone) from the holders. Once none is left and no
    /// `petrel-<slot>` namespace remains, puts the recorded value back and
    /// removes the state file. Call with the host lock held, after the
    /// slots' namespaces were deleted. Returns whether the value was
    /// restored.
    pub fn release_locked(&self, release: impl Fn(u16) -> bool) -> Result<bool, NetError> {
        let Some(mut state) = self.load()? else {
            return Ok(false);
        };
        state
            .slots
            .retain(|s| !release(*s) && self.namespace_exists(*s));
        if !state.slots.is_empty() || self.any_namespace() {
            self.save(&state)?;
            return Ok(false);
        }
        self.write_sysctl(&state.original)?;
        match fs::remove_file(&self.state) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(self.state_err(e)),
            _ => {}
        }
        tracing::info!(to = %state.original, "host IPv4 forwarding restored");
        Ok(true)
    }
}

/// Inside the namespace at `path`: IPv4 forwarding on, IPv6 off (the guest
/// link is IPv4 only, so no IPv6 path exists in or out of the sandbox; a
/// kernel without IPv6 has no such sysctls, which is fine).
pub(crate) async fn configure_namespace(path: &Path, netns: &str) -> Result<(), NetError> {
    const IPV6_OFF: [&str; 2] = [
        "/proc/sys/net/ipv6/conf/all/disable_ipv6",
        "/proc/sys/net/ipv6/conf/default/disable_ipv6",
    ];
    let label = netns.to_string();
    run_in_netns(path, move || {
        fs::write(IP_FORWARD, "1").map_err(|e| sysctl_err(Path::new(IP_FORWARD), &label, e))?;
        IPV6_OFF
            .iter()
            .try_for_each(|file| match fs::write(file, "1") {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(sysctl_err(Path::new(file), &label, e))
                }
                _ => Ok(()),
            })
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rejects_garbage() {
        let state = State {
            original: "0".into(),
            slots: BTreeSet::from([3, 70]),
        };

        let text = state.render();

        assert_eq!(text, "original=0\nslots=3 70\n");
        assert_eq!(State::parse(&text), Some(state));
        assert_eq!(State::parse("original=2\nslots=\n"), None);
        assert_eq!(State::parse(""), None);
    }
}
