//! The ledger: leases, the payments credited to them, quotes, and (in the same SQLite file)
//! the payment crate's spent set. WAL + `synchronous=FULL`: a committed payment survives a
//! crash. A payment is claimed and its balance recorded in ONE transaction, so money is
//! never counted twice nor lost between the two.
//!
//! The books of every lease balance: `paid = debited + balance + refunded + residual`, where
//! `paid` is the sum of its payments, `debited` what metering took, `refunded` the whole sats
//! handed back as change, and `residual` the sub-sat remainder of the refund (< 1 sat) that a
//! sat-denominated note cannot carry: it is kept by the host as income and recorded on the
//! lease rather than silently dropped. [`Ledger::books`] reads the four figures back.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | [`Ledger`]: open, and each step on its one connection (a write in one immediate transaction); [`LedgerError`]; [`Credit`] |
//! | `schema.rs` | the tables, and the columns an older ledger gains on open |
//! | `lease_rows.rs` | the `leases` table as [`LeaseRow`]s: [`NewLease`], get, list, the live ones |
//! | `payments.rs` | a payment claimed in the spent set and recorded with the balance it credits: create, top-up ([`TopupOutcome`]), [`Ledger::claim_with`], the [`Refund`]; each recorded so that its retry after a lost reply gets the same answer |
//! | `lifecycle.rs` | a guest's boot and stop: `running`, `stopped` with its reason |
//! | `tick.rs` | metering: one tick's [`Sample`]s debited, leases that run dry paused, then stopped ([`TickOutcome`]) |
//! | `stamps.rs` | when this process wrote a lease's time columns, on the monotonic clock: the time since, whatever the wall clock did |
//! | `quotes.rs` | the `lease_quotes` table: [`QuoteRow`] |
//! | `books.rs` | where a lease's money went: [`Books`] |
//! | [`recovery`] | a lost create reply: the lease handed back to the retry that proves it owns it |
//! | `published.rs` | the spent set's keys not yet published to the fleet store (spent before this host joined one) |
//! | `test_support.rs` | what the unit tests share |

mod books;
mod lease_rows;
mod lifecycle;
pub mod mint_quotes;
mod payments;
mod published;
mod quotes;
pub mod recovery;
pub mod reorg;
mod schema;
mod stamps;
#[cfg(test)]
pub(crate) mod test_support;
pub(crate) mod tick;

pub use books::Books;
pub use lease_rows::{LeaseRow, NewLease, UsageBaseline};
pub use lifecycle::GuestEnded;
pub use payments::{Refund, TopupOutcome};
pub use quotes::QuoteRow;
pub use tick::{Sample, TickAction, TickOutcome};

use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};

use coinop_proto::LeaseState;
use payment::spent_set::{SpendKey, SpentSetError, SqliteSpentSet};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LedgerError {
    #[error("sqlite: {0}")]
    Sqlite(rusqlite::Error),
    /// The disk under the ledger refused it: full (`SQLITE_FULL`: ENOSPC) or failing
    /// (`SQLITE_IOERR`: EIO, or no room for SQLite's WAL index). The transaction rolled
    /// back: nothing of it was committed, so the same request can simply be retried.
    #[error("ledger storage {fault}: {source}")]
    Storage {
        fault: StorageFault,
        /// SQLite's error, or the spent set's refusal met inside a ledger step.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("payment already spent: {0}")]
    AlreadySpent(String),
    /// A blinded message (`B_`, hex) signed before for another request: nothing committed.
    #[error("output {0} was already signed")]
    OutputsAlreadySigned(String),
    /// A refund of a lease whose balance was handed back before, onto other outputs.
    #[error("lease {0} was already refunded")]
    AlreadyRefunded(String),
    #[error("spent set: {0}")]
    SpentSet(String),
    #[error("no lease {0}")]
    NoLease(String),
    #[error("lease {id} is {state}: {why}")]
    State {
        id: String,
        state: LeaseState,
        why: &'static str,
    },
    /// A ledger step run on a worker thread panicked.
    #[error("a ledger step panicked")]
    Poisoned,
}

/// Why the disk refused a ledger step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// No space left (`SQLITE_FULL`).
    Full,
    /// An I/O error (`SQLITE_IOERR`): a failing disk, or ENOSPC met where SQLite reports
    /// it as I/O (allocating its shared-memory index).
    Io,
}

