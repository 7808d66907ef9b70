//! The `lease_quotes` table: each quote as it was issued (its address and derivation index,
//! price and spec), and the `meta` table's address index.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{Ledger, LedgerError};

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

impl Ledger {
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
}
