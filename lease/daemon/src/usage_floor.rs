//! The kernel's floor under what a VMM says its guest used.
//!
//! Metering bills the vCPU time and uptime a lease's VMM reports, and leaves memory time
//! unbilled while the VMM says it is paused. A VMM that a hostile guest took over could
//! report flat counters, or "paused", and run on unbilled. So each reading of a running
//! lease is held to what coinopd can see without the VMM:
//!
//! - **vCPU time** at least the time the kernel counted the VMM's threads running its
//!   guest (`guest_time`, `/proc/PID/stat` field 43) since the lease's anchor, less 20 ms
//!   and 1% of the time since then. An honest VMM is never raised by it: what it reports
//!   is its vCPU threads' whole CPU time, guest mode and exit handling; the slack covers
//!   the kernel's tick-sampled count of guest time. A lying one pays for its guest's
//!   running time all the same. (Not the cgroup's CPU time: that holds the VMM's device
//!   work too, which for a guest busy with I/O can exceed its vCPUs', as the nested lab
//!   showed, and would bill an honest tenant for it.)
//! - **uptime** at least coinopd's own clock since the anchor, less twice the tick's read
//!   deadline (a VMM reads its clock somewhere between coinopd's ask and its answer).
//! - **"paused"** is believed once while the lease runs: coinopd resumes a VMM found paused
//!   while its lease runs, so an honest one says it once (found paused at re-adoption);
//!   one that says it again before its lease stops running (pauses for lack of funds,
//!   stops) is billed its memory time, unless coinopd itself asked it to pause since (a
//!   top-up can cross the pause). Not "once in a row": a VMM alternating "paused" and
//!   "running" would have every other reading believed, and each believed pause starts the
//!   floors again, so its uptime floor would never get past its slack and its memory time
//!   would cost nothing.
//!
//! The anchor is the first reading of a running lease (and one after each accepted pause,
//! so paused time is never billed later): in memory only, so after a coinopd restart the
//! first reading is taken as it comes. What a tick's readings change in the anchors holds
//! only once the tick's debit commits ([`UsageFloors::commit_tick`]): a tick whose commit
//! failed billed nothing, and a pause it believed must still be believable next tick. The floors only raise the sample handed to the
//! ledger; the ledger's usage marks keep every µs billed once: they never move back, so a
//! later reading below a raised one (taken as read: the lease unfunded, or a tick crossing a
//! silent window's billing) bills nothing, not the same stretch again once the counters
//! pass it (`ledger::tick`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One reading of a running lease, with what coinopd saw itself.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// The VMM's cumulative vCPU time, µs.
    pub vcpu_total_us: u64,
    /// The VMM's uptime, µs.
    pub uptime_us: u64,
    /// The VMM says it is paused (while the ledger has the lease running).
    pub vmm_paused: bool,
    /// The kernel's count of the time the VMM's threads ran its guest, µs (`None` when
    /// the kernel does not say, or the VMM is gone).
    pub guest_time_us: Option<u64>,
    /// When coinopd took the reading.
    pub at: Instant,
}

/// What the ledger bills for a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floored {
    /// Cumulative vCPU time to bill up to, µs.
    pub vcpu_total_us: u64,
    /// Uptime to bill memory time up to, µs.
    pub uptime_us: u64,
    /// Whether this reading's interval is taken as paused (no memory time).
    pub paused: bool,
    /// Whether a floor raised the VMM's figures (or a pause claim was not believed).
    pub raised: bool,
}

#[derive(Debug, Clone, Copy)]
struct Anchor {
    at: Instant,
    guest_time_us: Option<u64>,
    vcpu_total_us: u64,
    uptime_us: u64,
    /// A "paused" was believed since the lease last started running (its anchors since
    /// then carry it).
    pause_believed: bool,
}

/// The anchors of the running leases.
#[derive(Debug, Default)]
pub struct UsageFloors {
    anchors: Mutex<HashMap<String, Anchor>>,
    /// The anchors this tick's readings set, until its debit commits.
    pending: Mutex<HashMap<String, Anchor>>,
    /// Leases whose raised readings were logged (once a lease).
    logged: Mutex<HashSet<String>>,
}

