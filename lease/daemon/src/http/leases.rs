//! Lease endpoints: create, show, top up, stop, console, and the operator's list. Handlers
//! only: authenticate, call [`crate::leases`], choose the status code.

use crate::http::path_param::IdPath;
use axum::extract::{ConnectInfo, Extension, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use coinop_proto::lease_view::{LeaseList, LeaseView};
use coinop_proto::replies::{StopResponse, TopupResponse};
use coinop_proto::requests::{CreateRequest, StopRequest, TopupRequest};

use super::auth::{lease_for, require_operator};
use super::json_body::JsonBody;
use super::Arrival;
use crate::app::Shared;
use crate::http::error::ApiError;
use crate::http::peer::PeerCred;
use crate::leases::{self, CreateOutcome, LeaseError};

/// Console bytes served at most (the tail of the file).
const MAX_CONSOLE: u64 = 1 << 20;
/// A failed boot may be retried at once (with a new payment, or the same one to recover).
const BOOT_FAILED_RETRY_S: u32 = 1;
/// A recovered lease waiting for room: capacity frees as other leases end.
const WAITING_RETRY_S: u32 = 5;

/// 201 for a new lease, 200 for a recovered one, 503 with `Retry-After` for a failed boot
/// or a recovered lease that waits for room (their bodies carry the token and the money).
/// The flow runs to its end even if the client goes away: cut off between its payment's
/// fleet fence and the settle it would leave the payment held until this host's next
/// start; cut off after its commit, a lease nobody boots. The client's retry (with its
/// recovery key) gets the lease.
pub async fn create(
    State(s): State<Shared>,
    Extension(Arrival(arrival)): Extension<Arrival>,
    JsonBody(req): JsonBody<CreateRequest>,
) -> Result<Response, ApiError> {
    let flow = async move { leases::create(&s, arrival, req).await };
    Ok(match leases::to_completion(flow).await? {
        CreateOutcome::Created(body) => (StatusCode::CREATED, Json(body)).into_response(),
        CreateOutcome::Recovered(body) => (StatusCode::OK, Json(body)).into_response(),
        CreateOutcome::BootFailed(body) => unavailable(Json(body), BOOT_FAILED_RETRY_S),
        CreateOutcome::WaitingForRoom(body) => unavailable(Json(body), WAITING_RETRY_S),
    })
}

fn unavailable(body: impl IntoResponse, retry_after_s: u32) -> Response {
    let mut resp = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
    resp
}

pub async fn show(
    State(s): State<Shared>,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Result<Json<LeaseView>, ApiError> {
    let l = lease_for(&s, &headers, &id).await?;
    Ok(Json(leases::view(&s, &l)))
}

pub async fn list(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
) -> Result<Json<LeaseList>, ApiError> {
    require_operator(&s, &peer)?;
    let s2 = s.clone();
    let rows = tokio::task::spawn_blocking(move || s2.ledger.list())
        .await
        .map_err(|e| ApiError::internal(format!("worker: {e}")))??;
    let leases = rows.iter().map(|l| leases::view(&s, l)).collect();
    Ok(Json(LeaseList { leases }))
}

/// The token is checked before the body is read: a caller without the lease's token gets
/// its 401 whatever it sent, and never has the daemon read and parse up to the body limit.
pub async fn topup(
    State(s): State<Shared>,
    IdPath(id): IdPath,
    request: Request,
) -> Result<Json<TopupResponse>, ApiError> {
    let l = lease_for(&s, request.headers(), &id).await?;
    let JsonBody(req) = JsonBody::<TopupRequest>::from_request(request, &s).await?;
    let flow = async move { leases::topup(&s, l, req).await };
    Ok(Json(leases::to_completion(flow).await?))
}

/// Authenticates before reading the body, as [`topup`] does.
pub async fn stop(
    State(s): State<Shared>,
    IdPath(id): IdPath,
    request: Request,
) -> Result<Json<StopResponse>, ApiError> {
    let l = lease_for(&s, request.headers(), &id).await?;
    let JsonBody(req) = JsonBody::<StopRequest>::from_request(request, &s).await?;
    let flow = async move { leases::stop(&s, l, req).await };
    Ok(Json(leases::to_completion(flow).await?))
}

pub async fn console(
    State(s): State<Shared>,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let l = lease_for(&s, &headers, &id).await?;
    let text = read_tail(std::path::Path::new(&l.console_path), MAX_CONSOLE)
        .await
        .map_err(LeaseError::Console)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

async fn read_tail(path: &std::path::Path, max: u64) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata().await?.len();
    if len > max {
        f.seek(std::io::SeekFrom::Start(len - max)).await?;
    }
    let mut buf = Vec::with_capacity(len.min(max) as usize);
    f.take(max).read_to_end(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
