//! Slot allocator: a small integer per sandbox from which every name and
//! address of its network is derived (see [`crate::SlotPlan`]).

use std::fmt;
use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use crate::error::NetError;

/// A sandbox's network slot. Valid slots are `0..=Slot::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(u16);

impl Slot {
    /// Largest slot: the host-side /31s of `10.12.0.0/16` hold 32768 slots.
    pub const MAX: u16 = 32_767;

    /// A slot by number, without allocating it.
    pub fn new(index: u32) -> Result<Self, NetError> {
        match u16::try_from(index) {
            Ok(i) if i <= Self::MAX => Ok(Self(i)),
            _ => Err(NetError::SlotOutOfRange {
                slot: index,
                range: format!("0..={}", Self::MAX),
            }),
        }
    }

    pub fn index(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Hands out slots from a range, safe to share between threads.
///
/// Allocation is next-fit: the search starts after the slot handed out last,
/// so a released slot is reused only after the others (this lets conntrack
/// entries of a removed sandbox expire before its addresses come back).
/// [`SlotAllocator::reserve`] marks a known slot as used, e.g. for sandboxes
/// that survive an agent restart.
#[derive(Debug)]
pub struct SlotAllocator {
    range: Range<u16>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// One bit per slot of the range, set when in use.
    bits: Vec<u64>,
    /// Offset into the range where the next search starts.
    next: usize,
    used: usize,
}

impl SlotAllocator {
    /// An allocator over `range` (end exclusive), which must lie within
    /// `0..=Slot::MAX` and not be empty.
    pub fn new(range: Range<u16>) -> Result<Self, NetError> {
        if range.is_empty() || range.end > Slot::MAX + 1 {
            return Err(NetError::SlotOutOfRange {
                slot: u32::from(range.end),
                range: format!("0..={}", Slot::MAX),
            });
        }
        let len = usize::from(range.end - range.start);
        Ok(Self {
            range,
            state: Mutex::new(State {
                bits: vec![0; len.div_ceil(64)],
                next: 0,
                used: 0,
            }),
        })
    }

    /// The range this allocator hands out, e.g. for [`crate::cleanup_stale`].
    pub fn range(&self) -> Range<u16> {
        self.range.clone()
    }

    fn len(&self) -> usize {
        usize::from(self.range.end - self.range.start)
    }

    fn range_label(&self) -> String {
        format!("{}..{}", self.range.start, self.range.end)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain bitmap that is never left half-updated, so a
        // poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a free slot.
    pub fn allocate(&self) -> Result<Slot, NetError> {
        let len = self.len();
        let mut st = self.lock();
        if st.used == len {
            return Err(NetError::SlotsExhausted {
                range: self.range_label(),
            });
        }
        for step in 0..len {
            let off = (st.next + step) % len;
            if st.bits[off / 64] & (1 << (off % 64)) == 0 {
                st.bits[off / 64] |= 1 << (off % 64);
                st.next = (off + 1) % len;
                st.used += 1;
                return Ok(Slot(self.range.start + off as u16));
            }
        }
        Err(NetError::SlotsExhausted {
            range: self.range_label(),
        })
    }

    /// Marks `slot` as used (a sandbox that already owns it, e.g. after a
    /// restart).
    pub fn reserve(&self, slot: Slot) -> Result<(), NetError> {
        let off = self.offset(slot)?;
        let mut st = self.lock();
        if st.bits[off / 64] & (1 << (off % 64)) != 0 {
            return Err(NetError::SlotInUse { slot: slot.0 });
        }
        st.bits[off / 64] |= 1 << (off % 64);
        st.used += 1;
        Ok(())
    }

    /// Gives `slot` back.
    pub fn release(&self, slot: Slot) -> Result<(), NetError> {
        let off = self.offset(slot)?;
        let mut st = self.lock();
        if st.bits[off / 64] & (1 << (off % 64)) == 0 {
            return Err(NetError::SlotNotAllocated { slot: slot.0 });
        }
        st.bits[off / 64] &= !(1 << (off % 64));
        st.used -= 1;
        Ok(())
    }

    /// How many slots are in use.
    pub fn in_use(&self) -> usize {
        self.lock().used
    }

    fn offset(&self, slot: Slot) -> Result<usize, NetError> {
        if self.range.contains(&slot.0) {
            Ok(usize::from(slot.0 - self.range.start))
        } else {
            Err(NetError::SlotOutOfRange {
                slot: u32::from(slot.0),
                range: self.range_label(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    #[test]
    fn allocate_hands_out_distinct_slots_until_exhausted() {
        let alloc = SlotAllocator::new(10..13).unwrap();

        let got: Vec<u16> = (0..3).map(|_| alloc.allocate().unwrap().index()).collect();
        let err = alloc.allocate().unwrap_err();

        assert_eq!(got, vec![10, 11, 12]);
        assert!(matches!(err, NetError::SlotsExhausted { .. }), "{err}");
    }

    #[test]
    fn released_slot_is_reused_after_the_others() {
        let alloc = SlotAllocator::new(0..3).unwrap();
        let a = alloc.allocate().unwrap();
        let _b = alloc.allocate().unwrap();

        alloc.release(a).unwrap();
        let c = alloc.allocate().unwrap();
        let d = alloc.allocate().unwrap();

        assert_eq!((c.index(), d.index()), (2, 0));
    }

    #[test]
    fn reserve_marks_slot_used_and_rejects_twice() {
        let alloc = SlotAllocator::new(0..2).unwrap();

        alloc.reserve(Slot::new(0).unwrap()).unwrap();
        let again = alloc.reserve(Slot::new(0).unwrap()).unwrap_err();
        let next = alloc.allocate().unwrap();

        assert!(matches!(again, NetError::SlotInUse { slot: 0 }), "{again}");
        assert_eq!(next.index(), 1);
    }

    #[test]
    fn release_of_free_or_foreign_slot_fails() {
        let alloc = SlotAllocator::new(5..8).unwrap();

        let free = alloc.release(Slot::new(5).unwrap()).unwrap_err();
        let foreign = alloc.release(Slot::new(9).unwrap()).unwrap_err();

        assert!(
            matches!(free, NetError::SlotNotAllocated { slot: 5 }),
            "{free}"
        );
        assert!(
            matches!(foreign, NetError::SlotOutOfRange { slot: 9, .. }),
            "{foreign}"
        );
    }

    #[test]
    fn range_beyond_max_slot_is_rejected() {
        let err = SlotAllocator::new(0..Slot::MAX + 2).unwrap_err();

        assert!(matches!(err, NetError::SlotOutOfRange { .. }), "{err}");
        assert!(Slot::new(u32::from(Slot::MAX) + 1).is_err());
    }

    #[test]
    fn concurrent_allocations_never_share_a_slot() {
        let alloc = Arc::new(SlotAllocator::new(100..1100).unwrap());

        let handles: Vec<_> = (0..8)
            .map(|_| {
                let alloc = Arc::clone(&alloc);
                std::thread::spawn(move || {
                    (0..125)
                        .map(|_| alloc.allocate().unwrap().index())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<u16> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let distinct: HashSet<u16> = all.iter().copied().collect();

        assert_eq!(all.len(), 1000);
        assert_eq!(distinct.len(), 1000);
        assert_eq!(alloc.in_use(), 1000);
    }
}
