//! A lease found `booting` at start-up whose VMM lives: coinopd died between spawning the
//! VMM and handling its `guest_ready`. The VMM copied its boot-timing events to its log
//! (`crate::vmm_log_events`), and the figures known at the spawn are in the ledger
//! (`crate::boot_record`): together they give the figures a fresh create would have
//! replied. A guest that is ready is marked `running` with them at once; one still booting
//! is watched in its log until it is ready (or the boot timeout, counted from the
//! adoption, passes: it is then marked `running` without `guest_ready_us`, as a guest that
//! answers its control socket; an agent guest, below, is stopped `boot_failed` instead),
//! or until its VMM ends (stopped `boot_failed`).
//!
//! A guest of an `agent` image gets `guest_ready` only after its personalisation line
//! (images/rootfs/PERSONALISE.md), which coinopd sends when the guest asks
//! (`awaiting_personalisation`). A coinopd that died after the ask and before the send
//! leaves a guest that waits for ever, so the watch sends the line itself when the log shows
//! the ask and not `personalised`: built like a create's ([`Personalisation::for_lease`],
//! entropy and clock made at the send), from what the lease keeps durably: its network
//! from its record (`NAME.net.json`, claimed back at the adoption) and the tenant's key from
//! the ledger's command line (`coinop.ssh_key=`, which never reaches an agent VMM's command
//! line). The VMM takes one line per process: when it already holds one (the dead
//! coinopd's), the guest reads that one, and the lease's SSH host key becomes that line's:
//! every line's key is recorded before the line is sent, and the VMM's `status` names the
//! line it holds by its CRC-32 (`GuestNetwork::confirm_host_key`), so what the tenant is
//! told is the key its guest has, however the restarts fell. An agent guest still not ready when the
//! boot timeout passes has not applied its lease's data: as a create's boot that times
//! out, its lease stops `boot_failed` (the balance kept for the tenant) and its VMM is
//! stopped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coinop_proto::{LeaseState, StopReason};
use vmm_protocol::client::ControlError;

use crate::app::Shared;
use crate::boot_record::SpawnRecord;
use crate::ledger::{LeaseRow, LedgerError};
use crate::personalisation::Personalisation;
use crate::supervisor::GuestPaths;
use crate::vmm_log_events::{boot_progress, BootProgress};
use crate::vmm_process::VmmProcess;

/// How often a booting guest's log is read again: a boot takes tens of ms.
const POLL: Duration = Duration::from_millis(20);
/// How much longer than a boot timeout a create's retry waits for a boot under way: a
/// watch that reached its deadline may still be in its last control request (at most 2 s)
/// and ledger write.
const SETTLE_MARGIN: Duration = Duration::from_secs(3);

