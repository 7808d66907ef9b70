//! Money in and out of a lease. A payment's spent-set keys are claimed and the payment
//! recorded in the same transaction as the balance it credits (create, top-up), so it is
//! never counted twice nor lost between the two; [`Ledger::claim_with`] claims keys for
//! something other than a lease; a refund hands back what is left, once.
//!
//! Each of them records, in its own transaction, what a retry of the same request needs to
//! get the same answer after a lost reply (see `lease/openapi.yaml`): a top-up's payment
//! digest on its payment row, a refund's outputs digest on the lease, a claim's receipt in
//! the spent set. Blind signing is deterministic, so signing the recorded amount onto the
//! recorded outputs again gives the same notes, never new money.

use coinop_proto::{LeaseState, StopReason};
use payment::credit::nut_types::BlindedMessage;
use payment::credit::Mint;
use payment::spent_set::{SignedOutput, SpendKey, SpendState, SpentSetError, SqliteSpentSet};
use rusqlite::{params, OptionalExtension, Transaction};

use crate::clock::{unix_s, Now};

use super::lease_rows::require_in;
use super::recovery::{outputs_digest, payment_digest};
use super::stamps::{Column, Stamps};
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
    /// This refund had committed before (its reply was lost): `signed` is the same refund
    /// signed again onto the same outputs, and nothing was written now.
    pub repeated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopupOutcome {
    pub balance_msat: u64,
    /// The lease was paused for lack of funds and is now running again (for a repeat: the
    /// first time).
    pub resumed: bool,
    /// This payment had already topped up this lease (a retry after a lost reply): nothing
    /// was credited now, and `balance_msat` is the balance as it is.
    pub repeated: bool,
}

fn record_payment(
    tx: &Transaction<'_>,
    credit: &Credit,
    lease_id: &str,
    late: bool,
    resumed: bool,
) -> Result<(), LedgerError> {
    SqliteSpentSet::claim_in(tx, &credit.keys, SpendState::Spent, lease_id)?;
    tx.prepare_cached(
        "INSERT INTO payments (kind, reference, amount_msat, lease_id, late, created_at,
            payment_digest, resumed, block_hash, quote_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        credit.kind,
        credit.reference,
        credit.amount_msat,
        lease_id,
        late,
        unix_s(),
        payment_digest(&credit.keys).as_slice(),
        resumed,
        credit.block_hash,
        credit.quote_id
    ])?;
    Ok(())
}

/// If `credit` is a payment that topped up lease `id` before (not the one it was created
/// with), whether that top-up resumed the lease.
fn earlier_topup(
    tx: &Transaction<'_>,
    id: &str,
    credit: &Credit,
) -> Result<Option<bool>, LedgerError> {
    let digest = payment_digest(&credit.keys);
    Ok(tx
        .prepare_cached(
            "SELECT p.resumed FROM payments p JOIN leases l ON l.id = p.lease_id
             WHERE p.lease_id = ?1 AND p.payment_digest = ?2
               AND l.payment_digest IS NOT p.payment_digest",
        )?
        .query_row(params![id, digest.as_slice()], |r| r.get(0))
        .optional()?)
}

/// Inserts a new lease (state `booting`) and claims its payment; the payment's digest and
/// the recovery key's hash are kept so that a retry of this create can find and prove it.
pub(super) fn insert_lease(
    tx: &Transaction<'_>,
    stamps: &Stamps,
    lease: &NewLease,
    credit: &Credit,
) -> Result<(), LedgerError> {
    let at = Now::read();
    let now = at.wall_s();
    // The usage marks are the VMM's counters from here on (its VMM is spawned after this
    // commits; a warm restore's counters were read before it).
    tx.prepare_cached(
        "INSERT INTO leases (id, token_hash, vcpus, mem_mib, image, cmdline, state,
            balance_msat, control_path, console_path, created_at, updated_at,
            payment_digest, recovery_hash, token_seq, last_vcpu_total_us, last_uptime_us,
            metered_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13, 1, ?14, ?15, ?16)",
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
        lease.baseline.vcpu_total_us,
        lease.baseline.uptime_us,
        at.wall_ms,
    ])?;
    stamps.wrote(&lease.id, Column::MeteredAtMs, at);
    record_payment(tx, credit, &lease.id, credit.is_late(), false)
}

