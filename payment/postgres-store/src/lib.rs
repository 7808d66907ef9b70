//! coinop's fleet-wide money state in PostgreSQL, for several coinopd hosts that act as one
//! payee and one mint. Today: the spent set ([`PgSpentSet`]): on-chain outpoints and credit
//! proof Ys, each spent at most once across the fleet; and the quotes with their address
//! index ([`PgQuoteBook`]): no address is handed to two live quotes anywhere in the fleet,
//! and a quote made by one host can be paid and used on another. Leases, metering and
//! guests stay in each host's local SQLite ledger.
//!
//! # Main types
//! - [`PgStore`]: the pool of connections (deadpool over tokio-postgres), per-connection
//!   `statement_timeout`, a bound on every call, schema migrations applied at
//!   [`PgStore::connect`], and round-trip/error counters ([`StoreMetrics`]).
//! - [`PgSpentSet`]: claims (all or none; `Pending` → `Spent` or released; receipts),
//!   states, and this host's pending claims for reconciliation.
//! - [`PgQuoteBook`]: fleet quotes (allocation under the xpub's row lock, reuse of expired
//!   unpaid indexes and the open-quote bound counted fleet-wide, paid marks, and the outputs
//!   hosts saw paying quotes); see the `quotes` module doc.
//! - [`PgStoreError`]: typed errors; [`PgStoreError::Unavailable`] (refused, lost, timed
//!   out, pool exhausted) is never confused with an answer such as "already claimed", so
//!   that callers fail closed.
//!
//! # Why async, beside the synchronous `SpentSet` trait
//! [`payment::spent_set::SpentSet`] is synchronous: its SQLite implementations do local
//! disk I/O and coinopd calls them where it holds its ledger. A PostgreSQL call is network
//! I/O that may wait up to the timeouts; made synchronously on coinopd's tokio worker
//! threads it would stall every other request on that thread. So this crate offers the
//! same operations as `async fn`s, with the same semantics and error cases, plus what a
//! fleet needs and one host does not (the claiming host and operation, reconciliation).
//! The trait is left as it is (other work changes it concurrently); coinopd chooses the
//! store once at start-up and calls whichever it has.
//!
//! # The two-phase claim, and reconciliation after a crash
//! A payment is spent in PostgreSQL and the thing it buys (a lease) is recorded in the
//! host's SQLite ledger: two databases, no shared transaction. The order makes a crash
//! between them recoverable:
//! 1. claim the payment's keys in PostgreSQL as `Pending`, naming this host and the
//!    operation (the lease id); from here no other host can spend them;
//! 2. commit the lease locally, with the lease id, in one SQLite transaction;
//! 3. mark the keys `Spent` ([`PgSpentSet::commit_pending`]); if step 2 failed,
//!    release them instead ([`PgSpentSet::release_pending`]).
//!
//! A crash after 1 and before 3 leaves the keys `Pending` under this host. At start-up,
//! before it takes requests, the host runs [`PgSpentSet::reconcile`]: for each of its
//! pending operations it looks in its ledger for the lease id; found → step 3 (the tenant
//! has the lease), not found → release (the payment is spendable again: the retried request
//! claims it afresh). The payment is thus either a lease or spendable, never lost and never
//! doubled. Only the host that made a pending claim settles it (its id is in every row and
//! in every settle), since only it knows its ledger; a host that never comes back leaves
//! its pending claims for an operator. Repeating a `Pending` claim with the same host and
//! operation succeeds, so a call whose outcome is unknown (the store went away after the
//! statement was sent) can be retried with the same lease id.
//!
//! Credit swaps use the same shape with the swap's request as the operation: claim the
//! input Ys `Pending`, sign, commit (or release on failure); a receipt claim
//! ([`PgSpentSet::claim_with_receipt`]) marks keys `Spent` in one step.
//!
//! # Schema
//! Versioned SQL files under `migrations/`, applied in one transaction under an advisory
//! lock ([`migrations`]); a database at a newer version than this build is refused
//! ([`PgStoreError::SchemaTooNew`]). A claim is one statement (the `coinop_claim` function),
//! so one round trip; concurrent claimers of a key serialise on its primary key.
//!
//! # Quotes across hosts
//! A quote is committed in PostgreSQL before its address is answered; paying it needs no
//! further write to the quote but the paid mark (idempotent), and the payment's outpoints
//! are then fenced by the spent set like any other: so a quote from host 1 paid and used on
//! host 2 follows the two-phase claim above, and a request repeated after a crash finds the
//! same quote and the same (idempotent) marks. Payments named by quote id only are found in
//! `coinop_quote_outputs`, written by whichever host fetched the paying block (each host
//! with Bitcoin peers scans blocks for every fleet quote's script); the host honouring the
//! payment still checks that block against its own header chain.
//!
//! # What is not here yet
//! The mint keysets and the signed blinded messages are still per host. NUT-30 mint quotes
//! take their address from the fleet index, but their state (key lock, amounts paid and
//! issued) stays in the issuing host's ledger: they are answered by that host only.

mod error;
pub mod migrations;
mod quotes;
mod spent_set;
mod store;
#[cfg(feature = "test-cluster")]
pub mod test_cluster;

pub use error::PgStoreError;
pub use quotes::{
    FleetIndexPolicy, FleetQuote, PgQuoteBook, PgQuoteError, QuotePurpose, SeenPayment,
};
pub use spent_set::{PendingOperation, PgSpentSet, Reconciled};
pub use store::{PgStore, PgStoreOptions, StoreMetrics};
