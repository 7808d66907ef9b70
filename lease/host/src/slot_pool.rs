//! Lease slots built ahead of time, so a create does not pay for them: each slot is a lease
//! id with its cgroup (directories made, limits written), its jail root and uid, and a child
//! already jailed and in the cgroup, parked before exec ([`crate::jail::ParkedJail`]). A
//! background thread fills the pool at start and refills it after each take; a create
//! takes a slot, writes the limits that differ for its size and launches its image in it.
//! An empty pool (a burst) only means the create builds its slot on the request path. The
//! filler waits while any boot is in flight ([`SlotPool::hold_off`]), and [`SETTLE`] after
//! the last one: its clone of coinopd and cgroup joins would compete with the create it
//! refills for, whose reply and the tenant's first connection to the new guest follow the
//! boot.
//!
//! Every slot has a marker file named by its lease id in the pool directory, written before
//! anything else of the slot (empty, then `parked PID` once ready) and removed with the last
//! of it (for a slot a lease used: when
//! the lease's confinement is released). Markers left by a crash name slots whose parked
//! children died with coinopd (their socket closed): [`SlotPool::start`] removes those that
//! no re-adopted lease uses.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::cgroup::{CgroupSlot, Cgroups, Limits};
use crate::jail::{JailConfig, ParkedJail};

/// How long the filler waits after a failed build before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long after the last boot ended the filler still waits: the create's reply goes out
/// and the tenant's first connection (an SSH handshake: the guest's sshd forks) reaches the
/// new guest meanwhile. On a host with few CPUs (the nested lab's L1 has 2) a refill run
/// then (~50-90 ms there) delays both; later, it costs nothing, and creates in a burst keep
/// it waiting anyway.
pub const SETTLE: Duration = Duration::from_millis(500);

/// Errors building a slot.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The marker file.
    #[error("pool marker {path}: {source}")]
    Marker {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The cgroup.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::Error),
    /// The jail.
    #[error(transparent)]
    Jail(#[from] crate::jail::Error),
}

/// A slot ready for a lease.
#[derive(Debug)]
pub struct ReadySlot {
    /// The lease id the slot is named by (cgroup, jail root, marker).
    pub lease_id: String,
    /// Its cgroup (`None` without cgroups).
    pub cgroup: Option<CgroupSlot>,
    /// The limits written to the cgroup.
    pub limits: Limits,
    /// The parked child in its jail root.
    pub jail: ParkedJail,
}

/// A slot handed to one create request; it goes back to the pool if dropped unused (the
/// create failed before the boot, e.g. on its payment).
#[derive(Debug)]
pub struct TakenSlot {
    slot: Option<ReadySlot>,
    pool: Arc<Inner>,
}

impl TakenSlot {
    /// The lease id the create must use.
    pub fn lease_id(&self) -> &str {
        self.slot.as_ref().map_or("", |s| s.lease_id.as_str())
    }

    /// The slot, for a boot of a lease with `limits` (which refills then pre-write).
    pub fn use_for(mut self, limits: Limits) -> ReadySlot {
        self.pool.state().limits = limits;
        self.slot
            .take()
            .expect("a TakenSlot holds its slot until use_for or drop")
    }

    /// Removes the slot for good (its lease id is taken: the create got past the ledger).
    pub fn discard(mut self) {
        if let Some(slot) = self.slot.take() {
            discard(&self.pool.markers, slot);
        }
    }
}

impl Drop for TakenSlot {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let mut state = self.pool.state();
            if state.stopping {
                drop(state);
                discard(&self.pool.markers, slot);
            } else {
                state.ready.push_front(slot);
            }
        }
    }
}

#[derive(Debug)]
struct State {
    ready: VecDeque<ReadySlot>,
    /// Limits new slots are given: those of the last lease that took one.
    limits: Limits,
    /// Boots in flight: the filler waits until none is.
    boots: usize,
    /// When the last boot ended, plus [`SETTLE`]: the filler waits until then.
    settled_at: Option<Instant>,
    stopping: bool,
}

