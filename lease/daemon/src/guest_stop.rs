//! Carrying out one accepted guest stop: ask the VMM to stop on its control socket, wait
//! for the process to end, and kill it when it does not answer or does not end in time (a
//! wedged or starved VMM). Then its jail and cgroup go.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::isolation::Isolation;
use vmm_protocol::client;
use vmm_protocol::Request;

/// How long a VMM gets to end after its `stop` reply (or a failed request) before SIGKILL.
const EXIT_WAIT: Duration = Duration::from_secs(3);
/// How long a SIGKILLed VMM gets to disappear.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// The VMM's process name (`comm`), jailed or not: a pid that says otherwise was reused.
const VMM_COMM: &str = "coinop-vmm";

/// One guest to stop.
#[derive(Debug, Clone)]
pub struct StopTarget {
    pub lease_id: String,
    pub control: PathBuf,
    /// The VMM's pid in coinopd's namespace, when the ledger has it.
    pub pid: Option<i32>,
}

/// Stops the guest for good; returns once its VMM is gone (or could not be killed, which
/// is logged).
pub async fn carry_out(isolation: Arc<Isolation>, t: StopTarget) {
    let asked = client::set_state(&t.control, Request::Stop).await;
    if let Err(e) = &asked {
        if !e.is_gone() {
            tracing::warn!(lease = %t.lease_id, error = %e, "stop request failed; killing the VMM");
        }
    }
    if let Some(pid) = t.pid {
        let wait = if asked.is_ok() {
            EXIT_WAIT
        } else {
            Duration::ZERO
        };
        if !exited_within(pid, wait).await {
            if asked.is_ok() {
                tracing::warn!(lease = %t.lease_id, pid, "VMM still running after its stop reply; killing it");
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            if !exited_within(pid, KILL_WAIT).await {
                tracing::error!(lease = %t.lease_id, pid, "VMM survived SIGKILL");
                return;
            }
        }
    }
    let id = t.lease_id;
    let _ = tokio::task::spawn_blocking(move || isolation.release(&id)).await;
}

/// Waits until `pid` is no longer a running coinop-vmm, for at most `limit`.
async fn exited_within(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !vmm_running(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether `pid` is a live (not zombie) coinop-vmm process.
pub fn vmm_running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat_is_running_vmm(&stat)
}

/// Parses `/proc/PID/stat`: `pid (comm) state ...`; comm may itself hold spaces and ')'.
fn stat_is_running_vmm(stat: &str) -> bool {
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].split_whitespace().next();
    comm == VMM_COMM && !matches!(state, Some("Z" | "X" | "x"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_vmm_counts_and_a_zombie_or_other_process_does_not() {
        assert!(stat_is_running_vmm("123 (coinop-vmm) R 1 2 3"));
        assert!(stat_is_running_vmm("123 (coinop-vmm) S 1 2 3"));
        assert!(!stat_is_running_vmm("123 (coinop-vmm) Z 1 2 3"));
        assert!(!stat_is_running_vmm("123 (bash) R 1 2 3"));
        assert!(!stat_is_running_vmm("123 (a) coinop-vmm) R 1"));
        assert!(!stat_is_running_vmm("garbage"));
    }

    #[test]
    fn this_test_process_is_not_a_vmm() {
        assert!(!vmm_running(std::process::id() as i32));
    }
}
