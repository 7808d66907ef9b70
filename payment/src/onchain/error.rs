//! Typed errors of the on-chain module. Each names the field or value that failed; the
//! payment errors carry a snake_case `code()` and an HTTP status for the daemon.

use bitcoin::{BlockHash, OutPoint, Txid};
use thiserror::Error;

use crate::spent_set::SpentSetError;
use crate::storage_refusal::StorageRefused;

/// Why one header was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HeaderError {
    #[error("previous block {prev} is not known to this chain")]
    UnknownParent { prev: BlockHash },
    #[error("bits {bits:#010x} do not encode a valid target")]
    InvalidBits { bits: u32 },
    #[error("bits {bits:#010x} ask for less work than the network's limit")]
    TargetAboveLimit { bits: u32 },
    #[error("block hash {hash} does not meet the header's own target")]
    BadProofOfWork { hash: BlockHash },
    #[error("bits {got:#010x} at height {height}, the retarget rule requires {expected:#010x}")]
    WrongBits {
        height: u32,
        got: u32,
        expected: u32,
    },
    #[error(
        "bits {got:#010x} at height {height} change the target by more than the retarget's \
         factor of 4: allowed {hardest:#010x} (hardest) to {easiest:#010x} (easiest)"
    )]
    RetargetBeyondClamp {
        height: u32,
        got: u32,
        hardest: u32,
        easiest: u32,
    },
    #[error("time {time} is not after the median time past {median}")]
    TimeNotAfterMedian { time: u32, median: u32 },
    #[error("time {time} is more than two hours ahead of the host clock (latest {latest})")]
    TimeTooFarAhead { time: u32, latest: u64 },
    #[error("time {time} at a period start is before {min_time} (BIP94 time-warp rule)")]
    TimeWarp { time: u32, min_time: u32 },
    #[error("version {version} at height {height}: BIP34/66/65 require at least {min} there")]
    VersionTooLow { height: u32, version: i32, min: i32 },
    #[error("chainwork exceeds 2^128")]
    WorkOverflow,
    #[error("height exceeds 2^32")]
    HeightOverflow,
    #[error("checkpoint header hashes to {got}, not to the checkpoint {expected}")]
    CheckpointHash { expected: BlockHash, got: BlockHash },
    #[error("header hex: {0}")]
    Malformed(String),
}

/// Why the chain refused a batch or could not be opened.
#[derive(Debug, Error)]
pub enum ChainError {
    #[error("header {index} ({hash}) rejected: {reason}")]
    Rejected {
        index: usize,
        hash: BlockHash,
        reason: HeaderError,
    },
    #[error(
        "side branch ending at {hash} has chainwork {work:#x}, below the {floor:#x} a peer's \
         branch needs (best chain's work minus a margin)"
    )]
    LowWorkBranch {
        hash: BlockHash,
        work: u128,
        floor: u128,
    },
    #[error("signet headers are accepted only from the operator's own feed")]
    SignetNeedsOperatorFeed,
    #[error("{got} headers in one append, at most {max}")]
    TooManyInOneAppend { got: usize, max: usize },
    #[error("the chain holds 2^32 headers")]
    TooManyHeaders,
    #[error("chain file {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("chain file {path} {what}")]
    StoreCorrupt { path: String, what: String },
}

impl ChainError {
    /// Whether the headers themselves were at fault (invalid, or a branch too weak to
    /// store), as opposed to the host's own storage: a peer that sent them misbehaved. A
    /// header refused only for being too far ahead of the host's clock is not (see
    /// [`ChainError::is_premature`]).
    pub fn is_peer_fault(&self) -> bool {
        match self {
            ChainError::Rejected { .. } => !self.is_premature(),
            ChainError::LowWorkBranch { .. } | ChainError::TooManyInOneAppend { .. } => true,
            _ => false,
        }
    }

    /// A header refused only because its time is more than two hours ahead of the host's
    /// clock: it may be valid later, and an honest peer sends one whenever its clock (or the
    /// miner's) runs ahead of a host whose clock lags. Like Bitcoin Core, the header is
    /// dropped without punishing the peer; it is asked for again when a block built on it is
    /// announced.
    pub fn is_premature(&self) -> bool {
        matches!(
            self,
            ChainError::Rejected {
                reason: HeaderError::TimeTooFarAhead { .. },
                ..
            }
        )
    }

    /// A headers message whose first header builds on nothing known: a peer announcing a
    /// block while the host is behind, answered with `getheaders` rather than a ban.
    pub fn is_unconnected_start(&self) -> bool {
        matches!(
            self,
            ChainError::Rejected {
                index: 0,
                reason: HeaderError::UnknownParent { .. },
                ..
            }
        )
    }

