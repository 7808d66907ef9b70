//! On-chain payments, verified by the host alone: the host keeps its own header chain
//! ([`header_chain`]), prices a spec and hands out a fresh address per quote ([`price`],
//! [`quote`]), and checks a tenant's `gettxoutproof` against that chain ([`proof`]), spending
//! each paying outpoint once in the [`crate::spent_set`].

pub mod chain_store;
pub mod checkpoints;
pub mod error;
pub mod header_chain;
pub mod network;
#[cfg(feature = "sqlite")]
pub mod payment_watch;
pub mod price;
pub mod proof;
pub mod quote;
#[cfg(feature = "sqlite")]
pub mod quote_book;
pub mod receive_address;
#[cfg(any(test, feature = "fixtures"))]
pub mod regtest_fixtures;
pub mod retarget;

pub use checkpoints::default_checkpoint;
pub use error::{ChainError, HeaderError, PaymentError, PriceError, QuoteError};
pub use header_chain::{AppendOutcome, BlockInfo, Checkpoint, HeaderChain, HeaderSource, Tip};
pub use network::ChainNetwork;
#[cfg(feature = "sqlite")]
pub use payment_watch::{
    check_block, proven_outputs, scan_block, BlockError, PaymentWatch, SeenOutput, WatchError,
};
pub use price::{msat_to_sat_ceil, price, Prices, Spec};
pub use proof::{
    check_inclusion, check_payment, parse_proof, parse_tx, spend_error, verify_and_claim,
    verify_proof, VerifiedPayment,
};
pub use quote::{dust_limit_sat, Quote};
#[cfg(feature = "sqlite")]
pub use quote_book::{IndexPolicy, QuoteBook};
pub use receive_address::{key_id_of, AddressDeriver, AddressKind};
