//! Boot register state for the BSP: general registers, FPU, and segment/control registers
//! for either the 64-bit Linux entry (long mode, identity paging) or the PVH entry (32-bit
//! flat protected mode, paging off).

use super::gdt;
use super::layout::{BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR};
use super::paging;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Bit 1 of RFLAGS is reserved and reads as one.
const RFLAGS_RESERVED: u64 = 1 << 1;

/// How the guest is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit Linux boot protocol: RIP = entry, RSI = zero page.
    Linux64 {
        /// 64-bit entry point.
        entry: u64,
        /// Zero page address.
        zero_page: u64,
    },
    /// PVH: 32-bit protected mode, RIP = entry, RBX = `hvm_start_info`.
    Pvh {
        /// 32-bit entry point from the PVH note.
        entry: u64,
        /// `hvm_start_info` address.
        start_info: u64,
    },
}

/// Errors setting up registers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM register ioctl failed.
    #[error("{0} failed: {1}")]
    Ioctl(&'static str, kvm_ioctls::Error),
    /// Writing the GDT/IDT/page tables failed.
    #[error("writing boot GDT/IDT/page tables: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// General-purpose registers for `mode`.
pub fn boot_regs(mode: EntryMode) -> kvm_regs {
    match mode {
        EntryMode::Linux64 { entry, zero_page } => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: zero_page,
            ..Default::default()
        },
        EntryMode::Pvh { entry, start_info } => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry,
            rbx: start_info,
            ..Default::default()
        },
    }
}

/// The x87/SSE state a freshly reset CPU has.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Writes the GDT, an empty IDT and (for long mode) the page tables, and returns `sregs`
/// adjusted for `mode`.
pub fn boot_sregs(
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, Error> {
    let long_mode = matches!(mode, EntryMode::Linux64 { .. });
    let table = gdt::table(if long_mode {
        gdt::CODE64_FLAGS
    } else {
        gdt::CODE32_FLAGS
    });
    let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(GDT_ADDR))?;
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;

    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (bytes.len() - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = gdt::segment(&table, 1);
    let data = gdt::segment(&table, 2);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(&table, 3);

    if long_mode {
        sregs.cr3 = paging::write_identity_tables(mem)?;
        sregs.cr4 |= CR4_PAE;
        sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
        sregs.efer |= EFER_LME | EFER_LMA;
    } else {
        sregs.cr0 = CR0_PE | CR0_ET;
        sregs.cr4 = 0;
        sregs.efer = 0;
    }
    Ok(sregs)
}

/// Loads the whole boot state into the BSP.
pub fn setup_bsp(vcpu: &VcpuFd, mem: &GuestMemoryMmap, mode: EntryMode) -> Result<(), Error> {
    let sregs = vcpu
        .get_sregs()
        .map_err(|e| Error::Ioctl("KVM_GET_SREGS", e))?;
    let sregs = boot_sregs(mem, mode, sregs)?;
    vcpu.set_sregs(&sregs)
        .map_err(|e| Error::Ioctl("KVM_SET_SREGS", e))?;
    vcpu.set_regs(&boot_regs(mode))
        .map_err(|e| Error::Ioctl("KVM_SET_REGS", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("1 MiB mmap")
    }

    #[test]
    fn long_mode_sregs_enable_paging_and_64bit_code() {
        let mode = EntryMode::Linux64 {
            entry: 0x10_0000,
            zero_page: 0x7000,
        };
        let s = boot_sregs(&guest(), mode, kvm_sregs::default()).expect("fits");
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_ne!(s.cr4 & CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((s.cs.l, s.cs.selector, s.ds.selector), (1, 8, 16));
        let r = boot_regs(mode);
        assert_eq!((r.rip, r.rsi), (0x10_0000, 0x7000));
    }

    #[test]
    fn pvh_sregs_are_flat_32bit_without_paging() {
        let mode = EntryMode::Pvh {
            entry: 0x10_0000,
            start_info: 0x6000,
        };
        let mem = guest();
        let s = boot_sregs(&mem, mode, kvm_sregs::default()).expect("fits");
        assert_eq!(s.cr0 & CR0_PG, 0);
        assert_eq!((s.cs.l, s.cs.db, s.cs.limit), (0, 1, 0xffff_ffff));
        assert_eq!(boot_regs(mode).rbx, 0x6000);
        let code: u64 = mem.read_obj(GuestAddress(GDT_ADDR + 8)).expect("in range");
        assert_eq!(code, gdt::entry(gdt::CODE32_FLAGS, 0, 0xfffff));
    }
}
