//! Copy-on-write over a shared base image: many leases boot from one read-only base and
//! each keeps its own writes in an overlay file.
//!
//! Overlay layout: bytes `[0, size)` hold written sectors at their own offsets (the file is
//! sparse, so unwritten sectors cost no space), then a bitmap with one bit per 512-byte
//! sector saying whether the overlay holds that sector, then a 16-byte footer: the magic
//! `COINOPOV` and the disk size, checked when the overlay is reopened.
//!
//! Durability: a FLUSH first fdatasyncs the overlay's data, then writes the changed bitmap
//! bytes and fdatasyncs again. Bits only ever go from 0 to 1, so after a host crash any
//! bit that reached the disk points at data that reached it first; sectors written after
//! the last flush fall back to their older contents, as the virtio contract allows.

use super::disk_image::SECTOR_SIZE;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"COINOPOV";
const FOOTER_LEN: u64 = 16;

/// Errors opening an overlay.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The overlay cannot be opened or created.
    #[error("overlay {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An existing overlay belongs to a different base.
    #[error("overlay {path}: not an overlay for a {size}-byte base (bad footer)")]
    Mismatch {
        /// The path.
        path: PathBuf,
        /// The base size expected.
        size: u64,
    },
}

/// A base image plus this lease's overlay.
pub struct CowOverlay {
    base: File,
    overlay: File,
    size: u64,
    bitmap: Vec<u8>,
    /// Bitmap byte range changed since the last flush.
    dirty: Option<(usize, usize)>,
    /// Data may have been written since the last flush (true at open: what an earlier
    /// process wrote is made durable by the first flush).
    unsynced: bool,
}

impl CowOverlay {
    /// Opens `overlay` over `base` (`size` bytes, whole sectors), creating it if missing or
    /// empty.
    pub fn open(base: File, size: u64, overlay: &Path) -> Result<Self, Error> {
        let io = |source| Error::Io {
            path: overlay.into(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(overlay)
            .map_err(io)?;
        let sectors = size / SECTOR_SIZE;
        let bitmap_len = sectors.div_ceil(8);
        let total = size + bitmap_len + FOOTER_LEN;
        let len = file.metadata().map_err(io)?.len();
        let mut bitmap = vec![0u8; bitmap_len as usize];
        if len == 0 {
            file.set_len(total).map_err(io)?;
            let mut footer = [0u8; FOOTER_LEN as usize];
            footer[..8].copy_from_slice(MAGIC);
            footer[8..].copy_from_slice(&size.to_le_bytes());
            file.write_all_at(&footer, size + bitmap_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        } else {
            let mut footer = [0u8; FOOTER_LEN as usize];
            let ok = len == total
                && file.read_exact_at(&mut footer, size + bitmap_len).is_ok()
                && &footer[..8] == MAGIC
                && footer[8..] == size.to_le_bytes();
            if !ok {
                return Err(Error::Mismatch {
                    path: overlay.into(),
                    size,
                });
            }
            file.read_exact_at(&mut bitmap, size).map_err(io)?;
        }
        Ok(CowOverlay {
            base,
            overlay: file,
            size,
            bitmap,
            dirty: None,
            unsynced: true,
        })
    }

    /// Visible size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn present(&self, sector: u64) -> bool {
        self.bitmap[(sector / 8) as usize] & (1 << (sector % 8)) != 0
    }

    /// Reads sector-aligned `buf` at `offset`, each run of sectors from wherever it lives.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let sector = at / SECTOR_SIZE;
            let in_overlay = self.present(sector);
            // Extend the run while sectors come from the same file.
            let mut end = (sector + 1) * SECTOR_SIZE;
            while end < offset + buf.len() as u64 && self.present(end / SECTOR_SIZE) == in_overlay {
                end += SECTOR_SIZE;
            }
            let run = ((end - at) as usize).min(buf.len() - done);
            let file = if in_overlay {
                &self.overlay
            } else {
                &self.base
            };
            file.read_exact_at(&mut buf[done..done + run], at)?;
            done += run;
        }
        Ok(())
    }

