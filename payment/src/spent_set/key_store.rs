//! [`SpentKeyStore`]: the spent set's common operations as one async trait, implemented by
//! the host's SQLite set and by the fleet's PostgreSQL set, with one error type
//! ([`SpentKeyStoreError`]) that keeps a conflict, an outage and a refusal of the disk
//! apart.
//!
//! # Implementations
//! - `Arc<S>` for every synchronous [`SpentSet`](super::SpentSet) (feature `sqlite`):
//!   [`SqliteSpentSet`](super::SqliteSpentSet) and
//!   [`GroupCommitSpentSet`](super::GroupCommitSpentSet), each call run on tokio's blocking
//!   pool (see the `blocking_store` module for why).
//! - `payment_postgres::PgSpentSet` (crate `payment-postgres`): the fleet's set, shared by
//!   several coinopd hosts; its claims name this host, and `operation` is the operation id.
//!
//! Both pass the same conformance suite (`spent_set::conformance`, feature `conformance`):
//! all-or-none claims, refusals naming the key's state, pending → spent or released,
//! receipts, and exactly one winner among concurrent claimers of a key.
//!
//! # Why async
//! A PostgreSQL call is network I/O that may wait up to the store's timeouts; the SQLite
//! sets wait for an fsync (and the group commit for its batch). Either would stall a tokio
//! worker thread, and every request on it, if called synchronously; behind an async trait
//! the SQLite calls move to the blocking pool and the PostgreSQL ones simply await. The
//! returned futures are `Send` so that they can be awaited inside spawned tasks and axum
//! handlers.
//!
//! # Alternatives on one host, layers on a fleet
//! On one host the SQLite set is the whole spent set. On a fleet coinopd does not swap it
//! for PostgreSQL but puts PostgreSQL in front of it (lease/daemon's `fleet` module): a
//! payment's keys are first fenced in PostgreSQL (`Pending`, this host, the operation),
//! then claimed in SQLite in the same local transaction as what they bought (the lease, the
//! swap's signatures), then the fence is settled. The local claim is what start-up
//! reconciliation reads to settle fences a crash left pending, so the local set stays
//! authoritative for "this host delivered"; PostgreSQL makes "spent at most once" hold
//! across hosts. Code that only needs the common operations (claim, settle, look up) can
//! be written once over this trait for either layer; what is particular to one stays on
//! the type: SQLite claims inside a caller's ledger transaction (`SqliteSpentSet::claim_in`)
//! and signed outputs, PostgreSQL's host id, reconciliation and idempotent repetition of a
//! `Pending` claim by the same host and operation (a call whose outcome is unknown after an
//! outage can be repeated; a local SQLite call always knows its outcome, and refuses the
//! repetition as `AlreadyClaimed`).

use std::future::Future;

use thiserror::Error;

use super::{KeyKind, SpendKey, SpendState, SpentSetError};
use crate::storage_refusal::StorageRefused;

/// A spent set's errors at the [`SpentKeyStore`] boundary, one variant per cause. The three
/// a caller must never confuse: [`Self::AlreadyClaimed`] (an answer about the data: the
/// payment is spent or in use), [`Self::Unavailable`] (an outage: the outcome of a write is
/// unknown, repeat the request later) and [`Self::StorageRefused`] (the disk or a lock
/// refused: nothing changed, repeat later).
#[derive(Debug, Error)]
pub enum SpentKeyStoreError {
    /// Nothing was claimed because this key was already taken.
    #[error("{kind:?} {key_hex} is already {state:?}")]
    AlreadyClaimed {
        kind: KeyKind,
        key_hex: String,
        state: SpendState,
    },
    /// The same key appears twice in one request.
    #[error("{kind:?} {key_hex} appears more than once in one request")]
    DuplicateKey { kind: KeyKind, key_hex: String },
    /// `commit_pending`/`release_pending` named a key that is not pending (under this host,
    /// for the fleet's set); nothing was settled.
    #[error("{kind:?} {key_hex} is not pending")]
    NotPending { kind: KeyKind, key_hex: String },
    /// A claim or settle of no keys at all: a caller bug, refused rather than a no-op.
    #[error("a spent-set request must name at least one key")]
    NoKeys,
    /// The store cannot be reached or did not answer in time; whether a write took effect
    /// is unknown.
    #[error("spent set store unavailable: {0}")]
    Unavailable(String),
    /// The disk or a lock refused the operation; nothing changed, the same call may succeed
    /// later.
    #[error("spent set: {0}")]
    StorageRefused(StorageRefused),
    /// The store failed otherwise (a statement refused, a row it cannot read).
    #[error("spent set storage: {0}")]
    Storage(String),
}

