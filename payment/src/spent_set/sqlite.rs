//! The embedded SQLite spent set: one WAL database with `synchronous=FULL`, so a claim that
//! returned `Ok` survives a power cut, and one IMMEDIATE transaction per claim, so two
//! claimers (threads or processes) of the same key serialise and exactly one wins.
//!
//! The claim is also offered over a caller's open transaction ([`SqliteSpentSet::claim_in`])
//! because the daemon's ledger must spend a payment and record what it bought in one
//! durable step, in the same database file.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::{signed_outputs, KeyKind, SignedOutput, SpendKey, SpendState, SpentSet, SpentSetError};
use crate::storage_refusal::StorageRefused;

/// How long a writer waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A spent set in one SQLite file. Cheap to share behind an `Arc`; calls from many threads
/// serialise on one connection (SQLite has one writer at a time anyway).
pub struct SqliteSpentSet {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteSpentSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSpentSet").finish_non_exhaustive()
    }
}

pub(super) fn storage(e: rusqlite::Error) -> SpentSetError {
    match StorageRefused::from_sqlite(&e) {
        Some(refused) => SpentSetError::StorageRefused(refused),
        None => SpentSetError::Storage(e.to_string()),
    }
}

fn kind_code(kind: KeyKind) -> i64 {
    match kind {
        KeyKind::Outpoint => 1,
        KeyKind::CreditY => 2,
    }
}

fn state_code(state: SpendState) -> i64 {
    match state {
        SpendState::Pending => 1,
        SpendState::Spent => 2,
    }
}

fn kind_from_code(code: i64) -> Result<KeyKind, SpentSetError> {
    match code {
        1 => Ok(KeyKind::Outpoint),
        2 => Ok(KeyKind::CreditY),
        other => Err(SpentSetError::Storage(format!(
            "spent_keys.kind holds unknown code {other}"
        ))),
    }
}

fn state_from_code(code: i64) -> Result<SpendState, SpentSetError> {
    match code {
        1 => Ok(SpendState::Pending),
        2 => Ok(SpendState::Spent),
        other => Err(SpentSetError::Storage(format!(
            "spent_keys.state holds unknown code {other}"
        ))),
    }
}

