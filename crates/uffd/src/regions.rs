//! The guest memory layout the VMM described, and the mapping from a faulting
//! host address to the memory file offset that holds its contents.

use std::ops::Range;

use nix::unistd::{SysconfVar, sysconf};

use crate::error::LayoutError;

/// Page size assumed when the host cannot be asked (`sysconf` failing).
const FALLBACK_PAGE_SIZE: usize = 4096;

/// The host's base page size in bytes.
pub fn host_page_size() -> usize {
    match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(size)) if size > 0 => size as usize,
        _ => FALLBACK_PAGE_SIZE,
    }
}

/// One guest memory region: `size` bytes at `base_host_virt_addr` in the
/// VMM's address space, whose contents start at byte `offset` of the memory
/// file, mapped with pages of `page_size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestRegion {
    /// Start of the region in the VMM's address space.
    pub base_host_virt_addr: u64,
    /// Length of the region in bytes.
    pub size: usize,
    /// Offset of the region's contents in the memory file.
    pub offset: u64,
    /// Page size of the region's mapping in bytes (4 KiB, or 2 MiB for
    /// hugetlbfs).
    pub page_size: usize,
}

impl GuestRegion {
    /// One past the region's last address. Only meaningful for regions a
    /// [`MemoryLayout`] accepted (which rules out overflow).
    pub fn end(&self) -> u64 {
        self.base_host_virt_addr.saturating_add(self.size as u64)
    }

    /// Whether `addr` lies in the region.
    pub fn contains(&self, addr: u64) -> bool {
        (self.base_host_virt_addr..self.end()).contains(&addr)
    }

    /// The memory file offset holding the byte at `addr` (which must lie in
    /// the region).
    pub fn file_offset_of(&self, addr: u64) -> u64 {
        self.offset + (addr - self.base_host_virt_addr)
    }
}

/// Where a faulting address lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLocation {
    /// Index of the region in [`MemoryLayout::regions`].
    pub region: usize,
    /// Start of the page containing the address.
    pub page_addr: u64,
    /// The region's page size.
    pub page_size: usize,
    /// Memory file offset of `page_addr`.
    pub file_offset: u64,
}

impl PageLocation {
    /// The page's address range.
    pub fn range(&self) -> Range<u64> {
        self.page_addr..self.page_addr + self.page_size as u64
    }
}

/// A validated list of guest memory regions, sorted by address, every one of
/// them backed by bytes of the memory file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLayout {
    regions: Vec<GuestRegion>,
}

impl MemoryLayout {
    /// Checks `regions` (in handshake order, which error messages index)
    /// against a memory file of `file_len` bytes: at least one region; page
    /// sizes powers of two no smaller than `host_page_size`; base, size and
    /// file offset multiples of the page size, size non-zero; no overflow; no
    /// two regions overlapping; every region's file range inside the file.
    pub fn new(
        regions: &[GuestRegion],
        file_len: u64,
        host_page_size: usize,
    ) -> Result<Self, LayoutError> {
        if regions.is_empty() {
            return Err(LayoutError::NoRegions);
        }
        for (index, region) in regions.iter().enumerate() {
            check_region(index, region, file_len, host_page_size)?;
        }
        let mut order: Vec<usize> = (0..regions.len()).collect();
        order.sort_by_key(|&index| regions[index].base_host_virt_addr);
        for pair in order.windows(2) {
            let (lower, higher) = (&regions[pair[0]], &regions[pair[1]]);
            if higher.base_host_virt_addr < lower.end() {
                return Err(LayoutError::Overlap {
                    first: pair[0],
                    second: pair[1],
                    addr: higher.base_host_virt_addr,
                });
            }
        }
        let sorted = order.into_iter().map(|index| regions[index]).collect();
        Ok(Self { regions: sorted })
    }

    /// The regions, sorted by address.
    pub fn regions(&self) -> &[GuestRegion] {
        &self.regions
    }