/// The slack under the kernel's guest time: 20 ms, and 1% of the time since the anchor
/// (the count is sampled at the scheduler tick; its error grows far slower than that).
const GUEST_TIME_SLACK_US: u64 = 20_000;
const GUEST_TIME_SLACK_PER_MILLE: u128 = 10;

impl UsageFloors {
    /// Holds `r`, a reading of running lease `id`, to the floors (see the module's top);
    /// `read_deadline` is how long a tick waits for a reading.
    /// The anchor it leaves is the tick's until [`UsageFloors::commit_tick`].
    pub fn floor(&self, id: &str, r: Reading, read_deadline: Duration) -> Floored {
        let anchors = self.anchors.lock().unwrap_or_else(|p| p.into_inner());
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some(a) = anchors.get(id).copied() else {
            pending.insert(id.to_string(), anchor_at(&r, r.vcpu_total_us, r.uptime_us));
            return Floored {
                vcpu_total_us: r.vcpu_total_us,
                uptime_us: r.uptime_us,
                paused: r.vmm_paused,
                raised: false,
            };
        };
        let out = floored(&a, &r, read_deadline);
        let next = if out.paused {
            // Paused time is not billed: the floors start again from here, and no later
            // "paused" is believed until the lease stops running.
            anchor_at(&r, out.vcpu_total_us, out.uptime_us)
        } else {
            a
        };
        pending.insert(id.to_string(), next);
        out
    }

    /// What lease `id` is billed up to although its VMM gave no reading (it stopped
    /// answering, and the lease is being stopped for it): the floors alone, from its last
    /// committed anchor to `now`, with the kernel's guest time `guest_time_us`. `None`
    /// without an anchor (no reading since coinopd started): nothing to hold it to.
    pub fn floor_silent(
        &self,
        id: &str,
        guest_time_us: Option<u64>,
        now: Instant,
        read_deadline: Duration,
    ) -> Option<Floored> {
        let anchors = self.anchors.lock().unwrap_or_else(|p| p.into_inner());
        let a = anchors.get(id)?;
        // Counters at the anchor's: whatever the floors add is the silent window's.
        let r = Reading {
            vcpu_total_us: a.vcpu_total_us,
            uptime_us: a.uptime_us,
            vmm_paused: false,
            guest_time_us,
            at: now,
        };
        Some(floored(a, &r, read_deadline))
    }

    /// The tick's debit committed: the anchors its readings set hold.
    pub fn commit_tick(&self) {
        let mut anchors = self.anchors.lock().unwrap_or_else(|p| p.into_inner());
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        anchors.extend(pending.drain());
    }

    /// The tick's debit did not commit: its readings billed nothing, so the anchors stay
    /// as the last committed tick left them.
    pub fn discard_tick(&self) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// coinopd itself asked lease `id`'s VMM to pause (its balance ran out): a "paused" it
    /// reads next is believed again, even after one was. A top-up can set the lease running
    /// before a tick sees it paused (which forgets its anchor), with the pause or the
    /// top-up's resume still on its way to the VMM; that reading is coinopd's own doing.
    pub fn pause_sent(&self, id: &str) {
        let mut anchors = self.anchors.lock().unwrap_or_else(|p| p.into_inner());
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for a in [anchors.get_mut(id), pending.get_mut(id)]
            .into_iter()
            .flatten()
        {
            a.pause_believed = false;
        }
    }

    /// Forgets lease `id`'s anchor: it is not running (paused for lack of funds, stopped),
    /// so its next running reading starts a new one.
    pub fn forget(&self, id: &str) {
        self.anchors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Forgets the anchors of leases not in `live`.
    pub fn keep_live(&self, live: &HashSet<&str>) {
        self.anchors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| live.contains(id.as_str()));
        self.logged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id| live.contains(id.as_str()));
    }

    /// Whether a raised reading of lease `id` is the first one to log (a hostile VMM would
    /// otherwise log one every tick).
    pub fn first_raise(&self, id: &str) -> bool {
        self.logged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string())
    }
}

