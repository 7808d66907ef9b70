//! The `leases` table read back as [`LeaseRow`]s (one lease, all of them, the live ones),
//! and [`NewLease`], what a create inserts.

use coinop_proto::{LeaseState, StopReason};
use rusqlite::{Connection, OptionalExtension, Row};
use serde::Serialize;

use super::{Ledger, LedgerError};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LeaseRow {
    pub id: String,
    #[serde(skip)]
    pub token_hash: Vec<u8>,
    pub vcpus: u32,
    pub mem_mib: u64,
    pub image: String,
    pub cmdline: String,
    pub state: LeaseState,
    pub stop_reason: Option<StopReason>,
    pub balance_msat: u64,
    pub carry_units: u64,
    pub used_vcpu_us: u64,
    pub used_mem_mib_us: u64,
    pub last_vcpu_total_us: u64,
    pub last_uptime_us: u64,
    pub pid: Option<i32>,
    pub control_path: String,
    pub console_path: String,
    pub paused_at: Option<i64>,
    pub refunded_msat: Option<u64>,
    /// msat metering has taken from this lease over its life.
    pub debited_msat: u64,
    /// Sub-sat remainder of the refund, kept by the host (set together with `refunded_msat`).
    pub residual_msat: Option<u64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub boot_json: Option<String>,
    /// The VMM's start time (`/proc/PID/stat` field 22) recorded with `pid` at its spawn:
    /// together they name the process across restarts of coinopd.
    pub vmm_start_ticks: Option<u64>,
    /// The VMM recorded in `pid` is known to have ended (no VMM of this lease may run).
    pub vmm_gone: bool,
    /// Since when an on-chain payment of the lease is off the best chain (frozen).
    pub reorg_at: Option<i64>,
    /// The boot figures known when the VMM was spawned and its time base
    /// ([`crate::boot_record::SpawnRecord`] as JSON), if the spawn was recorded.
    pub spawn_json: Option<String>,
    /// When the lease last began running on its balance: its boot, or the top-up that
    /// resumed it from `paused_unfunded` (unix s; `None` in rows older than the column).
    /// The time since is measured on the monotonic clock where this coinopd wrote it
    /// (`stamps.rs`).
    pub funded_at: Option<i64>,
    /// When the usage marks (`last_vcpu_total_us`, `last_uptime_us`) were last set: by a
    /// metering tick, or where a VMM's counters become the lease's baseline (its create, a
    /// failed hand-over's reset, a recovery's reboot, a reorg's thaw). Unix ms; `None` only
    /// in a row older than the column ([`LeaseRow::metered_since_ms`]). Nothing a tenant
    /// sends (a top-up, a create's retry, a stop) writes it: a silent VMM's lease with no
    /// reading since coinopd started is billed its memory time from here
    /// ([`crate::scheduler`]), and a reading's growth is held to the time since
    /// (`tick.rs`): measured on the monotonic clock where this coinopd set the marks, on
    /// the wall clock from here only for marks set before it started (`stamps.rs`).
    pub metered_at_ms: Option<i64>,
}

impl LeaseRow {
    /// The lease's VMM process as recorded, if a pid was.
    pub fn vmm(&self) -> Option<crate::vmm_process::VmmProcess> {
        self.pid.map(|pid| crate::vmm_process::VmmProcess {
            pid,
            start_ticks: self.vmm_start_ticks,
        })
    }

    /// When the usage marks were last set (unix ms): [`LeaseRow::metered_at_ms`], or for a
    /// row without it its `updated_at`, the nearest the ledger knew before the column (the
    /// migration that adds the column fills it from there, so no row is expected here).
    pub fn metered_since_ms(&self) -> i64 {
        self.metered_at_ms
            .unwrap_or_else(|| self.updated_at.saturating_mul(1000))
    }
}

#[derive(Debug, Clone)]
pub struct NewLease {
    pub id: String,
    pub token_hash: [u8; 32],
    pub vcpus: u32,
    pub mem_mib: u64,
    pub image: String,
    pub cmdline: String,
    pub control_path: String,
    pub console_path: String,
    /// SHA-256 of the tenant's recovery key, if the create carried one: what a retry of this
    /// create must prove it knows to get the lease back (see [`crate::ledger::recovery`]).
    pub recovery_hash: Option<[u8; 32]>,
    /// The VMM's usage counters its metering starts from: zero for a VMM started for the
    /// lease; a warm restore's VMM ran before its lease, and that time is not the tenant's
    /// ([`crate::warm_restores`]).
    pub baseline: UsageBaseline,
}

