//! The Cashu mint endpoints (NUT-01/02/03/06/07, and NUT-04-style minting against an
//! on-chain payment), with the JSON exactly as the payment crate's NUT types give it.

use axum::extract::{Path, State};
use axum::Json;
use payment::credit::nut_types::{
    CheckStateRequest, CheckStateResponse, KeysResponse, KeysetsResponse, MintInfo,
    MintOnchainRequest, MintOnchainResponse, MintQuoteOnchainRequest, MintQuoteOnchainResponse,
    MintQuoteState, SwapRequest, SwapResponse,
};
use payment::credit::receipt::{receipt, MINT_ONCHAIN, SWAP};

use super::host::issue_quote;
use super::json_body::JsonBody;
use crate::app::Shared;
use crate::clock::unix_s;
use crate::http::degraded;
use crate::http::error::{credit_error, fleet_error, ApiError};
use crate::leases::payment_intake::{notice_storage, verify_onchain};

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
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
) -> Result<Json<KeysResponse>, ApiError> {
    s.mint.keys_for(&id).map(Json).map_err(credit_error)
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
    JsonBody(req): JsonBody<SwapRequest>,
) -> Result<Json<SwapResponse>, ApiError> {
    // With a fleet store the inputs are fenced there first, so that no other host (nor
    // this one) spends them meanwhile; the swap's receipt names the operation.
    let fence = match &s.fleet {
        Some(fleet) => {
            let keys = swap_input_keys(&req)?;
            let operation = hex::encode(receipt(SWAP, &keys, &req.outputs));
            let fence = fleet
                .fence(&keys, "credit swap", &operation)
                .await
                .map_err(fleet_error)?;
            Some((fleet.clone(), fence))
        }
        None => None,
    };
    let s2 = s.clone();
    let out = blocking(move || {
        if s2.disk.degraded() {
            let inputs = s2.mint.validate_inputs(&req.inputs).map_err(credit_error)?;
            degraded::admit_spending(&s2, &inputs.keys)?;
        }
        let signed = s2.mint.swap(&req).map_err(|e| {
            s2.disk.notice(e.storage_refused());
            credit_error(e)
        })?;
        crate::fault::hit(crate::fault::point::SWAP_COMMITTED);
        Ok(Json(signed))
    })
    .await;
    if let Some((fleet, fence)) = fence {
        fleet.settle(fence, &s.ledger).await;
    }
    out
}

/// The spent-set keys of a swap's inputs (their `Y`s), for the fleet fence. An input
/// without one is refused as the mint refuses it.
fn swap_input_keys(req: &SwapRequest) -> Result<Vec<payment::spent_set::SpendKey>, ApiError> {
    if req.inputs.is_empty() {
        return Err(credit_error(payment::credit::CreditError::NoInputs));
    }
    // The mint's own answer for a repeated secret, rather than the store's.
    let mut seen = std::collections::HashMap::with_capacity(req.inputs.len());
    for (second, p) in req.inputs.iter().enumerate() {
        if let Some(&first) = seen.get(p.secret.as_str()) {
            return Err(credit_error(
                payment::credit::CreditError::DuplicateInputs { first, second },
            ));
        }
        seen.insert(p.secret.as_str(), second);
    }
    req.inputs
        .iter()
        .map(|p| {
            let y = payment::credit::hash_to_curve::secret_to_curve(&p.secret)?;
            Ok(payment::credit::mint::credit_key(&y))
        })
        .collect::<Result<_, payment::credit::CreditError>>()
        .map_err(credit_error)
}

pub async fn checkstate(
    State(s): State<Shared>,
    JsonBody(req): JsonBody<CheckStateRequest>,
) -> Result<Json<CheckStateResponse>, ApiError> {
    blocking(move || s.mint.check_state(&req).map(Json).map_err(credit_error)).await
}

pub async fn mint_quote(
    State(s): State<Shared>,
    JsonBody(req): JsonBody<MintQuoteOnchainRequest>,
) -> Result<Json<MintQuoteOnchainResponse>, ApiError> {
    if req.unit != "sat" {
        return Err(ApiError::unprocessable(
            "unsupported_unit",
            format!("unit {:?}: only \"sat\"", req.unit),
        ));
    }
    let limits = s.mint.limits();
    if !(limits.min_mint_sat..=limits.max_mint_sat).contains(&req.amount) {
        return Err(ApiError::unprocessable(
            "amount_out_of_range",
            format!(
                "amount {} sat must be {}..={}",
                req.amount, limits.min_mint_sat, limits.max_mint_sat
            ),
        ));
    }
    let amount = req.amount;
    blocking(move || {
        let q = issue_quote(&s, amount.saturating_mul(1000))?;
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
/// outpoints with the request's receipt in the same ledger transaction: the same payment
/// with the same outputs again (a retry after a lost reply) gets the same signatures, the
/// same payment with other outputs 409. The work runs on the blocking pool, which finishes
/// it even if the client goes away meanwhile.
pub async fn mint(
    State(s): State<Shared>,
    JsonBody(req): JsonBody<MintOnchainRequest>,
) -> Result<Json<MintOnchainResponse>, ApiError> {
    let out = mint_fenced(&s, req).await;
    s.metrics.payment("onchain_mint", out.is_ok());
    out
}

/// [`mint`]: the payment checked, its outpoints fenced in the fleet store (if any), then
/// claimed locally with the signatures, then the fence settled.
async fn mint_fenced(
    s: &Shared,
    req: MintOnchainRequest,
) -> Result<Json<MintOnchainResponse>, ApiError> {
    let s2 = s.clone();
    let (credit, req) = blocking(move || {
        let chain = s2.chain_read();
        // Minted credit is bearer money that no reorg can take back: only a payment
        // proved in the request mints it, and only at --mint-min-conf.
        let need = s2.config.mint_min_conf.max(s2.config.min_conf);
        let verified = verify_onchain(&chain, &s2.quotes, None, need, &req.payment);
        notice_storage(&s2, &verified);
        let credit = verified?;
        // A degraded disk refuses the mint (after a spent payment's 409) before anything
        // is fenced in the fleet store.
        degraded::admit_spending(&s2, &credit.keys)?;
        Ok((credit, req))
    })
    .await?;
    let receipt = receipt(MINT_ONCHAIN, &credit.keys, &req.outputs);
    let note = format!("mint quote {}", req.payment.quote_id);
    let fence = match &s.fleet {
        Some(fleet) => {
            let fence = fleet
                .fence(&credit.keys, &note, &hex::encode(receipt))
                .await
                .map_err(fleet_error)?;
            Some((fleet.clone(), fence))
        }
        None => None,
    };
    let s2 = s.clone();
    let out = blocking(move || {
        let paid_sat = credit.amount_msat / 1000;
        let signed = s2
            .ledger
            .claim_with(&credit.keys, &note, &receipt, || {
                s2.mint.mint(paid_sat, &req.outputs)
            })
            .map_err(|e| match e {
                crate::ledger::LedgerError::AlreadySpent(m) => {
                    ApiError::conflict("already_spent", m)
                }
                other => other.into(),
            })?;
        let signatures = signed.map_err(credit_error)?;
        crate::fault::hit(crate::fault::point::MINT_COMMITTED);
        Ok(Json(MintOnchainResponse { signatures }))
    })
    .await;
    if let Some((fleet, fence)) = fence {
        fleet.settle(fence, &s.ledger).await;
    }
    out
}
