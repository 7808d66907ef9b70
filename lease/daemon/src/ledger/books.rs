//! Where a lease's money went: its [`Books`], `paid = debited + balance + refunded +
//! residual`, and the total credited by all payments.

use serde::Serialize;

use super::lease_rows::require_in;
use super::{Ledger, LedgerError};

/// Where a lease's money went: `paid = debited + balance + refunded + residual`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Books {
    pub paid_msat: u64,
    pub debited_msat: u64,
    pub balance_msat: u64,
    pub refunded_msat: u64,
    pub residual_msat: u64,
}

impl Books {
    /// Whether every msat paid is accounted for.
    pub fn balanced(&self) -> bool {
        u128::from(self.paid_msat)
            == u128::from(self.debited_msat)
                + u128::from(self.balance_msat)
                + u128::from(self.refunded_msat)
                + u128::from(self.residual_msat)
    }
}

impl Ledger {
    /// A lease's books: what it was paid and where that money went.
    pub fn books(&self, id: &str) -> Result<Books, LedgerError> {
        self.with_conn(|c| {
            let lease = require_in(c, id)?;
            let paid: u64 = c
                .prepare_cached(
                    "SELECT COALESCE(SUM(amount_msat), 0) FROM payments WHERE lease_id = ?1",
                )?
                .query_row([id], |r| r.get(0))?;
            Ok(Books {
                paid_msat: paid,
                debited_msat: lease.debited_msat,
                balance_msat: lease.balance_msat,
                refunded_msat: lease.refunded_msat.unwrap_or(0),
                residual_msat: lease.residual_msat.unwrap_or(0),
            })
        })
    }

    /// Total msat credited by payments (a check for the tests).
    #[cfg(test)]
    pub fn total_credited_msat(&self) -> Result<u64, LedgerError> {
        self.with_conn(|c| {
            Ok(c.query_row(
                "SELECT COALESCE(SUM(amount_msat), 0) FROM payments",
                [],
                |r| r.get(0),
            )?)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::ledger::test_support::{credit, ledger, metered_at, new_lease, s, P};
    use coinop_proto::LeaseState;

    #[test]
    fn books_balance_over_a_whole_lease_life() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 5_000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        let t0 = metered_at(&l, "a");
        // Odd readings so debits leave sub-sat balances and carried fractions, 10 s apart.
        l.apply_tick_at(&[s(1_234_567, 333_333)], P, 60, t0 + 10_000)
            .expect("tick");
        l.apply_tick_at(&[s(5_000_001, 777_777)], P, 60, t0 + 20_000)
            .expect("tick to zero");
        assert_eq!(
            l.get("a").expect("get").expect("row").state,
            LeaseState::PausedUnfunded
        );
        l.topup("a", &credit(2, 7_777)).expect("topup");
        l.apply_tick_at(&[s(5_000_001, 777_777)], P, 60, t0 + 30_000)
            .expect("baseline tick");
        l.apply_tick_at(&[s(5_100_003, 1_000_000)], P, 60, t0 + 40_000)
            .expect("tick");
        let mid = l.books("a").expect("books");
        assert!(mid.balanced(), "{mid:?}");
        assert_eq!(mid.paid_msat, 12_777);
        assert!(
            mid.balance_msat % 1000 != 0,
            "test wants a sub-sat balance: {mid:?}"
        );
        let r = l.refund("a", Ok::<u64, ()>).expect("ledger").expect("sign");
        let end = l.books("a").expect("books");
        assert!(end.balanced(), "{end:?}");
        assert_eq!(end.balance_msat, 0);
        assert_eq!(end.refunded_msat, r.refund_msat);
        assert_eq!(end.residual_msat, mid.balance_msat % 1000);
        assert_eq!(end.refunded_msat + end.residual_msat, mid.balance_msat);
        assert!(end.debited_msat > 5_000, "both payments were used: {end:?}");
    }
}
