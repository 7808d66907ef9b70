//! The `lease_quotes` table: each quote as it was issued (its address and derivation index,
//! price and spec).

use rusqlite::params;
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
}
