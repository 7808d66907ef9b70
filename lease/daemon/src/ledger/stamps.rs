//! When this coinopd wrote a lease's time columns, on the monotonic clock.
//!
//! The ledger keeps its times in wall-clock time (`metered_at_ms`, `funded_at`,
//! `paused_at`): that is what means something to a reader and survives a restart. But
//! billing needs the time that passed since one of them was written: a reading's growth is
//! held to the time since the marks were set (`tick.rs`), a silent VMM's lease is billed
//! its memory time since then ([`crate::scheduler`]), a lease paused unfunded is stopped
//! once its grace (at most its run since it was funded) has passed. Measured on the wall
//! clock, an operator's `date -s` or an NTP correction changes those: stepped back, the time
//! since was none for the step's length (each tick billed 1 s, the slack, of what its
//! counters grew, a lease that ran dry was not paused, a paused one held its memory
//! unbilled past its grace, a silent window's memory time was not billed); stepped forward,
//! a spike could bill the step's length.
//!
//! So whenever the ledger writes one of these columns it notes here the monotonic instant
//! it did, with the value written, once the write commits. While the row still holds that
//! value (nothing else wrote it since), the time since is measured on the monotonic clock;
//! only a value this process did not write (written before a restart, where the persisted
//! value is all there is, or by hand) is measured on the wall clock.
//!
//! CLOCK_MONOTONIC (`std::time::Instant` on Linux), not CLOCK_BOOTTIME: what the caps hold
//! readings to does not grow while the host is suspended (a VMM's uptime is its
//! CLOCK_MONOTONIC since its start, its vCPU time is CPU time), so a cap that grew through a
//! suspend would only let a spike bill more; and the usage floors
//! ([`crate::usage_floor`]) measure on the same clock.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use coinop_proto::LeaseState;

use crate::clock::Now;

use super::{LeaseRow, Ledger, LedgerError};

/// A column of `leases` that holds a time, as far as billing measures the time since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Column {
    /// `metered_at_ms` (unix ms): the usage marks were set.
    MeteredAtMs,
    /// `funded_at` (unix s): the lease's boot, or the top-up that resumed it.
    FundedAt,
    /// `paused_at` (unix s): the lease was paused for lack of funds.
    PausedAt,
}

impl Column {
    /// `now` as the column holds it.
    pub(crate) fn value_at(self, now: Now) -> i64 {
        match self {
            Column::MeteredAtMs => now.wall_ms,
            Column::FundedAt | Column::PausedAt => now.wall_s(),
        }
    }
}

/// One write of a column: the value written, and the monotonic instant of the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    written: i64,
    at: Instant,
}

#[derive(Debug, Default, Clone, Copy)]
struct LeaseStamps {
    metered: Option<Stamp>,
    funded: Option<Stamp>,
    paused: Option<Stamp>,
}

impl LeaseStamps {
    fn slot(&mut self, col: Column) -> &mut Option<Stamp> {
        match col {
            Column::MeteredAtMs => &mut self.metered,
            Column::FundedAt => &mut self.funded,
            Column::PausedAt => &mut self.paused,
        }
    }

    fn get(&self, col: Column) -> Option<Stamp> {
        match col {
            Column::MeteredAtMs => self.metered,
            Column::FundedAt => self.funded,
            Column::PausedAt => self.paused,
        }
    }
}

/// How far apart the two clocks may move between two looks before the wall clock is taken
/// for stepped. NTP slews it by at most 0.05%, a second in half an hour, and the ticks look
/// every `--tick-ms`; only a look after a long spell with nothing metered may take such a
/// slew for a step (said in the log, nothing billed by it).
const STEP_NOTICED_MS: i64 = 1000;

/// How often the stamps of leases that ended are dropped.
const FORGET_ENDED_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(crate) struct Stamps {
    /// The committed writes, by lease.
    set: Mutex<HashMap<String, LeaseStamps>>,
    /// The writes of the transaction under way (the ledger's connection lock held), until
    /// it commits; dropped if it does not.
    staged: Mutex<Vec<(String, Column, Option<Stamp>)>>,
    /// The last moment [`Stamps::observe`] saw.
    seen: Mutex<Option<Now>>,
    /// When the stamps of ended leases were last dropped.
    forgot_at: Mutex<Option<Instant>>,
}

