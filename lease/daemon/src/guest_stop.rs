//! Carrying out one accepted guest stop: ask the VMM to stop on its control socket, wait
//! for the process to end, and kill it when it does not answer or does not end in time (a
//! wedged, starved or SIGSTOPped VMM). Then its jail and cgroup go, and the ledger records
//! the VMM gone. The process is known by its pid and start time
//! ([`crate::vmm_process`]), so a pid the kernel gave to another process since is never
//! signalled, and a zombie counts as ended.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::Shared;
use crate::isolation::Isolation;
use crate::ledger::{LeaseRow, Ledger};
use crate::vmm_process::{ProcStat, VmmProcess};
use vmm_protocol::client;
use vmm_protocol::Request;

/// How long a VMM gets to end after its `stop` reply (or a failed request) before SIGKILL.
const EXIT_WAIT: Duration = Duration::from_secs(3);
/// How long a SIGKILLed VMM gets to disappear.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// The VMM's process name (`comm`), jailed or not.
const VMM_COMM: &str = "coinop-vmm";

/// One guest to stop.
#[derive(Debug, Clone)]
pub struct StopTarget {
    pub lease_id: String,
    pub control: PathBuf,
    /// The VMM process as the ledger records it, when it does.
    pub vmm: Option<VmmProcess>,
}

impl StopTarget {
    /// The guest of lease `l`.
    pub fn of(l: &LeaseRow) -> StopTarget {
        StopTarget {
            lease_id: l.id.clone(),
            control: PathBuf::from(&l.control_path),
            vmm: l.vmm(),
        }
    }
}

/// Frees the lease's slot and stops its guest off the request path; the stop is counted
/// in `s.stops` so a shutdown right after still carries it out. A stop of the same lease
/// already under way is not started twice.
pub fn stop_guest(s: &Shared, l: &LeaseRow) {
    s.capacity().release(&l.id);
    let isolation = Arc::clone(s.supervisor.isolation());
    let ledger = Arc::clone(&s.ledger);
    s.stops
        .spawn(&l.id, carry_out(isolation, ledger, StopTarget::of(l)));
}

/// Stops the guest for good; returns once its VMM is gone (or could not be killed, which
/// is logged and left for the next tick's reconciliation to try again).
pub async fn carry_out(isolation: Arc<Isolation>, ledger: Arc<Ledger>, t: StopTarget) {
    let asked = client::set_state(&t.control, Request::Stop).await;
    if let Err(e) = &asked {
        if !e.is_gone() {
            tracing::warn!(lease = %t.lease_id, error = %e, "stop request failed; killing the VMM");
        }
    }
    // No pid recorded (coinopd died between the spawn and its record): the lease's cgroup
    // still knows its processes.
    let vmm = t.vmm.or_else(|| {
        let pids = isolation.cgroup_pids(&t.lease_id);
        pids.into_iter().find_map(VmmProcess::of)
    });
    if let Some(vmm) = vmm {
        let wait = if asked.is_ok() {
            EXIT_WAIT
        } else {
            Duration::ZERO
        };
        if !exited_within(&vmm, wait).await {
            if asked.is_ok() {
                tracing::warn!(lease = %t.lease_id, pid = vmm.pid, "VMM still running after its stop reply; killing it");
            }
            if let Err(e) = vmm.kill() {
                tracing::error!(lease = %t.lease_id, pid = vmm.pid, error = %e, "cannot kill the VMM");
            }
            if !exited_within(&vmm, KILL_WAIT).await {
                tracing::error!(lease = %t.lease_id, pid = vmm.pid, "VMM survived SIGKILL");
                return;
            }
        }
    }
    let id = t.lease_id.clone();
    let _ = tokio::task::spawn_blocking(move || isolation.release(&id)).await;
    if let Some(vmm) = t.vmm {
        let id = t.lease_id.clone();
        let recorded = tokio::task::spawn_blocking(move || ledger.mark_vmm_gone(&id, vmm)).await;
        if let Ok(Err(e)) = recorded {
            // The next tick finds the VMM gone and records it then.
            tracing::warn!(lease = %t.lease_id, error = %e, "recording the VMM's end");
        }
    }
}

/// Waits until `vmm` no longer runs, for at most `limit`.
async fn exited_within(vmm: &VmmProcess, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !vmm.is_running() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether `pid` is a live (not zombie) coinop-vmm process, whichever it is: the test
/// harness's view, and coinopd's for a process found in a lease's cgroup (which it then
/// follows by pid and start time).
pub fn vmm_running(pid: i32) -> bool {
    ProcStat::read(pid).is_some_and(|s| s.comm == VMM_COMM && s.is_live())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_process_is_not_a_vmm() {
        assert!(!vmm_running(std::process::id() as i32));
    }
}
