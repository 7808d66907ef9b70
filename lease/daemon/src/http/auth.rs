//! Who may call: bearer tokens for a lease's own endpoints, SO_PEERCRED for the operator's.

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::{AppState, Shared};
use crate::http::error::ApiError;
use crate::http::peer::PeerCred;
use crate::ledger::LeaseRow;
use crate::token::{token_hash, token_matches};

/// The lease `id` if `headers` carry its token; otherwise the same 401 whether or not the
/// lease exists (a dummy hash is compared for unknown ids so timing says nothing either).
/// The ledger is read on the blocking pool: its lock may wait for a writer's fsync, and a
/// tenant's requests must not hold the runtime's workers (the accept loop's too) meanwhile.
pub async fn lease_for(s: &Shared, headers: &HeaderMap, id: &str) -> Result<LeaseRow, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    let lease = if id.len() <= 64 {
        let (s, id) = (s.clone(), id.to_string());
        tokio::task::spawn_blocking(move || s.ledger.get(&id))
            .await
            .map_err(|e| ApiError::internal(format!("worker: {e}")))??
    } else {
        None
    };
    match lease {
        Some(l) if !token.is_empty() && token_matches(token, &l.token_hash) => Ok(l),
        Some(_) => Err(ApiError::unauthorized()),
        None => {
            let _ = token_matches(token, &token_hash("no such lease"));
            Err(ApiError::unauthorized())
        }
    }
}

pub fn require_operator(state: &AppState, peer: &PeerCred) -> Result<(), ApiError> {
    if state.operator.allows(peer) {
        Ok(())
    } else {
        Err(ApiError::not_operator())
    }
}

/// Middleware for operator routes: the SO_PEERCRED check runs before the handler's
/// extractors, so a non-operator's body is never read nor parsed.
pub async fn operator_only(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    require_operator(&s, &peer)?;
    Ok(next.run(req).await)
}
