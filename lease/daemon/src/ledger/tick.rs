//! Metering: one tick's readings of the guests' cumulative counters, debited from the running
//! leases in one transaction; a lease that runs dry is paused, and stopped once its grace
//! period is over.
//!
//! A lease's usage marks (`last_vcpu_total_us`, `last_uptime_us`) are how far its VMM's
//! counters have been billed, or excused while it was paused; a reading bills what lies past
//! them. They never move back: a reading below them (the last one was raised by the usage
//! floors, [`crate::usage_floor`], and this one was taken as read: the lease unfunded, or a
//! tick crossing a silent window's billing) bills nothing, and what lies between is not
//! billed a second time once the counters pass them again. Nor does a reading move them
//! further than the time since they were set allows (`metered_at_ms`): a billed one at most
//! `vcpus` × that time (+ [`BILLED_SLACK_US`]) for vCPU time and that time (+ the slack)
//! for uptime; one that is not billed (a pause) excuses at most that time of uptime and no
//! vCPU time at all (a paused guest's does not grow; one that ran on pays for it once it
//! runs again). So a spike a VMM reports (its guest took it over) is billed as a
//! guest that used all its vCPUs, and what lies beyond waits for its counters to get there:
//! it neither buys the lease a free run (the marks out of its counters' reach for good) nor
//! excuses time it did not pause. A replaced VMM, whose counters do start again from zero,
//! has its marks set where it is replaced (its boot, a failed hand-over, a recovery).
//!
//! "The time since" is the time that passed, on the monotonic clock, wherever this process
//! set the marks (`stamps.rs`): a wall clock stepped back would otherwise hold each tick to
//! the slack until it is back where it was (the lease's billing deferred by the step, one
//! that runs dry not paused), and one stepped forward let a spike bill the step. Only marks
//! set before a restart are measured on the wall clock, from `metered_at_ms`. The grace of
//! a lease paused unfunded is measured the same way.

use std::time::Duration;

use coinop_proto::{LeaseState, StopReason};
use payment::metering::{self, Prices, UsageDelta};
use rusqlite::{params, Transaction};

use crate::clock::Now;

use super::lease_rows::{get_in, stored_counter};
use super::stamps::{Column, Stamps};
use super::{LeaseRow, Ledger, LedgerError};

/// One tick's reading of one guest's cumulative counters.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    pub lease_id: &'a str,
    pub vcpu_total_us: u64,
    pub uptime_us: u64,
    /// The guest was paused up to this reading although the ledger may have the lease
    /// running by the tick's commit: its VMM answered paused (coinopd died between a
    /// top-up's commit and its `resume`), or the lease was read paused for lack of funds
    /// and a top-up committed since. The time since the last reading is not billed as
    /// memory time (the guest could not use it): the uptime mark moves, as far as the time
    /// since it was set.
    pub vm_paused: bool,
}

/// What a tick decided for a lease; the scheduler acts on it after the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickAction {
    None,
    /// The balance just hit zero: pause the guest.
    Pause,
    /// The grace period ran out: stop the guest.
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickOutcome {
    pub lease_id: String,
    pub debited_msat: u64,
    pub balance_msat: u64,
    pub action: TickAction,
}