/// Finishes the boot of `l` (adopted `booting`, its VMM alive; `vmm` when its process is
/// known): now if its log says the guest is ready (or nothing is known to finish its
/// figures with; an agent guest's after asking its VMM which line it holds), else on a
/// task of its own.
pub fn finish(s: &Shared, l: &LeaseRow, vmm: Option<VmmProcess>) -> Result<(), LedgerError> {
    let pid = vmm.map(|v| v.pid).or(l.pid);
    let log = GuestPaths::for_lease(&s.config.run_dir(), &l.id).log;
    // An agent guest is ready only once it has its line: until then it is half-made.
    let agent = s.config.images.get(&l.image).is_some_and(|i| i.agent);
    // No record: a VMM whose spawn no ledger write followed. A warm restore's, taken by a
    // create that died after its commit and before the hand-over (the VMM was restored
    // ahead of the lease, so nothing was recorded at its spawn), or one of a coinopd that
    // kept no figures. The figures stay unknown, but an agent guest still needs its line.
    let record = SpawnRecord::from_json(l.spawn_json.as_deref());
    if record.is_none() && !agent {
        return s.ledger.mark_running(&l.id, pid, "{}");
    }
    let progress = boot_progress(&log);
    if progress.guest_ready_us.is_some() {
        if !agent {
            return mark_running(s, &l.id, pid, record.as_ref(), progress);
        }
        // Its line came from the dead coinopd: the lease names that line's host key before
        // it is running (what a create's retry then answers with).
        let (s, id, control) = (s.clone(), l.id.clone(), PathBuf::from(&l.control_path));
        tokio::spawn(async move {
            match vmm_protocol::client::status(&control).await {
                Ok(status) => {
                    if let Some(crc) = status.line_crc32 {
                        confirm_host_key(&s, &id, crc);
                    }
                }
                Err(e) => tracing::warn!(lease = %id, error = %e,
                    "asking an adopted ready guest's VMM which line it holds"),
            }
            if let Err(e) = mark_running(&s, &id, pid, record.as_ref(), progress) {
                tracing::error!(lease = %id, error = %e, "finishing an adopted boot");
            }
        });
        return Ok(());
    }
    // Owed while the guest may still need its line from us.
    let mut owed = personalisation(s, l);
    let control = PathBuf::from(&l.control_path);
    let (s, id) = (s.clone(), l.id.clone());
    let timeout = Duration::from_millis(s.config.boot_timeout_ms);
    let bound = Duration::from_millis(s.config.personalise_timeout_ms);
    tokio::spawn(async move {
        let mut deadline = Instant::now() + timeout;
        let mut p = progress;
        let mut warned = false;
        let (progress, gone) = loop {
            if let Some(line) = &owed {
                // Read by the guest or held by its VMM (whoever sent it), or handed to its
                // VMM now.
                let asked = p.personalised_us.is_some() || p.awaiting_personalisation_us.is_some();
                if asked && deliver(&s, &id, &control, line, &p, &mut warned).await {
                    owed = None;
                    // From here the guest only has to apply its line, as after a create's
                    // send (when the dead coinopd sent it, it has had that long already).
                    deadline = deadline.min(Instant::now() + bound);
                }
            }
            tokio::time::sleep(POLL).await;
            p = boot_progress(&log);
            // The process itself when it is known: the log is the VMM's own writing, and a
            // VMM that a hostile guest took over could write an `exit` there and run on,
            // untracked and unbilled, once its lease was marked ended.
            let gone = vmm.map_or(p.exited, |v| !v.is_running());
            if p.guest_ready_us.is_some() || gone || Instant::now() >= deadline {
                break (p, gone);
            }
        };
        let done = if gone && progress.guest_ready_us.is_none() {
            boot_failed(&s, &id, vmm)
        } else if agent && progress.guest_ready_us.is_none() {
            tracing::warn!(lease = %id, timeout_ms = timeout.as_millis() as u64,
                personalise_timeout_ms = bound.as_millis() as u64,
                personalised = progress.personalised_us.is_some(),
                "an adopted agent guest did not report guest_ready in time; its boot failed");
            boot_timed_out(&s, &id, record.as_ref(), progress)
        } else {
            if progress.guest_ready_us.is_none() {
                tracing::warn!(lease = %id, timeout_ms = timeout.as_millis() as u64,
                    "an adopted guest did not report guest_ready in time; running without it");
            }
            mark_running(&s, &id, pid, record.as_ref(), progress)
        };
        if let Err(e) = done {
            tracing::error!(lease = %id, error = %e, "finishing an adopted boot");
        }
    });
    Ok(())
}

/// Lease `l` (as read from the ledger) once it is no longer `booting`: its boot finished,
/// by a create of this coinopd's or by an adoption's watch; or as it is when a boot timeout
/// has passed. What a create's retry answers with, so that the retry of a create whose
/// reply a crash lost gets the running lease (or the failed boot), not one still booting.
pub async fn settled(s: &Shared, l: LeaseRow) -> Result<LeaseRow, LedgerError> {
    let deadline = Instant::now() + Duration::from_millis(s.config.boot_timeout_ms) + SETTLE_MARGIN;
    let mut now = l;
    while now.state == LeaseState::Booting && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        if let Some(row) = s.ledger.get(&now.id)? {
            now = row;
        }
    }
    Ok(now)
}

/// The line lease `l`'s guest needs if its image is an `agent` one; `None` for any other
/// image, or when what the line needs is lost (the guest then never gets ready).
fn personalisation(s: &Shared, l: &LeaseRow) -> Option<Personalisation> {
    let Some(image) = s.config.images.get(&l.image) else {
        tracing::warn!(lease = %l.id, image = %l.image,
            "the adopted guest's image is no longer offered: no personalisation for it");
        return None;
    };
    if !image.agent {
        return None;
    }
    // Claimed back from its record by the adoption, before this.
    let network = s.supervisor.isolation().network_info(&l.id);
    if network.is_none() && s.config.lease_gets_network(image) {
        // A line without the address would make a guest nobody can reach: better none
        // (the guest never gets ready) than a half-made one.
        tracing::error!(lease = %l.id,
            "the adopted guest's network record is missing: it gets no personalisation");
        return None;
    }
    let (_, ssh_key) = crate::leases::create::split_ssh_key_word(&l.cmdline);
    Some(Personalisation::for_lease(
        &l.id,
        network.as_ref(),
        ssh_key.as_deref(),
    ))
}

