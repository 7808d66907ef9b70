//! Lease endpoints: create (pay, commit, boot), show, top up, stop (refund), console, and
//! the operator's list.

use axum::extract::{ConnectInfo, Extension, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use payment::credit::nut_types::{BlindSignature, BlindedMessage};
use payment::credit::Mint;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::{lease_for, require_operator};
use super::host::check_spec;
use super::json_body::JsonBody;
use super::Arrival;
use crate::app::{AppState, Shared};
use crate::capacity::Totals;
use crate::clock::monotonic_us;
use crate::create_recovery::{outputs_digest, CreateOutcome, Recovered};
use crate::http::error::ApiError;
use crate::http::peer::PeerCred;
use crate::ledger::{reason, state, Credit, LeaseRow, LedgerError, NewLease, Refund};
use crate::payment_intake::{credit_error, verify_credit, verify_onchain, PaymentBody};
use crate::supervisor::{BootFigures, BootRequest, GuestPaths, Nic};
use crate::token::{new_lease_id, new_token, token_hash};
use coinop_host::guest_network::NetInfo;
use coinop_proto::recovery_key::recovery_hash;
use payment::metering;

/// Longest tenant cmdline.
const MAX_CMDLINE: usize = 2048;
/// Console bytes served at most (the tail of the file).
const MAX_CONSOLE: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub vcpus: u32,
    pub mem_mib: u64,
    pub image: String,
    #[serde(default)]
    pub cmdline: Option<String>,
    /// OpenSSH public key authorised for root in the guest (addition).
    #[serde(default)]
    pub ssh_key: Option<String>,
    pub payment: PaymentBody,
    /// Blank outputs for a refund as blind-signed credit if the boot fails (addition).
    #[serde(default)]
    pub outputs: Option<Vec<BlindedMessage>>,
    /// 64 hex digits the tenant chose and kept: proves, with the same payment, that a
    /// retry of this create is the tenant's own (addition; see [`crate::create_recovery`]).
    #[serde(default)]
    pub recovery_key: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CreateResponse {
    pub lease_id: String,
    pub token: String,
    /// Which token of the lease this is: 1 here, +1 per recovery (the highest one works).
    pub token_seq: u64,
    pub state: String,
    pub balance_msat: u64,
    pub boot: BootFigures,
    /// How to reach the guest; absent without a NIC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetInfo>,
}

fn since(arrival: u64) -> u64 {
    monotonic_us().saturating_sub(arrival)
}

/// Runs a blocking ledger or verification step off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker: {e}")))?
}

/// Runs a short blocking step (one durable SQLite commit) on this thread, telling a
/// multi-threaded runtime to move its other tasks elsewhere meanwhile: no hop to the
/// blocking pool and back on the create path. A current-thread runtime (some tests) cannot
/// do that, so there the step goes to the pool.
async fn blocking_here<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        tokio::task::block_in_place(f)
    } else {
        blocking(f).await
    }
}

/// Credit payments with at most this many proofs are verified inline (each proof is one
/// hash-to-curve and one point multiplication, tens of µs); bigger ones go to the pool.
const INLINE_PROOFS: usize = 8;

/// Verifies a payment body into a credit. On-chain proofs take the chain lock (which a
/// header append may hold) and large credit payments take real CPU, so those run on the
/// blocking pool; a small credit payment is checked right here.
pub async fn verify_payment(s: &Shared, p: PaymentBody) -> Result<Credit, ApiError> {
    let kind = match &p {
        PaymentBody::Onchain(_) => "onchain",
        PaymentBody::Credit(_) => "credit",
    };
    let out = match p {
        PaymentBody::Credit(c) if c.proofs.len() <= INLINE_PROOFS => verify_credit(&s.mint, &c),
        p => {
            let s2 = s.clone();
            blocking(move || match &p {
                PaymentBody::Onchain(o) => {
                    let chain = s2.chain_read();
                    verify_onchain(&chain, &s2.quotes, s2.config.min_conf, o)
                }
                PaymentBody::Credit(c) => verify_credit(&s2.mint, c),
            })
            .await
        }
    };
    s.metrics.payment(kind, out.is_ok());
    out
}