impl From<SpentSetError> for SpentKeyStoreError {
    fn from(e: SpentSetError) -> Self {
        match e {
            SpentSetError::AlreadyClaimed {
                kind,
                key_hex,
                state,
            } => SpentKeyStoreError::AlreadyClaimed {
                kind,
                key_hex,
                state,
            },
            SpentSetError::DuplicateKey { kind, key_hex } => {
                SpentKeyStoreError::DuplicateKey { kind, key_hex }
            }
            SpentSetError::NotPending { kind, key_hex } => {
                SpentKeyStoreError::NotPending { kind, key_hex }
            }
            SpentSetError::StorageRefused(refused) => SpentKeyStoreError::StorageRefused(refused),
            SpentSetError::Storage(message) => SpentKeyStoreError::Storage(message),
            // No blind signature passes through this trait (its receipt claim records none),
            // so a synchronous set cannot answer this to it; kept as what it says.
            e @ SpentSetError::OutputAlreadySigned { .. } => {
                SpentKeyStoreError::Storage(e.to_string())
            }
        }
    }
}

/// "Claim these keys atomically or fail if any is taken", async. Every write is durable
/// when its future yields `Ok`. Claims and settles of no keys are refused
/// ([`SpentKeyStoreError::NoKeys`]); lookups of no keys answer "none" (`false`, empty).
///
/// Implemented by `Arc<S>` for every synchronous [`SpentSet`](super::SpentSet) (the host's
/// SQLite sets, on tokio's blocking pool) and by `payment_postgres::PgSpentSet` (the
/// fleet's). They are alternatives on one host only: on a fleet coinopd puts PostgreSQL in
/// front of the local SQLite set, which still claims the keys in the same transaction as
/// what they bought and so tells start-up reconciliation what was delivered (see the
/// module doc).
pub trait SpentKeyStore: Send + Sync {
    /// Claims every key with `state`, all or none, for `operation` (the lease id or the
    /// request the keys pay for: kept with each key, for operators and reconciliation).
    /// A taken key refuses the whole claim with [`SpentKeyStoreError::AlreadyClaimed`]
    /// naming it and its state.
    fn claim(
        &self,
        keys: &[SpendKey],
        state: SpendState,
        operation: &str,
    ) -> impl Future<Output = Result<(), SpentKeyStoreError>> + Send;

    /// Claims every key as `Spent`, all or none, keeping `receipt` (a digest of what they
    /// were spent on) with each, so that the same request retried after a lost reply is
    /// recognised by [`SpentKeyStore::spent_with`].
    fn claim_with_receipt(
        &self,
        keys: &[SpendKey],
        operation: &str,
        receipt: &[u8; 32],
    ) -> impl Future<Output = Result<(), SpentKeyStoreError>> + Send;

    /// Whether every key (at least one) is spent with exactly `receipt`.
    fn spent_with(
        &self,
        keys: &[SpendKey],
        receipt: &[u8; 32],
    ) -> impl Future<Output = Result<bool, SpentKeyStoreError>> + Send;

    /// Moves pending keys to `Spent`, all or none: the operation they guarded delivered.
    fn commit_pending(
        &self,
        keys: &[SpendKey],
    ) -> impl Future<Output = Result<(), SpentKeyStoreError>> + Send;

    /// Forgets pending keys, all or none: the operation they guarded failed before
    /// delivering anything, and the keys may be claimed again.
    fn release_pending(
        &self,
        keys: &[SpendKey],
    ) -> impl Future<Output = Result<(), SpentKeyStoreError>> + Send;

    /// The state of each key, in order; `None` for a key never claimed (or released).
    fn states(
        &self,
        keys: &[SpendKey],
    ) -> impl Future<Output = Result<Vec<Option<SpendState>>, SpentKeyStoreError>> + Send;
}