fn anchor_at(r: &Reading, vcpu_total_us: u64, uptime_us: u64) -> Anchor {
    Anchor {
        at: r.at,
        guest_time_us: r.guest_time_us,
        vcpu_total_us,
        uptime_us,
        pause_believed: r.vmm_paused,
    }
}

fn floored(a: &Anchor, r: &Reading, read_deadline: Duration) -> Floored {
    let elapsed = r.at.saturating_duration_since(a.at);
    let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    let vcpu_floor = match (a.guest_time_us, r.guest_time_us) {
        (Some(then), Some(now)) => {
            let slack = u64::try_from(elapsed.as_micros() * GUEST_TIME_SLACK_PER_MILLE / 1000)
                .unwrap_or(u64::MAX)
                .saturating_add(GUEST_TIME_SLACK_US);
            a.vcpu_total_us
                .saturating_add(now.saturating_sub(then).saturating_sub(slack))
        }
        _ => 0,
    };
    // Believed only if no pause was since the lease started running (the module's top).
    let paused = r.vmm_paused && !a.pause_believed;
    let slack_us = u64::try_from(read_deadline.as_micros() * 2).unwrap_or(u64::MAX);
    let uptime_floor = if paused {
        0
    } else {
        a.uptime_us
            .saturating_add(elapsed_us.saturating_sub(slack_us))
    };
    let vcpu_total_us = r.vcpu_total_us.max(vcpu_floor);
    let uptime_us = r.uptime_us.max(uptime_floor);
    Floored {
        vcpu_total_us,
        uptime_us,
        paused,
        raised: vcpu_total_us != r.vcpu_total_us
            || uptime_us != r.uptime_us
            || paused != r.vmm_paused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One tick's reading of `id`, its debit committed.
    fn committed(f: &UsageFloors, id: &str, r: Reading, deadline: Duration) -> Floored {
        let out = f.floor(id, r, deadline);
        f.commit_tick();
        out
    }

    /// A VMM gone silent is billed what the floors alone say from its last anchor: the
    /// kernel's guest time and coinopd's clock, less their slack.
    #[test]
    fn a_silent_vmm_is_held_to_the_floors_from_its_anchor() {
        let f = UsageFloors::default();
        let t0 = Instant::now();
        assert!(
            f.floor_silent("a", Some(0), t0, DEADLINE).is_none(),
            "no anchor"
        );
        committed(&f, "a", reading(t0, 0, 100, 1000, 100), DEADLINE);
        let silent = f
            .floor_silent(
                "a",
                Some(10_100_000),
                t0 + Duration::from_secs(10),
                DEADLINE,
            )
            .expect("anchored");
        // 10 s of guest time less 20 ms + 1%; 10 s of clock less twice the deadline.
        assert_eq!(silent.vcpu_total_us, (100 + 10_000 - 20 - 100) * 1000);
        assert_eq!(
            silent.uptime_us,
            1_000_000 + 10_000_000 - 2 * DEADLINE.as_micros() as u64
        );
    }

    /// A tick whose debit did not commit (a full disk) leaves the anchors as they were: a
    /// "paused" it believed is believed again next tick, which bills the same interval.
    #[test]
    fn a_tick_that_did_not_commit_changes_no_anchor() {
        let f = UsageFloors::default();
        let t0 = Instant::now();
        committed(&f, "a", reading(t0, 0, 100, 1000, 100), DEADLINE);
        let mut r = reading(t0, 5000, 100, 1000, 100);
        r.vmm_paused = true;
        assert!(f.floor("a", r, DEADLINE).paused, "believed once");
        f.discard_tick();
        let mut r = reading(t0, 6000, 100, 1000, 100);
        r.vmm_paused = true;
        assert!(
            committed(&f, "a", r, DEADLINE).paused,
            "the pause the failed tick believed is believed again"
        );
        // Committed now: the next one is not.
        let mut r = reading(t0, 7000, 100, 1000, 100);
        r.vmm_paused = true;
        assert!(!committed(&f, "a", r, DEADLINE).paused);
    }

    const DEADLINE: Duration = Duration::from_millis(250);

    /// A reading at `ms` after `t0`: the VMM's vCPU time and uptime, the kernel's guest time.
    fn reading(t0: Instant, ms: u64, vcpu_ms: u64, up_ms: u64, guest_ms: u64) -> Reading {
        Reading {
            vcpu_total_us: vcpu_ms * 1000,
            uptime_us: up_ms * 1000,
            vmm_paused: false,
            guest_time_us: Some(guest_ms * 1000),
            at: t0 + Duration::from_millis(ms),
        }
    }

    #[test]
    fn an_honest_vmm_is_billed_as_it_reports() {
        let f = UsageFloors::default();
        let t0 = Instant::now();
        // Spinning: its vCPU threads' CPU time holds the guest time and the exits'.
        for (i, (ms, vcpu, up, guest)) in [
            (0, 40, 1000, 30),
            (1000, 1000, 2000, 960),
            (2000, 1960, 3000, 1890),
            // The kernel's sampled count a tick or two ahead of the thread clocks.
            (3000, 2900, 4000, 2920),
        ]
        .into_iter()
        .enumerate()
        {
            let r = reading(t0, ms, vcpu, up, guest);
            let out = committed(&f, "a", r, DEADLINE);
            assert_eq!(
                (out.vcpu_total_us, out.uptime_us, out.raised),
                (r.vcpu_total_us, r.uptime_us, false),
                "reading {i}"
            );
        }
        // A VMM's uptime read up to a read deadline before coinopd's clock.
        let r = reading(t0, 4000, 3860, 5000 - 240, 3850);
        assert!(!committed(&f, "a", r, DEADLINE).raised);
        // Idle from the start: hardly any guest time.
        committed(&f, "b", reading(t0, 0, 30, 500, 20), DEADLINE);
        for s in 1..=60 {
            let r = reading(t0, s * 1000, 30 + s, 500 + s * 1000, 20 + s);
            assert!(!committed(&f, "b", r, DEADLINE).raised, "second {s}");
        }
    }

    #[test]
    fn flat_counters_are_raised_to_the_kernels_count_and_coinopds_clock() {
        let f = UsageFloors::default();
        let t0 = Instant::now();
        committed(&f, "a", reading(t0, 0, 100, 1000, 90), DEADLINE);
        // Ten seconds of a spinning guest whose VMM says nothing moved.
        let out = committed(&f, "a", reading(t0, 10_000, 100, 1000, 10_000), DEADLINE);
        assert!(out.raised);
        // The kernel's 9.91 s of guest time, less 20 ms and 1% of the 10 s.
        assert_eq!(out.vcpu_total_us, (100 + 9_910 - 20 - 100) * 1000);
        // coinopd's 10 s, less twice the read deadline.
        assert_eq!(out.uptime_us, (1000 + 10_000 - 500) * 1000);
        // Cumulative from the anchor: the next reading bills only what came since.
        let next = committed(&f, "a", reading(t0, 20_000, 100, 1000, 19_910), DEADLINE);
        assert_eq!(next.vcpu_total_us, (100 + 19_820 - 20 - 200) * 1000);
        assert_eq!(next.uptime_us, (1000 + 20_000 - 500) * 1000);
    }

    #[test]
    fn without_the_kernels_guest_time_only_the_uptime_is_floored() {
        let f = UsageFloors::default();
        let t0 = Instant::now();
        let mut r = reading(t0, 0, 100, 1000, 0);
        r.guest_time_us = None;
        committed(&f, "a", r, DEADLINE);
        let mut r = reading(t0, 5000, 100, 1000, 0);
        r.guest_time_us = None;
        let out = committed(&f, "a", r, DEADLINE);
        assert_eq!(out.vcpu_total_us, 100_000);
        assert_eq!(out.uptime_us, (1000 + 5000 - 500) * 1000);
    }

    #[test]
    fn paused_is_believed_once_while_running_and_paused_time_is_not_billed_later() {
        let f = UsageFloors::default();
        let t0 = Instant::now();
        committed(&f, "a", reading(t0, 0, 100, 1000, 100), DEADLINE);
        let mut r = reading(t0, 5000, 100, 1000, 101);
        r.vmm_paused = true;
        let first = committed(&f, "a", r, DEADLINE);
        assert!(first.paused, "believed once: {first:?}");
        assert_eq!(first.uptime_us, 1_000_000, "no memory time for it");
        // Still "paused" after coinopd resumed it: its memory time is billed.
        let mut r = reading(t0, 6000, 100, 1000, 102);
        r.vmm_paused = true;
        let again = committed(&f, "a", r, DEADLINE);
        assert!(!again.paused && again.raised, "{again:?}");
        // From the pause's reading on (1 s), not the 5 s before it.
        assert_eq!(again.uptime_us, (1000 + 1000 - 500) * 1000);
        // Running again: a later pause of the same running lease is not believed either
        // (honest VMMs are found paused once, at re-adoption); its memory time is billed.
        committed(&f, "a", reading(t0, 7000, 100, 3000, 103), DEADLINE);
        let mut r = reading(t0, 8000, 100, 4000, 104);
        r.vmm_paused = true;
        let later = committed(&f, "a", r, DEADLINE);
        assert!(!later.paused && later.raised, "{later:?}");
        // Once the lease stopped running (paused for lack of funds) and runs again, its
        // first "paused" is believed.
        f.forget("a");
        committed(&f, "a", reading(t0, 9000, 100, 5000, 105), DEADLINE);
        let mut r = reading(t0, 10_000, 100, 6000, 106);
        r.vmm_paused = true;
        assert!(committed(&f, "a", r, DEADLINE).paused);
    }

    #[test]
    fn a_pause_coinopd_sent_is_believed_again() {
        let f = UsageFloors::default();
        let t0 = Instant::now();
        committed(&f, "a", reading(t0, 0, 100, 1000, 100), DEADLINE);
        let mut r = reading(t0, 1000, 100, 1000, 100);
        r.vmm_paused = true;
        assert!(
            committed(&f, "a", r, DEADLINE).paused,
            "found paused once: believed"
        );
        committed(&f, "a", reading(t0, 2000, 100, 2000, 101), DEADLINE);
        // Its balance ran out: coinopd paused it, and a top-up set it running again before
        // a tick read it paused; the pause is coinopd's own.
        f.pause_sent("a");
        let mut r = reading(t0, 3000, 100, 2000, 101);
        r.vmm_paused = true;
        assert!(committed(&f, "a", r, DEADLINE).paused, "believed again");
        // And only that once.
        let mut r = reading(t0, 4000, 100, 2000, 101);
        r.vmm_paused = true;
        assert!(!committed(&f, "a", r, DEADLINE).paused);
    }

    #[test]
    fn a_vmm_alternating_paused_and_running_pays_its_memory_time() {
        // Every 100 ms for 10 s: "paused", then "running" with its uptime as it was, and so
        // on. Believed every other time, each pause would start the floors again before the
        // uptime floor got past its 500 ms of slack: no memory time at all.
        let f = UsageFloors::default();
        let t0 = Instant::now();
        committed(&f, "a", reading(t0, 0, 100, 1000, 100), DEADLINE);
        let mut billed = 0;
        for tick in 1..=100u64 {
            let mut r = reading(t0, tick * 100, 100, 1000, 100);
            r.vmm_paused = tick % 2 == 1;
            billed = committed(&f, "a", r, DEADLINE).uptime_us;
        }
        // The first pause (at 100 ms) believed; from there on, all but the slack is billed.
        assert!(
            billed >= (1000 + 10_000 - 100 - 500) * 1000,
            "uptime billed up to {billed} µs"
        );
    }

    #[test]
    fn a_forgotten_lease_starts_a_new_anchor() {
        let f = UsageFloors::default();
        let t0 = Instant::now();
        committed(&f, "a", reading(t0, 0, 100, 1000, 100), DEADLINE);
        f.forget("a");
        // Paused for lack of funds meanwhile: its 30 s are not billed by a floor.
        let out = committed(&f, "a", reading(t0, 30_000, 100, 1000, 100), DEADLINE);
        assert!(!out.raised);
        f.keep_live(&HashSet::new());
        assert!(f.anchors.lock().expect("lock").is_empty());
    }
}
