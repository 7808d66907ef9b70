//! The Cashu mint endpoints (NUT-01/02/03/06/07/09, and NUT-04-style minting against an
//! on-chain payment), with the JSON exactly as the payment crate's NUT types give it and
//! errors in NUT-00's shape ([`CashuError`]).

use crate::http::path_param::CashuIdPath;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use payment::credit::nut_types::{
    CheckStateRequest, CheckStateResponse, KeysResponse, KeysetsResponse, MintInfo,
    MintOnchainRequest, MintOnchainResponse, MintQuoteOnchainRequest, MintQuoteOnchainResponse,
    MintQuoteState, RestoreRequest, RestoreResponse, SwapRequest, SwapResponse,
};
use payment::credit::receipt::{receipt, MINT_ONCHAIN};
use payment::credit::{signed_records, CreditError, Mint};
use payment::spent_set::SpentSet;
use serde_json::Value;

use super::host::issue_quote;
use super::json_body::CashuBody;
use super::read_share::within_read_share;
use crate::app::{AppState, Shared};
use crate::clock::unix_s;
use crate::http::degraded;
use crate::http::error::{ApiError, CashuError};
use crate::leases::payment_intake::{notice_storage, payment_quote, verify_onchain_for};
use crate::leases::LeaseError;
use crate::ledger::Credit;

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CashuError> + Send + 'static,
) -> Result<T, CashuError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker: {e}")))?
}

/// On a fleet, 503 until this host has the fleet's keysets (as [`keysets`]): a wallet
/// that cached keyset 0 as active after a rotation would have its outputs refused.
pub async fn keys(State(s): State<Shared>) -> Result<Json<KeysResponse>, CashuError> {
    if let Some(fleet_mint) = &s.fleet_mint {
        fleet_mint.require_ready()?;
    }
    Ok(Json(s.mint.keys()))
}

pub async fn keys_for(
    State(s): State<Shared>,
    CashuIdPath(id): CashuIdPath,
) -> Result<Json<KeysResponse>, CashuError> {
    if let Some(fleet_mint) = &s.fleet_mint {
        // A keyset made on another host since this one last read the fleet's list.
        fleet_mint.learn_keyset(&s.mint, &id).await;
    }
    Ok(Json(s.mint.keys_for(&id)?))
}

