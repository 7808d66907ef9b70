//! A lease's guest comes and goes: the boot that succeeded (`running`) and the stop
//! (`stopped`, with its reason).

use coinop_proto::{LeaseState, StopReason};
use rusqlite::params;

use crate::clock::unix_s;

use super::{Ledger, LedgerError};

impl Ledger {
    /// Records a successful boot: pid, figures, state `running`.
    pub fn mark_running(
        &self,
        id: &str,
        pid: Option<i32>,
        boot_json: &str,
    ) -> Result<(), LedgerError> {
        self.with_tx(|tx| {
            tx.prepare_cached(
                "UPDATE leases SET state = ?2, pid = ?3, boot_json = ?4, updated_at = ?5
                 WHERE id = ?1 AND state = ?6",
            )?
            .execute(params![
                id,
                LeaseState::Running,
                pid,
                boot_json,
                unix_s(),
                LeaseState::Booting
            ])?;
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
