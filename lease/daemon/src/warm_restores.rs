//! Warm restores: leases of a snapshot image restored ahead of the creates that take them.
//!
//! A restore on the request path spends most of its time before the guest runs: the VMM's
//! process start, its restore steps (KVM VM, irqchip, vCPUs, virtio), the overlay's copy,
//! the network's routing. Here those run before any create: the pool keeps up to
//! `--warm-restores` VMMs restored from the golden snapshot of the shape (image, vCPUs,
//! memory, NIC) last created by restore, each in a slot of its own (lease id, jail, cgroup,
//! uid, overlay copy, tap and routed address), its guest waiting for its personalisation
//! line ([`crate::supervisor::Supervisor::start_ahead`]). A create of that shape takes one
//! ([`WarmRestores::take`]): its lease gets the slot's id, its personalisation (entropy,
//! clock, host key, the tenant's key, the address the slot was routed for) is sent as it
//! would be after a restore, and its metering starts from the VMM's counters at the
//! hand-over, so the tenant pays nothing of the time before. A warm VMM is made of nothing
//! of any lease: what makes a lease unique arrives with its line.
//!
//! Each warm VMM holds the room of its shape ([`crate::capacity`]), is built only while no
//! boot is in flight (as the slot pool's refills: [`coinop_host::slot_pool::SETTLE`]), and
//! is given up when a create finds the host full ([`WarmRestores::make_room`]), when its
//! snapshot is replaced, or when coinopd stops. A warm VMM still being built holds its room
//! from the reservation on, so a create that finds the host full gives up that build too:
//! it waits for the build to end (its last step, the wait for a place in the pool, cut
//! short) and to release the room, and no other build reserves room until the create has
//! reserved its own.
//!
//! A warm VMM no create can take any more is given up by the filler, which the pool's
//! watch ([`WarmRestores::watch`]) starts for it within a second, with no create needed:
//! its VMM died, its snapshot is no longer its shape's current one (a new kernel or root
//! filesystem, a snapshot discarded), or its guest turned the doorbell on and left the
//! ring it got at its restore unheeded for `--personalise-timeout-ms` (it hung, and would
//! not take its line either: [`RingAnswer`]). The watch also starts the filler when the
//! pool is short of the wanted shape and a snapshot and room for it are there (a VMM given
//! up, a snapshot of a new key built, a lease's room freed).
//!
//! Crashes: every warm VMM has a marker file `STATE/warm/ID`, written before its spawn and
//! removed once a lease owns the VMM (its ledger row committed: from there the adoption at
//! start-up finds it, [`crate::scheduler`]) or once the VMM is gone. A coinopd that starts
//! kills what each marker of a lease id the ledger does not hold names
//! ([`remove_left_overs`]): the process recorded in it (pid and start time), and any
//! `coinop-vmm` in the cgroup coinopd made for that id.
//!
//! Files: a warm VMM writes its console and VMM log (and, without a jail, has its control
//! socket) in the run directory under its id, as a lease's VMM does. One that no lease
//! took is no lease's, so nothing that cleans up after leases ever sees them: they go when
//! the VMM is given up, and at start-up with any other such files of no lease.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use coinop_host::guest_network::NetInfo;

use crate::app::Shared;
use crate::capacity::Totals;
use crate::golden_snapshot::Shape;
use crate::supervisor::{Ahead, BootRequest, GuestPaths, Nic, ReadyPoint, SnapshotUse};
use crate::vmm_process::VmmProcess;

/// How long the filler waits before looking again when a boot is in flight or a build
/// failed.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// How often the watch looks for warm VMMs no create can take and for a pool short of
/// its wanted shape.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Beyond the boot timeout, how long a create that gives up a warm build waits for it to
/// end: the network is routed before the restore, which the boot timeout bounds.
const BUILD_END_MARGIN: Duration = Duration::from_secs(5);

/// What the watch has learnt of a warm guest's answer to the ring it got once restored
/// ([`crate::supervisor::Supervisor::start_ahead`]; images/rootfs/PERSONALISE.md, "The
/// doorbell").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RingAnswer {
    /// Not known yet: the watch asks again at its next look.
    #[default]
    Awaited,
    /// Heeded, or nothing to heed (a guest that does not use the doorbell, or was not
    /// rung): the watch does not ask again.
    Heeded,
    /// A doorbell guest that left its ring unheeded for [`unheeded_limit`]: nothing in it
    /// listens for its line, which it would not take in time either.
    Unheeded,
}

