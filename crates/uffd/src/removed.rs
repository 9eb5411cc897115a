//! Address ranges the VMM removed (balloon inflation, `MADV_DONTNEED`).
//!
//! After a remove event the memory file no longer describes those pages: the
//! guest gave them up, and on its next touch it must see zeroes. The set only
//! grows; adjacent and overlapping ranges are merged.

use std::collections::BTreeMap;
use std::ops::Range;

/// Disjoint, merged address ranges that must be served as zero pages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RemovedRanges {
    /// start -> end, disjoint and non-adjacent.
    ranges: BTreeMap<u64, u64>,
}

impl RemovedRanges {
    /// Records `range` as removed.
    pub(crate) fn insert(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        let (mut start, mut end) = (range.start, range.end);
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(..=end)
            .rev()
            .take_while(|&(_, &existing_end)| existing_end >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
    }

    /// Whether `addr` was removed.
    pub(crate) fn contains(&self, addr: u64) -> bool {
        self.ranges
            .range(..=addr)
            .next_back()
            .is_some_and(|(_, &end)| addr < end)
    }

    /// Shrinks `window` to the largest part around `addr` that holds no
    /// removed byte. `addr` itself must not be removed.
    pub(crate) fn clip(&self, window: Range<u64>, addr: u64) -> Range<u64> {
        let start = self
            .ranges
            .range(..=addr)
            .next_back()
            .map_or(window.start, |(_, &end)| window.start.max(end));
        let end = self
            .ranges
            .range(addr + 1..)
            .next()
            .map_or(window.end, |(&next_start, _)| window.end.min(next_start));
        start..end
    }

    /// Number of disjoint removed ranges.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(range: Range<u64>) -> RemovedRanges {
        let mut removed = RemovedRanges::default();
        removed.insert(range);
        removed
    }

    fn set(ranges: &[Range<u64>]) -> RemovedRanges {
        let mut removed = RemovedRanges::default();
        for range in ranges {
            removed.insert(range.clone());
        }
        removed
    }

    #[test]
    fn contains_only_removed_addresses() {
        let removed = one(0x2000..0x4000);

        let hits = [0x1fff, 0x2000, 0x3fff, 0x4000].map(|a| removed.contains(a));

        assert_eq!(hits, [false, true, true, false]);
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let removed = set(&[
            0x1000..0x2000,
            0x5000..0x6000,
            0x2000..0x3000,
            0x2800..0x5000,
        ]);

        assert_eq!((removed.len(), removed.contains(0x4000)), (1, true));
    }

    #[test]
    fn disjoint_ranges_stay_apart() {
        let removed = set(&[0x1000..0x2000, 0x3000..0x4000]);

        assert_eq!((removed.len(), removed.contains(0x2000)), (2, false));
    }

    #[test]
    fn empty_range_is_ignored() {
        let removed = one(0x1000..0x1000);

        assert_eq!(removed.len(), 0);
    }

    #[test]
    fn clip_stops_at_removed_neighbours() {
        let removed = set(&[0x2000..0x3000, 0x6000..0x7000]);

        let window = removed.clip(0x0..0x1_0000, 0x4000);

        assert_eq!(window, 0x3000..0x6000);
    }

    #[test]
    fn clip_keeps_window_without_removed_bytes() {
        let removed = one(0x10_0000..0x10_1000);

        let window = removed.clip(0x0..0x1_0000, 0x4000);

        assert_eq!(window, 0x0..0x1_0000);
    }
}
