//! The metering scheduler: every tick, read each live guest's cumulative usage from its
//! control socket, debit all leases in one ledger transaction, then pause guests that ran
//! out of money and stop those whose grace period ended. Also handles guest exits and, at
//! start-up, re-adopts guests that outlived a previous coinopd. One VMM that does not
//! answer delays no other lease's metering: the readings are concurrent and the tick waits
//! for them only until [`read_deadline`], and pauses and resumes are sent on tasks of their
//! own.
//!
//! The ledger is the intent and the VMMs follow it. A crash of coinopd between a commit and
//! the VMM command that should follow it leaves the two apart, so at start-up ([`adopt`])
//! and on every tick ([`tick`]) each lease's ledger state is compared with its VMM, found by
//! the pid and start time recorded at its spawn ([`crate::vmm_process`]):
//!
//! | ledger | VMM | action |
//! |---|---|---|
//! | stopped | still runs | stop it (control socket, SIGKILL after a deadline), remove its jail and cgroup |
//! | stopped | gone | record it gone, remove what it left |
//! | running | paused (a top-up's `resume` lost) | resume it; the paused time is not billed |
//! | paused_unfunded | running | pause it |
//! | booting | exists | `running` once its log shows `guest_ready` (metered from there), with the boot figures a create would have replied; an `agent` guest that awaits its personalisation line is sent it, and one not ready by the boot timeout is stopped `boot_failed` ([`crate::adopted_boot`]) |
//! | booting | gone | stopped `boot_failed`, the balance kept for the tenant |
//! | running / paused | gone | stopped `guest_crashed` if the `exit` event in its log says a crash, else `guest_exit` |
//! | any live | runs but does not answer | kept (room held, not billed), retried every tick |
//! | running / paused | runs, nothing listening at its control socket for [`CONTROL_LOST_AFTER`] | stopped `control_lost`, the VMM killed |
//!
//! A VMM that does not answer is never taken for gone while its process runs: it is kept,
//! and a stop of its lease kills it by pid and start time. So no VMM outlives its lease
//! across restarts. One whose control socket is gone (not a slow answer: nothing listens
//! there, and nothing makes it again) can never be metered again, so it is stopped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::app::Shared;
use crate::boot_record::SpawnRecord;
use crate::capacity::Totals;
use crate::guest_stop::stop_guest;
use crate::ledger::{GuestEnded, LeaseRow, LedgerError, Sample, TickAction};
use crate::supervisor::{GuestExit, GuestPaths, GUEST_CRASH_CODE};
use crate::usage_floor::{self, Floored};
use crate::vmm_file_bounds;
use crate::vmm_process::VmmProcess;
use coinop_proto::{LeaseState, StopReason};
use vmm_protocol::client::{self, ControlError};
use vmm_protocol::{Request, Status, Usage, VmState};

/// Whether a live lease's VMM process runs, as far as the ledger and the host can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    /// This process (pid and start time) runs.
    Running(VmmProcess),
    /// The recorded process has ended (or is a zombie).
    Gone,
    /// Nothing recorded with a start time, and nothing found in the lease's cgroup: only
    /// the control socket can tell.
    Unknown,
}

/// Where lease `l`'s VMM is. Its confinement must be registered already (for the cgroup).
fn presence(s: &Shared, l: &LeaseRow) -> Presence {
    match l.vmm() {
        Some(v) if v.start_ticks.is_some() => {
            if v.is_running() {
                Presence::Running(v)
            } else {
                Presence::Gone
            }
        }
        // A bare pid from an older ledger: while the control socket answers, the VMM lives
        // and its pid can be nobody else's, so it is trusted only together with an answer.
        Some(_) => Presence::Unknown,
        // Spawned but coinopd died before recording it: its cgroup has it.
        None => s
            .supervisor
            .isolation()
            .cgroup_pids(&l.id)
            .into_iter()
            .filter(|&p| crate::guest_stop::vmm_running(p))
            .find_map(VmmProcess::of)
            .map_or(Presence::Unknown, Presence::Running),
    }
}

/// Reconciles every lease with its VMM at start-up (see the module docs). Guests that
/// answer, or whose process runs, are adopted (capacity held, metering continues from the
/// last committed counters); leases whose guest is gone are stopped (`guest_exit`, or
/// `boot_failed` if the create never finished); stopped leases whose VMM still runs get it
/// stopped. Returns (adopted, stopped).
pub async fn adopt(s: &Shared) -> Result<(usize, usize), LedgerError> {
    let live = s.ledger.live()?;
    // All at once: a VMM that does not answer costs one control timeout, not one per lease.
    let mut probes = JoinSet::new();
    for (i, l) in live.iter().enumerate() {
        let path = PathBuf::from(&l.control_path);
        probes.spawn(async move { (i, client::status(&path).await) });
    }
    let mut statuses: Vec<Option<Result<Status, ControlError>>> =
        live.iter().map(|_| None).collect();
    while let Some(joined) = probes.join_next().await {
        if let Ok((i, st)) = joined {
            statuses[i] = Some(st);
        }
    }
    let mut adopted = 0;
    let mut dead = 0;
    for (l, st) in live.iter().zip(statuses) {
        // A probe task that panicked answered nothing: as a timeout would.
        let st = st.unwrap_or_else(|| {
            Err(ControlError::Timeout {
                path: l.control_path.clone(),
                waited: vmm_protocol::client::CONTROL_TIMEOUT,
            })
        });
        if adopt_one(s, l, st).await? {
            adopted += 1;
        } else {
            dead += 1;
        }
    }
    reconcile_stopped(s)?;
    Ok((adopted, dead))
}

