//! A JSON body extractor whose every failure is an API error (lease/openapi.yaml): 413 over the body limit,
//! 400 for anything that is not the expected JSON (unknown fields included where the type
//! denies them). [`CashuBody`] is the same for the Cashu routes, failing with NUT-00's
//! error body.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::http::error::{ApiError, CashuError};

pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "request body exceeds the host's limit",
                )
            } else {
                ApiError::bad_request(format!("cannot read body: {e}"))
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// [`JsonBody`] whose failures answer in NUT-00's shape.
pub struct CashuBody<T>(pub T);

impl<S, T> FromRequest<S> for CashuBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = CashuError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let JsonBody(body) = JsonBody::from_request(req, state).await?;
        Ok(CashuBody(body))
    }
}

/// An empty body counts as `{}` for endpoints whose fields are all optional.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("request body: {e}"),
        )
    })
}
