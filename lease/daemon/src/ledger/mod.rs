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

use std::path::Path;
use std::sync::Mutex;

use payment::spent_set::{SpendKey, SpendState, SpentSetError, SqliteSpentSet};
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};
use serde::Serialize;
use thiserror::Error;

use crate::clock::unix_s;
use payment::metering::{self, Prices, UsageDelta};

#[derive(Debug, Error)]
pub enum LedgerError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("payment already spent: {0}")]
    AlreadySpent(String),
    #[error("spent set: {0}")]
    SpentSet(String),
    #[error("no lease {0}")]
    NoLease(String),
    #[error("lease {id} is {state}: {why}")]
    State {
        id: String,
        state: String,
        why: &'static str,
    },
    #[error("ledger mutex poisoned by a panic in another request")]
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

/// Lease states (lease/openapi.yaml).
pub mod state {
    pub const BOOTING: &str = "booting";
    pub const RUNNING: &str = "running";
    pub const PAUSED_UNFUNDED: &str = "paused_unfunded";
    pub const STOPPED: &str = "stopped";
}

/// Why a lease stopped (lease/openapi.yaml).
pub mod reason {
    pub const TENANT: &str = "tenant";
    pub const BALANCE_EXHAUSTED: &str = "balance_exhausted";
    pub const GUEST_EXIT: &str = "guest_exit";
    pub const BOOT_FAILED: &str = "boot_failed";
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LeaseRow {
    pub id: String,
    #[serde(skip)]
    pub token_hash: Vec<u8>,
    pub vcpus: u32,
    pub mem_mib: u64,
    pub image: String,
    pub cmdline: String,
    pub state: String,
    pub stop_reason: Option<String>,
    pub balance_msat: u64,
    pub carry_units: u64,
    pub used_vcpu_us: u64,
    pub used_mem_mib_us: u64,
    pub last_vcpu_total_us: u64,
    pub last_uptime_us: u64,
    pub pid: Option<i32>,
    pub control_path: String,
    pub console_path: String,
    pub paused_at: Option<i64>,
    pub refunded_msat: Option<u64>,
    /// msat metering has taken from this lease over its life.
    pub debited_msat: u64,
    /// Sub-sat remainder of the refund, kept by the host (set together with `refunded_msat`).
    pub residual_msat: Option<u64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub boot_json: Option<String>,
}

/// A payment being credited: what it is and which spent-set keys it consumes.
#[derive(Debug, Clone)]
pub struct Credit {
    pub kind: &'static str,
    pub reference: String,
    pub amount_msat: u64,
    pub keys: Vec<SpendKey>,
}

#[derive(Debug, Clone)]
pub struct NewLease {
    pub id: String,
    pub token_hash: [u8; 32],
    pub vcpus: u32,
    pub mem_mib: u64,
    pub image: String,
    pub cmdline: String,
    pub control_path: String,
    pub console_path: String,
    /// SHA-256 of the tenant's recovery key, if the create carried one: what a retry of this
    /// create must prove it knows to get the lease back (see [`crate::create_recovery`]).
    pub recovery_hash: Option<[u8; 32]>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QuoteRow {
    pub id: String,
    pub purpose: String,
    pub address: String,
    pub derivation_index: u32,
    pub amount_msat: u64,
    pub vcpus: u32,
    pub mem_mib: u64,
    pub seconds: u64,
    pub image: Option<String>,
    pub expires_at: i64,
    pub created_at: i64,
}

/// One tick's reading of one guest's cumulative counters.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    pub lease_id: &'a str,
    pub vcpu_total_us: u64,
    pub uptime_us: u64,
}

/// What a tick decided for a lease; the scheduler acts on it after the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickAction {
    None,
    /// The balance just hit zero: pause the guest.
    Pause,
    /// The grace period ran out: stop the guest.
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickOutcome {
    pub lease_id: String,
    pub debited_msat: u64,
    pub balance_msat: u64,
    pub action: TickAction,
}

/// A refund that committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund<T> {
    /// Whole sats handed back, in msat (a multiple of 1000).
    pub refund_msat: u64,
    /// What the signer made of it (blind signatures).
    pub signed: T,
    /// The lease was booting, running or paused when it was refunded.
    pub was_live: bool,
    /// The sub-sat remainder (< 1000 msat) kept by the host.
    pub residual_msat: u64,
}