/// The metrics label of a credit's kind (`onchain_late` counts as `onchain`).
fn metric_kind(c: &Credit) -> &'static str {
    if c.kind.starts_with("onchain") {
        "onchain"
    } else {
        "credit"
    }
}

/// Counts a claim the ledger refused because the payment was already spent.
fn count_refused_claim(s: &AppState, kind: &'static str, e: &LedgerError) {
    if matches!(e, LedgerError::AlreadySpent(_)) {
        s.metrics.payment_already_spent(kind);
    }
}

fn spent_error(e: LedgerError) -> ApiError {
    match e {
        LedgerError::AlreadySpent(m) => ApiError::conflict("already_spent", m),
        LedgerError::State { .. } => ApiError::conflict("state_conflict", e.to_string()),
        LedgerError::NoLease(_) => ApiError::unauthorized(),
        other => other.into(),
    }
}

pub async fn create(
    State(s): State<Shared>,
    Extension(Arrival(arrival)): Extension<Arrival>,
    JsonBody(req): JsonBody<CreateRequest>,
) -> Result<Response, ApiError> {
    check_spec(&s, req.vcpus, req.mem_mib, Some(&req.image))?;
    let image = s
        .config
        .images
        .get(&req.image)
        .cloned()
        .ok_or_else(|| ApiError::unprocessable("unknown_image", "unknown image"))?;
    let mut cmdline = req.cmdline.clone().unwrap_or_else(|| image.cmdline.clone());
    if cmdline.len() > MAX_CMDLINE || cmdline.contains('\0') {
        return Err(ApiError::unprocessable(
            "invalid_spec",
            format!("cmdline must be at most {MAX_CMDLINE} bytes without NUL"),
        ));
    }
    if let Some(key) = &req.ssh_key {
        let word = ssh_key_word(key).ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_spec",
                "ssh_key must be an OpenSSH public key: TYPE BASE64 [comment], at most 8 KiB",
            )
        })?;
        cmdline = format!("{cmdline} {word}");
    }
    let recovery = req
        .recovery_key
        .as_deref()
        .map(recovery_hash)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    // A slot built ahead of time names the lease; dropped unused (a refused payment, a full
    // host, a recovered lease) it goes back to the pool.
    let slot = s.supervisor.isolation().take_slot();
    let id = slot
        .as_ref()
        .map_or_else(new_lease_id, |slot| slot.lease_id().to_string());
    let want = Totals {
        vcpus: req.vcpus,
        mib: req.mem_mib,
    };
    let reserved = s.capacity().reserve(&id, want);
    if let Err(full) = reserved {
        let full = ApiError::host_full(
            format!(
                "host full: {} vCPUs and {} MiB free",
                full.free.vcpus, full.free.mib
            ),
            5,
        );
        return create_when_full(&s, arrival, req, recovery, full).await;
    }
    let name = LeaseName { id: &id, slot };
    let result = create_reserved(&s, arrival, name, req, image, cmdline, recovery).await;
    if result.is_err() {
        s.capacity().release(&id);
    }
    result
}

/// The host has no room for a new lease: only a retry that recovers an existing one (which
/// holds its own room, or is booted if there is room for it) gets past the 503 anyone else
/// gets, whatever their payment.
async fn create_when_full(
    s: &Shared,
    arrival: u64,
    req: CreateRequest,
    recovery: Option<[u8; 32]>,
    full: ApiError,
) -> Result<Response, ApiError> {
    let Some(hash) = recovery else {
        return Err(full);
    };
    let Ok(credit) = verify_payment(s, req.payment).await else {
        return Err(full);
    };
    let token = new_token();
    let th = token_hash(&token);
    let kind = metric_kind(&credit);
    let s2 = s.clone();
    let found = blocking_here(move || Ok(s2.ledger.recover(&credit, &hash, &th)?)).await?;
    match found {
        Some(r) => {
            s.metrics.payment_recovered(kind);
            recovered(s, arrival, r, token, req.outputs).await
        }
        None => Err(full),
    }
}

/// A new lease's id, and the slot built ahead of time that gave it, if any.
struct LeaseName<'a> {
    id: &'a str,
    slot: Option<coinop_host::slot_pool::TakenSlot>,
}

