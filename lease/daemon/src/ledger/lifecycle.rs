//! A lease's guest comes and goes: its VMM spawned (pid and start time, so that a restart
//! finds that very process again), the boot that succeeded (`running`), the stop (`stopped`,
//! with its reason), and the VMM's end (`vmm_gone`). A stopped lease whose VMM is not yet
//! recorded gone is one whose VMM coinopd still has to make sure of (see
//! [`Ledger::stopped_with_vmm`]).

use coinop_proto::{LeaseState, StopReason};
use rusqlite::params;

use crate::clock::{unix_s, Now};
use crate::vmm_process::VmmProcess;

use super::lease_rows::stored_counter;
use super::stamps::Column;
use super::{Ledger, LedgerError, UsageBaseline};

/// What [`Ledger::mark_guest_ended`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEnded {
    /// The lease was live and is stopped now.
    Stopped,
    /// The lease was stopped already (a tenant's stop, a grace expiry); its VMM is recorded
    /// gone.
    AlreadyStopped,
    /// The VMM is not the one the ledger records for the lease (or there is no such lease):
    /// nothing changed.
    NotRecorded,
}

impl Ledger {
    /// Records the VMM just spawned for lease `id` (its pid and start time) and, from a
    /// spawn, what its boot figures were then (`spawn_json`; `None` keeps what is recorded);
    /// from here on a restart finds it by these.
    pub fn record_vmm(
        &self,
        id: &str,
        vmm: VmmProcess,
        spawn_json: Option<&str>,
    ) -> Result<(), LedgerError> {
        self.with_tx(|tx| {
            tx.prepare_cached(
                "UPDATE leases SET pid = ?2, vmm_start_ticks = ?3, vmm_gone = 0, updated_at = ?4,
                 spawn_json = COALESCE(?5, spawn_json)
                 WHERE id = ?1",
            )?
            .execute(params![id, vmm.pid, vmm.start_ticks, unix_s(), spawn_json])?;
            Ok(())
        })
    }

