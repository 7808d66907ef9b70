//! Anonymous blind-signed credit, the mint side of Cashu (NUT-00/01/02/03/06/07/12): the host
//! signs blinded notes when paid on chain and later accepts the unblinded notes for a lease
//! without being able to link the two.
//!
//! - [`hash_to_curve`], [`bdhke`], [`dleq`]: the cryptography (NUT-00, NUT-12).
//! - [`keyset`], [`keyset_store`]: keys per amount, keyset ids, seed file and rotation.
//! - [`amount`]: power-of-two note amounts; [`curve`]: the shared context and hex encodings.
//! - [`nut_types`]: the Cashu JSON bodies.
//! - [`mint`]: mint, swap, check state, redeem, change, restore (NUT-09), input fees.
//! - [`mint_quote_signature`]: NUT-20 signatures on mint requests (NUT-30 quotes).
//! - [`receipt`]: what a claim was spent on, so a retried mint or swap is answered again.
//! - [`token`]: `cashuA`/`cashuB` tokens (NUT-00 serialization), for wallets on either side.
//! - [`error`]: typed errors with Cashu codes and HTTP statuses.

pub mod amount;
pub mod bdhke;
pub mod curve;
pub mod dleq;
pub mod error;
pub mod hash_to_curve;
pub mod keyset;
pub mod keyset_store;
pub mod mint;
pub mod mint_quote_signature;
pub mod nut_types;
pub mod receipt;
pub mod token;

pub use error::CreditError;
pub use mint::{credit_key, input_fee_sat, signed_records, Mint, MintLimits, ValidatedInputs};
