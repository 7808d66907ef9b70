//! The lease flows behind the HTTP handlers, as a service layer: each takes parsed request
//! types (`coinop_proto::requests`), does the work against the ledger, the mint, the chain
//! and the supervisor, and returns a typed outcome or a [`LeaseError`]. Which HTTP status an
//! outcome or an error gets is decided in [`crate::http`] only.
//!
//! | flow | module | outcome |
//! |---|---|---|
//! | create: pay, commit, boot; or recover a lost reply | [`create`] | [`CreateOutcome`] |
//! | top up | [`topup`] | `TopupResponse` |
//! | prove a frozen lease's payment mined again after a reorg | [`reproof`] | `TopupResponse` |
//! | stop, with or without a refund as blind-signed change | [`stop`] | `StopResponse` |
//! | what a lease looks like | [`view`] | `LeaseView` |
//! | checking a payment before anything is claimed | [`payment_intake`] | `Credit` |
//! | checking a spec against the host (create and quote) | [`spec`] | `()` |

pub mod create;
mod error;
pub mod payment_intake;
mod reproof;
pub mod spec;
pub mod stop;
pub mod topup;

pub use create::{create, CreateOutcome};
pub use error::LeaseError;
pub use stop::stop;
pub use topup::topup;

use coinop_proto::lease_view::{LeaseView, Used};
use coinop_proto::{BootFigures, LeaseState, Msat};
use payment::metering;

use crate::app::AppState;
use crate::clock::monotonic_us;
use crate::ledger::LeaseRow;

/// µs since the request's arrival.
fn since(arrival: u64) -> u64 {
    monotonic_us().saturating_sub(arrival)
}

/// Runs a blocking ledger or verification step off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LeaseError> + Send + 'static,
) -> Result<T, LeaseError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LeaseError::Worker(e.to_string()))?
}

/// Runs a flow to its end even if the request that started it goes away: hyper drops a
/// handler's future when its client disconnects, and a flow cut off between its ledger
/// commit and what follows (telling the guest) would leave the two apart. The answer of a
/// flow whose client left is dropped; the client's retry gets it again (`lease/openapi.yaml`).
pub async fn to_completion<T: Send + 'static>(
    flow: impl std::future::Future<Output = Result<T, LeaseError>> + Send + 'static,
) -> Result<T, LeaseError> {
    tokio::spawn(flow)
        .await
        .map_err(|e| LeaseError::Worker(e.to_string()))?
}

/// Runs a short blocking step (one durable SQLite commit) on this thread, telling a
/// multi-threaded runtime to move its other tasks elsewhere meanwhile: no hop to the
/// blocking pool and back on the create path. A current-thread runtime (some tests) cannot
/// do that, so there the step goes to the pool.
async fn blocking_here<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LeaseError> + Send + 'static,
) -> Result<T, LeaseError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        tokio::task::block_in_place(f)
    } else {
        blocking(f).await
    }
}

/// One lease as the API shows it (never its token).
pub fn view(s: &AppState, l: &LeaseRow) -> LeaseView {
    // The ledger wrote this JSON itself; an unreadable record shows as "no figures".
    let boot: Option<BootFigures> = l
        .boot_json
        .as_deref()
        .and_then(|j| serde_json::from_str(j).ok());
    let remaining = if l.state == LeaseState::Stopped {
        0
    } else {
        metering::remaining_s(s.prices, u64::from(l.vcpus), l.mem_mib, l.balance_msat)
    };
    let stops_at = match (l.state, l.paused_at) {
        (LeaseState::PausedUnfunded, Some(paused)) => Some(paused.saturating_add(
            crate::ledger::tick::grace_of(s.config.grace_s, Some(paused), l.funded_at),
        )),
        _ => None,
    };
    let isolation = s.supervisor.isolation();
    LeaseView {
        lease_id: l.id.clone(),
        state: l.state,
        stop_reason: l.stop_reason,
        vcpus: l.vcpus,
        mem_mib: l.mem_mib,
        image: l.image.clone(),
        balance_msat: Msat::from_msat(l.balance_msat),
        used: Used {
            vcpu_us: l.used_vcpu_us,
            mem_mib_us: l.used_mem_mib_us,
            cgroup_cpu_us: isolation.cgroup_cpu_us(&l.id),
        },
        estimated_remaining_s: remaining,
        stops_at,
        debited_msat: Msat::from_msat(l.debited_msat),
        refunded_msat: l.refunded_msat.map(Msat::from_msat),
        residual_msat: l.residual_msat.map(Msat::from_msat),
        created_at: l.created_at,
        updated_at: l.updated_at,
        boot,
        network: isolation.network_info(&l.id),
    }
}
