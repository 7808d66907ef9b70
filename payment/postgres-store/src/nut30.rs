//! NUT-30 on-chain mint quotes, fleet-wide ([`PgNut30Quotes`]): each quote's key lock and
//! balance (what was paid to its address, what was issued), so that a quote made on one
//! host is paid on a second and minted on a third.
//!
//! # One transaction per money step, under the quote's row lock
//! - **Crediting a payment** ([`PgNut30Quotes::credit_payment`]): lock the quote's row, then
//!   claim the payment's outpoints `Spent` in the fleet spent set (`coinop_claim`, with the
//!   payment's receipt), record the payment by its receipt and raise `amount_paid_sat`, and
//!   commit. The claim and the credit are one commit: a crash leaves both or neither, so a
//!   payment is never spent without being credited, nor credited twice (the same proof
//!   again, on any host, finds its receipt and credits nothing; its outpoints used for
//!   anything else, a lease on another host included, are already spent).
//! - **Issuing a mint** ([`PgNut30Quotes::issue`]): the caller signs first (no state), then
//!   one transaction locks the quote's row, checks that the operation (the quote and its
//!   outputs) has not issued before and that `amount_issued + asked <= amount_paid`, inserts
//!   the signatures into the fleet's signed outputs (`coinop_reserve_outputs`: a `B_` signed
//!   anywhere before is NUT-00 11003) and marks them delivered, records the issue and raises
//!   `amount_issued_sat`, and commits. Nothing is pending in between, so there is nothing to
//!   reconcile after a crash: before the commit nothing was issued (the same request again
//!   signs afresh), after it the signatures are delivered under the operation and the same
//!   request on any host is answered with them (`PgSignedOutputs::delivered_for_operation`),
//!   as is a NUT-09 restore.
//! - **Races:** two hosts minting from one quote serialise on its row lock, so together
//!   they never issue more than was paid; the same mint sent to two hosts at once commits
//!   once, and the other finds the issue (or the `B_`s) taken and answers with the first
//!   one's signatures.

use deadpool_postgres::GenericClient;
use payment::onchain::quote::possible_quote_id;
use payment::spent_set::{SignedOutput, SpendKey, SpendState};

use crate::error::{classify, PgStoreError};
use crate::signed_outputs::{OutputColumns, PgSignedOutputs, OUTPUT_TAKEN};
use crate::spent_set::{
    key_arrays, kind_from_code, sql_state_is, state_code, PgSpentSet, KEY_TAKEN,
};
use crate::store::PgStore;

/// A conflict whose holder let go before it could be read is retried this often.
const ATTEMPTS: usize = 4;

/// A fleet NUT-30 quote: its lock, its balance, and its address and expiry (its
/// `coinop_quotes` row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nut30Quote {
    pub quote_id: String,
    /// The NUT-20 key that must sign its mints (hex, compressed).
    pub pubkey: String,
    pub amount_paid_sat: u64,
    pub amount_issued_sat: u64,
    pub address: String,
    pub expires_at_us: u64,
    /// The host that made it.
    pub host_id: String,
}

impl Nut30Quote {
    /// What may still be minted.
    pub fn available_sat(&self) -> u64 {
        self.amount_paid_sat.saturating_sub(self.amount_issued_sat)
    }
}

/// What [`PgNut30Quotes::issue`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Nut30Issue {
    /// Committed: the signatures are delivered and the quote's `amount_issued` raised.
    Issued,
    /// This operation issued before (the same request again, on any host): nothing more;
    /// its signatures are the delivered ones of the operation.
    Repeat,
    /// The quote has less than asked left to mint.
    NotPaid { asked: u64, available: u64 },
    /// No such NUT-30 quote in the fleet.
    UnknownQuote,
}

/// The fleet's NUT-30 quotes. Cheap to clone (shares the store's pool).
#[derive(Clone, Debug)]
pub struct PgNut30Quotes {
    store: PgStore,
}

const READ: &str = "SELECT n.quote_id, n.pubkey, n.amount_paid_sat, n.amount_issued_sat,
        q.address, q.expires_at_us, n.host_id
    FROM coinop_nut30_quotes n JOIN coinop_quotes q ON q.quote_id = n.quote_id
    WHERE n.quote_id = $1";

fn to_u64(v: i64, what: &str) -> Result<u64, PgStoreError> {
    u64::try_from(v).map_err(|_| PgStoreError::Corrupt(format!("{what} {v}")))
}

fn to_i64(v: u64, what: &str) -> Result<i64, PgStoreError> {
    i64::try_from(v).map_err(|_| PgStoreError::Config(format!("{what} {v} exceeds 2^63")))
}

async fn read<C: GenericClient>(c: &C, quote_id: &str) -> Result<Option<Nut30Quote>, PgStoreError> {
    let row = c.query_opt(READ, &[&quote_id]).await.map_err(classify)?;
    row.map(|r| {
        Ok(Nut30Quote {
            quote_id: r.get(0),
            pubkey: r.get(1),
            amount_paid_sat: to_u64(r.get(2), "amount_paid_sat")?,
            amount_issued_sat: to_u64(r.get(3), "amount_issued_sat")?,
            address: r.get(4),
            expires_at_us: to_u64(r.get(5), "expires_at_us")?,
            host_id: r.get(6),
        })
    })
    .transpose()
}

