//! The guest's physical memory map (e820), shared by the Linux zero page and the PVH start
//! info so both entries see the same RAM.

use super::layout::{BASE_MEMORY_END, EBDA_START, HIMEM_START};

/// Kind of an e820 range, with the numeric values both boot protocols use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeKind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved (here: the EBDA holding the MP table).
    Reserved = 2,
}

/// One e820 range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: RangeKind,
}

/// Builds the e820 map for guest RAM made of `ram` regions (start, length), which must
/// start with the region at address 0. The legacy hole 0xa0000..1 MiB is left out.
pub fn memory_map(ram: &[(u64, u64)]) -> Vec<Range> {
    let mut map = Vec::with_capacity(ram.len() + 2);
    for &(start, len) in ram {
        let end = start + len;
        if start < HIMEM_START {
            push_nonempty(&mut map, start, end.min(EBDA_START), RangeKind::Ram);
            push_nonempty(
                &mut map,
                EBDA_START,
                end.min(BASE_MEMORY_END),
                RangeKind::Reserved,
            );
            push_nonempty(&mut map, HIMEM_START, end, RangeKind::Ram);
        } else {
            push_nonempty(&mut map, start, end, RangeKind::Ram);
        }
    }
    map
}

fn push_nonempty(map: &mut Vec<Range>, start: u64, end: u64, kind: RangeKind) {
    if end > start {
        map.push(Range {
            addr: start,
            size: end - start,
            kind,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::ram_regions;

    #[test]
    fn small_guest_has_low_ram_ebda_and_high_ram() {
        let map = memory_map(&ram_regions(128 << 20));
        assert_eq!(
            map,
            vec![
                Range {
                    addr: 0,
                    size: EBDA_START,
                    kind: RangeKind::Ram
                },
                Range {
                    addr: EBDA_START,
                    size: 0x400,
                    kind: RangeKind::Reserved
                },
                Range {
                    addr: HIMEM_START,
                    size: (128 << 20) - HIMEM_START,
                    kind: RangeKind::Ram
                },
            ]
        );
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let map = memory_map(&ram_regions(5 << 30));
        let last = map.last().expect("a 5 GiB guest has RAM above 4 GiB");
        assert_eq!(last.addr, 4 << 30);
        assert_eq!(last.size, 2 << 30);
        let total: u64 = map
            .iter()
            .filter(|r| r.kind == RangeKind::Ram)
            .map(|r| r.size)
            .sum();
        assert_eq!(total, (5 << 30) - (HIMEM_START - EBDA_START));
        assert!(map
            .iter()
            .all(|r| r.addr + r.size <= 3 << 30 || r.addr >= 4 << 30));
    }
}