    /// Total bytes of guest memory.
    pub fn total_size(&self) -> u64 {
        self.regions.iter().map(|region| region.size as u64).sum()
    }

    /// The page containing `addr`, or `None` when no region holds it.
    pub fn locate(&self, addr: u64) -> Option<PageLocation> {
        let index = self
            .regions
            .partition_point(|region| region.base_host_virt_addr <= addr)
            .checked_sub(1)?;
        let region = &self.regions[index];
        if !region.contains(addr) {
            return None;
        }
        let page_addr = addr & !(region.page_size as u64 - 1);
        Some(PageLocation {
            region: index,
            page_addr,
            page_size: region.page_size,
            file_offset: region.file_offset_of(page_addr),
        })
    }

    /// The window of up to `chunk_size` bytes to populate for a fault on
    /// `page`: aligned to the chunk size (rounded up to a power of two and to
    /// at least one page) and clipped to the page's region. It always
    /// contains the page.
    pub fn window(&self, page: &PageLocation, chunk_size: usize) -> Range<u64> {
        let chunk = chunk_size.max(page.page_size).next_power_of_two() as u64;
        let region = &self.regions[page.region];
        let start = (page.page_addr & !(chunk - 1)).max(region.base_host_virt_addr);
        let end = (page.page_addr & !(chunk - 1))
            .saturating_add(chunk)
            .min(region.end());
        start..end
    }

    /// The memory file offset of `addr` in region `region` (an index into
    /// [`regions`](Self::regions)).
    pub fn file_offset(&self, region: usize, addr: u64) -> u64 {
        self.regions[region].file_offset_of(addr)
    }
}