async fn create_reserved(
    s: &Shared,
    arrival: u64,
    name: LeaseName<'_>,
    req: CreateRequest,
    image: crate::image_catalogue::ImageSpec,
    cmdline: String,
    recovery: Option<[u8; 32]>,
) -> Result<Response, ApiError> {
    let LeaseName { id, slot } = name;
    let credit = verify_payment(s, req.payment).await?;
    let boot = BootFigures {
        payment_verified_us: since(arrival),
        ..BootFigures::default()
    };
    let token = new_token();
    let paths = GuestPaths::for_lease(&s.config.run_dir(), id);
    let new = NewLease {
        id: id.to_string(),
        token_hash: token_hash(&token),
        vcpus: req.vcpus,
        mem_mib: req.mem_mib,
        image: image.name.clone(),
        cmdline: cmdline.clone(),
        control_path: paths.control.display().to_string(),
        console_path: paths.console.display().to_string(),
        recovery_hash: recovery,
    };
    let balance = credit.amount_msat;
    let kind = metric_kind(&credit);
    let s2 = s.clone();
    let outcome = blocking_here(move || {
        s2.ledger.create_or_recover(&new, &credit).map_err(|e| {
            count_refused_claim(&s2, kind, &e);
            spent_error(e)
        })
    })
    .await?;
    if let CreateOutcome::Recovered(r) = outcome {
        // The room reserved for a new lease is not needed: the lease exists.
        s.capacity().release(id);
        s.metrics.payment_recovered(kind);
        return recovered(s, arrival, *r, token, req.outputs).await;
    }
    let mut boot = boot;
    boot.ledger_committed_us = since(arrival);
    crate::fault::hit(crate::fault::point::CREATE_COMMITTED);
    let guest = GuestSpec {
        id,
        image: &image,
        cmdline: &cmdline,
        vcpus: req.vcpus,
        mem_mib: req.mem_mib,
    };
    match boot_guest(s, arrival, &guest, boot, slot).await? {
        Ok((boot, network)) => {
            let body = CreateResponse {
                lease_id: id.to_string(),
                token,
                token_seq: 1,
                state: state::RUNNING.into(),
                balance_msat: balance,
                boot,
                network,
            };
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        Err((boot, why)) => boot_failed(s, id, token, 1, boot, why, req.outputs).await,
    }
}

/// What a committed lease boots.
struct GuestSpec<'a> {
    id: &'a str,
    image: &'a crate::image_catalogue::ImageSpec,
    cmdline: &'a str,
    vcpus: u32,
    mem_mib: u64,
}

/// Boots the guest of a lease the ledger holds as `booting` (its room reserved), with its
/// network when its image gets one, and marks it running. `Ok(Err(..))` is a failed boot,
/// its room (and network) already released, with why. `slot` is the slot built ahead of
/// time that named the lease, if its create took one.
async fn boot_guest(
    s: &Shared,
    arrival: u64,
    g: &GuestSpec<'_>,
    mut boot: BootFigures,
    slot: Option<coinop_host::slot_pool::TakenSlot>,
) -> Result<Result<(BootFigures, Option<NetInfo>), (BootFigures, String)>, ApiError> {
    let paths = GuestPaths::for_lease(&s.config.run_dir(), g.id);
    let (nic, network, cmdline) = match attach_network(s, g.id, g.image, g.cmdline).await {
        Ok(attached) => attached,
        Err(why) => {
            tracing::warn!(lease = g.id, error = %why, "no network for the guest");
            // Not back to the pool: the slot's lease id is in the ledger now.
            if let Some(slot) = slot {
                slot.discard();
            }
            s.metrics.boot(false, None);
            s.capacity().release(g.id);
            return Ok(Err((boot, why)));
        }
    };
    let booted = s
        .supervisor
        .boot(BootRequest {
            lease_id: g.id,
            image: g.image,
            cmdline: &cmdline,
            vcpus: g.vcpus,
            mem_mib: g.mem_mib,
            paths: &paths,
            arrival_us: arrival,
            timeout_ms: s.config.boot_timeout_ms,
            slot,
            nic,
        })
        .await;
    match booted {
        Ok(b) => {
            crate::fault::hit(crate::fault::point::CREATE_GUEST_READY);
            boot.vmm_spawned_us = b.vmm_spawned_us;
            boot.vcpus_started_us = b.vcpus_started_us;
            boot.guest_ready_us = Some(b.guest_ready_us);
            let json = serde_json::to_string(&boot).unwrap_or_default();
            let s2 = s.clone();
            let id2 = g.id.to_string();
            blocking(move || Ok(s2.ledger.mark_running(&id2, b.pid, &json)?)).await?;
            s.metrics.boot(true, Some(b.guest_ready_us));
            tracing::info!(
                lease = g.id,
                guest_ready_us = b.guest_ready_us,
                "lease running"
            );
            Ok(Ok((boot, network)))
        }
        Err(e) => {
            tracing::warn!(lease = g.id, error = %e, "boot failed");
            s.metrics.boot(false, None);
            s.capacity().release(g.id);
            Ok(Err((boot, e.to_string())))
        }
    }
}

