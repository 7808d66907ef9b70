//! NUT-30 on-chain minting, the way current Cashu wallets ask for it: a quote locked to the
//! wallet's NUT-20 key with an address and no amount, its state (`amount_paid`,
//! `amount_issued`), and mints of up to what was paid and not yet issued, each signed by
//! the quote's key. coinopd sees no mempool: a payment counts once its transaction and SPV
//! proof are posted to `POST /v1/mint/quote/onchain/{quote}/payment` (coinop's addition)
//! and pass the same checks as every on-chain payment (confirmations on the host's own
//! header chain, outputs to the quote's address), claiming its outpoints for this quote.
//! coinop's own body (`{payment, outputs}`) stays served by [`super::credit::mint`].

use axum::extract::{Path, State};
use axum::Json;
use payment::credit::mint_quote_signature::verify_mint_signature;
use payment::credit::nut_types::{
    MintNut30Request, MintOnchainResponse, MintQuoteNut30Request, MintQuoteNut30Response,
    QuotePaymentProof,
};
use payment::credit::receipt::receipt;
use payment::credit::{curve::parse_point, signed_records, CreditError};
use payment::onchain::proof::check_payment;

use super::credit::blocking;
use super::host::QUOTE_TTL_S;
use super::json_body::CashuBody;
use crate::app::Shared;
use crate::clock::unix_s;
use crate::http::error::{quote_error, ApiError, CashuError};
use crate::leases::LeaseError;
use crate::ledger::mint_quotes::Nut30Quote;

fn unknown_quote(quote: &str) -> CashuError {
    ApiError::not_found(format!("no on-chain mint quote {quote:?} with a pubkey")).into()
}

/// The quote as NUT-30 shows it.
fn view(s: &Shared, quote_id: &str, q: &Nut30Quote) -> Result<MintQuoteNut30Response, CashuError> {
    let book = s
        .quotes
        .get(quote_id)
        .map_err(quote_error)?
        .ok_or_else(|| unknown_quote(quote_id))?;
    Ok(MintQuoteNut30Response {
        quote: quote_id.to_string(),
        request: book.address,
        unit: "sat".into(),
        expiry: Some(book.expires_at_us / 1_000_000),
        pubkey: q.pubkey.clone(),
        amount_paid: q.amount_paid_sat,
        amount_issued: q.amount_issued_sat,
    })
}

/// `POST /v1/mint/quote/onchain` with a `pubkey`: a fresh address of the operator's xpub,
/// locked to that key.
pub async fn create_quote(
    s: Shared,
    req: MintQuoteNut30Request,
) -> Result<Json<MintQuoteNut30Response>, CashuError> {
    if req.unit != "sat" {
        return Err(CreditError::UnsupportedUnit { unit: req.unit }.into());
    }
    parse_point("pubkey", &req.pubkey)?;
    blocking(move || {
        let now_us = (unix_s() as u64).saturating_mul(1_000_000);
        // No amount: the address may be paid any number of times before it expires.
        let q = s
            .quotes
            .create(0, now_us, QUOTE_TTL_S * 1_000_000)
            .map_err(quote_error)?;
        s.ledger.open_nut30_quote(&q.quote_id, &req.pubkey)?;
        let row = Nut30Quote {
            pubkey: req.pubkey,
            amount_paid_sat: 0,
            amount_issued_sat: 0,
        };
        Ok(Json(view(&s, &q.quote_id, &row)?))
    })
    .await
}

/// `GET /v1/mint/quote/onchain/{quote}`.
pub async fn quote_state(
    State(s): State<Shared>,
    Path(quote): Path<String>,
) -> Result<Json<MintQuoteNut30Response>, CashuError> {
    blocking(move || {
        let row = s
            .ledger
            .nut30_quote(&quote)?
            .ok_or_else(|| unknown_quote(&quote))?;
        Ok(Json(view(&s, &quote, &row)?))
    })
    .await
}

/// `POST /v1/mint/quote/onchain/{quote}/payment`: credits a confirmed payment to the
/// quote's address (once; the same proof again changes nothing) and answers the quote.
pub async fn prove_payment(
    State(s): State<Shared>,
    Path(quote): Path<String>,
    CashuBody(req): CashuBody<QuotePaymentProof>,
) -> Result<Json<MintQuoteNut30Response>, CashuError> {
    blocking(move || {
        s.ledger
            .nut30_quote(&quote)?
            .ok_or_else(|| unknown_quote(&quote))?;
        let book = s
            .quotes
            .get(&quote)
            .map_err(quote_error)?
            .ok_or_else(|| unknown_quote(&quote))?;
        let paid = {
            let chain = s.chain_read();
            check_payment(
                &chain,
                &book,
                &req.tx_hex,
                &req.proof_hex,
                s.config.min_conf,
            )
            .map_err(LeaseError::Payment)?
        };
        // NUT-30: a payment the mint first learns of after the expiry does not count.
        if paid.late {
            return Err(CreditError::QuoteExpired { quote }.into());
        }
        let keys = paid.spend_keys();
        let receipt = receipt(&format!("nut30 payment {quote}"), &keys, &[]);
        let row = s
            .ledger
            .credit_nut30_quote(&quote, &keys, paid.amount_msat / 1000, &receipt)?
            .ok_or_else(|| unknown_quote(&quote))?;
        Ok(Json(view(&s, &quote, &row)?))
    })
    .await
}

/// `POST /v1/mint/onchain` with `{quote, outputs, signature}`: signs outputs worth at most
/// what the quote was paid and has not issued, if the quote's key signed the request; the
/// signatures are recorded and `amount_issued` raised in one ledger transaction.
pub async fn mint(
    s: Shared,
    req: MintNut30Request,
) -> Result<Json<MintOnchainResponse>, CashuError> {
    blocking(move || {
        let row = s
            .ledger
            .nut30_quote(&req.quote)?
            .ok_or_else(|| unknown_quote(&req.quote))?;
        verify_mint_signature(&req.quote, &req.outputs, &row.pubkey, &req.signature)?;
        let signed = s.ledger.issue_nut30(&req.quote, |q| {
            let q = q.ok_or_else(|| unknown_quote(&req.quote))?;
            let asked = req
                .outputs
                .iter()
                .try_fold(0u64, |sum, o| sum.checked_add(o.amount))
                .ok_or(CreditError::AmountOutOfRange {
                    what: "outputs",
                    amount: u64::MAX,
                    min: 0,
                    max: u64::MAX,
                })?;
            if asked > q.available_sat() {
                return Err(CreditError::QuoteNotPaid {
                    asked,
                    available: q.available_sat(),
                }
                .into());
            }
            let signatures = s.mint.mint(asked, &req.outputs)?;
            let records = signed_records(&req.outputs, &signatures)?;
            Ok::<_, CashuError>((signatures, records, asked))
        })?;
        Ok(Json(MintOnchainResponse {
            signatures: signed?,
        }))
    })
    .await
}