/// One live lease at start-up; whether its guest was adopted.
async fn adopt_one(
    s: &Shared,
    l: &LeaseRow,
    st: Result<Status, ControlError>,
) -> Result<bool, LedgerError> {
    let path = PathBuf::from(&l.control_path);
    let isolation = s.supervisor.isolation();
    // Its jail and cgroup, if an earlier coinopd left them (also to find its processes).
    isolation.readopt(&l.id, path.clone());
    // Its CPU quota as its state says (a crash may have come between a top-up's commit and
    // the quota's return).
    let paused = matches!(
        l.state,
        LeaseState::PausedUnfunded | LeaseState::PausedReorg
    );
    isolation.hold_paused(&l.id, l.vcpus, l.mem_mib, paused);
    let found = presence(s, l);
    let vmm = match (&st, found) {
        (_, Presence::Running(v)) => Some(v),
        // It answers, so the recorded bare pid is its pid: record its start time now.
        (Ok(_), Presence::Unknown) => l.pid.and_then(VmmProcess::of),
        (Ok(_), Presence::Gone) | (Err(_), _) => None,
    };
    let alive = match (&st, found) {
        (Ok(_), _) | (_, Presence::Running(_)) => true,
        (Err(_), Presence::Gone) => false,
        (Err(e), Presence::Unknown) => !e.is_gone(),
    };
    if !alive {
        let why = if l.state == LeaseState::Booting {
            StopReason::BootFailed
        } else {
            // It ended while no coinopd listened: its log says how.
            stop_reason(recorded_exit(s, &l.id).1)
        };
        s.ledger.mark_guest_ended(&l.id, why, l.vmm())?;
        let isolation = std::sync::Arc::clone(isolation);
        let id = l.id.clone();
        let _ = tokio::task::spawn_blocking(move || isolation.release(&id)).await;
        let error = st.err().map(|e| e.to_string());
        tracing::info!(lease = %l.id, ?error, "guest gone; lease stopped");
        return Ok(false);
    }
    s.capacity().adopt(
        &l.id,
        Totals {
            vcpus: l.vcpus,
            mib: l.mem_mib,
        },
    );
    if let Some(v) = vmm.filter(|v| l.vmm() != Some(*v)) {
        s.ledger.record_vmm(&l.id, v, None)?;
    }
    // A lease committed but not yet marked running when coinopd died: its VMM exists, and
    // its log says how far the boot got.
    if l.state == LeaseState::Booting {
        crate::adopted_boot::finish(s, l, vmm)?;
    }
    match st {
        Ok(v) => {
            let paused = matches!(
                l.state,
                LeaseState::PausedUnfunded | LeaseState::PausedReorg
            );
            if paused && v.state != VmState::Paused {
                // On a task of its own: adoption runs before the API socket is bound, and a
                // VMM that answers its status but never its pause would hold the start up by
                // the control timeout, lease after lease. Its CPU is held already (above).
                send_state(
                    &l.id,
                    path.clone(),
                    Request::Pause,
                    "pausing a re-adopted guest",
                );
            }
            if l.state == LeaseState::Running && v.state == VmState::Paused {
                tracing::warn!(lease = %l.id,
                    "running in the ledger but its VMM is paused; the first tick resumes it");
                s.supervisor.recheck_state(&l.id);
            }
            tracing::info!(lease = %l.id, state = %l.state, pid = ?vmm.map(|v| v.pid), "re-adopted guest");
        }
        Err(e) => {
            tracing::warn!(lease = %l.id, pid = ?vmm.map(|v| v.pid), error = %e,
                "re-adopted a VMM that does not answer its control socket; it is kept (room \
                 held, not billed) and asked again every tick");
            s.supervisor.recheck_state(&l.id);
        }
    }
    Ok(true)
}

/// Stopped leases whose VMM is not recorded gone: one that still runs is stopped (unless
/// a stop of it is under way), one that ended is recorded gone and what it left removed.
fn reconcile_stopped(s: &Shared) -> Result<(), LedgerError> {
    for l in s.ledger.stopped_with_vmm()? {
        let Some(vmm) = l.vmm() else {
            continue;
        };
        if s.stops.running(&l.id) {
            continue;
        }
        let isolation = s.supervisor.isolation();
        if !isolation.knows(&l.id) {
            // An earlier coinopd's VMM: find its jail and cgroup to remove them.
            isolation.readopt(&l.id, PathBuf::from(&l.control_path));
        }
        if vmm.is_running() {
            tracing::warn!(lease = %l.id, pid = vmm.pid,
                "the lease is stopped but its VMM still runs; stopping it");
            stop_guest(s, &l);
        } else if s.ledger.mark_vmm_gone(&l.id, vmm)? {
            let isolation = std::sync::Arc::clone(isolation);
            let id = l.id.clone();
            tokio::task::spawn_blocking(move || isolation.release(&id));
        }
    }
    Ok(())
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
            Some(exit) = exits.recv() => guest_exited(&s, &exit),
        }
    }
}