    /// snake_case code for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            ChainError::Rejected { reason, .. } => match reason {
                HeaderError::UnknownParent { .. } => "header_not_linking",
                HeaderError::BadProofOfWork { .. }
                | HeaderError::InvalidBits { .. }
                | HeaderError::TargetAboveLimit { .. } => "bad_pow",
                HeaderError::WrongBits { .. } | HeaderError::RetargetBeyondClamp { .. } => {
                    "wrong_retarget"
                }
                HeaderError::TimeNotAfterMedian { .. }
                | HeaderError::TimeTooFarAhead { .. }
                | HeaderError::TimeWarp { .. } => "bad_header_time",
                HeaderError::VersionTooLow { .. } => "obsolete_version",
                _ => "invalid_header",
            },
            ChainError::LowWorkBranch { .. } => "low_work_branch",
            ChainError::SignetNeedsOperatorFeed => "signet_needs_operator_feed",
            ChainError::TooManyInOneAppend { .. } => "too_many_headers",
            ChainError::TooManyHeaders
            | ChainError::Store { .. }
            | ChainError::StoreCorrupt { .. } => "chain_storage",
        }
    }
}

/// Why a payment was not accepted.
#[derive(Debug, Error)]
pub enum PaymentError {
    #[error("{field} is {len} hex characters, at most {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} is not hex: {reason}")]
    NotHex { field: &'static str, reason: String },
    #[error("tx_hex is not a transaction: {0}")]
    MalformedTx(String),
    #[error("proof_hex is not a serialized merkle block: {0}")]
    MalformedProof(String),
    #[error("transaction {txid} is 64 bytes without witness, which could pose as a merkle node")]
    SixtyFourByteTx { txid: Txid },
    #[error("proof header {hash}: {reason}")]
    BadProofOfWork {
        hash: BlockHash,
        reason: HeaderError,
    },
    #[error("proof's partial merkle tree is invalid: {0}")]
    BadMerkleProof(String),
    #[error("proof matches {matched:?}, not transaction {txid}")]
    ProofForOtherTx { txid: Txid, matched: Vec<Txid> },
    #[error("block {hash} is not in the host's header chain")]
    BlockNotInChain { hash: BlockHash },
    #[error("block {hash} is on a side branch, not the best chain")]
    NotOnBestChain { hash: BlockHash },
    #[error("block {hash} has {have} confirmations, {need} required")]
    NotEnoughConfirmations {
        hash: BlockHash,
        have: u32,
        need: u32,
    },
    #[error("transaction {txid} is a coinbase with {have} confirmations; it pays only once mature ({need})")]
    CoinbaseImmature { txid: Txid, have: u32, need: u32 },
    #[error("the payment's block {height} is not above {above}: it paid the quote that held this address before")]
    PaysEarlierQuote { height: u32, above: u32 },
    #[error("the payment's block {height} is above {retired_at}, when this expired quote's address passed to a newer quote")]
    QuoteRetired { height: u32, retired_at: u32 },
    #[error("transaction {txid} has no output to the quote's address {address}")]
    WrongAddress { txid: Txid, address: String },
    #[error(
        "transaction pays {paid_msat} msat to the quote's address, {required_msat} msat quoted"
    )]
    Insufficient { paid_msat: u64, required_msat: u64 },
    #[error("outpoint {outpoint} has already paid for something")]
    AlreadySpent { outpoint: OutPoint },
    #[error("no confirmed payment to quote {quote_id} seen yet")]
    NotSeen { quote_id: String },
    #[error("payment by quote id alone is not accepted here: send tx_hex and proof_hex")]
    ProofRequired,
    #[error("seen payments: {0}")]
    SeenStorage(String),
    #[error("spent set: {0}")]
    SpentSet(SpentSetError),
}

