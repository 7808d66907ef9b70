//! The spent set: the single record of what has been spent, so that an outpoint or a credit
//! secret pays for at most one thing, ever, also under concurrency and after a crash.
//!
//! Keys are claimed all-or-none. A claim may first be `Pending` (the operation it guards has
//! not delivered yet, e.g. a swap whose signatures are not returned) and is then either
//! committed to `Spent` or released; a crash in between leaves it `Pending`, never lost and
//! never spendable twice. A `Spent` claim may carry a receipt (what the keys were spent on),
//! written in the same transaction, by which a retry of the very same request is known.
//!
//! The same transaction also records every blind signature the claim paid for
//! ([`SignedOutput`]): a blinded message is signed at most once (a second request for it is
//! refused, NUT-00 code 11003), and a wallet restoring from its seed can have the
//! signatures of its outputs again (NUT-09).
//!
//! [`SpentSet`] is the synchronous trait of the SQLite sets ([`SqliteSpentSet`], and
//! [`GroupCommitSpentSet`] which batches claims into one fsync). [`SpentKeyStore`] is the
//! async trait of the operations every spent set shares, the SQLite ones (through an `Arc`,
//! on tokio's blocking pool) and the fleet's PostgreSQL one (crate `payment-postgres`)
//! alike; the `conformance` module (feature `conformance`) is its one test suite.

use thiserror::Error;

use crate::storage_refusal::StorageRefused;

/// What a spent-set key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// An on-chain outpoint: 32-byte txid (internal byte order) followed by the 4-byte
    /// little-endian output index.
    Outpoint,
    /// A credit proof's `Y = hash_to_curve(secret)`, as its 33-byte compressed encoding.
    CreditY,
}

/// One key in the spent set.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpendKey {
    pub kind: KeyKind,
    pub bytes: Vec<u8>,
}

/// The state of a claimed key. Unclaimed keys have no state. Ordered by how far the claim
/// went (pending, then spent; as an `Option`, unclaimed first): of two readings of a key,
/// the greater says more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SpendState {
    Pending,
    Spent,
}

#[derive(Debug, Error)]
pub enum SpentSetError {
    /// Nothing was claimed because this key was already taken.
    #[error("{kind:?} {key_hex} is already {state:?}")]
    AlreadyClaimed {
        kind: KeyKind,
        key_hex: String,
        state: SpendState,
    },
    /// The same key appears twice in one request.
    #[error("{kind:?} {key_hex} appears more than once in one claim")]
    DuplicateKey { kind: KeyKind, key_hex: String },
    /// `commit_pending`/`release_pending` named a key that is not pending.
    #[error("{kind:?} {key_hex} is not pending")]
    NotPending { kind: KeyKind, key_hex: String },
    /// Nothing was claimed because this blinded message (`B_`) was signed before.
    #[error("output {b_hex} was already signed")]
    OutputAlreadySigned { b_hex: String },
    #[error("spent set storage: {0}")]
    Storage(String),
    /// The disk or a lock refused the operation; nothing changed, the same call may succeed
    /// later.
    #[error("spent set: {0}")]
    StorageRefused(StorageRefused),
}

/// One blind signature the mint handed out, as kept with the claim that paid for it: the
/// blinded message `B_` (33-byte compressed point) it signed, and the NUT-00
/// `BlindSignature` fields. The spent set stores these opaquely; the credit module makes
/// and reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedOutput {
    pub b_: Vec<u8>,
    pub keyset_id: String,
    pub amount: u64,
    /// `C_`, 33-byte compressed point.
    pub c_: Vec<u8>,
    /// NUT-12 DLEQ proof `(e, s)`, 32 bytes each, when one was handed out.
    pub dleq: Option<([u8; 32], [u8; 32])>,
}

/// "Claim these keys atomically or fail if any is taken." Implementations must make a
/// successful `claim` durable before returning.
pub trait SpentSet: Send + Sync {
    /// Claims every key with `state`, all or none. `note` is kept for operators (e.g. the
    /// lease or quote the keys paid for).
    fn claim(&self, keys: &[SpendKey], state: SpendState, note: &str) -> Result<(), SpentSetError>;
    /// Claims every key as `Spent`, all or none, keeping `receipt` with each: a digest of
    /// what they were spent on ([`crate::credit::receipt`]), so that the same request
    /// retried after a lost reply can be recognised ([`SpentSet::spent_with`]). Records
    /// `signed` in the same step; if any of its `B_` was signed before, nothing is claimed
    /// or recorded ([`SpentSetError::OutputAlreadySigned`]).
    fn claim_with_receipt(
        &self,
        keys: &[SpendKey],
        note: &str,
        receipt: &[u8; 32],
        signed: &[SignedOutput],
    ) -> Result<(), SpentSetError>;
    /// The recorded signature of each blinded message `B_` (33 bytes), in order; `None`
    /// for one never signed.
    fn signed_outputs(&self, b_s: &[Vec<u8>]) -> Result<Vec<Option<SignedOutput>>, SpentSetError>;
    /// Whether every key (at least one) is spent with exactly `receipt`: the request asking
    /// is the one that spent them, and may be answered again.
    fn spent_with(&self, keys: &[SpendKey], receipt: &[u8; 32]) -> Result<bool, SpentSetError>;
    /// Moves pending keys to `Spent`: the operation they guarded has delivered.
    fn commit_pending(&self, keys: &[SpendKey]) -> Result<(), SpentSetError>;
    /// Forgets pending keys: the operation they guarded failed before delivering anything.
    fn release_pending(&self, keys: &[SpendKey]) -> Result<(), SpentSetError>;
    /// The state of each key, in order; `None` for a key never claimed.
    fn states(&self, keys: &[SpendKey]) -> Result<Vec<Option<SpendState>>, SpentSetError>;
}

#[cfg(feature = "sqlite")]
mod blocking_store;
#[cfg(feature = "conformance")]
pub mod conformance;
mod key_store;
pub use key_store::{SpentKeyStore, SpentKeyStoreError};

#[cfg(feature = "sqlite")]
mod group_commit;
#[cfg(feature = "sqlite")]
mod signed_outputs;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
pub use group_commit::GroupCommitSpentSet;
#[cfg(feature = "sqlite")]
pub use sqlite::{open_durable, SqliteSpentSet};

impl SpendKey {
    /// An outpoint key: txid in internal byte order, then the little-endian output index.
    pub fn outpoint(txid: [u8; 32], vout: u32) -> Self {
        let mut bytes = Vec::with_capacity(36);
        bytes.extend_from_slice(&txid);
        bytes.extend_from_slice(&vout.to_le_bytes());
        SpendKey {
            kind: KeyKind::Outpoint,
            bytes,
        }
    }

    #[cfg(feature = "sqlite")]
    pub(crate) fn key_hex(&self) -> String {
        hex::encode(&self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::SpendState;

    /// The fleet's NUT-07 answer takes the greater of two readings: that must be the one
    /// that says more.
    #[test]
    fn a_reading_that_says_more_is_greater() {
        assert!(Some(SpendState::Spent) > Some(SpendState::Pending));
        assert!(Some(SpendState::Pending) > None);
        assert_eq!(None.max(Some(SpendState::Spent)), Some(SpendState::Spent));
    }
}