/// A guest's VMM ended: the lease stops (`guest_crashed` for the VMM's exit code 3,
/// `guest_exit` otherwise), its room and confinement are freed.
fn guest_exited(s: &Shared, exit: &GuestExit) {
    let lease_id = exit.lease_id.as_str();
    s.supervisor.exit_handled(lease_id);
    // A VMM that went silent and then ended: its last unread stretch is billed as the
    // floors see it, as it would have been at its control_lost stop.
    if let Ok(Some(l)) = s.ledger.get(lease_id) {
        bill_if_silent(s, &l);
    }
    let why = stop_reason(exit.code);
    let ended = s.ledger.mark_guest_ended(lease_id, why, exit.vmm);
    if matches!(ended, Ok(GuestEnded::NotRecorded)) {
        // Not the lease's VMM (any more): its room and confinement are another VMM's.
        return;
    }
    s.capacity().release(lease_id);
    // A re-adopted guest is not our child: nobody else removes its jail and cgroup.
    let isolation = std::sync::Arc::clone(s.supervisor.isolation());
    let id = lease_id.to_string();
    tokio::task::spawn_blocking(move || isolation.release(&id));
    let reason = exit.reason.as_str();
    match ended {
        Ok(GuestEnded::Stopped) => {
            tracing::info!(lease = lease_id, reason, code = ?exit.code, stop_reason = %why,
                "guest exited; lease stopped")
        }
        Ok(_) => {}
        Err(e) => tracing::error!(lease = lease_id, error = %e, "recording guest exit"),
    }
}

/// The stop reason of a guest whose VMM ended with `code` (`None`: unknown, or killed).
fn stop_reason(code: Option<i32>) -> StopReason {
    if code == Some(GUEST_CRASH_CODE) {
        StopReason::GuestCrashed
    } else {
        StopReason::GuestExit
    }
}

/// Why lease `lease_id`'s VMM ended, when it is not our child (re-adopted after a restart):
/// the `exit` event it left in its log ([`crate::vmm_log_events`]), as reason and code.
fn recorded_exit(s: &Shared, lease_id: &str) -> (String, Option<i32>) {
    let log = GuestPaths::for_lease(&s.config.run_dir(), lease_id).log;
    match crate::vmm_log_events::exit(&log) {
        Some((reason, code)) => (reason, Some(code)),
        None => ("control socket gone".into(), None),
    }
}

/// One lease's readings for a tick.
struct Reading {
    id: String,
    usage: Result<Usage, ControlError>,
    /// The VMM answered `paused` although the ledger has the lease running.
    paused: bool,
    /// The ledger had the lease paused for lack of funds when it was read: its guest was
    /// paused up to this reading. A top-up that commits before the tick's does not make
    /// that time billable.
    unfunded: bool,
    /// Its run state was in doubt (see [`read`]).
    recheck: bool,
    /// Its VMM as the ledger records it (the kernel's guest time is read from it).
    vmm: Option<VmmProcess>,
}

/// Reads a metered lease's usage; for a running lease whose vCPU time did not move since
/// the last tick (idle, or paused) or whose run state is in doubt (`recheck`: found paused
/// at re-adoption, or paused for lack of funds before a top-up), also whether its VMM is
/// paused. The usage reply says so; a VMM older than that field is asked with `status`.
/// One request per lease and tick, not two for every idle guest: on a host of many idle
/// leases the second one woke each VMM again every tick for nothing.
async fn read(l: &LeaseRow, recheck: bool) -> Reading {
    let path = PathBuf::from(&l.control_path);
    let usage = client::usage(&path).await;
    let flat = usage
        .as_ref()
        .is_ok_and(|u| u.vcpu_total_us == l.last_vcpu_total_us);
    let asked = l.state == LeaseState::Running && (flat || recheck);
    let paused = match &usage {
        Ok(u) if asked => match u.state {
            Some(state) => state == VmState::Paused,
            None => client::status(&path)
                .await
                .is_ok_and(|st| st.state == VmState::Paused),
        },
        _ => false,
    };
    Reading {
        id: l.id.clone(),
        usage,
        paused,
        unfunded: l.state == LeaseState::PausedUnfunded,
        recheck,
        vmm: l.vmm(),
    }
}

