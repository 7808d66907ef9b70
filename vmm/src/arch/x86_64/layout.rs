//! Where things live in guest physical memory.
//!
//! The low 1 MiB follows the PC convention (boot structures below 0x9fc00, the MP table in
//! the last KiB of base memory); the kernel is loaded at 1 MiB; RAM that would overlap the
//! 32-bit MMIO gap below 4 GiB is moved above 4 GiB.

/// The flat GDT used for the boot entry.
pub const GDT_ADDR: u64 = 0x500;
/// An empty IDT: the guest installs its own before enabling interrupts.
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info` (EBX at a PVH entry).
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list (the initrd, if any).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map table.
pub const PVH_MEMMAP_ADDR: u64 = 0x6100;
/// Linux boot protocol zero page (RSI at a 64-bit entry).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry: just below the page tables.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables for the 64-bit entry.
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_ADDR: u64 = 0xa000;
/// Page directory of 2 MiB pages.
pub const PDE_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Longest command line accepted, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the Extended BIOS Data Area; the MP table is written here.
pub const EBDA_START: u64 = 0x9fc00;
/// Where base memory ends (the VGA hole starts).
pub const BASE_MEMORY_END: u64 = 0xa0000;
/// The kernel is loaded at or above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 3 << 30;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 4 << 30;
/// Three pages KVM needs for the VMX TSS on Intel; inside the MMIO gap, never RAM.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// One page KVM needs for the real-mode identity map on Intel; just below the TSS.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// Default local APIC MMIO base.
pub const APIC_DEFAULT_BASE: u32 = 0xfee0_0000;
/// Default IOAPIC MMIO base.
pub const IOAPIC_DEFAULT_BASE: u32 = 0xfec0_0000;
