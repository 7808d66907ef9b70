//! Creating a lease: check the spec and the payment, commit the lease with its payment in
//! one ledger transaction, boot the guest (from a slot built ahead of time when there is
//! one) and hand out the token; or give a retry that lost its reply its lease back
//! ([`crate::ledger::recovery`]). A failed boot stops the lease and says where its money is.

use coinop_host::guest_network::NetInfo;
use coinop_proto::recovery_key::recovery_hash;
use coinop_proto::replies::{
    BootFailedResponse, CreateResponse, ErrorDetail, NotBootedYetResponse, RecoveredResponse,
    Refund,
};
use coinop_proto::requests::CreateRequest;
use coinop_proto::{BootFigures, BootStart, LeaseState, Msat, StopReason};
use payment::credit::nut_types::BlindedMessage;
use payment::credit::Mint;

use super::payment_intake::verify_payment;
use super::{blocking, blocking_here, since, spec, LeaseError};
use crate::app::{AppState, Shared};
use crate::capacity::{Full, Totals};
use crate::golden_snapshot::{GoldenSnapshots, RestoreFault, Shape};
use crate::ledger::recovery::{outputs_digest, CreateOutcome as Committed, Recovered};
use crate::ledger::UsageBaseline;
use crate::ledger::{Credit, LeaseRow, LedgerError, NewLease};
use crate::personalisation::Personalisation;
use crate::supervisor::{BootError, BootRequest, GuestPaths, Nic, ReadyPoint, SnapshotUse};
use crate::token::{new_lease_id, new_token, token_hash};
use crate::warm_restores::{Warm, WarmRestores};
use coinop_host::guest_network::PendingRoute;

/// Longest tenant cmdline.
const MAX_CMDLINE: usize = 2048;

/// What a create came to. Every variant but `Created` is also what a lost reply's retry
/// can get.
#[derive(Debug)]
pub enum CreateOutcome {
    /// A new lease, booted.
    Created(CreateResponse),
    /// A retry proved the lease is its own: the lease as it is, with a fresh token.
    Recovered(Box<RecoveredResponse>),
    /// Paid and committed, but the guest did not boot: the lease is stopped and the body
    /// says where the balance is.
    BootFailed(Box<BootFailedResponse>),
    /// A recovered lease that never booted finds no room now: it waits, stopped, for a
    /// later retry (or for the tenant to take its balance back).
    WaitingForRoom(NotBootedYetResponse),
}

/// The metrics label of a credit's kind (`onchain_late` counts as `onchain`).
pub(super) fn metric_kind(c: &Credit) -> &'static str {
    if c.kind.starts_with("onchain") {
        "onchain"
    } else {
        "credit"
    }
}

/// Counts a claim the ledger refused because the payment was already spent.
pub(super) fn count_refused_claim(s: &AppState, kind: &'static str, e: &LedgerError) {
    if matches!(e, LedgerError::AlreadySpent(_)) {
        s.metrics.payment_already_spent(kind);
    }
}

/// `POST /v1/leases`: checks the spec and the payment, commits the lease and its payment in
/// one ledger transaction, boots the guest and answers with its token; or, for a retry that
/// proves with its recovery key that the lease is its own, gives that lease back.
pub async fn create(
    s: &Shared,
    arrival: u64,
    req: CreateRequest,
) -> Result<CreateOutcome, LeaseError> {
    spec::check(s, req.vcpus, req.mem_mib, Some(&req.image))?;
    let image = s
        .config
        .images
        .get(&req.image)
        .cloned()
        .ok_or_else(|| LeaseError::UnknownImage("unknown image".into()))?;
    let mut cmdline = req.cmdline.clone().unwrap_or_else(|| image.cmdline.clone());
    if cmdline.len() > MAX_CMDLINE || cmdline.contains('\0') {
        return Err(LeaseError::InvalidSpec(format!(
            "cmdline must be at most {MAX_CMDLINE} bytes without NUL"
        )));
    }
    // An agent image's guest learns its network, key and entropy from its personalisation
    // line, which its init asks for only when these words are on its command line: a
    // tenant's own command line gets them as the image's does.
    if image.agent {
        cmdline = crate::personalisation::agent_cmdline(&cmdline);
    }
    if let Some(key) = &req.ssh_key {
        let word = ssh_key_word(key).ok_or_else(|| {
            LeaseError::InvalidSpec(
                "ssh_key must be an OpenSSH public key: TYPE BASE64 [comment], at most 8 KiB"
                    .into(),
            )
        })?;
        // An agent image's guest gets the key through its personalisation line, which the
        // VMM takes only up to a limit.
        if image.agent && !Personalisation::key_fits(key) {
            return Err(LeaseError::InvalidSpec(
                "ssh_key is too long for this image's personalisation line (at most ~2.7 KiB)"
                    .into(),
            ));
        }
        cmdline = format!("{cmdline} {word}");
    }
    let recovery = req.recovery_key.as_deref().map(recovery_hash).transpose()?;
    let CreateRequest {
        vcpus,
        mem_mib,
        payment,
        outputs,
        ..
    } = req;
    // The payment before any room or slot: checking it is cheap and claims nothing, so a
    // flood of creates with invalid or spent payments holds no room a paying create needs,
    // and a spent payment is answered 409 whether or not the host is full.
    let credit = verify_payment(s, payment, None).await?;
    let order = Order {
        vcpus,
        mem_mib,
        outputs,
        credit,
        payment_verified_us: since(arrival),
    };
    let s2 = s.clone();
    let keys = order.credit.keys.clone();
    let spent = blocking_here(move || Ok(s2.ledger.first_claimed(&keys)?)).await?;
    if let Some(spent) = spent {
        return create_with_spent_payment(s, arrival, order, recovery, spent).await;
    }
    // A disk too full for coinopd's reserve takes no new lease (see `crate::disk_reserve`):
    // refused after the payment was found valid and unspent (only reads so far, nothing
    // claimed), so a tenant reusing a spent payment hears the truth (409), not "retry later".
    if s.disk.degraded() {
        let disk = std::sync::Arc::clone(&s.disk);
        blocking_here(move || Ok(disk.admit()?)).await?;
    }
    // A VMM restored ahead of its create (its shape's, from the current snapshot) names
    // the lease and holds its room already; else a slot built ahead of time names it, and
    // dropped unused (a full host, a recovered lease) goes back to the pool.
    let warm = warm_for(s, &image, vcpus, mem_mib, &cmdline).map(|w| WarmGuard::new(s, w));
    let slot = match warm {
        Some(_) => None,
        None => s.supervisor.isolation().take_slot(),
    };
    let id = match (&warm, &slot) {
        (Some(w), _) => w.lease_id().to_string(),
        (None, Some(slot)) => slot.lease_id().to_string(),
        (None, None) => new_lease_id(),
    };
    let want = Totals {
        vcpus,
        mib: mem_mib,
    };
    if warm.is_none() {
        if let Err(full) = reserve_room(s, &id, want).await {
            let full = LeaseError::HostFull {
                vcpus_free: full.free.vcpus,
                mib_free: full.free.mib,
            };
            return create_when_full(s, arrival, order, recovery, full).await;
        }
    }
    let name = LeaseName {
        id: &id,
        slot,
        warm,
    };
    let result = create_reserved(s, arrival, name, order, image, cmdline, recovery).await;
    if result.is_err() {
        s.capacity().release(&id);
    }
    result
}