/// One tick: bring stopped leases' VMMs in line, read usage of every running or paused
/// guest, debit, act.
pub async fn tick(s: &Shared) -> Result<(), LedgerError> {
    reconcile_stopped(s)?;
    // Housekeeping only (what the ledger noted of leases that ended): it must not hold up
    // the metering.
    if let Err(e) = s.ledger.forget_ended_stamps() {
        tracing::warn!(error = %e, "forgetting the clock stamps of ended leases");
    }
    crate::payment_reorgs::check(s).await?;
    let (leases, frozen): (Vec<LeaseRow>, Vec<LeaseRow>) = s
        .ledger
        .live()?
        .into_iter()
        .filter(|l| {
            matches!(
                l.state,
                LeaseState::Running | LeaseState::PausedUnfunded | LeaseState::PausedReorg
            )
        })
        .partition(|l| l.state != LeaseState::PausedReorg);
    let ids: std::collections::HashSet<&str> = leases.iter().map(|l| l.id.as_str()).collect();
    // A frozen lease's silence is counted too (a thaw put off: crate::payment_reorgs).
    let frozen: std::collections::HashSet<&str> = frozen.iter().map(|l| l.id.as_str()).collect();
    s.supervisor.keep_live(&ids, &frozen);
    // Each lease's CPU quota as its state says: held while paused for lack of funds
    // (mends a pause and a top-up that crossed). A VMM that wrote beyond its files'
    // bounds is stopped, not read.
    let leases: Vec<LeaseRow> = leases
        .into_iter()
        .filter(|l| {
            let paused = l.state == LeaseState::PausedUnfunded;
            s.supervisor
                .isolation()
                .hold_paused(&l.id, l.vcpus, l.mem_mib, paused);
            !stopped_for_files(s, l)
        })
        .collect();
    if leases.is_empty() {
        return Ok(());
    }
    // Whatever a tick cut short left pending is not this tick's.
    s.supervisor.usage_floors().discard_tick();
    let mut reads = JoinSet::new();
    for l in &leases {
        let recheck = l.state == LeaseState::Running && s.supervisor.take_recheck(&l.id);
        let l = l.clone();
        reads.spawn(async move { read(&l, recheck).await });
    }
    let mut usages: Vec<(String, Floored, bool, bool)> = Vec::with_capacity(leases.len());
    // The leases whose run state this tick's read asked (their recheck taken).
    let mut rechecked = Vec::new();
    let mut answered = std::collections::HashSet::with_capacity(leases.len());
    let deadline = tokio::time::Instant::now() + read_deadline(s.config.tick_ms);
    loop {
        let joined = match tokio::time::timeout_at(deadline, reads.join_next()).await {
            Ok(Some(joined)) => joined,
            Ok(None) => break,
            Err(_) => {
                // Dropping `reads` drops the late reads; their leases are read next tick.
                late_reads(s, &leases, &answered);
                break;
            }
        };
        let Ok(r) = joined else {
            continue;
        };
        answered.insert(r.id.clone());
        if r.recheck {
            rechecked.push(r.id.clone());
        }
        match r.usage {
            Ok(u) => {
                s.supervisor.reached(&r.id);
                s.supervisor.isolation().check_cpu(&r.id, u.vcpu_total_us);
                let floored = held_to_floors(s, &r.id, r.vmm, &u, r.paused, r.unfunded);
                usages.push((r.id, floored, r.paused, r.unfunded))
            }
            Err(e) => {
                if r.recheck {
                    // Still in doubt: asked once it answers.
                    s.supervisor.recheck_state(&r.id);
                }
                if let Some(l) = leases.iter().find(|l| l.id == r.id) {
                    handle_read_error(s, l, &e);
                }
            }
        }
    }
    crate::fault::hit(crate::fault::point::TICK_READ);
    let s2 = s.clone();
    // Only a VMM found paused while the ledger had its lease running is resumed below.
    let paused: Vec<String> = usages.iter().filter(|o| o.2).map(|o| o.0.clone()).collect();
    let committed = tokio::task::spawn_blocking(move || {
        let samples: Vec<Sample<'_>> = usages
            .iter()
            .map(|(id, f, _, unfunded)| Sample {
                lease_id: id,
                vcpu_total_us: f.vcpu_total_us,
                uptime_us: f.uptime_us,
                vm_paused: f.paused || *unfunded,
            })
            .collect();
        s2.ledger.apply_tick(&samples, s2.prices, s2.config.grace_s)
    })
    .await
    .map_err(|_| LedgerError::Poisoned)
    .and_then(|r| r);
    let floors = s.supervisor.usage_floors();
    let outcomes = match committed {
        Ok(outcomes) => {
            floors.commit_tick();
            outcomes
        }
        Err(e) => {
            // Nothing of this tick was billed or acted on: what its readings taught the
            // floors, and the run-state checks they used up, wait for a tick that commits
            // (a VMM found paused is resumed by that tick, its pause still believed).
            floors.discard_tick();
            for id in rechecked.iter().chain(&paused) {
                s.supervisor.recheck_state(id);
            }
            return Err(e);
        }
    };
    crate::fault::hit(crate::fault::point::TICK_COMMITTED);
    if outcomes.iter().any(|o| o.action == TickAction::Stop) {
        crate::fault::hit(crate::fault::point::TICK_STOP_COMMITTED);
    }
    for o in outcomes {
        s.metrics.debited(o.debited_msat);
        let Some(l) = leases.iter().find(|l| l.id == o.lease_id) else {
            continue;
        };
        let path = PathBuf::from(&l.control_path);
        match o.action {
            TickAction::None if paused.contains(&l.id) => {
                tracing::warn!(lease = %l.id,
                    "running in the ledger but its VMM was paused; resuming it (the pause is not billed)");
                // Asked again next tick if it does not take: the VMM still answers paused.
                s.supervisor.recheck_state(&l.id);
                s.supervisor
                    .isolation()
                    .hold_paused(&l.id, l.vcpus, l.mem_mib, false);
                send_state(&l.id, path, Request::Resume, "resume");
            }
            TickAction::None => {}
            TickAction::Pause => {
                tracing::info!(lease = %l.id, "balance exhausted; pausing guest");
                // Running again after a top-up, its VMM's state is read once: the top-up's
                // `resume` may have been lost.
                s.supervisor.recheck_state(&l.id);
                s.supervisor.usage_floors().pause_sent(&l.id);
                send_state(&l.id, path, Request::Pause, "pause");
                // Held to a sliver of CPU whatever the VMM does with the pause.
                s.supervisor
                    .isolation()
                    .hold_paused(&l.id, l.vcpus, l.mem_mib, true);
            }
            TickAction::Stop => {
                tracing::info!(lease = %l.id, "grace period over; stopping guest");
                stop_guest(s, l);
            }
        }
    }
    Ok(())
}

/// How long a tick waits for its usage readings: at least a tick, and never less than
/// [`READ_DEADLINE_MIN`]. A VMM that does not answer by then (stopped, hung, starved)
/// must not hold up the metering of every other lease for the control client's whole
/// timeout; it is read again next tick, and as usage is cumulative its reading then bills
/// what this one would have.
pub(crate) fn read_deadline(tick_ms: u64) -> Duration {
    Duration::from_millis(tick_ms).max(READ_DEADLINE_MIN)
}