/// Where a lease's money went: `paid = debited + balance + refunded + residual`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Books {
    pub paid_msat: u64,
    pub debited_msat: u64,
    pub balance_msat: u64,
    pub refunded_msat: u64,
    pub residual_msat: u64,
}

impl Books {
    /// Whether every msat paid is accounted for.
    pub fn balanced(&self) -> bool {
        u128::from(self.paid_msat)
            == u128::from(self.debited_msat)
                + u128::from(self.balance_msat)
                + u128::from(self.refunded_msat)
                + u128::from(self.residual_msat)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopupOutcome {
    pub balance_msat: u64,
    /// The lease was paused for lack of funds and is now running again.
    pub resumed: bool,
}

pub struct Ledger {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY,
    token_hash BLOB NOT NULL,
    vcpus INTEGER NOT NULL,
    mem_mib INTEGER NOT NULL,
    image TEXT NOT NULL,
    cmdline TEXT NOT NULL,
    state TEXT NOT NULL,
    stop_reason TEXT,
    balance_msat INTEGER NOT NULL CHECK (balance_msat >= 0),
    carry_units INTEGER NOT NULL DEFAULT 0,
    used_vcpu_us INTEGER NOT NULL DEFAULT 0,
    used_mem_mib_us INTEGER NOT NULL DEFAULT 0,
    last_vcpu_total_us INTEGER NOT NULL DEFAULT 0,
    last_uptime_us INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    control_path TEXT NOT NULL,
    console_path TEXT NOT NULL,
    paused_at INTEGER,
    refunded_msat INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    boot_json TEXT,
    debited_msat INTEGER NOT NULL DEFAULT 0,
    residual_msat INTEGER
);
CREATE INDEX IF NOT EXISTS leases_state ON leases(state);
CREATE TABLE IF NOT EXISTS payments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    reference TEXT NOT NULL,
    amount_msat INTEGER NOT NULL,
    lease_id TEXT NOT NULL REFERENCES leases(id),
    late INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS lease_quotes (
    id TEXT PRIMARY KEY,
    purpose TEXT NOT NULL,
    address TEXT NOT NULL,
    derivation_index INTEGER NOT NULL,
    amount_msat INTEGER NOT NULL,
    vcpus INTEGER NOT NULL,
    mem_mib INTEGER NOT NULL,
    seconds INTEGER NOT NULL,
    image TEXT,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

const LEASE_COLUMNS: &str = "id, token_hash, vcpus, mem_mib, image, cmdline, state, stop_reason,
    balance_msat, carry_units, used_vcpu_us, used_mem_mib_us, last_vcpu_total_us,
    last_uptime_us, pid, control_path, console_path, paused_at, refunded_msat, created_at,
    updated_at, boot_json, debited_msat, residual_msat";

fn lease_from_row(r: &Row<'_>) -> rusqlite::Result<LeaseRow> {
    Ok(LeaseRow {
        id: r.get(0)?,
        token_hash: r.get(1)?,
        vcpus: r.get(2)?,
        mem_mib: r.get(3)?,
        image: r.get(4)?,
        cmdline: r.get(5)?,
        state: r.get(6)?,
        stop_reason: r.get(7)?,
        balance_msat: r.get(8)?,
        carry_units: r.get(9)?,
        used_vcpu_us: r.get(10)?,
        used_mem_mib_us: r.get(11)?,
        last_vcpu_total_us: r.get(12)?,
        last_uptime_us: r.get(13)?,
        pid: r.get(14)?,
        control_path: r.get(15)?,
        console_path: r.get(16)?,
        paused_at: r.get(17)?,
        refunded_msat: r.get(18)?,
        created_at: r.get(19)?,
        updated_at: r.get(20)?,
        boot_json: r.get(21)?,
        debited_msat: r.get(22)?,
        residual_msat: r.get(23)?,
    })
}

fn get_in(conn: &Connection, id: &str) -> Result<Option<LeaseRow>, LedgerError> {
    let sql = format!("SELECT {LEASE_COLUMNS} FROM leases WHERE id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id], lease_from_row)
        .optional()?)
}

pub(crate) fn require_in(conn: &Connection, id: &str) -> Result<LeaseRow, LedgerError> {
    get_in(conn, id)?.ok_or_else(|| LedgerError::NoLease(id.to_string()))
}

fn record_payment(
    tx: &Transaction<'_>,
    credit: &Credit,
    lease_id: &str,
    late: bool,
) -> Result<(), LedgerError> {
    SqliteSpentSet::claim_in(tx, &credit.keys, SpendState::Spent, lease_id)?;
    tx.prepare_cached(
        "INSERT INTO payments (kind, reference, amount_msat, lease_id, late, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        credit.kind,
        credit.reference,
        credit.amount_msat,
        lease_id,
        late,
        unix_s()
    ])?;
    Ok(())
}

/// Inserts a new lease (state `booting`) and claims its payment; the payment's digest and
/// the recovery key's hash are kept so that a retry of this create can find and prove it.
pub(crate) fn insert_lease(
    tx: &Transaction<'_>,
    lease: &NewLease,
    credit: &Credit,
) -> Result<(), LedgerError> {
    let now = unix_s();
    tx.prepare_cached(
        "INSERT INTO leases (id, token_hash, vcpus, mem_mib, image, cmdline, state,
            balance_msat, control_path, console_path, created_at, updated_at,
            payment_digest, recovery_hash, token_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13, 1)",
    )?
    .execute(params![
        lease.id,
        lease.token_hash.as_slice(),
        lease.vcpus,
        lease.mem_mib,
        lease.image,
        lease.cmdline,
        state::BOOTING,
        credit.amount_msat,
        lease.control_path,
        lease.console_path,
        now,
        crate::create_recovery::payment_digest(&credit.keys).as_slice(),
        lease.recovery_hash.as_ref().map(|h| h.as_slice()),
    ])?;
    record_payment(tx, credit, &lease.id, false)
}

impl Ledger {
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let conn = payment::spent_set::open_durable(path)?;
        Self::from_connection(conn)
    }