#[derive(Debug)]
struct Inner {
    target: usize,
    jail: JailConfig,
    cgroups: Cgroups,
    markers: PathBuf,
    /// The daemon owns the lease id format; a slot is named by the id it will carry.
    new_lease_id: fn() -> String,
    state: Mutex<State>,
    changed: Condvar,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The pool.
#[derive(Debug)]
pub struct SlotPool {
    inner: Arc<Inner>,
    filler: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl SlotPool {
    /// A pool of `target` slots for `jail` and `cgroups` with markers in `markers`; nothing
    /// is built before [`SlotPool::start`].
    pub fn new(
        target: usize,
        jail: JailConfig,
        cgroups: Cgroups,
        markers: PathBuf,
        new_lease_id: fn() -> String,
    ) -> Self {
        SlotPool {
            inner: Arc::new(Inner {
                target,
                jail,
                cgroups,
                markers,
                new_lease_id,
                state: Mutex::new(State {
                    ready: VecDeque::new(),
                    limits: Limits::for_guest(1, 128),
                    boots: 0,
                    settled_at: None,
                    stopping: false,
                }),
                changed: Condvar::new(),
            }),
            filler: Mutex::new(None),
        }
    }

    /// In the background: removes the slots an earlier coinopd left (except those of the
    /// live leases in `in_use`), then fills the pool and keeps it full.
    pub fn start(&self, in_use: HashSet<String>) {
        let inner = Arc::clone(&self.inner);
        let handle = std::thread::Builder::new()
            .name("coinop-slot-pool".into())
            .spawn(move || {
                remove_stale(&inner, &in_use);
                fill(&inner)
            });
        match handle {
            Ok(h) => *self.filler() = Some(h),
            Err(e) => tracing::error!(error = %e, "cannot start the slot pool's filler"),
        }
    }

    fn filler(&self) -> MutexGuard<'_, Option<std::thread::JoinHandle<()>>> {
        self.filler
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A ready slot, if any (the filler replaces it once no boot is in flight).
    pub fn take(&self) -> Option<TakenSlot> {
        let slot = self.inner.state().ready.pop_front()?;
        Some(TakenSlot {
            slot: Some(slot),
            pool: Arc::clone(&self.inner),
        })
    }

    /// Keeps the filler idle until the returned guard is dropped (for the length of a boot).
    pub fn hold_off(&self) -> HoldOff {
        self.inner.state().boots += 1;
        HoldOff {
            pool: Arc::clone(&self.inner),
        }
    }

    /// How long until the host is quiet by the filler's measure: no boot in flight and
    /// [`SETTLE`] after the last one (zero: now); `None` while a boot is in flight. Other
    /// work built ahead of leases waits for the same.
    pub fn quiet_in(&self) -> Option<Duration> {
        let state = self.inner.state();
        if state.boots > 0 {
            return None;
        }
        Some(state.settled_at.map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(Instant::now())
        }))
    }

    /// How many slots are ready.
    pub fn ready(&self) -> usize {
        self.inner.state().ready.len()
    }

    /// Forgets the marker of a lease that came from the pool (its confinement is gone).
    pub fn forget(&self, lease_id: &str) {
        let _ = std::fs::remove_file(self.inner.markers.join(lease_id));
    }

    /// Stops the filler and removes every ready slot. Idempotent.
    pub fn shutdown(&self) {
        self.inner.state().stopping = true;
        self.inner.changed.notify_all();
        if let Some(handle) = self.filler().take() {
            let _ = handle.join();
        }
        let slots: Vec<ReadySlot> = self.inner.state().ready.drain(..).collect();
        for slot in slots {
            discard(&self.inner.markers, slot);
        }
    }
}

impl Drop for SlotPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// While alive, the pool's filler builds nothing ([`SlotPool::hold_off`]).
#[derive(Debug)]
pub struct HoldOff {
    pool: Arc<Inner>,
}

impl Drop for HoldOff {
    fn drop(&mut self) {
        let mut state = self.pool.state();
        state.boots = state.boots.saturating_sub(1);
        if state.boots == 0 {
            state.settled_at = Some(Instant::now() + SETTLE);
            self.pool.changed.notify_all();
        }
    }
}

