//! What a virtio-blk device reads and writes: a raw image file, or a shared base image seen
//! through a per-lease copy-on-write overlay.

use super::cow_overlay::{self, CowOverlay};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes per virtio-blk sector.
pub const SECTOR_SIZE: u64 = 512;

/// Errors opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image cannot be opened.
    #[error("disk {path}: {source}")]
    Open {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The image is smaller than one sector.
    #[error("disk {0}: smaller than one 512-byte sector")]
    Empty(String),
    /// The overlay cannot be used.
    #[error(transparent)]
    Overlay(#[from] cow_overlay::Error),
}

/// A disk as the guest sees it: `sectors()` × 512 bytes.
pub enum DiskImage {
    /// The image itself, read-only or read-write.
    Raw {
        /// The open image.
        file: File,
        /// Visible size in bytes (whole sectors).
        size: u64,
        /// Written since the last flush (true at open, as for an overlay).
        unsynced: bool,
    },
    /// A read-only base with the guest's writes in an overlay.
    Cow(CowOverlay),
}

impl DiskImage {
    /// Opens `path`; with `overlay`, the base is only ever opened read-only.
    pub fn open(path: &Path, read_only: bool, overlay: Option<&Path>) -> Result<Self, Error> {
        let shown = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only && overlay.is_none())
            .open(path)
            .map_err(|source| Error::Open {
                path: shown.clone(),
                source,
            })?;
        let len = file
            .metadata()
            .map_err(|source| Error::Open {
                path: shown.clone(),
                source,
            })?
            .len();
        let size = len - len % SECTOR_SIZE;
        if size == 0 {
            return Err(Error::Empty(shown));
        }
        match overlay {
            None => Ok(DiskImage::Raw {
                file,
                size,
                unsynced: true,
            }),
            Some(overlay) => Ok(DiskImage::Cow(CowOverlay::open(file, size, overlay)?)),
        }
    }

    /// Visible size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            DiskImage::Raw { size, .. } => *size,
            DiskImage::Cow(cow) => cow.size(),
        }
    }

    /// Reads `buf.len()` bytes at `offset` (the caller checked the range).
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match self {
            DiskImage::Raw { file, .. } => file.read_exact_at(buf, offset),
            DiskImage::Cow(cow) => cow.read_at(buf, offset),
        }
    }

    /// Writes `buf` at `offset` (the caller checked the range and writability).
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        match self {
            DiskImage::Raw { file, unsynced, .. } => {
                *unsynced = true;
                file.write_all_at(buf, offset)
            }
            DiskImage::Cow(cow) => cow.write_at(buf, offset),
        }
    }

    /// Makes every completed write durable (fdatasync); nothing to do if nothing was
    /// written since the last flush.
    pub fn flush(&mut self) -> std::io::Result<()> {
        match self {
            DiskImage::Raw { unsynced, .. } if !*unsynced => Ok(()),
            DiskImage::Raw { file, unsynced, .. } => {
                file.sync_data()?;
                *unsynced = false;
                Ok(())
            }
            DiskImage::Cow(cow) => cow.flush(),
        }
    }
}