/// A lock, also after a panic elsewhere: the stamps are whole at every step (each a plain
/// insert or remove), and refusing them would stop metering.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The wall time from `then_ms` to `now` (none if the wall clock is before it).
fn wall_since(then_ms: i64, now: Now) -> Duration {
    Duration::from_millis(u64::try_from(now.wall_ms.saturating_sub(then_ms)).unwrap_or(0))
}

/// `secs` whole seconds as ms.
fn ms_of_s(secs: i64) -> i64 {
    secs.saturating_mul(1000)
}

impl Stamps {
    /// A transaction begins (under the ledger's connection lock): nothing of an earlier
    /// one that never settled (a panic in its step) is its.
    pub(super) fn begin(&self) {
        lock(&self.staged).clear();
    }

    /// The transaction under way writes `now` into lease `id`'s `col` (in the column's unit:
    /// [`Column::value_at`]).
    pub(super) fn wrote(&self, id: &str, col: Column, now: Now) {
        self.stage(id, col, Some(col.value_at(now)), now.mono);
    }

    /// The transaction under way writes `written` into lease `id`'s `col` at `at` (`None`:
    /// clears it).
    pub(super) fn stage(&self, id: &str, col: Column, written: Option<i64>, at: Instant) {
        lock(&self.staged).push((
            id.to_string(),
            col,
            written.map(|written| Stamp { written, at }),
        ));
    }

    /// The transaction under way ended: its writes hold if it `committed`.
    pub(super) fn settle(&self, committed: bool) {
        let staged = std::mem::take(&mut *lock(&self.staged));
        if !committed {
            return;
        }
        let mut set = lock(&self.set);
        for (id, col, stamp) in staged {
            *set.entry(id).or_default().slot(col) = stamp;
        }
    }

    /// Takes lease `id`'s `col`, which holds `written` (committed, read under the ledger's
    /// lock), for written at `at`: a value this process did not write, placed on the
    /// monotonic clock once from the wall clock.
    fn adopt(&self, id: &str, col: Column, written: i64, at: Instant) {
        *lock(&self.set).entry(id.to_string()).or_default().slot(col) = Some(Stamp { written, at });
    }

    /// When this process wrote `written` into lease `id`'s `col`, if the row still holds
    /// what it wrote (`written` is the row's value now).
    fn written_at(&self, id: &str, col: Column, written: Option<i64>) -> Option<Instant> {
        let written = written?;
        lock(&self.set)
            .get(id)
            .and_then(|s| s.get(col))
            .filter(|s| s.written == written)
            .map(|s| s.at)
    }

    /// The time from when lease `l`'s usage marks were set to `now`.
    pub(super) fn since_metered(&self, l: &LeaseRow, now: Now) -> Duration {
        match self.written_at(&l.id, Column::MeteredAtMs, l.metered_at_ms) {
            Some(at) => now.mono.saturating_duration_since(at),
            None => wall_since(l.metered_since_ms(), now),
        }
    }

    /// The time lease `l` ran billable from its usage marks to `now`: from when they were
    /// set, or from a top-up that resumed it after that (`funded_at`: until then it was
    /// paused unfunded, its memory time not billable).
    pub(super) fn since_billable(&self, l: &LeaseRow, now: Now) -> Duration {
        let metered = self.written_at(&l.id, Column::MeteredAtMs, l.metered_at_ms);
        let funded = l
            .funded_at
            .and_then(|f| self.written_at(&l.id, Column::FundedAt, Some(f)));
        match (metered, funded, l.funded_at) {
            // Both written here: the later of the two.
            (Some(m), Some(f), _) => now.mono.saturating_duration_since(m.max(f)),
            // One written here, the other before this process started: the one written
            // here is the later.
            (Some(m), None, _) => now.mono.saturating_duration_since(m),
            (None, Some(f), _) => now.mono.saturating_duration_since(f),
            // Neither: the later as the wall clock has them. `funded_at` is whole seconds
            // and the resume came within the second after it: counted from that second's
            // end, no paused time is billed (at most a second of run is not).
            (None, None, funded) => {
                let mut since_ms = l.metered_since_ms();
                if let Some(funded) = funded {
                    since_ms = since_ms.max(ms_of_s(funded.saturating_add(1)));
                }
                wall_since(since_ms, now)
            }
        }
    }

