//! The quote book: issues quotes and remembers them in SQLite.
//!
//! The derivation counter lives in SQLite next to the quotes, and a quote is committed
//! (synchronous=FULL) before its address is returned, so after any crash the next quote
//! gets an index no earlier quote holds: an address is never handed to two quotes at once.
//!
//! ## The gap of unused addresses stays bounded
//!
//! Anyone who may ask for quotes could otherwise push the xpub's index past a watch-only
//! wallet's gap limit (the run of unused addresses after which it stops looking), and the
//! operator would not see later payments. So ([`IndexPolicy`]):
//!
//! - a quote that expired unpaid gives its index back after `reuse_after_us`: the next
//!   quote takes the lowest such index before a new one is derived. The old quote is then
//!   *retired* at the chain's tip height H (payments in blocks up to H are still its own:
//!   its tenant may have paid late) and the new quote takes payments only from blocks above
//!   H, so one payment never fits both;
//! - at most `max_open` quotes hold an index without having been paid (a quote counts as
//!   paid once a payment to it was verified, [`QuoteBook::mark_paid`]); beyond that, quotes
//!   are refused ([`QuoteError::NoFreeIndex`]) until one frees.
//!
//! A new index is derived only when every earlier unpaid index is held by one of those
//! `max_open` quotes, so at every moment **derived indexes − paid indexes ≤ `max_open`**:
//! no run of unused addresses is longer than `max_open`, and a wallet whose gap limit is
//! at least `max_open` sees every payment.

use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;

use bitcoin::{Address, ScriptBuf};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::error::QuoteError;
use super::price::msat_to_sat_ceil;
use super::quote::{bip21_uri, dust_limit_sat, possible_quote_id, Quote};
use super::receive_address::{AddressDeriver, HARDENED};
use crate::spent_set::open_durable;
use crate::storage_refusal::StorageRefused;

fn storage(e: rusqlite::Error) -> QuoteError {
    match StorageRefused::from_sqlite(&e) {
        Some(refused) => QuoteError::StorageRefused(refused),
        None => QuoteError::Storage(e.to_string()),
    }
}

fn to_i64(v: u64, field: &str) -> Result<i64, QuoteError> {
    i64::try_from(v).map_err(|_| QuoteError::Storage(format!("{field} {v} exceeds 2^63")))
}

/// How derivation indexes are handed out (see the module doc for the bound they give).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexPolicy {
    /// How long after its expiry an unpaid quote keeps its index, µs: room for a payment
    /// sent just before the expiry to confirm.
    pub reuse_after_us: u64,
    /// Most quotes holding an index without a verified payment at once.
    pub max_open: u64,
}

impl Default for IndexPolicy {
    /// A day's grace for late payments, and no cap (the daemon sets its own).
    fn default() -> Self {
        IndexPolicy {
            reuse_after_us: 24 * 3600 * 1_000_000,
            max_open: u64::MAX,
        }
    }
}

/// Issues and remembers quotes.
pub struct QuoteBook {
    conn: Mutex<Connection>,
    deriver: AddressDeriver,
    policy: IndexPolicy,
    /// Raise amounts below the address type's dust limit to it.
    dust_floor: bool,
}

impl std::fmt::Debug for QuoteBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuoteBook")
            .field("deriver", &self.deriver)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

const CREATE_QUOTES: &str = "
    CREATE TABLE IF NOT EXISTS quotes (
        quote_id TEXT PRIMARY KEY,
        xpub TEXT NOT NULL,
        derivation_index INTEGER NOT NULL,
        address TEXT NOT NULL,
        script_pubkey BLOB NOT NULL,
        amount_msat INTEGER NOT NULL,
        created_at_us INTEGER NOT NULL,
        expires_at_us INTEGER NOT NULL,
        paid INTEGER NOT NULL DEFAULT 0,
        paid_above_height INTEGER,
        retired_at_height INTEGER
    );";

/// Columns every reader selects, in [`quote_from_row`]'s order.
const QUOTE_COLUMNS: &str = "quote_id, derivation_index, address, script_pubkey, amount_msat,
    created_at_us, expires_at_us, paid_above_height, retired_at_height";

