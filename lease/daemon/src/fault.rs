//! Test-only fault injection for crash-safety tests: when `COINOPD_FAULT` names a point
//! (`POINT` or `POINT:N` for its N-th pass, counted from 1), coinopd aborts the whole process
//! there, as `kill -9` would at that instant: no destructors, no flush, no reply. Unset (the
//! normal case) a point costs one relaxed atomic load.
//!
//! `COINOPD_FAULT_DELAY=POINT:MS` instead makes a request wait `MS` ms at the points that
//! [`delay`] marks (every pass), so that a test can drop its connection there: what a
//! client that goes away mid-request leaves behind. Several points, each with its wait,
//! are separated by commas (`POINT:MS,POINT:MS`), for a race between two requests that
//! must each be held at its own step.
//!
//! `COINOPD_FAULT_LOST=POINT` (or `POINT:N`) makes the fleet store's answer to a call that
//! succeeded count as lost at the points that [`lost`] marks: coinopd carries on as if the
//! connection had dropped before the answer came (`Unavailable`), although the store did
//! the work. What a real connection loss or operation timeout leaves behind, on demand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Named places where a crash is most interesting.
pub mod point {
    /// A create's payment was fenced in the fleet store (`--store`); the ledger has not
    /// committed the lease.
    pub const FLEET_FENCED: &str = "fleet_fenced";
    /// A swap's or on-chain mint's inputs were fenced and its outputs reserved in the fleet
    /// store (`--store`), or a lease refund's change (or the mint of a NUT-30 quote made
    /// before the host joined) reserved there; the local spent set (or the refund, or the
    /// quote's ledger row) has not committed them. For swaps and mints also a
    /// [`delay`](super::delay) point: a test can hold one request there. Also a
    /// [`lost`](super::lost) point (every reservation, refunds' included): the store
    /// reserved the outputs, and the request carries on as if its answer had been lost.
    pub const FLEET_OUTPUTS_RESERVED: &str = "fleet_outputs_reserved";
    /// A swap's or on-chain mint's first settle (of its outputs' reservation, or of its
    /// inputs' fence) is done, the other not yet. A [`delay`](super::delay) point only.
    pub const FLEET_SETTLING: &str = "fleet_settling";
    /// A fence's claim was granted by the fleet store. A [`lost`](super::lost) point only:
    /// the fence carries on as if the store's answer had been lost.
    pub const FLEET_CLAIMED: &str = "fleet_claimed";
    /// A background pass took a fence whose settle was left for later (a lost claim's
    /// release, a settle the store refused) and has not settled it yet. A
    /// [`delay`](super::delay) point only: a test can hold the pass there, before each
    /// fence.
    pub const FLEET_BACKGROUND_SETTLE: &str = "fleet_background_settle";
    /// A create's ledger transaction committed; no guest spawned, no reply sent.
    pub const CREATE_COMMITTED: &str = "create_committed";
    /// A create's VMM is spawned and recorded in the ledger (pid, start time, the boot
    /// figures so far); its guest may still be booting, no reply sent.
    pub const CREATE_VMM_RECORDED: &str = "create_vmm_recorded";
    /// A create's agent guest asked for its personalisation line
    /// (`awaiting_personalisation`); the line is not sent, no reply sent. Also a
    /// [`delay`](super::delay) point: a test can `kill -9` coinopd there.
    pub const CREATE_AWAITING_PERSONALISATION: &str = "create_awaiting_personalisation";
    /// A create's agent guest was sent its personalisation line and the VMM accepted it;
    /// `guest_ready` not yet seen, no reply sent.
    pub const CREATE_PERSONALISATION_SENT: &str = "create_personalisation_sent";
    /// A golden snapshot build's VMM is spawned and named in its marker beside the staging
    /// directory ([`crate::golden_snapshot::build_vmm_marker`]); the snapshot not taken.
    /// Also a [`delay`](super::delay) point: a test can stop coinopd mid-build there.
    pub const GOLDEN_VMM_RECORDED: &str = "golden_vmm_recorded";
    /// A warm restore's VMM is being given up (no create took it, or the create that took
    /// it found it not answering); the VMM not yet killed, its confinement not yet
    /// removed. A [`delay`](super::delay) point only: a test can make that end late.
    pub const WARM_DISCARD: &str = "warm_discard";
    /// A warm restore's VMM waits for its line, named in its marker, and is not yet in the
    /// pool. A [`delay`](super::delay) point only: a test can stop coinopd there.
    pub const WARM_BUILT: &str = "warm_built";
    /// A create's guest reported `guest_ready`; not yet marked running, no reply sent.
    pub const CREATE_GUEST_READY: &str = "create_guest_ready";
    /// A create's boot failed and its refund onto the request's outputs committed; the
    /// signatures are not sent.
    pub const CREATE_REFUNDED: &str = "create_refunded";
    /// An on-chain mint's outpoints were claimed with its receipt; the signatures are not
    /// sent.
    pub const MINT_COMMITTED: &str = "mint_committed";
    /// A swap's inputs were claimed with its receipt; the signatures are not sent.
    pub const SWAP_COMMITTED: &str = "swap_committed";
    /// A tick read every guest's usage; the debit is not committed.
    pub const TICK_READ: &str = "tick_read";
    /// A tick's debit committed; pauses and stops not yet sent to the guests.
    pub const TICK_COMMITTED: &str = "tick_committed";
    /// A tick committed at least one grace-expiry stop; the guests not yet told (passes are
    /// counted only on such ticks, unlike [`TICK_COMMITTED`]).
    pub const TICK_STOP_COMMITTED: &str = "tick_stop_committed";
    /// A tenant's stop committed (and its refund, if any); the guest not yet told, no reply
    /// sent.
    pub const STOP_COMMITTED: &str = "stop_committed";
    /// A top-up committed (a paused lease is `running` again); the guest not yet resumed, no
    /// reply sent.
    pub const TOPUP_COMMITTED: &str = "topup_committed";
}