    pub fn from_connection(conn: Connection) -> Result<Self, LedgerError> {
        conn.execute_batch(SCHEMA)?;
        add_missing_columns(&conn)?;
        SqliteSpentSet::create_schema(&conn)?;
        Ok(Ledger {
            conn: Mutex::new(conn),
        })
    }

    pub(crate) fn with_tx<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut conn = self.conn.lock().map_err(|_| LedgerError::Poisoned)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    pub(crate) fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let conn = self.conn.lock().map_err(|_| LedgerError::Poisoned)?;
        f(&conn)
    }

    /// Claims the payment and inserts the lease (state `booting`) with its balance, in one
    /// durable transaction. Nothing is written if any payment key is already spent.
    pub fn create_lease(&self, lease: &NewLease, credit: &Credit) -> Result<(), LedgerError> {
        self.with_tx(|tx| insert_lease(tx, lease, credit))
    }

    /// Adds a payment to a lease's balance. A lease paused for lack of funds goes back to
    /// `running` (the caller resumes the guest); a stopped, not yet refunded lease keeps the
    /// money as refundable balance (`late`). A refunded lease takes no more money.
    pub fn topup(&self, id: &str, credit: &Credit) -> Result<TopupOutcome, LedgerError> {
        self.with_tx(|tx| {
            let lease = require_in(tx, id)?;
            if lease.refunded_msat.is_some() {
                return Err(LedgerError::State {
                    id: id.to_string(),
                    state: lease.state,
                    why: "already refunded; it takes no more payments",
                });
            }
            let late = lease.state == state::STOPPED;
            record_payment(tx, credit, id, late)?;
            let resumed = lease.state == state::PAUSED_UNFUNDED;
            let new_state = if resumed {
                state::RUNNING
            } else {
                lease.state.as_str()
            };
            let balance = lease.balance_msat.saturating_add(credit.amount_msat);
            tx.prepare_cached(
                "UPDATE leases SET balance_msat = ?2, state = ?3, paused_at = CASE WHEN ?4 THEN NULL ELSE paused_at END,
                    updated_at = ?5 WHERE id = ?1",
            )?
            .execute(params![id, balance, new_state, resumed, unix_s()])?;
            Ok(TopupOutcome {
                balance_msat: balance,
                resumed,
            })
        })
    }

    /// Records a successful boot: pid, figures, state `running`.
    pub fn mark_running(
        &self,
        id: &str,
        pid: Option<i32>,
        boot_json: &str,
    ) -> Result<(), LedgerError> {
        self.with_tx(|tx| {
            tx.prepare_cached(
                "UPDATE leases SET state = ?2, pid = ?3, boot_json = ?4, updated_at = ?5
                 WHERE id = ?1 AND state = ?6",
            )?
            .execute(params![
                id,
                state::RUNNING,
                pid,
                boot_json,
                unix_s(),
                state::BOOTING
            ])?;
            Ok(())
        })
    }

    /// Marks a lease stopped (if it is not already) with `reason`; returns whether it changed.
    pub fn mark_stopped(
        &self,
        id: &str,
        reason: &str,
        boot_json: Option<&str>,
    ) -> Result<bool, LedgerError> {
        self.with_tx(|tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE leases SET state = ?2, stop_reason = ?3, boot_json = COALESCE(?4, boot_json),
                        updated_at = ?5 WHERE id = ?1 AND state != ?2",
                )?
                .execute(params![id, state::STOPPED, reason, boot_json, unix_s()])?;
            Ok(n == 1)
        })
    }

    /// Refunds a lease's remaining balance, at most once: the whole sats go to `sign`, which
    /// turns them into what the tenant receives (blind signatures); the sub-sat remainder is
    /// recorded as the lease's residual (host income). If `sign` fails nothing is written.
    /// A running lease is stopped with reason `tenant` in the same transaction.
    /// Returns (refunded msat, what `sign` made, whether the lease was live, residual msat).
    pub fn refund<T, E>(
        &self,
        id: &str,
        sign: impl FnOnce(u64) -> Result<T, E>,
    ) -> Result<Result<Refund<T>, E>, LedgerError> {
        self.with_tx(|tx| {
            let lease = require_in(tx, id)?;
            if lease.refunded_msat.is_some() {
                return Err(LedgerError::State {
                    id: id.to_string(),
                    state: lease.state,
                    why: "already refunded",
                });
            }
            let was_live = lease.state != state::STOPPED;
            let residual_msat = lease.balance_msat % 1000;
            let refund_msat = lease.balance_msat - residual_msat;
            let out = match sign(refund_msat) {
                Ok(out) => out,
                Err(e) => return Ok(Err(e)),
            };
            tx.prepare_cached(
                "UPDATE leases SET state = ?2, stop_reason = COALESCE(stop_reason, ?3),
                    refunded_msat = ?5, residual_msat = ?6, balance_msat = 0, updated_at = ?4
                 WHERE id = ?1",
            )?
            .execute(params![
                id,
                state::STOPPED,
                reason::TENANT,
                unix_s(),
                refund_msat,
                residual_msat
            ])?;
            Ok(Ok(Refund {
                refund_msat,
                signed: out,
                was_live,
                residual_msat,
            }))
        })
    }

    /// Runs `sign` (which must have no side effects) and, if it succeeded, claims `keys` as
    /// spent; the result is only handed out when the claim committed.
    pub fn claim_with<T, E>(
        &self,
        keys: &[SpendKey],
        note: &str,
        sign: impl FnOnce() -> Result<T, E>,
    ) -> Result<Result<T, E>, LedgerError> {
        self.with_tx(|tx| {
            let out = match sign() {
                Ok(out) => out,
                Err(e) => return Ok(Err(e)),
            };
            SqliteSpentSet::claim_in(tx, keys, SpendState::Spent, note)?;
            Ok(Ok(out))
        })
    }

    pub fn get(&self, id: &str) -> Result<Option<LeaseRow>, LedgerError> {
        self.with_conn(|c| get_in(c, id))
    }

    pub fn list(&self) -> Result<Vec<LeaseRow>, LedgerError> {
        self.with_conn(|c| {
            let sql = format!("SELECT {LEASE_COLUMNS} FROM leases ORDER BY created_at, id");
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map([], lease_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Leases that may have a guest: booting, running or paused.
    pub fn live(&self) -> Result<Vec<LeaseRow>, LedgerError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|l| l.state != state::STOPPED)
            .collect())
    }

    /// Applies one tick of readings in one transaction: debits running leases, pauses those
    /// that hit zero, stops paused ones whose grace ran out. Counters are cumulative, so the
    /// debit is the delta since the last committed reading: a crash loses no usage at all
    /// for vCPU time and at most the uncommitted tick's wall time for memory.
    pub fn apply_tick(
        &self,
        samples: &[Sample<'_>],
        prices: Prices,
        grace_s: u64,
    ) -> Result<Vec<TickOutcome>, LedgerError> {
        let now = unix_s();
        self.with_tx(|tx| {
            let mut outcomes = Vec::with_capacity(samples.len());
            for s in samples {
                let Some(lease) = get_in(tx, s.lease_id)? else {
                    continue;
                };
                outcomes.push(tick_one(tx, &lease, s, prices, grace_s, now)?);
            }
            Ok(outcomes)
        })
    }

    pub fn insert_quote(&self, q: &QuoteRow) -> Result<(), LedgerError> {
        self.with_tx(|tx| {
            tx.prepare_cached(
                "INSERT INTO lease_quotes (id, purpose, address, derivation_index, amount_msat, vcpus,
                    mem_mib, seconds, image, expires_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                q.id,
                q.purpose,
                q.address,
                q.derivation_index,
                q.amount_msat,
                q.vcpus,
                q.mem_mib,
                q.seconds,
                q.image,
                q.expires_at,
                q.created_at
            ])?;
            Ok(())
        })
    }

    pub fn get_quote(&self, id: &str) -> Result<Option<QuoteRow>, LedgerError> {
        self.with_conn(|c| {
            Ok(c.prepare_cached(
                "SELECT id, purpose, address, derivation_index, amount_msat, vcpus, mem_mib,
                    seconds, image, expires_at, created_at FROM lease_quotes WHERE id = ?1",
            )?
            .query_row([id], |r| {
                Ok(QuoteRow {
                    id: r.get(0)?,
                    purpose: r.get(1)?,
                    address: r.get(2)?,
                    derivation_index: r.get(3)?,
                    amount_msat: r.get(4)?,
                    vcpus: r.get(5)?,
                    mem_mib: r.get(6)?,
                    seconds: r.get(7)?,
                    image: r.get(8)?,
                    expires_at: r.get(9)?,
                    created_at: r.get(10)?,
                })
            })
            .optional()?)
        })
    }

    /// Takes the next unused derivation index for quote addresses (durably, so a restart
    /// never hands out an address twice).
    pub fn next_address_index(&self) -> Result<u32, LedgerError> {
        self.with_tx(|tx| {
            let cur: Option<String> = tx
                .prepare_cached("SELECT value FROM meta WHERE key = 'next_address_index'")?
                .query_row([], |r| r.get(0))
                .optional()?;
            let idx: u32 = cur.and_then(|v| v.parse().ok()).unwrap_or(0);
            tx.prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('next_address_index', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute([(idx + 1).to_string()])?;
            Ok(idx)
        })
    }

    pub fn meta_get(&self, key: &str) -> Result<Option<String>, LedgerError> {
        self.with_conn(|c| {
            Ok(c.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()?)
        })
    }

    pub fn meta_set(&self, key: &str, value: &str) -> Result<(), LedgerError> {
        self.with_tx(|tx| {
            tx.prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute([key, value])?;
            Ok(())
        })
    }

    /// A lease's books: what it was paid and where that money went.
    pub fn books(&self, id: &str) -> Result<Books, LedgerError> {
        self.with_conn(|c| {
            let lease = require_in(c, id)?;
            let paid: u64 = c
                .prepare_cached(
                    "SELECT COALESCE(SUM(amount_msat), 0) FROM payments WHERE lease_id = ?1",
                )?
                .query_row([id], |r| r.get(0))?;
            Ok(Books {
                paid_msat: paid,
                debited_msat: lease.debited_msat,
                balance_msat: lease.balance_msat,
                refunded_msat: lease.refunded_msat.unwrap_or(0),
                residual_msat: lease.residual_msat.unwrap_or(0),
            })
        })
    }

    /// Total msat credited by payments (for checks and metrics).
    pub fn total_credited_msat(&self) -> Result<u64, LedgerError> {
        self.with_conn(|c| {
            Ok(c.query_row(
                "SELECT COALESCE(SUM(amount_msat), 0) FROM payments",
                [],
                |r| r.get(0),
            )?)
        })
    }
}

/// Columns added after the first schema; an older ledger gets them on open.
fn add_missing_columns(conn: &Connection) -> Result<(), LedgerError> {
    let have: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('leases')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for (name, decl) in [
        ("debited_msat", "INTEGER NOT NULL DEFAULT 0"),
        ("residual_msat", "INTEGER"),
        ("payment_digest", "BLOB"),
        ("recovery_hash", "BLOB"),
        ("token_seq", "INTEGER NOT NULL DEFAULT 1"),
        ("refund_outputs_digest", "BLOB"),
    ] {
        if !have.iter().any(|h| h == name) {
            conn.execute_batch(&format!("ALTER TABLE leases ADD COLUMN {name} {decl}"))?;
        }
    }
    // After the columns: an older ledger only now has payment_digest. Older leases have
    // none (NULL) and cannot be recovered. Not UNIQUE: the spent set already makes a digest
    // occur once, and its claim must be what refuses a reuse (same 409 as ever).
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS leases_payment_digest ON leases(payment_digest)",
    )?;
    Ok(())
}

