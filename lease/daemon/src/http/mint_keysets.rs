//! `POST /v1/keysets/rotate` (operator): a new keyset becomes the one that signs; the
//! previous ones keep accepting notes. On a fleet the rotation is made in the fleet store
//! and reaches every host ([`crate::fleet_mint`]); on a single host it is written to
//! STATE/credit-keysets.json.

use axum::extract::State;
use axum::Json;
use payment::credit::nut_types::KeysetsResponse;

use crate::app::Shared;
use crate::http::error::{credit_error, fleet_mint_error, ApiError};

/// Rotates the mint's keysets and answers the keyset list as `GET /v1/keysets` then does.
pub async fn rotate(State(s): State<Shared>) -> Result<Json<KeysetsResponse>, ApiError> {
    let id = match &s.fleet_mint {
        Some(fleet_mint) => fleet_mint.rotate(&s.mint).await.map_err(fleet_mint_error)?,
        None => {
            // One durable file write: on the blocking pool.
            let s2 = s.clone();
            tokio::task::spawn_blocking(move || s2.mint.rotate())
                .await
                .map_err(|e| ApiError::internal(format!("worker: {e}")))?
                .map_err(credit_error)?
        }
    };
    tracing::info!(active = %id, "mint keysets rotated by the operator");
    Ok(Json(s.mint.keysets()))
}
