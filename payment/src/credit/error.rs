//! Typed errors of the credit mint, each carrying the Cashu error code where the NUT error
//! table (cashubtc/nuts `error_codes.md`) defines one, and the snake_case code of coinop's
//! own API. Which HTTP status each gets is the daemon's choice, made in its HTTP layer.

use thiserror::Error;

use crate::spent_set::SpentSetError;

#[derive(Debug, Error)]
pub enum CreditError {
    /// A point field (`B_`, `C`, `Y`, a public key) is not a valid compressed secp256k1 point.
    #[error("{field}: invalid point encoding {value:?}")]
    InvalidPoint { field: &'static str, value: String },
    /// A scalar field (a DLEQ `e`, `s`, `r`) is not a 32-byte hex number in [1, n).
    #[error("{field}: invalid scalar {value:?}")]
    InvalidScalar { field: &'static str, value: String },
    /// The keyset id is not one this mint has (or had).
    #[error("keyset {id:?} is not known")]
    UnknownKeyset { id: String },
    /// Outputs name a keyset that may still be redeemed but no longer signs.
    #[error("keyset {id:?} is inactive, cannot sign messages")]
    InactiveKeyset { id: String },
    /// Inputs from a keyset the operator has retired.
    #[error("keyset {id:?} has been retired")]
    RetiredKeyset { id: String },
    /// Amounts of notes must be a power of two that the keyset has a key for.
    #[error("{field}: amount {amount} is not a power of two")]
    AmountNotPowerOfTwo { field: &'static str, amount: u64 },
    /// An amount or a sum is outside what this mint accepts (zero, overflow, over a limit).
    #[error("{what}: amount {amount} outside of limit range [{min}, {max}]")]
    AmountOutOfRange {
        what: &'static str,
        amount: u64,
        min: u64,
        max: u64,
    },
    /// The unit is not `sat`.
    #[error("unit {unit:?} is not supported")]
    UnsupportedUnit { unit: String },
    /// A proof's signature `C` does not match `k * hash_to_curve(secret)`.
    #[error("proof {index}: signature does not verify")]
    ProofInvalid { index: usize },
    /// A secret is too long, empty, or carries NUT-10 spending conditions this mint does not
    /// enforce (accepting them as plain secrets would let anyone spend locked notes).
    #[error("proof {index}: secret rejected: {reason}")]
    SecretRejected { index: usize, reason: &'static str },
    /// A DLEQ proof does not verify.
    #[error("DLEQ proof does not verify")]
    DleqInvalid,
    #[error("duplicate inputs: input {first} and {second} have the same secret")]
    DuplicateInputs { first: usize, second: usize },
    #[error("duplicate outputs: output {first} and {second} have the same B_")]
    DuplicateOutputs { first: usize, second: usize },
    #[error("transaction is not balanced: inputs {inputs} sat, outputs {outputs} sat")]
    Unbalanced { inputs: u64, outputs: u64 },
    /// NUT-02 with a fee: `sum(inputs) - fee == sum(outputs)` does not hold (or the inputs
    /// do not even cover the fee).
    #[error("transaction is not balanced: inputs {inputs} sat minus fee {fee} sat, outputs {outputs} sat")]
    UnbalancedWithFee { inputs: u64, fee: u64, outputs: u64 },
    /// A blinded message was signed before, for another request (NUT-09/13: signing it
    /// again would hand a restoring wallet a note it already has).
    #[error("output {b_hex} was already signed")]
    OutputsAlreadySigned { b_hex: String },
    #[error("{count} inputs exceed the maximum of {max}")]
    TooManyInputs { count: usize, max: usize },
    #[error("{count} outputs exceed the maximum of {max}")]
    TooManyOutputs { count: usize, max: usize },
    #[error("no inputs given")]
    NoInputs,
    #[error("no outputs given")]
    NoOutputs,
    /// Change needs one blank output per set bit of the refund.
    #[error("change of {change_sat} sat needs {needed} outputs, {given} given")]
    TooFewChangeOutputs {
        change_sat: u64,
        needed: usize,
        given: usize,
    },
    /// At least one input is already spent.
    #[error("proof {y_hex} is already spent")]
    AlreadySpent { y_hex: String },
    /// At least one input is held by an operation in flight.
    #[error("proof {y_hex} is pending in another operation")]
    Pending { y_hex: String },
    /// The seed/keyset file in the state dir could not be read or written.
    #[error("keyset store {path}: {reason}")]
    Store { path: String, reason: String },
    /// The spent set failed for a reason other than a conflict.
    #[error("spent set: {0}")]
    SpentSet(String),
    /// NUT-20: the mint request's signature is missing, malformed or not the quote key's.
    #[error("signature for mint request invalid")]
    MintSignatureInvalid,
    /// NUT-20/30: an on-chain mint quote must name the public key that will sign its mint.
    #[error("pubkey required for mint quote")]
    MintPubkeyRequired,
    /// NUT-30: the outputs ask for more than the quote's confirmed payments left to issue.
    #[error("quote not paid: {asked} sat asked, {available} sat paid and not yet issued")]
    QuoteNotPaid { asked: u64, available: u64 },
    /// NUT-30: the payment reached the quote's address only after the quote expired.
    #[error("quote {quote} expired before this payment")]
    QuoteExpired { quote: String },
    /// An elliptic-curve operation hit a degenerate case (point at infinity); negligible
    /// probability with honest inputs, reachable only with crafted ones.
    #[error("{what}: degenerate curve operation")]
    Degenerate { what: &'static str },
}

impl CreditError {
    /// The Cashu error code for this error, where `error_codes.md` defines one.
    pub fn cashu_code(&self) -> Option<u32> {
        use CreditError::*;
        Some(match self {
            ProofInvalid { .. } | SecretRejected { .. } | DleqInvalid => 10001,
            AlreadySpent { .. } => 11001,
            Pending { .. } => 11002,
            OutputsAlreadySigned { .. } => 11003,
            Unbalanced { .. } | UnbalancedWithFee { .. } => 11005,
            AmountOutOfRange { .. } => 11006,
            DuplicateInputs { .. } => 11007,
            DuplicateOutputs { .. } => 11008,
            UnsupportedUnit { .. } => 11013,
            TooManyInputs { .. } => 11014,
            TooManyOutputs { .. } => 11015,
            UnknownKeyset { .. } => 12001,
            InactiveKeyset { .. } => 12002,
            RetiredKeyset { .. } => 12003,
            QuoteNotPaid { .. } => 20001,
            QuoteExpired { .. } => 20007,
            MintSignatureInvalid => 20008,
            MintPubkeyRequired => 20009,
            _ => return None,
        })
    }

    /// The coinop API's snake_case error code.
    pub fn code(&self) -> &'static str {
        use CreditError::*;
        match self {
            InvalidPoint { .. } => "invalid_point",
            InvalidScalar { .. } => "invalid_scalar",
            UnknownKeyset { .. } => "keyset_unknown",
            InactiveKeyset { .. } => "keyset_inactive",
            RetiredKeyset { .. } => "keyset_retired",
            AmountNotPowerOfTwo { .. } => "amount_not_power_of_two",
            AmountOutOfRange { .. } => "amount_out_of_range",
            UnsupportedUnit { .. } => "unit_not_supported",
            ProofInvalid { .. } => "proof_invalid",
            SecretRejected { .. } => "secret_rejected",
            DleqInvalid => "dleq_invalid",
            DuplicateInputs { .. } => "duplicate_inputs",
            DuplicateOutputs { .. } => "duplicate_outputs",
            Unbalanced { .. } | UnbalancedWithFee { .. } => "transaction_unbalanced",
            OutputsAlreadySigned { .. } => "outputs_already_signed",
            TooManyInputs { .. } => "too_many_inputs",
            TooManyOutputs { .. } => "too_many_outputs",
            NoInputs => "no_inputs",
            NoOutputs => "no_outputs",
            TooFewChangeOutputs { .. } => "too_few_change_outputs",
            AlreadySpent { .. } => "already_spent",
            Pending { .. } => "proof_pending",
            Store { .. } => "keyset_store",
            SpentSet(_) => "spent_set",
            Degenerate { .. } => "degenerate_point",
            MintSignatureInvalid => "mint_signature_invalid",
            MintPubkeyRequired => "mint_pubkey_required",
            QuoteNotPaid { .. } => "quote_not_paid",
            QuoteExpired { .. } => "quote_expired",
        }
    }

    /// The Cashu error body `{"detail", "code"}` for the `/v1/...` Cashu endpoints.
    pub fn to_cashu_body(&self) -> super::nut_types::CashuErrorResponse {
        super::nut_types::CashuErrorResponse {
            detail: self.to_string(),
            code: self.cashu_code().unwrap_or(0),
        }
    }
}

impl From<SpentSetError> for CreditError {
    fn from(e: SpentSetError) -> Self {
        match e {
            SpentSetError::AlreadyClaimed { key_hex, state, .. } => match state {
                crate::spent_set::SpendState::Spent => CreditError::AlreadySpent { y_hex: key_hex },
                crate::spent_set::SpendState::Pending => CreditError::Pending { y_hex: key_hex },
            },
            SpentSetError::OutputAlreadySigned { b_hex } => {
                CreditError::OutputsAlreadySigned { b_hex }
            }
            other => CreditError::SpentSet(other.to_string()),
        }
    }
}