fn tick_one(
    tx: &Transaction<'_>,
    lease: &LeaseRow,
    s: &Sample<'_>,
    prices: Prices,
    grace_s: u64,
    now: i64,
) -> Result<TickOutcome, LedgerError> {
    // Counters restart from zero only if the guest was replaced; never bill a negative delta.
    let dvcpu = s.vcpu_total_us.saturating_sub(lease.last_vcpu_total_us);
    let dwall = s.uptime_us.saturating_sub(lease.last_uptime_us);
    let mut out = TickOutcome {
        lease_id: lease.id.clone(),
        debited_msat: 0,
        balance_msat: lease.balance_msat,
        action: TickAction::None,
    };
    let mut state = lease.state.as_str();
    let mut paused_at = lease.paused_at;
    let mut carry = lease.carry_units;
    let mut used_vcpu = lease.used_vcpu_us;
    let mut used_mem = lease.used_mem_mib_us;
    match state {
        state::RUNNING => {
            let d = metering::debit(
                prices,
                UsageDelta {
                    vcpu_us: dvcpu,
                    mem_mib: lease.mem_mib,
                    wall_us: dwall,
                },
                carry,
                lease.balance_msat,
            );
            out.debited_msat = d.msat;
            out.balance_msat = lease.balance_msat - d.msat;
            carry = d.carry_units;
            used_vcpu = used_vcpu.saturating_add(dvcpu);
            used_mem = used_mem.saturating_add(lease.mem_mib.saturating_mul(dwall));
            if d.exhausted {
                state = state::PAUSED_UNFUNDED;
                paused_at = Some(now);
                out.action = TickAction::Pause;
            }
        }
        // Out of funds: nothing to bill; only move the baselines so a top-up does not
        // charge for the paused time.
        state::PAUSED_UNFUNDED
            if now.saturating_sub(paused_at.unwrap_or(now)) >= grace_s as i64 =>
        {
            out.action = TickAction::Stop;
        }
        _ => {}
    }
    let stop = out.action == TickAction::Stop;
    tx.prepare_cached(
        "UPDATE leases SET balance_msat = ?2, carry_units = ?3, used_vcpu_us = ?4,
            used_mem_mib_us = ?5, last_vcpu_total_us = ?6, last_uptime_us = ?7, state = ?8,
            paused_at = ?9, stop_reason = CASE WHEN ?10 THEN ?11 ELSE stop_reason END,
            updated_at = ?12, debited_msat = debited_msat + ?13 WHERE id = ?1",
    )?
    .execute(params![
        lease.id,
        out.balance_msat,
        carry,
        used_vcpu,
        used_mem,
        s.vcpu_total_us,
        s.uptime_us,
        if stop { state::STOPPED } else { state },
        paused_at,
        stop,
        reason::BALANCE_EXHAUSTED,
        now,
        out.debited_msat
    ])?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use payment::spent_set::SpendKey;

    /// A usage reading of lease "a": cumulative vCPU µs and uptime µs.
    fn s(vcpu_total_us: u64, uptime_us: u64) -> Sample<'static> {
        Sample {
            lease_id: "a",
            vcpu_total_us,
            uptime_us,
        }
    }

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = Ledger::open(&dir.path().join("ledger.db")).expect("open ledger");
        (dir, l)
    }

    fn new_lease(id: &str) -> NewLease {
        NewLease {
            id: id.into(),
            token_hash: crate::token::token_hash("t"),
            vcpus: 1,
            mem_mib: 1024,
            image: "testguest".into(),
            cmdline: String::new(),
            control_path: "/x.sock".into(),
            console_path: "/x.console".into(),
            recovery_hash: None,
        }
    }

    fn credit(key: u8, msat: u64) -> Credit {
        Credit {
            kind: "onchain",
            reference: format!("k{key}"),
            amount_msat: msat,
            keys: vec![SpendKey::outpoint([key; 32], 0)],
        }
    }

    const P: Prices = Prices {
        vcpu_msat_per_s: 1000,
        gib_msat_per_s: 1000,
    };

    #[test]
    fn a_payment_pays_for_one_lease_only() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 5000))
            .expect("first");
        let err = l
            .create_lease(&new_lease("b"), &credit(1, 5000))
            .unwrap_err();
        assert!(matches!(err, LedgerError::AlreadySpent(_)), "{err}");
        assert!(
            l.get("b").expect("get").is_none(),
            "no lease row without its payment"
        );
        assert_eq!(l.total_credited_msat().expect("sum"), 5000);
    }

    #[test]
    fn ticks_debit_pause_and_stop_after_grace() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 3000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        // 1 s vCPU + 1 GiB × 1 s = 2000 msat.
        let o = l
            .apply_tick(&[s(1_000_000, 1_000_000)], P, 0)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 2000);
        assert_eq!(o[0].action, TickAction::None);
        let o = l
            .apply_tick(&[s(2_000_000, 2_000_000)], P, 0)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 1000);
        assert_eq!(o[0].action, TickAction::Pause);
        assert_eq!(
            l.get("a").expect("get").expect("row").state,
            state::PAUSED_UNFUNDED
        );
        let o = l
            .apply_tick(&[s(2_000_000, 3_000_000)], P, 0)
            .expect("tick");
        assert_eq!(o[0].action, TickAction::Stop);
        let row = l.get("a").expect("get").expect("row");
        assert_eq!(row.state, state::STOPPED);
        assert_eq!(row.stop_reason.as_deref(), Some(reason::BALANCE_EXHAUSTED));
    }

    #[test]
    fn topup_resumes_without_billing_the_pause() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 1000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        l.apply_tick(&[s(1_000_000, 0)], P, 100).expect("tick");
        l.apply_tick(&[s(1_000_000, 50_000_000)], P, 100)
            .expect("paused tick");
        let t = l.topup("a", &credit(2, 10_000)).expect("topup");
        assert!(t.resumed);
        assert_eq!(t.balance_msat, 10_000);
        let o = l
            .apply_tick(&[s(1_000_000, 50_000_000)], P, 100)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 0, "paused wall time is not billed");
        assert!(matches!(
            l.topup("a", &credit(2, 10_000)),
            Err(LedgerError::AlreadySpent(_))
        ));
    }

    #[test]
    fn books_balance_over_a_whole_lease_life() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 5_000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        // Odd readings so debits leave sub-sat balances and carried fractions.
        l.apply_tick(&[s(1_234_567, 333_333)], P, 60).expect("tick");
        l.apply_tick(&[s(5_000_001, 777_777)], P, 60)
            .expect("tick to zero");
        assert_eq!(
            l.get("a").expect("get").expect("row").state,
            state::PAUSED_UNFUNDED
        );
        l.topup("a", &credit(2, 7_777)).expect("topup");
        l.apply_tick(&[s(5_000_001, 777_777)], P, 60)
            .expect("baseline tick");
        l.apply_tick(&[s(5_100_003, 1_000_000)], P, 60)
            .expect("tick");
        let mid = l.books("a").expect("books");
        assert!(mid.balanced(), "{mid:?}");
        assert_eq!(mid.paid_msat, 12_777);
        assert!(
            mid.balance_msat % 1000 != 0,
            "test wants a sub-sat balance: {mid:?}"
        );
        let r = l.refund("a", Ok::<u64, ()>).expect("ledger").expect("sign");
        let end = l.books("a").expect("books");
        assert!(end.balanced(), "{end:?}");
        assert_eq!(end.balance_msat, 0);
        assert_eq!(end.refunded_msat, r.refund_msat);
        assert_eq!(end.residual_msat, mid.balance_msat % 1000);
        assert_eq!(end.refunded_msat + end.residual_msat, mid.balance_msat);
        assert!(end.debited_msat > 5_000, "both payments were used: {end:?}");
    }

    #[test]
    fn an_older_ledger_gains_the_new_columns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.db");
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch(
                "CREATE TABLE leases (id TEXT PRIMARY KEY, token_hash BLOB NOT NULL,
                 vcpus INTEGER NOT NULL, mem_mib INTEGER NOT NULL, image TEXT NOT NULL,
                 cmdline TEXT NOT NULL, state TEXT NOT NULL, stop_reason TEXT,
                 balance_msat INTEGER NOT NULL, carry_units INTEGER NOT NULL DEFAULT 0,
                 used_vcpu_us INTEGER NOT NULL DEFAULT 0, used_mem_mib_us INTEGER NOT NULL DEFAULT 0,
                 last_vcpu_total_us INTEGER NOT NULL DEFAULT 0, last_uptime_us INTEGER NOT NULL DEFAULT 0,
                 pid INTEGER, control_path TEXT NOT NULL, console_path TEXT NOT NULL,
                 paused_at INTEGER, refunded_msat INTEGER, created_at INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL, boot_json TEXT)",
            )
            .expect("old schema");
        }
        let l = Ledger::open(&path).expect("reopen with migration");
        l.create_lease(&new_lease("a"), &credit(1, 1500))
            .expect("create");
        let r = l.refund("a", Ok::<u64, ()>).expect("ledger").expect("sign");
        assert_eq!((r.refund_msat, r.residual_msat), (1000, 500));
    }

    #[test]
    fn refund_happens_once() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 4321))
            .expect("create");
        let r = l.refund("a", Ok::<u64, ()>).expect("ledger").expect("sign");
        assert_eq!(r.refund_msat, 4000, "whole sats only");
        assert_eq!(r.signed, 4000, "the signer is asked for the whole sats");
        assert_eq!(r.residual_msat, 321);
        assert!(r.was_live);
        let again = l.refund("a", Ok::<u64, ()>);
        assert!(matches!(again, Err(LedgerError::State { .. })));
        let failed = {
            l.create_lease(&new_lease("b"), &credit(2, 10))
                .expect("create");
            l.refund("b", |_| Err::<(), &str>("bad outputs"))
                .expect("ledger")
        };
        assert!(failed.is_err());
        assert_eq!(l.get("b").expect("get").expect("row").refunded_msat, None);
    }
}