impl std::fmt::Display for StorageFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StorageFault::Full => "full",
            StorageFault::Io => "I/O error",
        })
    }
}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        let fault = match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StorageFault::Full,
            Some(rusqlite::ErrorCode::SystemIoFailure) => StorageFault::Io,
            _ => return LedgerError::Sqlite(e),
        };
        LedgerError::Storage {
            fault,
            source: Box::new(e),
        }
    }
}

impl LedgerError {
    /// Whether the disk refused the step (see [`LedgerError::Storage`]).
    pub fn is_storage(&self) -> bool {
        matches!(self, LedgerError::Storage { .. })
    }
}

impl From<SpentSetError> for LedgerError {
    fn from(e: SpentSetError) -> Self {
        match e {
            SpentSetError::AlreadyClaimed { .. } | SpentSetError::DuplicateKey { .. } => {
                LedgerError::AlreadySpent(e.to_string())
            }
            SpentSetError::OutputAlreadySigned { b_hex } => {
                LedgerError::OutputsAlreadySigned(b_hex)
            }
            // The disk refused the spent set's part of a ledger step: the step rolled back
            // like any other the disk refused.
            SpentSetError::StorageRefused(refused) if refused.by_the_disk() => {
                LedgerError::Storage {
                    fault: match refused.fault {
                        payment::storage_refusal::StorageFault::Full => StorageFault::Full,
                        _ => StorageFault::Io,
                    },
                    source: Box::new(refused),
                }
            }
            other => LedgerError::SpentSet(other.to_string()),
        }
    }
}

/// A payment being credited: what it is and which spent-set keys it consumes.
#[derive(Debug, Clone)]
pub struct Credit {
    pub kind: &'static str,
    pub reference: String,
    pub amount_msat: u64,
    pub keys: Vec<SpendKey>,
    /// On-chain: the paying block, watched until the payment settles.
    pub block_hash: Option<String>,
    /// On-chain: the quote it paid. Kept on its payment row: a payment named by quote id
    /// alone counts whichever of the quote's outputs are deep enough when it is checked, so
    /// a retry of a create or top-up whose reply was lost may bring a different set of keys
    /// than the one that committed, and is known again by its quote (see `recovery.rs`).
    pub quote_id: Option<String>,
}

/// The kind of an on-chain payment mined after its quote expired.
pub const ONCHAIN_LATE: &str = "onchain_late";

impl Credit {
    /// An on-chain payment mined after its quote expired: credited at the quote's price,
    /// flagged `late` in the reply and on its payment row.
    pub fn is_late(&self) -> bool {
        self.kind == ONCHAIN_LATE
    }
}

pub struct Ledger {
    conn: Mutex<Connection>,
    /// Called when the disk refuses a step ([`LedgerError::Storage`]); the daemon frees its
    /// disk reserve there, so that the next metering and stop commits have room.
    on_storage_error: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// When this process wrote the leases' time columns, on the monotonic clock (billing
    /// measures the time since on it: `stamps.rs`). Changed only under the connection's
    /// lock, so in the order the writes commit.
    stamps: stamps::Stamps,
}