/// The lease's NIC when its image gets one: the tap's fd, the tenant's view, and `cmdline`
/// with the guest's address words (they depend on the slot, so the ledger keeps the
/// command line without them).
async fn attach_network(
    s: &Shared,
    id: &str,
    image: &crate::image_catalogue::ImageSpec,
    cmdline: &str,
) -> Result<(Option<Nic>, Option<NetInfo>, String), String> {
    if !s.config.lease_gets_network(image) {
        return Ok((None, None, cmdline.to_string()));
    }
    let isolation = std::sync::Arc::clone(s.supervisor.isolation());
    let lease = id.to_string();
    let attached = tokio::task::spawn_blocking(move || isolation.attach_network(&lease))
        .await
        .map_err(|e| format!("worker: {e}"))?
        .map_err(|e| e.to_string())?;
    Ok(match attached {
        Some((tap, info)) => {
            let cmdline = format!(
                "{cmdline} {}",
                coinop_host::guest_network::cmdline_words(&info)
            );
            let nic = Nic {
                tap,
                mac: info.mac.clone(),
            };
            (Some(nic), Some(info), cmdline)
        }
        None => (None, None, cmdline.to_string()),
    })
}

/// `coinop.ssh_key=TYPE:BLOB` for an OpenSSH public key line, or `None` when `key` is not
/// one (the comment is dropped: it could hold anything, and the guest needs none).
pub fn ssh_key_word(key: &str) -> Option<String> {
    if key.len() > 8192 {
        return None;
    }
    let mut parts = key.split_whitespace();
    let (kind, blob) = (parts.next()?, parts.next()?);
    let kind_ok = !kind.is_empty()
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-@.".contains(&b));
    let blob_ok = blob.len() >= 16
        && blob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    (kind_ok && blob_ok).then(|| format!("coinop.ssh_key={kind}:{blob}"))
}

