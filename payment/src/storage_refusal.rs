//! Why the payment crate's own storage (the spent set and the quote book, in SQLite) refused
//! an operation for a reason of the disk or the database's lock, not of the data: a full
//! disk, a failing disk, a write lock held too long by someone else. Such a refusal
//! changed nothing (the transaction rolled back), so the very same request succeeds once
//! the cause is gone; a caller answers it as "try again later", never as a bug.
//! [`StorageRefused`] is carried by [`crate::spent_set::SpentSetError`],
//! [`crate::credit::CreditError`] and [`crate::onchain::QuoteError`].

use thiserror::Error;

/// The cause of a [`StorageRefused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// No space left on the disk (`SQLITE_FULL`: ENOSPC).
    Full,
    /// An I/O error (`SQLITE_IOERR`): a failing disk, or ENOSPC met where SQLite reports it
    /// as I/O (growing its shared-memory WAL index).
    Io,
    /// Another connection held the write lock past the busy timeout (`SQLITE_BUSY`,
    /// `SQLITE_LOCKED`).
    Busy,
}

impl std::fmt::Display for StorageFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StorageFault::Full => "disk full",
            StorageFault::Io => "I/O error",
            StorageFault::Busy => "database busy",
        })
    }
}

/// The storage refused an operation for `fault`; nothing of it was committed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("storage refused ({fault}): {reason}")]
pub struct StorageRefused {
    pub fault: StorageFault,
    /// SQLite's own message, for the log.
    pub reason: String,
}

impl StorageRefused {
    /// Whether the disk itself refused (full or failing), as opposed to a lock held too
    /// long: a daemon frees its disk reserve for the former only.
    pub fn by_the_disk(&self) -> bool {
        matches!(self.fault, StorageFault::Full | StorageFault::Io)
    }

    /// The snake_case API code: the one a daemon's own storage refusals use too.
    pub fn code(&self) -> &'static str {
        match self.fault {
            StorageFault::Full => "insufficient_storage",
            StorageFault::Io | StorageFault::Busy => "storage_unavailable",
        }
    }
}

#[cfg(feature = "sqlite")]
impl StorageRefused {
    /// The refusal `e` is, when it is one of the disk's or the lock's (`None` for any other
    /// SQLite error, which is a bug or corruption rather than a passing condition).
    pub fn from_sqlite(e: &rusqlite::Error) -> Option<StorageRefused> {
        let fault = match e.sqlite_error_code()? {
            rusqlite::ErrorCode::DiskFull => StorageFault::Full,
            rusqlite::ErrorCode::SystemIoFailure => StorageFault::Io,
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => {
                StorageFault::Busy
            }
            _ => return None,
        };
        Some(StorageRefused {
            fault,
            reason: e.to_string(),
        })
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    #[test]
    fn sqlites_codes_are_sorted_by_cause() {
        let failure = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        let fault = |code| StorageRefused::from_sqlite(&failure(code)).map(|r| r.fault);
        assert_eq!(fault(rusqlite::ffi::SQLITE_FULL), Some(StorageFault::Full));
        assert_eq!(
            fault(rusqlite::ffi::SQLITE_IOERR_SHMSIZE),
            Some(StorageFault::Io)
        );
        assert_eq!(fault(rusqlite::ffi::SQLITE_BUSY), Some(StorageFault::Busy));
        assert_eq!(fault(rusqlite::ffi::SQLITE_CORRUPT), None);
        assert_eq!(fault(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE), None);
        let full =
            StorageRefused::from_sqlite(&failure(rusqlite::ffi::SQLITE_FULL)).expect("a refusal");
        assert!(full.by_the_disk());
        let busy =
            StorageRefused::from_sqlite(&failure(rusqlite::ffi::SQLITE_BUSY)).expect("a refusal");
        assert!(!busy.by_the_disk());
    }
}
