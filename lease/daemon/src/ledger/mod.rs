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
//! | `quotes.rs` | the `lease_quotes` table: [`QuoteRow`] |
//! | `books.rs` | where a lease's money went: [`Books`] |
//! | [`recovery`] | a lost create reply: the lease handed back to the retry that proves it owns it |
//! | `test_support.rs` | what the unit tests share |

mod books;
mod lease_rows;
mod lifecycle;
mod payments;
mod quotes;
pub mod recovery;
mod schema;
#[cfg(test)]
mod test_support;
mod tick;

pub use books::Books;
pub use lease_rows::{LeaseRow, NewLease};
pub use lifecycle::GuestEnded;
pub use payments::{Refund, TopupOutcome};
pub use quotes::QuoteRow;
pub use tick::{Sample, TickAction, TickOutcome};

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use coinop_proto::LeaseState;
use payment::spent_set::{SpendKey, SpentSetError, SqliteSpentSet};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LedgerError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("payment already spent: {0}")]
    AlreadySpent(String),
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

impl From<SpentSetError> for LedgerError {
    fn from(e: SpentSetError) -> Self {
        match e {
            SpentSetError::AlreadyClaimed { .. } | SpentSetError::DuplicateKey { .. } => {
                LedgerError::AlreadySpent(e.to_string())
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
}

pub struct Ledger {
    conn: Mutex<Connection>,
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
        Ok(Ledger {
            conn: Mutex::new(conn),
        })
    }

    pub(crate) fn with_tx<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    pub(crate) fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        f(&self.lock())
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
}

#[cfg(test)]
mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};

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
}