/// A VMM's cumulative usage counters at the moment a lease's metering starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageBaseline {
    /// vCPU time, µs (the VMM's `vcpu_total_us`).
    pub vcpu_total_us: u64,
    /// µs since the VMM's time base (its `uptime_us`).
    pub uptime_us: u64,
}

const LEASE_COLUMNS: &str = "id, token_hash, vcpus, mem_mib, image, cmdline, state, stop_reason,
    balance_msat, carry_units, used_vcpu_us, used_mem_mib_us, last_vcpu_total_us,
    last_uptime_us, pid, control_path, console_path, paused_at, refunded_msat, created_at,
    updated_at, boot_json, debited_msat, residual_msat, vmm_start_ticks, vmm_gone, reorg_at,
    spawn_json, funded_at, metered_at_ms";

fn lease_from_row(r: &Row<'_>) -> rusqlite::Result<LeaseRow> {
    Ok(LeaseRow {
        id: r.get(0)?,
        token_hash: r.get(1)?,
        vcpus: r.get(2)?,
        mem_mib: r.get(3)?,
        image: r.get(4)?,
        cmdline: r.get(5)?,
        state: r.get(6)?,
        stop_reason: r.get(7)?,
        balance_msat: r.get(8)?,
        carry_units: r.get(9)?,
        used_vcpu_us: r.get(10)?,
        used_mem_mib_us: r.get(11)?,
        last_vcpu_total_us: r.get(12)?,
        last_uptime_us: r.get(13)?,
        pid: r.get(14)?,
        control_path: r.get(15)?,
        console_path: r.get(16)?,
        paused_at: r.get(17)?,
        refunded_msat: r.get(18)?,
        created_at: r.get(19)?,
        updated_at: r.get(20)?,
        boot_json: r.get(21)?,
        debited_msat: r.get(22)?,
        residual_msat: r.get(23)?,
        vmm_start_ticks: r.get(24)?,
        vmm_gone: r.get(25)?,
        reorg_at: r.get(26)?,
        spawn_json: r.get(27)?,
        funded_at: r.get(28)?,
        metered_at_ms: r.get(29)?,
    })
}

pub(super) fn get_in(conn: &Connection, id: &str) -> Result<Option<LeaseRow>, LedgerError> {
    let sql = format!("SELECT {LEASE_COLUMNS} FROM leases WHERE id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id], lease_from_row)
        .optional()?)
}

pub(super) fn require_in(conn: &Connection, id: &str) -> Result<LeaseRow, LedgerError> {
    get_in(conn, id)?.ok_or_else(|| LedgerError::NoLease(id.to_string()))
}

impl Ledger {
    pub fn get(&self, id: &str) -> Result<Option<LeaseRow>, LedgerError> {
        self.with_conn(|c| get_in(c, id))
    }

    pub fn list(&self) -> Result<Vec<LeaseRow>, LedgerError> {
        self.with_conn(|c| {
            let sql = format!("SELECT {LEASE_COLUMNS} FROM leases ORDER BY created_at, id");
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map([], lease_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Leases that may have a guest: booting, running or paused.
    pub fn live(&self) -> Result<Vec<LeaseRow>, LedgerError> {
        self.select_where("state != ?1")
    }

    /// Stopped leases whose recorded VMM is not known to be gone: a VMM that must not run
    /// (coinopd may have died between the stop's commit and the VMM's end). Only rows with
    /// a start time: a bare pid from an older ledger may name another process by now.
    pub fn stopped_with_vmm(&self) -> Result<Vec<LeaseRow>, LedgerError> {
        self.select_where(
            "state = ?1 AND pid IS NOT NULL AND vmm_start_ticks IS NOT NULL AND vmm_gone = 0",
        )
    }

    /// Leases matching `cond`, in which `?1` is the state `stopped`.
    fn select_where(&self, cond: &str) -> Result<Vec<LeaseRow>, LedgerError> {
        self.with_conn(|c| {
            let sql =
                format!("SELECT {LEASE_COLUMNS} FROM leases WHERE {cond} ORDER BY created_at, id");
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map([LeaseState::Stopped], lease_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

/// A usage counter as the `leases` table holds it (SQLite integers are i64). What a VMM
/// reports is not trusted (a guest may have taken its VMM over): a value beyond i64 would
/// fail the whole transaction it is written in, and a tick's transaction carries every
/// lease's debit, so one lease's absurd counter would stop the billing of all. Saturated
/// instead: the lease that reported it is billed all its balance, and no other is touched.
pub(crate) fn stored_counter(us: u64) -> i64 {
    i64::try_from(us).unwrap_or(i64::MAX)
}
