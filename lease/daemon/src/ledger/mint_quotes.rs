//! The `nut30_quotes` table: NUT-30 on-chain mint quotes, each locked to the NUT-20 key that
//! must sign its mints, with what was paid to its address (confirmed payments proved to the
//! host) and what was issued against that. A payment is credited in the transaction that
//! claims its outpoints, and notes are issued in the transaction that records their
//! signatures and raises `amount_issued`, so neither can count twice.

use payment::spent_set::{SignedOutput, SpendKey, SpentSetError, SqliteSpentSet};
use rusqlite::{params, Connection, OptionalExtension};

use super::{Ledger, LedgerError};

pub(super) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS nut30_quotes (
    quote_id TEXT PRIMARY KEY,
    pubkey TEXT NOT NULL,
    amount_paid_sat INTEGER NOT NULL DEFAULT 0,
    amount_issued_sat INTEGER NOT NULL DEFAULT 0
);";

/// A NUT-30 quote's lock and balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nut30Quote {
    pub pubkey: String,
    pub amount_paid_sat: u64,
    pub amount_issued_sat: u64,
}

impl Nut30Quote {
    /// What may still be minted.
    pub fn available_sat(&self) -> u64 {
        self.amount_paid_sat.saturating_sub(self.amount_issued_sat)
    }
}

fn read(conn: &Connection, quote_id: &str) -> Result<Option<Nut30Quote>, LedgerError> {
    Ok(conn
        .prepare_cached(
            "SELECT pubkey, amount_paid_sat, amount_issued_sat FROM nut30_quotes
             WHERE quote_id = ?1",
        )?
        .query_row([quote_id], |r| {
            Ok(Nut30Quote {
                pubkey: r.get(0)?,
                amount_paid_sat: r.get(1)?,
                amount_issued_sat: r.get(2)?,
            })
        })
        .optional()?)
}

impl Ledger {
    /// Records a new NUT-30 quote (its address is the quote book's) locked to `pubkey`.
    pub fn open_nut30_quote(&self, quote_id: &str, pubkey: &str) -> Result<(), LedgerError> {
        self.with_tx(|tx| {
            tx.prepare_cached("INSERT INTO nut30_quotes (quote_id, pubkey) VALUES (?1, ?2)")?
                .execute(params![quote_id, pubkey])?;
            Ok(())
        })
    }

    /// The NUT-30 quote `quote_id`, if there is one.
    pub fn nut30_quote(&self, quote_id: &str) -> Result<Option<Nut30Quote>, LedgerError> {
        self.with_conn(|conn| read(conn, quote_id))
    }

    /// Credits a verified payment of `amount_sat` (its outpoints `keys`) to the quote,
    /// claiming the outpoints with `receipt` in the same transaction. The same payment
    /// proved again for the same quote (same receipt) credits nothing more; its outpoints
    /// used anywhere else are `AlreadySpent`. Returns the quote as it is then.
    pub fn credit_nut30_quote(
        &self,
        quote_id: &str,
        keys: &[SpendKey],
        amount_sat: u64,
        receipt: &[u8; 32],
    ) -> Result<Option<Nut30Quote>, LedgerError> {
        self.with_tx(|tx| {
            if read(tx, quote_id)?.is_none() {
                return Ok(None);
            }
            let note = format!("nut30 quote {quote_id}");
            match SqliteSpentSet::claim_with_receipt_in(tx, keys, &note, receipt, &[]) {
                Ok(()) => {
                    tx.prepare_cached(
                        "UPDATE nut30_quotes SET amount_paid_sat = amount_paid_sat + ?2
                         WHERE quote_id = ?1",
                    )?
                    .execute(params![quote_id, amount_sat])?;
                }
                Err(SpentSetError::AlreadyClaimed { .. })
                    if SqliteSpentSet::spent_with_in(tx, keys, receipt)? => {}
                Err(e) => return Err(e.into()),
            }
            read(tx, quote_id)
        })
    }

    /// Issues notes from the quote: `sign` sees the quote (`None`: no such quote) and
    /// either refuses or signs, returning its answer, the signatures to record and the sat
    /// they are worth; the recording and the rise of `amount_issued` commit together.
    pub fn issue_nut30<T, E>(
        &self,
        quote_id: &str,
        sign: impl FnOnce(Option<&Nut30Quote>) -> Result<(T, Vec<SignedOutput>, u64), E>,
    ) -> Result<Result<T, E>, LedgerError> {
        self.with_tx(|tx| {
            let quote = read(tx, quote_id)?;
            let (out, records, amount_sat) = match sign(quote.as_ref()) {
                Ok(signed) => signed,
                Err(e) => return Ok(Err(e)),
            };
            SqliteSpentSet::record_signed_in(tx, &records)?;
            tx.prepare_cached(
                "UPDATE nut30_quotes SET amount_issued_sat = amount_issued_sat + ?2
                 WHERE quote_id = ?1",
            )?
            .execute(params![quote_id, amount_sat])?;
            Ok(Ok(out))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::test_support::{credit, ledger};

    fn record(b: u8) -> SignedOutput {
        SignedOutput {
            b_: vec![b; 33],
            keyset_id: "00test".into(),
            amount: 4,
            c_: vec![3; 33],
            dleq: None,
        }
    }

    #[test]
    fn a_quote_is_credited_once_per_payment_and_issues_at_most_what_was_paid() {
        let (_d, l) = ledger();
        l.open_nut30_quote("q", "02aa").expect("open");
        let keys = credit(1, 0).keys;
        let q = l
            .credit_nut30_quote("q", &keys, 10, &[1; 32])
            .expect("credit")
            .expect("quote");
        assert_eq!((q.amount_paid_sat, q.available_sat()), (10, 10));
        // The same proof again: nothing more.
        let again = l
            .credit_nut30_quote("q", &keys, 10, &[1; 32])
            .expect("again");
        assert_eq!(again.expect("quote").amount_paid_sat, 10);
        // The outpoints for another quote: spent.
        l.open_nut30_quote("r", "02bb").expect("open");
        assert!(matches!(
            l.credit_nut30_quote("r", &keys, 10, &[2; 32]),
            Err(LedgerError::AlreadySpent(_))
        ));
        assert!(l
            .credit_nut30_quote("nope", &credit(2, 0).keys, 1, &[3; 32])
            .expect("ledger")
            .is_none());

        let sign = |asked: u64, b: u8| {
            move |q: Option<&Nut30Quote>| {
                let q = q.ok_or("no quote")?;
                if asked > q.available_sat() {
                    return Err("not paid");
                }
                Ok(((), vec![record(b)], asked))
            }
        };
        l.issue_nut30("q", sign(4, 1))
            .expect("ledger")
            .expect("4 of 10");
        assert_eq!(
            l.issue_nut30("q", sign(7, 2)).expect("ledger"),
            Err("not paid")
        );
        assert!(matches!(
            l.issue_nut30("q", sign(2, 1)),
            Err(LedgerError::OutputsAlreadySigned(_))
        ));
        l.issue_nut30("q", sign(6, 3))
            .expect("ledger")
            .expect("the rest");
        let q = l.nut30_quote("q").expect("read").expect("quote");
        assert_eq!((q.amount_paid_sat, q.amount_issued_sat), (10, 10));
        assert_eq!(
            l.issue_nut30("nope", sign(1, 4)).expect("ledger"),
            Err("no quote")
        );
    }
}
