//! On-chain payments followed until they settle: each keeps its block's hash, and until
//! that block is `--settle-conf` deep the host checks it is still on the best chain. If it
//! is not, the lease is frozen (`reorg_at`): a live guest is paused (`paused_reorg`, no
//! metering) and no refund is paid; when the payment confirms again the lease resumes,
//! and if it does not within the window the lease is stopped with `payment_reorged` and
//! its balance stays frozen for good. The decisions are the scheduler's
//! ([`crate::payment_reorgs`]); this file keeps the facts.

use coinop_proto::{LeaseState, StopReason};
use rusqlite::{params, Connection, OptionalExtension};

use super::lease_rows::{require_in, stored_counter};
use super::stamps::Column;
use super::tick::excused_uptime;
use super::{Ledger, LedgerError};
use crate::clock::{unix_s, Now};

/// Whether the lease's balance is frozen by a reorg.
/// The blocks of `lease_id`'s on-chain payments not yet settled, read on `conn`.
pub(super) fn unsettled_blocks_in(
    conn: &Connection,
    lease_id: &str,
) -> Result<Vec<String>, LedgerError> {
    let mut stmt = conn.prepare_cached(
        "SELECT block_hash FROM payments
         WHERE lease_id = ?1 AND block_hash IS NOT NULL AND settled = 0",
    )?;
    let rows = stmt.query_map([lease_id], |r| r.get(0))?;
    Ok(rows.collect::<Result<Vec<String>, _>>()?)
}

pub(super) fn frozen_in(conn: &Connection, id: &str) -> Result<bool, LedgerError> {
    let at: Option<Option<i64>> = conn
        .prepare_cached("SELECT reorg_at FROM leases WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    Ok(at.flatten().is_some())
}

/// An on-chain payment not yet settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsettled {
    pub payment_id: i64,
    pub lease_id: String,
    /// The paying outpoints, `txid:vout` joined by commas.
    pub reference: String,
    pub block_hash: String,
    pub lease_state: LeaseState,
    /// When the lease was frozen, if it is.
    pub reorg_at: Option<i64>,
}

