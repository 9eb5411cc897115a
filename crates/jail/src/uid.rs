//! A uid per VMM from a range, with no state on disk.
//!
//! A uid is free when no process on the host runs as it and no spawn of
//! this process has reserved it: running VMMs (also ones adopted after an
//! agent restart) keep their uid busy simply by existing, and a crashed or
//! stopped VMM frees it. Separate uids keep VMMs from signalling each other
//! and give each its own `RLIMIT_NPROC` count.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::error::JailError;

/// Hands out uids `first..first + count` (gid = uid).
#[derive(Debug, Clone)]
pub struct UidPool {
    first: u32,
    count: u32,
    reserved: Arc<Mutex<HashSet<u32>>>,
}

/// A uid reserved until the VMM runs as it (drop the lease after spawn).
#[derive(Debug)]
pub struct UidLease {
    uid: u32,
    reserved: Arc<Mutex<HashSet<u32>>>,
}

impl UidLease {
    pub fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        if let Ok(mut reserved) = self.reserved.lock() {
            reserved.remove(&self.uid);
        }
    }
}

impl UidPool {
    pub fn new(first: u32, count: u32) -> Self {
        Self {
            first,
            count,
            reserved: Arc::default(),
        }
    }

    /// The range, for reports.
    pub fn range(&self) -> (u32, u32) {
        (self.first, self.first.saturating_add(self.count))
    }

    /// The lowest uid of the range no process runs as and no lease holds.
    pub fn allocate(&self) -> Result<UidLease, JailError> {
        let end = self.first.saturating_add(self.count);
        let busy = uids_in_use(self.first, end);
        let mut reserved = self
            .reserved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let uid = (self.first..end)
            .find(|uid| !busy.contains(uid) && !reserved.contains(uid))
            .ok_or(JailError::NoFreeUid {
                first: self.first,
                end,
            })?;
        reserved.insert(uid);
        Ok(UidLease {
            uid,
            reserved: Arc::clone(&self.reserved),
        })
    }
}

/// Real uids in `first..end` of the processes in `/proc`.
fn uids_in_use(first: u32, end: u32) -> HashSet<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter_map(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(1)?.parse::<u32>().ok()
        })
        .filter(|uid| (first..end).contains(uid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_skips_uids_held_by_leases_and_reuses_released_ones() {
        let pool = UidPool::new(3_999_000_000, 3);

        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        let a_uid = a.uid();
        drop(a);
        let c = pool.allocate().unwrap();

        assert_ne!(a_uid, b.uid());
        assert_eq!(c.uid(), a_uid);
    }

    #[test]
    fn allocate_fails_when_the_range_is_exhausted() {
        let pool = UidPool::new(3_999_000_100, 1);
        let _held = pool.allocate().unwrap();

        let err = pool.allocate().unwrap_err();

        assert!(err.to_string().contains("no free VMM uid"), "{err}");
    }
}