/// The environment variable naming the point.
pub const ENV: &str = "COINOPD_FAULT";

struct Armed {
    point: String,
    nth: u64,
    passes: AtomicU64,
}

/// The environment variable naming a point whose store answer is lost.
pub const LOST_ENV: &str = "COINOPD_FAULT_LOST";

impl Armed {
    /// `POINT` or `POINT:N` as `env` gives it, if set.
    fn from_env(env: &str) -> Option<Armed> {
        let spec = std::env::var(env).ok()?;
        let (point, nth) = match spec.split_once(':') {
            Some((p, n)) => (p.to_string(), n.parse().unwrap_or(1)),
            None => (spec, 1),
        };
        Some(Armed {
            point,
            nth,
            passes: AtomicU64::new(0),
        })
    }

    /// The pass counted at `name`, if it is the chosen one.
    fn chosen(&self, name: &str) -> Option<u64> {
        if self.point != name {
            return None;
        }
        let pass = self.passes.fetch_add(1, Ordering::Relaxed) + 1;
        (pass == self.nth).then_some(pass)
    }
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED.get_or_init(|| Armed::from_env(ENV)).as_ref()
}

/// Aborts the process if `COINOPD_FAULT` names `name` and this is the chosen pass.
pub fn hit(name: &str) {
    let Some(pass) = armed().and_then(|a| a.chosen(name)) else {
        return;
    };
    crate::log_writer::say(&format!("coinopd: {ENV}={name}:{pass}: aborting here"));
    std::process::abort();
}

/// Whether the store's answer at `name` is to be taken as lost (`COINOPD_FAULT_LOST` names
/// it and this is the chosen pass); the caller then reports `Unavailable` as a dropped
/// connection would.
pub fn lost(name: &str) -> bool {
    static LOST: OnceLock<Option<Armed>> = OnceLock::new();
    let Some(pass) = LOST
        .get_or_init(|| Armed::from_env(LOST_ENV))
        .as_ref()
        .and_then(|a| a.chosen(name))
    else {
        return false;
    };
    crate::log_writer::say(&format!(
        "coinopd: {LOST_ENV}={name}:{pass}: the store's answer is taken as lost"
    ));
    true
}

/// The environment variable naming a point to wait at, and for how long.
pub const DELAY_ENV: &str = "COINOPD_FAULT_DELAY";

/// Waits at `name` if `COINOPD_FAULT_DELAY` names it (see the module doc); else returns at
/// once.
pub async fn delay(name: &str) {
    static DELAY: OnceLock<Vec<(String, std::time::Duration)>> = OnceLock::new();
    let armed = DELAY.get_or_init(|| {
        let Ok(spec) = std::env::var(DELAY_ENV) else {
            return Vec::new();
        };
        // A malformed entry is left out, as a malformed spec always was.
        spec.split(',')
            .filter_map(|one| {
                let (point, ms) = one.split_once(':')?;
                Some((
                    point.to_string(),
                    std::time::Duration::from_millis(ms.parse().ok()?),
                ))
            })
            .collect()
    });
    if let Some((_, wait)) = armed.iter().find(|(point, _)| point == name) {
        tokio::time::sleep(*wait).await;
    }
}
