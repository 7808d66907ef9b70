//! `GET /v1/host` and `POST /v1/quotes`.

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use coinop_proto::replies::{
    HostCapacity, HostChain, HostPrices, HostView, ImageView, QuoteResponse,
};
use coinop_proto::requests::QuoteRequest;
use coinop_proto::Msat;
use payment::onchain::{price, Quote, Spec};

use super::json_body::JsonBody;
use crate::app::{AppState, Shared};
use crate::clock::unix_s;
use crate::http::error::{quote_error, ApiError};
use crate::http::peer::PeerCred;
use crate::leases::{spec, LeaseError};
use crate::ledger::QuoteRow;

/// Issues a quote for `amount_msat` valid for `--quote-ttl-s`, at the chain's tip (an
/// expired unpaid quote's address may be taken over: see `payment::onchain::quote_book`).
/// Blocking: one durable SQLite commit.
pub fn issue_quote(s: &AppState, amount_msat: u64) -> Result<Quote, ApiError> {
    crate::http::degraded::admit(s)?;
    let now_us = (unix_s() as u64).saturating_mul(1_000_000);
    let tip = s.chain_read().tip().height;
    s.quotes
        .create_at_tip(
            amount_msat,
            now_us,
            s.config.quote_ttl_s.saturating_mul(1_000_000),
            tip,
        )
        .map_err(|e| {
            s.disk.notice(e.storage_refused());
            quote_error(e)
        })
}

pub async fn host(State(s): State<Shared>) -> Json<HostView> {
    let tip = s.chain_read().tip();
    let (limit, free) = {
        let c = s.capacity();
        (c.limit(), c.free())
    };
    let images = s
        .config
        .images
        .iter()
        .map(|i| ImageView {
            name: i.name.clone(),
            cmdline: i.cmdline.clone(),
        })
        .collect();
    let time = s.chain_read().block(&tip.hash).map(|b| b.time);
    Json(HostView {
        network: s.chain_network.name().to_string(),
        chain: HostChain {
            height: tip.height,
            hash: tip.hash.to_string(),
            time,
        },
        min_conf: s.config.min_conf,
        capacity: HostCapacity {
            vcpus_total: limit.vcpus,
            vcpus_free: free.vcpus,
            mib_total: limit.mib,
            mib_free: free.mib,
        },
        prices: HostPrices {
            vcpu_msat_per_s: s.prices.vcpu_msat_per_s,
            gib_msat_per_s: s.prices.gib_msat_per_s,
        },
        images,
        tick_ms: s.config.tick_ms,
        grace_s: s.config.grace_s,
    })
}

/// Middleware for the routes that hand out an address of the operator's xpub: at most
/// `--quotes-per-min` per non-operator uid, checked before the body is read.
pub async fn quote_rate(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if !s.operator.allows(&peer) {
        s.quote_limiter
            .take(peer.uid, std::time::Instant::now())
            .map_err(ApiError::too_many_quotes)?;
    }
    Ok(next.run(req).await)
}

pub async fn quote(
    State(s): State<Shared>,
    JsonBody(req): JsonBody<QuoteRequest>,
) -> Result<(StatusCode, Json<QuoteResponse>), ApiError> {
    spec::check(&s, req.vcpus, req.mem_mib, req.image.as_deref())?;
    spec::check_seconds(req.seconds)?;
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
    .map_err(|e| LeaseError::InvalidSpec(e.to_string()))?;
    let s2 = s.clone();
    let q = tokio::task::spawn_blocking(move || issue_quote(&s2, amount_msat))
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
            amount_msat: Msat::from_msat(q.amount_msat),
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
        amount_msat: Msat::from_msat(q.amount_msat),
        amount_sat: q.amount_sat,
        address: q.address,
        bip21: q.bip21,
        expires_at: (q.expires_at_us / 1_000_000) as i64,
    }))
}