/// The floor of [`read_deadline`]: a control reply on a loaded host takes a few ms, so
/// only a VMM that is not answering misses it.
const READ_DEADLINE_MIN: Duration = Duration::from_millis(250);

/// Checks the files lease `l`'s VMM writes ([`crate::vmm_file_bounds`]); one beyond its
/// bound stops the lease `control_lost` (VMM killed, balance kept) and is cut back.
/// Returns whether it did.
fn stopped_for_files(s: &Shared, l: &LeaseRow) -> bool {
    let paths = GuestPaths::for_lease(&s.config.run_dir(), &l.id);
    // What the VMM was given at its spawn, when recorded: coinopd may have been started
    // since with a lower cap, or the image's root filesystem replaced by a smaller file.
    let spawned = SpawnRecord::from_json(l.spawn_json.as_deref()).and_then(|r| r.files);
    let (console_max_bytes, rootfs_bytes) = match spawned {
        Some(f) => (f.console_max_bytes, f.rootfs_bytes),
        None => (
            s.config.console_max_bytes,
            s.config
                .images
                .get(&l.image)
                .and_then(|spec| spec.rootfs.as_deref())
                .and_then(|base| std::fs::metadata(base).ok())
                .map(|m| m.len()),
        ),
    };
    let overlay = s.supervisor.isolation().overlay_path(&l.id);
    let bounds = vmm_file_bounds::bounds(
        Path::new(&l.console_path),
        &paths.log,
        console_max_bytes,
        rootfs_bytes.map(|b| (overlay.as_path(), b)),
    );
    let Some(o) = vmm_file_bounds::first_overrun(&bounds) else {
        return false;
    };
    tracing::error!(lease = %l.id, pid = ?l.pid, file = %o.bound.path.display(),
        bytes = o.bytes, max_bytes = o.bound.max_bytes,
        "its VMM wrote its {} beyond what an honest one writes: stopping it (control_lost)",
        o.bound.what);
    stop_control_lost(s, l);
    if let Err(e) = vmm_file_bounds::cut_back(&o) {
        tracing::error!(lease = %l.id, file = %o.bound.path.display(), error = %e,
            "cutting the file back to its bound failed");
    }
    true
}

/// Lease `id`'s reading `u` as the ledger bills it: for a running lease, held to the floors
/// of [`crate::usage_floor`] (a VMM cannot bill itself less than the kernel and coinopd's
/// clock saw); for one paused for lack of funds, as read (the ledger bills nothing of it,
/// and moves its marks no further back nor on than `ledger::tick` allows), its floors
/// started afresh once it runs again.
fn held_to_floors(
    s: &Shared,
    id: &str,
    vmm: Option<VmmProcess>,
    u: &Usage,
    vmm_paused: bool,
    unfunded: bool,
) -> Floored {
    let floors = s.supervisor.usage_floors();
    if unfunded {
        floors.forget(id);
        return Floored {
            vcpu_total_us: u.vcpu_total_us,
            uptime_us: u.uptime_us,
            paused: vmm_paused,
            raised: false,
        };
    }
    let reading = usage_floor::Reading {
        vcpu_total_us: u.vcpu_total_us,
        uptime_us: u.uptime_us,
        vmm_paused,
        guest_time_us: vmm.and_then(|v| v.guest_time_us()),
        at: Instant::now(),
    };
    let f = floors.floor(id, reading, read_deadline(s.config.tick_ms));
    if f.raised && floors.first_raise(id) {
        tracing::warn!(lease = %id, vmm_vcpu_total_us = u.vcpu_total_us,
            vmm_uptime_us = u.uptime_us, vmm_paused, billed_vcpu_total_us = f.vcpu_total_us,
            billed_uptime_us = f.uptime_us, billed_paused = f.paused,
            "the VMM reported less than the kernel and coinopd's clock saw: billed the floor \
             (said once a lease)");
    }
    f
}

/// The leases whose usage was not read by the tick's deadline: kept as they are (room
/// held, not billed this tick) and read again next tick, their run state too if it was
/// in doubt; one whose VMM stays silent for [`CONTROL_SILENT_AFTER`] is stopped.
fn late_reads(s: &Shared, leases: &[LeaseRow], answered: &std::collections::HashSet<String>) {
    for l in leases.iter().filter(|l| !answered.contains(&l.id)) {
        if l.state == LeaseState::Running {
            // Its recheck (if any) was taken for this tick's read, which never came.
            s.supervisor.recheck_state(&l.id);
        }
        control_silent(s, l, "no usage reading within the tick's deadline");
    }
}

/// Sends `req` to a lease's VMM on a task of its own: a VMM that does not answer must not
/// delay the tick (and so every other lease's metering) by the control timeout.
fn send_state(lease_id: &str, path: PathBuf, req: Request, what: &'static str) {
    let id = lease_id.to_string();
    tokio::spawn(async move {
        if let Err(e) = client::set_state(&path, req).await {
            tracing::warn!(lease = %id, error = %e, "{what} failed");
        }
    });
}

/// How long a live lease's VMM may run with nothing listening at its control socket
/// before coinopd stops it: longer than a VMM takes from removing its socket on the way
/// out to its process's end, which its reaper (or, re-adopted, the next tick) reports.
const CONTROL_LOST_AFTER: Duration = Duration::from_secs(5);