impl Ledger {
    /// Claims the payment and inserts the lease (state `booting`) with its balance, in one
    /// durable transaction. Nothing is written if any payment key is already spent.
    pub fn create_lease(&self, lease: &NewLease, credit: &Credit) -> Result<(), LedgerError> {
        self.with_tx(|tx| insert_lease(tx, &self.stamps, lease, credit))
    }

    /// Adds a payment to a lease's balance. A lease paused for lack of funds goes back to
    /// `running` (the caller resumes the guest); a stopped, not yet refunded lease keeps the
    /// money as refundable balance (`late`, as is a payment mined after its quote expired). A refunded lease takes no more money. A payment
    /// that already topped up this very lease is a retry whose reply was lost: it is
    /// answered as a repeat (nothing credited twice); anywhere else it is `AlreadySpent`.
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
            // Its balance is frozen (an on-chain payment of it left the best chain), and a
            // lease stopped `payment_reorged` keeps it frozen for good: money paid in now
            // could never come back out.
            if super::reorg::frozen_in(tx, id)? {
                return Err(LedgerError::State {
                    id: id.to_string(),
                    state: lease.state,
                    why: "its balance is frozen by a chain reorganisation; it takes no payments",
                });
            }
            let late = lease.state == LeaseState::Stopped || credit.is_late();
            let resumed = lease.state == LeaseState::PausedUnfunded;
            match record_payment(tx, credit, id, late, resumed) {
                Err(LedgerError::AlreadySpent(m)) => {
                    // The claim wrote nothing (it checks every key first).
                    return match earlier_topup(tx, id, credit)? {
                        Some(resumed) => Ok(TopupOutcome {
                            balance_msat: lease.balance_msat,
                            resumed,
                            repeated: true,
                        }),
                        None => Err(LedgerError::AlreadySpent(m)),
                    };
                }
                other => other?,
            }
            let new_state = if resumed {
                LeaseState::Running
            } else {
                lease.state
            };
            let balance = lease.balance_msat.saturating_add(credit.amount_msat);
            let at = Now::read();
            if resumed {
                // Funded anew, no longer paused: its grace and its silent window count
                // from here (`stamps.rs`).
                self.stamps.wrote(id, Column::FundedAt, at);
                self.stamps.stage(id, Column::PausedAt, None, at.mono);
            }
            tx.prepare_cached(
                "UPDATE leases SET balance_msat = ?2, state = ?3, paused_at = CASE WHEN ?4 THEN NULL ELSE paused_at END,
                    funded_at = CASE WHEN ?4 THEN ?5 ELSE funded_at END, updated_at = ?5 WHERE id = ?1",
            )?
            .execute(params![id, balance, new_state, resumed, at.wall_s()])?;
            Ok(TopupOutcome {
                balance_msat: balance,
                resumed,
                repeated: false,
            })
        })
    }

    /// Refunds a lease's remaining balance onto the blank `outputs`, at most once: `sign`
    /// turns the whole sats into what the tenant receives (blind signatures on the first
    /// outputs, one per note); the sub-sat remainder is recorded as the lease's residual
    /// (host income), and the digest of the outputs signed onto is recorded with the refund,
    /// in the same transaction. If `sign` fails nothing is written. A running lease is
    /// stopped with reason `tenant` in the same transaction.
    ///
    /// A lease refunded before onto the very same outputs (a retry whose reply was lost)
    /// gets that refund signed again onto them (`repeated`); with other outputs, or none
    /// recorded, it is `AlreadyRefunded`.
    pub fn refund_onto<T, E>(
        &self,
        id: &str,
        outputs: &[BlindedMessage],
        sign: impl FnOnce(u64, &[BlindedMessage]) -> Result<(T, Vec<SignedOutput>), E>,
    ) -> Result<Result<Refund<T>, E>, LedgerError> {
        self.refund_onto_checked(id, outputs, None, sign)
    }

    /// [`Ledger::refund_onto`], refused (`State`, nothing written) when `checked` is given
    /// and the lease has an unsettled on-chain payment in a block not among it: a top-up
    /// that committed after the caller checked its payments' depth (`--mint-min-conf`)
    /// must not be paid out unchecked. A refund repeated onto the same outputs is not
    /// refused.
    pub fn refund_onto_checked<T, E>(
        &self,
        id: &str,
        outputs: &[BlindedMessage],
        checked: Option<&[String]>,
        sign: impl FnOnce(u64, &[BlindedMessage]) -> Result<(T, Vec<SignedOutput>), E>,
    ) -> Result<Result<Refund<T>, E>, LedgerError> {
        // The outputs a refund of `msat` is signed onto: one per note, the first ones (fewer
        // than that and the signer refuses, or for a repeat: they cannot be the same).
        let used = |msat: u64| {
            let needed = Mint::change_outputs_needed(msat);
            (outputs.len() >= needed).then(|| &outputs[..needed])
        };
        self.with_tx(|tx| {
            let lease = require_in(tx, id)?;
            if let Some(refund_msat) = lease.refunded_msat {
                let stored: Option<Vec<u8>> = tx
                    .prepare_cached("SELECT refund_outputs_digest FROM leases WHERE id = ?1")?
                    .query_row([id], |r| r.get(0))?;
                let same = used(refund_msat)
                    .filter(|onto| stored.as_deref() == Some(outputs_digest(onto).as_slice()));
                let Some(onto) = same else {
                    return Err(LedgerError::AlreadyRefunded(id.to_string()));
                };
                // The same signatures again: recorded the first time.
                return Ok(sign(refund_msat, onto).map(|(signed, _)| Refund {
                    refund_msat,
                    signed,
                    was_live: false,
                    residual_msat: lease.residual_msat.unwrap_or(0),
                    repeated: true,
                }));
            }
            if super::reorg::frozen_in(tx, id)? {
                return Err(LedgerError::State {
                    id: id.to_string(),
                    state: lease.state,
                    why: "an on-chain payment of it left the best chain: its balance is frozen",
                });
            }
            if let Some(checked) = checked {
                let blocks = super::reorg::unsettled_blocks_in(tx, id)?;
                if blocks.iter().any(|b| !checked.contains(b)) {
                    return Err(LedgerError::State {
                        id: id.to_string(),
                        state: lease.state,
                        why: "an on-chain payment arrived while its refund was checked; stop again",
                    });
                }
            }
            let was_live = lease.state != LeaseState::Stopped;
            let residual_msat = lease.balance_msat % 1000;
            let refund_msat = lease.balance_msat - residual_msat;
            let out = match sign(refund_msat, outputs) {
                Ok((out, records)) => {
                    SqliteSpentSet::record_signed_in(tx, &records)?;
                    out
                }
                Err(e) => return Ok(Err(e)),
            };
            tx.prepare_cached(
                "UPDATE leases SET state = ?2, stop_reason = COALESCE(stop_reason, ?3),
                    refunded_msat = ?5, residual_msat = ?6, balance_msat = 0, updated_at = ?4,
                    refund_outputs_digest = ?7
                 WHERE id = ?1",
            )?
            .execute(params![
                id,
                LeaseState::Stopped,
                StopReason::Tenant,
                unix_s(),
                refund_msat,
                residual_msat,
                used(refund_msat).map(|onto| outputs_digest(onto).to_vec())
            ])?;
            Ok(Ok(Refund {
                refund_msat,
                signed: out,
                was_live,
                residual_msat,
                repeated: false,
            }))
        })
    }

    /// [`Ledger::refund_onto`] no outputs: for tests of the books, where `sign` stands for
    /// the mint.
    #[cfg(test)]
    pub fn refund<T, E>(
        &self,
        id: &str,
        sign: impl FnOnce(u64) -> Result<T, E>,
    ) -> Result<Result<Refund<T>, E>, LedgerError> {
        self.refund_onto(id, &[], |msat, _| sign(msat).map(|t| (t, Vec::new())))
    }

    /// Runs `sign` (which must have no side effects) and, if it succeeded, claims `keys` as
    /// spent with `receipt` (what they are spent on: [`payment::credit::receipt`]) and
    /// records the signatures `sign` made; the result is only handed out when the claim
    /// committed. Keys spent before with the same receipt are the same request again (its
    /// reply was lost): `sign`'s result is handed out again, nothing is claimed or recorded
    /// twice. An output signed before for another request fails the whole step
    /// ([`LedgerError::OutputsAlreadySigned`]).
    pub fn claim_with<T, E>(
        &self,
        keys: &[SpendKey],
        note: &str,
        receipt: &[u8; 32],
        sign: impl FnOnce() -> Result<(T, Vec<SignedOutput>), E>,
    ) -> Result<Result<T, E>, LedgerError> {
        self.with_tx(|tx| {
            let (out, records) = match sign() {
                Ok(out) => out,
                Err(e) => return Ok(Err(e)),
            };
            match SqliteSpentSet::claim_with_receipt_in(tx, keys, note, receipt, &records) {
                Ok(()) => Ok(Ok(out)),
                Err(SpentSetError::AlreadyClaimed { .. })
                    if SqliteSpentSet::spent_with_in(tx, keys, receipt)? =>
                {
                    Ok(Ok(out))
                }
                Err(e) => Err(e.into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use payment::credit::nut_types::BlindedMessage;
    use payment::spent_set::SignedOutput;

    use crate::ledger::test_support::{credit, funded_ago, ledger, metered_at, new_lease, s, P};
    use crate::ledger::LedgerError;

    /// Blank outputs as the ledger sees them (it never parses them): `n` of them, `tag`ged.
    fn outs(tag: &str, n: usize) -> Vec<BlindedMessage> {
        (0..n)
            .map(|i| BlindedMessage {
                amount: 1,
                id: "00test".into(),
                b_: format!("{tag}{i}"),
            })
            .collect()
    }

    /// A stand-in signer: which outputs got which amount.
    /// What the stand-in signer signed: the refund, and onto which outputs.
    type Signed = (u64, Vec<String>);

    fn sign(msat: u64, outs: &[BlindedMessage]) -> Result<(Signed, Vec<SignedOutput>), ()> {
        Ok((
            (msat, outs.iter().map(|o| o.b_.clone()).collect()),
            Vec::new(),
        ))
    }

    /// A stop checks its on-chain payments' depth, then refunds: a top-up paid in another
    /// block that commits in between is not paid out with the refund.
    #[test]
    fn a_refund_refuses_a_payment_its_depth_check_did_not_see() {
        let (_d, l) = ledger();
        let mut paid = credit(1, 5_000);
        paid.block_hash = Some("00aa".into());
        l.create_lease(&new_lease("a"), &paid).expect("create");
        let checked = l.unsettled_blocks_of("a").expect("blocks");
        assert_eq!(checked, ["00aa"]);
        let mut late = credit(2, 3_000);
        late.block_hash = Some("00bb".into());
        l.topup("a", &late).expect("top-up");

        let refused = l.refund_onto_checked("a", &outs("x", 4), Some(&checked), sign);
        assert!(
            matches!(refused, Err(LedgerError::State { .. })),
            "{refused:?}"
        );
        assert_eq!(
            l.get("a").unwrap().unwrap().refunded_msat,
            None,
            "nothing written"
        );
        let checked = l.unsettled_blocks_of("a").expect("blocks");
        let refund = l
            .refund_onto_checked("a", &outs("x", 4), Some(&checked), sign)
            .expect("ledger")
            .expect("signed");
        assert_eq!(
            refund.refund_msat, 8_000,
            "both payments, once both were checked"
        );
    }

    #[test]
    fn a_refund_is_repeated_onto_the_same_outputs_only() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 5_300))
            .expect("create");
        let first = l
            .refund_onto("a", &outs("x", 4), sign)
            .expect("ledger")
            .expect("sign");
        assert_eq!((first.refund_msat, first.residual_msat), (5000, 300));
        assert!(!first.repeated && first.was_live);
        // 5 sat = 4 + 1: two notes, on the first two outputs; the digest is of those two.
        let again = l
            .refund_onto("a", &outs("x", 2), sign)
            .expect("ledger")
            .expect("sign");
        assert!(again.repeated);
        assert_eq!(
            (again.refund_msat, again.residual_msat, again.signed.0),
            (5000, 300, 5000),
            "the recorded refund, not the balance now (0)"
        );
        for other in [outs("y", 4), outs("x", 1), Vec::new()] {
            assert!(
                matches!(
                    l.refund_onto("a", &other, sign),
                    Err(LedgerError::AlreadyRefunded(ref id)) if id == "a"
                ),
                "{other:?}"
            );
        }
        let books = l.books("a").expect("books");
        assert_eq!((books.refunded_msat, books.residual_msat), (5000, 300));
        assert!(books.balanced(), "{books:?}");
    }

    /// A signer that signs `B_` `b` (one byte, repeated) and records it.
    fn sign_recorded(
        b: u8,
    ) -> impl FnOnce(u64, &[BlindedMessage]) -> Result<(u64, Vec<SignedOutput>), ()> {
        move |msat, _| {
            let record = SignedOutput {
                b_: vec![b; 33],
                keyset_id: "00test".into(),
                amount: msat / 1000,
                c_: vec![3; 33],
                dleq: None,
            };
            Ok((msat, vec![record]))
        }
    }

    #[test]
    fn a_refund_onto_an_output_signed_before_refunds_nothing() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 4000))
            .expect("create a");
        l.create_lease(&new_lease("b"), &credit(2, 4000))
            .expect("create b");
        l.refund_onto("a", &outs("x", 1), sign_recorded(7))
            .expect("ledger")
            .expect("sign");
        assert!(
            matches!(
                l.refund_onto("b", &outs("y", 1), sign_recorded(7)),
                Err(LedgerError::OutputsAlreadySigned(_))
            ),
            "the same B_ for another lease's refund"
        );
        let b = l.books("b").expect("books");
        assert_eq!(b.refunded_msat, 0, "{b:?}");
        // The retry of a's refund onto its own outputs records nothing again.
        let again = l
            .refund_onto("a", &outs("x", 1), sign_recorded(7))
            .expect("ledger")
            .expect("sign");
        assert!(again.repeated);
        l.refund_onto("b", &outs("y", 1), sign_recorded(8))
            .expect("ledger")
            .expect("another output");
    }

    #[test]
    fn a_mint_claim_records_its_signatures_and_refuses_them_to_another_payment() {
        let (_d, l) = ledger();
        let record = |b: u8| SignedOutput {
            b_: vec![b; 33],
            keyset_id: "00test".into(),
            amount: 4,
            c_: vec![3; 33],
            dleq: Some(([1; 32], [2; 32])),
        };
        let (k1, k2) = (credit(1, 4000).keys, credit(2, 4000).keys);
        l.claim_with(&k1, "mint", &[1; 32], || Ok::<_, ()>(((), vec![record(9)])))
            .expect("ledger")
            .expect("sign");
        // The retry (same keys, same receipt) is answered without recording again.
        l.claim_with(&k1, "mint", &[1; 32], || Ok::<_, ()>(((), vec![record(9)])))
            .expect("retry")
            .expect("sign");
        assert!(matches!(
            l.claim_with(&k2, "mint", &[2; 32], || Ok::<_, ()>(((), vec![record(9)]))),
            Err(LedgerError::OutputsAlreadySigned(_))
        ));
        // k2 was not claimed by the refused request.
        l.claim_with(&k2, "mint", &[2; 32], || {
            Ok::<_, ()>(((), vec![record(10)]))
        })
        .expect("ledger")
        .expect("sign");
    }

    #[test]
    fn a_top_up_is_repeated_for_its_own_lease_only() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 1000))
            .expect("create a");
        l.create_lease(&new_lease("b"), &credit(2, 1000))
            .expect("create b");
        let first = l.topup("a", &credit(3, 4000)).expect("topup");
        assert_eq!((first.balance_msat, first.repeated), (5000, false));
        let again = l
            .topup("a", &credit(3, 4000))
            .expect("the same top-up again");
        assert_eq!((again.balance_msat, again.repeated), (5000, true));
        assert_eq!(
            l.books("a").expect("books").paid_msat,
            5000,
            "credited once"
        );
        // The same payment for another lease, or a lease's create payment as its top-up.
        for (lease, key) in [("b", 3), ("a", 1)] {
            assert!(
                matches!(
                    l.topup(lease, &credit(key, 4000)),
                    Err(LedgerError::AlreadySpent(_))
                ),
                "{lease} {key}"
            );
        }
        assert_eq!(l.books("b").expect("books").paid_msat, 1000);
    }

    #[test]
    fn a_top_up_that_resumed_says_so_again() {
        let (_d, l) = ledger();
        l.create_lease(&new_lease("a"), &credit(1, 1000))
            .expect("create");
        l.mark_running("a", None, "{}").expect("run");
        // It ran 50 s before its pause: a grace of 100 s is cut to that.
        funded_ago(&l, "a", 50);
        l.apply_tick(&[s(1_000_000, 0)], P, 100).expect("tick");
        l.apply_tick(&[s(1_000_000, 50_000_000)], P, 100)
            .expect("paused tick");
        assert!(l.topup("a", &credit(2, 10_000)).expect("topup").resumed);
        let again = l.topup("a", &credit(2, 10_000)).expect("again");
        assert!(again.repeated && again.resumed);
    }

    #[test]
    fn a_claim_is_repeated_for_its_own_receipt_only() {
        let (_d, l) = ledger();
        let keys = credit(7, 0).keys;
        let first = l
            .claim_with(&keys, "mint", &[1; 32], || {
                Ok::<_, ()>(("notes", Vec::new()))
            })
            .expect("claim");
        assert_eq!(first, Ok("notes"));
        let again = l
            .claim_with(&keys, "mint", &[1; 32], || {
                Ok::<_, ()>(("notes", Vec::new()))
            })
            .expect("the same claim again");
        assert_eq!(again, Ok("notes"));
        assert!(matches!(
            l.claim_with(&keys, "mint", &[2; 32], || Ok::<_, ()>((
                "other notes",
                Vec::new()
            ))),
            Err(LedgerError::AlreadySpent(_))
        ));
        // Keys that paid for a lease have no receipt: no claim repeats them.
        l.create_lease(&new_lease("a"), &credit(8, 1000))
            .expect("create");
        assert!(matches!(
            l.claim_with(&credit(8, 0).keys, "mint", &[0; 32], || Ok::<_, ()>((
                (),
                Vec::new()
            ))),
            Err(LedgerError::AlreadySpent(_))
        ));
    }

    #[test]
    fn an_older_ledgers_payments_gain_their_digest_and_keep_their_409() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.db");
        {
            let l = crate::ledger::Ledger::open(&path).expect("open");
            l.create_lease(&new_lease("a"), &credit(1, 1000))
                .expect("create");
            l.topup("a", &credit(2, 1000)).expect("topup");
        }
        {
            // What a ledger from before looked like: payments without the two columns.
            let c = rusqlite::Connection::open(&path).expect("open db");
            c.execute_batch(
                "DROP INDEX payments_payment_digest;
                 ALTER TABLE payments DROP COLUMN payment_digest;
                 ALTER TABLE payments DROP COLUMN resumed;",
            )
            .expect("old payments table");
        }
        let l = crate::ledger::Ledger::open(&path).expect("reopen with migration");
        assert!(
            matches!(
                l.topup("a", &credit(2, 1000)),
                Err(LedgerError::AlreadySpent(_))
            ),
            "an old top-up has no digest to be known by"
        );
        let t = l.topup("a", &credit(3, 1000)).expect("new topup");
        assert!(!t.repeated);
        assert!(l.topup("a", &credit(3, 1000)).expect("again").repeated);
        assert_eq!(l.books("a").expect("books").paid_msat, 3000);
    }

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
        // It ran 50 s before its pause: a grace of 100 s is cut to that.
        funded_ago(&l, "a", 50);
        let t0 = metered_at(&l, "a");
        l.apply_tick_at(&[s(1_000_000, 1_000_000)], P, 100, t0 + 1000)
            .expect("tick");
        // Paused 49 s.
        l.apply_tick_at(&[s(1_000_000, 50_000_000)], P, 100, t0 + 50_000)
            .expect("paused tick");
        let t = l.topup("a", &credit(2, 10_000)).expect("topup");
        assert!(t.resumed);
        assert_eq!(t.balance_msat, 10_000);
        let o = l
            .apply_tick_at(&[s(1_000_000, 50_000_000)], P, 100, t0 + 50_100)
            .expect("tick");
        assert_eq!(o[0].debited_msat, 0, "paused wall time is not billed");
        let again = l.topup("a", &credit(2, 10_000)).expect("the same top-up");
        assert!(again.repeated, "answered again, not credited again");
        assert_eq!(l.books("a").expect("books").paid_msat, 11_000);
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
        assert!(matches!(again, Err(LedgerError::AlreadyRefunded(_))));
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