impl Ledger {
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let conn = payment::spent_set::open_durable(path)?;
        Self::from_connection(conn)
    }

    pub fn from_connection(conn: Connection) -> Result<Self, LedgerError> {
        conn.execute_batch(schema::SCHEMA)?;
        schema::add_missing_columns(&conn)?;
        SqliteSpentSet::create_schema(&conn)?;
        conn.execute_batch(mint_quotes::SCHEMA)?;
        Ok(Ledger {
            conn: Mutex::new(conn),
            on_storage_error: OnceLock::new(),
            stamps: stamps::Stamps::default(),
        })
    }

    /// Sets what to do when the disk refuses a ledger step (once; later calls are ignored).
    pub fn on_storage_error(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_storage_error.set(Box::new(f));
    }

    pub(crate) fn with_tx<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut conn = self.lock();
        self.stamps.begin();
        // A failed step drops `tx` unfinished, which rolls it back.
        let result = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(LedgerError::from)
            .and_then(|tx| {
                let out = f(&tx)?;
                tx.commit()?;
                Ok(out)
            });
        // Under the lock still: the next transaction measures from what this one wrote.
        self.stamps.settle(result.is_ok());
        drop(conn);
        self.noticed(result)
    }

    pub(crate) fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let result = f(&self.lock());
        self.noticed(result)
    }

    /// The connection, also after a panic in another request that held it: its
    /// transaction was rolled back when the unwinding dropped it (or is rolled back here),
    /// so the connection is as good as before, and refusing every later step would stop
    /// metering and every payment for good.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|poisoned| {
            self.conn.clear_poison();
            let conn = poisoned.into_inner();
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            conn
        })
    }

    /// Passes `result` on, after telling the daemon when the disk refused the step.
    fn noticed<T>(&self, result: Result<T, LedgerError>) -> Result<T, LedgerError> {
        if let Err(e) = &result {
            if e.is_storage() {
                if let Some(f) = self.on_storage_error.get() {
                    f();
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::test_support::{credit, ledger, new_lease};
    use super::*;

    #[test]
    fn a_step_that_panics_rolls_back_and_the_ledger_goes_on() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 3000))
            .expect("create");
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            l.with_tx(|tx| -> Result<(), LedgerError> {
                tx.execute("UPDATE leases SET balance_msat = 0 WHERE id = 'a'", [])?;
                panic!("a bug in a request, half way through its transaction");
            })
        }));
        assert!(panicked.is_err());
        let row = l.get("a").expect("read after the panic").expect("row");
        assert_eq!(row.balance_msat, 3000, "the panicking step rolled back");
        l.mark_running("a", None, "{}")
            .expect("writes go on after the panic");
    }

    #[test]
    fn the_disks_refusals_are_storage_errors_and_are_reported() {
        let failure = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        let full = LedgerError::from(failure(rusqlite::ffi::SQLITE_FULL));
        assert!(matches!(
            full,
            LedgerError::Storage {
                fault: StorageFault::Full,
                ..
            }
        ));
        let io = LedgerError::from(failure(rusqlite::ffi::SQLITE_IOERR_SHMSIZE));
        assert!(matches!(
            io,
            LedgerError::Storage {
                fault: StorageFault::Io,
                ..
            }
        ));
        let other = LedgerError::from(failure(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE));
        assert!(!other.is_storage(), "{other:?}");
        // The spent set's part of a step, refused by the disk: the same storage error.
        let refused = |code| {
            let r = payment::storage_refusal::StorageRefused::from_sqlite(&failure(code))
                .expect("a refusal");
            LedgerError::from(SpentSetError::StorageRefused(r))
        };
        assert!(matches!(
            refused(rusqlite::ffi::SQLITE_FULL),
            LedgerError::Storage {
                fault: StorageFault::Full,
                ..
            }
        ));
        assert!(
            !refused(rusqlite::ffi::SQLITE_BUSY).is_storage(),
            "a lock, not the disk"
        );

        let (_d, l) = ledger();
        let told = Arc::new(AtomicU32::new(0));
        let t = Arc::clone(&told);
        l.on_storage_error(move || {
            t.fetch_add(1, Ordering::Relaxed);
        });
        let refused: Result<(), _> = l.with_tx(|_| Err(failure(rusqlite::ffi::SQLITE_FULL).into()));
        assert!(refused.is_err_and(|e| e.is_storage()));
        let _ = l.with_tx(|_| Err::<(), _>(LedgerError::NoLease("x".into())));
        assert_eq!(told.load(Ordering::Relaxed), 1, "only the disk's refusal");
    }
}