impl PaymentError {
    /// snake_case code for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            PaymentError::TooLong { .. } => "payment_too_large",
            PaymentError::NotHex { .. } => "malformed_hex",
            PaymentError::MalformedTx(_) => "malformed_tx",
            PaymentError::MalformedProof(_) => "malformed_proof",
            PaymentError::SixtyFourByteTx { .. } => "tx_64_bytes",
            PaymentError::BadProofOfWork { .. } => "bad_pow",
            PaymentError::BadMerkleProof(_) => "bad_proof",
            PaymentError::ProofForOtherTx { .. } => "proof_for_other_tx",
            PaymentError::BlockNotInChain { .. } => "block_not_in_chain",
            PaymentError::NotOnBestChain { .. } | PaymentError::NotEnoughConfirmations { .. } => {
                "not_confirmed"
            }
            PaymentError::CoinbaseImmature { .. } => "coinbase_immature",
            PaymentError::PaysEarlierQuote { .. } => "paid_earlier_quote",
            PaymentError::QuoteRetired { .. } => "quote_retired",
            PaymentError::WrongAddress { .. } => "wrong_address",
            PaymentError::Insufficient { .. } => "insufficient_payment",
            PaymentError::AlreadySpent { .. } => "already_spent",
            PaymentError::NotSeen { .. } => "payment_not_seen",
            PaymentError::ProofRequired => "proof_required",
            PaymentError::SeenStorage(_) => "payment_watch_storage",
            PaymentError::SpentSet(SpentSetError::StorageRefused(r)) => r.code(),
            PaymentError::SpentSet(_) => "spent_set_storage",
        }
    }

    /// The storage refusal this is, if it is one.
    pub fn storage_refused(&self) -> Option<&StorageRefused> {
        match self {
            PaymentError::SpentSet(SpentSetError::StorageRefused(r)) => Some(r),
            _ => None,
        }
    }
}

/// Why a price could not be computed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PriceError {
    #[error("{field} must be at least 1")]
    Zero { field: &'static str },
    #[error("price of {vcpus} vCPUs, {mem_mib} MiB for {seconds} s overflows 64-bit msat")]
    Overflow {
        vcpus: u32,
        mem_mib: u64,
        seconds: u64,
    },
}

/// Why a quote could not be made or found.
#[derive(Debug, Error)]
pub enum QuoteError {
    #[error(transparent)]
    Price(#[from] PriceError),
    #[error("xpub: {0}")]
    BadXpub(String),
    #[error("xpub is for {xpub}, the host runs {host}")]
    XpubNetwork { xpub: String, host: String },
    #[error("xpub: {prefix}… derives {implied} addresses, --address-type asks for {asked}")]
    XpubKind {
        prefix: String,
        implied: &'static str,
        asked: &'static str,
    },
    #[error("{open} unpaid quotes hold an address already (the most at once); one frees in {retry_after_s} s")]
    NoFreeIndex { open: u64, retry_after_s: u64 },
    #[error("derivation index {index} is past the last non-hardened index")]
    IndexExhausted { index: u64 },
    #[error("deriving index {index}: {reason}")]
    Derive { index: u32, reason: String },
    #[error("quote book storage: {0}")]
    Storage(String),
    /// The quote book's disk or lock refused; no quote was made, the same request may be
    /// retried later.
    #[error("quote book: {0}")]
    StorageRefused(StorageRefused),
}

impl QuoteError {
    pub fn code(&self) -> &'static str {
        match self {
            QuoteError::Price(PriceError::Zero { .. }) => "invalid_spec",
            QuoteError::Price(PriceError::Overflow { .. }) => "price_overflow",
            QuoteError::BadXpub(_)
            | QuoteError::XpubNetwork { .. }
            | QuoteError::XpubKind { .. } => "bad_xpub",
            QuoteError::NoFreeIndex { .. } => "no_free_quote_address",
            QuoteError::IndexExhausted { .. } | QuoteError::Derive { .. } => "derivation",
            QuoteError::Storage(_) => "quote_storage",
            QuoteError::StorageRefused(r) => r.code(),
        }
    }

    /// The storage refusal this is, if it is one.
    pub fn storage_refused(&self) -> Option<&StorageRefused> {
        match self {
            QuoteError::StorageRefused(r) => Some(r),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;

    fn rejected(reason: HeaderError) -> ChainError {
        ChainError::Rejected {
            index: 3,
            hash: BlockHash::all_zeros(),
            reason,
        }
    }

    #[test]
    fn a_header_too_far_ahead_is_premature_not_the_peers_fault() {
        let ahead = rejected(HeaderError::TimeTooFarAhead {
            time: 1_700_007_201,
            latest: 1_700_007_200,
        });
        assert!(ahead.is_premature());
        assert!(!ahead.is_peer_fault());
        // Every other reason a header is refused stays the peer's fault.
        let median = rejected(HeaderError::TimeNotAfterMedian { time: 5, median: 5 });
        assert!(median.is_peer_fault());
        assert!(!median.is_premature());
        let pow = rejected(HeaderError::BadProofOfWork {
            hash: BlockHash::all_zeros(),
        });
        assert!(pow.is_peer_fault());
    }
}
