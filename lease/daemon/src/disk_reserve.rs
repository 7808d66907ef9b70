//! Room kept back on the state directory's disk for the writes that must not fail when it
//! fills up: metering, pauses, stops, refunds. A full disk is not a crash and not a
//! half-state (every ledger step is one transaction that rolls back when the disk refuses
//! it), but a ledger that cannot commit cannot meter either, and SQLite cannot even open its
//! ledger at start-up without room for its WAL index. So coinopd keeps a reserve file,
//! `STATE/disk-reserve` ([`RESERVE_BYTES`], allocated, not sparse), and:
//!
//! - when the disk refuses a ledger step, or at start-up when less than the reserve is
//!   free, it deletes the reserve: the next commits (the tick that retries the debit, a
//!   stop, a refund) have that much room, whatever else filled the disk;
//! - without its reserve, coinopd is *degraded*: it takes no new leases (a create whose
//!   payment is valid and unspent is answered 507 `insufficient_storage` before anything
//!   is claimed; a spent one still gets its 409; new swaps, mints and quotes alike, see
//!   [`crate::http::degraded`]), and keeps
//!   metering, pausing, stopping, refunding and taking top-ups for the leases it has;
//! - once the disk has room for the reserve twice over (checked every
//!   [`CHECK_EVERY`] and by every refused create), it puts the reserve back and takes new
//!   leases again: no restart needed.
//!
//! `/metrics` shows `coinop_storage_degraded` (1 while degraded) and
//! `coinop_storage_reserve_released_total`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use payment::storage_refusal::StorageRefused;

use crate::metrics::StorageMetrics;

/// The reserve's size: SQLite's WAL grows to about 4 MiB between checkpoints (1,000 pages)
/// and its index takes 32 KiB; metering rewrites rows in place, so this is room for hours
/// of ticks, stops and refunds on a disk that something else filled.
pub const RESERVE_BYTES: u64 = 16 << 20;

/// How often a degraded coinopd looks for free space to put its reserve back.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The reserve file's name in the state directory.
const FILE_NAME: &str = "disk-reserve";

/// The reserve and whether coinopd is degraded (runs without it).
pub struct DiskReserve {
    path: PathBuf,
    bytes: u64,
    degraded: AtomicBool,
    /// Serialises creating and deleting the file.
    file: Mutex<()>,
    metrics: StorageMetrics,
}

/// Why a new lease is refused: coinopd runs without its reserve and the disk still has too
/// little room to put it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the host's disk is nearly full ({free_mib} MiB free): no new leases until space \
     returns; existing leases are metered and can be topped up and stopped"
)]
pub struct Degraded {
    pub free_mib: u64,
}

impl DiskReserve {
    /// The reserve of `state_dir`, made (or freed) for the disk as it is now. Never fails:
    /// a disk that cannot hold the reserve is a degraded start, not a refused one.
    pub fn open(state_dir: &Path, metrics: StorageMetrics) -> Arc<DiskReserve> {
        Self::with_size(state_dir, RESERVE_BYTES, metrics)
    }

    fn with_size(state_dir: &Path, bytes: u64, metrics: StorageMetrics) -> Arc<DiskReserve> {
        let r = DiskReserve {
            path: state_dir.join(FILE_NAME),
            bytes,
            degraded: AtomicBool::new(true),
            file: Mutex::new(()),
            metrics,
        };
        r.metrics.degraded.set(1);
        // A disk with less than the reserve free: the ledger's first writes (opening it
        // needs room for its WAL index) get the reserve's room.
        if free_bytes(state_dir).is_some_and(|free| free < bytes) {
            r.release();
        }
        r.restore();
        Arc::new(r)
    }

    /// Whether coinopd runs without its reserve (and so takes no new leases).
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    /// Deletes the reserve (the disk just refused a write): coinopd is degraded from here
    /// until [`DiskReserve::restore`] puts it back.
    pub fn release(&self) {
        let _file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        self.degraded.store(true, Ordering::Release);
        self.metrics.degraded.set(1);
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                self.metrics.reserve_released.inc();
                tracing::error!(
                    reserve_mib = self.bytes >> 20,
                    path = %self.path.display(),
                    "the state directory's disk is full: released the disk reserve for \
                     metering and stops; new leases are refused until space returns"
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(error = %e, path = %self.path.display(),
                                      "cannot delete the disk reserve"),
        }
    }