fn now_us() -> i64 {
    // A clock before 1970 is a broken host; 0 still orders claims sensibly enough for a note.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Opens `path` with the durability settings every coinop database uses: WAL (readers never
/// block the writer), `synchronous=FULL` (a commit is on disk when it returns) and a busy
/// timeout (a second process waits instead of failing at once).
pub fn open_durable(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode stayed {mode}, WAL refused"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Gives `table` the column `name` if it has none (a table made by an older build).
pub(super) fn add_column(
    conn: &Connection,
    table: &str,
    name: &str,
    decl: &str,
) -> Result<(), SpentSetError> {
    let has = |conn: &Connection| -> Result<bool, SpentSetError> {
        conn.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")
            .and_then(|mut q| q.exists([table, name]))
            .map_err(storage)
    };
    if has(conn)? {
        return Ok(());
    }
    match conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {decl}")) {
        Ok(()) => Ok(()),
        // Another connection to the file added it first: what was wanted.
        Err(_) if has(conn)? => Ok(()),
        Err(e) => Err(storage(e)),
    }
}

fn reject_duplicates(keys: &[SpendKey]) -> Result<(), SpentSetError> {
    let mut seen = HashSet::with_capacity(keys.len());
    for key in keys {
        if !seen.insert((key.kind, key.bytes.as_slice())) {
            return Err(SpentSetError::DuplicateKey {
                kind: key.kind,
                key_hex: key.key_hex(),
            });
        }
    }
    Ok(())
}

fn state_of(conn: &Connection, key: &SpendKey) -> Result<Option<SpendState>, SpentSetError> {
    let code: Option<i64> = conn
        .prepare_cached("SELECT state FROM spent_keys WHERE kind = ?1 AND key = ?2")
        .and_then(|mut st| {
            st.query_row(params![kind_code(key.kind), key.bytes], |r| r.get(0))
                .optional()
        })
        .map_err(storage)?;
    code.map(state_from_code).transpose()
}

impl SqliteSpentSet {
    /// Opens (creating if needed) the spent set in the SQLite file at `path`.
    pub fn open(path: &Path) -> Result<Self, SpentSetError> {
        let conn = open_durable(path).map_err(storage)?;
        Self::create_schema(&conn)?;
        Ok(SqliteSpentSet {
            conn: Mutex::new(conn),
        })
    }

    /// Creates the spent-set tables if they are missing, and gives a table from before
    /// receipts its `receipt` column, and one from before fleets its `published` column.
    /// For callers that keep the spent set in their own database file (the daemon's
    /// ledger).
    pub fn create_schema(conn: &Connection) -> Result<(), SpentSetError> {
        signed_outputs::create_schema(conn)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS spent_keys (
                kind INTEGER NOT NULL,
                key BLOB NOT NULL,
                state INTEGER NOT NULL,
                note TEXT NOT NULL,
                claimed_at_us INTEGER NOT NULL,
                receipt BLOB,
                PRIMARY KEY (kind, key)
            ) WITHOUT ROWID;",
        )
        .map_err(storage)?;
        add_column(conn, "spent_keys", "receipt", "BLOB")?;
        // Whether the key was copied into a shared spent set (a fleet's, which this host
        // joined after spending it on its own): 1 once that store confirmed it has it.
        // Every claim inserts 0; the fleet's start-up publishes the 0s and marks them.
        add_column(
            conn,
            "spent_keys",
            "published",
            "INTEGER NOT NULL DEFAULT 0",
        )
    }

    /// Up to `limit` keys not yet marked published ([`Self::mark_published_in`]) with
    /// their states, in key order, after `after` (exclusive; `None`: from the first), read
    /// through any connection or transaction. Walking the table in key order from the last
    /// key of the previous page costs each page its own rows, not a scan from the start.
    pub fn unpublished_in(
        conn: &Connection,
        after: Option<&SpendKey>,
        limit: usize,
    ) -> Result<Vec<(SpendKey, SpendState)>, SpentSetError> {
        // Below every key: kinds are 1 and 2, and no blob sorts before the empty one.
        let (kind, key) = after.map_or((0, &[][..]), |k| (kind_code(k.kind), &k.bytes[..]));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut query = conn
            .prepare_cached(
                "SELECT kind, key, state FROM spent_keys
                 WHERE published = 0 AND (kind, key) > (?1, ?2)
                 ORDER BY kind, key LIMIT ?3",
            )
            .map_err(storage)?;
        let rows = query
            .query_map(params![kind, key, limit], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, r.get(2)?))
            })
            .map_err(storage)?;
        rows.map(|row| {
            let (kind, bytes, state) = row.map_err(storage)?;
            let key = SpendKey {
                kind: kind_from_code(kind)?,
                bytes,
            };
            Ok((key, state_from_code(state)?))
        })
        .collect()
    }

    /// Marks keys published (a shared spent set has them), inside the caller's transaction;
    /// a key not in this set is passed over.
    pub fn mark_published_in(tx: &Transaction<'_>, keys: &[SpendKey]) -> Result<(), SpentSetError> {
        let mut update = tx
            .prepare_cached("UPDATE spent_keys SET published = 1 WHERE kind = ?1 AND key = ?2")
            .map_err(storage)?;
        for key in keys {
            update
                .execute(params![kind_code(key.kind), key.bytes])
                .map_err(storage)?;
        }
        Ok(())
    }

    /// Claims `keys` inside the caller's transaction. Writes nothing unless every key is
    /// free; the claim is durable only when the caller commits. Open the transaction with
    /// `TransactionBehavior::Immediate` so a concurrent claimer waits rather than failing
    /// with SQLITE_BUSY at commit time.
    pub fn claim_in(
        tx: &Transaction<'_>,
        keys: &[SpendKey],
        state: SpendState,
        note: &str,
    ) -> Result<(), SpentSetError> {
        Self::claim_on(tx, keys, state, note, None, &[])
    }

    /// Claims `keys` as `Spent` with `receipt` and records `signed` inside the caller's
    /// transaction, as [`Self::claim_in`] does; see [`SpentSet::claim_with_receipt`].
    pub fn claim_with_receipt_in(
        tx: &Transaction<'_>,
        keys: &[SpendKey],
        note: &str,
        receipt: &[u8; 32],
        signed: &[SignedOutput],
    ) -> Result<(), SpentSetError> {
        Self::claim_on(tx, keys, SpendState::Spent, note, Some(receipt), signed)
    }

    /// Records blind signatures handed out for something other than a claim (change of a
    /// lease's refund) inside the caller's transaction; fails, writing nothing the caller
    /// commits, if any `B_` was signed before.
    pub fn record_signed_in(
        tx: &Transaction<'_>,
        signed: &[SignedOutput],
    ) -> Result<(), SpentSetError> {
        signed_outputs::record_on(tx, signed, now_us())
    }

    /// Up to `limit` recorded signatures not yet marked published
    /// ([`Self::mark_outputs_published_in`]), in `B_` order after `after` (exclusive;
    /// `None`: from the first), read through any connection or transaction.
    pub fn unpublished_outputs_in(
        conn: &Connection,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<SignedOutput>, SpentSetError> {
        signed_outputs::unpublished_on(conn, after, limit)
    }

    /// Marks signatures published (a fleet store has them, or has another signature of
    /// their `B_` to keep) by `B_`, inside the caller's transaction; a `B_` not recorded
    /// here is passed over.
    pub fn mark_outputs_published_in(
        tx: &Transaction<'_>,
        b_s: &[Vec<u8>],
    ) -> Result<(), SpentSetError> {
        signed_outputs::mark_published_on(tx, b_s)
    }

    /// The recorded signature of each `B_`, read through any connection or transaction.
    pub fn signed_outputs_in(
        conn: &Connection,
        b_s: &[Vec<u8>],
    ) -> Result<Vec<Option<SignedOutput>>, SpentSetError> {
        signed_outputs::lookup_on(conn, b_s)
    }

    /// Whether every key (at least one) is spent with exactly `receipt`, read through any
    /// connection or transaction; see [`SpentSet::spent_with`].
    pub fn spent_with_in(
        conn: &Connection,
        keys: &[SpendKey],
        receipt: &[u8; 32],
    ) -> Result<bool, SpentSetError> {
        if keys.is_empty() {
            return Ok(false);
        }
        let mut query = conn
            .prepare_cached("SELECT state, receipt FROM spent_keys WHERE kind = ?1 AND key = ?2")
            .map_err(storage)?;
        for key in keys {
            let row: Option<(i64, Option<Vec<u8>>)> = query
                .query_row(params![kind_code(key.kind), key.bytes], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
                .map_err(storage)?;
            let Some((state, Some(stored))) = row else {
                return Ok(false);
            };
            if state_from_code(state)? != SpendState::Spent || stored.as_slice() != receipt {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// [`Self::claim_in`] (with a receipt and signatures, or none) over any connection,
    /// transaction or savepoint: the group committer runs each request inside its own
    /// savepoint. The caller rolls back on error (signatures are recorded after the keys).
    pub(super) fn claim_on(
        tx: &Connection,
        keys: &[SpendKey],
        state: SpendState,
        note: &str,
        receipt: Option<&[u8; 32]>,
        signed: &[SignedOutput],
    ) -> Result<(), SpentSetError> {
        reject_duplicates(keys)?;
        for key in keys {
            if let Some(taken) = state_of(tx, key)? {
                return Err(SpentSetError::AlreadyClaimed {
                    kind: key.kind,
                    key_hex: key.key_hex(),
                    state: taken,
                });
            }
        }
        let at = now_us();
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO spent_keys (kind, key, state, note, claimed_at_us, receipt)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(storage)?;
        for key in keys {
            insert
                .execute(params![
                    kind_code(key.kind),
                    key.bytes,
                    state_code(state),
                    note,
                    at,
                    receipt.map(|r| r.as_slice())
                ])
                .map_err(storage)?;
        }
        signed_outputs::record_on(tx, signed, at)
    }

    /// Checks that every key is pending, inside the caller's transaction.
    fn require_pending(tx: &Connection, keys: &[SpendKey]) -> Result<(), SpentSetError> {
        reject_duplicates(keys)?;
        for key in keys {
            if state_of(tx, key)? != Some(SpendState::Pending) {
                return Err(SpentSetError::NotPending {
                    kind: key.kind,
                    key_hex: key.key_hex(),
                });
            }
        }
        Ok(())
    }

    /// Moves pending keys to `Spent` inside the caller's transaction (all or none).
    pub fn commit_pending_in(tx: &Transaction<'_>, keys: &[SpendKey]) -> Result<(), SpentSetError> {
        Self::commit_pending_on(tx, keys)
    }

    /// [`Self::commit_pending_in`] over any connection, transaction or savepoint.
    pub(super) fn commit_pending_on(
        tx: &Connection,
        keys: &[SpendKey],
    ) -> Result<(), SpentSetError> {
        Self::settle_pending(tx, keys, Some(SpendState::Spent))
    }

    /// Forgets pending keys inside the caller's transaction (all or none).
    pub fn release_pending_in(
        tx: &Transaction<'_>,
        keys: &[SpendKey],
    ) -> Result<(), SpentSetError> {
        Self::release_pending_on(tx, keys)
    }

    /// [`Self::release_pending_in`] over any connection, transaction or savepoint.
    pub(super) fn release_pending_on(
        tx: &Connection,
        keys: &[SpendKey],
    ) -> Result<(), SpentSetError> {
        Self::settle_pending(tx, keys, None)
    }

    /// Ends the pending claim on every key (all or none): `Some(state)` keeps the key in
    /// that state, `None` forgets it.
    fn settle_pending(
        tx: &Connection,
        keys: &[SpendKey],
        to: Option<SpendState>,
    ) -> Result<(), SpentSetError> {
        Self::require_pending(tx, keys)?;
        for key in keys {
            let kind = kind_code(key.kind);
            match to {
                Some(state) => tx
                    .prepare_cached("UPDATE spent_keys SET state = ?3 WHERE kind = ?1 AND key = ?2")
                    .and_then(|mut update| {
                        update.execute(params![kind, key.bytes, state_code(state)])
                    }),
                None => tx
                    .prepare_cached("DELETE FROM spent_keys WHERE kind = ?1 AND key = ?2")
                    .and_then(|mut delete| delete.execute(params![kind, key.bytes])),
            }
            .map_err(storage)?;
        }
        Ok(())
    }

    /// The state of each key, read through any connection or transaction.
    pub fn states_in(
        conn: &Connection,
        keys: &[SpendKey],
    ) -> Result<Vec<Option<SpendState>>, SpentSetError> {
        keys.iter().map(|k| state_of(conn, k)).collect()
    }

    /// The note each key was claimed with (what it was spent on, e.g. a lease id), or `None`
    /// for a key never claimed, read through any connection or transaction.
    pub fn notes_in(
        conn: &Connection,
        keys: &[SpendKey],
    ) -> Result<Vec<Option<String>>, SpentSetError> {
        keys.iter()
            .map(|k| {
                conn.prepare_cached("SELECT note FROM spent_keys WHERE kind = ?1 AND key = ?2")
                    .and_then(|mut st| {
                        st.query_row(params![kind_code(k.kind), k.bytes], |r| r.get(0))
                            .optional()
                    })
                    .map_err(storage)
            })
            .collect()
    }

    /// Runs `f` in one IMMEDIATE transaction and commits only if it succeeded.
    fn in_transaction<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, SpentSetError>,
    ) -> Result<T, SpentSetError> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| SpentSetError::Storage("spent set lock poisoned".into()))?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage)?;
        let out = f(&tx)?;
        tx.commit().map_err(storage)?;
        Ok(out)
    }
}