    /// Whether lease `l`, paused for lack of funds, has used up its grace at `now`: paused
    /// at least `grace_s`, or as long as it ran since it was last funded if that is shorter
    /// ([`super::tick::grace_of`], the same rule measured as time passed where this process
    /// wrote both times). `l` is read in the transaction under way (a tick's): a pause
    /// written before this process started is placed on the monotonic clock here.
    pub(super) fn grace_over(&self, l: &LeaseRow, grace_s: u64, now: Now) -> bool {
        let grace = Duration::from_secs(grace_s);
        let Some(paused) = l.paused_at else {
            // No time to count from: only a grace of none is over.
            return grace.is_zero();
        };
        let paused_at = self.written_at(&l.id, Column::PausedAt, Some(paused));
        let paused_for = match paused_at {
            Some(at) => now.mono.saturating_duration_since(at),
            None => {
                // Whole seconds: with a whole-second grace, the same test as the seconds'.
                let paused_for = wall_since(ms_of_s(paused), now);
                // Written before this process started: measured on the wall clock this
                // once, and on the monotonic clock from here on, so a step of the wall
                // clock during the rest of the pause does not move its end (`paused_at` is
                // not written again while the lease stays paused).
                if let Some(at) = now.mono.checked_sub(paused_for) {
                    self.adopt(&l.id, Column::PausedAt, paused, at);
                }
                paused_for
            }
        };
        let ran = l.funded_at.map(|funded| {
            let funded_at = self.written_at(&l.id, Column::FundedAt, Some(funded));
            match (paused_at, funded_at) {
                (Some(p), Some(f)) => p.saturating_duration_since(f),
                // Not both written here: as the wall clock has them (the run and the pause
                // written before a restart: a step of the wall clock between the two then
                // counts, as it did before).
                _ => {
                    let ran_s = u64::try_from(paused.saturating_sub(funded)).unwrap_or(0);
                    Duration::from_secs(ran_s)
                }
            }
        });
        paused_for >= ran.map_or(grace, |ran| ran.min(grace))
    }

    /// Looks at both clocks at `now`: how far the wall clock was stepped (ms, back if
    /// negative) since the last look, if it moved more than [`STEP_NOTICED_MS`] apart from
    /// the monotonic clock. Each step is reported once: the next look compares with this one.
    pub(super) fn observe(&self, now: Now) -> Option<i64> {
        let prev = lock(&self.seen).replace(now)?;
        // Signed: two ticks (a tick and a silent window's billing) may read their clocks
        // in one order and look in the other.
        let mono_ms = if now.mono >= prev.mono {
            i64::try_from(now.mono.duration_since(prev.mono).as_millis()).unwrap_or(i64::MAX)
        } else {
            -i64::try_from(prev.mono.duration_since(now.mono).as_millis()).unwrap_or(i64::MAX)
        };
        let step = now
            .wall_ms
            .saturating_sub(prev.wall_ms)
            .saturating_sub(mono_ms);
        (step.abs() >= STEP_NOTICED_MS).then_some(step)
    }

    /// Whether the stamps of leases that ended are due to be dropped at `now` (at most once
    /// every [`FORGET_ENDED_EVERY`]).
    pub(super) fn forget_due(&self, now: Instant) -> bool {
        let mut forgot_at = lock(&self.forgot_at);
        if forgot_at.is_some_and(|t| now.saturating_duration_since(t) < FORGET_ENDED_EVERY) {
            return false;
        }
        *forgot_at = Some(now);
        true
    }

    /// Drops the stamps of every lease not in `live`.
    pub(super) fn retain(&self, live: &HashSet<String>) {
        lock(&self.set).retain(|id, _| live.contains(id));
    }

    #[cfg(test)]
    pub(crate) fn metered_at(&self, id: &str) -> Option<Instant> {
        lock(&self.set)
            .get(id)
            .and_then(|s| s.metered)
            .map(|s| s.at)
    }

    #[cfg(test)]
    pub(crate) fn leases(&self) -> usize {
        lock(&self.set).len()
    }
}