impl Ledger {
    /// Applies one tick of readings in one transaction: debits running leases, pauses those
    /// that hit zero, stops paused ones whose grace ran out. Counters are cumulative, so the
    /// debit is the delta since the last committed reading: a crash loses no usage at all
    /// for vCPU time and at most the uncommitted tick's wall time for memory.
    pub fn apply_tick(
        &self,
        samples: &[Sample<'_>],
        prices: Prices,
        grace_s: u64,
    ) -> Result<Vec<TickOutcome>, LedgerError> {
        self.apply_tick_at(samples, prices, grace_s, Now::read())
    }

    /// [`Ledger::apply_tick`] at `now`.
    pub(crate) fn apply_tick_at(
        &self,
        samples: &[Sample<'_>],
        prices: Prices,
        grace_s: u64,
        now: Now,
    ) -> Result<Vec<TickOutcome>, LedgerError> {
        match self.stamps.observe(now) {
            Some(step_ms) if step_ms < 0 => {
                let back_ms = step_ms.unsigned_abs();
                tracing::warn!(
                    step_back_ms = back_ms,
                    "the wall clock was stepped back {back_ms} ms; metering goes on at its \
                     pace, measuring the time between readings on the monotonic clock (only \
                     times written before coinopd started are measured on the wall clock)"
                )
            }
            Some(step_ms) => {
                tracing::info!(
                    step_forward_ms = step_ms,
                    "the wall clock moved {step_ms} ms ahead of the monotonic clock (stepped, \
                     or the host was suspended); metering measures the time between readings \
                     on the monotonic clock"
                )
            }
            None => {}
        }
        self.with_tx(|tx| {
            let mut outcomes = Vec::with_capacity(samples.len());
            for s in samples {
                let Some(lease) = get_in(tx, s.lease_id)? else {
                    continue;
                };
                outcomes.push(tick_one(tx, &self.stamps, &lease, s, prices, grace_s, now)?);
            }
            Ok(outcomes)
        })
    }
}

/// Seconds a lease paused for lack of funds at `paused_at` is held before it is stopped:
/// `--grace-s`, but never more than it ran since it was last funded (`funded_at`: its boot,
/// or the top-up that resumed it). The guest's memory stays held, unbilled, through the
/// grace, so a grace longer than the paid run would let a tiny payment hold a large lease's
/// room far beyond what it bought (1 sat buys an 8 GiB guest 60 ms, and would hold its
/// 8 GiB for a minute): held this way, the unbilled hold is never longer than the time the
/// tenant paid the lease's memory for. Rows older than `funded_at` keep the whole grace.
/// In whole wall-clock seconds, as the API shows when a paused lease stops; a tick measures
/// the same rule as time passed ([`Stamps::grace_over`]).
pub(crate) fn grace_of(grace_s: u64, paused_at: Option<i64>, funded_at: Option<i64>) -> i64 {
    let grace = i64::try_from(grace_s).unwrap_or(i64::MAX);
    match (paused_at, funded_at) {
        (Some(paused), Some(funded)) => grace.min(paused.saturating_sub(funded).max(0)),
        _ => grace,
    }
}

/// How far past the time since a lease's marks were set a billed reading may take them:
/// room for what lies between a VMM reading its counters and its tick's `now` (the read
/// deadline, the blocking pool, the ledger's lock), so an honest reading is billed whole,
/// and for a wall clock stepped back across a restart (the only time it is measured on).
/// Only a billed reading gets it: a reading that excuses time (a pause) would otherwise
/// excuse a second more at each tick, and a billed one that reaches further is paid for.
/// What a reading holds beyond it is billed by later ticks, if the counters are still there.
const BILLED_SLACK_US: u64 = 1_000_000;

/// Where one reading moves a lease's usage marks, and what of that is billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Moved {
    vcpu_total_us: u64,
    uptime_us: u64,
    /// vCPU µs billed.
    dvcpu: u64,
    /// Uptime µs billed as memory time.
    dwall: u64,
}

/// `d` in µs (saturated: no time that passes is that long).
fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A mark at `mark` moved toward `reading`: never back, and no further than `reach` on.
fn held(mark: u64, reading: u64, reach: u64) -> u64 {
    reading.min(mark.saturating_add(reach)).max(mark)
}

/// Where reading `s` of lease `l`, taken `since` its marks were set, takes them (see the
/// module's top): a running lease's vCPU time is billed, and its uptime unless its guest
/// was paused; the uptime of a lease paused (or paused since the reading) is excused, its
/// vCPU time neither billed nor excused.
fn moved(l: &LeaseRow, s: &Sample<'_>, since: Duration) -> Moved {
    let since_us = us(since);
    let running = l.state == LeaseState::Running;
    let vcpu_total_us = if running {
        let reach = since_us
            .saturating_add(BILLED_SLACK_US)
            .saturating_mul(u64::from(l.vcpus));
        held(l.last_vcpu_total_us, s.vcpu_total_us, reach)
    } else {
        l.last_vcpu_total_us
    };
    let wall_billed = running && !s.vm_paused;
    let reach = if wall_billed {
        since_us.saturating_add(BILLED_SLACK_US)
    } else {
        since_us
    };
    let uptime_us = held(l.last_uptime_us, s.uptime_us, reach);
    Moved {
        vcpu_total_us,
        uptime_us,
        dvcpu: vcpu_total_us.saturating_sub(l.last_vcpu_total_us),
        dwall: if wall_billed {
            uptime_us.saturating_sub(l.last_uptime_us)
        } else {
            0
        },
    }
}

/// Lease `l`'s uptime mark after a pause that a reading of `uptime_us`, taken `since` the
/// mark was set, ends (a reorg's thaw): the pause's memory time excused, as far as the
/// time since the mark was set, never back.
pub(super) fn excused_uptime(l: &LeaseRow, uptime_us: u64, since: Duration) -> u64 {
    held(l.last_uptime_us, uptime_us, us(since))
}

fn tick_one(
    tx: &Transaction<'_>,
    stamps: &Stamps,
    lease: &LeaseRow,
    s: &Sample<'_>,
    prices: Prices,
    grace_s: u64,
    at: Now,
) -> Result<TickOutcome, LedgerError> {
    let now = at.wall_s();
    let m = moved(lease, s, stamps.since_metered(lease, at));
    let (dvcpu, dwall) = (m.dvcpu, m.dwall);
    let mut out = TickOutcome {
        lease_id: lease.id.clone(),
        debited_msat: 0,
        balance_msat: lease.balance_msat,
        action: TickAction::None,
    };
    let mut state = lease.state;
    let mut paused_at = lease.paused_at;
    let mut carry = lease.carry_units;
    let mut used_vcpu = lease.used_vcpu_us;
    let mut used_mem = lease.used_mem_mib_us;
    match state {
        LeaseState::Running => {
            let d = metering::debit(
                prices,
                UsageDelta {
                    vcpu_us: dvcpu,
                    mem_mib: lease.mem_mib,
                    wall_us: dwall,
                },
                carry,
                lease.balance_msat,
            );
            out.debited_msat = d.msat;
            out.balance_msat = lease.balance_msat - d.msat;
            carry = d.carry_units;
            used_vcpu = used_vcpu.saturating_add(dvcpu);
            used_mem = used_mem.saturating_add(lease.mem_mib.saturating_mul(dwall));
            if d.exhausted {
                state = LeaseState::PausedUnfunded;
                paused_at = Some(now);
                stamps.wrote(&lease.id, Column::PausedAt, at);
                out.action = TickAction::Pause;
            }
        }
        // Out of funds: nothing to bill; only the uptime mark moves (`moved`), so a top-up
        // does not charge for the paused time.
        LeaseState::PausedUnfunded if stamps.grace_over(lease, grace_s, at) => {
            out.action = TickAction::Stop;
        }
        _ => {}
    }
    let stop = out.action == TickAction::Stop;
    tx.prepare_cached(
        "UPDATE leases SET balance_msat = ?2, carry_units = ?3, used_vcpu_us = ?4,
            used_mem_mib_us = ?5, last_vcpu_total_us = ?6, last_uptime_us = ?7, state = ?8,
            paused_at = ?9, stop_reason = CASE WHEN ?10 THEN ?11 ELSE stop_reason END,
            updated_at = ?12, debited_msat = debited_msat + ?13, metered_at_ms = ?14
         WHERE id = ?1",
    )?
    .execute(params![
        lease.id,
        out.balance_msat,
        carry,
        stored_counter(used_vcpu),
        stored_counter(used_mem),
        stored_counter(m.vcpu_total_us),
        stored_counter(m.uptime_us),
        if stop { LeaseState::Stopped } else { state },
        paused_at,
        stop,
        StopReason::BalanceExhausted,
        now,
        out.debited_msat,
        at.wall_ms
    ])?;
    stamps.wrote(&lease.id, Column::MeteredAtMs, at);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::unix_s;
    use crate::ledger::test_support::{
        credit, ledger, metered_at, new_lease, running_funded_long_ago, s, P,
    };

    /// A VMM under a hostile guest's control reports counters SQLite cannot hold: that
    /// lease is billed as far as the clock allows (here its whole balance) and paused, and
    /// the tick's other leases are debited as usual (before, the whole tick failed, every
    /// tick, and nothing on the host was billed).
    #[test]
    fn a_counter_beyond_what_sqlite_holds_bills_its_own_lease_only() {
        let (_d, l) = ledger();
        for (key, id) in [(1, "a"), (2, "b")] {
            l.create_lease(&new_lease(id), &credit(key, 3000))
                .expect("create");
            l.mark_running(id, None, "{}").expect("run");
        }
        let t0 = metered_at(&l, "b");
        let hostile = |vcpu_total_us, uptime_us| Sample {
            lease_id: "b",
            vcpu_total_us,
            uptime_us,
            vm_paused: false,
        };
        let o = l
            .apply_tick_at(
                &[s(1_000_000, 1_000_000), hostile(u64::MAX, 1 << 60)],
                P,
                0,
                t0 + 1000,
            )
            .expect("one lease's counters do not fail the tick");
        assert_eq!(o[0].debited_msat, 2000, "{o:?}");
        assert_eq!((o[1].balance_msat, &o[1].action), (0, &TickAction::Pause));
        // And the next tick, with the hostile counters again, goes through as well.
        let o = l
            .apply_tick_at(
                &[s(1_500_000, 1_500_000), hostile(u64::MAX, u64::MAX)],
                P,
                0,
                t0 + 1500,
            )
            .expect("tick");
        assert_eq!(o[0].debited_msat, 1000, "{o:?}");
    }

    /// A VMM that reports a spike (its guest took it over) is billed as a guest that used
    /// its vCPU all the time since the last tick, and its lease is billed again once it
    /// runs after a top-up: the marks follow no reading further than the clock allows, so
    /// a spike does not put them out of its counters' reach for good. (Marks that followed
    /// any reading and never moved back, tried once, let one spike buy a whole lease's run.)
    #[test]
    fn a_spiked_reading_does_not_leave_the_lease_unbilled_after_a_top_up() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 1000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        let t0 = metered_at(&l, "a");
        let o = l
            .apply_tick_at(&[s(u64::MAX, u64::MAX)], P, 60, t0 + 1000)
            .expect("tick");
        assert_eq!(o[0].action, TickAction::Pause);
        let row = l.get("a").expect("get").expect("row");
        assert_eq!(
            (row.last_vcpu_total_us, row.last_uptime_us),
            (2_000_000, 2_000_000),
            "1 s and the slack"
        );
        l.topup("a", &credit(2, 100_000)).expect("top-up");
        l.apply_tick_at(&[s(10_000_000, 10_000_000)], P, 60, t0 + 10_000)
            .expect("tick");
        let o = l
            .apply_tick_at(&[s(11_000_000, 11_000_000)], P, 60, t0 + 11_000)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 2000, "1 s of vCPU and of 1 GiB: {o:?}");
    }

    /// A spike that stays within what the clock allows bills nothing twice either: the
    /// counters below the marks afterwards (as they really were) bill nothing until they
    /// pass them, and then only what lies beyond.
    #[test]
    fn a_spiked_reading_is_billed_as_far_as_the_clock_allows_and_once() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 100_000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        let t0 = metered_at(&l, "a");
        let o = l
            .apply_tick_at(&[s(u64::MAX, u64::MAX)], P, 60, t0 + 1000)
            .expect("tick");
        // 1 s and the slack, of its one vCPU and of 1 GiB: not its whole balance.
        assert_eq!(o[0].debited_msat, 4000, "{o:?}");
        let o = l
            .apply_tick_at(&[s(1_000_000, 1_500_000)], P, 60, t0 + 1500)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 0, "below the marks: {o:?}");
        let o = l
            .apply_tick_at(&[s(3_000_000, 3_000_000)], P, 60, t0 + 3000)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 2000, "1 s past the marks: {o:?}");
    }

    /// A reading raised by the usage floors (the VMM said less than the kernel and the
    /// clock saw), then one of the same VMM taken as read, below it: a tick that read the
    /// VMM before a silent window's billing committed, or (next test) the lease read
    /// unfunded. The marks stay where the floors took them, so once the counters pass them
    /// only what lies beyond is billed: before, the marks went back to the lower reading
    /// and the stretch between was billed a second time.
    #[test]
    fn a_reading_below_a_floor_raised_one_does_not_bill_the_stretch_again() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 100_000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        let t0 = metered_at(&l, "a");
        // The VMM said 1 s of vCPU time and 2 s of uptime; the floors billed 5 s of each.
        let o = l
            .apply_tick_at(&[s(5_000_000, 5_000_000)], P, 60, t0 + 5000)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 10_000, "{o:?}");
        let o = l
            .apply_tick_at(&[s(1_000_000, 2_000_000)], P, 60, t0 + 5100)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 0, "{o:?}");
        let row = l.get("a").expect("get").expect("row");
        assert_eq!(
            (row.last_vcpu_total_us, row.last_uptime_us),
            (5_000_000, 5_000_000),
            "the marks never move back"
        );
        let o = l
            .apply_tick_at(&[s(6_000_000, 6_000_000)], P, 60, t0 + 6000)
            .expect("tick");
        assert_eq!(
            o[0].debited_msat, 2000,
            "1 s of vCPU and of 1 GiB past what was billed: {o:?}"
        );
    }

    /// The same with the lower reading taken while the lease was paused for lack of funds
    /// (the floors do not hold an unfunded lease's readings), and a top-up after it.
    #[test]
    fn an_unfunded_reading_below_a_floor_raised_one_does_not_bill_the_stretch_again() {
        let (_d, l) = ledger();
        let t0 = running_funded_long_ago(&l, 10_000);
        // Floor-raised to 5 s of vCPU time and of uptime: the whole balance.
        let o = l
            .apply_tick_at(&[s(5_000_000, 5_000_000)], P, 60, t0 + 5000)
            .expect("tick");
        assert_eq!(
            (o[0].debited_msat, &o[0].action),
            (10_000, &TickAction::Pause)
        );
        // Read unfunded, as the VMM says.
        let unfunded = Sample {
            vm_paused: true,
            ..s(1_000_000, 2_000_000)
        };
        l.apply_tick_at(&[unfunded], P, 60, t0 + 6000)
            .expect("unfunded tick");
        l.topup("a", &credit(2, 100_000)).expect("top-up");
        let o = l
            .apply_tick_at(&[s(6_000_000, 6_000_000)], P, 60, t0 + 7000)
            .expect("tick");
        assert_eq!(
            o[0].debited_msat, 2000,
            "1 s of vCPU and of 1 GiB past what was billed: {o:?}"
        );
    }

    /// A spike read while the lease is paused for lack of funds excuses no vCPU time, and
    /// no more uptime than the pause has lasted: once topped up, the lease is billed from
    /// where it ran dry, as its counters really are.
    #[test]
    fn a_spike_read_unfunded_excuses_no_more_than_the_pause() {
        let (_d, l) = ledger();
        let t0 = running_funded_long_ago(&l, 1000);
        let o = l
            .apply_tick_at(&[s(1_000_000, 0)], P, 60, t0 + 1000)
            .expect("tick");
        assert_eq!(o[0].action, TickAction::Pause);
        let spike = Sample {
            vm_paused: true,
            ..s(u64::MAX, u64::MAX)
        };
        l.apply_tick_at(&[spike], P, 60, t0 + 3000)
            .expect("unfunded tick");
        let row = l.get("a").expect("get").expect("row");
        assert_eq!(
            (row.last_vcpu_total_us, row.last_uptime_us),
            (1_000_000, 2_000_000),
            "no vCPU time excused, 2 s of uptime (the pause so far)"
        );
        l.topup("a", &credit(2, 100_000)).expect("top-up");
        let o = l
            .apply_tick_at(&[s(2_000_000, 3_000_000)], P, 60, t0 + 4000)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 2000, "1 s of vCPU and of 1 GiB: {o:?}");
    }

    /// A reading ahead of what the clock allows since the last tick (an honest one whose
    /// tick was slow to commit, say) is billed as far as the clock allows, and the rest by
    /// the ticks after while the counters are still there: nothing lost, nothing twice.
    /// vCPU time may grow by the time passed for each of the lease's vCPUs.
    #[test]
    fn a_reading_ahead_of_the_clock_is_billed_as_it_comes_due() {
        let (_d, l) = ledger();
        let two = crate::ledger::NewLease {
            vcpus: 2,
            ..new_lease("a")
        };
        l.create_lease(&two, &credit(1, 1_000_000)).expect("create");
        l.mark_running("a", None, "{}").expect("run");
        let t0 = metered_at(&l, "a");
        // 2 s on: 2 vCPUs × (2 s + the slack) of vCPU time, 3 s of uptime (2 s + the slack).
        let o = l
            .apply_tick_at(&[s(10_000_000, 4_000_000)], P, 60, t0 + 2000)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 6000 + 3000, "{o:?}");
        let o = l
            .apply_tick_at(&[s(10_000_000, 4_000_000)], P, 60, t0 + 3000)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 4000 + 1000, "the rest: {o:?}");
        let row = l.get("a").expect("get").expect("row");
        assert_eq!(
            (row.used_vcpu_us, row.used_mem_mib_us),
            (10_000_000, 1024 * 4_000_000)
        );
    }

    #[test]
    fn ticks_debit_pause_and_stop_after_grace() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 3000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        // 1 s vCPU + 1 GiB × 1 s = 2000 msat.
        let o = l
            .apply_tick(&[s(1_000_000, 1_000_000)], P, 0)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 2000);
        assert_eq!(o[0].action, TickAction::None);
        let o = l
            .apply_tick(&[s(2_000_000, 2_000_000)], P, 0)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 1000);
        assert_eq!(o[0].action, TickAction::Pause);
        assert_eq!(
            l.get("a").expect("get").expect("row").state,
            LeaseState::PausedUnfunded
        );
        let o = l
            .apply_tick(&[s(2_000_000, 3_000_000)], P, 0)
            .expect("tick");
        assert_eq!(o[0].action, TickAction::Stop);
        let row = l.get("a").expect("get").expect("row");
        assert_eq!(row.state, LeaseState::Stopped);
        assert_eq!(row.stop_reason, Some(StopReason::BalanceExhausted));
    }

    #[test]
    fn the_grace_is_never_longer_than_the_run_since_the_lease_was_funded() {
        assert_eq!(
            grace_of(60, Some(1_000), Some(1_000 - 7_200)),
            60,
            "ran 2 h"
        );
        assert_eq!(grace_of(60, Some(1_000), Some(1_000 - 3)), 3, "ran 3 s");
        assert_eq!(grace_of(60, Some(1_000), Some(1_000)), 0, "ran under 1 s");
        assert_eq!(
            grace_of(60, Some(1_000), Some(1_005)),
            0,
            "a clock stepped back"
        );
        assert_eq!(
            grace_of(60, Some(1_000), None),
            60,
            "a row older than funded_at"
        );

        // A lease that ran 2 s on its payment is stopped 2 s into its pause, not 60.
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 1000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        let funded = l.get("a").expect("get").expect("row").funded_at;
        let now = unix_s();
        assert!(
            funded.is_some_and(|f| (now - 1..=now).contains(&f)),
            "{funded:?}"
        );
        let backdate = |funded: i64, paused: Option<i64>| {
            l.with_conn(|c| {
                c.execute(
                    "UPDATE leases SET funded_at = ?1, paused_at = ?2 WHERE id = 'a'",
                    params![funded, paused],
                )?;
                Ok(())
            })
            .expect("backdate");
        };
        let o = l
            .apply_tick(&[s(1_000_000, 1_000_000)], P, 60)
            .expect("tick");
        assert_eq!(o[0].action, TickAction::Pause);
        // It ran 18 s and has been paused 2 s (3 if the clock turned since `now`).
        backdate(now - 20, Some(now - 2));
        let o = l
            .apply_tick(&[s(1_000_000, 2_000_000)], P, 60)
            .expect("tick");
        assert_eq!(o[0].action, TickAction::None, "paused 2 s of an 18 s grace");
        // It ran 10 s and has been paused 10 s: under the 60 s grace, but as long as it ran.
        backdate(now - 20, Some(now - 10));
        let o = l
            .apply_tick(&[s(1_000_000, 3_000_000)], P, 60)
            .expect("tick");
        assert_eq!(o[0].action, TickAction::Stop, "paused 10 s of a 10 s grace");

        // A top-up that resumes a lease funds it anew: its next grace counts from then.
        let (_d2, l2) = ledger();
        l2.create_lease(&new_lease("a"), &credit(1, 1000))
            .expect("create");
        l2.mark_running("a", None, "{}").expect("run");
        l2.apply_tick(&[s(1_000_000, 1_000_000)], P, 60)
            .expect("tick");
        l2.with_conn(|c| {
            c.execute("UPDATE leases SET funded_at = 0 WHERE id = 'a'", [])?;
            Ok(())
        })
        .expect("backdate");
        l2.topup("a", &credit(2, 1000)).expect("top-up");
        let row = l2.get("a").expect("get").expect("row");
        assert_eq!(row.state, LeaseState::Running);
        assert!(
            row.funded_at.is_some_and(|f| f >= now),
            "{:?}",
            row.funded_at
        );
    }

    #[test]
    fn a_lease_is_billed_from_its_baseline_and_a_new_vmm_resets_it() {
        let (_d, l) = ledger();
        // A warm restore's VMM: 0.5 s of vCPU and 60 s of uptime before its lease.
        let warm = crate::ledger::UsageBaseline {
            vcpu_total_us: 500_000,
            uptime_us: 60_000_000,
        };
        let lease = crate::ledger::NewLease {
            baseline: warm,
            ..new_lease("a")
        };
        l.create_lease(&lease, &credit(1, 100_000)).expect("create");
        // Found by a restart before its create marked it running: kept as committed.
        l.mark_running("a", None, "{}").expect("run");
        let o = l
            .apply_tick(&[s(1_500_000, 61_000_000)], P, 0)
            .expect("tick");
        // 1 s vCPU + 1 GiB × 1 s, not the 60 s before the lease.
        assert_eq!(o[0].debited_msat, 2000);

        let (_d2, l2) = ledger();
        l2.create_lease(&lease, &credit(1, 100_000))
            .expect("create");
        // The warm VMM failed its hand-over; the lease got a VMM of its own, counting from 0.
        l2.mark_running_from("a", None, "{}", crate::ledger::UsageBaseline::default())
            .expect("run");
        let o = l2
            .apply_tick(&[s(1_000_000, 1_000_000)], P, 0)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 2000);
    }

    #[test]
    fn a_lease_whose_warm_hand_over_failed_is_adopted_from_a_zero_baseline() {
        let (_d, l) = ledger();
        let warm = crate::ledger::UsageBaseline {
            vcpu_total_us: 500_000,
            uptime_us: 60_000_000,
        };
        let lease = crate::ledger::NewLease {
            baseline: warm,
            ..new_lease("a")
        };
        l.create_lease(&lease, &credit(1, 100_000)).expect("create");
        // The hand-over failed: the lease boots on a VMM of its own, whose counters start
        // at zero. A restart that adopts it then keeps the row's baseline.
        assert!(l.reset_baseline("a").expect("reset"));
        l.mark_running("a", None, "{}").expect("run");
        let o = l
            .apply_tick(&[s(1_000_000, 1_000_000)], P, 0)
            .expect("tick");
        // 1 s vCPU + 1 GiB × 1 s of the new VMM: billed, not hidden under the warm VMM's.
        assert_eq!(o[0].debited_msat, 2000);
        // Only a booting lease's baseline is the boot's to reset.
        assert!(!l.reset_baseline("a").expect("reset"));
        assert_eq!(
            l.get("a").expect("get").expect("row").last_uptime_us,
            1_000_000
        );
    }

    #[test]
    fn a_running_lease_found_paused_pays_no_memory_time_for_the_pause() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 10_000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        let t0 = metered_at(&l, "a");
        l.apply_tick_at(&[s(1_000_000, 1_000_000)], P, 0, t0 + 1000)
            .expect("tick");
        let paused = Sample {
            vm_paused: true,
            ..s(1_000_000, 5_000_000)
        };
        let o = l.apply_tick_at(&[paused], P, 0, t0 + 5000).expect("tick");
        assert_eq!(o[0].debited_msat, 0, "4 s paused: no memory time billed");
        let row = l.get("a").expect("get").expect("row");
        assert_eq!(row.last_uptime_us, 5_000_000, "the uptime mark moved");
        assert_eq!(row.state, LeaseState::Running);
        // Running again: billed from the moved mark on.
        let o = l
            .apply_tick_at(&[s(1_500_000, 5_500_000)], P, 0, t0 + 5500)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 1000);
    }

    /// An hour, in ms: how far the wall clock is stepped in the tests below.
    const HOUR_MS: i64 = 3_600_000;

    /// The wall clock stepped back an hour (an NTP correction, an operator's `date -s`)
    /// while a lease runs: each tick still bills what its counters grew since the last, 5 s
    /// of vCPU and of 1 GiB, all of it. (Measured on the wall clock, the time since the
    /// marks were set was none for the next hour, and each tick billed 1 s, the slack, of
    /// the 5 s it ran: the billing fell behind by the step.)
    #[test]
    fn a_wall_clock_stepped_back_bills_the_whole_usage_at_the_normal_pace() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 1_000_000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        let t0 = metered_at(&l, "a");
        let o = l
            .apply_tick_at(&[s(5_000_000, 5_000_000)], P, 60, t0 + 5000)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 10_000, "{o:?}");
        for n in 2..=6u64 {
            let at = (t0 + n * 5000).wall_stepped(-HOUR_MS);
            let o = l
                .apply_tick_at(&[s(n * 5_000_000, n * 5_000_000)], P, 60, at)
                .expect("tick");
            assert_eq!(o[0].debited_msat, 10_000, "tick {n}: {o:?}");
        }
        let row = l.get("a").expect("get").expect("row");
        assert_eq!(
            (row.used_vcpu_us, row.used_mem_mib_us),
            (30_000_000, 1024 * 30_000_000),
            "all 30 s billed"
        );
        assert_eq!(
            row.metered_at_ms,
            Some((t0 + 30_000).wall_stepped(-HOUR_MS).wall_ms),
            "the marks' time as the wall clock says"
        );
    }

    /// A lease that runs dry just after the wall clock stepped back is paused by the tick
    /// that sees it, not an hour later when the wall clock is back where it was.
    #[test]
    fn a_lease_that_runs_dry_after_a_wall_clock_step_back_is_paused_in_time() {
        let (_d, l) = ledger();
        // 5 s of its 1 vCPU and 1 GiB.
        l.create_lease(&new_lease("a"), &credit(1, 10_000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        let t0 = metered_at(&l, "a");
        let o = l
            .apply_tick_at(&[s(1_000_000, 1_000_000)], P, 60, t0 + 1000)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 2000, "{o:?}");
        let at = (t0 + 6000).wall_stepped(-HOUR_MS);
        let o = l
            .apply_tick_at(&[s(6_000_000, 6_000_000)], P, 60, at)
            .expect("tick");
        assert_eq!(
            (o[0].debited_msat, o[0].balance_msat, &o[0].action),
            (8000, 0, &TickAction::Pause),
            "{o:?}"
        );
    }

    /// A lease paused unfunded is stopped when its grace is over as time passes, whatever
    /// the wall clock did meanwhile: stepped back, it held the guest's memory unbilled for
    /// the step's length on top of the grace.
    #[test]
    fn a_wall_clock_stepped_back_does_not_lengthen_the_grace() {
        let (_d, l) = ledger();
        let t0 = running_funded_long_ago(&l, 2000);
        let o = l
            .apply_tick_at(&[s(1_000_000, 1_000_000)], P, 60, t0 + 1000)
            .expect("tick");
        assert_eq!(o[0].action, TickAction::Pause);
        let paused = Sample {
            vm_paused: true,
            ..s(1_000_000, 30_000_000)
        };
        let at = (t0 + 30_000).wall_stepped(-HOUR_MS);
        let o = l.apply_tick_at(&[paused], P, 60, at).expect("tick");
        assert_eq!(o[0].action, TickAction::None, "29 s of a 60 s grace");
        let paused = Sample {
            vm_paused: true,
            ..s(1_000_000, 61_000_000)
        };
        let at = (t0 + 61_000).wall_stepped(-HOUR_MS);
        let o = l.apply_tick_at(&[paused], P, 60, at).expect("tick");
        assert_eq!(o[0].action, TickAction::Stop, "60 s of a 60 s grace");
    }

    /// The grace is never longer than the run since the lease was funded, measured as
    /// time passed: a wall clock stepped back during the run does not make the run
    /// negative and the grace none (the tenant's guest stopped at once).
    #[test]
    fn a_wall_clock_stepped_back_does_not_cut_the_grace_short() {
        let (_d, l) = ledger();
        // 1 s of its 1 GiB.
        l.create_lease(&new_lease("a"), &credit(1, 1000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        let t0 = metered_at(&l, "a");
        // It idled 30 s, the wall clock stepped back an hour meanwhile.
        let at = (t0 + 30_000).wall_stepped(-HOUR_MS);
        let o = l
            .apply_tick_at(&[s(0, 30_000_000)], P, 60, at)
            .expect("tick");
        assert_eq!(o[0].action, TickAction::Pause, "{o:?}");
        let paused = Sample {
            vm_paused: true,
            ..s(0, 31_000_000)
        };
        let at = (t0 + 31_000).wall_stepped(-HOUR_MS);
        let o = l.apply_tick_at(&[paused], P, 60, at).expect("tick");
        assert_eq!(o[0].action, TickAction::None, "1 s of a 30 s grace");
    }

    /// coinopd restarted while a lease was paused unfunded (only the wall clock knows when
    /// its pause began), then the wall clock stepped back: its grace ends as time passes,
    /// measured from the first tick after the restart on.
    #[test]
    fn a_pause_from_before_a_restart_ends_in_time_after_a_wall_clock_step_back() {
        let (d, l) = ledger();
        let t0 = running_funded_long_ago(&l, 2000);
        let o = l
            .apply_tick_at(&[s(1_000_000, 1_000_000)], P, 60, t0 + 1000)
            .expect("tick");
        assert_eq!(o[0].action, TickAction::Pause);
        drop(l);
        let l = Ledger::open(&d.path().join("ledger.db")).expect("reopen");
        let paused = |uptime_us| Sample {
            vm_paused: true,
            ..s(1_000_000, uptime_us)
        };
        let o = l
            .apply_tick_at(&[paused(2_000_000)], P, 60, t0 + 2000)
            .expect("tick");
        assert_eq!(o[0].action, TickAction::None, "paused 1 s");
        let at = (t0 + 61_000).wall_stepped(-HOUR_MS);
        let o = l
            .apply_tick_at(&[paused(61_000_000)], P, 60, at)
            .expect("tick");
        assert_eq!(o[0].action, TickAction::Stop, "paused 60 s of a 60 s grace");
    }

    /// The wall clock stepped forward an hour: a spike the VMM reports is billed as far as
    /// the time that passed allows (1 s and the slack), not the hour; and an honest reading
    /// after it is billed what its counters grew, no more.
    #[test]
    fn a_wall_clock_stepped_forward_bills_no_more_than_the_counters_grew_in_the_time_passed() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 10_000_000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        let t0 = metered_at(&l, "a");
        let at = (t0 + 1000).wall_stepped(HOUR_MS);
        let o = l
            .apply_tick_at(&[s(u64::MAX, u64::MAX)], P, 60, at)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 4000, "1 s and the slack: {o:?}");
        let at = (t0 + 5000).wall_stepped(HOUR_MS);
        let o = l
            .apply_tick_at(&[s(5_000_000, 5_000_000)], P, 60, at)
            .expect("tick");
        assert_eq!(
            o[0].debited_msat, 6000,
            "the counters' growth past the marks: {o:?}"
        );
        let row = l.get("a").expect("get").expect("row");
        assert_eq!(
            (row.used_vcpu_us, row.used_mem_mib_us),
            (5_000_000, 1024 * 5_000_000)
        );
    }
}
