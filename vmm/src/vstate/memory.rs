//! Guest RAM: anonymous mappings laid out around the 32-bit MMIO gap.

use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// mmap failed.
    #[error("cannot map {mib} MiB of guest memory: {source}")]
    Mmap {
        /// Requested size.
        mib: u64,
        /// Why.
        source: vm_memory::mmap::FromRangesError,
    },
}

/// RAM regions (start, length) for `bytes` of guest memory: from 0 up to the MMIO gap, the
/// rest from 4 GiB.
pub fn ram_regions(bytes: u64) -> Vec<(u64, u64)> {
    if bytes <= MMIO_GAP_START {
        vec![(0, bytes)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, bytes - MMIO_GAP_START)]
    }
}

/// Maps `mib` MiB of guest memory. Pages are only backed when the guest touches them.
pub fn create(mib: u64) -> Result<GuestMemoryMmap, Error> {
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(mib << 20)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| Error::Mmap { mib, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_regions(3 << 30), vec![(0, 3 << 30)]);
    }

    #[test]
    fn memory_past_the_gap_moves_above_4gib() {
        let r = ram_regions((3 << 30) + (1 << 20));
        assert_eq!(r, vec![(0, 3 << 30), (4 << 30, 1 << 20)]);
    }
}