impl Ledger {
    /// The time lease `l` (its row as read) ran billable from its usage marks to `now`:
    /// from when they were set, or from a top-up that resumed it after that. Measured on
    /// the monotonic clock where this process wrote them (the module's top).
    pub fn since_billable(&self, l: &LeaseRow, now: Now) -> Duration {
        self.stamps.since_billable(l, now)
    }

    /// Drops what this process noted of leases that ended (a lease's times are measured
    /// only while it is live), at most once every [`FORGET_ENDED_EVERY`]: so a host that
    /// runs lease after lease does not keep a note of each for as long as it runs.
    pub fn forget_ended_stamps(&self) -> Result<(), LedgerError> {
        if !self.stamps.forget_due(Instant::now()) {
            return Ok(());
        }
        // Under the connection's lock, as the stamps change: a lease created meanwhile is
        // either in the query or not yet stamped.
        self.with_conn(|c| {
            let live = c
                .prepare_cached("SELECT id FROM leases WHERE state != ?1")?
                .query_map([LeaseState::Stopped], |r| r.get::<_, String>(0))?
                .collect::<Result<HashSet<_>, _>>()?;
            self.stamps.retain(&live);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::test_support::{credit, ledger, new_lease};

    #[test]
    fn a_wall_clock_step_is_noticed_once_with_its_size() {
        let st = Stamps::default();
        let t0 = Now::read();
        let at = |ms: u64, step_ms: i64| Now {
            wall_ms: t0.wall_ms + i64::try_from(ms).expect("small") + step_ms,
            mono: t0.mono + Duration::from_millis(ms),
        };
        assert_eq!(st.observe(at(0, 0)), None, "nothing to compare with");
        assert_eq!(st.observe(at(100, 0)), None);
        assert_eq!(st.observe(at(200, -3_600_000)), Some(-3_600_000));
        assert_eq!(st.observe(at(300, -3_600_000)), None, "said once");
        assert_eq!(st.observe(at(400, -3_600_000 + 90_000)), Some(90_000));
        // NTP's slewing is not a step.
        assert_eq!(st.observe(at(400 + 600_000, -3_510_000 + 300)), None);
    }

    /// A lease's stamps are dropped once it ended, those of live ones kept.
    #[test]
    fn the_stamps_of_ended_leases_are_forgotten() {
        let (_d, l) = ledger();
        for (key, id) in [(1, "a"), (2, "b")] {
            l.create_lease(&new_lease(id), &credit(key, 1000))
                .expect("create");
            l.mark_running(id, None, "{}").expect("run");
        }
        assert_eq!(l.stamps.leases(), 2);
        l.mark_stopped("b", coinop_proto::StopReason::Tenant, None)
            .expect("stop");
        l.forget_ended_stamps().expect("forget");
        assert_eq!(l.stamps.leases(), 1);
        assert!(l.stamps.metered_at("a").is_some(), "the live one's kept");
    }

    #[test]
    fn a_write_holds_once_committed_and_while_the_row_holds_its_value() {
        let st = Stamps::default();
        let t = Instant::now();
        st.begin();
        st.stage("a", Column::FundedAt, Some(7), t);
        st.settle(false);
        assert_eq!(
            st.written_at("a", Column::FundedAt, Some(7)),
            None,
            "rolled back"
        );
        st.begin();
        st.stage("a", Column::FundedAt, Some(7), t);
        st.settle(true);
        assert_eq!(st.written_at("a", Column::FundedAt, Some(7)), Some(t));
        assert_eq!(
            st.written_at("a", Column::FundedAt, Some(8)),
            None,
            "the row holds another value: written by other means"
        );
        assert_eq!(st.written_at("a", Column::PausedAt, Some(7)), None);
        // A step that panicked staged and never settled: not the next one's.
        st.stage("a", Column::FundedAt, Some(9), t);
        st.begin();
        st.settle(true);
        assert_eq!(st.written_at("a", Column::FundedAt, Some(7)), Some(t));
        st.begin();
        st.stage("a", Column::FundedAt, None, t);
        st.settle(true);
        assert_eq!(
            st.written_at("a", Column::FundedAt, Some(7)),
            None,
            "cleared"
        );
    }
}
