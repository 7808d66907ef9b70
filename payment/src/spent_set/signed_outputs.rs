//! The `signed_outputs` table: every blind signature handed out, keyed by the blinded
//! message `B_` it signed, written in the transaction that claims what paid for it. The
//! primary key makes "signed at most once" a property of the database, so two requests
//! racing with the same `B_` cannot both be recorded, across processes too.

use rusqlite::{params, Connection, OptionalExtension};

use super::sqlite::{add_column, storage};
use super::{SignedOutput, SpentSetError};

/// Creates the table if it is missing (older spent sets gain it on open), and gives one
/// from before fleets kept signed outputs its `published` column.
pub(super) fn create_schema(conn: &Connection) -> Result<(), SpentSetError> {
    let created = conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS signed_outputs (
            b_ BLOB NOT NULL PRIMARY KEY,
            keyset_id TEXT NOT NULL,
            amount INTEGER NOT NULL,
            c_ BLOB NOT NULL,
            dleq_e BLOB,
            dleq_s BLOB,
            signed_at_us INTEGER NOT NULL
        ) WITHOUT ROWID;",
    );
    created.map_err(storage)?;
    // Whether a fleet store this host joined has the `B_` (this signature, or another one
    // it keeps): 1 once it confirmed so. Every record inserts 0; the fleet mint's start-up
    // publishes the 0s and marks them, so that a `B_` this host signed before it joined
    // (or while it ran without its `--store`) is refused and restored on every host.
    add_column(
        conn,
        "signed_outputs",
        "published",
        "INTEGER NOT NULL DEFAULT 0",
    )
}

/// Up to `limit` signatures whose `published` is 0, in `B_` order after `after`
/// (exclusive). Walking the primary key from the last `B_` of the previous page costs each
/// page its own rows, not a scan from the start.
pub(super) fn unpublished_on(
    conn: &Connection,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<SignedOutput>, SpentSetError> {
    // No blob sorts before the empty one.
    let after = after.unwrap_or(&[]);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut query = conn
        .prepare_cached(
            "SELECT b_, keyset_id, amount, c_, dleq_e, dleq_s FROM signed_outputs
             WHERE published = 0 AND b_ > ?1 ORDER BY b_ LIMIT ?2",
        )
        .map_err(storage)?;
    let rows = query
        .query_map(params![after, limit], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, Option<Vec<u8>>>(4)?,
                r.get::<_, Option<Vec<u8>>>(5)?,
            ))
        })
        .map_err(storage)?;
    rows.map(|row| {
        let (b_, keyset_id, amount, c_, e, s) = row.map_err(storage)?;
        output(b_, keyset_id, amount, c_, e, s)
    })
    .collect()
}

/// Sets `published` of each `B_` recorded here to 1.
pub(super) fn mark_published_on(conn: &Connection, b_s: &[Vec<u8>]) -> Result<(), SpentSetError> {
    let mut update = conn
        .prepare_cached("UPDATE signed_outputs SET published = 1 WHERE b_ = ?1")
        .map_err(storage)?;
    for b_ in b_s {
        update.execute([b_]).map_err(storage)?;
    }
    Ok(())
}

/// A row's columns as a [`SignedOutput`].
fn output(
    b_: Vec<u8>,
    keyset_id: String,
    amount: i64,
    c_: Vec<u8>,
    e: Option<Vec<u8>>,
    s: Option<Vec<u8>>,
) -> Result<SignedOutput, SpentSetError> {
    let dleq = match (e, s) {
        (Some(e), Some(s)) => Some((scalar(e)?, scalar(s)?)),
        _ => None,
    };
    Ok(SignedOutput {
        b_,
        keyset_id,
        amount: u64::try_from(amount).map_err(|_| {
            SpentSetError::Storage(format!("signed_outputs.amount {amount} negative"))
        })?,
        c_,
        dleq,
    })
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
            row.map(|(keyset_id, amount, c_, e, s)| output(b_.clone(), keyset_id, amount, c_, e, s))
                .transpose()
        })
        .collect()
}

fn scalar(bytes: Vec<u8>) -> Result<[u8; 32], SpentSetError> {
    bytes.try_into().map_err(|b: Vec<u8>| {
        SpentSetError::Storage(format!("signed_outputs DLEQ value of {} bytes", b.len()))
    })
}
