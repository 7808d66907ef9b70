//! Guest memory as the snapshot's `memory` file: the RAM regions back to back, in guest
//! address order. Pages that are all zero (never touched, or cleared) are left as holes, so
//! the file is sparse and writing it skips what the guest never used. For anonymous RAM (a
//! cold-booted guest) /proc/self/pagemap says which pages were ever touched, so untouched
//! ones are skipped without being read: reading them would fault each one in (about 0.25 s
//! per 128 MiB here, all of it with the guest paused). A restore maps the
//! file privately: pages are read only when the guest touches them, clean pages are shared
//! through the page cache by every VMM restored from the same file, and guest writes go to
//! private copies that never reach the file.
//!
//! The mapping is not prefaulted, on measurement. What a restored guest pays for its
//! first touches is one KVM stage-2 (NPT/EPT) fault per page, whether or not the page is in
//! the VMM's page tables already: in the nested lab (L1 Linux 6.1 under TCG) a restored
//! rootfs guest takes ~1,300 of them between its vCPUs starting and guest_ready, where a
//! cold-booted guest doing the same personalisation takes ~150, at ~70-100 µs of L1 kernel
//! time each. MADV_POPULATE_READ of the file's data (its SEEK_DATA runs) removed ~30 % of
//! the VMM's page faults and none of the stage-2 faults: the guest's steps were as slow.
//! MADV_POPULATE_WRITE of it removed every page fault and copy-on-write retry, but took
//! 0.2-2 s, made every page private, and made the steps slower still (in the lab, code in
//! private copies is translated again by TCG, where pages shared by all restores are not).
//! Only populating the stage-2 tables would help (KVM_PRE_FAULT_MEMORY: Linux 6.10+, TDP).

use crate::vstate::memory::ram_regions;
use std::fs::File;
use std::os::unix::fs::FileExt;
use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

/// Holes and writes are decided per page.
const PAGE: usize = 4096;
/// What a hole reads as; compared with whole pages (a memcmp, fast in every build).
static ZERO_PAGE: [u8; PAGE] = [0; PAGE];

