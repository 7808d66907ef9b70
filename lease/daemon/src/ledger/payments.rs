//! Money in and out of a lease. A payment's spent-set keys are claimed and the payment
//! recorded in the same transaction as the balance it credits (create, top-up), so it is
//! never counted twice nor lost between the two; [`Ledger::claim_with`] claims keys for
//! something other than a lease; a refund hands back what is left, once.

use coinop_proto::{LeaseState, StopReason};
use payment::spent_set::{SpendKey, SpendState, SqliteSpentSet};
use rusqlite::{params, Transaction};

use crate::clock::unix_s;

use super::lease_rows::require_in;
use super::{Credit, Ledger, LedgerError, NewLease};

/// A refund that committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund<T> {
    /// Whole sats handed back, in msat (a multiple of 1000).
    pub refund_msat: u64,
    /// What the signer made of it (blind signatures).
    pub signed: T,
    /// The lease was booting, running or paused when it was refunded.
    pub was_live: bool,
    /// The sub-sat remainder (< 1000 msat) kept by the host.
    pub residual_msat: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopupOutcome {
    pub balance_msat: u64,
    /// The lease was paused for lack of funds and is now running again.
    pub resumed: bool,
}

fn record_payment(
    tx: &Transaction<'_>,
    credit: &Credit,
    lease_id: &str,
    late: bool,
) -> Result<(), LedgerError> {
    SqliteSpentSet::claim_in(tx, &credit.keys, SpendState::Spent, lease_id)?;
    tx.prepare_cached(
        "INSERT INTO payments (kind, reference, amount_msat, lease_id, late, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        credit.kind,
        credit.reference,
        credit.amount_msat,
        lease_id,
        late,
        unix_s()
    ])?;
    Ok(())
}

/// Inserts a new lease (state `booting`) and claims its payment; the payment's digest and
/// the recovery key's hash are kept so that a retry of this create can find and prove it.
pub(super) fn insert_lease(
    tx: &Transaction<'_>,
    lease: &NewLease,
    credit: &Credit,
) -> Result<(), LedgerError> {
    let now = unix_s();
    tx.prepare_cached(
        "INSERT INTO leases (id, token_hash, vcpus, mem_mib, image, cmdline, state,
            balance_msat, control_path, console_path, created_at, updated_at,
            payment_digest, recovery_hash, token_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13, 1)",
    )?
    .execute(params![
        lease.id,
        lease.token_hash.as_slice(),
        lease.vcpus,
        lease.mem_mib,
        lease.image,
        lease.cmdline,
        LeaseState::Booting,
        credit.amount_msat,
        lease.control_path,
        lease.console_path,
        now,
        super::recovery::payment_digest(&credit.keys).as_slice(),
        lease.recovery_hash.as_ref().map(|h| h.as_slice()),
    ])?;
    record_payment(tx, credit, &lease.id, false)
}

impl Ledger {
    /// Claims the payment and inserts the lease (state `booting`) with its balance, in one
    /// durable transaction. Nothing is written if any payment key is already spent.
    pub fn create_lease(&self, lease: &NewLease, credit: &Credit) -> Result<(), LedgerError> {
        self.with_tx(|tx| insert_lease(tx, lease, credit))
    }

    /// Adds a payment to a lease's balance. A lease paused for lack of funds goes back to
    /// `running` (the caller resumes the guest); a stopped, not yet refunded lease keeps the
    /// money as refundable balance (`late`). A refunded lease takes no more money.
    pub fn topup(&self, id: &str, credit: &Credit) -> Result<TopupOutcome, LedgerError> {
        self.with_tx(|tx| {
            let lease = require_in(tx, id)?;
            if lease.refunded_msat.is_some() {
                return Err(LedgerError::State {
                    id: id.to_string(),
                    state: lease.state,
                    why: "already refunded; it takes no more payments",
                });
            }
            let late = lease.state == LeaseState::Stopped;
            record_payment(tx, credit, id, late)?;
            let resumed = lease.state == LeaseState::PausedUnfunded;
            let new_state = if resumed {
                LeaseState::Running
            } else {
                lease.state
            };
            let balance = lease.balance_msat.saturating_add(credit.amount_msat);
            tx.prepare_cached(
                "UPDATE leases SET balance_msat = ?2, state = ?3, paused_at = CASE WHEN ?4 THEN NULL ELSE paused_at END,
                    updated_at = ?5 WHERE id = ?1",
            )?
            .execute(params![id, balance, new_state, resumed, unix_s()])?;
            Ok(TopupOutcome {
                balance_msat: balance,
                resumed,
            })
        })
    }

