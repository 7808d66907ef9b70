//! The Cashu mint endpoints (NUT-01/02/03/06/07/09, and NUT-04-style minting against an
//! on-chain payment), with the JSON exactly as the payment crate's NUT types give it and
//! errors in NUT-00's shape ([`CashuError`]).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use payment::credit::nut_types::{
    CheckStateRequest, CheckStateResponse, KeysResponse, KeysetsResponse, MintInfo,
    MintOnchainRequest, MintOnchainResponse, MintQuoteOnchainRequest, MintQuoteOnchainResponse,
    MintQuoteState, RestoreRequest, RestoreResponse, SwapRequest, SwapResponse,
};
use payment::credit::receipt::{receipt, MINT_ONCHAIN};
use payment::credit::{signed_records, CreditError};
use serde_json::Value;

use super::host::QUOTE_TTL_S;
use super::json_body::CashuBody;
use crate::app::Shared;
use crate::clock::unix_s;
use crate::http::error::{quote_error, ApiError, CashuError};
use crate::leases::payment_intake::verify_onchain;

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CashuError> + Send + 'static,
) -> Result<T, CashuError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker: {e}")))?
}

pub async fn keys(State(s): State<Shared>) -> Json<KeysResponse> {
    Json(s.mint.keys())
}

pub async fn keys_for(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<KeysResponse>, CashuError> {
    Ok(Json(s.mint.keys_for(&id)?))
}

pub async fn keysets(State(s): State<Shared>) -> Json<KeysetsResponse> {
    Json(s.mint.keysets())
}

pub async fn info(State(s): State<Shared>) -> Json<MintInfo> {
    Json(s.mint.info(
        Some("coinop".into()),
        Some("coin-operated microVM host credit".into()),
        Some(unix_s() as u64),
    ))
}

/// NUT-03 swap. The same swap retried after a lost reply (same inputs, same outputs) gets
/// the same signatures again ([`payment::credit::Mint::swap`]). The work runs on the
/// blocking pool, which finishes it even if the client goes away meanwhile.
pub async fn swap(
    State(s): State<Shared>,
    CashuBody(req): CashuBody<SwapRequest>,
) -> Result<Json<SwapResponse>, CashuError> {
    blocking(move || {
        let signed = s.mint.swap(&req)?;
        crate::fault::hit(crate::fault::point::SWAP_COMMITTED);
        Ok(Json(signed))
    })
    .await
}

pub async fn checkstate(
    State(s): State<Shared>,
    CashuBody(req): CashuBody<CheckStateRequest>,
) -> Result<Json<CheckStateResponse>, CashuError> {
    blocking(move || Ok(Json(s.mint.check_state(&req)?))).await
}

/// NUT-09 restore: the signatures of the outputs asked about that were signed before.
pub async fn restore(
    State(s): State<Shared>,
    CashuBody(req): CashuBody<RestoreRequest>,
) -> Result<Json<RestoreResponse>, CashuError> {
    blocking(move || Ok(Json(s.mint.restore(&req)?))).await
}

/// A body of one of the JSON types a route takes in two shapes.
fn body_as<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, CashuError> {
    serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("request body: {e}")).into())
}

/// `POST /v1/mint/quote/onchain`: NUT-30's `{unit, pubkey}` (see [`super::nut30`]), or
/// coinop's `{amount, unit}` (a quote for one payment of `amount`, minted with the proved
/// payment in the request).
pub async fn mint_quote(
    State(s): State<Shared>,
    CashuBody(body): CashuBody<Value>,
) -> Result<Response, CashuError> {
    if body.get("pubkey").is_some() {
        let req = body_as(body)?;
        return Ok(super::nut30::create_quote(s, req).await?.into_response());
    }
    if body.get("amount").is_none() {
        // Neither coinop's body nor NUT-30's: what NUT-30 wallets must send is the key.
        return Err(CreditError::MintPubkeyRequired.into());
    }
    let req: MintQuoteOnchainRequest = body_as(body)?;
    Ok(legacy_mint_quote(s, req).await?.into_response())
}

async fn legacy_mint_quote(
    s: Shared,
    req: MintQuoteOnchainRequest,
) -> Result<Json<MintQuoteOnchainResponse>, CashuError> {
    if req.unit != "sat" {
        return Err(CreditError::UnsupportedUnit { unit: req.unit }.into());
    }
    let limits = s.mint.limits();
    if !(limits.min_mint_sat..=limits.max_mint_sat).contains(&req.amount) {
        return Err(CreditError::AmountOutOfRange {
            what: "mint amount",
            amount: req.amount,
            min: limits.min_mint_sat,
            max: limits.max_mint_sat,
        }
        .into());
    }
    let amount = req.amount;
    blocking(move || {
        let now_us = (unix_s() as u64).saturating_mul(1_000_000);
        let q = s
            .quotes
            .create(amount * 1000, now_us, QUOTE_TTL_S * 1_000_000)
            .map_err(quote_error)?;
        Ok(Json(MintQuoteOnchainResponse {
            quote: q.quote_id,
            request: q.bip21,
            amount: q.amount_sat,
            unit: "sat".into(),
            state: MintQuoteState::Unpaid,
            expiry: Some(q.expires_at_us / 1_000_000),
        }))
    })
    .await
}

/// Signs `outputs` worth exactly what the proved transaction paid (in sat), claiming its
/// outpoints with the request's receipt and recording the signatures in the same ledger
/// transaction: the same payment with the same outputs again (a retry after a lost reply)
/// gets the same signatures, the same payment with other outputs 20002 (already issued),
/// outputs signed before 11003. The work runs on the blocking pool, which finishes it even
/// if the client goes away meanwhile.
pub async fn mint(
    State(s): State<Shared>,
    CashuBody(body): CashuBody<Value>,
) -> Result<Json<MintOnchainResponse>, CashuError> {
    if body.get("payment").is_none() {
        return super::nut30::mint(s, body_as(body)?).await;
    }
    let req: MintOnchainRequest = body_as(body)?;
    let s2 = s.clone();
    let out = blocking(move || {
        // A NUT-30 quote's payment is minted only with its key's signature (NUT-20).
        if s2.ledger.nut30_quote(&req.payment.quote_id)?.is_some() {
            return Err(CreditError::MintSignatureInvalid.into());
        }
        let credit = {
            let chain = s2.chain_read();
            verify_onchain(&chain, &s2.quotes, s2.config.min_conf, &req.payment)?
        };
        let paid_sat = credit.amount_msat / 1000;
        let note = format!("mint quote {}", req.payment.quote_id);
        let receipt = receipt(MINT_ONCHAIN, &credit.keys, &req.outputs);
        let signed = s2.ledger.claim_with(&credit.keys, &note, &receipt, || {
            let signatures = s2.mint.mint(paid_sat, &req.outputs)?;
            let records = signed_records(&req.outputs, &signatures)?;
            Ok::<_, CreditError>((signatures, records))
        })?;
        let signatures = signed?;
        crate::fault::hit(crate::fault::point::MINT_COMMITTED);
        Ok(Json(MintOnchainResponse { signatures }))
    })
    .await;
    s.metrics.payment("onchain_mint", out.is_ok());
    out
}
