//! Loading the guest kernel, initrd and command line with linux-loader, and choosing the
//! entry: the PVH entry if the ELF has a PVH note, else the 64-bit entry.

use crate::arch::x86_64::layout::{CMDLINE_ADDR, CMDLINE_MAX_SIZE, HIMEM_START, MMIO_GAP_START};
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, Elf, KernelLoader, PvhBootCapability};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Offset of the 64-bit entry point from a bzImage's protected-mode load address.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Highest initrd end a kernel accepts unless its header says otherwise.
const INITRD_ADDR_MAX: u64 = 0x3800_0000;
const PAGE_SIZE: u64 = 4096;

/// Errors loading the guest's images: all are unusable input (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be opened or read.
    #[error("{what} {path}: {source}")]
    Open {
        /// kernel or initrd.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Neither an ELF nor a bzImage, or a corrupt one.
    #[error("kernel {path}: not a loadable ELF or bzImage: {source}")]
    Load {
        /// The path.
        path: PathBuf,
        /// linux-loader's verdict.
        source: linux_loader::loader::Error,
    },
    /// The initrd does not fit.
    #[error("initrd {path}: {size} bytes do not fit in guest memory above the kernel")]
    InitrdTooLarge {
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Reading the initrd into guest memory failed.
    #[error("initrd {path}: {source}")]
    InitrdRead {
        /// The path.
        path: PathBuf,
        /// Why.
        source: vm_memory::GuestMemoryError,
    },
    /// The command line is not acceptable.
    #[error("--cmdline: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// The command line could not be written.
    #[error("--cmdline: {0}")]
    CmdlineWrite(linux_loader::loader::Error),
}

/// Where and how to enter the loaded kernel.
#[derive(Clone, Copy, Debug)]
pub enum Entry {
    /// 64-bit entry (ELF `e_entry`, or bzImage startup_64).
    Linux64(u64),
    /// PVH 32-bit entry from the ELF note.
    Pvh(u64),
}

/// A kernel in guest memory.
pub struct LoadedKernel {
    /// Entry point.
    pub entry: Entry,
    /// A bzImage's setup header for the zero page.
    pub setup_header: Option<setup_header>,
    /// First byte after the kernel image.
    pub end: u64,
}

/// Loads the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, Error> {
    let mut file = File::open(path).map_err(|source| Error::Open {
        what: "kernel",
        path: path.into(),
        source,
    })?;
    let mut magic = [0u8; 4];
    let is_elf = file.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF";
    let himem = Some(GuestAddress(HIMEM_START));
    let load_err = |source| Error::Load {
        path: path.into(),
        source,
    };
    if is_elf {
        let r = Elf::load(mem, None, &mut file, himem).map_err(load_err)?;
        let entry = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => Entry::Pvh(addr.raw_value()),
            _ => Entry::Linux64(r.kernel_load.raw_value()),
        };
        Ok(LoadedKernel {
            entry,
            setup_header: None,
            end: r.kernel_end,
        })
    } else {
        let r = BzImage::load(mem, None, &mut file, himem).map_err(load_err)?;
        Ok(LoadedKernel {
            entry: Entry::Linux64(r.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET),
            setup_header: r.setup_header,
            end: r.kernel_end,
        })
    }
}

/// Loads the initrd page-aligned at the top of low RAM; returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<(u64, u64), Error> {
    let open_err = |source| Error::Open {
        what: "initrd",
        path: path.into(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    let low_end = (mem.last_addr().raw_value() + 1)
        .min(MMIO_GAP_START)
        .min(INITRD_ADDR_MAX);
    let too_large = || Error::InitrdTooLarge {
        path: path.into(),
        size,
    };
    let addr = low_end.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if addr < kernel_end.max(HIMEM_START) {
        return Err(too_large());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| Error::InitrdRead {
            path: path.into(),
            source,
        })?;
    Ok((addr, size))
}

/// Writes the command line; returns its size including the NUL.
pub fn load_command_line(mem: &GuestMemoryMmap, text: &str) -> Result<usize, Error> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(Error::Cmdline)?;
    if !text.is_empty() {
        cmdline.insert_str(text).map_err(Error::Cmdline)?;
    }
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmdline).map_err(Error::CmdlineWrite)?;
    Ok(text.len() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn guest() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).expect("8 MiB mmap")
    }

    #[test]
    fn random_bytes_are_rejected() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(&[0x5a; 4096]).expect("write");
        let err = load_kernel(&guest(), f.path()).err().expect("not a kernel");
        assert!(matches!(err, Error::Load { .. }), "{err}");
    }

    #[test]
    fn truncated_elf_is_rejected() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(b"\x7fELF\x02\x01\x01").expect("write");
        let err = load_kernel(&guest(), f.path()).err().expect("truncated");
        assert!(matches!(err, Error::Load { .. }), "{err}");
    }

    #[test]
    fn missing_kernel_names_the_path() {
        let err = load_kernel(&guest(), Path::new("/nonexistent/vmlinux"))
            .err()
            .expect("missing");
        assert!(err.to_string().contains("/nonexistent/vmlinux"));
    }

    #[test]
    fn initrd_goes_page_aligned_below_the_top_of_ram() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(&[7u8; 5000]).expect("write");
        let mem = guest();
        let (addr, size) = load_initrd(&mem, f.path(), 0x20_0000).expect("fits");
        assert_eq!(size, 5000);
        assert_eq!(addr % PAGE_SIZE, 0);
        assert!(addr + size <= 8 << 20);
        let byte: u8 = mem.read_obj(GuestAddress(addr + 4999)).expect("in range");
        assert_eq!(byte, 7);
    }

    #[test]
    fn command_line_is_nul_terminated() {
        let mem = guest();
        let size = load_command_line(&mem, "mode=halt").expect("short");
        assert_eq!(size, 10);
        let mut buf = [0u8; 10];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_ADDR))
            .expect("in range");
        assert_eq!(&buf, b"mode=halt\0");
    }
}