/// The filler: builds slots while the pool is short, no boot is in flight and the last one
/// ended [`SETTLE`] ago, keeping the last free uid for creates that find the pool empty.
fn fill(inner: &Inner) {
    loop {
        let limits = {
            let mut state = inner.state();
            loop {
                let settling = state
                    .settled_at
                    .map(|at| at.saturating_duration_since(Instant::now()))
                    .filter(|left| !left.is_zero());
                let wait = state.ready.len() >= inner.target
                    || state.boots > 0
                    || inner.jail.uids.free() <= 1
                    || settling.is_some();
                if state.stopping || !wait {
                    break;
                }
                // Uids come back when leases end, which nothing here is told about.
                let pause = settling.map_or(RETRY_AFTER, |left| left.min(RETRY_AFTER));
                state = inner
                    .changed
                    .wait_timeout(state, pause)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
            if state.stopping {
                return;
            }
            state.limits
        };
        match build(inner, limits) {
            Ok(slot) => {
                let mut state = inner.state();
                if state.stopping {
                    drop(state);
                    discard(&inner.markers, slot);
                    return;
                }
                // Under the lock: a marker that says "parked" names a slot creates can take.
                let marker = inner.markers.join(&slot.lease_id);
                let _ = std::fs::write(marker, format!("parked {}\n", slot.jail.pid()));
                state.ready.push_back(slot);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot build a lease slot ahead of time");
                let state = inner.state();
                if !state.stopping {
                    let _ = inner.changed.wait_timeout(state, RETRY_AFTER);
                }
            }
        }
    }
}

/// Builds one slot under a fresh lease id.
fn build(inner: &Inner, limits: Limits) -> Result<ReadySlot, Error> {
    let lease_id = (inner.new_lease_id)();
    let marker = inner.markers.join(&lease_id);
    std::fs::create_dir_all(&inner.markers)
        .and_then(|()| std::fs::write(&marker, b""))
        .map_err(|source| Error::Marker {
            path: marker.clone(),
            source,
        })?;
    let built = (|| {
        let cgroup = inner.cgroups.create_slot(&lease_id, &limits)?;
        let procs = match &cgroup {
            Some(c) => c.procs_files(),
            None => Ok(Vec::new()),
        };
        let parked = procs
            .map_err(Error::from)
            .and_then(|procs| Ok(inner.jail.park(&lease_id, procs)?));
        match parked {
            Ok(jail) => Ok((cgroup, jail)),
            Err(e) => {
                if let Some(c) = cgroup {
                    let _ = c.remove();
                }
                Err(e)
            }
        }
    })();
    match built {
        Ok((cgroup, jail)) => Ok(ReadySlot {
            lease_id,
            cgroup,
            limits,
            jail,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&marker);
            Err(e)
        }
    }
}

/// Kills the slot's parked child and removes its cgroup, jail root and marker.
fn discard(markers: &Path, slot: ReadySlot) {
    let id = slot.lease_id;
    if let Err(e) = slot.jail.discard() {
        tracing::warn!(slot = %id, error = %e, "cannot remove a pooled jail");
    }
    if let Some(c) = slot.cgroup {
        if let Err(e) = c.remove() {
            tracing::warn!(slot = %id, error = %e, "cannot remove a pooled cgroup");
        }
    }
    let _ = std::fs::remove_file(markers.join(&id));
}

/// Removes what an earlier coinopd's pool left: every marked slot no live lease uses.
fn remove_stale(inner: &Inner, in_use: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(&inner.markers) else {
        return;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let Some(id) = entry.file_name().to_str().map(String::from) else {
            continue;
        };
        if in_use.contains(&id) {
            continue;
        }
        let root = inner.jail.base.join(&id);
        if root.exists() {
            if let Err(e) = std::fs::remove_dir_all(&root) {
                tracing::warn!(slot = %id, error = %e, "cannot remove a stale pooled jail");
            }
        }
        match inner.cgroups.reopen_slot(&id) {
            Ok(Some(c)) => {
                if let Err(e) = c.remove() {
                    tracing::warn!(slot = %id, error = %e, "cannot remove a stale pooled cgroup");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(slot = %id, error = %e, "stale pool marker"),
        }
        let _ = std::fs::remove_file(entry.path());
        removed += 1;
    }
    if removed > 0 {
        tracing::info!(removed, "removed lease slots an earlier coinopd left");
    }
}
