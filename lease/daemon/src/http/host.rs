//! `GET /v1/host` and `POST /v1/quotes`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use payment::onchain::{price, Spec};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::json_body::JsonBody;
use crate::app::Shared;
use crate::clock::unix_s;
use crate::http::error::ApiError;
use crate::ledger::QuoteRow;
use crate::payment_intake::quote_error;

/// How long a quote's address and price hold.
pub const QUOTE_TTL_S: u64 = 3600;
/// Largest lease a single request may ask for.
pub const MAX_VCPUS: u32 = 32;
/// Longest lease a quote may price (a year).
pub const MAX_SECONDS: u64 = 366 * 24 * 3600;

pub async fn host(State(s): State<Shared>) -> Json<Value> {
    let tip = s.chain_read().tip();
    let (limit, free) = {
        let c = s.capacity();
        (c.limit(), c.free())
    };
    let images: Vec<Value> = s
        .config
        .images
        .iter()
        .map(|i| json!({"name": i.name, "cmdline": i.cmdline}))
        .collect();
    Json(json!({
        "network": s.chain_network.name(),
        "chain": {
            "height": tip.height,
            "hash": tip.hash.to_string(),
            "time": s.chain_read().block(&tip.hash).map(|b| b.time),
        },
        "min_conf": s.config.min_conf,
        "capacity": {
            "vcpus_total": limit.vcpus, "vcpus_free": free.vcpus,
            "mib_total": limit.mib, "mib_free": free.mib,
        },
        "prices": {
            "vcpu_msat_per_s": s.prices.vcpu_msat_per_s,
            "gib_msat_per_s": s.prices.gib_msat_per_s,
        },
        "images": images,
        "tick_ms": s.config.tick_ms,
        "grace_s": s.config.grace_s,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteRequest {
    pub vcpus: u32,
    pub mem_mib: u64,
    pub seconds: u64,
    #[serde(default)]
    pub image: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct QuoteResponse {
    pub quote_id: String,
    pub amount_msat: u64,
    pub amount_sat: u64,
    pub address: String,
    pub bip21: String,
    pub expires_at: i64,
}

/// Checks a spec against the host's limits (422 when well-formed but impossible).
pub fn check_spec(
    s: &Shared,
    vcpus: u32,
    mem_mib: u64,
    image: Option<&str>,
) -> Result<(), ApiError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(ApiError::unprocessable(
            "invalid_spec",
            format!("vcpus {vcpus} must be 1..={MAX_VCPUS}"),
        ));
    }
    let limit = s.capacity().limit();
    if vcpus > limit.vcpus {
        return Err(ApiError::unprocessable(
            "invalid_spec",
            format!("vcpus {vcpus} exceeds the host's {}", limit.vcpus),
        ));
    }
    if mem_mib == 0 || mem_mib > limit.mib {
        return Err(ApiError::unprocessable(
            "invalid_spec",
            format!("mem_mib {mem_mib} must be 1..={}", limit.mib),
        ));
    }
    if let Some(name) = image {
        if s.config.images.get(name).is_none() {
            return Err(ApiError::unprocessable(
                "unknown_image",
                format!("image {name:?} is not in this host's catalogue"),
            ));
        }
    }
    Ok(())
}

pub async fn quote(
    State(s): State<Shared>,
    JsonBody(req): JsonBody<QuoteRequest>,
) -> Result<(StatusCode, Json<QuoteResponse>), ApiError> {
    check_spec(&s, req.vcpus, req.mem_mib, req.image.as_deref())?;
    if req.seconds == 0 || req.seconds > MAX_SECONDS {
        return Err(ApiError::unprocessable(
            "invalid_spec",
            format!("seconds {} must be 1..={MAX_SECONDS}", req.seconds),
        ));
    }
    let amount_msat = price(
        &Spec {
            vcpus: req.vcpus,
            mem_mib: req.mem_mib,
            seconds: req.seconds,
        },
        &payment::onchain::Prices {
            msat_per_vcpu_s: s.prices.vcpu_msat_per_s,
            msat_per_gib_s: s.prices.gib_msat_per_s,
        },
    )
    .map_err(|e| ApiError::unprocessable("invalid_spec", e.to_string()))?;
    let s2 = s.clone();
    let q = tokio::task::spawn_blocking(move || {
        let now_us = (unix_s() as u64).saturating_mul(1_000_000);
        s2.quotes
            .create(amount_msat, now_us, QUOTE_TTL_S * 1_000_000)
            .map_err(quote_error)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    let expires_at = (q.expires_at_us / 1_000_000) as i64;
    s.ledger.insert_quote(&QuoteRow {
        id: q.quote_id.clone(),
        purpose: "lease".into(),
        address: q.address.clone(),
        derivation_index: q.derivation_index,
        amount_msat: q.amount_msat,
        vcpus: req.vcpus,
        mem_mib: req.mem_mib,
        seconds: req.seconds,
        image: req.image,
        expires_at,
        created_at: unix_s(),
    })?;
    Ok((
        StatusCode::OK,
        Json(QuoteResponse {
            quote_id: q.quote_id,
            amount_msat: q.amount_msat,
            amount_sat: q.amount_sat,
            address: q.address,
            bip21: q.bip21,
            expires_at,
        }),
    ))
}

/// `GET /v1/quotes/{id}` (addition): a quote as issued, so scripts can pay it later.
pub async fn get_quote(
    State(s): State<Shared>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<QuoteResponse>, ApiError> {
    let q = s
        .quotes
        .get(&id)
        .map_err(quote_error)?
        .ok_or_else(|| ApiError::not_found(format!("no quote {id:?}")))?;
    Ok(Json(QuoteResponse {
        quote_id: q.quote_id,
        amount_msat: q.amount_msat,
        amount_sat: q.amount_sat,
        address: q.address,
        bip21: q.bip21,
        expires_at: (q.expires_at_us / 1_000_000) as i64,
    }))
}