    /// Deletes the reserve when `refused` is a refusal by the disk of the payment crate's
    /// own storage (the spent set, the quote book), as the ledger's refusals do: the next
    /// commits need the room whichever store met the full disk first.
    pub fn notice(&self, refused: Option<&StorageRefused>) {
        if refused.is_some_and(StorageRefused::by_the_disk) {
            self.release();
        }
    }

    /// Puts the reserve back when the disk has room for it twice over, and leaves degraded
    /// mode; returns whether coinopd has its reserve now.
    pub fn restore(&self) -> bool {
        if !self.degraded() {
            return true;
        }
        let _file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let have = std::fs::metadata(&self.path).is_ok_and(|m| m.len() >= self.bytes);
        if !have {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            if free_bytes(dir).is_none_or(|free| free < 2 * self.bytes) {
                return false;
            }
            if let Err(e) = allocate(&self.path, self.bytes) {
                let _ = std::fs::remove_file(&self.path);
                tracing::warn!(error = %e, path = %self.path.display(),
                               "cannot make the disk reserve");
                return false;
            }
        }
        self.degraded.store(false, Ordering::Release);
        self.metrics.degraded.set(0);
        tracing::info!(
            reserve_mib = self.bytes >> 20,
            "the state directory's disk has room: disk reserve in place, new leases taken"
        );
        true
    }

    /// `Ok` when a new lease may be taken: coinopd has its reserve, or can put it back now.
    pub fn admit(&self) -> Result<(), Degraded> {
        if self.restore() {
            return Ok(());
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        Err(Degraded {
            free_mib: free_bytes(dir).unwrap_or(0) >> 20,
        })
    }

    /// Checks every [`CHECK_EVERY`] on a thread of its own whether a degraded coinopd can
    /// put its reserve back, until the reserve is dropped (the daemon's state with it).
    pub fn watch(self: &Arc<Self>) {
        let weak: Weak<DiskReserve> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("disk-reserve".into())
            .spawn(move || loop {
                std::thread::sleep(CHECK_EVERY);
                let Some(r) = weak.upgrade() else { return };
                r.restore();
            });
        if let Err(e) = spawned {
            // Refused creates still check for themselves; only the unprompted check is lost.
            tracing::warn!(error = %e, "no disk reserve watcher");
        }
    }
}

/// Bytes free to an unprivileged writer on the file system holding `dir` (`None` when it
/// cannot be asked).
fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    // Both are u64 on Linux.
    Some(st.blocks_available().saturating_mul(st.fragment_size()))
}

/// Makes `path` a file of `bytes` allocated bytes (not a sparse file: that would reserve
/// nothing), durable before it counts.
fn allocate(path: &Path, bytes: u64) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    let len = i64::try_from(bytes).map_err(std::io::Error::other)?;
    match nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, len) {
        Ok(()) => {}
        // A file system without fallocate: write the bytes out.
        Err(nix::errno::Errno::EOPNOTSUPP) => write_zeros(&mut f, bytes)?,
        Err(e) => return Err(e.into()),
    }
    f.sync_all()
}

fn write_zeros(f: &mut File, bytes: u64) -> std::io::Result<()> {
    let chunk = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_made_released_and_put_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = StorageMetrics::default();
        // 1 MiB: any test machine's temp dir has room for it twice over.
        let r = DiskReserve::with_size(dir.path(), 1 << 20, metrics.clone());
        let path = dir.path().join(FILE_NAME);
        let allocated = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
        };
        assert!(!r.degraded());
        assert!(allocated(&path) >= 1 << 20, "allocated, not sparse");
        assert_eq!(metrics.degraded.get(), 0);
        assert!(r.admit().is_ok());

        r.release();
        assert!(r.degraded());
        assert!(!path.exists());
        assert_eq!(
            (metrics.degraded.get(), metrics.reserve_released.get()),
            (1, 1)
        );
        r.release();
        assert_eq!(metrics.reserve_released.get(), 1, "only a deletion counts");

        // Room came back (it never left here): the next create puts the reserve back.
        assert!(r.admit().is_ok());
        assert!(!r.degraded());
        assert!(allocated(&path) >= 1 << 20);
        assert_eq!(metrics.degraded.get(), 0);
    }

    #[test]
    fn a_reserve_larger_than_the_free_space_leaves_coinopd_degraded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let free = free_bytes(dir.path()).expect("statvfs");
        let r = DiskReserve::with_size(dir.path(), free, StorageMetrics::default());
        assert!(r.degraded());
        assert!(!dir.path().join(FILE_NAME).exists());
        assert!(r.admit().is_err(), "no room for the reserve");
    }
}