    /// Records that lease `id`'s VMM `vmm` has ended, if it is still the one recorded;
    /// returns whether it was.
    pub fn mark_vmm_gone(&self, id: &str, vmm: VmmProcess) -> Result<bool, LedgerError> {
        self.with_tx(|tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE leases SET vmm_gone = 1
                     WHERE id = ?1 AND pid IS ?2 AND vmm_start_ticks IS ?3 AND vmm_gone = 0",
                )?
                .execute(params![id, vmm.pid, vmm.start_ticks])?;
            Ok(n == 1)
        })
    }

    /// The guest's VMM `vmm` (the one recorded, or `None`: whichever is) ended by itself:
    /// the lease stops with `reason` unless it is stopped already, and the VMM is recorded
    /// gone, in one transaction.
    pub fn mark_guest_ended(
        &self,
        id: &str,
        reason: StopReason,
        vmm: Option<VmmProcess>,
    ) -> Result<GuestEnded, LedgerError> {
        self.with_tx(|tx| {
            let (pid, start) = vmm.map_or((None, None), |v| (Some(v.pid), v.start_ticks));
            // A VMM that is not the recorded one (a stale report) changes nothing.
            let n = tx
                .prepare_cached(
                    "UPDATE leases SET vmm_gone = 1
                     WHERE id = ?1 AND (?2 IS NULL OR (pid IS ?2 AND vmm_start_ticks IS ?3))",
                )?
                .execute(params![id, pid, start])?;
            if n == 0 {
                return Ok(GuestEnded::NotRecorded);
            }
            let n = tx
                .prepare_cached(
                    "UPDATE leases SET state = ?2, stop_reason = ?3, updated_at = ?4
                     WHERE id = ?1 AND state != ?2",
                )?
                .execute(params![id, LeaseState::Stopped, reason, unix_s()])?;
            Ok(if n == 1 {
                GuestEnded::Stopped
            } else {
                GuestEnded::AlreadyStopped
            })
        })
    }

    /// Records a successful boot: pid, figures, state `running`; its metering starts from
    /// the baseline its row holds (committed with it: a restart that adopts a booting
    /// lease finishes its boot with this).
    pub fn mark_running(
        &self,
        id: &str,
        pid: Option<i32>,
        boot_json: &str,
    ) -> Result<(), LedgerError> {
        self.set_running(id, pid, boot_json, None)
    }

    /// Marks a `booting` lease running on a VMM whose usage counters its metering starts
    /// from (`baseline`: zero for a VMM started for it, the reading at the hand-over for a
    /// warm restore's): [`Ledger::mark_running`] for the create that booted it, which knows
    /// which VMM the lease got in the end.
    pub fn mark_running_from(
        &self,
        id: &str,
        pid: Option<i32>,
        boot_json: &str,
        baseline: UsageBaseline,
    ) -> Result<(), LedgerError> {
        self.set_running(id, pid, boot_json, Some(baseline))
    }

    /// A `booting` lease's metering starts from zero again: the VMM whose counters its
    /// baseline holds (a warm restore's, read at the hand-over) is gone, and the VMM it boots
    /// on next starts its counters from zero. Written before that VMM is spawned, so a
    /// restart that adopts the lease mid-boot ([`Ledger::mark_running`] keeps the row's
    /// baseline) meters the new VMM from its start. Returns whether the row changed (not for
    /// a lease no longer booting).
    pub fn reset_baseline(&self, id: &str) -> Result<bool, LedgerError> {
        self.with_tx(|tx| {
            let at = Now::read();
            let n = tx
                .prepare_cached(
                    "UPDATE leases SET last_vcpu_total_us = 0, last_uptime_us = 0,
                        updated_at = ?2, metered_at_ms = ?4
                     WHERE id = ?1 AND state = ?3",
                )?
                .execute(params![id, at.wall_s(), LeaseState::Booting, at.wall_ms])?;
            if n == 1 {
                self.stamps.wrote(id, Column::MeteredAtMs, at);
            }
            Ok(n == 1)
        })
    }

    /// A booting lease runs, its marks `baseline` if given. Their `metered_at_ms` stays as
    /// the insert or reset set it: the VMM they are the counters of was spawned, or read,
    /// after that, so its counters grew no more than the time since.
    fn set_running(
        &self,
        id: &str,
        pid: Option<i32>,
        boot_json: &str,
        baseline: Option<UsageBaseline>,
    ) -> Result<(), LedgerError> {
        self.with_tx(|tx| {
            let at = Now::read();
            let n = tx
                .prepare_cached(
                    "UPDATE leases SET state = ?2, pid = ?3, boot_json = ?4, updated_at = ?5,
                        funded_at = ?5, last_vcpu_total_us = COALESCE(?7, last_vcpu_total_us),
                        last_uptime_us = COALESCE(?8, last_uptime_us)
                     WHERE id = ?1 AND state = ?6",
                )?
                .execute(params![
                    id,
                    LeaseState::Running,
                    pid,
                    boot_json,
                    at.wall_s(),
                    LeaseState::Booting,
                    baseline.map(|b| stored_counter(b.vcpu_total_us)),
                    baseline.map(|b| stored_counter(b.uptime_us))
                ])?;
            if n == 1 {
                // Funded from here: its grace and its silent window count from now.
                self.stamps.wrote(id, Column::FundedAt, at);
            }
            Ok(())
        })
    }

    /// Marks a lease stopped (if it is not already) with `reason`; returns whether it changed.
    pub fn mark_stopped(
        &self,
        id: &str,
        reason: StopReason,
        boot_json: Option<&str>,
    ) -> Result<bool, LedgerError> {
        self.with_tx(|tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE leases SET state = ?2, stop_reason = ?3, boot_json = COALESCE(?4, boot_json),
                        updated_at = ?5 WHERE id = ?1 AND state != ?2",
                )?
                .execute(params![id, LeaseState::Stopped, reason, boot_json, unix_s()])?;
            Ok(n == 1)
        })
    }
}
