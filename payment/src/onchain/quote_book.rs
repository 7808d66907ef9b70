//! The quote book: issues quotes and remembers them in SQLite.
//!
//! The derivation counter lives in SQLite next to the quotes, and a quote is committed
//! (synchronous=FULL) before its address is returned, so after any crash the next quote
//! gets a higher index: an address is never handed out twice.

use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;

use bitcoin::{Address, ScriptBuf};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::error::QuoteError;
use super::price::msat_to_sat_ceil;
use super::quote::{bip21_uri, Quote, MAX_QUOTE_ID_LEN};
use super::receive_address::{AddressDeriver, HARDENED};
use crate::spent_set::open_durable;

fn storage(e: rusqlite::Error) -> QuoteError {
    QuoteError::Storage(e.to_string())
}

fn to_i64(v: u64, field: &str) -> Result<i64, QuoteError> {
    i64::try_from(v).map_err(|_| QuoteError::Storage(format!("{field} {v} exceeds 2^63")))
}

/// Issues and remembers quotes.
pub struct QuoteBook {
    conn: Mutex<Connection>,
    deriver: AddressDeriver,
}

impl std::fmt::Debug for QuoteBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuoteBook")
            .field("deriver", &self.deriver)
            .finish_non_exhaustive()
    }
}

impl QuoteBook {
    /// Opens (creating if needed) the quote book in the SQLite file at `path`; it may be the
    /// same file as the spent set.
    pub fn open(path: &Path, deriver: AddressDeriver) -> Result<Self, QuoteError> {
        let conn = open_durable(path).map_err(storage)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS quote_derivation (
                xpub TEXT PRIMARY KEY,
                next_index INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS quotes (
                quote_id TEXT PRIMARY KEY,
                xpub TEXT NOT NULL,
                derivation_index INTEGER NOT NULL,
                address TEXT NOT NULL,
                script_pubkey BLOB NOT NULL,
                amount_msat INTEGER NOT NULL,
                created_at_us INTEGER NOT NULL,
                expires_at_us INTEGER NOT NULL,
                UNIQUE (xpub, derivation_index)
            );",
        )
        .map_err(storage)?;
        Ok(QuoteBook {
            conn: Mutex::new(conn),
            deriver,
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, QuoteError> {
        self.conn
            .lock()
            .map_err(|_| QuoteError::Storage("quote book lock poisoned".into()))
    }

    /// The index the next quote will use.
    pub fn next_index(&self) -> Result<u64, QuoteError> {
        let conn = self.lock()?;
        let next: Option<i64> = conn
            .query_row(
                "SELECT next_index FROM quote_derivation WHERE xpub = ?1",
                params![self.deriver.xpub_text()],
                |r| r.get(0),
            )
            .optional()
            .map_err(storage)?;
        Ok(next.map_or(0, |n| n as u64))
    }

    /// Issues a quote for `amount_msat`, valid until `now_us + ttl_us`, with a fresh address.
    pub fn create(&self, amount_msat: u64, now_us: u64, ttl_us: u64) -> Result<Quote, QuoteError> {
        let mut id = [0u8; 16];
        bitcoin::secp256k1::rand::RngCore::fill_bytes(
            &mut bitcoin::secp256k1::rand::thread_rng(),
            &mut id,
        );
        let quote_id = hex::encode(id);
        let expires_at_us = now_us.saturating_add(ttl_us);
        let amount_sat = msat_to_sat_ceil(amount_msat);
        let xpub = self.deriver.xpub_text().to_owned();

        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage)?;
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
        let index = index as u32;
        let address = self.deriver.address_at(index)?;
        let script_pubkey = address.script_pubkey();
        let address = address.to_string();
        tx.execute(
            "INSERT INTO quote_derivation (xpub, next_index) VALUES (?1, ?2)
             ON CONFLICT (xpub) DO UPDATE SET next_index = excluded.next_index",
            params![xpub, next + 1],
        )
        .map_err(storage)?;
        tx.execute(
            "INSERT INTO quotes (quote_id, xpub, derivation_index, address, script_pubkey,
                amount_msat, created_at_us, expires_at_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                quote_id,
                xpub,
                index,
                address,
                script_pubkey.as_bytes(),
                to_i64(amount_msat, "amount_msat")?,
                to_i64(now_us, "created_at_us")?,
                to_i64(expires_at_us, "expires_at_us")?,
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
        })
    }

    /// Quotes whose payments are still looked for: those that expire after `since_us`
    /// (script → quote id). Ask with a time before now to keep watching expired quotes a
    /// while for late payments.
    pub fn watched_scripts(
        &self,
        since_us: u64,
    ) -> Result<std::collections::HashMap<ScriptBuf, String>, QuoteError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached("SELECT script_pubkey, quote_id FROM quotes WHERE expires_at_us > ?1")
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

    /// The quote with this id, if the host issued it.
    pub fn get(&self, quote_id: &str) -> Result<Option<Quote>, QuoteError> {
        if quote_id.len() > MAX_QUOTE_ID_LEN {
            return Ok(None);
        }
        let conn = self.lock()?;
        let row = conn
            .query_row(
                "SELECT derivation_index, address, script_pubkey, amount_msat, created_at_us,
                    expires_at_us FROM quotes WHERE quote_id = ?1",
                params![quote_id],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                    ))
                },
            )
            .optional()
            .map_err(storage)?;
        let Some((index, address, script, amount, created, expires)) = row else {
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
        assert_eq!(a.amount_sat, 2);
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
}