/// A VMM restored ahead of its lease.
#[derive(Debug)]
pub struct Warm {
    /// The VMM, its guest waiting for its line.
    pub ahead: Ahead,
    /// The golden snapshot it was restored from.
    pub snapshot: PathBuf,
    /// The shape it was restored for.
    pub shape: Shape,
    /// Its network (routed), when the shape has a NIC.
    pub network: Option<NetInfo>,
    /// Whether its guest answered its ring.
    pub ring: RingAnswer,
}

#[derive(Debug, Default)]
struct State {
    ready: Vec<Warm>,
    /// The shape the last create by restore asked for: the one kept warm.
    wanted: Option<Shape>,
    /// A filler task runs.
    filling: bool,
    /// A build holds room: reserved, and neither in `ready` nor released yet.
    building: bool,
    /// A create that found the host full wants the build's room: the build ends in a
    /// discard, not in `ready`.
    give_up_build: bool,
    /// Creates taking the warm restores' room back ([`WarmRestores::make_room`]): until
    /// each has reserved its own, no build reserves any.
    reclaiming: usize,
    /// coinopd stops: nothing more is built.
    stopping: bool,
    /// The snapshot a build last failed to restore from: the watch does not try it again
    /// (a create's own restore of the shape does, and its `want` clears this).
    failed: Option<PathBuf>,
}

/// The pool of warm restores.
#[derive(Debug)]
pub struct WarmRestores {
    target: usize,
    markers: PathBuf,
    state: Mutex<State>,
    /// Wakes a build waiting for its place in the pool when it is given up.
    give_up: tokio::sync::Notify,
}

