//! The one path parameter a route takes (a lease id, a keyset id, a quote id) as a
//! string, with every failure an API error: a segment that is not UTF-8 once
//! percent-decoded (`/v1/leases/%FF`) is a 400 in the route's error shape, not axum's
//! plain-text answer. [`IdPath`] answers with coinop's error body, [`CashuIdPath`] with
//! NUT-00's.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use crate::http::error::{ApiError, CashuError};

pub struct IdPath(pub String);

pub struct CashuIdPath(pub String);

/// The segment, or the 400 that says why it is not one.
async fn segment<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<String, ApiError> {
    Path::<String>::from_request_parts(parts, state)
        .await
        .map(|Path(id)| id)
        .map_err(|e| ApiError::bad_request(format!("path: {}", e.body_text())))
}

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        segment(parts, state).await.map(IdPath)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CashuIdPath {
    type Rejection = CashuError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(segment(parts, state).await.map(CashuIdPath)?)
    }
}