/// Errors writing or mapping the memory file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing failed.
    #[error("writing the snapshot memory file: {0}")]
    Write(std::io::Error),
    /// Opening or sizing failed.
    #[error("snapshot memory file {path}: {source}")]
    Open {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not as long as the header says (truncated, or another snapshot's).
    #[error("snapshot memory file {path} is {found} bytes; the snapshot needs {expected}")]
    Size {
        /// The path.
        path: String,
        /// Its length.
        found: u64,
        /// The header's.
        expected: u64,
    },
    /// mmap failed.
    #[error("mapping the snapshot memory file: {0}")]
    Map(String),
}

/// Writes every region of `mem` to `file` (empty, freshly created); returns its length.
pub fn write(mem: &GuestMemoryMmap, file: &File) -> Result<u64, Error> {
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(total).map_err(Error::Write)?;
    let mut offset = 0u64;
    for region in mem.iter() {
        // SAFETY: the region is a live mapping of `region.len()` bytes that `mem` keeps
        // mapped; every vCPU is parked, so the guest does not change it while we read.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), region.len() as usize) };
        // A file-backed (restored) region's untouched pages hold the file's data: read all.
        // Without /proc (a jail has none) every page is read and compared with zeros:
        // slower, same file.
        let touched = match region.file_offset() {
            None => match touched_pages(bytes) {
                Ok(touched) => Some(touched),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(Error::Write(e)),
            },
            Some(_) => None,
        };
        write_nonzero_runs(bytes, touched.as_deref(), file, offset)?;
        offset += region.len();
    }
    Ok(total)
}

/// For each page of the anonymous mapping `bytes`: whether it was ever touched (present or
/// swapped out, pagemap bits 63 and 62). An untouched anonymous page reads as zeros.
fn touched_pages(bytes: &[u8]) -> std::io::Result<Vec<bool>> {
    const PRESENT_OR_SWAPPED: u64 = 3 << 62;
    let pagemap = File::open("/proc/self/pagemap")?;
    let first = bytes.as_ptr() as u64 / PAGE as u64;
    let mut entries = vec![0u8; bytes.len().div_ceil(PAGE) * 8];
    pagemap.read_exact_at(&mut entries, first * 8)?;
    Ok(entries
        .chunks_exact(8)
        .map(|e| {
            let entry = u64::from_le_bytes(e.try_into().expect("chunks_exact(8) gives 8 bytes"));
            entry & PRESENT_OR_SWAPPED != 0
        })
        .collect())
}

/// Writes the runs of pages of `bytes` that are not all zero at `base` + their offset;
/// pages `touched` marks false are zero without looking.
fn write_nonzero_runs(
    bytes: &[u8],
    touched: Option<&[bool]>,
    file: &File,
    base: u64,
) -> Result<(), Error> {
    let mut run_start: Option<usize> = None;
    for (i, page) in bytes.chunks(PAGE).enumerate() {
        let untouched = touched.is_some_and(|t| !t.get(i).copied().unwrap_or(true));
        let zero = untouched || page == &ZERO_PAGE[..page.len()];
        match (zero, run_start) {
            (false, None) => run_start = Some(i * PAGE),
            (true, Some(start)) => {
                file.write_all_at(&bytes[start..i * PAGE], base + start as u64)
                    .map_err(Error::Write)?;
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start {
        file.write_all_at(&bytes[start..], base + start as u64)
            .map_err(Error::Write)?;
    }
    Ok(())
}

/// Maps `path` privately as `mem_mib` MiB of guest RAM laid out as a cold boot lays it out.
pub fn map(
    path: &std::path::Path,
    mem_mib: u64,
    expected_len: u64,
) -> Result<GuestMemoryMmap, Error> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|source| Error::Open {
        path: shown.clone(),
        source,
    })?;
    let found = file
        .metadata()
        .map_err(|source| Error::Open {
            path: shown.clone(),
            source,
        })?
        .len();
    let layout = ram_regions(mem_mib << 20);
    let needed: u64 = layout.iter().map(|(_, len)| len).sum();
    if found != expected_len || found != needed {
        return Err(Error::Size {
            path: shown,
            found,
            expected: expected_len,
        });
    }
    let mut regions = Vec::with_capacity(layout.len());
    let mut offset = 0u64;
    for (start, len) in layout {
        let file = file.try_clone().map_err(|source| Error::Open {
            path: shown.clone(),
            source,
        })?;
        let region = MmapRegionBuilder::new(len as usize)
            .with_file_offset(FileOffset::new(file, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_NORESERVE | libc::MAP_PRIVATE)
            .build()
            .map_err(|e: MmapRegionError| Error::Map(e.to_string()))?;
        let region = GuestRegionMmap::new(region, GuestAddress(start))
            .ok_or_else(|| Error::Map(format!("region at {start:#x} overflows")))?;
        regions.push(region);
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| Error::Map(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn pagemap_tells_touched_from_untouched_pages() {
        let mem = crate::vstate::memory::create(1).expect("1 MiB");
        mem.write_slice(&[1], GuestAddress(3 * PAGE as u64))
            .expect("in RAM");
        let region = mem.iter().next().expect("one region");
        // SAFETY: the region is a live 1 MiB mapping owned by `mem`.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), region.len() as usize) };
        let touched = touched_pages(bytes).expect("pagemap readable");
        assert_eq!(touched.len(), 256);
        assert!(touched[3]);
        assert_eq!(touched.iter().filter(|t| **t).count(), 1, "{touched:?}");
    }

    #[test]
    fn a_written_file_maps_back_privately() {
        let mem = crate::vstate::memory::create(2).expect("2 MiB");
        mem.write_slice(b"first page", GuestAddress(0))
            .expect("in RAM");
        mem.write_slice(b"far page", GuestAddress(0x1f_f000))
            .expect("in RAM");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("memory");
        let file = File::create(&path).expect("create");
        let len = write(&mem, &file).expect("written");
        assert_eq!(len, 2 << 20);
        let on_disk = std::os::unix::fs::MetadataExt::blocks(&file.metadata().expect("meta"));
        assert!(
            on_disk * 512 < 64 * 1024,
            "zero pages are holes: {on_disk} blocks"
        );

        // Written from a restored (file-backed) guest, untouched pages keep the file's data.
        let restored = map(&path, 2, len).expect("maps");
        let copy_path = dir.path().join("copy");
        let copy = File::create(&copy_path).expect("create");
        write(&restored, &copy).expect("written from the private mapping");
        let copied = map(&copy_path, 2, len).expect("maps");
        let mut far = [0u8; 8];
        copied
            .read_slice(&mut far, GuestAddress(0x1f_f000))
            .expect("read");
        assert_eq!(&far, b"far page");
        let mut buf = [0u8; 10];
        restored
            .read_slice(&mut buf, GuestAddress(0))
            .expect("read");
        assert_eq!(&buf, b"first page");
        restored
            .write_slice(b"changed", GuestAddress(0x1f_f000))
            .expect("write");
        let again = map(&path, 2, len).expect("maps again");
        let mut buf = [0u8; 8];
        again
            .read_slice(&mut buf, GuestAddress(0x1f_f000))
            .expect("read");
        assert_eq!(&buf, b"far page", "a guest write never reaches the file");
        assert!(matches!(map(&path, 2, len + 1), Err(Error::Size { .. })));
        assert!(matches!(map(&path, 4, 4 << 20), Err(Error::Size { .. })));
    }
}
