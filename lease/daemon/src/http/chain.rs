//! Operator endpoints: feeding block headers, and `/metrics`.

use axum::extract::{ConnectInfo, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bitcoin::block::Header;
use coinop_proto::replies::{ChainTip, HeadersResponse};
use coinop_proto::requests::HeadersRequest;
use payment::onchain::HeaderSource;

use super::auth::require_operator;
use super::json_body::JsonBody;
use crate::app::Shared;
use crate::clock::unix_s;
use crate::http::error::{chain_error, ApiError};
use crate::http::peer::PeerCred;

fn parse_header(i: usize, text: &str) -> Result<Header, ApiError> {
    let bytes = hex::decode(text.trim())
        .map_err(|e| ApiError::bad_request(format!("headers[{i}]: not hex: {e}")))?;
    if bytes.len() != 80 {
        return Err(ApiError::bad_request(format!(
            "headers[{i}]: {} bytes, a header is 80",
            bytes.len()
        )));
    }
    bitcoin::consensus::deserialize(&bytes)
        .map_err(|e| ApiError::bad_request(format!("headers[{i}]: {e}")))
}

pub async fn headers(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
    JsonBody(req): JsonBody<HeadersRequest>,
) -> Result<Json<HeadersResponse>, ApiError> {
    require_operator(&s, &peer)?;
    let headers = req
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| parse_header(i, h))
        .collect::<Result<Vec<_>, _>>()?;
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || {
        let now_us = (unix_s() as u64).saturating_mul(1_000_000);
        let out = s2
            .chain_write()
            .append(&headers, now_us, HeaderSource::Operator)
            .map_err(chain_error)?;
        Ok(Json(HeadersResponse {
            added: out.added,
            reorg: out.reorg,
            tip: ChainTip {
                height: out.tip.height,
                hash: out.tip.hash.to_string(),
            },
        }))
    })
    .await
    .map_err(|e| ApiError::internal(format!("worker: {e}")))?
}

pub async fn metrics(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
) -> Result<Response, ApiError> {
    require_operator(&s, &peer)?;
    let mut counts: std::collections::BTreeMap<String, i64> = Default::default();
    for l in s.ledger.list()? {
        *counts.entry(l.state.as_str().to_string()).or_default() += 1;
    }
    let tip_height = s.chain_read().tip().height;
    s.metrics.chain(tip_height, &s.chain_sync.snapshot());
    if let Some(fleet) = &s.fleet {
        s.metrics.fleet_store(fleet.metrics(), fleet.reads_busy());
    }
    let text = s.metrics.render(&counts.into_iter().collect::<Vec<_>>());
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
