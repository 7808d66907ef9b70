//! The structures a kernel reads at entry: the Linux zero page (`boot_params`, RSI at the
//! 64-bit entry) or the PVH `hvm_start_info` (EBX at the PVH entry). Both carry the command
//! line, the initrd and the e820 map; linux-loader's configurators write them.

use super::e820::{self, RangeKind};
use super::layout::{
    CMDLINE_ADDR, PVH_INFO_ADDR, PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR, ZERO_PAGE_ADDR,
};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::GuestAddress;
use vm_memory::GuestMemoryMmap;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const E820_MAX_ENTRIES: usize = 128;

/// Errors writing boot parameters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The memory map has more ranges than the zero page holds.
    #[error("e820 map has {0} ranges, more than the zero page's {E820_MAX_ENTRIES}")]
    TooManyRanges(usize),
    /// linux-loader could not write the structures.
    #[error("writing boot parameters: {0}")]
    Configurator(#[from] linux_loader::configurator::Error),
}

/// What the boot structures describe.
pub struct BootInputs<'a> {
    /// Guest RAM regions (start, length).
    pub ram: &'a [(u64, u64)],
    /// Command line length including its NUL, already written at `CMDLINE_ADDR`.
    pub cmdline_size: usize,
    /// Initrd location and size, if any.
    pub initrd: Option<(u64, u64)>,
    /// A bzImage's setup header, to be completed; `None` for an ELF.
    pub setup_header: Option<setup_header>,
}

/// Writes the Linux zero page at `ZERO_PAGE_ADDR`; returns its address (for RSI).
pub fn write_linux_zero_page(mem: &GuestMemoryMmap, inputs: &BootInputs) -> Result<u64, Error> {
    let mut params = boot_params::default();
    if let Some(hdr) = inputs.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = inputs.cmdline_size as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some((addr, size)) = inputs.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820::memory_map(inputs.ram);
    if map.len() > E820_MAX_ENTRIES {
        return Err(Error::TooManyRanges(map.len()));
    }
    for (slot, range) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: range.addr,
            size: range.size,
            r#type: range.kind as u32,
        };
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )?;
    Ok(ZERO_PAGE_ADDR)
}

/// Writes `hvm_start_info`, its memory map and module list; returns its address (for EBX).
pub fn write_pvh_start_info(mem: &GuestMemoryMmap, inputs: &BootInputs) -> Result<u64, Error> {
    let memmap: Vec<hvm_memmap_table_entry> = e820::memory_map(inputs.ram)
        .iter()
        .map(|r| hvm_memmap_table_entry {
            addr: r.addr,
            size: r.size,
            type_: match r.kind {
                RangeKind::Ram => 1,
                RangeKind::Reserved => 2,
            },
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
    if let Some((addr, size)) = inputs.initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
        params = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
        let module = hvm_modlist_entry {
            paddr: addr,
            size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_ADDR));
    }
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)?;
    Ok(PVH_INFO_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn guest() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("4 MiB mmap")
    }

    #[test]
    fn zero_page_has_magic_cmdline_and_e820() {
        let mem = guest();
        let ram = [(0u64, 4u64 << 20)];
        let inputs = BootInputs {
            ram: &ram,
            cmdline_size: 10,
            initrd: Some((0x30_0000, 0x1000)),
            setup_header: None,
        };
        let at = write_linux_zero_page(&mem, &inputs).expect("fits");
        let params: boot_params = mem.read_obj(GuestAddress(at)).expect("in range");
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ hdr.ramdisk_image }, 0x30_0000);
        assert_eq!(params.e820_entries, 3);
        let last = params.e820_table[2];
        assert_eq!(
            ({ last.addr }, { last.size }),
            (0x10_0000, (4 << 20) - 0x10_0000)
        );
    }

    #[test]
    fn pvh_start_info_points_at_memmap() {
        let mem = guest();
        let ram = [(0u64, 4u64 << 20)];
        let inputs = BootInputs {
            ram: &ram,
            cmdline_size: 1,
            initrd: None,
            setup_header: None,
        };
        let at = write_pvh_start_info(&mem, &inputs).expect("fits");
        let info: hvm_start_info = mem.read_obj(GuestAddress(at)).expect("in range");
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.memmap_entries, 3);
        let first: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(info.memmap_paddr))
            .expect("in range");
        assert_eq!((first.addr, first.type_), (0, 1));
    }
}