/// Reserves `want` for lease `id`. Warm restores hold room no lease pays for, also while
/// one is being built: on a full host they are given up for a paid lease that their room
/// lets in (not for one that would not fit all the same: each would cost a restore to
/// build again), and no build takes the room back before this reserve (the hold).
async fn reserve_room(s: &Shared, id: &str, want: Totals) -> Result<(), Full> {
    // Bound first: the capacity guard must not live across the awaits below.
    let reserved = s.capacity().reserve(id, want);
    let Err(full) = reserved else {
        return Ok(());
    };
    let warm = s.warm.room();
    let fits = full.free.vcpus.saturating_add(warm.vcpus) >= want.vcpus
        && full.free.mib.saturating_add(warm.mib) >= want.mib;
    if !fits {
        return Err(full);
    }
    let hold = WarmRestores::make_room(s).await;
    if hold.freed() == 0 {
        return Err(full);
    }
    let reserved = s.capacity().reserve(id, want);
    reserved
}

/// What a create asks for and pays with, its payment checked.
struct Order {
    vcpus: u32,
    mem_mib: u64,
    outputs: Option<Vec<BlindedMessage>>,
    credit: Credit,
    /// µs from the request's arrival to its payment checked (a boot figure).
    payment_verified_us: u64,
}

/// The payment was spent before (`spent` says which key, and how): only the retry of the
/// create it paid for, proving it with its recovery key, gets that lease back; anyone else
/// gets the 409 any reuse of a spent payment gets, before any question of room.
async fn create_with_spent_payment(
    s: &Shared,
    arrival: u64,
    order: Order,
    recovery: Option<[u8; 32]>,
    spent: String,
) -> Result<CreateOutcome, LeaseError> {
    let kind = metric_kind(&order.credit);
    if let Some(hash) = recovery {
        let token = new_token();
        let th = token_hash(&token);
        let s2 = s.clone();
        let credit = order.credit;
        let found = blocking_here(move || Ok(s2.ledger.recover(&credit, &hash, &th)?)).await?;
        if let Some(r) = found {
            s.metrics.payment_recovered(kind);
            return recovered(s, arrival, r, token, order.outputs).await;
        }
    }
    s.metrics.payment_already_spent(kind);
    Err(LeaseError::AlreadySpent(spent))
}

/// The host has no room for a new lease: only a retry that recovers an existing one (which
/// holds its own room, or is booted if there is room for it) gets past the 503 anyone else
/// gets, whatever their payment. (The payment was unspent a moment ago; its own create may
/// have committed since.)
async fn create_when_full(
    s: &Shared,
    arrival: u64,
    order: Order,
    recovery: Option<[u8; 32]>,
    full: LeaseError,
) -> Result<CreateOutcome, LeaseError> {
    let Some(hash) = recovery else {
        return Err(full);
    };
    let Order {
        credit, outputs, ..
    } = order;
    let token = new_token();
    let th = token_hash(&token);
    let kind = metric_kind(&credit);
    let s2 = s.clone();
    let found = blocking_here(move || Ok(s2.ledger.recover(&credit, &hash, &th)?)).await?;
    match found {
        Some(r) => {
            s.metrics.payment_recovered(kind);
            recovered(s, arrival, r, token, outputs).await
        }
        None => Err(full),
    }
}

/// A new lease's id, and the slot built ahead of time or the warm restore that gave it,
/// if any.
struct LeaseName<'a> {
    id: &'a str,
    slot: Option<coinop_host::slot_pool::TakenSlot>,
    warm: Option<WarmGuard>,
}

/// A warm restore taken by a create: given up (in the background) if the create ends
/// before handing it over without booting under its id (its payment refused, a
/// recovered lease instead).
struct WarmGuard {
    s: Shared,
    warm: Option<Warm>,
}

impl WarmGuard {
    fn new(s: &Shared, warm: Warm) -> Self {
        WarmGuard {
            s: s.clone(),
            warm: Some(warm),
        }
    }

    fn lease_id(&self) -> &str {
        self.warm.as_ref().map_or("", |w| w.ahead.lease_id())
    }

    /// The warm restore, for its hand-over.
    fn take(mut self) -> Option<Warm> {
        self.warm.take()
    }
}

impl Drop for WarmGuard {
    fn drop(&mut self) {
        if let Some(w) = self.warm.take() {
            crate::warm_restores::discard_in_background(&self.s, w);
        }
    }
}

/// A warm restore for a create of `image` in this shape with this command line (the
/// image's own, plus the tenant's key word), if one is ready: an `agent` image restorable
/// as [`start_guest`] decides, restored from the shape's current golden snapshot, alive.
fn warm_for(
    s: &Shared,
    image: &crate::image_catalogue::ImageSpec,
    vcpus: u32,
    mem_mib: u64,
    cmdline: &str,
) -> Option<Warm> {
    if s.warm.ready() == 0 {
        return None;
    }
    let nic = s.config.lease_gets_network(image);
    let own = if image.agent {
        split_ssh_key_word(cmdline).0
    } else {
        cmdline.to_string()
    };
    // Only an agent's guest waits for its lease (its personalisation) after a restore.
    if !(image.snapshot && image.agent && own == image.cmdline) {
        return None;
    }
    let shape = Shape {
        image: image.clone(),
        vcpus,
        mem_mib,
        nic,
    };
    let (dir, _) = s.golden.lookup(&shape).ok()?;
    WarmRestores::take(s, &dir?)
}