/// Locks the quote's row for the rest of the transaction; `false`: no such quote.
async fn lock<C: GenericClient>(c: &C, quote_id: &str) -> Result<bool, PgStoreError> {
    Ok(c.query_opt(
        "SELECT 1 FROM coinop_nut30_quotes WHERE quote_id = $1 FOR UPDATE",
        &[&quote_id],
    )
    .await
    .map_err(classify)?
    .is_some())
}

impl PgNut30Quotes {
    pub fn new(store: PgStore) -> Self {
        PgNut30Quotes { store }
    }

    /// Locks the fleet quote `quote_id` (made with purpose NUT-30, committed) to `pubkey`,
    /// with nothing paid. Repeating it changes nothing.
    pub async fn open(&self, quote_id: &str, pubkey: &str) -> Result<(), PgStoreError> {
        let host = self.store.host_id().to_owned();
        self.store
            .with_client(1, |client| async move {
                client
                    .execute(
                        "INSERT INTO coinop_nut30_quotes (quote_id, pubkey, host_id)
                         VALUES ($1, $2, $3) ON CONFLICT (quote_id) DO NOTHING",
                        &[&quote_id, &pubkey, &host],
                    )
                    .await
                    .map_err(classify)?;
                Ok(())
            })
            .await
    }

    /// The NUT-30 quote `quote_id`, made by any host. An id no book issues (a NUL, which
    /// the server refuses as text, included) is no quote, unasked.
    pub async fn get(&self, quote_id: &str) -> Result<Option<Nut30Quote>, PgStoreError> {
        if !possible_quote_id(quote_id) {
            return Ok(None);
        }
        self.store
            .with_client(1, |client| async move { read(&client, quote_id).await })
            .await
    }

    /// Credits a verified payment of `amount_sat` (its outpoints `keys`, its `receipt`) to
    /// the quote, claiming the outpoints `Spent` in the fleet spent set in the same
    /// transaction (see the module doc). The same payment again (same receipt) credits
    /// nothing more; its outpoints spent for anything else are
    /// [`PgStoreError::AlreadyClaimed`]. `None`: no such quote. Returns the quote as it is
    /// then.
    pub async fn credit_payment(
        &self,
        quote_id: &str,
        keys: &[SpendKey],
        amount_sat: u64,
        receipt: &[u8; 32],
        note: &str,
    ) -> Result<Option<Nut30Quote>, PgStoreError> {
        // No such quote (see `get`).
        if !possible_quote_id(quote_id) {
            return Ok(None);
        }
        let (kinds, bytes) = key_arrays(keys)?;
        let amount = to_i64(amount_sat, "amount_sat")?;
        let host = self.store.host_id().to_owned();
        let operation = hex::encode(receipt);
        for _ in 0..ATTEMPTS {
            let (kinds, bytes, host, operation) = (&kinds, &bytes, &host, &operation);
            let outcome = self
                .store
                .with_client(6, |mut client| async move {
                    let tx = client.transaction().await.map_err(classify)?;
                    if !lock(&tx, quote_id).await? {
                        return Ok(Some(None));
                    }
                    let credited = tx
                        .query_opt(
                            "SELECT quote_id FROM coinop_nut30_payments WHERE receipt = $1",
                            &[&receipt.as_slice()],
                        )
                        .await
                        .map_err(classify)?;
                    if credited.is_none() {
                        let claimed = tx
                            .query_one(
                                "SELECT coinop_claim($1, $2, $3, $4, $5, $6, $7)",
                                &[
                                    kinds,
                                    bytes,
                                    &state_code(SpendState::Spent),
                                    &note,
                                    &receipt.as_slice(),
                                    host,
                                    operation,
                                ],
                            )
                            .await;
                        match claimed {
                            Ok(_) => {}
                            Err(e) if sql_state_is(&e, KEY_TAKEN) => {
                                tx.rollback().await.map_err(classify)?;
                                let holders = PgSpentSet::holders(&client, kinds, bytes).await?;
                                let taken = kinds
                                    .iter()
                                    .zip(bytes.iter())
                                    .zip(&holders)
                                    .find_map(|((k, b), h)| h.as_ref().map(|h| (*k, *b, h.state)));
                                return match taken {
                                    Some((kind, key, state)) => {
                                        Err(PgStoreError::AlreadyClaimed {
                                            kind: kind_from_code(kind)?,
                                            key_hex: hex::encode(key),
                                            state,
                                        })
                                    }
                                    // Released between the claim and the read: again.
                                    None => Ok(None),
                                };
                            }
                            Err(e) => return Err(classify(e)),
                        }
                        tx.execute(
                            "INSERT INTO coinop_nut30_payments (receipt, quote_id, amount_sat, host_id)
                             VALUES ($1, $2, $3, $4)",
                            &[&receipt.as_slice(), &quote_id, &amount, host],
                        )
                        .await
                        .map_err(classify)?;
                        tx.execute(
                            "UPDATE coinop_nut30_quotes
                             SET amount_paid_sat = amount_paid_sat + $2 WHERE quote_id = $1",
                            &[&quote_id, &amount],
                        )
                        .await
                        .map_err(classify)?;
                    }
                    let quote = read(&tx, quote_id).await?;
                    tx.commit().await.map_err(classify)?;
                    Ok(Some(quote))
                })
                .await?;
            if let Some(quote) = outcome {
                return Ok(quote);
            }
        }
        Err(PgStoreError::Unavailable(format!(
            "a NUT-30 payment's claim kept conflicting with claims released at once, \
             {ATTEMPTS} times"
        )))
    }

