//! coinop's fleet-wide money state in PostgreSQL, for several coinopd hosts that act as one
//! payee and one mint. Today: the spent set ([`PgSpentSet`]): on-chain outpoints and credit
//! proof Ys, each spent at most once across the fleet. Leases, metering and guests stay in
//! each host's local SQLite ledger.
//!
//! # Main types
//! - [`PgStore`]: the pool of connections (deadpool over tokio-postgres), per-connection
//!   `statement_timeout`, a bound on every call, schema migrations applied at
//!   [`PgStore::connect`], and round-trip/error counters ([`StoreMetrics`]).
//! - [`PgSpentSet`]: claims (all or none; `Pending` → `Spent` or released; receipts),
//!   states, and this host's pending claims for reconciliation.
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
//! # What is not here yet
//! The mint keysets, the signed blinded messages, the quote address index and the quotes
//! are still per host; they are the next tables in this store.

mod error;
mod keysets;
pub mod migrations;
mod signed_outputs;
mod spent_set;
mod store;
#[cfg(feature = "test-cluster")]
pub mod test_cluster;

pub use error::PgStoreError;
pub use keysets::{check_seed, FleetKeyset, NewKeyset, PgKeysets};
pub use signed_outputs::{OutputState, PendingOutputs, PgSignedOutputs, StoredOutput};
pub use spent_set::{PendingOperation, PgSpentSet, Reconciled};
pub use store::{PgStore, PgStoreOptions, StoreMetrics};
