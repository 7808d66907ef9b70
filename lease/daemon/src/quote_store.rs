//! Where this host's quotes live: its own SQLite quote book (one host, the default), or the
//! fleet's PostgreSQL (`--store`, crate `payment-postgres`), so that hosts sharing an xpub
//! never hand one address to two live quotes and a quote made by one host can be paid and
//! used on another ([`Quotes`]).
//!
//! With a fleet store every quote is issued there (the local book is only read for the
//! index it reached before the host joined the fleet, which the fleet never hands out
//! again); reads, paid marks and the payments hosts saw in blocks are fleet-wide. A
//! payment named by quote id alone is found among the outputs this host saw itself and
//! those any other host recorded in the store (see [`Quotes::seen_for`]); either way the
//! paying block is checked against this host's own header chain by the caller.
//!
//! # Crash rule: every commit before a reply is recovered by the same request again
//! - A quote commits in PostgreSQL (one transaction: index and quote) before its address
//!   is answered. A reply lost after the commit leaves a quote nobody knows: asking again
//!   makes another; the orphan holds its index until it expires, then the index is reused,
//!   and meanwhile it counts against `--max-open-quotes` like any unpaid quote.
//! - Taking a payment on any host: read the quote (and the outputs seen paying it), check
//!   the payment against this host's chain, mark the quote paid (an idempotent update),
//!   then fence the outpoints, commit locally and settle, as every payment does
//!   ([`crate::fleet`]). A crash or outage at any step leaves at most the paid mark (which
//!   only keeps the address out of reuse, as it must once paid) and a fence that start-up
//!   reconciliation settles; the same request again re-reads the same quote and goes
//!   through the same steps.
//! - Scanning a block: the outputs found and the quotes' paid marks commit in one store
//!   transaction before the block is recorded as scanned locally; a crash in between has
//!   the block scanned again, and recording its outputs again changes nothing.
//!
//! Fail closed: while the store is unreachable, or before this host's start-up check
//! against it is done, every fleet call fails with [`FleetError::Unavailable`] (503
//! `store_unavailable`): no quote is made from local state alone.
//!
//! The methods are synchronous, like the SQLite book they stand in for, and are called on
//! the blocking pool (`spawn_blocking`, `block_in_place`); the fleet's calls wait for the
//! runtime there. Calling them on an async worker thread would panic.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bitcoin::ScriptBuf;
use payment::onchain::{PaymentWatch, Quote, QuoteBook, QuoteError, SeenOutput};
use payment::spent_set::{GroupCommitSpentSet, SpendKey, SpendState, SpentSet};
use payment_postgres::{
    PgNut30Quotes, PgQuoteBook, PgQuoteError, PgSpentSet, QuotePurpose, SeenPayment,
};
use thiserror::Error;

use crate::fleet::{Fleet, FleetError};
use crate::leases::LeaseError;

/// Why a quote could not be issued or read.
#[derive(Debug, Error)]
pub enum QuotesError {
    /// The quote book refused as on one host (no free index, storage, derivation).
    #[error(transparent)]
    Quote(#[from] QuoteError),
    /// The fleet store failed or cannot be reached.
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

impl From<PgQuoteError> for QuotesError {
    fn from(e: PgQuoteError) -> Self {
        match e {
            PgQuoteError::Quote(q) => QuotesError::Quote(q),
            PgQuoteError::Store(s) => QuotesError::Fleet(s.into()),
        }
    }
}

impl From<payment_postgres::PgStoreError> for QuotesError {
    fn from(e: payment_postgres::PgStoreError) -> Self {
        QuotesError::Fleet(e.into())
    }
}

impl From<QuotesError> for LeaseError {
    fn from(e: QuotesError) -> Self {
        match e {
            QuotesError::Quote(q) => LeaseError::Quote(q),
            QuotesError::Fleet(f) => LeaseError::Fleet(f),
        }
    }
}

impl QuotesError {
    /// The local book's storage refusal, for the disk reserve.
    pub fn storage_refused(&self) -> Option<&payment::storage_refusal::StorageRefused> {
        match self {
            QuotesError::Quote(q) => q.storage_refused(),
            QuotesError::Fleet(_) => None,
        }
    }
}

/// A quote [`Quotes::find`] found.
#[derive(Debug, Clone)]
pub struct FoundQuote {
    pub quote: Quote,
    /// A fleet NUT-30 quote: its payment is minted only with its key's signature.
    pub key_locked: bool,
}

/// The fleet's side of [`Quotes`].
struct FleetQuotes {
    book: PgQuoteBook,
    spent: PgSpentSet,
    nut30: PgNut30Quotes,
    fleet: Arc<Fleet>,
}

/// This host's quotes: the local book, and the fleet's when there is a fleet store.
pub struct Quotes {
    local: Arc<QuoteBook>,
    fleet: Option<FleetQuotes>,
}

impl std::fmt::Debug for Quotes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotes")
            .field("local", &self.local)
            .field("fleet", &self.fleet.as_ref().map(|q| &q.book))
            .finish()
    }
}