    /// Issues `asked` sat from the quote as the signatures `signed` (made by the caller),
    /// for `operation_id` (the quote and the outputs), in one transaction: see the module
    /// doc. A `B_` signed before by anyone is [`PgStoreError::OutputAlreadySigned`].
    pub async fn issue(
        &self,
        quote_id: &str,
        operation_id: &str,
        asked: u64,
        signed: &[SignedOutput],
    ) -> Result<Nut30Issue, PgStoreError> {
        // No such quote (see `get`).
        if !possible_quote_id(quote_id) {
            return Ok(Nut30Issue::UnknownQuote);
        }
        let amount = to_i64(asked, "amount")?;
        let columns = OutputColumns::of(signed)?;
        let host = self.store.host_id().to_owned();
        for _ in 0..ATTEMPTS {
            let (columns, host) = (&columns, &host);
            let outcome = self
                .store
                .with_client(7, |mut client| async move {
                    let tx = client.transaction().await.map_err(classify)?;
                    let Some(quote) = ({
                        if lock(&tx, quote_id).await? {
                            read(&tx, quote_id).await?
                        } else {
                            None
                        }
                    }) else {
                        return Ok(Some(Nut30Issue::UnknownQuote));
                    };
                    let repeat = tx
                        .query_opt(
                            "SELECT 1 FROM coinop_nut30_issues WHERE operation_id = $1",
                            &[&operation_id],
                        )
                        .await
                        .map_err(classify)?;
                    if repeat.is_some() {
                        return Ok(Some(Nut30Issue::Repeat));
                    }
                    if asked > quote.available_sat() {
                        return Ok(Some(Nut30Issue::NotPaid {
                            asked,
                            available: quote.available_sat(),
                        }));
                    }
                    if !columns.b_s.is_empty() {
                        let reserved = tx
                            .query_one(
                                "SELECT coinop_reserve_outputs($1, $2, $3, $4, $5, $6, $7, $8)",
                                &[
                                    &columns.b_s,
                                    &columns.keysets,
                                    &columns.amounts,
                                    &columns.c_s,
                                    &columns.es,
                                    &columns.ss,
                                    host,
                                    &operation_id,
                                ],
                            )
                            .await;
                        match reserved {
                            Ok(_) => {}
                            Err(e) if sql_state_is(&e, OUTPUT_TAKEN) => {
                                tx.rollback().await.map_err(classify)?;
                                let rows = PgSignedOutputs::rows(&client, &columns.b_s).await?;
                                let taken = columns
                                    .b_s
                                    .iter()
                                    .zip(&rows)
                                    .find(|(_, r)| r.is_some());
                                return match taken {
                                    Some((b_, _)) => Err(PgStoreError::OutputAlreadySigned {
                                        b_hex: hex::encode(b_),
                                    }),
                                    None => Ok(None),
                                };
                            }
                            Err(e) => return Err(classify(e)),
                        }
                        tx.execute(
                            "UPDATE coinop_signed_outputs SET state = 2, delivered_at = now()
                             WHERE host_id = $1 AND operation_id = $2 AND state = 1",
                            &[host, &operation_id],
                        )
                        .await
                        .map_err(classify)?;
                    }
                    tx.execute(
                        "INSERT INTO coinop_nut30_issues (operation_id, quote_id, amount_sat, host_id)
                         VALUES ($1, $2, $3, $4)",
                        &[&operation_id, &quote_id, &amount, host],
                    )
                    .await
                    .map_err(classify)?;
                    tx.execute(
                        "UPDATE coinop_nut30_quotes
                         SET amount_issued_sat = amount_issued_sat + $2 WHERE quote_id = $1",
                        &[&quote_id, &amount],
                    )
                    .await
                    .map_err(classify)?;
                    tx.commit().await.map_err(classify)?;
                    Ok(Some(Nut30Issue::Issued))
                })
                .await;
            match outcome {
                Ok(Some(done)) => return Ok(done),
                Ok(None) => continue,
                // Two first issues of the same operation at once: the loser's insert of
                // the issue row cannot happen (its B_s are the winner's), but a mint of no
                // outputs meets the primary key instead; either way the winner's answer.
                Err(PgStoreError::Database(e))
                    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
                {
                    return Ok(Nut30Issue::Repeat)
                }
                Err(e) => return Err(e),
            }
        }
        Err(PgStoreError::Unavailable(format!(
            "a NUT-30 mint kept conflicting with reservations released at once, {ATTEMPTS} \
             times"
        )))
    }
}