/// The reply to a retry that recovered its lease (see [`crate::create_recovery`]): 200 with
/// the lease as it is and the new token, after booting it if it never booted.
async fn recovered(
    s: &Shared,
    arrival: u64,
    r: Recovered,
    token: String,
    outputs: Option<Vec<BlindedMessage>>,
) -> Result<Response, ApiError> {
    tracing::info!(lease = %r.lease.id, token_seq = r.token_seq, reboot = r.reboot,
                   "lease recovered by a retried create");
    let l = r.lease;
    if r.reboot {
        let boot = BootFigures {
            payment_verified_us: since(arrival),
            ledger_committed_us: since(arrival),
            ..BootFigures::default()
        };
        let Some(image) = s.config.images.get(&l.image).cloned() else {
            let why = format!("image {:?} is no longer offered", l.image);
            return boot_failed(s, &l.id, token, r.token_seq, boot, why, outputs).await;
        };
        let want = Totals {
            vcpus: l.vcpus,
            mib: l.mem_mib,
        };
        // Bound first: the capacity guard must not live across the awaits below.
        let reserved = s.capacity().reserve(&l.id, want);
        if let Err(full) = reserved {
            let why = format!(
                "host full: {} vCPUs and {} MiB free",
                full.free.vcpus, full.free.mib
            );
            return not_booted_yet(s, &l.id, token, r.token_seq, why).await;
        }
        let guest = GuestSpec {
            id: &l.id,
            image: &image,
            cmdline: &l.cmdline,
            vcpus: l.vcpus,
            mem_mib: l.mem_mib,
        };
        if let Err((boot, why)) = boot_guest(s, arrival, &guest, boot, None).await? {
            return boot_failed(s, &l.id, token, r.token_seq, boot, why, outputs).await;
        }
    }
    let now = s.ledger.get(&l.id)?.unwrap_or(l);
    let mut body = lease_json(s, &now);
    body["token"] = Value::String(token);
    body["token_seq"] = Value::from(r.token_seq);
    body["recovered"] = Value::Bool(true);
    if let Some(refund) = resigned_refund(s, &now, outputs.as_deref())? {
        body["refund"] = refund;
    }
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// A recovered lease that never booted and finds no room now: it goes back to waiting
/// (stopped, `boot_failed`, no boot figures, balance kept) so that a later retry boots it,
/// and the answer is 503 `host_full` with `Retry-After`, carrying the new token so the
/// tenant can also just take its balance back (`POST /stop` with outputs).
async fn not_booted_yet(
    s: &Shared,
    id: &str,
    token: String,
    token_seq: u64,
    why: String,
) -> Result<Response, ApiError> {
    let s2 = s.clone();
    let id2 = id.to_string();
    blocking(move || Ok(s2.ledger.mark_stopped(&id2, reason::BOOT_FAILED, None)?)).await?;
    let body = json!({
        "error": {"code": "host_full", "message": format!("the lease waits for room to boot: {why}")},
        "lease_id": id,
        "token": token,
        "token_seq": token_seq,
        "recovered": true,
        "state": state::STOPPED,
        "stop_reason": reason::BOOT_FAILED,
    });
    let mut resp = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(5u32));
    Ok(resp)
}

/// The refund signatures a lost create reply carried, signed again: only when the lease was
/// refunded onto outputs and the retry brings exactly those outputs (same notes, no new
/// money; see [`crate::create_recovery::outputs_digest`]).
fn resigned_refund(
    s: &Shared,
    l: &LeaseRow,
    outputs: Option<&[BlindedMessage]>,
) -> Result<Option<Value>, ApiError> {
    let (Some(refund_msat), Some(outputs)) = (l.refunded_msat, outputs) else {
        return Ok(None);
    };
    let Some(stored) = s.ledger.refund_outputs(&l.id)? else {
        return Ok(None);
    };
    let used = Mint::change_outputs_needed(refund_msat).min(outputs.len());
    if stored.as_slice() != outputs_digest(&outputs[..used]).as_slice() {
        return Ok(None);
    }
    let signed = s
        .mint
        .change(refund_msat, &outputs[..used])
        .map_err(credit_error)?;
    Ok(Some(
        json!({"kind": "signatures", "refund_msat": refund_msat,
                   "residual_msat": l.residual_msat.unwrap_or(0), "signatures": signed}),
    ))
}

