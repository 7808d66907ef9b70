//! Turning the `payment` object of a request into a [`Credit`] the ledger can claim:
//! on-chain (SPV proof against the host's header chain, for a quote it issued) or blind-signed
//! credit (Cashu proofs checked by the mint). Nothing is claimed here: the ledger claims the
//! keys in the same transaction that records what they buy.

use axum::http::StatusCode;
use payment::credit::nut_types::{OnchainPayment, Proof};
use payment::credit::{CreditError, Mint};
use payment::onchain::{check_payment, HeaderChain, PaymentError, QuoteBook, QuoteError};
use serde::Deserialize;

use crate::http::error::ApiError;
use crate::ledger::Credit;

/// lease/openapi.yaml: `payment` is exactly one of `onchain` or `credit`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PaymentBody {
    Onchain(OnchainPayment),
    Credit(CreditPayment),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditPayment {
    pub proofs: Vec<Proof>,
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

pub fn credit_error(e: CreditError) -> ApiError {
    ApiError::new(status(e.http_status()), e.code(), e.to_string())
}

pub fn payment_error(e: PaymentError) -> ApiError {
    ApiError::new(status(e.http_status()), e.code(), e.to_string())
}

pub fn quote_error(e: QuoteError) -> ApiError {
    ApiError::new(status(e.http_status()), e.code(), e.to_string())
}

/// Verifies an on-chain payment for one of our quotes; returns the credit and the verified
/// payment's `late` flag.
pub fn verify_onchain(
    chain: &HeaderChain,
    quotes: &QuoteBook,
    min_conf: u32,
    p: &OnchainPayment,
) -> Result<Credit, ApiError> {
    let quote = quotes
        .get(&p.quote_id)
        .map_err(quote_error)?
        .ok_or_else(|| ApiError::not_found(format!("no quote {:?}", p.quote_id)))?;
    let v =
        check_payment(chain, &quote, &p.tx_hex, &p.proof_hex, min_conf).map_err(payment_error)?;
    let keys = v.spend_keys();
    let reference = v
        .outpoints
        .iter()
        .map(|o| o.to_string())
        .collect::<Vec<_>>()
        .join(",");
    Ok(Credit {
        kind: if v.late { "onchain_late" } else { "onchain" },
        reference,
        amount_msat: v.amount_msat,
        keys,
    })
}

pub fn verify_credit(mint: &Mint, p: &CreditPayment) -> Result<Credit, ApiError> {
    if p.proofs.is_empty() {
        return Err(ApiError::bad_request("payment.credit.proofs is empty"));
    }
    let v = mint.validate_inputs(&p.proofs).map_err(credit_error)?;
    let amount_msat = v.amount_msat().map_err(credit_error)?;
    Ok(Credit {
        kind: "credit",
        reference: format!("{} proofs", v.keys.len()),
        amount_msat,
        keys: v.keys,
    })
}
