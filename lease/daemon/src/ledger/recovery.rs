//! Recovering a lease whose create reply was lost (a crash or a dropped connection between
//! the ledger commit and the reply), so that a paid lease is never stranded without a token.
//!
//! The proof of ownership is a *recovery key*: 256 random bits the tenant picks, keeps
//! before sending, and sends with the create; the ledger stores only its SHA-256 next to the
//! lease, together with a digest of the exact set of spent-set keys (outpoints or credit
//! `Y`s) that the create's payment claimed. A retry proves ownership by carrying both the
//! same payment (same digest) and the key (same hash). An on-chain payment named by quote id
//! alone counts whichever of the quote's outputs are deep enough when it is checked, so its
//! retry may bring more outputs than the create claimed: it is the same payment when it
//! pays the quote the lease was created from and includes an output the lease holds
//! ([`created_from_same_quote`]). Neither payment nor key alone is enough: an on-chain
//! payment is public once mined, and spent Cashu proofs may still be known to whoever held
//! them before the tenant (a token passed on without a swap), so making either a bearer
//! credential for the lease would let a stranger take it over. A create without a key is
//! not recoverable (it keeps today's 409).
//!
//! A valid retry gets the same lease in its current state with a freshly issued token that
//! replaces the stored hash: the old token, which may never have been delivered, stops
//! working. Retries serialise on the ledger's write transaction, so concurrent ones give one
//! lease and the token of the *last* committed retry is the only valid one; each reply
//! carries `token_seq` (1 at creation, +1 per recovery) so a client holding several replies
//! keeps the highest. The newest request wins because the client retries precisely when it
//! has given up on the earlier replies; refusing it instead would strand the client whose
//! earlier reply is the one that got lost. A lease that never booted (the create committed
//! but the guest was never started) is booted by the retry. A failed boot's refund that was
//! lost with the reply is signed again for a retry that brings the same outputs
//! ([`outputs_digest`]).
//!
//! Every attempt that fails the check takes the ordinary create path and meets the same
//! 409 `already_spent` as any reuse of a spent payment: whether a payment paid for a lease,
//! or whether that lease had a key, is not revealed.

use payment::credit::nut_types::BlindedMessage;
use payment::spent_set::{SpendKey, SpentSetError, SqliteSpentSet};
use rusqlite::{params, OptionalExtension, Transaction};
use subtle::ConstantTimeEq;

use super::lease_rows::require_in;
use super::payments::insert_lease;
use super::stamps::{Column, Stamps};
use super::{Credit, LeaseRow, Ledger, LedgerError, NewLease};
use crate::clock::Now;
use coinop_proto::{LeaseState, StopReason};

/// A digest of the exact set of spent-set keys a payment claims, independent of their
/// order in the request: two payments have the same digest only if they spend the same
/// outpoints or credit secrets ([`payment::credit::receipt::keys_digest`]; stored, so its
/// bytes never change).
pub fn payment_digest(keys: &[SpendKey]) -> [u8; 32] {
    payment::credit::receipt::keys_digest(keys)
}

/// A digest of the blank outputs a refund was signed onto, in order (keyset id and `B_`;
/// [`payment::credit::receipt::outputs_digest`], stored). Blind signing is deterministic
/// (`C_ = k·B_`), so signing the same outputs again gives the same notes: a retry of a lost
/// refund reply may have its signatures again when it brings the very outputs they were
/// made for, and no new money comes of it.
pub fn outputs_digest(outputs: &[BlindedMessage]) -> [u8; 32] {
    payment::credit::receipt::outputs_digest(outputs)
}

/// A lease handed back to a retry that proved it owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The lease as it is now (after the token rotation and, for `reboot`, back in
    /// `booting`).
    pub lease: LeaseRow,
    /// Which token this is: 1 for the one issued at creation, +1 per recovery.
    pub token_seq: u64,
    /// The lease never got a guest (its create died before the boot, or the boot failed
    /// and nothing was refunded nor metered): the caller boots it now.
    pub reboot: bool,
}

/// What a create did in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// A new lease was inserted and its payment claimed.
    Created,
    /// The payment had already paid for this requester's lease: it is handed back.
    Recovered(Box<Recovered>),
}