fn check_region(
    index: usize,
    region: &GuestRegion,
    file_len: u64,
    host_page_size: usize,
) -> Result<(), LayoutError> {
    let GuestRegion {
        base_host_virt_addr: base,
        size,
        offset,
        page_size,
    } = *region;
    if !page_size.is_power_of_two() || page_size < host_page_size {
        return Err(LayoutError::BadPageSize {
            index,
            base,
            page_size,
            host_page_size,
        });
    }
    let mask = page_size as u64 - 1;
    if size == 0 || (base | size as u64 | offset) & mask != 0 {
        return Err(LayoutError::Misaligned {
            index,
            base,
            size,
            offset,
            page_size,
        });
    }
    let overflow = LayoutError::Overflow { index, base, size };
    base.checked_add(size as u64).ok_or(overflow.clone())?;
    let file_end = offset.checked_add(size as u64).ok_or(overflow)?;
    if file_end > file_len {
        return Err(LayoutError::OutsideFile {
            index,
            base,
            start: offset,
            end: file_end,
            file_len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    fn region(base: u64, pages: usize, file_page: u64) -> GuestRegion {
        GuestRegion {
            base_host_virt_addr: base,
            size: pages * PAGE,
            offset: file_page * PAGE as u64,
            page_size: PAGE,
        }
    }

    fn two_region_layout() -> MemoryLayout {
        let high = region(0x7f00_0010_0000, 4, 0);
        let low = region(0x7f00_0000_0000, 8, 4);
        MemoryLayout::new(&[high, low], 12 * PAGE as u64, PAGE).expect("valid layout")
    }

    #[test]
    fn layout_sorts_regions_by_address() {
        let layout = two_region_layout();

        let bases: Vec<u64> = layout
            .regions()
            .iter()
            .map(|r| r.base_host_virt_addr)
            .collect();

        assert_eq!(bases, vec![0x7f00_0000_0000, 0x7f00_0010_0000]);
    }

    #[test]
    fn locate_maps_address_to_its_region_file_offset() {
        let layout = two_region_layout();

        let page = layout.locate(0x7f00_0000_2abc);

        assert_eq!(
            page,
            Some(PageLocation {
                region: 0,
                page_addr: 0x7f00_0000_2000,
                page_size: PAGE,
                file_offset: (4 + 2) * PAGE as u64,
            })
        );
    }

    #[test]
    fn locate_second_region_uses_its_own_offset() {
        let layout = two_region_layout();

        let page = layout.locate(0x7f00_0010_3fff).expect("in region");

        assert_eq!((page.region, page.file_offset), (1, 3 * PAGE as u64));
    }

    #[test]
    fn locate_outside_every_region_is_none() {
        let layout = two_region_layout();

        let results = [
            layout.locate(0x7f00_0000_8000),
            layout.locate(0x10),
            layout.locate(0x7f00_0010_4000),
        ];

        assert_eq!(results, [None, None, None]);
    }

    #[test]
    fn window_is_aligned_and_clipped_to_region() {
        let layout = two_region_layout();
        let page = layout.locate(0x7f00_0010_1000).expect("in region");

        let window = layout.window(&page, 64 * 1024);

        assert_eq!(window, 0x7f00_0010_0000..0x7f00_0010_4000);
    }

    #[test]
    fn window_of_one_page_is_the_page() {
        let layout = two_region_layout();
        let page = layout.locate(0x7f00_0000_5123).expect("in region");

        let window = layout.window(&page, 1);

        assert_eq!(window, page.range());
    }

    #[test]
    fn window_rounds_chunk_to_power_of_two() {
        let layout = two_region_layout();
        let page = layout.locate(0x7f00_0000_5000).expect("in region");

        let window = layout.window(&page, 3 * PAGE);

        assert_eq!(window, 0x7f00_0000_4000..0x7f00_0000_8000);
    }

    #[test]
    fn empty_region_list_is_rejected() {
        let result = MemoryLayout::new(&[], 1 << 20, PAGE);

        assert_eq!(result, Err(LayoutError::NoRegions));
    }

    #[test]
    fn region_beyond_file_end_is_rejected() {
        let result = MemoryLayout::new(&[region(0x10_0000, 4, 2)], 5 * PAGE as u64, PAGE);

        assert_eq!(
            result,
            Err(LayoutError::OutsideFile {
                index: 0,
                base: 0x10_0000,
                start: 2 * PAGE as u64,
                end: 6 * PAGE as u64,
                file_len: 5 * PAGE as u64,
            })
        );
    }

    #[test]
    fn overlapping_regions_are_rejected() {
        let regions = [region(0x10_0000, 4, 0), region(0x10_2000, 4, 4)];

        let result = MemoryLayout::new(&regions, 8 * PAGE as u64, PAGE);

        assert_eq!(
            result,
            Err(LayoutError::Overlap {
                first: 0,
                second: 1,
                addr: 0x10_2000,
            })
        );
    }

    #[test]
    fn misaligned_region_is_rejected() {
        let mut bad = region(0x10_0000, 4, 0);
        bad.offset = 100;

        let result = MemoryLayout::new(&[bad], 8 * PAGE as u64, PAGE);

        assert!(matches!(
            result,
            Err(LayoutError::Misaligned { index: 0, .. })
        ));
    }

    #[test]
    fn page_size_below_host_page_is_rejected() {
        let mut bad = region(0x10_0000, 4, 0);
        bad.page_size = 4;

        let result = MemoryLayout::new(&[bad], 8 * PAGE as u64, PAGE);

        assert!(matches!(
            result,
            Err(LayoutError::BadPageSize { page_size: 4, .. })
        ));
    }

    #[test]
    fn overflowing_region_is_rejected() {
        let bad = GuestRegion {
            base_host_virt_addr: u64::MAX - 0xfff,
            size: 2 * PAGE,
            offset: 0,
            page_size: PAGE,
        };

        let result = MemoryLayout::new(&[bad], 8 * PAGE as u64, PAGE);

        assert!(matches!(
            result,
            Err(LayoutError::Overflow { index: 0, .. })
        ));
    }
}