/// Runs a fleet call to its end from a blocking-pool thread.
fn wait<F: Future>(f: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(f)
}

fn to_seen_output(s: SeenPayment) -> SeenOutput {
    SeenOutput {
        quote_id: s.quote_id,
        outpoint: s.outpoint,
        amount_sat: s.amount_sat,
        block_hash: s.block_hash,
        height: s.height,
        block_time: s.block_time,
        coinbase: s.coinbase,
    }
}

fn to_seen_payment(s: &SeenOutput) -> SeenPayment {
    SeenPayment {
        quote_id: s.quote_id.clone(),
        outpoint: s.outpoint,
        amount_sat: s.amount_sat,
        block_hash: s.block_hash,
        height: s.height,
        block_time: s.block_time,
        coinbase: s.coinbase,
    }
}

impl Quotes {
    /// One host's quotes, in its SQLite book.
    pub fn local(book: Arc<QuoteBook>) -> Self {
        Quotes {
            local: book,
            fleet: None,
        }
    }

    /// A fleet host's quotes, in `book` (the fleet store's); `local` is the host's own
    /// book from before it joined.
    pub fn fleet(local: Arc<QuoteBook>, book: PgQuoteBook, fleet: Arc<Fleet>) -> Self {
        Quotes {
            local,
            fleet: Some(FleetQuotes {
                spent: PgSpentSet::new(fleet.store().clone()),
                nut30: PgNut30Quotes::new(fleet.store().clone()),
                book,
                fleet,
            }),
        }
    }

    /// The fleet side, once this host's start-up check against the store is done.
    fn fleet_ready(&self) -> Result<Option<&FleetQuotes>, QuotesError> {
        match &self.fleet {
            None => Ok(None),
            Some(f) if f.fleet.is_ready() => Ok(Some(f)),
            Some(_) => Err(FleetError::Unavailable(
                "this host has not finished its start-up check against the store".into(),
            )
            .into()),
        }
    }

    /// The fleet's NUT-30 quote balances (`None` on a single host), once this host's
    /// start-up check against the store is done.
    pub fn fleet_nut30(&self) -> Result<Option<PgNut30Quotes>, QuotesError> {
        Ok(self.fleet_ready()?.map(|f| f.nut30.clone()))
    }

    /// Issues a quote at the chain's tip (see `payment::onchain::quote_book` for reuse and
    /// the open-quote bound; with a fleet store both are counted across the fleet). With no
    /// tip (`None`: the host's may be stale) no index is reused, since its old quote would be
    /// retired at that height and a late payment mined above it go to the new quote.
    pub fn create_at_tip(
        &self,
        amount_msat: u64,
        now_us: u64,
        ttl_us: u64,
        tip_height: Option<u32>,
        purpose: QuotePurpose,
    ) -> Result<Quote, QuotesError> {
        match self.fleet_ready()? {
            None => Ok(self
                .local
                .create_at(amount_msat, now_us, ttl_us, tip_height)?),
            Some(f) => {
                let floor = self.local.next_index()?;
                Ok(wait(f.book.create_at(
                    amount_msat,
                    now_us,
                    ttl_us,
                    tip_height,
                    purpose,
                    floor,
                ))?)
            }
        }
    }

    /// The quote with this id (with a fleet store: issued by any host, or by this host
    /// before it joined the fleet, from its own book).
    pub fn get(&self, quote_id: &str) -> Result<Option<Quote>, QuotesError> {
        match self.fleet_ready()? {
            None => Ok(self.local.get(quote_id)?),
            Some(f) => match wait(f.book.get(quote_id))? {
                Some(q) => Ok(Some(q.quote)),
                None => Ok(self.local.get(quote_id)?),
            },
        }
    }