/// A failed boot: the lease stops (`boot_failed`) and its whole balance is refunded as
/// blind-signed change when the request brought outputs, or kept on the lease for the
/// tenant to collect with its token (`POST /stop` with outputs).
async fn boot_failed(
    s: &Shared,
    id: &str,
    token: String,
    token_seq: u64,
    boot: BootFigures,
    why: String,
    outputs: Option<Vec<BlindedMessage>>,
) -> Result<Response, ApiError> {
    let s2 = s.clone();
    let id2 = id.to_string();
    let json = serde_json::to_string(&boot).unwrap_or_default();
    let refund = blocking(move || {
        s2.ledger
            .mark_stopped(&id2, reason::BOOT_FAILED, Some(&json))?;
        match outputs {
            Some(outs) => {
                let r = refund_with(&s2, &id2, &outs)?;
                // So that a retry that lost this reply can have the same signatures again.
                let used = &outs[..r.signed.len().min(outs.len())];
                s2.ledger
                    .remember_refund_outputs(&id2, &outputs_digest(used))?;
                crate::fault::hit(crate::fault::point::CREATE_REFUNDED);
                Ok(Some(r))
            }
            None => Ok(None),
        }
    })
    .await?;
    let refund_json = match refund {
        Some(r) => {
            json!({"kind": "signatures", "refund_msat": r.refund_msat,
                   "residual_msat": r.residual_msat, "signatures": r.signed})
        }
        None => {
            let bal = s.ledger.get(id)?.map(|l| l.balance_msat).unwrap_or(0);
            json!({"kind": "kept", "refund_msat": whole_sat(bal),
                   "residual_msat": bal % 1000,
                   "how": "POST /v1/leases/{id}/stop with outputs and the token"})
        }
    };
    let body = json!({
        "error": {"code": "boot_failed", "message": format!("the guest did not boot: {why}")},
        "lease_id": id,
        "token": token,
        "token_seq": token_seq,
        "state": state::STOPPED,
        "stop_reason": reason::BOOT_FAILED,
        "refund": refund_json,
        "boot": boot,
    });
    let mut resp = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(1u32));
    Ok(resp)
}

/// The part of a balance a sat-denominated refund can carry.
fn whole_sat(msat: u64) -> u64 {
    msat - msat % 1000
}

/// Refunds a lease's balance onto `outputs` (once, in one ledger transaction); the sub-sat
/// remainder stays with the host as the lease's recorded residual.
fn refund_with(
    s: &AppState,
    id: &str,
    outputs: &[BlindedMessage],
) -> Result<Refund<Vec<BlindSignature>>, ApiError> {
    let r = s
        .ledger
        .refund(id, |msat| s.mint.change(msat, outputs))
        .map_err(spent_error)?;
    let r = r.map_err(credit_error)?;
    s.metrics.refunded(r.refund_msat, r.residual_msat);
    Ok(r)
}

pub fn lease_json(s: &AppState, l: &LeaseRow) -> Value {
    let boot: Value = l
        .boot_json
        .as_deref()
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or(Value::Null);
    let remaining = if l.state == state::STOPPED {
        0
    } else {
        metering::remaining_s(s.prices, u64::from(l.vcpus), l.mem_mib, l.balance_msat)
    };
    json!({
        "lease_id": l.id,
        "state": l.state,
        "stop_reason": l.stop_reason,
        "vcpus": l.vcpus,
        "mem_mib": l.mem_mib,
        "image": l.image,
        "balance_msat": l.balance_msat,
        "used": {"vcpu_us": l.used_vcpu_us, "mem_mib_us": l.used_mem_mib_us,
                 "cgroup_cpu_us": s.supervisor.isolation().cgroup_cpu_us(&l.id)},
        "estimated_remaining_s": remaining,
        "debited_msat": l.debited_msat,
        "refunded_msat": l.refunded_msat,
        "residual_msat": l.residual_msat,
        "created_at": l.created_at,
        "updated_at": l.updated_at,
        "boot": boot,
        "network": s.supervisor.isolation().network_info(&l.id),
    })
}

pub async fn show(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let l = lease_for(&s, &headers, &id)?;
    Ok(Json(lease_json(&s, &l)))
}