impl SpentSet for SqliteSpentSet {
    fn claim(&self, keys: &[SpendKey], state: SpendState, note: &str) -> Result<(), SpentSetError> {
        self.in_transaction(|tx| Self::claim_in(tx, keys, state, note))
    }

    fn claim_with_receipt(
        &self,
        keys: &[SpendKey],
        note: &str,
        receipt: &[u8; 32],
        signed: &[SignedOutput],
    ) -> Result<(), SpentSetError> {
        self.in_transaction(|tx| Self::claim_with_receipt_in(tx, keys, note, receipt, signed))
    }

    fn signed_outputs(&self, b_s: &[Vec<u8>]) -> Result<Vec<Option<SignedOutput>>, SpentSetError> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| SpentSetError::Storage("spent set lock poisoned".into()))?;
        Self::signed_outputs_in(&conn, b_s)
    }

    fn spent_with(&self, keys: &[SpendKey], receipt: &[u8; 32]) -> Result<bool, SpentSetError> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| SpentSetError::Storage("spent set lock poisoned".into()))?;
        Self::spent_with_in(&conn, keys, receipt)
    }

    fn commit_pending(&self, keys: &[SpendKey]) -> Result<(), SpentSetError> {
        self.in_transaction(|tx| Self::commit_pending_in(tx, keys))
    }

    fn release_pending(&self, keys: &[SpendKey]) -> Result<(), SpentSetError> {
        self.in_transaction(|tx| Self::release_pending_in(tx, keys))
    }

    fn states(&self, keys: &[SpendKey]) -> Result<Vec<Option<SpendState>>, SpentSetError> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| SpentSetError::Storage("spent set lock poisoned".into()))?;
        Self::states_in(&conn, keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    fn key(kind: KeyKind, n: u8) -> SpendKey {
        SpendKey {
            kind,
            bytes: vec![n; 33],
        }
    }

    fn fresh() -> (tempfile::TempDir, SqliteSpentSet) {
        let dir = tempfile::tempdir().expect("tempdir");
        let set = SqliteSpentSet::open(&dir.path().join("spent.sqlite")).expect("open");
        (dir, set)
    }

    #[test]
    fn claim_is_all_or_none() {
        let (_d, set) = fresh();
        let a = key(KeyKind::CreditY, 1);
        let b = key(KeyKind::CreditY, 2);
        let c = key(KeyKind::CreditY, 3);
        set.claim(std::slice::from_ref(&b), SpendState::Spent, "first")
            .unwrap();
        let err = set
            .claim(
                &[a.clone(), b.clone(), c.clone()],
                SpendState::Spent,
                "second",
            )
            .unwrap_err();
        match err {
            SpentSetError::AlreadyClaimed {
                kind,
                key_hex,
                state,
            } => {
                assert_eq!(kind, KeyKind::CreditY);
                assert_eq!(key_hex, hex::encode([2u8; 33]));
                assert_eq!(state, SpendState::Spent);
            }
            other => panic!("expected AlreadyClaimed, got {other:?}"),
        }
        assert_eq!(
            set.states(&[a, b, c]).unwrap(),
            vec![None, Some(SpendState::Spent), None]
        );
    }

    #[test]
    fn duplicate_key_in_one_request_is_rejected() {
        let (_d, set) = fresh();
        let a = key(KeyKind::Outpoint, 7);
        let err = set
            .claim(&[a.clone(), a.clone()], SpendState::Spent, "dup")
            .unwrap_err();
        assert!(matches!(err, SpentSetError::DuplicateKey { .. }), "{err:?}");
        assert_eq!(set.states(&[a]).unwrap(), vec![None]);
    }

    #[test]
    fn same_bytes_different_kind_are_distinct_keys() {
        let (_d, set) = fresh();
        set.claim(&[key(KeyKind::Outpoint, 9)], SpendState::Spent, "a")
            .unwrap();
        set.claim(&[key(KeyKind::CreditY, 9)], SpendState::Spent, "b")
            .unwrap();
    }

    #[test]
    fn pending_then_spent() {
        let (_d, set) = fresh();
        let a = key(KeyKind::CreditY, 1);
        set.claim(std::slice::from_ref(&a), SpendState::Pending, "swap")
            .unwrap();
        assert_eq!(
            set.states(std::slice::from_ref(&a)).unwrap(),
            vec![Some(SpendState::Pending)]
        );
        // A pending key is taken: nobody else may claim it meanwhile.
        assert!(matches!(
            set.claim(std::slice::from_ref(&a), SpendState::Spent, "other"),
            Err(SpentSetError::AlreadyClaimed {
                state: SpendState::Pending,
                ..
            })
        ));
        set.commit_pending(std::slice::from_ref(&a)).unwrap();
        assert_eq!(
            set.states(std::slice::from_ref(&a)).unwrap(),
            vec![Some(SpendState::Spent)]
        );
        // Spent keys are no longer pending: neither commit nor release applies.
        assert!(matches!(
            set.release_pending(std::slice::from_ref(&a)),
            Err(SpentSetError::NotPending { .. })
        ));
        assert_eq!(set.states(&[a]).unwrap(), vec![Some(SpendState::Spent)]);
    }

    #[test]
    fn release_frees_the_key() {
        let (_d, set) = fresh();
        let a = key(KeyKind::CreditY, 1);
        let b = key(KeyKind::CreditY, 2);
        set.claim(std::slice::from_ref(&a), SpendState::Pending, "swap")
            .unwrap();
        // Releasing a pending and an unclaimed key together fails as a whole.
        assert!(matches!(
            set.release_pending(&[a.clone(), b.clone()]),
            Err(SpentSetError::NotPending { .. })
        ));
        assert_eq!(
            set.states(std::slice::from_ref(&a)).unwrap(),
            vec![Some(SpendState::Pending)]
        );
        set.release_pending(std::slice::from_ref(&a)).unwrap();
        assert_eq!(set.states(std::slice::from_ref(&a)).unwrap(), vec![None]);
        set.claim(&[a], SpendState::Spent, "again").unwrap();
    }

    #[test]
    fn restart_keeps_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spent.sqlite");
        let a = key(KeyKind::Outpoint, 1);
        let b = key(KeyKind::CreditY, 2);
        {
            let set = SqliteSpentSet::open(&path).unwrap();
            set.claim(std::slice::from_ref(&a), SpendState::Spent, "x")
                .unwrap();
            set.claim(std::slice::from_ref(&b), SpendState::Pending, "y")
                .unwrap();
        }
        let set = SqliteSpentSet::open(&path).unwrap();
        assert_eq!(
            set.states(&[a.clone(), b]).unwrap(),
            vec![Some(SpendState::Spent), Some(SpendState::Pending)]
        );
        assert!(set.claim(&[a], SpendState::Spent, "z").is_err());
    }

    #[test]
    fn a_receipt_names_the_claim_that_spent_every_key() {
        let (_d, set) = fresh();
        let (a, b, c) = (
            key(KeyKind::CreditY, 1),
            key(KeyKind::CreditY, 2),
            key(KeyKind::CreditY, 3),
        );
        let (r1, r2) = ([1u8; 32], [2u8; 32]);
        set.claim_with_receipt(&[a.clone(), b.clone()], "swap", &r1, &[])
            .unwrap();
        assert!(set.spent_with(&[b.clone(), a.clone()], &r1).unwrap());
        assert!(!set.spent_with(&[a.clone(), b.clone()], &r2).unwrap());
        assert!(
            !set.spent_with(&[a.clone(), b.clone(), c.clone()], &r1)
                .unwrap(),
            "an unclaimed key"
        );
        assert!(!set.spent_with(&[], &r1).unwrap(), "no keys, no receipt");
        // A claim with a receipt is a claim like any other.
        assert!(matches!(
            set.claim_with_receipt(&[a.clone(), c.clone()], "again", &r1, &[]),
            Err(SpentSetError::AlreadyClaimed { .. })
        ));
        assert_eq!(set.states(std::slice::from_ref(&c)).unwrap(), vec![None]);
        // Keys claimed without a receipt, or pending, name no request.
        set.claim(std::slice::from_ref(&c), SpendState::Spent, "lease")
            .unwrap();
        assert!(!set.spent_with(&[c], &[0u8; 32]).unwrap());
    }

    #[test]
    fn a_spent_set_from_before_receipts_gains_the_columns_and_keeps_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spent.sqlite");
        let a = key(KeyKind::Outpoint, 4);
        {
            let conn = open_durable(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE spent_keys (kind INTEGER NOT NULL, key BLOB NOT NULL,
                 state INTEGER NOT NULL, note TEXT NOT NULL, claimed_at_us INTEGER NOT NULL,
                 PRIMARY KEY (kind, key)) WITHOUT ROWID;",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO spent_keys VALUES (1, ?1, 2, 'old', 0)",
                [a.bytes.clone()],
            )
            .unwrap();
        }
        let set = SqliteSpentSet::open(&path).unwrap();
        assert_eq!(
            set.states(std::slice::from_ref(&a)).unwrap(),
            vec![Some(SpendState::Spent)]
        );
        assert!(!set
            .spent_with(std::slice::from_ref(&a), &[0u8; 32])
            .unwrap());
        // Nor had it been published: it is, as every key, unpublished at first.
        assert_eq!(
            all_unpublished(&set, 10),
            vec![(a.clone(), SpendState::Spent)]
        );
        let b = key(KeyKind::Outpoint, 5);
        set.claim_with_receipt(std::slice::from_ref(&b), "new", &[7u8; 32], &[])
            .unwrap();
        assert!(set.spent_with(&[b], &[7u8; 32]).unwrap());
        // Opening again finds the column there.
        drop(set);
        SqliteSpentSet::open(&path).unwrap();
    }

    /// Every key, listed a page at a time by `unpublished_in`.
    fn all_unpublished(set: &SqliteSpentSet, page: usize) -> Vec<(SpendKey, SpendState)> {
        let conn = set.conn.lock().unwrap();
        let mut all: Vec<(SpendKey, SpendState)> = Vec::new();
        loop {
            let after = all.last().map(|(k, _)| k);
            let got = SqliteSpentSet::unpublished_in(&conn, after, page).unwrap();
            assert!(got.len() <= page);
            let last = got.len() < page;
            all.extend(got);
            if last {
                return all;
            }
        }
    }

    #[test]
    fn unpublished_keys_are_listed_in_key_order_until_marked_published() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spent.sqlite");
        let set = SqliteSpentSet::open(&path).unwrap();
        let (a, b, c, d, e) = (
            key(KeyKind::CreditY, 3),
            key(KeyKind::CreditY, 1),
            key(KeyKind::Outpoint, 9),
            key(KeyKind::CreditY, 2),
            key(KeyKind::Outpoint, 4),
        );
        set.claim(&[a.clone(), b.clone()], SpendState::Spent, "swap")
            .unwrap();
        set.claim(std::slice::from_ref(&c), SpendState::Pending, "lease")
            .unwrap();
        set.claim_with_receipt(&[d.clone(), e.clone()], "swap", &[1; 32], &[])
            .unwrap();
        let everything = vec![
            (e.clone(), SpendState::Spent),
            (c.clone(), SpendState::Pending),
            (b.clone(), SpendState::Spent),
            (d.clone(), SpendState::Spent),
            (a.clone(), SpendState::Spent),
        ];
        // Outpoints (kind 1) first, then by bytes; whatever the page size.
        for page in [1, 2, 5, 100] {
            assert_eq!(all_unpublished(&set, page), everything, "page {page}");
        }
        set.in_transaction(|tx| {
            SqliteSpentSet::mark_published_in(tx, &[b.clone(), e.clone(), key(KeyKind::CreditY, 7)])
        })
        .unwrap();
        let rest = vec![
            (c.clone(), SpendState::Pending),
            (d.clone(), SpendState::Spent),
            (a.clone(), SpendState::Spent),
        ];
        assert_eq!(all_unpublished(&set, 1), rest);
        // A marked key is spent as before.
        assert_eq!(
            set.states(&[b.clone(), e.clone()]).unwrap(),
            vec![Some(SpendState::Spent); 2]
        );
        // A later claim is unpublished; the marks survive a restart.
        drop(set);
        let set = SqliteSpentSet::open(&path).unwrap();
        let f = key(KeyKind::CreditY, 0);
        set.claim(std::slice::from_ref(&f), SpendState::Spent, "later")
            .unwrap();
        let mut expected = rest;
        expected.insert(1, (f, SpendState::Spent));
        assert_eq!(all_unpublished(&set, 2), expected);
    }

    fn signed(b: u8, amount: u64) -> SignedOutput {
        SignedOutput {
            b_: vec![b; 33],
            keyset_id: "00test".into(),
            amount,
            c_: vec![b ^ 0xff; 33],
            dleq: Some(([b; 32], [amount as u8; 32])),
        }
    }

    #[test]
    fn unpublished_outputs_are_listed_in_b_order_until_marked_published() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spent.sqlite");
        let set = SqliteSpentSet::open(&path).unwrap();
        let (a, b, c) = (signed(3, 8), signed(1, 2), signed(2, 4));
        set.claim_with_receipt(
            &[key(KeyKind::CreditY, 1)],
            "swap",
            &[1; 32],
            std::slice::from_ref(&a),
        )
        .unwrap();
        set.in_transaction(|tx| SqliteSpentSet::record_signed_in(tx, &[b.clone(), c.clone()]))
            .unwrap();
        let all = |set: &SqliteSpentSet, page: usize| {
            let conn = set.conn.lock().unwrap();
            let mut all: Vec<SignedOutput> = Vec::new();
            loop {
                let after = all.last().map(|o| o.b_.as_slice());
                let got = SqliteSpentSet::unpublished_outputs_in(&conn, after, page).unwrap();
                let last = got.len() < page;
                all.extend(got);
                if last {
                    return all;
                }
            }
        };
        for page in [1, 2, 3, 100] {
            assert_eq!(
                all(&set, page),
                vec![b.clone(), c.clone(), a.clone()],
                "page {page}"
            );
        }
        set.in_transaction(|tx| {
            SqliteSpentSet::mark_outputs_published_in(tx, &[b.b_.clone(), vec![9; 33]])
        })
        .unwrap();
        // The marks survive a restart; a later record is unpublished.
        drop(set);
        let set = SqliteSpentSet::open(&path).unwrap();
        let d = signed(0, 1);
        set.in_transaction(|tx| SqliteSpentSet::record_signed_in(tx, std::slice::from_ref(&d)))
            .unwrap();
        assert_eq!(all(&set, 2), vec![d, c.clone(), a.clone()]);
        // A marked signature is still what restore finds.
        assert_eq!(
            set.signed_outputs(std::slice::from_ref(&b.b_)).unwrap(),
            vec![Some(b)]
        );
    }

    #[test]
    fn a_signed_outputs_table_from_before_fleets_gains_its_published_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        let conn = open_durable(&path).unwrap();
        // The table as builds before this column made it, with one signature.
        conn.execute_batch(
            "CREATE TABLE signed_outputs (
                b_ BLOB NOT NULL PRIMARY KEY, keyset_id TEXT NOT NULL,
                amount INTEGER NOT NULL, c_ BLOB NOT NULL, dleq_e BLOB, dleq_s BLOB,
                signed_at_us INTEGER NOT NULL
            ) WITHOUT ROWID;",
        )
        .unwrap();
        let old = signed(5, 16);
        signed_outputs::record_on(&conn, std::slice::from_ref(&old), 1).unwrap();
        drop(conn);
        let set = SqliteSpentSet::open(&path).unwrap();
        let conn = set.conn.lock().unwrap();
        assert_eq!(
            SqliteSpentSet::unpublished_outputs_in(&conn, None, 10).unwrap(),
            vec![old],
            "an old signature is unpublished"
        );
    }

    #[test]
    fn claim_in_rolls_back_with_the_callers_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_durable(&dir.path().join("ledger.sqlite")).unwrap();
        SqliteSpentSet::create_schema(&conn).unwrap();
        conn.execute_batch("CREATE TABLE balances (lease TEXT, msat INTEGER)")
            .unwrap();
        let a = key(KeyKind::Outpoint, 5);
        {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .unwrap();
            SqliteSpentSet::claim_in(&tx, std::slice::from_ref(&a), SpendState::Spent, "lease-1")
                .unwrap();
            tx.execute("INSERT INTO balances VALUES ('lease-1', 1000)", [])
                .unwrap();
            // Dropped without commit: neither the claim nor the balance may remain.
        }
        assert_eq!(
            SqliteSpentSet::states_in(&conn, std::slice::from_ref(&a)).unwrap(),
            vec![None]
        );
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        SqliteSpentSet::claim_in(&tx, std::slice::from_ref(&a), SpendState::Spent, "lease-2")
            .unwrap();
        tx.execute("INSERT INTO balances VALUES ('lease-2', 1000)", [])
            .unwrap();
        tx.commit().unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM balances", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            SqliteSpentSet::states_in(&conn, &[a]).unwrap(),
            vec![Some(SpendState::Spent)]
        );
    }

    #[test]
    fn many_threads_one_winner_per_key() {
        let (_d, set) = fresh();
        let set = Arc::new(set);
        const THREADS: usize = 64;
        const ROUNDS: u8 = 20;
        for round in 0..ROUNDS {
            let wins = Arc::new(AtomicUsize::new(0));
            let barrier = Arc::new(Barrier::new(THREADS));
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (set, wins, barrier) = (set.clone(), wins.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        match set.claim(
                            &[key(KeyKind::Outpoint, round)],
                            SpendState::Spent,
                            &t.to_string(),
                        ) {
                            Ok(()) => {
                                wins.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(SpentSetError::AlreadyClaimed { .. }) => {}
                            Err(other) => panic!("unexpected error {other:?}"),
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(wins.load(Ordering::SeqCst), 1, "round {round}");
        }
    }

    #[test]
    fn two_connections_to_one_file_one_winner() {
        // Two handles stand in for two processes: the database lock, not the mutex, decides.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spent.sqlite");
        let sets: Vec<_> = (0..8)
            .map(|_| Arc::new(SqliteSpentSet::open(&path).unwrap()))
            .collect();
        for round in 0..10u8 {
            let wins = Arc::new(AtomicUsize::new(0));
            let barrier = Arc::new(Barrier::new(sets.len()));
            let handles: Vec<_> = sets
                .iter()
                .map(|s| {
                    let (s, wins, barrier) = (s.clone(), wins.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        match s.claim(&[key(KeyKind::CreditY, round)], SpendState::Spent, "c") {
                            Ok(()) => {
                                wins.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(SpentSetError::AlreadyClaimed { .. }) => {}
                            Err(other) => panic!("unexpected error {other:?}"),
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(wins.load(Ordering::SeqCst), 1, "round {round}");
        }
    }
}