/// Whether the adopted guest at `control` has its line now: the line its VMM already holds
/// (the dead coinopd's; the lease's host key is put right to that line's), or one made and
/// sent now (its host key recorded first). `false` when the VMM cannot be asked or given
/// it: tried again at the next poll (logged the first time: `warned`).
async fn deliver(
    s: &Shared,
    id: &str,
    control: &Path,
    p: &Personalisation,
    progress: &BootProgress,
    warned: &mut bool,
) -> bool {
    let mut warn = |what: &str, e: &ControlError| {
        // Tried again at every poll until the deadline: said once, not 50 times a second.
        if !*warned {
            tracing::warn!(lease = id, error = %e, "{what}; trying again");
            *warned = true;
        }
    };
    let status = match vmm_protocol::client::status(control).await {
        Ok(status) => status,
        Err(e) => {
            warn(
                "asking an adopted guest's VMM about its personalisation",
                &e,
            );
            return false;
        }
    };
    if let Some(crc) = status.line_crc32 {
        tracing::info!(
            lease = id,
            "the adopted guest's VMM already had its line (sent before the restart); \
             waiting for guest_ready"
        );
        confirm_host_key(s, id, crc);
        return true;
    }
    if progress.personalised_us.is_some() {
        // Read, by a guest whose VMM cannot say which line (one restored with it).
        return true;
    }
    let line = p.line();
    s.supervisor
        .isolation()
        .set_host_key(id, &p.host_key_openssh(), &line);
    match vmm_protocol::client::personalise(control, &line).await {
        Ok(()) => {
            tracing::info!(lease = id, "personalisation sent to an adopted guest");
            true
        }
        Err(ControlError::Refused { error, .. }) => {
            // Given a line between the status and now: by nobody but a coinopd, and this
            // is the only one. Or a VMM from before `line_crc32`: it holds the dead
            // coinopd's line, whose key the record no longer names.
            tracing::warn!(lease = id, vmm_said = %error,
                "the adopted guest's VMM refused its line: it holds another; \
                 waiting for guest_ready");
            true
        }
        Err(e) => {
            warn("sending an adopted guest its personalisation", &e);
            false
        }
    }
}

/// The lease names the host key of the line (CRC-32 `crc`) its VMM holds.
fn confirm_host_key(s: &Shared, id: &str, crc: u32) {
    let isolation = s.supervisor.isolation();
    if !isolation.confirm_host_key(id, crc) && isolation.network_info(id).is_some() {
        tracing::warn!(
            lease = id,
            line_crc32 = crc,
            "the adopted guest holds a line whose host key is not on record: \
             the lease may name another key than its guest's"
        );
    }
}

fn mark_running(
    s: &Shared,
    id: &str,
    pid: Option<i32>,
    record: Option<&SpawnRecord>,
    progress: BootProgress,
) -> Result<(), LedgerError> {
    let json = figures_json(record, progress);
    s.ledger.mark_running(id, pid, &json)?;
    tracing::info!(lease = id, figures = %json, "adopted guest booted; lease running");
    Ok(())
}

/// The boot figures `record` and the VMM's `progress` make, as the ledger keeps them: `{}`
/// (unknown) without a record, whose VMM's clock had no known start.
fn figures_json(record: Option<&SpawnRecord>, progress: BootProgress) -> String {
    match record {
        Some(r) => serde_json::to_string(&r.finish(progress))
            .expect("a struct of integers always serializes"),
        None => "{}".to_string(),
    }
}

/// An agent guest was not ready by the deadline: as a create's boot that times out, the
/// lease stops `boot_failed` with the figures it got (its balance kept for the tenant's
/// stop with outputs) and its VMM is stopped, rather than a guest without its lease's data
/// handed out and billed.
fn boot_timed_out(
    s: &Shared,
    id: &str,
    record: Option<&SpawnRecord>,
    progress: BootProgress,
) -> Result<(), LedgerError> {
    let json = figures_json(record, progress);
    // Not if a stop of the tenant's came first: that one stops the guest.
    if s.ledger
        .mark_stopped(id, StopReason::BootFailed, Some(&json))?
    {
        if let Some(l) = s.ledger.get(id)? {
            crate::guest_stop::stop_guest(s, &l);
        }
    }
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