/// A book written before indexes could be reused kept one quote per index with a table
/// constraint; it is rebuilt without it, and its quotes count as paid (whether they were is
/// not known, and an index that may have been paid must never be handed out again).
fn migrate_unique_index_table(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    let sql: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'quotes'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if !sql.is_some_and(|s| s.contains("UNIQUE (xpub, derivation_index)")) {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch("ALTER TABLE quotes RENAME TO quotes_before_reuse;")?;
    tx.execute_batch(CREATE_QUOTES)?;
    tx.execute_batch(
        "INSERT INTO quotes (quote_id, xpub, derivation_index, address, script_pubkey,
            amount_msat, created_at_us, expires_at_us, paid)
         SELECT quote_id, xpub, derivation_index, address, script_pubkey, amount_msat,
            created_at_us, expires_at_us, 1 FROM quotes_before_reuse;
         DROP TABLE quotes_before_reuse;",
    )?;
    tx.commit()
}

/// Moves what the book kept under another spelling of `deriver`'s key (the xpub string as
/// typed, which is what it was keyed by before [`AddressDeriver::key_id`]) to the key's id:
/// the counter becomes the highest of the spellings' counters and of every index a quote of
/// them holds, plus one, so it never goes back and no index is derived twice; the quotes
/// move with it. A quote whose index another spelling's live quote holds too (handed out
/// twice before this) keeps its old key, so the one-holder-per-index rule still holds for
/// the rest; its index is behind the counter either way, and the key's holder of it is
/// marked paid so that it is never reused.
fn adopt_spellings(conn: &mut Connection, deriver: &AddressDeriver) -> Result<(), rusqlite::Error> {
    let key = deriver.key_id();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let spellings: Vec<String> = tx
        .prepare(
            "SELECT xpub FROM quote_derivation WHERE xpub NOT LIKE 'key:%'
             UNION SELECT DISTINCT xpub FROM quotes WHERE xpub NOT LIKE 'key:%'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for old in spellings {
        if super::receive_address::key_id_of(&old).as_deref() != Some(key) {
            continue;
        }
        let next: i64 = tx.query_row(
            "SELECT MAX(
                COALESCE((SELECT MAX(next_index) FROM quote_derivation WHERE xpub IN (?1, ?2)), 0),
                COALESCE((SELECT MAX(derivation_index) + 1 FROM quotes WHERE xpub IN (?1, ?2)), 0))",
            params![key, old],
            |r| r.get(0),
        )?;
        tx.execute(
            "UPDATE OR IGNORE quotes SET xpub = ?1 WHERE xpub = ?2",
            params![key, old],
        )?;
        // An index two spellings both handed out: the quote that stays under the old one
        // is never retired by the key's quotes, so the key's holder of that index is kept
        // from reuse (as a paid one is), or a third quote would share the address.
        tx.execute(
            "UPDATE quotes SET paid = 1
             WHERE xpub = ?1 AND retired_at_height IS NULL AND derivation_index IN (
                SELECT derivation_index FROM quotes
                WHERE xpub = ?2 AND retired_at_height IS NULL)",
            params![key, old],
        )?;
        tx.execute(
            "INSERT INTO quote_derivation (xpub, next_index) VALUES (?1, ?2)
             ON CONFLICT (xpub) DO UPDATE SET next_index = MAX(next_index, excluded.next_index)",
            params![key, next],
        )?;
        tx.execute("DELETE FROM quote_derivation WHERE xpub = ?1", params![old])?;
    }
    tx.commit()
}