/// On a fleet, 503 until this host has the fleet's keysets: the list is the same on every
/// host, or not given.
pub async fn keysets(State(s): State<Shared>) -> Result<Json<KeysetsResponse>, CashuError> {
    if let Some(fleet_mint) = &s.fleet_mint {
        fleet_mint.require_ready()?;
    }
    Ok(Json(s.mint.keysets()))
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
/// blocking pool, which finishes it even if the client goes away meanwhile. With a fleet
/// store, [`super::fleet_credit::swap`] fences and reserves in it around the same work.
pub async fn swap(
    State(s): State<Shared>,
    CashuBody(req): CashuBody<SwapRequest>,
) -> Result<Json<SwapResponse>, CashuError> {
    if let (Some(fleet), Some(fleet_mint)) = (&s.fleet, &s.fleet_mint) {
        let (fleet, fleet_mint) = (fleet.clone(), fleet_mint.clone());
        return super::fleet_credit::swap(s, fleet, fleet_mint, req).await;
    }
    blocking(move || swap_locally(&s, &req)).await
}

/// The swap in this host's spent set (blocking): claims the inputs and records the
/// signatures in one step.
pub(super) fn swap_locally(
    s: &AppState,
    req: &SwapRequest,
) -> Result<Json<SwapResponse>, CashuError> {
    if s.disk.degraded() {
        let inputs = s.mint.validate_inputs(&req.inputs)?;
        degraded::admit_spending(s, &inputs.keys)?;
    }
    let signed = s
        .mint
        .swap(req)
        .inspect_err(|e| s.disk.notice(e.storage_refused()))?;
    crate::fault::hit(crate::fault::point::SWAP_COMMITTED);
    Ok(Json(signed))
}

/// The spent-set keys of a swap's inputs (their `Y`s), for the fleet fence. An input
/// without one is refused as the mint refuses it.
pub(super) fn swap_input_keys(
    req: &SwapRequest,
) -> Result<Vec<payment::spent_set::SpendKey>, CashuError> {
    if req.inputs.is_empty() {
        return Err(CreditError::NoInputs.into());
    }
    // The mint's own answer for a repeated secret, rather than the store's.
    let mut seen = std::collections::HashMap::with_capacity(req.inputs.len());
    for (second, p) in req.inputs.iter().enumerate() {
        if let Some(&first) = seen.get(p.secret.as_str()) {
            return Err(CreditError::DuplicateInputs { first, second }.into());
        }
        seen.insert(p.secret.as_str(), second);
    }
    req.inputs
        .iter()
        .map(|p| {
            let y = payment::credit::hash_to_curve::secret_to_curve(&p.secret)?;
            Ok(payment::credit::mint::credit_key(&y))
        })
        .collect::<Result<_, CreditError>>()
        .map_err(CashuError::from)
}

/// NUT-07 check state. On a fleet, a proof spent (or pending) on any host is shown so:
/// the store's state, or this host's own where it says more (a key spent here and not yet
/// published, which only a start-up's publication can leave). The store is read within
/// the public read share (503 `store_busy` beyond it: [`within_read_share`]).
pub async fn checkstate(
    State(s): State<Shared>,
    CashuBody(req): CashuBody<CheckStateRequest>,
) -> Result<Json<CheckStateResponse>, CashuError> {
    let Some(fleet) = s.fleet.clone() else {
        return blocking(move || Ok(Json(s.mint.check_state(&req)?))).await;
    };
    let keys = s.mint.check_state_keys(&req)?;
    let keys2 = keys.clone();
    let in_store = within_read_share(&s, async move {
        fleet.states(&keys2).await.map_err(CashuError::from)
    })
    .await?;
    let (s2, keys2) = (s.clone(), keys.clone());
    let here =
        blocking(move || Ok(SpentSet::states(&*s2.spent, &keys2).map_err(CreditError::from)?))
            .await?;
    let states = in_store
        .into_iter()
        .zip(here)
        .map(|(fleet, local)| fleet.max(local))
        .collect();
    Ok(Json(Mint::check_state_answer(&keys, states)))
}

/// NUT-09 restore: the signatures of the outputs asked about that were signed before. On a
/// fleet, within the public read share ([`within_read_share`]).
pub async fn restore(
    State(s): State<Shared>,
    CashuBody(req): CashuBody<RestoreRequest>,
) -> Result<Json<RestoreResponse>, CashuError> {
    if let Some(fleet_mint) = s.fleet_mint.clone() {
        let s2 = s.clone();
        return within_read_share(&s2, super::fleet_credit::restore(s, fleet_mint, req)).await;
    }
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
    let out = mint_fenced(&s, req).await;
    s.metrics.payment("onchain_mint", out.is_ok());
    out
}

/// [`mint`]: the payment checked, its outpoints fenced in the fleet store (if any), then
/// claimed locally with the signatures, then the fence settled. Anyone may send this,
/// naming any quote id: on a fleet the quote's lookup reads the store, within the public
/// read share (503 `store_busy` beyond it: [`within_read_share`]); what follows a quote
/// found is money work, outside it.
async fn mint_fenced(
    s: &Shared,
    req: MintOnchainRequest,
) -> Result<Json<MintOnchainResponse>, CashuError> {
    let (s2, quote_id) = (s.clone(), req.payment.quote_id.clone());
    let quote = within_read_share(s, async move {
        blocking(move || {
            let found = payment_quote(&s2, &quote_id);
            notice_storage(&s2, &found);
            match found {
                // A NUT-30 quote's payment is minted only with its key's signature (NUT-20).
                Err(LeaseError::QuoteKeyLocked(_)) => Err(CreditError::MintSignatureInvalid.into()),
                found => Ok(found?),
            }
        })
        .await
    })
    .await?;
    let s2 = s.clone();
    let (credit, req) = blocking(move || {
        // Minted credit is bearer money that no reorg can take back: only a payment
        // proved in the request mints it, and only at --mint-min-conf.
        let need = s2.config.mint_min_conf.max(s2.config.min_conf);
        let verified = verify_onchain_for(
            &s2.chain,
            &s2.quotes,
            None,
            need,
            &quote,
            &req.payment,
            None,
        );
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
    if let (Some(fleet), Some(fleet_mint)) = (&s.fleet, &s.fleet_mint) {
        let (fleet, fleet_mint) = (fleet.clone(), fleet_mint.clone());
        return super::fleet_credit::mint(s.clone(), fleet, fleet_mint, credit, req, note, receipt)
            .await;
    }
    let s2 = s.clone();
    blocking(move || mint_locally(&s2, &credit, &req, &note, &receipt)).await
}

/// Signs the outputs and claims the payment's outpoints with `receipt` and the signatures
/// in one ledger transaction (blocking); the same request again gets the same signatures.
pub(super) fn mint_locally(
    s: &AppState,
    credit: &Credit,
    req: &MintOnchainRequest,
    note: &str,
    receipt: &[u8; 32],
) -> Result<Json<MintOnchainResponse>, CashuError> {
    let paid_sat = credit.amount_msat / 1000;
    let signed = s.ledger.claim_with(&credit.keys, note, receipt, || {
        let signatures = s.mint.mint(paid_sat, &req.outputs)?;
        let records = signed_records(&req.outputs, &signatures)?;
        Ok::<_, CreditError>((signatures, records))
    })?;
    let signatures = signed?;
    crate::fault::hit(crate::fault::point::MINT_COMMITTED);
    Ok(Json(MintOnchainResponse { signatures }))
}