/// Whether a lease never had a boot attempt finish: the restart found it `booting` with no
/// guest and stopped it (`boot_failed` without boot figures), with its whole balance still
/// on it and not one µs metered. A boot that ran and failed in-process records its figures
/// before its refund, so a retry racing that refund never boots a lease being refunded.
/// (Its metering baseline says nothing here: a lease made from a warm restore is committed
/// with that VMM's counters, not zero, and its create may die before the hand-over.)
fn never_booted(l: &LeaseRow) -> bool {
    l.state == LeaseState::Stopped
        && l.stop_reason == Some(StopReason::BootFailed)
        && l.boot_json.is_none()
        && l.refunded_msat.is_none()
        && l.debited_msat == 0
        && l.used_vcpu_us == 0
}

/// Whether a stored recovery hash is the presented one (in constant time).
fn same_hash(stored: &[u8], presented: &[u8; 32]) -> bool {
    stored.len() == 32 && bool::from(stored.ct_eq(presented.as_slice()))
}

/// For an on-chain payment: the lease created from the same quote whose stored recovery
/// hash equals `presented`, if it holds one of `credit`'s keys.
///
/// A payment named by quote id alone counts whichever of the quote's outputs are deep
/// enough when it is checked: a tenant who paid the quote twice may have had its create
/// count the first output only, and its retry, once the second is deep too, brings both.
/// Its digest then differs, yet it is the same request: same quote, same recovery key, and
/// part of it is what the lease was paid with. Nothing is claimed by recovering, so the
/// outputs the lease does not hold stay unclaimed; a top-up of the lease by the same quote
/// id credits them to it (`leases::payment_intake::verify_onchain`).
fn created_from_same_quote(
    tx: &Transaction<'_>,
    credit: &Credit,
    presented: &[u8; 32],
) -> Result<Option<String>, LedgerError> {
    let Some(quote_id) = &credit.quote_id else {
        return Ok(None);
    };
    // The leases whose create (the payment carrying the lease's own digest) paid this quote:
    // usually one; more only if separate transactions to it were each proved for a create.
    let created: Vec<(String, Option<Vec<u8>>)> = tx
        .prepare_cached(
            "SELECT l.id, l.recovery_hash FROM payments p JOIN leases l ON l.id = p.lease_id
             WHERE p.quote_id = ?1 AND p.payment_digest = l.payment_digest",
        )?
        .query_map([quote_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    if created.is_empty() {
        return Ok(None);
    }
    let holders = SqliteSpentSet::notes_in(tx, &credit.keys)?;
    Ok(created.into_iter().find_map(|(id, stored)| {
        let holds = holders.iter().any(|h| h.as_deref() == Some(id.as_str()));
        (holds && stored.is_some_and(|s| same_hash(&s, presented))).then_some(id)
    }))
}

/// Inside the caller's write transaction: if `credit` paid for a lease whose stored
/// recovery hash equals `presented`, rotates its token to `new_token_hash` and returns it.
/// `None` for anything else (no key presented, unknown payment, no key stored, wrong key).
fn recover_in(
    tx: &Transaction<'_>,
    stamps: &Stamps,
    credit: &Credit,
    presented: Option<&[u8; 32]>,
    new_token_hash: &[u8; 32],
) -> Result<Option<Recovered>, LedgerError> {
    let Some(presented) = presented else {
        return Ok(None);
    };
    let digest = payment_digest(&credit.keys);
    let found: Option<(String, Option<Vec<u8>>)> = tx
        .prepare_cached("SELECT id, recovery_hash FROM leases WHERE payment_digest = ?1")?
        .query_row([digest.as_slice()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let id = match found {
        Some((id, Some(stored))) if same_hash(&stored, presented) => id,
        _ => match created_from_same_quote(tx, credit, presented)? {
            Some(id) => id,
            None => return Ok(None),
        },
    };
    let reboot = never_booted(&require_in(tx, &id)?);
    let at = Now::read();
    if reboot {
        stamps.wrote(&id, Column::MeteredAtMs, at);
    }
    // A reboot's VMM, spawned after this commits, counts from zero: its marks are set here.
    // Anything else keeps them, and the time they were set (a tenant may send this retry
    // as often as it likes: it must not move what metering bills from).
    tx.prepare_cached(
        "UPDATE leases SET token_hash = ?2, token_seq = token_seq + 1, updated_at = ?3,
            state = CASE WHEN ?4 THEN ?5 ELSE state END,
            stop_reason = CASE WHEN ?4 THEN NULL ELSE stop_reason END,
            last_vcpu_total_us = CASE WHEN ?4 THEN 0 ELSE last_vcpu_total_us END,
            last_uptime_us = CASE WHEN ?4 THEN 0 ELSE last_uptime_us END,
            metered_at_ms = CASE WHEN ?4 THEN ?6 ELSE metered_at_ms END
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        new_token_hash.as_slice(),
        at.wall_s(),
        reboot,
        LeaseState::Booting,
        at.wall_ms
    ])?;
    let token_seq: u64 = tx
        .prepare_cached("SELECT token_seq FROM leases WHERE id = ?1")?
        .query_row([&id], |r| r.get(0))?;
    Ok(Some(Recovered {
        lease: require_in(tx, &id)?,
        token_seq,
        reboot,
    }))
}

impl Ledger {
    /// A create in one write transaction: hands back the requester's own lease if this
    /// payment already paid for it and `lease.recovery_hash` proves ownership (with
    /// `lease.token_hash` as its new token); otherwise inserts the lease and claims the
    /// payment exactly as [`Ledger::create_lease`], failing with `AlreadySpent` on reuse.
    pub fn create_or_recover(
        &self,
        lease: &NewLease,
        credit: &Credit,
    ) -> Result<CreateOutcome, LedgerError> {
        self.with_tx(|tx| {
            let presented = lease.recovery_hash.as_ref();
            if let Some(r) = recover_in(tx, &self.stamps, credit, presented, &lease.token_hash)? {
                return Ok(CreateOutcome::Recovered(Box::new(r)));
            }
            insert_lease(tx, &self.stamps, lease, credit)?;
            Ok(CreateOutcome::Created)
        })
    }

    /// Only the recovery half of [`Ledger::create_or_recover`] (when the host has no room
    /// for a new lease, a retry for an existing one must still get through).
    pub fn recover(
        &self,
        credit: &Credit,
        recovery_hash: &[u8; 32],
        new_token_hash: &[u8; 32],
    ) -> Result<Option<Recovered>, LedgerError> {
        self.with_tx(|tx| {
            recover_in(
                tx,
                &self.stamps,
                credit,
                Some(recovery_hash),
                new_token_hash,
            )
        })
    }

    /// Whether a payment's keys were claimed before, read without claiming anything: the
    /// first key that is, as "KIND KEY is already STATE" (spent, or pending in a swap under
    /// way), or `None`. A create asks before it reserves room, so that a spent payment is
    /// answered 409 and holds no room; the claim in [`Ledger::create_or_recover`] stays the
    /// one that counts (a payment may be spent between the two).
    pub fn first_claimed(&self, keys: &[SpendKey]) -> Result<Option<String>, LedgerError> {
        let states = self.with_conn(|c| Ok(SqliteSpentSet::states_in(c, keys)?))?;
        Ok(keys.iter().zip(states).find_map(|(k, state)| {
            // The words a refused claim uses (`LedgerError::AlreadySpent`).
            state.map(|state| {
                SpentSetError::AlreadyClaimed {
                    kind: k.kind,
                    key_hex: hex::encode(&k.bytes),
                    state,
                }
                .to_string()
            })
        }))
    }

    /// The note each key was claimed with (a lease id for a lease's payment), or `None`
    /// for a key never claimed.
    pub fn notes(&self, keys: &[SpendKey]) -> Result<Vec<Option<String>>, LedgerError> {
        self.with_conn(|c| Ok(SqliteSpentSet::notes_in(c, keys)?))
    }

    /// The latest top-up of lease `id` (not its create's payment) from on-chain quote
    /// `quote_id`, if any: whether it resumed the lease, and whether it was late
    /// (`onchain_late`). A retry of that top-up that finds nothing new to count is answered
    /// with it.
    pub fn quote_topup(
        &self,
        id: &str,
        quote_id: &str,
    ) -> Result<Option<(bool, bool)>, LedgerError> {
        self.with_conn(|c| {
            Ok(c.prepare_cached(
                "SELECT p.resumed, p.kind = ?3 FROM payments p JOIN leases l ON l.id = p.lease_id
                 WHERE p.lease_id = ?1 AND p.quote_id = ?2
                   AND l.payment_digest IS NOT p.payment_digest
                 ORDER BY p.id DESC LIMIT 1",
            )?
            .query_row(params![id, quote_id, super::ONCHAIN_LATE], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
        })
    }

    /// The digest of the outputs a lease's refund was signed onto (recorded with the refund,
    /// see [`Ledger::refund_onto`]), if it was.
    pub fn refund_outputs(&self, id: &str) -> Result<Option<Vec<u8>>, LedgerError> {
        self.with_conn(|c| {
            Ok(
                c.prepare_cached("SELECT refund_outputs_digest FROM leases WHERE id = ?1")?
                    .query_row([id], |r| r.get(0))
                    .optional()?
                    .flatten(),
            )
        })
    }

    /// The sequence number of a lease's current token (1 = the one issued at creation).
    #[cfg(test)]
    pub fn token_seq(&self, id: &str) -> Result<u64, LedgerError> {
        self.with_conn(|c| {
            c.prepare_cached("SELECT token_seq FROM leases WHERE id = ?1")?
                .query_row([id], |r| r.get(0))
                .optional()?
                .ok_or_else(|| LedgerError::NoLease(id.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{token_hash, token_matches};
    use coinop_proto::recovery_key::recovery_hash;
    use payment::spent_set::KeyKind;

    const KEY: &str = "7f3a9c0e5b1d2f4a6c8e0b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f2a";
    const OTHER_KEY: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = Ledger::open(&dir.path().join("ledger.db")).expect("open ledger");
        (dir, l)
    }

    fn new_lease(id: &str, token: &str, key: Option<&str>) -> NewLease {
        NewLease {
            id: id.into(),
            token_hash: token_hash(token),
            vcpus: 1,
            mem_mib: 64,
            image: "testguest".into(),
            cmdline: String::new(),
            control_path: "/x.sock".into(),
            console_path: "/x.console".into(),
            recovery_hash: key.map(|k| recovery_hash(k).expect("valid key")),
            baseline: Default::default(),
        }
    }

    fn credit(keys: &[u8]) -> Credit {
        Credit {
            block_hash: None,
            quote_id: None,
            kind: "credit",
            reference: format!("{} proofs", keys.len()),
            amount_msat: 1000 * keys.len() as u64,
            keys: keys
                .iter()
                .map(|&b| SpendKey {
                    kind: KeyKind::CreditY,
                    bytes: vec![b; 33],
                })
                .collect(),
        }
    }

    fn recovered(o: CreateOutcome) -> Recovered {
        match o {
            CreateOutcome::Recovered(r) => *r,
            CreateOutcome::Created => panic!("expected a recovery, got a new lease"),
        }
    }

    fn spent_message(r: Result<CreateOutcome, LedgerError>) -> String {
        match r {
            Err(LedgerError::AlreadySpent(m)) => m,
            other => panic!("expected already spent, got {other:?}"),
        }
    }

    #[test]
    fn the_right_key_with_the_same_payment_gets_the_lease_and_a_new_token() {
        let (_d, l) = ledger();
        let c = credit(&[1, 2]);
        let first = l
            .create_or_recover(&new_lease("a", "t1", Some(KEY)), &c)
            .expect("create");
        assert_eq!(first, CreateOutcome::Created);
        l.mark_running("a", Some(42), "{}").expect("run");
        // The same proofs in another order are the same payment.
        let again = credit(&[2, 1]);
        let r = recovered(
            l.create_or_recover(&new_lease("b", "t2", Some(KEY)), &again)
                .expect("retry"),
        );
        assert_eq!(r.lease.id, "a", "the existing lease, not the new id");
        assert_eq!(r.lease.state, LeaseState::Running);
        assert_eq!(r.token_seq, 2);
        assert!(!r.reboot);
        assert!(l.get("b").expect("get").is_none(), "no second lease");
        let row = l.get("a").expect("get").expect("row");
        assert!(token_matches("t2", &row.token_hash));
        assert!(!token_matches("t1", &row.token_hash), "old token revoked");
        // Upper-case hex is the same key.
        let r = recovered(
            l.create_or_recover(&new_lease("c", "t3", Some(&KEY.to_uppercase())), &c)
                .expect("retry"),
        );
        assert_eq!((r.lease.id.as_str(), r.token_seq), ("a", 3));
        assert_eq!(l.token_seq("a").expect("seq"), 3);
        let books = l.books("a").expect("books");
        assert_eq!(books.paid_msat, 2000, "a recovery pays nothing twice");
        assert!(books.balanced(), "{books:?}");
    }

    #[test]
    fn any_other_reuse_meets_the_same_409_as_before() {
        let (_d, l) = ledger();
        let c = credit(&[1, 2]);
        l.create_or_recover(&new_lease("a", "t1", Some(KEY)), &c)
            .expect("create");
        let no_key = spent_message(l.create_or_recover(&new_lease("b", "x", None), &c));
        let wrong = spent_message(l.create_or_recover(&new_lease("b", "x", Some(OTHER_KEY)), &c));
        assert_eq!(no_key, wrong, "a wrong key answers exactly like no key");
        // Part of the payment, or more than it, is another payment.
        spent_message(l.create_or_recover(&new_lease("b", "x", Some(KEY)), &credit(&[1])));
        spent_message(l.create_or_recover(&new_lease("b", "x", Some(KEY)), &credit(&[1, 2, 3])));
        assert!(l
            .recover(
                &c,
                &recovery_hash(OTHER_KEY).expect("key"),
                &token_hash("x")
            )
            .expect("recover")
            .is_none());
        let row = l.get("a").expect("get").expect("row");
        assert!(token_matches("t1", &row.token_hash), "token untouched");
        assert_eq!(l.token_seq("a").expect("seq"), 1);
        assert!(l.get("b").expect("get").is_none());
    }

    #[test]
    fn a_create_without_a_key_is_not_recoverable() {
        let (_d, l) = ledger();
        let c = credit(&[9]);
        l.create_or_recover(&new_lease("a", "t1", None), &c)
            .expect("create");
        spent_message(l.create_or_recover(&new_lease("b", "x", Some(KEY)), &c));
        spent_message(l.create_or_recover(&new_lease("b", "x", None), &c));
        let row = l.get("a").expect("get").expect("row");
        assert!(token_matches("t1", &row.token_hash));
    }

    #[test]
    fn a_lease_that_never_booted_is_booted_by_its_recovery_once() {
        let (_d, l) = ledger();
        let c = credit(&[5]);
        l.create_or_recover(&new_lease("a", "t1", Some(KEY)), &c)
            .expect("create");
        // What a restart does to a lease whose create died before the boot.
        l.mark_stopped("a", StopReason::BootFailed, None)
            .expect("stop");
        let r = recovered(
            l.create_or_recover(&new_lease("b", "t2", Some(KEY)), &c)
                .expect("retry"),
        );
        assert!(r.reboot);
        assert_eq!(r.lease.state, LeaseState::Booting);
        assert_eq!(r.lease.stop_reason, None);
        // A concurrent retry finds it booting and does not boot it a second time.
        let r2 = recovered(
            l.create_or_recover(&new_lease("c", "t3", Some(KEY)), &c)
                .expect("retry"),
        );
        assert!(!r2.reboot);
        assert_eq!(r2.token_seq, 3);
        // A boot that ran and failed (its figures recorded) is reported, not retried.
        l.mark_stopped("a", StopReason::BootFailed, Some("{}"))
            .expect("stop");
        let failed = recovered(
            l.create_or_recover(&new_lease("e", "t5", Some(KEY)), &c)
                .expect("retry"),
        );
        assert!(!failed.reboot);
        assert_eq!(failed.lease.state, LeaseState::Stopped);
        // Refunded leases stay stopped.
        l.refund("a", Ok::<u64, ()>).expect("ledger").expect("sign");
        let r3 = recovered(
            l.create_or_recover(&new_lease("d", "t4", Some(KEY)), &c)
                .expect("retry"),
        );
        assert!(!r3.reboot);
        assert_eq!(r3.token_seq, 5);
        assert_eq!(r3.lease.state, LeaseState::Stopped);
        assert_eq!(r3.lease.refunded_msat, Some(1000));
        assert!(l.books("a").expect("books").balanced());
    }

    /// A lease made from a warm restore is committed with that VMM's counters as its
    /// baseline; if its create died before the hand-over and the warm VMM with it, its
    /// recovery boots it as any lease that never booted, its metering from zero (the VMM it
    /// boots on now starts its counters there).
    #[test]
    fn a_lease_from_a_warm_restore_that_never_booted_is_booted_by_its_recovery() {
        let (_d, l) = ledger();
        let c = credit(&[6]);
        let warm = NewLease {
            baseline: crate::ledger::UsageBaseline {
                vcpu_total_us: 500_000,
                uptime_us: 60_000_000,
            },
            ..new_lease("a", "t1", Some(KEY))
        };
        l.create_or_recover(&warm, &c).expect("create");
        l.mark_stopped("a", StopReason::BootFailed, None)
            .expect("stop");
        let r = recovered(
            l.create_or_recover(&new_lease("b", "t2", Some(KEY)), &c)
                .expect("retry"),
        );
        assert!(r.reboot, "{:?}", r.lease);
        assert_eq!(r.lease.state, LeaseState::Booting);
        assert_eq!((r.lease.last_vcpu_total_us, r.lease.last_uptime_us), (0, 0));
    }

    /// On-chain credit paying `quote` with outpoints `keys`.
    fn paid_quote(quote: &str, keys: &[u8]) -> Credit {
        Credit {
            kind: "onchain",
            reference: format!("{} outputs", keys.len()),
            amount_msat: 1000 * keys.len() as u64,
            keys: keys
                .iter()
                .map(|&b| SpendKey::outpoint([b; 32], 0))
                .collect(),
            block_hash: None,
            quote_id: Some(quote.into()),
        }
    }

    /// A create paid by quote id alone counted one output of the quote; its retry, once a
    /// second output to the quote is deep, brings both: the same lease for the same key.
    #[test]
    fn a_retry_that_counts_more_outputs_of_the_same_quote_gets_the_lease() {
        let (_d, l) = ledger();
        l.create_or_recover(&new_lease("a", "t1", Some(KEY)), &paid_quote("q", &[1]))
            .expect("create");
        let more = paid_quote("q", &[1, 2]);
        spent_message(l.create_or_recover(&new_lease("b", "x", Some(OTHER_KEY)), &more));
        spent_message(l.create_or_recover(&new_lease("b", "x", None), &more));
        // The same outputs credited to another quote's name are not this quote's payment.
        spent_message(l.create_or_recover(
            &new_lease("b", "x", Some(KEY)),
            &paid_quote("other", &[1, 2]),
        ));
        let r = recovered(
            l.create_or_recover(&new_lease("c", "t2", Some(KEY)), &more)
                .expect("retry"),
        );
        assert_eq!((r.lease.id.as_str(), r.token_seq), ("a", 2));
        assert_eq!(
            l.books("a").expect("books").paid_msat,
            1000,
            "nothing claimed"
        );
        assert_eq!(
            l.notes(&more.keys).expect("notes"),
            [Some("a".to_string()), None],
            "the second output is left for a top-up"
        );
        // An output of the quote the lease does not hold, on its own, is a payment of its own.
        assert_eq!(
            l.create_or_recover(&new_lease("d", "t3", Some(KEY)), &paid_quote("q", &[2]))
                .expect("create"),
            CreateOutcome::Created
        );
    }

    #[test]
    fn the_digest_is_of_the_set_of_keys() {
        let a = credit(&[1, 2, 3]).keys;
        let b = credit(&[3, 1, 2]).keys;
        assert_eq!(payment_digest(&a), payment_digest(&b));
        assert_ne!(payment_digest(&a), payment_digest(&a[..2]));
        let outpoint = SpendKey::outpoint([1; 32], 0);
        let mut y = outpoint.clone();
        y.kind = KeyKind::CreditY;
        assert_ne!(payment_digest(&[outpoint]), payment_digest(&[y]));
    }
}
