//! The metering scheduler: every tick, read each live guest's cumulative usage from its
//! control socket, debit all leases in one ledger transaction, then pause guests that ran
//! out of money and stop those whose grace period ended. Also handles guest exits and, at
//! start-up, re-adopts guests that outlived a previous coinopd.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::app::Shared;
use crate::capacity::Totals;
use crate::leases::stop_guest;
use crate::ledger::{LeaseRow, Sample, TickAction};
use crate::supervisor::{pid_alive, GuestExit};
use coinop_proto::{LeaseState, StopReason};
use vmm_protocol::client::{self, ControlError};
use vmm_protocol::{Request, Usage, VmState};

/// Finds the guests of leases the ledger says are live. Guests that answer on their
/// control socket are adopted (capacity held, metering continues from the last committed
/// counters); the rest are marked stopped (`guest_exit`, or `boot_failed` if the create
/// request never finished).
pub async fn adopt(s: &Shared) -> Result<(usize, usize), crate::ledger::LedgerError> {
    let mut adopted = 0;
    let mut dead = 0;
    for l in s.ledger.live()? {
        let path = PathBuf::from(&l.control_path);
        match client::status(&path).await {
            Ok(v) => {
                adopted += 1;
                s.capacity().adopt(
                    &l.id,
                    Totals {
                        vcpus: l.vcpus,
                        mib: l.mem_mib,
                    },
                );
                // A lease committed but not yet marked running when coinopd died.
                if l.state == LeaseState::Booting {
                    s.ledger.mark_running(&l.id, l.pid, "{}")?;
                }
                // Bring the guest in line with the ledger (e.g. paused_unfunded).
                let vm_paused = v.state == VmState::Paused;
                if l.state == LeaseState::PausedUnfunded && !vm_paused {
                    let _ = client::set_state(&path, Request::Pause).await;
                }
                s.supervisor.isolation().readopt(&l.id, path.clone());
                tracing::info!(lease = %l.id, state = %l.state, "re-adopted guest");
            }
            Err(e) => {
                dead += 1;
                let why = if l.state == LeaseState::Booting {
                    StopReason::BootFailed
                } else {
                    StopReason::GuestExit
                };
                s.ledger.mark_stopped(&l.id, why, None)?;
                // Its jail and cgroup, if an earlier coinopd left them.
                let isolation = s.supervisor.isolation();
                isolation.readopt(&l.id, path.clone());
                isolation.release(&l.id);
                tracing::info!(lease = %l.id, error = %e, "guest gone; lease stopped");
            }
        }
    }
    Ok((adopted, dead))
}

/// Runs the tick loop and the exit handler forever.
pub async fn run(s: Shared, mut exits: mpsc::UnboundedReceiver<GuestExit>) {
    let mut interval = tokio::time::interval(Duration::from_millis(s.config.tick_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                if let Err(e) = tick(&s).await {
                    tracing::error!(error = %e, "tick failed");
                }
            }
            Some(exit) = exits.recv() => guest_exited(&s, &exit.lease_id, &exit.reason),
        }
    }
}

fn guest_exited(s: &Shared, lease_id: &str, why: &str) {
    s.capacity().release(lease_id);
    // A re-adopted guest is not our child: nobody else removes its jail and cgroup.
    let isolation = std::sync::Arc::clone(s.supervisor.isolation());
    let id = lease_id.to_string();
    tokio::task::spawn_blocking(move || isolation.release(&id));
    match s.ledger.mark_stopped(lease_id, StopReason::GuestExit, None) {
        Ok(true) => tracing::info!(lease = lease_id, why, "guest exited; lease stopped"),
        Ok(false) => {}
        Err(e) => tracing::error!(lease = lease_id, error = %e, "recording guest exit"),
    }
}

/// One tick: read usage of every running or paused guest, debit, act.
pub async fn tick(s: &Shared) -> Result<(), crate::ledger::LedgerError> {
    let leases: Vec<LeaseRow> = s
        .ledger
        .live()?
        .into_iter()
        .filter(|l| l.state == LeaseState::Running || l.state == LeaseState::PausedUnfunded)
        .collect();
    if leases.is_empty() {
        return Ok(());
    }
    let mut reads = JoinSet::new();
    for l in &leases {
        let path = PathBuf::from(&l.control_path);
        let id = l.id.clone();
        let pid = l.pid;
        reads.spawn(async move { (id, pid, client::usage(&path).await) });
    }
    let mut usages: Vec<(String, Usage)> = Vec::with_capacity(leases.len());
    while let Some(joined) = reads.join_next().await {
        let Ok((id, pid, result)) = joined else {
            continue;
        };
        match result {
            Ok(u) => {
                s.supervisor.isolation().check_cpu(&id, u.vcpu_total_us);
                usages.push((id, u))
            }
            Err(e) => handle_read_error(s, &id, pid, &e),
        }
    }
    crate::fault::hit(crate::fault::point::TICK_READ);
    let s2 = s.clone();
    let owned: Vec<(String, u64, u64)> = usages
        .into_iter()
        .map(|(id, u)| (id, u.vcpu_total_us, u.uptime_us))
        .collect();
    let outcomes = tokio::task::spawn_blocking(move || {
        let samples: Vec<Sample<'_>> = owned
            .iter()
            .map(|(id, v, u)| Sample {
                lease_id: id,
                vcpu_total_us: *v,
                uptime_us: *u,
            })
            .collect();
        s2.ledger.apply_tick(&samples, s2.prices, s2.config.grace_s)
    })
    .await
    .map_err(|_| crate::ledger::LedgerError::Poisoned)??;
    crate::fault::hit(crate::fault::point::TICK_COMMITTED);
    for o in outcomes {
        s.metrics.debited(o.debited_msat);
        let Some(l) = leases.iter().find(|l| l.id == o.lease_id) else {
            continue;
        };
        match o.action {
            TickAction::None => {}
            TickAction::Pause => {
                tracing::info!(lease = %l.id, "balance exhausted; pausing guest");
                let path = PathBuf::from(&l.control_path);
                if let Err(e) = client::set_state(&path, Request::Pause).await {
                    tracing::warn!(lease = %l.id, error = %e, "pause failed");
                }
            }
            TickAction::Stop => {
                tracing::info!(lease = %l.id, "grace period over; stopping guest");
                stop_guest(s, l);
            }
        }
    }
    Ok(())
}

/// A guest whose control socket is gone (and whose process is gone) has exited.
fn handle_read_error(s: &Shared, id: &str, pid: Option<i32>, e: &ControlError) {
    let alive = pid.is_some_and(pid_alive);
    if e.is_gone() && !alive {
        guest_exited(s, id, "control socket gone");
    } else {
        tracing::warn!(lease = id, error = %e, "usage read failed; retrying next tick");
    }
}
