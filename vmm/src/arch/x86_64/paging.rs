//! Identity page tables for the 64-bit entry: the first 1 GiB mapped with 2 MiB pages.

use super::layout::{PDE_ADDR, PDPTE_ADDR, PML4_ADDR};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

const PRESENT_WRITABLE: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// The 512 page-directory entries mapping 0..1 GiB onto itself.
pub fn directory_entries() -> [u64; 512] {
    std::array::from_fn(|i| ((i as u64) << 21) | PAGE_SIZE_2M | PRESENT_WRITABLE)
}

/// Writes PML4, PDPT and PD into guest memory; returns the CR3 value.
pub fn write_identity_tables(mem: &GuestMemoryMmap) -> Result<u64, GuestMemoryError> {
    mem.write_obj(PDPTE_ADDR | PRESENT_WRITABLE, GuestAddress(PML4_ADDR))?;
    mem.write_obj(PDE_ADDR | PRESENT_WRITABLE, GuestAddress(PDPTE_ADDR))?;
    let entries = directory_entries();
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(PDE_ADDR))?;
    Ok(PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_maps_each_2mib_page_to_itself() {
        let pd = directory_entries();
        assert_eq!(pd[0], 0x83);
        assert_eq!(pd[1], 0x20_0083);
        assert_eq!(pd[511], (511 << 21) | 0x83);
    }

    #[test]
    fn tables_chain_pml4_to_pd() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)])
            .expect("1 MiB of anonymous memory");
        let cr3 = write_identity_tables(&mem).expect("tables fit in 1 MiB");
        assert_eq!(cr3, PML4_ADDR);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).expect("in range");
        assert_eq!(pml4, PDPTE_ADDR | 3);
        let pdpte: u64 = mem.read_obj(GuestAddress(PDPTE_ADDR)).expect("in range");
        assert_eq!(pdpte, PDE_ADDR | 3);
        let pde: u64 = mem
            .read_obj(GuestAddress(PDE_ADDR + 8 * 5))
            .expect("in range");
        assert_eq!(pde, (5 << 21) | 0x83);
    }
}
