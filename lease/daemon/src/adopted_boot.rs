//! A lease found `booting` at start-up whose VMM lives: coinopd died between spawning the
//! VMM and handling its `guest_ready`. The VMM copied its boot-timing events to its log
//! (`crate::vmm_log_events`), and the figures known at the spawn are in the ledger
//! (`crate::boot_record`): together they give the figures a fresh create would have
//! replied. A guest that is ready is marked `running` with them at once; one still booting
//! is watched in its log until it is ready (or the boot timeout, counted from the
//! adoption, passes: it is then marked `running` without `guest_ready_us`, as a guest that
//! answers its control socket), or until its VMM ends (stopped `boot_failed`).

use std::time::{Duration, Instant};

use coinop_proto::StopReason;

use crate::app::Shared;
use crate::boot_record::SpawnRecord;
use crate::ledger::{LeaseRow, LedgerError};
use crate::supervisor::GuestPaths;
use crate::vmm_log_events::{boot_progress, BootProgress};
use crate::vmm_process::VmmProcess;

/// How often a booting guest's log is read again: a boot takes tens of ms.
const POLL: Duration = Duration::from_millis(20);

/// Finishes the boot of `l` (adopted `booting`, its VMM alive; `vmm` when its process is
/// known): now if its log says the guest is ready (or nothing is known to finish its
/// figures with), else on a task of its own.
pub fn finish(s: &Shared, l: &LeaseRow, vmm: Option<VmmProcess>) -> Result<(), LedgerError> {
    let pid = vmm.map(|v| v.pid).or(l.pid);
    let log = GuestPaths::for_lease(&s.config.run_dir(), &l.id).log;
    let Some(record) = SpawnRecord::from_json(l.spawn_json.as_deref()) else {
        // Spawned by a coinopd that kept no figures: they stay unknown.
        return s.ledger.mark_running(&l.id, pid, "{}");
    };
    let progress = boot_progress(&log);
    if progress.guest_ready_us.is_some() {
        return mark_running(s, &l.id, pid, &record, progress);
    }
    let (s, id) = (s.clone(), l.id.clone());
    let timeout = Duration::from_millis(s.config.boot_timeout_ms);
    tokio::spawn(async move {
        let deadline = Instant::now() + timeout;
        let (progress, gone) = loop {
            tokio::time::sleep(POLL).await;
            let p = boot_progress(&log);
            let gone = p.exited || vmm.is_some_and(|v| !v.is_running());
            if p.guest_ready_us.is_some() || gone || Instant::now() >= deadline {
                break (p, gone);
            }
        };
        let done = if gone && progress.guest_ready_us.is_none() {
            boot_failed(&s, &id, vmm)
        } else {
            if progress.guest_ready_us.is_none() {
                tracing::warn!(lease = %id, timeout_ms = timeout.as_millis() as u64,
                    "an adopted guest did not report guest_ready in time; running without it");
            }
            mark_running(&s, &id, pid, &record, progress)
        };
        if let Err(e) = done {
            tracing::error!(lease = %id, error = %e, "finishing an adopted boot");
        }
    });
    Ok(())
}

fn mark_running(
    s: &Shared,
    id: &str,
    pid: Option<i32>,
    record: &SpawnRecord,
    progress: BootProgress,
) -> Result<(), LedgerError> {
    let figures = record.finish(progress);
    let json = serde_json::to_string(&figures).expect("a struct of integers always serializes");
    s.ledger.mark_running(id, pid, &json)?;
    tracing::info!(lease = id, ?figures, "adopted guest booted; lease running");
    Ok(())
}

/// The VMM ended before its guest was ready: as a boot failure found at start-up.
fn boot_failed(s: &Shared, id: &str, vmm: Option<VmmProcess>) -> Result<(), LedgerError> {
    s.ledger.mark_guest_ended(id, StopReason::BootFailed, vmm)?;
    s.capacity().release(id);
    let isolation = std::sync::Arc::clone(s.supervisor.isolation());
    let id2 = id.to_string();
    tokio::task::spawn_blocking(move || isolation.release(&id2));
    tracing::info!(
        lease = id,
        "adopted guest ended before it was ready; lease stopped"
    );
    Ok(())
}