pub async fn list(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
) -> Result<Json<Value>, ApiError> {
    require_operator(&s, &peer)?;
    let leases: Vec<Value> = s.ledger.list()?.iter().map(|l| lease_json(&s, l)).collect();
    Ok(Json(json!({ "leases": leases })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopupRequest {
    pub payment: PaymentBody,
}

pub async fn topup(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<TopupRequest>,
) -> Result<Json<Value>, ApiError> {
    let l = lease_for(&s, &headers, &id)?;
    if l.refunded_msat.is_some() {
        return Err(ApiError::conflict(
            "state_conflict",
            format!("lease {id} was refunded; it takes no more payments"),
        ));
    }
    let credit = verify_payment(&s, req.payment).await?;
    let s2 = s.clone();
    let id2 = id.clone();
    let kind = metric_kind(&credit);
    let out = blocking(move || {
        s2.ledger.topup(&id2, &credit).map_err(|e| {
            count_refused_claim(&s2, kind, &e);
            spent_error(e)
        })
    })
    .await?;
    if out.resumed {
        if let Err(e) =
            crate::vmm_control::request(std::path::Path::new(&l.control_path), "resume", None).await
        {
            tracing::warn!(lease = %id, error = %e, "resume after top-up failed");
        }
    }
    let l = s.ledger.get(&id)?.ok_or_else(ApiError::unauthorized)?;
    let mut body = lease_json(&s, &l);
    body["resumed"] = Value::Bool(out.resumed);
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    #[serde(default)]
    pub outputs: Option<Vec<BlindedMessage>>,
}

pub async fn stop(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<StopRequest>,
) -> Result<Json<Value>, ApiError> {
    let l = lease_for(&s, &headers, &id)?;
    if l.refunded_msat.is_some() {
        return Err(ApiError::conflict(
            "already_refunded",
            format!("lease {id} was already stopped and refunded"),
        ));
    }
    let was_live = l.state != state::STOPPED;
    let s2 = s.clone();
    let id2 = id.clone();
    let body = blocking(move || {
        let body = match req.outputs {
            Some(outs) => {
                let r = refund_with(&s2, &id2, &outs)?;
                json!({"state": state::STOPPED, "refund_msat": r.refund_msat,
                       "refund_sat": r.refund_msat / 1000,
                       "residual_msat": r.residual_msat,
                       "change_outputs_needed": Mint::change_outputs_needed(r.refund_msat),
                       "signatures": r.signed})
            }
            None => {
                s2.ledger.mark_stopped(&id2, reason::TENANT, None)?;
                let bal = s2.ledger.get(&id2)?.map(|l| l.balance_msat).unwrap_or(0);
                json!({"state": state::STOPPED, "refund_msat": whole_sat(bal),
                       "refund_sat": bal / 1000,
                       "residual_msat": bal % 1000,
                       "change_outputs_needed": Mint::change_outputs_needed(bal),
                       "refund": "kept: POST again with that many outputs to collect it"})
            }
        };
        Ok(body)
    })
    .await?;
    if was_live {
        stop_guest(&s, &l);
    }
    Ok(Json(body))
}

/// Frees the lease's slot and stops its guest off the request path; the stop is counted
/// in `s.stops` so a shutdown right after still carries it out.
pub fn stop_guest(s: &Shared, l: &LeaseRow) {
    s.capacity().release(&l.id);
    let target = crate::guest_stop::StopTarget {
        lease_id: l.id.clone(),
        control: std::path::PathBuf::from(&l.control_path),
        pid: l.pid,
    };
    let isolation = std::sync::Arc::clone(s.supervisor.isolation());
    s.stops
        .spawn(crate::guest_stop::carry_out(isolation, target));
}

pub async fn console(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let l = lease_for(&s, &headers, &id)?;
    let text = read_tail(std::path::Path::new(&l.console_path), MAX_CONSOLE)
        .await
        .map_err(|e| ApiError::internal(format!("console file: {e}")))?;
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

#[cfg(test)]
mod tests {
    use super::ssh_key_word;

    #[test]
    fn ssh_keys_become_one_command_line_word() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBase64Blob+/= me@laptop";
        assert_eq!(
            ssh_key_word(key).as_deref(),
            Some("coinop.ssh_key=ssh-ed25519:AAAAC3NzaC1lZDI1NTE5AAAAIBase64Blob+/="),
            "the comment is dropped"
        );
        assert_eq!(
            ssh_key_word("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 x;reboot").as_deref(),
            Some("coinop.ssh_key=ssh-ed25519:AAAAC3NzaC1lZDI1NTE5"),
            "a comment never reaches the command line"
        );
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-ed25519 short",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5;reboot",
            "ssh;x AAAAC3NzaC1lZDI1NTE5AAAA",
            "ssh ed25519 AAAAC3NzaC1lZDI1NTE5AAAA",
        ] {
            assert_eq!(ssh_key_word(bad), None, "{bad:?}");
        }
        assert!(ssh_key_word(&"A".repeat(9000)).is_none(), "at most 8 KiB");
    }
}