impl QuoteBook {
    /// Opens (creating if needed) the quote book in the SQLite file at `path`; it may be the
    /// same file as the spent set. Indexes follow [`IndexPolicy::default`].
    pub fn open(path: &Path, deriver: AddressDeriver) -> Result<Self, QuoteError> {
        let mut conn = open_durable(path).map_err(storage)?;
        migrate_unique_index_table(&mut conn).map_err(storage)?;
        conn.execute_batch(CREATE_QUOTES).map_err(storage)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS quote_derivation (
                xpub TEXT PRIMARY KEY,
                next_index INTEGER NOT NULL
            );
            CREATE UNIQUE INDEX IF NOT EXISTS quotes_index_holder
                ON quotes (xpub, derivation_index) WHERE retired_at_height IS NULL;
            CREATE INDEX IF NOT EXISTS quotes_unpaid_holders
                ON quotes (xpub, expires_at_us) WHERE retired_at_height IS NULL AND paid = 0;",
        )
        .map_err(storage)?;
        adopt_spellings(&mut conn, &deriver).map_err(storage)?;
        Ok(QuoteBook {
            conn: Mutex::new(conn),
            deriver,
            policy: IndexPolicy::default(),
            dust_floor: true,
        })
    }

    /// The same book raising amounts to the dust limit (`true`, the default) or not (for
    /// networks whose nodes relay dust: [`super::ChainNetwork::refuses_dust`]).
    pub fn with_dust_floor(mut self, on: bool) -> Self {
        self.dust_floor = on;
        self
    }

    /// The same book handing out indexes by `policy`.
    pub fn with_policy(mut self, policy: IndexPolicy) -> Self {
        self.policy = policy;
        self
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, QuoteError> {
        self.conn
            .lock()
            .map_err(|_| QuoteError::Storage("quote book lock poisoned".into()))
    }

    /// The index the next newly derived quote address will use (how many were derived).
    pub fn next_index(&self) -> Result<u64, QuoteError> {
        let conn = self.lock()?;
        let next: Option<i64> = conn
            .query_row(
                "SELECT next_index FROM quote_derivation WHERE xpub = ?1",
                params![self.deriver.key_id()],
                |r| r.get(0),
            )
            .optional()
            .map_err(storage)?;
        Ok(next.map_or(0, |n| n as u64))
    }

    /// Issues a quote for `amount_msat`, valid until `now_us + ttl_us`, always with a newly
    /// derived index (for callers without a header chain; the cap of
    /// [`IndexPolicy::max_open`] still holds).
    pub fn create(&self, amount_msat: u64, now_us: u64, ttl_us: u64) -> Result<Quote, QuoteError> {
        self.create_at(amount_msat, now_us, ttl_us, None)
    }

    /// Issues a quote for `amount_msat` (raised to the address type's dust limit), valid
    /// until `now_us + ttl_us`. It takes over the lowest index of a quote that expired
    /// unpaid more than [`IndexPolicy::reuse_after_us`] ago, retiring that quote at
    /// `tip_height` (the best chain's height now), else derives a new one.
    pub fn create_at_tip(
        &self,
        amount_msat: u64,
        now_us: u64,
        ttl_us: u64,
        tip_height: u32,
    ) -> Result<Quote, QuoteError> {
        self.create_at(amount_msat, now_us, ttl_us, Some(tip_height))
    }

    /// [`QuoteBook::create_at_tip`] with a tip to retire a reused index's old quote at, or
    /// [`QuoteBook::create`] (a new index) with `None`: for a host whose tip may be stale.
    pub fn create_at(
        &self,
        amount_msat: u64,
        now_us: u64,
        ttl_us: u64,
        tip_height: Option<u32>,
    ) -> Result<Quote, QuoteError> {
        let mut id = [0u8; 16];
        bitcoin::secp256k1::rand::RngCore::fill_bytes(
            &mut bitcoin::secp256k1::rand::thread_rng(),
            &mut id,
        );
        let quote_id = hex::encode(id);
        let expires_at_us = now_us.saturating_add(ttl_us);
        let xpub = self.deriver.key_id().to_owned();

        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage)?;
        let reused = match tip_height {
            Some(tip) => self.take_reusable(&tx, &xpub, now_us, tip)?,
            None => None,
        };
        let index = match reused {
            Some(index) => index,
            None => self.derive_next(&tx, &xpub, now_us)?,
        };
        let address = self.deriver.address_at(index)?;
        let script_pubkey = address.script_pubkey();
        let address = address.to_string();
        // Never below dust: such an output would not be relayed, so no wallet could pay it.
        let amount_msat = if self.dust_floor {
            amount_msat.max(dust_limit_sat(&script_pubkey).saturating_mul(1000))
        } else {
            amount_msat
        };
        let amount_sat = msat_to_sat_ceil(amount_msat);
        let paid_above_height = reused.and(tip_height);
        tx.execute(
            "INSERT INTO quotes (quote_id, xpub, derivation_index, address, script_pubkey,
                amount_msat, created_at_us, expires_at_us, paid_above_height)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                quote_id,
                xpub,
                index,
                address,
                script_pubkey.as_bytes(),
                to_i64(amount_msat, "amount_msat")?,
                to_i64(now_us, "created_at_us")?,
                to_i64(expires_at_us, "expires_at_us")?,
                paid_above_height,
            ],
        )
        .map_err(storage)?;
        tx.commit().map_err(storage)?;
        Ok(Quote {
            bip21: bip21_uri(&address, amount_sat),
            quote_id,
            amount_msat,
            amount_sat,
            address,
            script_pubkey,
            derivation_index: index,
            created_at_us: now_us,
            expires_at_us,
            paid_above_height,
            retired_at_height: None,
        })
    }

    /// Quotes whose payments are still looked for: those that expire after `since_us` and
    /// still hold their address (not retired for reuse) (script → quote id). Ask with a time before now to keep watching expired quotes a
    /// while for late payments.
    pub fn watched_scripts(
        &self,
        since_us: u64,
    ) -> Result<std::collections::HashMap<ScriptBuf, String>, QuoteError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT script_pubkey, quote_id FROM quotes
                 WHERE expires_at_us > ?1 AND retired_at_height IS NULL",
            )
            .map_err(storage)?;
        let rows = stmt
            .query_map(params![to_i64(since_us, "since_us")?], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(storage)?;
        let mut out = std::collections::HashMap::new();
        for row in rows {
            let (script, id) = row.map_err(storage)?;
            out.insert(ScriptBuf::from_bytes(script), id);
        }
        Ok(out)
    }

    /// Retires the unpaid quote with the lowest index whose grace after expiry is over, at
    /// `tip`, and returns its index.
    fn take_reusable(
        &self,
        tx: &Transaction<'_>,
        xpub: &str,
        now_us: u64,
        tip: u32,
    ) -> Result<Option<u32>, QuoteError> {
        let free_before = now_us.saturating_sub(self.policy.reuse_after_us);
        let old: Option<(String, i64)> = tx
            .query_row(
                "SELECT quote_id, derivation_index FROM quotes
                 WHERE xpub = ?1 AND retired_at_height IS NULL AND paid = 0
                   AND expires_at_us <= ?2
                 ORDER BY derivation_index LIMIT 1",
                params![xpub, to_i64(free_before, "now_us")?],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(storage)?;
        let Some((old_id, index)) = old else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE quotes SET retired_at_height = ?2 WHERE quote_id = ?1",
            params![old_id, tip],
        )
        .map_err(storage)?;
        let index = u32::try_from(index)
            .map_err(|_| QuoteError::Storage(format!("quote {old_id}: index {index}")))?;
        Ok(Some(index))
    }

    /// The next never-used index, if fewer than `max_open` unpaid quotes hold one.
    fn derive_next(
        &self,
        tx: &Transaction<'_>,
        xpub: &str,
        now_us: u64,
    ) -> Result<u32, QuoteError> {
        let (open, first_expiry): (i64, Option<i64>) = tx
            .query_row(
                "SELECT COUNT(*), MIN(expires_at_us) FROM quotes
                 WHERE xpub = ?1 AND retired_at_height IS NULL AND paid = 0",
                params![xpub],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(storage)?;
        let open = u64::try_from(open).unwrap_or(0);
        if open >= self.policy.max_open {
            let frees_at = u64::try_from(first_expiry.unwrap_or(0))
                .unwrap_or(0)
                .saturating_add(self.policy.reuse_after_us);
            return Err(QuoteError::NoFreeIndex {
                open,
                retry_after_s: frees_at.saturating_sub(now_us).div_ceil(1_000_000).max(1),
            });
        }
        let next: i64 = tx
            .query_row(
                "SELECT next_index FROM quote_derivation WHERE xpub = ?1",
                params![xpub],
                |r| r.get(0),
            )
            .optional()
            .map_err(storage)?
            .unwrap_or(0);
        let index = u64::try_from(next).unwrap_or(u64::MAX);
        if index >= HARDENED {
            return Err(QuoteError::IndexExhausted { index });
        }
        tx.execute(
            "INSERT INTO quote_derivation (xpub, next_index) VALUES (?1, ?2)
             ON CONFLICT (xpub) DO UPDATE SET next_index = excluded.next_index",
            params![xpub, next + 1],
        )
        .map_err(storage)?;
        Ok(index as u32)
    }

    /// Records that a payment to `quote_id` was verified: its index is never reused. Done
    /// before the payment is claimed, so that even a payment whose claim then fails keeps
    /// its address out of reuse.
    pub fn mark_paid(&self, quote_id: &str) -> Result<(), QuoteError> {
        let conn = self.lock()?;
        conn.execute(
            "UPDATE quotes SET paid = 1 WHERE quote_id = ?1 AND paid = 0",
            params![quote_id],
        )
        .map_err(storage)?;
        Ok(())
    }

    /// Quotes holding an index without a verified payment (expired ones included until
    /// their index is taken over).
    pub fn open_unpaid(&self) -> Result<u64, QuoteError> {
        let conn = self.lock()?;
        let n: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM quotes
                 WHERE xpub = ?1 AND retired_at_height IS NULL AND paid = 0",
                params![self.deriver.key_id()],
                |r| r.get(0),
            )
            .map_err(storage)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The quote with this id, if the host issued it.
    pub fn get(&self, quote_id: &str) -> Result<Option<Quote>, QuoteError> {
        if !possible_quote_id(quote_id) {
            return Ok(None);
        }
        let conn = self.lock()?;
        let row = conn
            .query_row(
                &format!("SELECT {QUOTE_COLUMNS} FROM quotes WHERE quote_id = ?1"),
                params![quote_id],
                |r| {
                    Ok((
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, Option<u32>>(7)?,
                        r.get::<_, Option<u32>>(8)?,
                    ))
                },
            )
            .optional()
            .map_err(storage)?;
        let Some((index, address, script, amount, created, expires, above, retired)) = row else {
            return Ok(None);
        };
        // Stored by `create` from non-negative values; a negative one means a damaged row.
        let unsigned = |v: i64, what: &str| {
            u64::try_from(v)
                .map_err(|_| QuoteError::Storage(format!("quote {quote_id}: {what} is {v}")))
        };
        let amount_msat = unsigned(amount, "amount_msat")?;
        let amount_sat = msat_to_sat_ceil(amount_msat);
        if Address::from_str(&address).is_err() {
            return Err(QuoteError::Storage(format!(
                "quote {quote_id}: address {address} does not parse"
            )));
        }
        Ok(Some(Quote {
            quote_id: quote_id.to_owned(),
            amount_msat,
            amount_sat,
            bip21: bip21_uri(&address, amount_sat),
            address,
            script_pubkey: ScriptBuf::from_bytes(script),
            derivation_index: u32::try_from(index)
                .map_err(|_| QuoteError::Storage(format!("quote {quote_id}: index {index}")))?,
            created_at_us: unsigned(created, "created_at_us")?,
            expires_at_us: unsigned(expires, "expires_at_us")?,
            paid_above_height: above,
            retired_at_height: retired,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onchain::receive_address::AddressKind;
    use crate::onchain::ChainNetwork;

    /// A test network xpub from a fixed seed (the private half exists only in this test).
    fn tpub() -> String {
        let secp = bitcoin::secp256k1::Secp256k1::new();
        let master =
            bitcoin::bip32::Xpriv::new_master(bitcoin::NetworkKind::Test, &[7u8; 32]).unwrap();
        bitcoin::bip32::Xpub::from_priv(&secp, &master).to_string()
    }

    #[test]
    fn bip21_amount_in_btc() {
        assert_eq!(
            bip21_uri("bcrt1qx", 12_345),
            "bitcoin:bcrt1qx?amount=0.00012345"
        );
        assert_eq!(
            bip21_uri("bcrt1qx", 100_000_000),
            "bitcoin:bcrt1qx?amount=1"
        );
    }

    #[test]
    fn indexes_grow_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quotes.sqlite");
        let deriver =
            || AddressDeriver::new(&tpub(), AddressKind::P2wpkh, ChainNetwork::Regtest).unwrap();
        let book = QuoteBook::open(&path, deriver()).unwrap();
        let a = book.create(1_500, 10, 1_000).unwrap();
        let b = book.create(2_000, 10, 1_000).unwrap();
        assert_eq!((a.derivation_index, b.derivation_index), (0, 1));
        assert_ne!(a.address, b.address);
        // 1.5 sat asked, raised to P2WPKH's dust limit (see `dust_limit_sat`).
        assert_eq!((a.amount_sat, a.amount_msat), (294, 294_000));
        assert_eq!(b.amount_sat, 294);
        assert_eq!(a.expires_at_us, 1_010);
        assert!(a.address.starts_with("bcrt1q"), "{}", a.address);
        drop(book);
        let book = QuoteBook::open(&path, deriver()).unwrap();
        assert_eq!(book.next_index().unwrap(), 2);
        let c = book.create(1, 10, 1).unwrap();
        assert_eq!(c.derivation_index, 2);
        assert_eq!(book.get(&a.quote_id).unwrap(), Some(a.clone()));
        assert_eq!(book.get("nope").unwrap(), None);
        // Quotes expiring after the given time are watched; a's expired (1,010 µs).
        let watched = book.watched_scripts(1_010).unwrap();
        assert_eq!(watched.len(), 0);
        let watched = book.watched_scripts(0).unwrap();
        assert_eq!(watched.get(&a.script_pubkey), Some(&a.quote_id));
        assert_eq!(watched.len(), 3);
    }

    fn regtest_book(path: &Path, policy: IndexPolicy) -> QuoteBook {
        let deriver =
            AddressDeriver::new(&tpub(), AddressKind::P2wpkh, ChainNetwork::Regtest).unwrap();
        QuoteBook::open(path, deriver).unwrap().with_policy(policy)
    }

    #[test]
    fn amounts_below_dust_are_raised_to_the_output_types_limit() {
        let dir = tempfile::tempdir().unwrap();
        for (kind, dust) in [
            (AddressKind::P2wpkh, 294),
            (AddressKind::P2tr, 330),
            (AddressKind::P2shP2wpkh, 540),
        ] {
            let deriver = AddressDeriver::new(&tpub(), kind, ChainNetwork::Regtest).unwrap();
            let path = dir.path().join(format!("{}.sqlite", kind.name()));
            let book = QuoteBook::open(&path, deriver).unwrap();
            for asked_sat in [2u64, 68] {
                let q = book.create(asked_sat * 1000, 0, 1).unwrap();
                assert_eq!(q.amount_sat, dust, "{} {asked_sat}", kind.name());
                assert_eq!(book.get(&q.quote_id).unwrap().unwrap().amount_sat, dust);
                assert_eq!(q.bip21, bip21_uri(&q.address, dust));
            }
            // Above the limit nothing changes.
            let q = book.create(dust * 1000 + 1, 0, 1).unwrap();
            assert_eq!(q.amount_sat, dust + 1);
            // Without the floor (a network that relays dust) the price stands.
            let book = book.with_dust_floor(false);
            assert_eq!(book.create(2_000, 0, 1).unwrap().amount_sat, 2);
        }
    }

    /// Without a tip to retire at (a host whose tip may be stale) an expired unpaid
    /// quote keeps its index: a late payment to it in a block above this host's tip stays
    /// its own, never the next quote's. With the tip, the index is reused.
    #[test]
    fn no_index_is_reused_without_a_tip_to_retire_the_old_quote_at() {
        let dir = tempfile::tempdir().unwrap();
        let book = regtest_book(
            &dir.path().join("q.sqlite"),
            IndexPolicy {
                reuse_after_us: 10,
                max_open: 3,
            },
        );
        let old = book.create_at(1_000_000, 100, 50, None).unwrap();
        let fresh = book.create_at(1_000_000, 1_000, 50, None).unwrap();
        assert_eq!((old.derivation_index, fresh.derivation_index), (0, 1));
        let kept = book.get(&old.quote_id).unwrap().unwrap();
        assert_eq!(
            (kept.retired_at_height, kept.paid_above_height),
            (None, None)
        );
        let reused = book.create_at(1_000_000, 1_000, 50, Some(9)).unwrap();
        assert_eq!(
            (reused.derivation_index, reused.paid_above_height),
            (0, Some(9))
        );
    }

    #[test]
    fn expired_unpaid_indexes_are_reused_and_the_gap_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sqlite");
        let policy = IndexPolicy {
            reuse_after_us: 10,
            max_open: 3,
        };
        let book = regtest_book(&path, policy);
        let q: Vec<Quote> = (0..3)
            .map(|_| book.create_at_tip(1_000_000, 100, 50, 7).unwrap())
            .collect();
        assert_eq!(
            q.iter().map(|q| q.derivation_index).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(q.iter().all(|q| q.paid_above_height.is_none()));
        // Three unpaid quotes hold an index: the cap. The first frees at 100 + 50 + 10.
        match book.create_at_tip(1_000_000, 120, 50, 7) {
            Err(QuoteError::NoFreeIndex {
                open: 3,
                retry_after_s: 1,
            }) => {}
            other => panic!("{other:?}"),
        }
        // A paid quote's index is never reused; the others come back, lowest first.
        book.mark_paid(&q[0].quote_id).unwrap();
        let r = book.create_at_tip(1_000_000, 160, 50, 9).unwrap();
        assert_eq!((r.derivation_index, r.paid_above_height), (1, Some(9)));
        assert_eq!(r.address, q[1].address);
        let old = book.get(&q[1].quote_id).unwrap().unwrap();
        assert_eq!(old.retired_at_height, Some(9));
        let r2 = book.create_at_tip(1_000_000, 160, 50, 9).unwrap();
        assert_eq!(r2.derivation_index, 2);
        // Nothing reusable now: one new index (two holders unpaid + one new = the cap).
        let n = book.create_at_tip(1_000_000, 160, 50, 9).unwrap();
        assert_eq!(n.derivation_index, 3);
        assert!(book.create_at_tip(1_000_000, 160, 50, 9).is_err());
        assert_eq!(book.next_index().unwrap(), 4);
        assert_eq!(book.open_unpaid().unwrap(), 3);
        // Derived − paid never exceeds the cap, whatever the load.
        for t in 0..500u64 {
            let now = 160 + t * 7;
            let _ = book.create_at_tip(1_000, now, 50, 10 + t as u32);
            assert!(book.next_index().unwrap() - 1 <= policy.max_open);
        }
    }

    /// The tpub's key spelled as a SLIP-132 vpub (the same 78 bytes, another version).
    fn vpub() -> String {
        let mut data = bitcoin::base58::decode_check(&tpub()).unwrap();
        data[..4].copy_from_slice(&[0x04, 0x5f, 0x1c, 0xf6]);
        bitcoin::base58::encode_check(&data)
    }

    /// One key spelled two ways derives the same addresses: it has one counter, so an
    /// address is never handed out again from index 0. A book that kept its counter under
    /// the string as typed (before key ids) carries it over, never lower, whatever the
    /// spelling it is opened with next; two spellings that already handed out the same
    /// index (before this) do not keep the book from opening.
    #[test]
    fn every_spelling_of_a_key_draws_from_one_counter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quotes.sqlite");
        let open = |xpub: &str| {
            QuoteBook::open(
                &path,
                AddressDeriver::new(xpub, AddressKind::P2wpkh, ChainNetwork::Regtest).unwrap(),
            )
            .unwrap()
        };
        let a = open(&vpub()).create(1_500, 10, 1_000).unwrap();
        let b = open(&tpub()).create(1_500, 10, 1_000).unwrap();
        assert_eq!((a.derivation_index, b.derivation_index), (0, 1));
        assert_ne!(a.address, b.address);

        // As a book from before key ids kept it: under the typed strings, each of which
        // handed out index 0 (the collision this prevents), the tpub's counter ahead.
        {
            let c = Connection::open(&path).unwrap();
            c.execute(
                "UPDATE quotes SET xpub = ?1 WHERE derivation_index = 1",
                params![tpub()],
            )
            .unwrap();
            c.execute(
                "UPDATE quotes SET xpub = ?1 WHERE derivation_index = 0",
                params![vpub()],
            )
            .unwrap();
            let addr = a.address.clone();
            c.execute(
                "INSERT INTO quotes (quote_id, xpub, derivation_index, address, script_pubkey,
                    amount_msat, created_at_us, expires_at_us)
                 VALUES ('7a1ce', ?1, 0, ?2, ?3, 1500, 10, 1010)",
                params![tpub(), addr, a.script_pubkey.as_bytes()],
            )
            .unwrap();
            c.execute_batch("DELETE FROM quote_derivation").unwrap();
            c.execute(
                "INSERT INTO quote_derivation VALUES (?1, 2), (?2, 1)",
                params![tpub(), vpub()],
            )
            .unwrap();
        }
        let book = open(&vpub());
        assert_eq!(
            book.next_index().unwrap(),
            2,
            "the highest counter, not the vpub's"
        );
        let c = book.create(1_500, 10, 1_000).unwrap();
        assert_eq!(c.derivation_index, 2);
        assert!(![&a.address, &b.address].contains(&&c.address));
        assert_eq!(book.get("7a1ce").unwrap().unwrap().derivation_index, 0);
        let d = open(&tpub()).create(1_500, 10, 1_000).unwrap();
        assert_eq!(d.derivation_index, 3);
        // Two days after every quote expired (past the day's grace): index 0, which '7a1ce'
        // still holds under the old spelling, goes to no new quote (it would be a third on
        // that address); the lowest free one does.
        let later = 2 * 24 * 3600 * 1_000_000;
        let e = book.create_at_tip(1_500, later, 1_000, 10).unwrap();
        assert_eq!(e.derivation_index, 1, "{e:?}");
    }

    #[test]
    fn a_book_from_before_reuse_is_migrated_and_its_quotes_count_as_paid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        let xpub = tpub();
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE quote_derivation (xpub TEXT PRIMARY KEY, next_index INTEGER NOT NULL);
                 CREATE TABLE quotes (
                    quote_id TEXT PRIMARY KEY, xpub TEXT NOT NULL,
                    derivation_index INTEGER NOT NULL, address TEXT NOT NULL,
                    script_pubkey BLOB NOT NULL, amount_msat INTEGER NOT NULL,
                    created_at_us INTEGER NOT NULL, expires_at_us INTEGER NOT NULL,
                    UNIQUE (xpub, derivation_index)
                 );",
            )
            .unwrap();
            let d = AddressDeriver::new(&xpub, AddressKind::P2wpkh, ChainNetwork::Regtest).unwrap();
            let a = d.address_at(0).unwrap();
            c.execute(
                "INSERT INTO quotes VALUES ('01d', ?1, 0, ?2, ?3, 5000000, 1, 2)",
                params![xpub, a.to_string(), a.script_pubkey().as_bytes()],
            )
            .unwrap();
            c.execute("INSERT INTO quote_derivation VALUES (?1, 1)", params![xpub])
                .unwrap();
        }
        let book = regtest_book(
            &path,
            IndexPolicy {
                reuse_after_us: 0,
                max_open: 10,
            },
        );
        let old = book.get("01d").unwrap().unwrap();
        assert_eq!((old.amount_sat, old.retired_at_height), (5000, None));
        // Long expired, but maybe paid: its index is not reused.
        let q = book.create_at_tip(1_000_000, 1_000, 10, 3).unwrap();
        assert_eq!(q.derivation_index, 1);
    }
}
