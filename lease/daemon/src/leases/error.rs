//! Why a lease flow refused a request: one variant per cause. The HTTP status each gets is
//! chosen in `crate::http::error`, nowhere else.

use coinop_proto::recovery_key::RecoveryKeyError;
use payment::credit::CreditError;
use payment::onchain::{PaymentError, QuoteError};
use thiserror::Error;

use crate::ledger::LedgerError;

#[derive(Debug, Error)]
pub enum LeaseError {
    /// A well-formed spec this host cannot sell (vCPUs, memory, seconds, command line, key).
    #[error("{0}")]
    InvalidSpec(String),
    /// The image is not in this host's catalogue.
    #[error("{0}")]
    UnknownImage(String),
    #[error(transparent)]
    BadRecoveryKey(#[from] RecoveryKeyError),
    /// No room for the lease now.
    #[error("host full: {vcpus_free} vCPUs and {mib_free} MiB free")]
    HostFull { vcpus_free: u32, mib_free: u64 },
    /// The state directory's disk is too full to take a new lease (coinopd is degraded).
    #[error(transparent)]
    DiskFull(#[from] crate::disk_reserve::Degraded),
    /// `payment.credit.proofs` is empty.
    #[error("payment.credit.proofs is empty")]
    NoProofs,
    /// The Cashu proofs or outputs were refused by the mint.
    #[error(transparent)]
    Credit(#[from] CreditError),
    /// The on-chain payment was refused.
    #[error(transparent)]
    Payment(#[from] PaymentError),
    /// The quote an on-chain payment names does not exist.
    #[error("no quote {0:?}")]
    UnknownQuote(String),
    /// The quote is a NUT-30 mint quote, locked to its wallet's key: its payment becomes
    /// credit only through a mint signed by that key, never a lease paid by its id (which
    /// anyone who learnt the id could otherwise take).
    #[error(
        "quote {0:?} is a NUT-30 mint quote locked to its wallet's key: mint its payment \
         (POST /v1/mint/onchain, signed) and pay the lease with the credit"
    )]
    QuoteKeyLocked(String),
    #[error(transparent)]
    Quote(#[from] QuoteError),
    /// The payment's outpoints or proofs were spent before.
    #[error("{0}")]
    AlreadySpent(String),
    /// A top-up by quote id of a lease that already holds the quote's payment, and no
    /// output to the quote is left unclaimed and deep enough: nothing new to credit. The
    /// top-up answers a retry of an earlier top-up from this quote as a repeat; anything
    /// else gets this, a 409 `already_spent` like any reuse of a spent payment.
    /// `shallow`: an output nobody claimed is there but not deep enough yet (the error
    /// that says so), answered once no earlier top-up from the quote is to be repeated.
    #[error("every output paying quote {quote_id} deep enough now was counted for lease {lease_id} already")]
    QuoteCounted {
        quote_id: String,
        lease_id: String,
        shallow: Option<Box<payment::onchain::PaymentError>>,
    },
    /// A stop of a lease whose balance was already handed back.
    #[error("lease {0} was already stopped and refunded")]
    AlreadyRefunded(String),
    /// A top-up of a refunded lease.
    #[error("lease {0} was refunded; it takes no more payments")]
    RefundedTakesNoPayment(String),
    /// The ledger refused a state change the lease's state does not allow.
    #[error("{0}")]
    StateConflict(String),
    /// The lease is gone from the ledger (answered as a wrong token: ids are not revealed).
    #[error("no such lease")]
    NoLease,
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The fleet store refused the payment, or cannot be reached.
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    /// The fleet's mint refused to reserve a refund's change (an output signed before on
    /// some host), or its store cannot be reached.
    #[error(transparent)]
    FleetMint(#[from] crate::fleet_mint::FleetMintError),
    /// A blocking step's worker thread failed.
    #[error("worker: {0}")]
    Worker(String),
    #[error("console file: {0}")]
    Console(std::io::Error),
}

impl LeaseError {
    /// A ledger error from claiming a payment or changing a lease's state: spent payments,
    /// refused transitions and vanished leases are the tenant's answer, not a fault.
    pub fn from_claim(e: LedgerError) -> Self {
        match e {
            LedgerError::AlreadySpent(m) => LeaseError::AlreadySpent(m),
            LedgerError::OutputsAlreadySigned(b_hex) => {
                LeaseError::Credit(CreditError::OutputsAlreadySigned { b_hex })
            }
            LedgerError::AlreadyRefunded(id) => LeaseError::AlreadyRefunded(id),
            LedgerError::State { .. } => LeaseError::StateConflict(e.to_string()),
            LedgerError::NoLease(_) => LeaseError::NoLease,
            other => LeaseError::Ledger(other),
        }
    }
}
