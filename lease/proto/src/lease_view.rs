//! What the API says about one lease: `GET /v1/leases/{id}`, the operator's list, and the
//! lease part of top-up and recovery replies.

use serde::{Deserialize, Serialize};

use crate::lease_state::{LeaseState, StopReason};
use crate::money::Msat;
use crate::network::NetInfo;

/// Boot figures, µs from the request's arrival at the daemon (`boot` in the API).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootFigures {
    pub payment_verified_us: u64,
    pub ledger_committed_us: u64,
    pub vmm_spawned_us: u64,
    pub vcpus_started_us: Option<u64>,
    pub guest_ready_us: Option<u64>,
    /// How the guest started: a cold boot of the image, or a restore of its golden
    /// snapshot. Absent until a VMM was started (and in figures recorded before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<BootStart>,
}

/// How a lease's guest started (`boot.start` in the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootStart {
    /// Booted from the image's kernel.
    Cold,
    /// Restored from the image's golden snapshot (`--image ...,snapshot`).
    Restore,
    /// Restored from the image's golden snapshot ahead of the create (coinopd
    /// `--warm-restores`) and personalised for it: the VMM existed before the request, so
    /// `vmm_spawned_us` is 0 and `vcpus_started_us` absent.
    Warm,
}

/// What a lease used so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Used {
    /// vCPU time, from the VMM's own counters.
    pub vcpu_us: u64,
    /// Memory × time.
    pub mem_mib_us: u64,
    /// The kernel's count of the VMM's CPU time (its cgroup), when it has one.
    pub cgroup_cpu_us: Option<u64>,
}

/// One lease as the API shows it (never its token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    pub lease_id: String,
    pub state: LeaseState,
    pub stop_reason: Option<StopReason>,
    pub vcpus: u32,
    pub mem_mib: u64,
    pub image: String,
    pub balance_msat: Msat,
    pub used: Used,
    /// Seconds the balance lasts at full use; 0 once stopped.
    pub estimated_remaining_s: u64,
    /// While `paused_unfunded`: the unix second from which the lease is stopped unless a
    /// top-up comes first. The grace is the host's `--grace-s`, but never longer than the
    /// lease ran since it was last funded (its boot, or the top-up that resumed it).
    #[serde(default)]
    pub stops_at: Option<i64>,
    /// Taken by metering over the lease's life.
    pub debited_msat: Msat,
    /// Handed back as change (whole sats), once refunded.
    pub refunded_msat: Option<Msat>,
    /// The sub-sat remainder the host kept at the refund.
    pub residual_msat: Option<Msat>,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// Absent (null) until the guest was started.
    pub boot: Option<BootFigures>,
    pub network: Option<NetInfo>,
}

/// `GET /v1/leases` (operator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseList {
    pub leases: Vec<LeaseView>,
}