    /// Writes `buf` at `offset` into the overlay. Partial sectors are completed from the
    /// current contents so a sector in the overlay is always whole.
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.unsynced = true;
        let first = offset / SECTOR_SIZE;
        let last = (offset + buf.len() as u64 - 1) / SECTOR_SIZE;
        let aligned = offset % SECTOR_SIZE == 0 && buf.len() as u64 % SECTOR_SIZE == 0;
        if aligned {
            self.overlay.write_all_at(buf, offset)?;
        } else {
            let start = first * SECTOR_SIZE;
            let mut whole = vec![0u8; ((last - first + 1) * SECTOR_SIZE) as usize];
            self.read_at(&mut whole, start)?;
            let skip = (offset - start) as usize;
            whole[skip..skip + buf.len()].copy_from_slice(buf);
            self.overlay.write_all_at(&whole, start)?;
        }
        for sector in first..=last {
            self.bitmap[(sector / 8) as usize] |= 1 << (sector % 8);
        }
        let range = ((first / 8) as usize, (last / 8) as usize + 1);
        self.dirty = Some(match self.dirty {
            None => range,
            Some((a, b)) => (a.min(range.0), b.max(range.1)),
        });
        Ok(())
    }

    /// Data first, then the bitmap that points at it (see the module doc). Nothing written
    /// since the last flush: nothing to do (a guest that resets its device in a loop, each
    /// reset a flush, must not send the host's disk a cache flush each time).
    pub fn flush(&mut self) -> std::io::Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        self.overlay.sync_data()?;
        if let Some((a, b)) = self.dirty {
            self.overlay
                .write_all_at(&self.bitmap[a..b], self.size + a as u64)?;
            self.overlay.sync_data()?;
            self.dirty = None;
        }
        self.unsynced = false;
        Ok(())
    }

    /// Whether a write since the last flush waits for one.
    pub fn unsynced(&self) -> bool {
        self.unsynced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn base(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(bytes).expect("write base");
        f
    }

    #[test]
    fn writes_land_in_the_overlay_and_survive_reopen_after_flush() {
        let pattern: Vec<u8> = (0..8 * 512).map(|i| (i / 512) as u8).collect();
        let b = base(&pattern);
        let dir = tempfile::tempdir().expect("dir");
        let ov = dir.path().join("lease.overlay");
        {
            let file = File::open(b.path()).expect("base");
            let mut cow = CowOverlay::open(file, 4096, &ov).expect("new overlay");
            cow.write_at(&[0xaa; 1024], 1024).expect("write");
            cow.write_at(&[0xbb; 10], 3000).expect("unaligned write");
            cow.flush().expect("flush");
        }
        assert_eq!(
            std::fs::read(b.path()).expect("base"),
            pattern,
            "base untouched"
        );
        let file = File::open(b.path()).expect("base");
        let cow = CowOverlay::open(file, 4096, &ov).expect("reopen");
        let mut all = vec![0u8; 4096];
        cow.read_at(&mut all, 0).expect("read");
        let mut expect = pattern.clone();
        expect[1024..2048].fill(0xaa);
        expect[3000..3010].fill(0xbb);
        assert_eq!(all, expect);
    }

    #[test]
    fn a_flush_syncs_what_was_written_since_the_last_one_and_only_then() {
        let b = base(&[0u8; 4096]);
        let dir = tempfile::tempdir().expect("dir");
        let file = File::open(b.path()).expect("base");
        let mut cow = CowOverlay::open(file, 4096, &dir.path().join("o")).expect("overlay");
        assert!(cow.unsynced(), "an opened overlay's first flush syncs");
        cow.flush().expect("flush");
        assert!(!cow.unsynced(), "flushed");
        cow.write_at(&[1; 512], 0).expect("write");
        assert!(cow.unsynced(), "a write waits for a flush");
        cow.flush().expect("flush");
        // The same sector again: no bitmap change, but data to sync all the same.
        cow.write_at(&[2; 512], 0).expect("write");
        assert!(
            cow.unsynced(),
            "a rewrite of a copied sector waits for a flush too"
        );
        cow.flush().expect("flush");
        assert!(!cow.unsynced());
    }

    #[test]
    fn overlay_of_another_size_is_refused() {
        let b = base(&[0u8; 4096]);
        let dir = tempfile::tempdir().expect("dir");
        let ov = dir.path().join("o");
        drop(CowOverlay::open(File::open(b.path()).expect("base"), 4096, &ov).expect("new"));
        let err = CowOverlay::open(File::open(b.path()).expect("base"), 2048, &ov)
            .err()
            .expect("size mismatch");
        assert!(matches!(err, Error::Mismatch { size: 2048, .. }), "{err}");
    }

    #[test]
    fn unflushed_bits_are_not_on_disk() {
        let b = base(&[1u8; 2048]);
        let dir = tempfile::tempdir().expect("dir");
        let ov = dir.path().join("o");
        {
            let mut cow =
                CowOverlay::open(File::open(b.path()).expect("base"), 2048, &ov).expect("new");
            cow.write_at(&[9u8; 512], 0).expect("write");
        }
        let cow = CowOverlay::open(File::open(b.path()).expect("base"), 2048, &ov).expect("reopen");
        let mut s = [0u8; 512];
        cow.read_at(&mut s, 0).expect("read");
        assert_eq!(
            s, [1u8; 512],
            "without FLUSH the write is not part of the disk"
        );
    }
}