/// How long a live lease's VMM may run without answering a usage read (it accepts and
/// never replies, or replies with an error) before coinopd stops it: such a guest runs
/// unbilled, and a VMM that a hostile guest took over could do it on purpose. Far longer
/// than any honest reply takes, even on a loaded host (a tick waits [`READ_DEADLINE_MIN`]
/// for one).
const CONTROL_SILENT_AFTER: Duration = Duration::from_secs(20);

/// Lease `l`'s VMM runs but nothing listens at its control socket (removed from under
/// it: nothing creates it again, so no later tick can read it). Such a guest runs
/// unmetered and cannot be paused: once that has lasted [`CONTROL_LOST_AFTER`] the lease
/// stops `control_lost` and its VMM is killed by pid and start time, its balance kept
/// for the tenant.
fn control_lost(s: &Shared, l: &LeaseRow, e: &ControlError) {
    let (lasted, first) = s.supervisor.unreachable_for(&l.id);
    if lasted < CONTROL_LOST_AFTER {
        if first {
            tracing::warn!(lease = %l.id, error = %e,
                "its VMM runs but nothing listens at its control socket; stopping it if that lasts {CONTROL_LOST_AFTER:?}");
        }
        return;
    }
    tracing::error!(lease = %l.id, pid = ?l.pid, error = %e, ?lasted,
        "its VMM runs on with nothing listening at its control socket, unmetered: stopping it (control_lost)");
    stop_control_lost(s, l);
}

/// Lease `l`'s VMM runs and did not answer this tick's usage read (`why`): read again next
/// tick, and stopped `control_lost` as in [`control_lost`] once that has lasted
/// [`CONTROL_SILENT_AFTER`] (counted from the first failed read in a row, of any kind).
pub(crate) fn control_silent(s: &Shared, l: &LeaseRow, why: &str) {
    let (lasted, _) = s.supervisor.unreachable_for(&l.id);
    if lasted < CONTROL_SILENT_AFTER {
        tracing::warn!(lease = %l.id, why, ?lasted,
            "usage read failed; reading it again next tick, stopping the lease if its VMM stays silent {CONTROL_SILENT_AFTER:?}");
        return;
    }
    tracing::error!(lease = %l.id, pid = ?l.pid, why, ?lasted,
        "its VMM runs on without answering its usage reads, unmetered: stopping it (control_lost)");
    stop_control_lost(s, l);
}

/// Stops `l` `control_lost` (its balance kept for the tenant) and kills its VMM, after
/// billing what it ran since its last reading as far as the floors can tell.
fn stop_control_lost(s: &Shared, l: &LeaseRow) {
    s.supervisor.reached(&l.id);
    bill_silent_window(s, l);
    match s.ledger.mark_stopped(&l.id, StopReason::ControlLost, None) {
        Ok(true) => stop_guest(s, l),
        // Stopped meanwhile: its stop (or the next tick's reconciliation) ends the VMM.
        Ok(false) => {}
        Err(e) => {
            tracing::error!(lease = %l.id, error = %e, "recording the stop; trying again next tick")
        }
    }
}

/// [`bill_silent_window`] if `l`'s VMM is silent now (its last reads failed): before any
/// end of the lease that does not go through a tick (its tenant's stop, its VMM's exit),
/// so that ending it before the `control_lost` stop does not leave that stretch unbilled.
pub(crate) fn bill_if_silent(s: &Shared, l: &LeaseRow) {
    if s.supervisor.silent_for(&l.id).is_some() {
        bill_silent_window(s, l);
    }
}

/// Bills running lease `l` for the window its VMM gave no reading, before it is stopped
/// for it: the kernel's guest time and coinopd's clock since the last committed reading
/// ([`crate::usage_floor::UsageFloors::floor_silent`]). Without it, a VMM that never
/// answers would run each lease's last 20 s (and, answering never, its whole run) for
/// nothing, its balance kept for the tenant's refund. A lease with no reading since
/// coinopd started has no anchor: see [`unanchored_silent_reading`].
fn bill_silent_window(s: &Shared, l: &LeaseRow) {
    if l.state != LeaseState::Running {
        return;
    }
    let deadline = read_deadline(s.config.tick_ms);
    let guest_time_us = l.vmm().and_then(|v| v.guest_time_us());
    let (vcpu_total_us, uptime_us) = match s.supervisor.usage_floors().floor_silent(
        &l.id,
        guest_time_us,
        Instant::now(),
        deadline,
    ) {
        Some(f) => (f.vcpu_total_us, f.uptime_us),
        None => {
            let unread = s.ledger.since_billable(l, crate::clock::Now::read());
            unanchored_silent_reading(l, unread, deadline)
        }
    };
    let sample = Sample {
        lease_id: &l.id,
        vcpu_total_us,
        uptime_us,
        vm_paused: false,
    };
    match s.ledger.apply_tick(&[sample], s.prices, s.config.grace_s) {
        Ok(outcomes) => {
            for o in outcomes {
                s.metrics.debited(o.debited_msat);
                tracing::info!(lease = %l.id, debited_msat = o.debited_msat,
                    "billed the time its VMM ran without answering, as the kernel and the clock saw it");
            }
        }
        // Stopped all the same: a VMM that cannot be metered must not run on.
        Err(e) => tracing::error!(lease = %l.id, error = %e,
            "billing the time its VMM ran without answering"),
    }
}