    /// Refunds a lease's remaining balance, at most once: the whole sats go to `sign`, which
    /// turns them into what the tenant receives (blind signatures); the sub-sat remainder is
    /// recorded as the lease's residual (host income). If `sign` fails nothing is written.
    /// A running lease is stopped with reason `tenant` in the same transaction.
    /// Returns (refunded msat, what `sign` made, whether the lease was live, residual msat).
    pub fn refund<T, E>(
        &self,
        id: &str,
        sign: impl FnOnce(u64) -> Result<T, E>,
    ) -> Result<Result<Refund<T>, E>, LedgerError> {
        self.with_tx(|tx| {
            let lease = require_in(tx, id)?;
            if lease.refunded_msat.is_some() {
                return Err(LedgerError::State {
                    id: id.to_string(),
                    state: lease.state,
                    why: "already refunded",
                });
            }
            let was_live = lease.state != LeaseState::Stopped;
            let residual_msat = lease.balance_msat % 1000;
            let refund_msat = lease.balance_msat - residual_msat;
            let out = match sign(refund_msat) {
                Ok(out) => out,
                Err(e) => return Ok(Err(e)),
            };
            tx.prepare_cached(
                "UPDATE leases SET state = ?2, stop_reason = COALESCE(stop_reason, ?3),
                    refunded_msat = ?5, residual_msat = ?6, balance_msat = 0, updated_at = ?4
                 WHERE id = ?1",
            )?
            .execute(params![
                id,
                LeaseState::Stopped,
                StopReason::Tenant,
                unix_s(),
                refund_msat,
                residual_msat
            ])?;
            Ok(Ok(Refund {
                refund_msat,
                signed: out,
                was_live,
                residual_msat,
            }))
        })
    }

    /// Runs `sign` (which must have no side effects) and, if it succeeded, claims `keys` as
    /// spent; the result is only handed out when the claim committed.
    pub fn claim_with<T, E>(
        &self,
        keys: &[SpendKey],
        note: &str,
        sign: impl FnOnce() -> Result<T, E>,
    ) -> Result<Result<T, E>, LedgerError> {
        self.with_tx(|tx| {
            let out = match sign() {
                Ok(out) => out,
                Err(e) => return Ok(Err(e)),
            };
            SqliteSpentSet::claim_in(tx, keys, SpendState::Spent, note)?;
            Ok(Ok(out))
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::ledger::test_support::{credit, ledger, new_lease, s, P};
    use crate::ledger::LedgerError;

    #[test]
    fn a_payment_pays_for_one_lease_only() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 5000))
            .expect("first");
        let err = l
            .create_lease(&new_lease("b"), &credit(1, 5000))
            .unwrap_err();
        assert!(matches!(err, LedgerError::AlreadySpent(_)), "{err}");
        assert!(
            l.get("b").expect("get").is_none(),
            "no lease row without its payment"
        );
        assert_eq!(l.total_credited_msat().expect("sum"), 5000);
    }

    #[test]
    fn topup_resumes_without_billing_the_pause() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 1000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        l.apply_tick(&[s(1_000_000, 0)], P, 100).expect("tick");
        l.apply_tick(&[s(1_000_000, 50_000_000)], P, 100)
            .expect("paused tick");
        let t = l.topup("a", &credit(2, 10_000)).expect("topup");
        assert!(t.resumed);
        assert_eq!(t.balance_msat, 10_000);
        let o = l
            .apply_tick(&[s(1_000_000, 50_000_000)], P, 100)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 0, "paused wall time is not billed");
        assert!(matches!(
            l.topup("a", &credit(2, 10_000)),
            Err(LedgerError::AlreadySpent(_))
        ));
    }

    #[test]
    fn refund_happens_once() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 4321))
            .expect("create");
        let r = l.refund("a", Ok::<u64, ()>).expect("ledger").expect("sign");
        assert_eq!(r.refund_msat, 4000, "whole sats only");
        assert_eq!(r.signed, 4000, "the signer is asked for the whole sats");
        assert_eq!(r.residual_msat, 321);
        assert!(r.was_live);
        let again = l.refund("a", Ok::<u64, ()>);
        assert!(matches!(again, Err(LedgerError::State { .. })));
        let failed = {
            l.create_lease(&new_lease("b"), &credit(2, 10))
                .expect("create");
            l.refund("b", |_| Err::<(), &str>("bad outputs"))
                .expect("ledger")
        };
        assert!(failed.is_err());
        assert_eq!(l.get("b").expect("get").expect("row").refunded_msat, None);
    }
}
