//! The `signed_outputs` table: every blind signature handed out, keyed by the blinded
//! message `B_` it signed, written in the transaction that claims what paid for it. The
//! primary key makes "signed at most once" a property of the database, so two requests
//! racing with the same `B_` cannot both be recorded, across processes too.

use rusqlite::{params, Connection, OptionalExtension};

use super::sqlite::storage;
use super::{SignedOutput, SpentSetError};

/// Creates the table if it is missing (older spent sets gain it on open).
pub(super) fn create_schema(conn: &Connection) -> Result<(), SpentSetError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS signed_outputs (
            b_ BLOB NOT NULL PRIMARY KEY,
            keyset_id TEXT NOT NULL,
            amount INTEGER NOT NULL,
            c_ BLOB NOT NULL,
            dleq_e BLOB,
            dleq_s BLOB,
            signed_at_us INTEGER NOT NULL
        ) WITHOUT ROWID;",
    )
    .map_err(storage)
}

/// Records `signed` over the caller's connection, transaction or savepoint. Fails with
/// [`SpentSetError::OutputAlreadySigned`] at the first `B_` recorded before (also one
/// repeated within `signed`); the caller's rollback then undoes the rows written so far.
pub(super) fn record_on(
    conn: &Connection,
    signed: &[SignedOutput],
    at_us: i64,
) -> Result<(), SpentSetError> {
    if signed.is_empty() {
        return Ok(());
    }
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO signed_outputs (b_, keyset_id, amount, c_, dleq_e, dleq_s, signed_at_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (b_) DO NOTHING",
        )
        .map_err(storage)?;
    for s in signed {
        let amount = i64::try_from(s.amount)
            .map_err(|_| SpentSetError::Storage(format!("amount {} too large", s.amount)))?;
        let (e, s_) = match &s.dleq {
            Some((e, s_)) => (Some(e.as_slice()), Some(s_.as_slice())),
            None => (None, None),
        };
        let written = insert
            .execute(params![s.b_, s.keyset_id, amount, s.c_, e, s_, at_us])
            .map_err(storage)?;
        if written == 0 {
            return Err(SpentSetError::OutputAlreadySigned {
                b_hex: hex::encode(&s.b_),
            });
        }
    }
    Ok(())
}

/// The recorded signature of each `B_`, in order.
pub(super) fn lookup_on(
    conn: &Connection,
    b_s: &[Vec<u8>],
) -> Result<Vec<Option<SignedOutput>>, SpentSetError> {
    let mut query = conn
        .prepare_cached(
            "SELECT keyset_id, amount, c_, dleq_e, dleq_s FROM signed_outputs WHERE b_ = ?1",
        )
        .map_err(storage)?;
    b_s.iter()
        .map(|b_| {
            let row = query
                .query_row([b_], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, Option<Vec<u8>>>(3)?,
                        r.get::<_, Option<Vec<u8>>>(4)?,
                    ))
                })
                .optional()
                .map_err(storage)?;
            row.map(|(keyset_id, amount, c_, e, s)| {
                let dleq = match (e, s) {
                    (Some(e), Some(s)) => Some((scalar(e)?, scalar(s)?)),
                    _ => None,
                };
                Ok(SignedOutput {
                    b_: b_.clone(),
                    keyset_id,
                    amount: u64::try_from(amount).map_err(|_| {
                        SpentSetError::Storage(format!("signed_outputs.amount {amount} negative"))
                    })?,
                    c_,
                    dleq,
                })
            })
            .transpose()
        })
        .collect()
}

fn scalar(bytes: Vec<u8>) -> Result<[u8; 32], SpentSetError> {
    bytes.try_into().map_err(|b: Vec<u8>| {
        SpentSetError::Storage(format!("signed_outputs DLEQ value of {} bytes", b.len()))
    })
}