/// What running lease `l` is billed up to for the window its VMM gave no reading in, when
/// there is no anchor to hold it to (no reading since coinopd started), `unread` after its
/// usage marks were set: its vCPU time as last billed (the kernel's guest time of a warm
/// restore's VMM holds time before its lease), its memory time from when the ledger last
/// set its usage marks ([`LeaseRow::metered_since_ms`]: a billing of this stretch sets
/// them, so a second one bills only what came after), less twice the read deadline as for
/// a reading ([`crate::usage_floor`]). `unread` is [`crate::ledger::Ledger::since_billable`]:
/// the time that passed, on the monotonic clock where this process set the marks, so a
/// wall clock stepped back does not leave the window unbilled nor one stepped forward
/// bill the step.
///
/// Not from the row's `updated_at`: a tenant moves that for nothing (a retry of its create
/// is answered with the lease and writes it, as do top-ups and stops), and would bill its
/// silent guest's memory time from whenever it last did. From a top-up that resumed the
/// lease after its marks were set, though (`funded_at`, in `since_billable`): the lease was
/// paused unfunded until then, its memory time not billable, and no tenant can resume a
/// lease that runs.
fn unanchored_silent_reading(
    l: &LeaseRow,
    unread: Duration,
    read_deadline: Duration,
) -> (u64, u64) {
    let unread = unread.saturating_sub(read_deadline * 2);
    let unread_us = u64::try_from(unread.as_micros()).unwrap_or(u64::MAX);
    (
        l.last_vcpu_total_us,
        l.last_uptime_us.saturating_add(unread_us),
    )
}

