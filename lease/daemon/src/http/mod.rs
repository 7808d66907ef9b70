//! The HTTP API (`lease/openapi.yaml`): routes, the arrival timestamp for boot figures, and
//! JSON errors for unknown routes and methods. Handlers only: each authenticates, parses,
//! calls the service layer and maps its outcome to a status code, chosen here and nowhere
//! else.

pub mod auth;
pub mod chain;
pub mod credit;
pub mod degraded;
pub mod error;
pub mod fleet_credit;
pub mod fleet_nut30;
pub mod host;
pub mod json_body;
pub mod leases;
pub mod limits;
pub mod mint_keysets;
pub mod nut30;
pub mod path_param;
pub mod peer;
mod read_share;
pub mod server;

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::app::Shared;
use crate::clock::monotonic_us;
use crate::http::error::{ApiError, CashuError, CASHU_CODE_UNLISTED};

/// `CLOCK_MONOTONIC` µs at which the request reached the router.
#[derive(Debug, Clone, Copy)]
pub struct Arrival(pub u64);

async fn stamp_arrival(mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(Arrival(monotonic_us()));
    next.run(req).await
}

/// An unknown route: coinop's error body, or NUT-00's under the Cashu mint's prefixes, so
/// a Cashu wallet probing what this mint does not offer (melting, NUT-05) reads an answer
/// in the shape it knows.
async fn not_found(uri: axum::http::Uri) -> Response {
    if is_cashu_path(uri.path()) {
        CashuError {
            status: axum::http::StatusCode::NOT_FOUND,
            detail: "no such route on this mint (it offers NUT-01..04 onchain, 07, 09, 30; \
                     no melting)"
                .into(),
            code: CASHU_CODE_UNLISTED,
            retry_after_s: None,
        }
        .into_response()
    } else {
        ApiError::not_found("no such route").into_response()
    }
}

/// Whether `path` lies under one of the Cashu mint's route prefixes (NUT-00 error bodies).
fn is_cashu_path(path: &str) -> bool {
    [
        "/v1/melt",
        "/v1/mint",
        "/v1/keys",
        "/v1/keysets",
        "/v1/swap",
        "/v1/checkstate",
        "/v1/restore",
        "/v1/info",
    ]
    .iter()
    .any(|prefix| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// A route asked with a method it does not take: NUT-00's body under the Cashu mint's
/// prefixes (a wallet that GETs `/v1/swap` reads `{detail, code}` like every other answer
/// of the mint), coinop's elsewhere.
async fn method_not_allowed(uri: axum::http::Uri) -> Response {
    const MESSAGE: &str = "this route does not take that method";
    let status = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    // The operator's rotation lies under `/v1/keysets` but answers in coinop's shape.
    if is_cashu_path(uri.path()) && uri.path() != "/v1/keysets/rotate" {
        CashuError {
            status,
            detail: MESSAGE.into(),
            code: CASHU_CODE_UNLISTED,
            retry_after_s: None,
        }
        .into_response()
    } else {
        ApiError::new(status, "method_not_allowed", MESSAGE).into_response()
    }
}

/// Every route of lease/openapi.yaml (and the Cashu mint routes).
/// Operator routes check the peer in a route layer, before the body is read; routes that
/// hand out an xpub address are rate-limited per peer uid the same way. (Both middlewares
/// read the peer's credentials that [`server`] puts on every request.)
pub fn router(state: Shared) -> Router {
    let limit = state.config.max_body_bytes;
    let operator = || from_fn_with_state(state.clone(), auth::operator_only);
    let quote_rate = || from_fn_with_state(state.clone(), host::quote_rate);
    Router::new()
        .route("/v1/host", get(host::host))
        .route("/v1/quotes", post(host::quote).route_layer(quote_rate()))
        .route("/v1/quotes/{id}", get(host::get_quote))
        .route(
            "/v1/leases",
            get(leases::list)
                .route_layer(operator())
                .post(leases::create),
        )
        .route("/v1/leases/{id}", get(leases::show))
        .route("/v1/leases/{id}/topup", post(leases::topup))
        .route("/v1/leases/{id}/stop", post(leases::stop))
        .route("/v1/leases/{id}/console", get(leases::console))
        .route(
            "/v1/chain/headers",
            post(chain::headers).route_layer(operator()),
        )
        .route("/metrics", get(chain::metrics).route_layer(operator()))
        .route("/v1/keys", get(credit::keys))
        .route("/v1/keys/{keyset_id}", get(credit::keys_for))
        .route("/v1/keysets", get(credit::keysets))
        .route(
            "/v1/keysets/rotate",
            post(mint_keysets::rotate).route_layer(operator()),
        )
        .route("/v1/info", get(credit::info))
        .route("/v1/swap", post(credit::swap))
        .route("/v1/checkstate", post(credit::checkstate))
        .route("/v1/restore", post(credit::restore))
        .route(
            "/v1/mint/quote/onchain",
            post(credit::mint_quote)
                .route_layer(from_fn_with_state(state.clone(), host::mint_quote_rate)),
        )
        .route("/v1/mint/quote/onchain/{quote}", get(nut30::quote_state))
        .route(
            "/v1/mint/quote/onchain/{quote}/payment",
            post(nut30::prove_payment),
        )
        .route("/v1/mint/onchain", post(credit::mint))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(stamp_arrival))
        .with_state(state)
}