impl WarmRestores {
    /// Up to `target` warm VMMs, their markers in `markers`.
    pub fn new(target: usize, markers: PathBuf) -> Self {
        WarmRestores {
            target,
            markers,
            state: Mutex::default(),
            give_up: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many are ready.
    pub fn ready(&self) -> usize {
        self.state().ready.len()
    }

    /// A create restored a lease of `shape`: keep that shape warm (building in the
    /// background unless the pool is full of it or off).
    pub fn want(s: &Shared, shape: &Shape) {
        let warm = &s.warm;
        if warm.target == 0 {
            return;
        }
        let start = {
            let mut state = warm.state();
            if state.stopping {
                return;
            }
            state.wanted = Some(shape.clone());
            state.failed = None;
            !std::mem::replace(&mut state.filling, true)
        };
        if start {
            let s = s.clone();
            tokio::spawn(async move { fill(&s).await });
        }
    }

    /// Watches the pool until coinopd stops, every [`WATCH_EVERY`]: starts the filler when
    /// a warm VMM can no longer be taken (it gives those up, freeing their room) or when
    /// the pool is short of the wanted shape and a build could succeed. Without it a dead
    /// or stale warm VMM held its room, unbilled, until some create happened to reap it,
    /// and after a new kernel or root filesystem nothing refilled the pool until a create
    /// restored the shape again. Owns nothing: it may be aborted at any point.
    pub async fn watch(s: Shared) {
        if s.warm.target == 0 {
            return;
        }
        let mut every = tokio::time::interval(WATCH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if s.warm.state().stopping {
                return;
            }
            check_rings(&s).await;
            let ready: Vec<Takeable> = s.warm.state().ready.iter().map(Takeable::of).collect();
            if any_untakeable(&s, &ready) || short_and_buildable(&s) {
                Self::start_filler(&s);
            }
        }
    }

    /// Starts the filler unless it runs, nothing is wanted, or coinopd stops.
    fn start_filler(s: &Shared) {
        let start = {
            let mut state = s.warm.state();
            if state.stopping || state.wanted.is_none() {
                false
            } else {
                !std::mem::replace(&mut state.filling, true)
            }
        };
        if start {
            let s = s.clone();
            tokio::spawn(async move { fill(&s).await });
        }
    }

    /// A warm VMM restored from `snapshot` (the current golden snapshot of the create's
    /// shape), if one is ready and alive. Its room is the create's from here (held under
    /// its lease id); its marker stays until [`WarmRestores::owned`].
    pub fn take(s: &Shared, snapshot: &Path) -> Option<Warm> {
        let mut dead = Vec::new();
        let taken = {
            let mut state = s.warm.state();
            let mut taken = None;
            // One whose guest answered its ring first: it is known to listen.
            let of_snapshot = |w: &Warm, heeded: bool| {
                w.snapshot == snapshot && (!heeded || w.ring == RingAnswer::Heeded)
            };
            while let Some(i) = state
                .ready
                .iter()
                .position(|w| of_snapshot(w, true))
                .or_else(|| state.ready.iter().position(|w| of_snapshot(w, false)))
            {
                let w = state.ready.swap_remove(i);
                if w.ring != RingAnswer::Unheeded && w.ahead.vmm().is_some_and(|v| v.is_running()) {
                    taken = Some(w);
                    break;
                }
                dead.push(w);
            }
            taken
        };
        for w in dead {
            if w.ring == RingAnswer::Unheeded {
                tracing::warn!(
                    lease = w.ahead.lease_id(),
                    "a warm restore's guest left its ring unheeded while waiting"
                );
            } else {
                tracing::warn!(
                    lease = w.ahead.lease_id(),
                    "a warm restore's VMM died while waiting"
                );
            }
            let s = s.clone();
            tokio::spawn(async move { discard(&s, w, true).await });
        }
        taken
    }

    /// The lease `lease_id` (a warm VMM's id) is committed in the ledger: from here a
    /// restart adopts its VMM, so the marker goes.
    pub fn owned(&self, lease_id: &str) {
        let _ = std::fs::remove_file(self.markers.join(lease_id));
    }

    /// The room warm restores hold now: the ready ones' and a build's (counted as the wanted
    /// shape, the one it is built for).
    pub fn room(&self) -> Totals {
        let state = self.state();
        let building = state.wanted.as_ref().filter(|_| state.building);
        state.ready.iter().map(|w| &w.shape).chain(building).fold(
            Totals { vcpus: 0, mib: 0 },
            |t, shape| Totals {
                vcpus: t.vcpus.saturating_add(shape.vcpus),
                mib: t.mib.saturating_add(shape.mem_mib),
            },
        )
    }

    /// For a create that found the host full: gives up every warm VMM, the ready ones and
    /// one being built, and returns once their room is free, with how many there were. No
    /// build reserves room while the returned hold lives: the room freed is the create's
    /// to reserve, not the next build's.
    pub async fn make_room(s: &Shared) -> RoomHold {
        let (ready, building) = {
            let mut state = s.warm.state();
            state.reclaiming += 1;
            state.give_up_build |= state.building;
            (std::mem::take(&mut state.ready), state.building)
        };
        // From here the count goes back down however this ends.
        let mut hold = RoomHold {
            s: s.clone(),
            freed: ready.len(),
        };
        s.warm.give_up.notify_waiters();
        for w in ready {
            discard(s, w, true).await;
        }
        if building {
            // The build ends within its boot timeout (its VMM's restore), then the filler
            // discards it and releases its room.
            let limit = Duration::from_millis(s.config.boot_timeout_ms) + BUILD_END_MARGIN;
            if crate::clock::poll_until(limit, || !s.warm.state().building).await {
                hold.freed += 1;
            } else {
                tracing::warn!(
                    "a warm restore being built did not end within {limit:?}; its room stays \
                     held until it does"
                );
            }
        }
        hold
    }

    /// Waits until a create wants the room of the build under way ([`Self::make_room`]).
    async fn build_given_up(&self) {
        loop {
            // Registered before the look, so a give-up between the two still wakes it.
            let notified = self.give_up.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.state().give_up_build {
                return;
            }
            notified.await;
        }
    }

    /// Reserves `want` for a build under `id` unless a create is taking room back or
    /// coinopd stops; from then on the build holds room ([`State::building`]).
    fn reserve_for_build(s: &Shared, id: &str, want: Totals) -> bool {
        let mut state = s.warm.state();
        // Under the pool's lock: a create's make_room, which counts itself under it, sees
        // either no reservation or a build that holds one.
        if state.reclaiming > 0 || state.stopping {
            return false;
        }
        state.building = s.capacity().reserve(id, want).is_ok();
        state.building
    }

    /// Gives up every warm VMM not restored from `keep`, waiting until they are gone (their
    /// room is free).
    pub async fn evict(s: &Shared, keep: Option<&Path>) -> usize {
        let evicted: Vec<Warm> = {
            let mut state = s.warm.state();
            let (kept, gone) = std::mem::take(&mut state.ready)
                .into_iter()
                .partition(|w| Some(w.snapshot.as_path()) == keep);
            state.ready = kept;
            gone
        };
        let n = evicted.len();
        for w in evicted {
            discard(s, w, true).await;
        }
        n
    }

    /// Gives up every warm VMM (coinopd stops: they are no lease's), also one still being
    /// built: the filler is waited for (it discards what it builds once nothing is wanted),
    /// up to `limit`. A filler's task dropped with the runtime mid-build would leave its
    /// VMM running, unbilled, until the next start ends it.
    pub async fn shutdown(s: &Shared, limit: Duration) {
        {
            let mut state = s.warm.state();
            state.stopping = true;
            state.wanted = None;
        }
        if !crate::clock::poll_until(limit, || !s.warm.state().filling).await {
            tracing::error!(
                "a warm restore was still being built {limit:?} into the shutdown; its VMM is \
                 ended at the next start"
            );
        }
        Self::evict(s, None).await;
    }
}

/// What decides whether a ready warm VMM can still be taken, read under the pool's lock
/// and looked at outside it (the snapshot's key stats the image's files).
struct Takeable {
    lease_id: String,
    vmm: Option<VmmProcess>,
    shape: Shape,
    snapshot: PathBuf,
    ring: RingAnswer,
}

impl Takeable {
    fn of(w: &Warm) -> Takeable {
        Takeable {
            lease_id: w.ahead.lease_id().to_string(),
            vmm: w.ahead.vmm(),
            shape: w.shape.clone(),
            snapshot: w.snapshot.clone(),
            ring: w.ring,
        }
    }

    /// Why a create could not take it, if it could not: [`WarmRestores::take`] wants a
    /// running VMM restored from its shape's current snapshot, whose guest did not leave
    /// its ring unheeded.
    fn unusable(&self, s: &Shared) -> Option<&'static str> {
        if !self.vmm.is_some_and(|v| v.is_running()) {
            return Some("its VMM is gone");
        }
        if self.ring == RingAnswer::Unheeded {
            return Some("its guest left its ring unheeded: nothing in it listens");
        }
        match s.golden.current(&self.shape) {
            Ok(Some(dir)) if dir == self.snapshot => None,
            Ok(_) => Some("its snapshot is no longer its shape's current one"),
            // A take's lookup fails the same way: no create could take it either.
            Err(_) => Some("its image's files cannot be read"),
        }
    }
}

/// How long a doorbell guest may leave its ring unheeded before its warm restore is
/// given up: the time a guest is given to take its line (`--personalise-timeout-ms`). A
/// guest that has not even answered the ring by then would not take its line in time
/// either, and the create that took it would wait that long for nothing before booting
/// its lease on its own (the nested lab saw restored guests hang at once, now and then).
/// A listening guest answers within milliseconds of its restore, seconds on a loaded host.
fn unheeded_limit(s: &Shared) -> Duration {
    Duration::from_millis(s.config.personalise_timeout_ms)
}

/// Asks each ready warm VMM whose guest's answer to its ring is not known yet how long the
/// ring has waited (`status`'s `ring_unheeded_us`), and records what that says: heeded
/// (or nothing to heed), unheeded past [`unheeded_limit`], or still unknown. A VMM that
/// does not answer is left as it is: the take's own exchange finds that, and a dead one is
/// the watch's other check. Each VMM is asked about once a second until its guest
/// answered, which a listening guest does within its first second or so.
async fn check_rings(s: &Shared) {
    let limit = unheeded_limit(s);
    let awaited: Vec<(String, PathBuf)> = s
        .warm
        .state()
        .ready
        .iter()
        .filter(|w| w.ring == RingAnswer::Awaited)
        .map(|w| {
            (
                w.ahead.lease_id().to_string(),
                w.ahead.control().to_path_buf(),
            )
        })
        .collect();
    for (id, control) in awaited {
        let answer = match vmm_protocol::client::status(&control).await {
            Ok(status) => match status.ring_unheeded_us {
                None => RingAnswer::Heeded,
                Some(us) if Duration::from_micros(us) >= limit => {
                    tracing::warn!(
                        lease = %id,
                        unheeded_ms = us / 1000,
                        "a warm restore's guest has not heeded its ring"
                    );
                    RingAnswer::Unheeded
                }
                Some(_) => continue,
            },
            Err(_) => continue,
        };
        // A create may have taken it meanwhile: only what is still ready is marked.
        if let Some(w) = s
            .warm
            .state()
            .ready
            .iter_mut()
            .find(|w| w.ahead.lease_id() == id)
        {
            w.ring = answer;
        }
    }
}

/// Whether any of `ready` can no longer be taken.
fn any_untakeable(s: &Shared, ready: &[Takeable]) -> bool {
    ready.iter().any(|t| t.unusable(s).is_some())
}

/// Whether the pool is short of the wanted shape and a build of it could succeed now: a
/// current snapshot that no build failed on, room for one more, no create taking room.
fn short_and_buildable(s: &Shared) -> bool {
    let (wanted, failed) = {
        let state = s.warm.state();
        let short = state.ready.len() < s.warm.target;
        match &state.wanted {
            Some(w) if short && !state.filling && state.reclaiming == 0 => {
                (w.clone(), state.failed.clone())
            }
            _ => return false,
        }
    };
    let free = s.capacity().free();
    if wanted.vcpus > free.vcpus || wanted.mem_mib > free.mib {
        return false;
    }
    match s.golden.current(&wanted) {
        Ok(Some(dir)) => failed.as_ref() != Some(&dir),
        _ => false,
    }
}

/// Gives up the ready warm VMMs no create could take any more (see [`Takeable`]); their
/// room is free when this returns.
async fn reap(s: &Shared) {
    let ready: Vec<Takeable> = s.warm.state().ready.iter().map(Takeable::of).collect();
    let unusable: std::collections::HashMap<String, &'static str> = ready
        .iter()
        .filter_map(|t| Some((t.lease_id.clone(), t.unusable(s)?)))
        .collect();
    if unusable.is_empty() {
        return;
    }
    // A create may have taken one since it was looked at: only what is still ready goes.
    let gone: Vec<Warm> = {
        let mut state = s.warm.state();
        let (gone, kept) = std::mem::take(&mut state.ready)
            .into_iter()
            .partition(|w| unusable.contains_key(w.ahead.lease_id()));
        state.ready = kept;
        gone
    };
    for w in gone {
        let why = unusable
            .get(w.ahead.lease_id())
            .copied()
            .unwrap_or_default();
        tracing::info!(lease = w.ahead.lease_id(), why, "giving up a warm restore");
        discard(s, w, true).await;
    }
}

/// What [`WarmRestores::make_room`] freed; while it lives, no warm build reserves room.
pub struct RoomHold {
    s: Shared,
    freed: usize,
}

impl RoomHold {
    /// How many warm VMMs gave up their room.
    pub fn freed(&self) -> usize {
        self.freed
    }
}

impl Drop for RoomHold {
    fn drop(&mut self) {
        let mut state = self.s.warm.state();
        state.reclaiming = state.reclaiming.saturating_sub(1);
    }
}

/// Ends a warm VMM no lease took, with its marker, and its room if it still holds it
/// (`release_room`; a VMM a create took handed its room to that create).
async fn discard(s: &Shared, w: Warm, release_room: bool) {
    let id = w.ahead.lease_id().to_string();
    crate::fault::delay(crate::fault::point::WARM_DISCARD).await;
    s.supervisor.discard_ahead(w.ahead).await;
    remove_run_files(&s.config.run_dir(), &id);
    if release_room {
        s.capacity().release(&id);
    }
    let _ = std::fs::remove_file(s.warm.markers.join(&id));
}

/// Removes what a VMM that never became a lease's had in the run directory once it is
/// gone: its console and VMM log, and its control socket (a jailed one's went with its
/// confinement; without a jail it is only a file here). No lease row names them, so
/// nothing else ever would, and every warm VMM given up (an eviction, a changed shape or
/// snapshot, each stop of coinopd) would leave its files behind. The id is not used again:
/// a create that took the VMM and boots its lease under the same id does so only after
/// this ([`end_taken`]) and writes its own.
fn remove_run_files(run_dir: &Path, id: &str) {
    let paths = GuestPaths::for_lease(run_dir, id);
    for file in [&paths.console, &paths.log, &paths.control] {
        match std::fs::remove_file(file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(lease = id, file = %file.display(), error = %e,
                "cannot remove a warm restore's file"),
        }
    }
}

/// Ends a warm VMM a create took but cannot use, and returns once it is gone with its
/// confinement: the create's lease boots on its own under the same id next, and a
/// confinement removed after that boot registered its own would be that boot's (its
/// tap, control socket, jail and cgroup). Its room is the create's.
pub async fn end_taken(s: &Shared, w: Warm) {
    discard(s, w, false).await;
}

/// Ends a warm VMM a create took but did not use, in the background; its room is the
/// create's to release. Only for a create that ends without booting under its id.
pub fn discard_in_background(s: &Shared, w: Warm) {
    let s = s.clone();
    tokio::spawn(async move { discard(&s, w, false).await });
}

/// The filler: builds warm VMMs of the wanted shape while the pool is short of them and
/// the host is quiet; ends when the pool is full, nothing is wanted, or a build cannot
/// succeed now (no snapshot, no room).
async fn fill(s: &Shared) {
    loop {
        // What no create can take holds room for nothing, and counts for nothing here.
        reap(s).await;
        let wanted = {
            let mut state = s.warm.state();
            let have = state.ready.len();
            match state.wanted.clone() {
                Some(shape) if have < s.warm.target => shape,
                _ => {
                    state.filling = false;
                    return;
                }
            }
        };
        match s.supervisor.isolation().quiet_in() {
            Some(d) if d.is_zero() => {}
            Some(d) => {
                tokio::time::sleep(d).await;
                continue;
            }
            None => {
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        }
        let snapshot = match s.golden.lookup(&wanted) {
            Ok((Some(dir), _)) => dir,
            _ => {
                s.warm.state().filling = false;
                return;
            }
        };
        // Warm VMMs of an older snapshot of any shape are not wanted any more.
        WarmRestores::evict(s, Some(&snapshot)).await;
        let built = build(s, &wanted, &snapshot).await;
        if let Err(Build::Failed(e)) = &built {
            tracing::warn!(error = %e, "cannot restore a lease ahead of its create");
            s.warm.state().failed = Some(snapshot.clone());
        }
        let Ok(w) = built else {
            // The build released its room. No room: the watch tries again once there is.
            // Failed: a snapshot that cannot be restored is rebuilt by the next create's
            // fallback; until then no more attempts.
            let mut state = s.warm.state();
            state.building = false;
            state.give_up_build = false;
            state.filling = false;
            return;
        };
        // Kept unless a create wants its room or another shape is wanted by now.
        let unwanted = {
            let mut state = s.warm.state();
            let still = state
                .wanted
                .as_ref()
                .is_some_and(|shape| same_shape(shape, &wanted));
            if still && !state.give_up_build {
                tracing::info!(lease = w.ahead.lease_id(), image = %wanted.image.name,
                    "restored a lease ahead of its create");
                state.ready.push(w);
                state.building = false;
                None
            } else {
                Some(w)
            }
        };
        if let Some(w) = unwanted {
            discard(s, w, true).await;
            let mut state = s.warm.state();
            // Its room is free: a create waiting for it in make_room reserves it now.
            state.building = false;
            if std::mem::take(&mut state.give_up_build) {
                tracing::info!("gave up a warm restore being built: a create needs its room");
                // The host is full: the watch starts again once there is room.
                state.filling = false;
                return;
            }
        }
    }
}

fn same_shape(a: &Shape, b: &Shape) -> bool {
    a.image.name == b.image.name && a.vcpus == b.vcpus && a.mem_mib == b.mem_mib && a.nic == b.nic
}

/// Why a warm VMM was not built.
enum Build {
    /// The host has no room for one more of the shape.
    NoRoom,
    Failed(String),
}

/// Builds one warm VMM of `shape` from `snapshot`: a slot (from the slot pool when it has
/// one), its room, its network routed, its marker, then the restore up to the guest's
/// request for its line.
async fn build(s: &Shared, shape: &Shape, snapshot: &Path) -> Result<Warm, Build> {
    let isolation = std::sync::Arc::clone(s.supervisor.isolation());
    let slot = isolation.take_slot();
    let id = slot
        .as_ref()
        .map_or_else(crate::token::new_lease_id, |t| t.lease_id().to_string());
    let want = Totals {
        vcpus: shape.vcpus,
        mib: shape.mem_mib,
    };
    if !WarmRestores::reserve_for_build(s, &id, want) {
        // The slot goes back to the pool.
        return Err(Build::NoRoom);
    }
    let marker = s.warm.markers.join(&id);
    let marked =
        std::fs::create_dir_all(&s.warm.markers).and_then(|()| std::fs::write(&marker, b""));
    if let Err(e) = marked {
        s.capacity().release(&id);
        return Err(Build::Failed(format!("marker {}: {e}", marker.display())));
    }
    let fail = |why: String| {
        s.capacity().release(&id);
        // A failed start has ended its VMM (if it got one) but leaves its files.
        remove_run_files(&s.config.run_dir(), &id);
        let _ = std::fs::remove_file(&marker);
        Build::Failed(why)
    };
    let (nic, network) = if shape.nic {
        let (iso, lease) = (std::sync::Arc::clone(&isolation), id.clone());
        let reserved = tokio::task::spawn_blocking(move || {
            let Some((tap, info, pending)) = iso.reserve_network(&lease)? else {
                return Ok(None);
            };
            if let Err(e) = iso.route_network(pending) {
                iso.release_disk_and_network(&lease);
                return Err(e);
            }
            Ok(Some((tap, info)))
        })
        .await;
        match reserved {
            Ok(Ok(Some((tap, info)))) => (
                Some(Nic {
                    tap,
                    mac: info.mac.clone(),
                }),
                Some(info),
            ),
            Ok(Ok(None)) => return Err(fail("guest networking is off on this host".into())),
            Ok(Err(e)) => return Err(fail(format!("network: {e}"))),
            Err(e) => return Err(fail(format!("network worker: {e}"))),
        }
    } else {
        (None, None)
    };
    let paths = GuestPaths::for_lease(&s.config.run_dir(), &id);
    // Looked up before the network's routing, which may have taken a while: held from
    // here for the restore's whole boot timeout.
    s.golden.restoring_from(snapshot);
    let started = s
        .supervisor
        .start_ahead(BootRequest {
            lease_id: &id,
            image: &shape.image,
            cmdline: &shape.image.cmdline,
            vcpus: shape.vcpus,
            mem_mib: shape.mem_mib,
            paths: &paths,
            arrival_us: crate::clock::monotonic_us(),
            // No lease, no payment yet.
            figures: coinop_proto::BootFigures::default(),
            timeout_ms: s.config.boot_timeout_ms,
            personalise_timeout_ms: s.config.personalise_timeout_ms,
            slot,
            nic,
            snapshot: SnapshotUse::RestoreFrom(snapshot.to_path_buf()),
            // Nothing of any lease before the take.
            personalise: None,
            ready_at: ReadyPoint::AwaitingPersonalisation,
        })
        .await;
    match started {
        Ok(ahead) => {
            if let Some(v) = ahead.vmm() {
                let _ = std::fs::write(&marker, v.marker_text());
            }
            // A create that wants this build's room does not wait out the delay.
            tokio::select! {
                () = crate::fault::delay(crate::fault::point::WARM_BUILT) => {}
                () = s.warm.build_given_up() => {}
            }
            Ok(Warm {
                ahead,
                ring: RingAnswer::Awaited,
                snapshot: snapshot.to_path_buf(),
                shape: shape.clone(),
                network,
            })
        }
        // start_ahead released the network and confinement.
        Err(e) => Err(fail(e.to_string())),
    }
}

/// At start-up, before the slot pool and the network sweep: ends the warm VMMs an earlier
/// coinopd left (markers whose id is no lease in the ledger) and removes their markers and
/// their files in the run directory, as those of any other id that is no lease
/// ([`remove_files_of_no_lease`]); the slot pool then removes their jails and cgroups, the
/// sweep their networks.
pub fn remove_left_overs(s: &Shared) {
    let entries = std::fs::read_dir(&s.warm.markers).into_iter().flatten();
    for entry in entries.flatten() {
        let Some(id) = entry.file_name().to_str().map(String::from) else {
            continue;
        };
        let is_lease = match s.ledger.get(&id) {
            Ok(found) => found.is_some(),
            Err(e) => {
                // Unknown is not "no lease": a lease committed just before a crash owns
                // this VMM, and killing it would end a paid guest. Kept for the next start.
                tracing::error!(lease = %id, error = %e,
                    "cannot tell whether a warm restore's VMM is a lease's; leaving it");
                continue;
            }
        };
        if !is_lease {
            let recorded = std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|text| VmmProcess::from_marker(&text));
            let mut killed = 0;
            if let Some(v) = recorded.filter(VmmProcess::is_running) {
                killed += usize::from(v.kill_and_wait());
            }
            // Then any other in its cgroup, and its jail root and cgroup (the slot pool's
            // markers name those of pooled slots only, and this one may have been built
            // on its own) with whatever else is left under its id.
            let control = GuestPaths::for_lease(&s.config.run_dir(), &id).control;
            killed += s.supervisor.isolation().end_left_over(&id, control);
            remove_run_files(&s.config.run_dir(), &id);
            tracing::info!(lease = %id, killed, "removed a warm restore an earlier coinopd left");
        }
        let _ = std::fs::remove_file(entry.path());
    }
    remove_files_of_no_lease(s);
}

/// The rest of the start-up's clean-up of the run directory: the console, VMM log and
/// control socket of every lease id the ledger does not hold. At start-up no create is in
/// flight and the warm restores are gone, so such files are what a VMM that never became a
/// lease's left: a warm restore discarded by a coinopd from before these files went with
/// it, or one whose marker a crash lost. Golden builds' files (`golden-...`) are not lease
/// ids; [`crate::golden_snapshot::remove_left_over_builds`] finds those builds by them.
fn remove_files_of_no_lease(s: &Shared) {
    let run_dir = s.config.run_dir();
    let Ok(entries) = std::fs::read_dir(&run_dir) else {
        return;
    };
    let ids: std::collections::BTreeSet<String> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_string();
            let id = [".console", ".vmm.log", ".sock"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))?;
            is_lease_id(id).then(|| id.to_string())
        })
        .collect();
    for id in ids {
        match s.ledger.get(&id) {
            Ok(None) => {
                remove_run_files(&run_dir, &id);
                tracing::info!(lease = %id, "removed the files of a VMM that was no lease's");
            }
            Ok(Some(_)) => {}
            // Unknown is not "no lease": kept for the next start.
            Err(e) => tracing::warn!(lease = %id, error = %e,
                "cannot tell whether files in the run directory are a lease's; leaving them"),
        }
    }
}

/// Whether `id` is shaped as [`crate::token::new_lease_id`] makes them: `l` and 16 hex
/// characters.
fn is_lease_id(id: &str) -> bool {
    id.strip_prefix('l')
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ids_made_as_lease_ids_are_taken_for_them() {
        assert!(is_lease_id(&crate::token::new_lease_id()));
        assert!(is_lease_id("l0123456789abcdef"));
        for not in [
            "golden-0123456789ab-01234567",
            "l0123",
            "x0123456789abcdef",
            "",
        ] {
            assert!(!is_lease_id(not), "{not}");
        }
    }

    #[test]
    fn a_marker_names_its_vmm_by_pid_and_start_time() {
        let v = VmmProcess::from_marker("4242 987654\n").expect("parsed");
        assert_eq!((v.pid, v.start_ticks), (4242, Some(987654)));
        assert_eq!(VmmProcess::from_marker(&v.marker_text()), Some(v));
        // A marker written before the spawn names nothing (its cgroup is searched).
        assert!(VmmProcess::from_marker("").is_none());
        assert!(VmmProcess::from_marker("4242").is_none());
        assert!(VmmProcess::from_marker("x y").is_none());
    }
}