/// A usage read failed. The guest has exited when its process is gone (by pid and start
/// time; a zombie counts as gone) or, for a VMM recorded without a start time, when its
/// control socket is gone too. A VMM whose process runs is asked again next tick.
fn handle_read_error(s: &Shared, l: &LeaseRow, e: &ControlError) {
    let gone = match l.vmm() {
        Some(v) if v.start_ticks.is_some() => !v.is_running(),
        Some(v) => e.is_gone() && !v.is_running(),
        None => e.is_gone(),
    };
    if !gone && e.is_gone() {
        control_lost(s, l, e);
    } else if !gone {
        control_silent(s, l, &e.to_string());
    } else if s.supervisor.is_own_child(&l.id) {
        // Our child: its reaper reports the end, with the exit code that says why.
        tracing::debug!(lease = %l.id, "guest ended; waiting for its reaper's report");
    } else {
        // Re-adopted after a restart: no reaper, no event stream; its log says how it ended.
        let (reason, code) = recorded_exit(s, &l.id);
        guest_exited(
            s,
            &GuestExit {
                lease_id: l.id.clone(),
                reason,
                code,
                vmm: l.vmm(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Now;
    use crate::ledger::recovery::CreateOutcome;
    use crate::ledger::test_support::{credit, ledger, metered_at, new_lease, s, P};
    use crate::ledger::{Ledger, NewLease, TickAction};

    const DEADLINE: Duration = Duration::from_millis(250);

    /// The ledger's test lease, with a recovery key (a create's retry recovers it).
    fn lease(id: &str) -> NewLease {
        NewLease {
            recovery_hash: Some([7; 32]),
            ..new_lease(id)
        }
    }

    /// Moves every time lease "a" keeps back `secs` seconds, as if it were that long ago.
    fn ago(l: &Ledger, secs: i64) {
        l.with_conn(|c| {
            c.execute(
                "UPDATE leases SET metered_at_ms = metered_at_ms - ?1 * 1000,
                    updated_at = updated_at - ?1, funded_at = funded_at - ?1,
                    created_at = created_at - ?1 WHERE id = 'a'",
                [secs],
            )?;
            Ok(())
        })
        .expect("backdate");
    }

    /// The silent-window reading of lease "a" in `l` now.
    fn silent(l: &Ledger) -> (u64, u64) {
        silent_at(l, Now::read())
    }

    /// The silent-window reading of lease "a" in `l` at `now`.
    fn silent_at(l: &Ledger, now: Now) -> (u64, u64) {
        let row = l.get("a").expect("get").expect("row");
        unanchored_silent_reading(&row, l.since_billable(&row, now), DEADLINE)
    }

    /// A control socket at `path` that answers `usage` with `usage_line` and `status` with a
    /// paused guest's status (the lines a coinop-vmm writes), one request per connection as
    /// the VMM serves them, and counts the requests by command.
    fn answering_vmm(
        path: &std::path::Path,
        usage_line: &'static str,
    ) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::UnixListener::bind(path).expect("bind the control socket");
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = asked.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                if stream.read_line(&mut line).await.is_err() {
                    continue;
                }
                let request = vmm_protocol::Request::from_line(&line).expect("a request line");
                let reply = match request {
                    vmm_protocol::Request::Usage => usage_line,
                    vmm_protocol::Request::Status => {
                        r#"{"mem_mib":256,"ok":true,"state":"paused","uptime_us":900,"vcpus":1}"#
                    }
                    other => panic!("metering sent {other:?}"),
                };
                seen.lock()
                    .expect("test lock")
                    .push(request.cmd().to_string());
                let _ = stream
                    .get_mut()
                    .write_all(format!("{reply}\n").as_bytes())
                    .await;
            }
        });
        asked
    }

    /// A running lease whose vCPU time stood still since the last tick, its VMM at `path`.
    fn idle_running_lease(path: &std::path::Path) -> LeaseRow {
        let (_dir, l) = ledger();
        l.create_or_recover(&lease("a"), &credit(1, 1_000_000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        LeaseRow {
            control_path: path.display().to_string(),
            last_vcpu_total_us: 500,
            ..l.get("a").expect("get").expect("row")
        }
    }

    /// An idle guest's tick asks its VMM once: the usage reply says the guest is paused.
    #[tokio::test]
    async fn an_idle_lease_is_read_with_one_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        let asked = answering_vmm(
            &path,
            r#"{"mem_mib":256,"ok":true,"state":"paused","uptime_us":900,"vcpu_total_us":500,"vcpu_us":[500]}"#,
        );
        let r = read(&idle_running_lease(&path), false).await;
        assert!(r.usage.is_ok(), "{:?}", r.usage);
        assert!(r.paused, "the usage reply said paused");
        assert_eq!(*asked.lock().expect("test lock"), ["usage"]);
    }

    /// A VMM started by an older coinop, whose usage reply has no run state, is asked with
    /// `status` as before.
    #[tokio::test]
    async fn a_vmm_whose_usage_has_no_state_is_asked_its_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        let asked = answering_vmm(
            &path,
            r#"{"mem_mib":256,"ok":true,"uptime_us":900,"vcpu_total_us":500,"vcpu_us":[500]}"#,
        );
        let r = read(&idle_running_lease(&path), false).await;
        assert!(r.usage.is_ok(), "{:?}", r.usage);
        assert!(r.paused, "the status reply said paused");
        assert_eq!(*asked.lock().expect("test lock"), ["usage", "status"]);
    }

    /// A running lease whose VMM has been silent since its last tick, 60 s ago, with no
    /// anchor (coinopd restarted since): its tenant resending its create (answered with the
    /// lease and a new token) does not shorten the memory time its silent window is billed.
    #[test]
    fn a_retried_create_does_not_move_where_a_silent_window_is_billed_from() {
        let (_dir, l) = ledger();
        l.create_or_recover(&lease("a"), &credit(1, 1_000_000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        // Booted two minutes before its last tick.
        ago(&l, 120);
        l.apply_tick(&[s(100_000, 1_000_000)], P, 60).expect("tick");
        ago(&l, 60);
        let before = l.get("a").expect("get").expect("row");
        let (vcpu, uptime) = silent(&l);
        assert_eq!(vcpu, 100_000, "vCPU time as last billed");
        // 60 s less twice the deadline (give or take a second: the test's own time, and
        // whole seconds where the ledger keeps them).
        let window = 60_000_000 - 2 * DEADLINE.as_micros() as u64;
        assert!(
            (window - 1_000_000..window + 1_000_000).contains(&(uptime - 1_000_000)),
            "{uptime}"
        );
        // The tenant retries its create: the same lease, recovered with a new token.
        let retried = l
            .create_or_recover(&lease("b"), &credit(1, 1_000_000))
            .expect("retry");
        assert!(
            matches!(retried, CreateOutcome::Recovered(_)),
            "{retried:?}"
        );
        let after = l.get("a").expect("get").expect("row");
        assert!(
            after.updated_at > before.updated_at,
            "the retry wrote the row"
        );
        let (_, again) = silent(&l);
        assert!(
            again >= uptime,
            "billed up to {again} µs of uptime after the retry, {uptime} before"
        );
    }

    /// A top-up that resumed a lease paused unfunded: its silent window's memory time
    /// counts from the resume, not from the last tick of its pause.
    #[test]
    fn a_silent_window_after_a_resuming_top_up_counts_from_the_resume() {
        let (_dir, l) = ledger();
        l.create_or_recover(&lease("a"), &credit(1, 1000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        let o = l
            .apply_tick(&[s(1_000_000, 1_000_000)], P, 600)
            .expect("tick");
        assert_eq!(o[0].action, TickAction::Pause);
        // Paused 60 s (its VMM silent all along), then topped up.
        ago(&l, 60);
        assert!(l.topup("a", &credit(2, 100_000)).expect("top-up").resumed);
        assert_eq!(silent(&l), (1_000_000, 1_000_000), "none of the pause");
    }

    /// A running lease read 1 s after its marks were set, then silent 60 s with no anchor
    /// (its VMM never answered again): what its silent window is billed at `now`, a minute
    /// after its last reading as time passed, with the wall clock stepped by `step_ms`.
    fn silent_a_minute_with_the_wall_clock_stepped(step_ms: i64) -> (u64, u64) {
        let (_dir, l) = ledger();
        l.create_or_recover(&lease("a"), &credit(1, 1_000_000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        let t0 = metered_at(&l, "a");
        l.apply_tick_at(&[s(100_000, 1_000_000)], P, 60, t0 + 1000)
            .expect("tick");
        silent_at(&l, (t0 + 61_000).wall_stepped(step_ms))
    }

    /// 60 s less twice the read deadline past the marks: the silent window as time passed.
    const A_MINUTE_UNREAD: (u64, u64) = (100_000, 1_000_000 + 60_000_000 - 500_000);

    /// The wall clock stepped back an hour during the silent window: its minute of memory
    /// time is billed all the same (measured on the wall clock it was none).
    #[test]
    fn a_silent_window_is_billed_its_length_across_a_wall_clock_step_back() {
        assert_eq!(
            silent_a_minute_with_the_wall_clock_stepped(-3_600_000),
            A_MINUTE_UNREAD
        );
    }

    /// The wall clock stepped forward an hour during the silent window: its minute of
    /// memory time is billed, not the hour.
    #[test]
    fn a_silent_window_is_billed_no_more_than_its_length_across_a_wall_clock_step_forward() {
        assert_eq!(
            silent_a_minute_with_the_wall_clock_stepped(3_600_000),
            A_MINUTE_UNREAD
        );
    }
}