/// The usage counters of a warm restore's VMM now: where its lease's metering starts.
async fn warm_baseline(w: &Warm) -> Result<UsageBaseline, String> {
    match vmm_protocol::client::request(w.ahead.control(), &vmm_protocol::Request::Usage).await {
        Ok(vmm_protocol::Reply::Usage(u)) => Ok(UsageBaseline {
            vcpu_total_us: u.vcpu_total_us,
            uptime_us: u.uptime_us,
        }),
        Ok(other) => Err(format!("unexpected reply to usage: {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

async fn create_reserved(
    s: &Shared,
    arrival: u64,
    name: LeaseName<'_>,
    req: Order,
    image: crate::image_catalogue::ImageSpec,
    cmdline: String,
    recovery: Option<[u8; 32]>,
) -> Result<CreateOutcome, LeaseError> {
    let LeaseName { id, slot, warm } = name;
    // Metering starts from the warm VMM's counters as they are now, committed with the
    // lease: a restart that adopts it bills nothing of the time before. A warm VMM that
    // cannot say goes; the lease boots on its own (under the same id).
    let (warm, baseline) = match warm {
        Some(guard) => {
            let reading = match guard.warm.as_ref() {
                Some(w) => warm_baseline(w).await,
                None => Err("taken".into()),
            };
            match reading {
                Ok(b) => (Some(guard), b),
                Err(e) => {
                    tracing::warn!(lease = id, error = %e,
                        "a warm restore's VMM does not answer; the lease boots on its own");
                    // Gone before the boot under its id begins (see `end_taken`).
                    if let Some(w) = guard.take() {
                        crate::warm_restores::end_taken(s, w).await;
                    }
                    (None, UsageBaseline::default())
                }
            }
        }
        None => (None, UsageBaseline::default()),
    };
    let credit = req.credit;
    let boot = BootFigures {
        payment_verified_us: req.payment_verified_us,
        ..BootFigures::default()
    };
    let token = new_token();
    let paths = GuestPaths::for_lease(&s.config.run_dir(), id);
    let new = NewLease {
        id: id.to_string(),
        token_hash: token_hash(&token),
        vcpus: req.vcpus,
        mem_mib: req.mem_mib,
        image: image.name.clone(),
        cmdline: cmdline.clone(),
        control_path: paths.control.display().to_string(),
        console_path: paths.console.display().to_string(),
        recovery_hash: recovery,
        baseline,
    };
    let balance = credit.amount_msat;
    let late = credit.is_late();
    let kind = metric_kind(&credit);
    // With a fleet store the payment is fenced there under the lease id before the ledger
    // commits it; a crash between the two is settled at start-up (crate::fleet).
    let fence = match &s.fleet {
        Some(fleet) => {
            let fence = fleet.fence(&credit.keys, "lease", id).await?;
            crate::fault::hit(crate::fault::point::FLEET_FENCED);
            crate::fault::delay(crate::fault::point::FLEET_FENCED).await;
            Some((fleet.clone(), fence))
        }
        None => None,
    };
    let s2 = s.clone();
    let outcome = blocking_here(move || {
        s2.ledger.create_or_recover(&new, &credit).map_err(|e| {
            count_refused_claim(&s2, kind, &e);
            LeaseError::from_claim(e)
        })
    })
    .await;
    if let Some((fleet, fence)) = fence {
        fleet.settle(fence, &s.ledger).await;
    }
    let outcome = outcome?;
    if let Committed::Recovered(r) = outcome {
        // The room reserved for a new lease is not needed: the lease exists.
        s.capacity().release(id);
        s.metrics.payment_recovered(kind);
        return recovered(s, arrival, *r, token, req.outputs).await;
    }
    let mut boot = boot;
    boot.ledger_committed_us = since(arrival);
    // The lease owns the warm VMM now: a restart adopts it with the lease.
    let warm = warm.and_then(WarmGuard::take).map(|w| {
        s.warm.owned(id);
        (w, baseline)
    });
    crate::fault::hit(crate::fault::point::CREATE_COMMITTED);
    let guest = GuestSpec {
        id,
        image: &image,
        cmdline: &cmdline,
        vcpus: req.vcpus,
        mem_mib: req.mem_mib,
    };
    match boot_guest(s, arrival, &guest, boot, slot, warm).await? {
        Ok((boot, network)) => Ok(CreateOutcome::Created(CreateResponse {
            late,
            lease_id: id.to_string(),
            token,
            token_seq: 1,
            state: LeaseState::Running,
            balance_msat: Msat::from_msat(balance),
            boot,
            network,
        })),
        Err((boot, why)) => boot_failed(s, id, token, 1, boot, why, req.outputs).await,
    }
}

/// What a committed lease boots.
struct GuestSpec<'a> {
    id: &'a str,
    image: &'a crate::image_catalogue::ImageSpec,
    cmdline: &'a str,
    vcpus: u32,
    mem_mib: u64,
}

/// Boots the guest of a lease the ledger holds as `booting` (its room reserved), with its
/// network when its image gets one, and marks it running. `Ok(Err(..))` is a failed boot,
/// its room (and network) already released, with why. `slot` is the slot built ahead of
/// time that named the lease, if its create took one; `warm`, the warm restore that named
/// it and where its metering starts, is handed over first, and if that fails the lease
/// boots on its own.
async fn boot_guest(
    s: &Shared,
    arrival: u64,
    g: &GuestSpec<'_>,
    mut boot: BootFigures,
    slot: Option<coinop_host::slot_pool::TakenSlot>,
    warm: Option<(Warm, UsageBaseline)>,
) -> Result<Result<(BootFigures, Option<NetInfo>), (BootFigures, String)>, LeaseError> {
    if let Some((w, baseline)) = warm {
        let snapshot = w.snapshot.clone();
        match hand_over(s, arrival, &boot, g, w).await {
            Ok((b, network)) => {
                boot.start = Some(BootStart::Warm);
                let returned = since(arrival);
                let running = mark_booted(s, arrival, g, boot, b, network, baseline, returned);
                let running = running.await;
                WarmRestores::want(s, &warm_shape(s, g));
                return running;
            }
            Err(e) => {
                // Its VMM, network and confinement are gone; the snapshot may be fine.
                tracing::warn!(lease = g.id, error = %e, snapshot = %snapshot.display(),
                    "the warm restore failed its hand-over; the lease boots on its own");
                reset_baseline(s, g.id).await;
            }
        }
    }
    let paths = GuestPaths::for_lease(&s.config.run_dir(), g.id);
    let attached = match attach_network(s, g.id, g.image, g.cmdline).await {
        Ok(attached) => attached,
        Err(why) => {
            tracing::warn!(lease = g.id, error = %why, "no network for the guest");
            // Not back to the pool: the slot's lease id is in the ledger now.
            if let Some(slot) = slot {
                slot.discard();
            }
            s.metrics.boot(false, None);
            s.capacity().release(g.id);
            return Ok(Err((boot, why)));
        }
    };
    let Attached {
        nic,
        network,
        cmdline,
        pending,
    } = attached;
    // The host's side of the network and its rules while the VMM starts.
    let routing = pending.map(|p| route_in_background(s, g.id, arrival, p));
    let nic = GuestNic {
        nic,
        network,
        routing,
    };
    let (booted, start, network, routed) =
        start_guest(s, arrival, &boot, g, &cmdline, &paths, slot, nic).await;
    // When coinopd had the guest's `guest_ready` in hand (its figure is the VMM's own clock).
    let boot_returned_us = since(arrival);
    boot.start = Some(start);
    // A failed boot released the network (a route still pending found nothing to do).
    let booted = match (booted, routed) {
        (Ok(b), Err(why)) => {
            tracing::warn!(lease = g.id, error = %why, "no network for the guest; stopping it");
            stop_unrouted(s, g.id, &boot, b.pid).await;
            s.metrics.boot(false, None);
            s.capacity().release(g.id);
            return Ok(Err((boot, format!("guest network: {why}"))));
        }
        (booted, _) => booted,
    };
    let restored = start == BootStart::Restore;
    match booted {
        Ok(b) => {
            let base = UsageBaseline::default();
            let running = mark_booted(s, arrival, g, boot, b, network, base, boot_returned_us);
            if restored && g.image.agent {
                // Keep leases of this shape restored ahead of their creates.
                WarmRestores::want(s, &warm_shape(s, g));
            }
            running.await
        }
        Err(e) => {
            tracing::warn!(lease = g.id, error = %e, "boot failed");
            s.metrics.boot(false, None);
            s.capacity().release(g.id);
            Ok(Err((boot, e.to_string())))
        }
    }
}

/// The warm VMM of lease `id` failed its hand-over and is gone: its row's baseline (that
/// VMM's counters, committed with the lease) goes back to zero before the VMM the lease
/// boots on next is spawned. The create marks the lease running from zero itself, but a
/// coinopd that dies after that spawn is recorded leaves the lease to a restart that keeps
/// the row's baseline: the new VMM's counters would sit below the old one's, and its boot
/// and first interval would go unbilled. If the ledger refuses the write (a full disk) the
/// boot goes on: refusing a paid lease its guest costs the tenant more than what only a
/// crash in this very window could leave unbilled.
async fn reset_baseline(s: &Shared, id: &str) {
    let (s2, id2) = (s.clone(), id.to_string());
    let reset = blocking_here(move || Ok(s2.ledger.reset_baseline(&id2)?)).await;
    if let Err(e) = reset {
        tracing::error!(lease = id, error = %e,
            "cannot reset the lease's metering baseline before its own boot; a crash \
             before it runs would under-bill its start");
    }
}

/// Records a booted guest's lease `running` (its metering from `baseline`) with its boot
/// figures, and answers with them and its network. `boot_returned_us`: when coinopd had
/// its `guest_ready` in hand.
#[allow(clippy::too_many_arguments)] // one booted lease: each is a different part of it
async fn mark_booted(
    s: &Shared,
    arrival: u64,
    g: &GuestSpec<'_>,
    mut boot: BootFigures,
    b: crate::supervisor::Booted,
    network: Option<NetInfo>,
    baseline: UsageBaseline,
    boot_returned_us: u64,
) -> Result<Result<(BootFigures, Option<NetInfo>), (BootFigures, String)>, LeaseError> {
    crate::fault::hit(crate::fault::point::CREATE_GUEST_READY);
    boot.vmm_spawned_us = b.vmm_spawned_us;
    boot.vcpus_started_us = b.vcpus_started_us;
    boot.guest_ready_us = Some(b.guest_ready_us);
    let json = serde_json::to_string(&boot).unwrap_or_default();
    let s2 = s.clone();
    let (id2, json2) = (g.id.to_string(), json.clone());
    let marked =
        blocking_here(move || Ok(s2.ledger.mark_running_from(&id2, b.pid, &json2, baseline)?))
            .await;
    if let Err(e) = marked {
        // The lease is paid and its guest runs: the reply must carry the token. The
        // ledger catches up once the disk lets it; metering reads the guest's
        // cumulative counters, so its time until then is billed then.
        tracing::error!(lease = g.id, error = %e,
                        "cannot record the running guest yet; retrying");
        let pid = b.pid;
        record_later(s, g.id, move |l, id| {
            l.mark_running_from(id, pid, &json, baseline)
        });
    }
    s.metrics.boot(true, Some(b.guest_ready_us));
    tracing::info!(
        lease = g.id,
        guest_ready_us = b.guest_ready_us,
        boot_returned_us,
        running_us = since(arrival),
        "lease running"
    );
    Ok(Ok((boot, network)))
}

/// The golden-snapshot shape of `g`'s lease (its network as the host gives its image).
fn warm_shape(s: &Shared, g: &GuestSpec<'_>) -> Shape {
    Shape {
        image: g.image.clone(),
        vcpus: g.vcpus,
        mem_mib: g.mem_mib,
        nic: s.config.lease_gets_network(g.image),
    }
}

/// Hands a warm restore over to lease `g` (committed under the warm VMM's id): its
/// personalisation (the tenant's key, the address the warm VMM was routed for, a fresh
/// host key, entropy and clock) is sent and `guest_ready` awaited. The lease's network as
/// the tenant is told it comes back with the figures.
async fn hand_over(
    s: &Shared,
    arrival: u64,
    figures: &BootFigures,
    g: &GuestSpec<'_>,
    w: Warm,
) -> Result<(crate::supervisor::Booted, Option<NetInfo>), BootError> {
    let Warm {
        ahead, mut network, ..
    } = w;
    let (_, ssh_key) = split_ssh_key_word(g.cmdline);
    let personalise = g.image.agent.then(|| {
        let p = Personalisation::for_lease(g.id, network.as_ref(), ssh_key.as_deref());
        if let Some(n) = &mut network {
            n.ssh.host_key = Some(p.host_key_openssh());
        }
        p
    });
    let paths = GuestPaths::for_lease(&s.config.run_dir(), g.id);
    let booted = s
        .supervisor
        .hand_over(
            ahead,
            BootRequest {
                lease_id: g.id,
                image: g.image,
                cmdline: g.cmdline,
                vcpus: g.vcpus,
                mem_mib: g.mem_mib,
                paths: &paths,
                arrival_us: arrival,
                figures: figures.clone(),
                timeout_ms: s.config.boot_timeout_ms,
                personalise_timeout_ms: s.config.personalise_timeout_ms,
                slot: None,
                nic: None,
                snapshot: SnapshotUse::None,
                personalise,
                ready_at: ReadyPoint::GuestReady,
            },
        )
        .await?;
    Ok((booted, network))
}

/// Starts the lease's VMM: by restoring the image's golden snapshot when there is one for
/// this lease (an image declared with `snapshot`, the image's own command line, and no NIC
/// unless the image is an `agent` one, whose guests get their address after the restore),
/// else by a cold boot, and then the first such lease starts the snapshot's build. An agent
/// guest gets its personalisation either way. A restore that fails before `guest_ready` (a
/// corrupt or foreign snapshot, a device mismatch: the VMM exits 2) boots the same lease
/// cold, with the reason logged (and a new NIC: the failed boot released the first), as
/// does a restored guest not ready within `--personalise-timeout-ms` of its line (its VMM
/// ended before the cold boot); whether the snapshot is discarded too is
/// [`GoldenSnapshots::restore_failed`]'s call (at once for exit 2 or 3, else on the
/// third failure in a row). A restore
/// that misses the boot timeout is not retried (the lease fails, refunded, as any boot
/// that times out: its VMM may still be winding down). Also returns the
/// lease's network as it ends up, and whether its routing, run beside the boot, succeeded
/// (moot for a failed boot, which released it).
#[allow(clippy::too_many_arguments)] // one lease's boot: each is a different part of it
async fn start_guest(
    s: &Shared,
    arrival: u64,
    figures: &BootFigures,
    g: &GuestSpec<'_>,
    cmdline: &str,
    paths: &GuestPaths,
    slot: Option<coinop_host::slot_pool::TakenSlot>,
    nic: GuestNic,
) -> (
    Result<crate::supervisor::Booted, BootError>,
    BootStart,
    Option<NetInfo>,
    Result<(), String>,
) {
    let GuestNic {
        nic,
        mut network,
        routing,
    } = nic;
    // An agent's kernel command line is the image's: the key (kept in the ledger's command
    // line, so a later reboot of the lease still has it) goes into the personalisation.
    let (cmdline, ssh_key) = if g.image.agent {
        split_ssh_key_word(cmdline)
    } else {
        (cmdline.to_string(), None)
    };
    // Its SSH host key is made here too: the public half goes in the reply's network; the
    // lease's network record names it once its line is sent (the supervisor).
    let personalise = |network: &mut Option<NetInfo>| {
        let p = g
            .image
            .agent
            .then(|| Personalisation::for_lease(g.id, network.as_ref(), ssh_key.as_deref()))?;
        if let Some(n) = network {
            n.ssh.host_key = Some(p.host_key_openssh());
        }
        Some(p)
    };
    let restorable =
        g.image.snapshot && cmdline == g.image.cmdline && (nic.is_none() || g.image.agent);
    let restore = if restorable {
        golden_for(s, g, nic.is_some())
    } else {
        None
    };
    let request = |slot, nic, snapshot, personalise| BootRequest {
        lease_id: g.id,
        image: g.image,
        cmdline: &cmdline,
        vcpus: g.vcpus,
        mem_mib: g.mem_mib,
        paths,
        arrival_us: arrival,
        figures: figures.clone(),
        timeout_ms: s.config.boot_timeout_ms,
        personalise_timeout_ms: s.config.personalise_timeout_ms,
        slot,
        nic,
        snapshot,
        personalise,
        ready_at: ReadyPoint::GuestReady,
    };
    let Some(dir) = restore else {
        let p = personalise(&mut network);
        let booted = s
            .supervisor
            .boot(request(slot, nic, SnapshotUse::None, p))
            .await;
        return (booted, BootStart::Cold, network, joined(routing).await);
    };
    let had_nic = nic.is_some();
    let p = personalise(&mut network);
    let restored = s
        .supervisor
        .boot(request(slot, nic, SnapshotUse::RestoreFrom(dir.clone()), p))
        .await;
    // The failed boot released the network it had: its route, done or not, is moot then.
    let routed = joined(routing).await;
    match restored {
        Ok(b) => {
            s.golden.restore_succeeded(&dir);
            (Ok(b), BootStart::Restore, network, routed)
        }
        Err(e) => {
            let discarded = s.golden.restore_failed(&dir, restore_fault(&e));
            let snapshot_is = if discarded { "discarded" } else { "kept" };
            if matches!(e, BootError::Timeout(_)) {
                tracing::warn!(lease = g.id, error = %e, snapshot = %dir.display(),
                    "restore timed out; the snapshot is {snapshot_is}");
                return (Err(e), BootStart::Restore, network, Ok(()));
            }
            // The VMM's own words (its stderr) before the cold boot's VMM truncates the log.
            let vmm_said = last_line(&paths.log);
            tracing::warn!(lease = g.id, error = %e, vmm_said, snapshot = %dir.display(),
                "restore failed; the snapshot is {snapshot_is} and the lease boots cold");
            let (nic, mut network) = if had_nic {
                match attach_network_now(s, g.id, g.image, &cmdline, arrival).await {
                    Ok(attached) => (attached.nic, attached.network),
                    Err(why) => {
                        // The caller releases the lease's room for the failed boot.
                        tracing::warn!(lease = g.id, error = %why, "no network for the cold boot");
                        return (Err(e), BootStart::Restore, None, Ok(()));
                    }
                }
            } else {
                (None, None)
            };
            let p = personalise(&mut network);
            let booted = s
                .supervisor
                .boot(request(None, nic, SnapshotUse::None, p))
                .await;
            // Its network was routed before the boot.
            (booted, BootStart::Cold, network, Ok(()))
        }
    }
}

/// What a failed restore says about its snapshot: the VMM's refusal of its inputs (exit 2:
/// the snapshot's checksum, version, host or devices) or a guest crash before the tenant's
/// line could matter (exit 3) blame the snapshot; a timeout or a host error does not.
fn restore_fault(e: &BootError) -> RestoreFault {
    match e {
        BootError::Exited {
            code: Some(code), ..
        } if *code == 2 || *code == i64::from(crate::supervisor::GUEST_CRASH_CODE) => {
            RestoreFault::Snapshot
        }
        _ => RestoreFault::Unknown,
    }
}

/// Stops the guest of a lease whose boot succeeded but whose network could not be routed:
/// the lease is stopped as a failed boot first (so the VMM's end is not taken for the
/// guest's own exit), then its VMM, and with it its jail, cgroup and network, goes. The
/// stop records the boot's figures (`boot`): a failed boot stopped without them looks like
/// one that never ran, which a retried create would boot again under this id, even while
/// this teardown still removes what is registered under it.
async fn stop_unrouted(s: &Shared, id: &str, boot: &BootFigures, pid: Option<i32>) {
    let (s2, id2) = (s.clone(), id.to_string());
    let json = serde_json::to_string(boot).unwrap_or_default();
    let marked = blocking(move || {
        Ok(s2
            .ledger
            .mark_stopped(&id2, StopReason::BootFailed, Some(&json))?)
    })
    .await;
    if let Err(e) = marked {
        tracing::warn!(lease = id, error = %e, "recording the failed boot before the stop");
    }
    let paths = GuestPaths::for_lease(&s.config.run_dir(), id);
    let target = crate::guest_stop::StopTarget {
        lease_id: id.to_string(),
        control: paths.control,
        vmm: pid.and_then(crate::vmm_process::VmmProcess::of),
    };
    let isolation = std::sync::Arc::clone(s.supervisor.isolation());
    crate::guest_stop::carry_out(isolation, std::sync::Arc::clone(&s.ledger), target).await;
}

/// The last non-empty line of a VMM log (read from its end only), for a log line about it.
fn last_line(path: &std::path::Path) -> String {
    crate::vmm_log_events::tail_text(path)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(400)
        .collect()
}

/// The golden snapshot to restore `g` from, if one is ready; else starts its build (once).
fn golden_for(s: &Shared, g: &GuestSpec<'_>, nic: bool) -> Option<std::path::PathBuf> {
    let shape = Shape {
        image: g.image.clone(),
        vcpus: g.vcpus,
        mem_mib: g.mem_mib,
        nic,
    };
    match s.golden.lookup(&shape) {
        Ok((Some(dir), _)) => Some(dir),
        Ok((None, key)) => {
            GoldenSnapshots::build_in_background(s, shape, key);
            None
        }
        Err(e) => {
            tracing::warn!(lease = g.id, error = %e, "no golden snapshot; booting cold");
            None
        }
    }
}

/// A lease's NIC when its image gets one: the tap's fd, the tenant's view, `cmdline` with
/// the guest's address words (they depend on the slot, so the ledger keeps the command line
/// without them) except for an `agent` image, whose guest gets its address through its
/// personalisation, and the network's routing still to do ([`route_in_background`]).
struct Attached {
    nic: Option<Nic>,
    network: Option<NetInfo>,
    cmdline: String,
    pending: Option<PendingRoute>,
}

/// Reserves the lease's NIC when its image gets one: all its VMM needs to start (see
/// [`coinop_host::guest_network::GuestNetwork::reserve`]); no `ip` or `nft` runs yet.
async fn attach_network(
    s: &Shared,
    id: &str,
    image: &crate::image_catalogue::ImageSpec,
    cmdline: &str,
) -> Result<Attached, String> {
    let none = Attached {
        nic: None,
        network: None,
        cmdline: cmdline.to_string(),
        pending: None,
    };
    if !s.config.lease_gets_network(image) {
        return Ok(none);
    }
    let isolation = std::sync::Arc::clone(s.supervisor.isolation());
    let lease = id.to_string();
    // A tap ioctl and a small record file: on this thread, no hop to the blocking pool.
    let reserved = blocking_here(move || Ok(isolation.reserve_network(&lease)))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let Some((tap, info, pending)) = reserved else {
        return Ok(none);
    };
    // An agent gets its address through its personalisation line instead.
    let cmdline = if image.agent {
        cmdline.to_string()
    } else {
        format!(
            "{cmdline} {}",
            coinop_host::guest_network::cmdline_words(&info)
        )
    };
    let nic = Nic {
        tap,
        mac: info.mac.clone(),
    };
    Ok(Attached {
        nic: Some(nic),
        network: Some(info),
        cmdline,
        pending: Some(pending),
    })
}

/// A lease's NIC as its boot gets it: the VMM's part, the tenant's view, and its routing
/// under way ([`route_in_background`]).
struct GuestNic {
    nic: Option<Nic>,
    network: Option<NetInfo>,
    routing: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

/// Waits for a network's routing (nothing to wait for without one).
async fn joined(
    routing: Option<tokio::task::JoinHandle<Result<(), String>>>,
) -> Result<(), String> {
    match routing {
        Some(task) => task
            .await
            .map_err(|e| format!("worker: {e}"))
            .and_then(|r| r),
        None => Ok(()),
    }
}

/// Routes a reserved network off the request's path (the VMM starts meanwhile); the
/// create joins it before its reply, so a reply still means the forwarded port works.
fn route_in_background(
    s: &Shared,
    id: &str,
    arrival: u64,
    pending: PendingRoute,
) -> tokio::task::JoinHandle<Result<(), String>> {
    let isolation = std::sync::Arc::clone(s.supervisor.isolation());
    let lease = id.to_string();
    tokio::task::spawn_blocking(move || {
        isolation
            .route_network(pending)
            .map_err(|e| e.to_string())?;
        tracing::info!(
            lease,
            network_routed_us = since(arrival),
            "guest network routed"
        );
        Ok(())
    })
}

/// Reserves and routes the lease's NIC at once (a cold boot after a failed restore).
async fn attach_network_now(
    s: &Shared,
    id: &str,
    image: &crate::image_catalogue::ImageSpec,
    cmdline: &str,
    arrival: u64,
) -> Result<Attached, String> {
    let mut attached = attach_network(s, id, image, cmdline).await?;
    if let Some(pending) = attached.pending.take() {
        let routed = route_in_background(s, id, arrival, pending)
            .await
            .map_err(|e| format!("worker: {e}"))
            .and_then(|r| r);
        if let Err(why) = routed {
            let isolation = std::sync::Arc::clone(s.supervisor.isolation());
            let lease = id.to_string();
            let _ = tokio::task::spawn_blocking(move || isolation.release_disk_and_network(&lease))
                .await;
            return Err(why);
        }
    }
    Ok(attached)
}

/// `coinop.ssh_key=TYPE:BLOB` for an OpenSSH public key line, or `None` when `key` is not
/// one (the comment is dropped: it could hold anything, and the guest needs none).
pub fn ssh_key_word(key: &str) -> Option<String> {
    if key.len() > 8192 {
        return None;
    }
    let mut parts = key.split_whitespace();
    let (kind, blob) = (parts.next()?, parts.next()?);
    let kind_ok = !kind.is_empty()
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-@.".contains(&b));
    let blob_ok = blob.len() >= 16
        && blob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    (kind_ok && blob_ok).then(|| format!("coinop.ssh_key={kind}:{blob}"))
}

/// `cmdline` without its `coinop.ssh_key=TYPE:BLOB` word, and that key as an OpenSSH key
/// line (`TYPE BLOB`), if it had one.
pub(crate) fn split_ssh_key_word(cmdline: &str) -> (String, Option<String>) {
    let mut key = None;
    let rest: Vec<&str> = cmdline
        .split(' ')
        .filter(|word| match word.strip_prefix("coinop.ssh_key=") {
            Some(value) => {
                key = Some(value.replacen(':', " ", 1));
                false
            }
            None => true,
        })
        .collect();
    (rest.join(" "), key)
}

/// The reply to a retry that recovered its lease (see [`crate::ledger::recovery`]): 200 with
/// the lease as it is and the new token, after booting it if it never booted (or once a
/// boot under way, e.g. one a restart adopted, finished: [`crate::adopted_boot::settled`]).
async fn recovered(
    s: &Shared,
    arrival: u64,
    r: Recovered,
    token: String,
    outputs: Option<Vec<BlindedMessage>>,
) -> Result<CreateOutcome, LeaseError> {
    tracing::info!(lease = %r.lease.id, token_seq = r.token_seq, reboot = r.reboot,
                   "lease recovered by a retried create");
    let l = r.lease;
    if r.reboot {
        let boot = BootFigures {
            payment_verified_us: since(arrival),
            ledger_committed_us: since(arrival),
            ..BootFigures::default()
        };
        let Some(image) = s.config.images.get(&l.image).cloned() else {
            let why = format!("image {:?} is no longer offered", l.image);
            return boot_failed(s, &l.id, token, r.token_seq, boot, why, outputs).await;
        };
        let want = Totals {
            vcpus: l.vcpus,
            mib: l.mem_mib,
        };
        if let Err(full) = reserve_room(s, &l.id, want).await {
            let why = format!(
                "host full: {} vCPUs and {} MiB free",
                full.free.vcpus, full.free.mib
            );
            return not_booted_yet(s, &l.id, token, r.token_seq, why).await;
        }
        let guest = GuestSpec {
            id: &l.id,
            image: &image,
            cmdline: &l.cmdline,
            vcpus: l.vcpus,
            mem_mib: l.mem_mib,
        };
        if let Err((boot, why)) = boot_guest(s, arrival, &guest, boot, None, None).await? {
            return boot_failed(s, &l.id, token, r.token_seq, boot, why, outputs).await;
        }
    }
    let now = s.ledger.get(&l.id)?.unwrap_or(l);
    let now = crate::adopted_boot::settled(s, now).await?;
    let refund = resigned_refund(s, &now, outputs.as_deref())?;
    Ok(CreateOutcome::Recovered(Box::new(RecoveredResponse {
        lease: super::view(s, &now),
        token,
        token_seq: r.token_seq,
        recovered: true,
        refund,
    })))
}

/// A recovered lease that never booted and finds no room now: it goes back to waiting
/// (stopped, `boot_failed`, no boot figures, balance kept) so that a later retry boots it,
/// and the answer is 503 `host_full` with `Retry-After`, carrying the new token so the
/// tenant can also just take its balance back (`POST /stop` with outputs).
async fn not_booted_yet(
    s: &Shared,
    id: &str,
    token: String,
    token_seq: u64,
    why: String,
) -> Result<CreateOutcome, LeaseError> {
    let s2 = s.clone();
    let id2 = id.to_string();
    blocking(move || Ok(s2.ledger.mark_stopped(&id2, StopReason::BootFailed, None)?)).await?;
    Ok(CreateOutcome::WaitingForRoom(NotBootedYetResponse {
        error: ErrorDetail::new(
            "host_full",
            format!("the lease waits for room to boot: {why}"),
        ),
        lease_id: id.to_string(),
        token,
        token_seq,
        recovered: true,
        state: LeaseState::Stopped,
        stop_reason: StopReason::BootFailed,
    }))
}

/// The refund signatures a lost create reply carried, signed again: only when the lease was
/// refunded onto outputs and the retry brings exactly those outputs (same notes, no new
/// money; see [`crate::ledger::recovery::outputs_digest`]).
fn resigned_refund(
    s: &Shared,
    l: &LeaseRow,
    outputs: Option<&[BlindedMessage]>,
) -> Result<Option<Refund>, LeaseError> {
    let (Some(refund_msat), Some(outputs)) = (l.refunded_msat, outputs) else {
        return Ok(None);
    };
    let Some(stored) = s.ledger.refund_outputs(&l.id)? else {
        return Ok(None);
    };
    let used = Mint::change_outputs_needed(refund_msat).min(outputs.len());
    if stored.as_slice() != outputs_digest(&outputs[..used]).as_slice() {
        return Ok(None);
    }
    let signed = s.mint.change(refund_msat, &outputs[..used])?;
    Ok(Some(Refund::Signatures {
        refund_msat: Msat::from_msat(refund_msat),
        residual_msat: Msat::from_msat(l.residual_msat.unwrap_or(0)),
        signatures: signed,
    }))
}

/// A failed boot: the lease stops (`boot_failed`) and its whole balance is refunded as
/// blind-signed change when the request brought outputs, or kept on the lease for the
/// tenant to collect with its token (`POST /stop` with outputs).
async fn boot_failed(
    s: &Shared,
    id: &str,
    token: String,
    token_seq: u64,
    boot: BootFigures,
    why: String,
    outputs: Option<Vec<BlindedMessage>>,
) -> Result<CreateOutcome, LeaseError> {
    let s2 = s.clone();
    let id2 = id.to_string();
    let json = serde_json::to_string(&boot).unwrap_or_default();
    let json2 = json.clone();
    let recorded = blocking(move || {
        s2.ledger
            .mark_stopped(&id2, StopReason::BootFailed, Some(&json2))?;
        match outputs {
            // A payment not yet deep enough for a refund (credit) leaves the balance on the
            // stopped lease, for a stop with outputs later.
            Some(outs) if super::stop::refund_deep_enough(&s2, &id2).is_ok() => {
                // Records the outputs with the refund, so that a retry that lost this reply
                // can have the same signatures again.
                let r = super::stop::refund_with(&s2, &id2, &outs)?;
                crate::fault::hit(crate::fault::point::CREATE_REFUNDED);
                Ok(Some(r))
            }
            _ => Ok(None),
        }
    })
    .await;
    let refund = match recorded {
        Ok(refund) => refund,
        Err(e) => {
            // The lease is paid and its reply must carry the token: its balance stays on
            // it for a stop with outputs, and its failed boot is recorded once the disk
            // lets it (a no-op if it was).
            tracing::error!(lease = id, error = %e, "cannot record the failed boot yet; retrying");
            record_later(s, id, move |l, id| {
                l.mark_stopped(id, StopReason::BootFailed, Some(&json))
                    .map(drop)
            });
            None
        }
    };
    let refund = match refund {
        Some(r) => Refund::Signatures {
            refund_msat: Msat::from_msat(r.refund_msat),
            residual_msat: Msat::from_msat(r.residual_msat),
            signatures: r.signed,
        },
        None => {
            let bal = s.ledger.get(id)?.map(|l| l.balance_msat).unwrap_or(0);
            let change = Msat::from_msat(bal).split_change();
            Refund::Kept {
                refund_msat: change.whole,
                residual_msat: change.residual,
                how: "POST /v1/leases/{id}/stop with outputs and the token".into(),
            }
        }
    };
    Ok(CreateOutcome::BootFailed(Box::new(BootFailedResponse {
        error: ErrorDetail::new("boot_failed", format!("the guest did not boot: {why}")),
        lease_id: id.to_string(),
        token,
        token_seq,
        state: LeaseState::Stopped,
        stop_reason: StopReason::BootFailed,
        refund,
        boot,
    })))
}

/// How often [`record_later`] tries again.
const RECORD_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Retries a ledger step of lease `id` that failed after its create committed, in the
/// background, while the disk refuses it (a full disk: the failure released coinopd's disk
/// reserve, so the first retry normally succeeds). `step` must be idempotent.
fn record_later(
    s: &Shared,
    id: &str,
    step: impl Fn(&crate::ledger::Ledger, &str) -> Result<(), LedgerError> + Send + Sync + 'static,
) {
    let (s, id) = (s.clone(), id.to_string());
    let step = std::sync::Arc::new(step);
    tokio::spawn(async move {
        loop {
            let (s2, id2, step2) = (s.clone(), id.clone(), std::sync::Arc::clone(&step));
            let done = tokio::task::spawn_blocking(move || step2(&s2.ledger, &id2))
                .await
                .unwrap_or(Err(LedgerError::Poisoned));
            match done {
                Ok(()) => {
                    tracing::info!(lease = %id, "lease state recorded");
                    return;
                }
                Err(e) if e.is_storage() => {}
                Err(e) => {
                    tracing::error!(lease = %id, error = %e, "giving up recording the lease state");
                    return;
                }
            }
            tokio::time::sleep(RECORD_RETRY).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::{split_ssh_key_word, ssh_key_word};

    #[test]
    fn an_agents_key_leaves_the_command_line_for_its_personalisation() {
        let word = ssh_key_word("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB+/= me").expect("key");
        let (rest, key) = split_ssh_key_word(&format!("root=/dev/vda rw {word}"));
        assert_eq!(rest, "root=/dev/vda rw");
        assert_eq!(
            key.as_deref(),
            Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB+/=")
        );
        assert_eq!(
            split_ssh_key_word("root=/dev/vda"),
            ("root=/dev/vda".to_string(), None)
        );
    }

    #[test]
    fn ssh_keys_become_one_command_line_word() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBase64Blob+/= me@laptop";
        assert_eq!(
            ssh_key_word(key).as_deref(),
            Some("coinop.ssh_key=ssh-ed25519:AAAAC3NzaC1lZDI1NTE5AAAAIBase64Blob+/="),
            "the comment is dropped"
        );
        assert_eq!(
            ssh_key_word("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 x;reboot").as_deref(),
            Some("coinop.ssh_key=ssh-ed25519:AAAAC3NzaC1lZDI1NTE5"),
            "a comment never reaches the command line"
        );
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-ed25519 short",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5;reboot",
            "ssh;x AAAAC3NzaC1lZDI1NTE5AAAA",
            "ssh ed25519 AAAAC3NzaC1lZDI1NTE5AAAA",
        ] {
            assert_eq!(ssh_key_word(bad), None, "{bad:?}");
        }
        assert!(ssh_key_word(&"A".repeat(9000)).is_none(), "at most 8 KiB");
    }
}