    /// The quote with this id as [`Quotes::get`] finds it, and whether it is a fleet NUT-30
    /// quote (locked to a key: never a lease's payment), from one read of the store: the
    /// lookup a payment naming any id makes before anything of it is checked. A host's
    /// NUT-30 quotes from before it joined the fleet are in its ledger only, which callers
    /// ask too.
    pub fn find(&self, quote_id: &str) -> Result<Option<FoundQuote>, QuotesError> {
        match self.fleet_ready()? {
            None => Ok(self.local.get(quote_id)?.map(|quote| FoundQuote {
                quote,
                key_locked: false,
            })),
            Some(f) => match wait(f.book.get(quote_id))? {
                Some(q) => Ok(Some(FoundQuote {
                    key_locked: q.purpose == QuotePurpose::Nut30,
                    quote: q.quote,
                })),
                None => Ok(self.local.get(quote_id)?.map(|quote| FoundQuote {
                    quote,
                    key_locked: false,
                })),
            },
        }
    }

    /// Records that a payment to the quote's address exists: its index is never reused
    /// (by any host of the fleet; a quote from this host's own book, made before it joined,
    /// is marked there).
    pub fn mark_paid(&self, quote_id: &str) -> Result<(), QuotesError> {
        match self.fleet_ready()? {
            None => Ok(self.local.mark_paid(quote_id)?),
            Some(f) => {
                wait(f.book.mark_paid(quote_id))?;
                Ok(self.local.mark_paid(quote_id)?)
            }
        }
    }

    /// Script → quote id of the quotes whose payments are looked for in new blocks: those
    /// expiring after `since_us` that still hold their address (the fleet's, with a store).
    pub fn watched_scripts(
        &self,
        since_us: u64,
    ) -> Result<HashMap<ScriptBuf, String>, QuotesError> {
        match self.fleet_ready()? {
            None => Ok(self.local.watched_scripts(since_us)?),
            Some(f) => Ok(wait(f.book.watched_scripts(since_us))?),
        }
    }

    /// Outputs this host found paying quotes in a block: the quotes are marked paid, and
    /// with a fleet store the outputs are kept there for the other hosts. Done before the
    /// block is recorded as scanned locally, so a failure here has the block scanned again.
    pub fn record_seen(&self, seen: &[SeenOutput]) -> Result<(), QuotesError> {
        match self.fleet_ready()? {
            None => {
                for s in seen {
                    self.local.mark_paid(&s.quote_id)?;
                }
                Ok(())
            }
            Some(f) => {
                let rows: Vec<SeenPayment> = seen.iter().map(to_seen_payment).collect();
                Ok(wait(f.book.record_seen(&rows))?)
            }
        }
    }

    /// The outputs seen paying `quote_id`: those in `watch` (this host's scans) and, with a
    /// fleet store, those any host recorded there; the caller keeps those on its best chain.
    pub fn seen_for(
        &self,
        quote_id: &str,
        watch: &PaymentWatch,
    ) -> Result<Vec<SeenOutput>, QuotesError> {
        let mut seen = watch
            .seen_for(quote_id)
            .map_err(|e| QuoteError::Storage(e.to_string()))?;
        if let Some(f) = self.fleet_ready()? {
            for s in wait(f.book.seen_for(quote_id))? {
                let known = seen
                    .iter()
                    .any(|o| o.outpoint == s.outpoint && o.block_hash == s.block_hash);
                if !known {
                    seen.push(to_seen_output(s));
                }
            }
        }
        Ok(seen)
    }

    /// Whether each key is claimed (pending or spent): in the fleet's spent set with a
    /// store, else in this host's.
    pub fn spent_states(
        &self,
        keys: &[SpendKey],
        local: &GroupCommitSpentSet,
    ) -> Result<Vec<Option<SpendState>>, QuotesError> {
        match self.fleet_ready()? {
            None => local
                .states(keys)
                .map_err(|e| QuoteError::Storage(e.to_string()).into()),
            Some(f) => Ok(wait(f.spent.states(keys))?),
        }
    }
}