impl Ledger {
    /// Every on-chain payment still followed (not settled, not given up). Read-only: asked
    /// every tick, it writes nothing.
    pub fn unsettled_payments(&self) -> Result<Vec<Unsettled>, LedgerError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT p.id, p.lease_id, p.reference, p.block_hash, l.state, l.reorg_at
                 FROM payments p JOIN leases l ON l.id = p.lease_id
                 WHERE p.block_hash IS NOT NULL AND p.settled = 0 ORDER BY p.id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(Unsettled {
                    payment_id: r.get(0)?,
                    lease_id: r.get(1)?,
                    reference: r.get(2)?,
                    block_hash: r.get(3)?,
                    lease_state: r.get(4)?,
                    reorg_at: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Follows again the settled on-chain payments of leases not yet refunded whose block
    /// `too_shallow` says is not deep enough now (`settled` back to 0), and returns how
    /// many. A coinopd of an earlier version may have settled them at a `--settle-conf`
    /// below the depth a refund needs (refused at start-up since): a settled payment is
    /// not looked at again, and a refund would have paid credit for it unchecked.
    pub fn unsettle_shallow(
        &self,
        too_shallow: impl Fn(&str) -> bool,
    ) -> Result<usize, LedgerError> {
        self.with_tx(|tx| {
            let settled: Vec<(i64, String)> = tx
                .prepare_cached(
                    "SELECT p.id, p.block_hash FROM payments p JOIN leases l ON l.id = p.lease_id
                     WHERE p.block_hash IS NOT NULL AND p.settled = 1
                       AND l.refunded_msat IS NULL",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut n = 0;
            for (id, hash) in settled.iter().filter(|(_, h)| too_shallow(h)) {
                tracing::warn!(payment = id, block = %hash,
                    "a payment settled shallower than --settle-conf is followed again");
                tx.prepare_cached("UPDATE payments SET settled = 0 WHERE id = ?1")?
                    .execute([id])?;
                n += 1;
            }
            Ok(n)
        })
    }

    /// The block hashes of the lease's on-chain payments still followed.
    pub fn unsettled_blocks_of(&self, lease_id: &str) -> Result<Vec<String>, LedgerError> {
        self.with_conn(|conn| unsettled_blocks_in(conn, lease_id))
    }

    /// The payment is deep enough (`settled` 1), or was given up after the window (2).
    pub fn settle_payment(&self, payment_id: i64, given_up: bool) -> Result<(), LedgerError> {
        self.with_tx(|tx| {
            tx.prepare_cached("UPDATE payments SET settled = ?2 WHERE id = ?1")?
                .execute(params![payment_id, if given_up { 2 } else { 1 }])?;
            Ok(())
        })
    }

    /// The payment confirmed again, in another block.
    pub fn move_payment(&self, payment_id: i64, block_hash: &str) -> Result<(), LedgerError> {
        self.with_tx(|tx| {
            tx.prepare_cached("UPDATE payments SET block_hash = ?2 WHERE id = ?1")?
                .execute(params![payment_id, block_hash])?;
            Ok(())
        })
    }

    /// Freezes the lease: `paused_reorg` if its guest runs or is paused unfunded (returns
    /// whether the guest must be paused), frozen as it is otherwise. A lease frozen while
    /// it was booting stays `booting`, and its boot then marks it `running` (and metering
    /// may pause it unfunded): freezing it again makes it `paused_reorg`, keeping the time
    /// it was first frozen (the window counts from then).
    pub fn freeze_for_reorg(&self, id: &str) -> Result<bool, LedgerError> {
        self.with_tx(|tx| {
            let lease = require_in(tx, id)?;
            let live = matches!(
                lease.state,
                LeaseState::Running | LeaseState::PausedUnfunded
            );
            if lease.reorg_at.is_some() && !live {
                return Ok(false);
            }
            let pause = matches!(
                lease.state,
                LeaseState::Running | LeaseState::PausedUnfunded
            );
            let state = if pause {
                LeaseState::PausedReorg
            } else {
                lease.state
            };
            let now = unix_s();
            tx.prepare_cached(
                "UPDATE leases SET reorg_at = COALESCE(reorg_at, ?2), state = ?3, updated_at = ?2
                 WHERE id = ?1",
            )?
            .execute(params![id, now, state])?;
            Ok(lease.state == LeaseState::Running)
        })
    }

    /// Thaws the lease (its payments are on the best chain again). A `paused_reorg` lease
    /// runs again from the guest's current counters (`reading`: vCPU µs, uptime µs), so
    /// the pause's memory time is not billed, or waits unfunded if it has no balance; a
    /// lease stopped `payment_reorged` is not thawed. Returns whether the guest must be
    /// resumed.
    pub fn thaw_after_reorg(
        &self,
        id: &str,
        reading: Option<(u64, u64)>,
    ) -> Result<bool, LedgerError> {
        self.with_tx(|tx| {
            let lease = require_in(tx, id)?;
            // A lease whose payment was given up (not back on the chain within the window)
            // keeps its balance frozen for good, whatever its other payments do later and
            // whatever ended it (stopped for the reorg, or by its tenant before): thawed, its
            // whole balance, the reorged payment's credit with it, would be refundable.
            let given_up: bool = tx
                .prepare_cached(
                    "SELECT EXISTS(SELECT 1 FROM payments WHERE lease_id = ?1 AND settled = 2)",
                )?
                .query_row([id], |r| r.get(0))?;
            if lease.reorg_at.is_none()
                || given_up
                || lease.stop_reason == Some(StopReason::PaymentReorged)
            {
                return Ok(false);
            }
            let at = Now::read();
            let now = at.wall_s();
            if lease.state != LeaseState::PausedReorg {
                tx.prepare_cached(
                    "UPDATE leases SET reorg_at = NULL, updated_at = ?2 WHERE id = ?1",
                )?
                .execute(params![id, now])?;
                return Ok(false);
            }
            // The pause's memory time is excused as far as the time since the marks were
            // set (a VMM cannot excuse more by saying so; measured as `tick.rs` does); its
            // vCPU time is not (a paused guest's does not grow; one that ran on pays for it
            // when it runs). Neither mark moves back (`tick.rs`).
            let (uptime, metered_at_ms) = match reading {
                Some((_, uptime)) => {
                    let since = self.stamps.since_metered(&lease, at);
                    self.stamps.wrote(id, Column::MeteredAtMs, at);
                    (excused_uptime(&lease, uptime, since), at.wall_ms)
                }
                None => (lease.last_uptime_us, lease.metered_since_ms()),
            };
            let vcpu = lease.last_vcpu_total_us;
            let funded = lease.balance_msat > 0;
            let state = if funded {
                LeaseState::Running
            } else {
                // Paused unfunded from now (`paused_at`, below): its grace counts from here.
                self.stamps.wrote(id, Column::PausedAt, at);
                LeaseState::PausedUnfunded
            };
            tx.prepare_cached(
                "UPDATE leases SET reorg_at = NULL, state = ?2, last_vcpu_total_us = ?3,
                    last_uptime_us = ?4, paused_at = CASE WHEN ?5 THEN paused_at ELSE ?6 END,
                    updated_at = ?6, metered_at_ms = ?7 WHERE id = ?1",
            )?
            .execute(params![
                id,
                state,
                stored_counter(vcpu),
                stored_counter(uptime),
                funded,
                now,
                metered_at_ms
            ])?;
            Ok(funded)
        })
    }

    /// Stops a frozen lease for good: `payment_reorged`, the balance kept frozen (never
    /// refunded). Returns whether it was live (its guest must be stopped).
    pub fn stop_for_reorg(&self, id: &str) -> Result<bool, LedgerError> {
        self.with_tx(|tx| {
            let lease = require_in(tx, id)?;
            let live = lease.state.is_live();
            if live {
                tx.prepare_cached(
                    "UPDATE leases SET state = ?2, stop_reason = ?3, updated_at = ?4 WHERE id = ?1",
                )?
                .execute(params![
                    id,
                    LeaseState::Stopped,
                    StopReason::PaymentReorged,
                    unix_s()
                ])?;
            }
            Ok(live)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::test_support::{credit, ledger, metered_ago, new_lease, s, P};

    /// A payment settled shallower than the depth the predicate asks for is followed
    /// again; one deep enough, or whose lease was refunded, stays settled.
    #[test]
    fn payments_settled_too_shallow_are_followed_again() {
        let (_d, l) = ledger();
        for (key, id, block) in [(1, "a", "shallow"), (2, "b", "deep"), (3, "c", "shallow")] {
            let mut c = credit(key, 5_000);
            c.block_hash = Some(block.into());
            l.create_lease(&new_lease(id), &c).expect("create");
        }
        for p in l.unsettled_payments().expect("list") {
            l.settle_payment(p.payment_id, false).expect("settle");
        }
        // Lease c was refunded: nothing is paid out for its payment any more.
        l.with_tx(|tx| {
            tx.execute("UPDATE leases SET refunded_msat = 0 WHERE id = 'c'", [])?;
            Ok(())
        })
        .expect("refunded");
        assert_eq!(l.unsettle_shallow(|h| h == "shallow").expect("check"), 1);
        let followed: Vec<String> = l
            .unsettled_payments()
            .expect("list")
            .into_iter()
            .map(|p| p.lease_id)
            .collect();
        assert_eq!(followed, ["a"]);
    }

    #[test]
    fn a_frozen_lease_pauses_refunds_nothing_and_thaws_or_stops() {
        let (_d, l) = ledger();
        let mut c = credit(1, 5_000);
        c.block_hash = Some("00aa".into());
        l.create_lease(&new_lease("a"), &c).expect("create");
        l.mark_running("a", None, "{}").expect("run");
        let u = l.unsettled_payments().expect("list");
        assert_eq!(u.len(), 1);
        assert_eq!(
            (u[0].lease_id.as_str(), u[0].block_hash.as_str()),
            ("a", "00aa")
        );

        assert!(
            l.freeze_for_reorg("a").expect("freeze"),
            "a running guest pauses"
        );
        let row = l.get("a").expect("get").expect("row");
        assert_eq!(row.state, LeaseState::PausedReorg);
        let refused = l.refund("a", Ok::<u64, ()>);
        assert!(
            matches!(refused, Err(LedgerError::State { .. })),
            "{refused:?}"
        );
        assert_eq!(l.get("a").unwrap().unwrap().balance_msat, 5_000);

        // No top-up into a frozen balance, and the payment it brought stays unspent.
        let topup = credit(2, 1_000);
        let refused = l.topup("a", &topup);
        assert!(
            matches!(refused, Err(LedgerError::State { .. })),
            "{refused:?}"
        );
        l.create_lease(&new_lease("b"), &topup)
            .expect("the refused top-up's payment pays for another lease");

        // Frozen 10 s: the guest's uptime at the thaw is excused, its vCPU time is not (a
        // paused guest's does not grow; what it did use is billed once it runs).
        metered_ago(&l, "a", 10);
        assert!(l.thaw_after_reorg("a", Some((7, 9))).expect("thaw"));
        let row = l.get("a").expect("get").expect("row");
        assert_eq!(row.state, LeaseState::Running);
        assert_eq!((row.last_vcpu_total_us, row.last_uptime_us), (0, 9));

        l.freeze_for_reorg("a").expect("freeze again");
        assert!(l.stop_for_reorg("a").expect("stop"));
        let row = l.get("a").expect("get").expect("row");
        assert_eq!(row.state, LeaseState::Stopped);
        assert_eq!(row.stop_reason, Some(StopReason::PaymentReorged));
        assert!(
            l.refund("a", Ok::<u64, ()>).is_err(),
            "a payment_reorged lease is never refunded"
        );
        assert!(
            matches!(
                l.topup("a", &credit(3, 1_000)),
                Err(LedgerError::State { .. })
            ),
            "nor topped up"
        );
        // Another payment of the lease back on the chain later thaws nothing.
        assert!(!l.thaw_after_reorg("a", None).expect("thaw"));
        // Nor for a lease its tenant stopped while frozen, once its reorged payment was
        // given up (the window's stop leaves a stopped lease's reason as it was).
        let mut c = credit(4, 2_000);
        c.block_hash = Some("00bb".into());
        l.create_lease(&new_lease("t"), &c).expect("create");
        l.mark_running("t", None, "{}").expect("run");
        l.freeze_for_reorg("t").expect("freeze");
        l.mark_stopped("t", StopReason::Tenant, None).expect("stop");
        assert!(!l.stop_for_reorg("t").expect("window"), "stopped already");
        let p = l
            .unsettled_payments()
            .expect("list")
            .into_iter()
            .find(|p| p.lease_id == "t")
            .expect("its payment");
        l.settle_payment(p.payment_id, true).expect("give up");
        assert!(!l.thaw_after_reorg("t", None).expect("thaw"));
        assert!(l.get("t").unwrap().unwrap().reorg_at.is_some());
        assert!(l.refund("t", Ok::<u64, ()>).is_err(), "never refunded");
        assert!(l.get("a").unwrap().unwrap().reorg_at.is_some());
        assert!(
            l.refund("a", Ok::<u64, ()>).is_err(),
            "still never refunded"
        );
        l.settle_payment(u[0].payment_id, true).expect("give up");
        assert!(l.unsettled_payments().expect("list").is_empty());
    }

    /// A thaw excuses the frozen guest's memory time as far as the time since its
    /// marks were set, and moves neither mark back: what its VMM says at the thaw can
    /// neither excuse more nor undo what was billed.
    #[test]
    fn a_thaw_excuses_the_pause_and_no_more() {
        let (_d, l) = ledger();
        let mut c = credit(1, 100_000);
        c.block_hash = Some("00aa".into());
        l.create_lease(&new_lease("a"), &c).expect("create");
        l.mark_running("a", None, "{}").expect("run");
        l.apply_tick(&[s(1_000_000, 1_000_000)], P, 60)
            .expect("tick");
        assert!(l.freeze_for_reorg("a").expect("freeze"));
        // Frozen 10 s; its VMM then says it ran no vCPU time at all and was up for ever.
        metered_ago(&l, "a", 10);
        assert!(l.thaw_after_reorg("a", Some((0, u64::MAX))).expect("thaw"));
        let row = l.get("a").expect("get").expect("row");
        assert_eq!(row.last_vcpu_total_us, 1_000_000, "billed: not back");
        assert!(
            (11_000_000..12_000_000).contains(&row.last_uptime_us),
            "10 s excused (and the test's own few ms): {}",
            row.last_uptime_us
        );
    }

    /// A reorg while the guest boots: the lease is frozen `booting`, its boot marks it
    /// `running`, and the next freeze pauses it with the first freeze's time kept.
    #[test]
    fn a_lease_frozen_while_booting_is_paused_once_it_runs() {
        let (_d, l) = ledger();
        let mut c = credit(1, 5_000);
        c.block_hash = Some("00aa".into());
        l.create_lease(&new_lease("a"), &c).expect("create");
        assert!(!l.freeze_for_reorg("a").expect("freeze"), "no guest yet");
        let at = l.get("a").expect("get").expect("row").reorg_at;
        assert!(at.is_some());
        assert!(
            !l.freeze_for_reorg("a").expect("freeze"),
            "still booting: nothing to pause"
        );
        l.with_conn(|c| {
            c.execute(
                "UPDATE leases SET reorg_at = reorg_at - 5 WHERE id = 'a'",
                [],
            )?;
            Ok(())
        })
        .expect("backdate");
        l.mark_running("a", None, "{}").expect("booted");
        assert_eq!(
            l.get("a").expect("get").expect("row").state,
            LeaseState::Running
        );
        assert!(l.freeze_for_reorg("a").expect("freeze"), "pause the guest");
        let row = l.get("a").expect("get").expect("row");
        assert_eq!(row.state, LeaseState::PausedReorg);
        assert_eq!(
            row.reorg_at,
            at.map(|t| t - 5),
            "the window counts from the first"
        );
        assert!(!l.freeze_for_reorg("a").expect("freeze"), "paused already");

        // Booted while frozen and run dry before the check came: paused_reorg too (no guest
        // to pause: it is paused already).
        let (_d2, l2) = ledger();
        let mut c = credit(2, 1_000);
        c.block_hash = Some("00bb".into());
        l2.create_lease(&new_lease("a"), &c).expect("create");
        assert!(!l2.freeze_for_reorg("a").expect("freeze"));
        l2.mark_running("a", None, "{}").expect("booted");
        let o = l2
            .apply_tick(&[s(1_000_000, 1_000_000)], P, 60)
            .expect("tick");
        assert_eq!(o[0].action, crate::ledger::TickAction::Pause);
        assert!(!l2.freeze_for_reorg("a").expect("freeze"), "paused already");
        assert_eq!(
            l2.get("a").expect("get").expect("row").state,
            LeaseState::PausedReorg
        );
    }
}
