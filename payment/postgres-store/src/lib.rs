//! coinop's fleet-wide money state in PostgreSQL, for several coinopd hosts that act as one
//! payee and one mint: the spent set ([`PgSpentSet`]: on-chain outpoints and credit proof
//! Ys, each spent at most once across the fleet), the mint's keyset list ([`PgKeysets`]),
//! the blind signatures it handed out ([`PgSignedOutputs`]), and the quotes with their
//! address index ([`PgQuoteBook`]: no address is handed to two live quotes anywhere in the
//! fleet, and a quote made by one host can be paid and used on another). Leases, metering
//! and guests stay in each host's local SQLite ledger.
//!
//! # Main types
//! - [`PgStore`]: the pool of connections (deadpool over tokio-postgres), per-connection
//!   `statement_timeout`, a bound on every call, schema migrations applied at
//!   [`PgStore::connect`], and round-trip/error counters ([`StoreMetrics`]).
//! - [`PgSpentSet`]: claims (all or none; `Pending` → `Spent` or released; receipts),
//!   states, and this host's pending claims for reconciliation; implements
//!   [`payment::spent_set::SpentKeyStore`] (module `spent_key_store`).
//! - [`PgKeysets`]: the keyset list (metadata only: see "Keysets" below), the first host's
//!   registration, rotation in one transaction; [`check_seed`] for a host's seed.
//! - [`PgSignedOutputs`]: each `B_` with its signature, reserved per host and operation,
//!   delivered or released; lookups for NUT-09 restore and for a request retried elsewhere.
//! - [`PgNut30Quotes`]: NUT-30 quotes' key locks and balances (payments credited and mints
//!   issued, each in one transaction with its spent keys or signed outputs).
//! - [`PgQuoteBook`]: fleet quotes (allocation under the xpub's row lock, reuse of expired
//!   unpaid indexes and the open-quote bound counted fleet-wide, paid marks, and the outputs
//!   hosts saw paying quotes); see the `quotes` module doc.
//! - [`PgStoreError`]: typed errors; [`PgStoreError::Unavailable`] (refused, lost, timed
//!   out, pool exhausted) is never confused with an answer such as "already claimed", so
//!   that callers fail closed.
//!
//! # Why async, and the trait it shares with the SQLite set
//! A PostgreSQL call is network I/O that may wait up to the timeouts; made synchronously on
//! coinopd's tokio worker threads it would stall every other request on that thread. So
//! this crate's operations are `async fn`s. The spent set's common ones (claim all or none
//! with a state, claim with a receipt, `spent_with`, commit/release pending, states) are
//! [`payment::spent_set::SpentKeyStore`], the async trait the host's SQLite sets implement
//! too (each call on tokio's blocking pool, since it waits for an fsync): [`PgSpentSet`]
//! implements it with the trait's `operation` as its operation id, and maps
//! [`PgStoreError`] onto the trait's error keeping an outage apart from a conflict. One
//! conformance suite (`payment::spent_set::conformance`) runs against both, the
//! PostgreSQL one on a real throwaway cluster (`tests/spent_key_store.rs`). The synchronous
//! [`payment::spent_set::SpentSet`] stays for the SQLite sets' own users (coinopd's ledger
//! claims inside its own SQLite transactions). What a fleet needs and one host does not
//! (the claiming host, reconciliation, idempotent repetition of a `Pending` claim by the
//! same host and operation) stays on [`PgSpentSet`] itself.
//!
//! # The two-phase claim, and reconciliation after a crash
//! A payment is spent in PostgreSQL and the thing it buys (a lease) is recorded in the
//! host's SQLite ledger: two databases, no shared transaction. The order makes a crash
//! between them recoverable:
//! 1. claim the payment's keys in PostgreSQL as `Pending`, naming this host and the
//!    operation (the lease id); from here no other host can spend them;
//! 2. commit the lease locally, with the lease id, in one SQLite transaction;
//! 3. mark the keys `Spent` ([`PgSpentSet::commit_pending`]); if step 2 failed,
//!    release them instead ([`PgSpentSet::release_pending`]).
//!
//! A crash after 1 and before 3 leaves the keys `Pending` under this host. At start-up,
//! before it takes requests, the host runs [`PgSpentSet::reconcile`]: for each of its
//! pending operations it looks in its ledger for the lease id; found → step 3 (the tenant
//! has the lease), not found → release (the payment is spendable again: the retried request
//! claims it afresh). The payment is thus either a lease or spendable, never lost and never
//! doubled. Only the host that made a pending claim settles it (its id is in every row and
//! in every settle), since only it knows its ledger, and a settle ends the claim of the
//! operation it names, no other: a release retried after a lost reply cannot free the same
//! keys fenced since by another operation (a commit that finds its claim gone records the
//! keys spent all the same, the ledger having spent them, unless someone else holds them,
//! which it reports: [`PgStoreError::HeldElsewhere`]); a host that never comes back leaves
//! its pending claims for an operator. Repeating a `Pending` claim with the same host and
//! operation succeeds, so a call whose outcome is unknown (the store went away after the
//! statement was sent) can be retried with the same lease id.
//!
//! The reconciliation must see everything a crashed process will ever commit: PostgreSQL
//! does not cancel a statement whose client went away, so a claim it had sent could still
//! be running (behind a lock) and commit after the reconciliation, pending for good. So
//! the host id's lock, taken before the reconciliation, first ends every other session
//! named after this host id ([`application_name`]) and waits until they are gone (module
//! `stale_sessions`); the role connecting must be allowed to end the earlier runs'
//! sessions (the same role, or `pg_signal_backend`).
//!
//! Credit swaps use the same shape with the swap's request as the operation: claim the
//! input Ys `Pending`, sign, commit (or release on failure); a receipt claim
//! ([`PgSpentSet::claim_with_receipt`]) marks keys `Spent` in one step.
//!
//! A host that spent keys on its own before it joined the fleet (its SQLite spent set only)
//! publishes them at each start with the store, those not published yet
//! ([`PgSpentSet::publish_spent`]): `Spent` under this host and an operation naming the
//! publication, so that no other host of the fleet accepts them. Keys the store holds
//! spent already are left as they are and reported; a key another host holds pending (a
//! request in flight there) is taken over as spent, since that request's failure would
//! otherwise release it.
//!
//! # Keysets: metadata here, keys on the hosts
//! The keys of every keyset are derived (BIP32, hardened, `m/0'/0'/{index}'/{log2 amount}'`)
//! from a mint seed each host holds as a secret file, as cdk and nutshell derive theirs: the
//! database holds the list (id, unit, derivation index, state, `input_fee_ppk`, who made
//! it), never a private key, so a read of the database (a backup, a replica, a leaked
//! dump) signs nothing. A host checks its seed against the list ([`check_seed`]: the id its
//! seed derives at each row's index must be the row's id) before it signs or redeems.
//! A rotation demotes the active keyset and inserts the next one in one transaction, and
//! fails if another host rotated first; at most one keyset per unit is active (a partial
//! unique index), so racing rotations cannot both win.
//!
//! # Signed outputs, and the order of a mint or a swap
//! Each `B_` the fleet signs is one row (primary key: "signed at most once" across hosts,
//! NUT-00 11003). A host's swap or mint runs:
//! 1. fence the inputs in the spent set (`Pending`, this host, the request's receipt);
//! 2. sign (no state) and reserve the outputs' `B_`s with their signatures (`Pending`, the
//!    same host and operation; [`PgSignedOutputs::reserve`], all or none);
//! 3. the local SQLite transaction: the inputs claimed and the signatures recorded together;
//! 4. settle both by what the local spent set holds: inputs `Spent` and signatures
//!    delivered, or both released.
//!
//! A crash before 3 leaves both pending; start-up reconciliation finds the local spent set
//! without them and releases both (the request may be sent again, to any host). A crash
//! after 3 leaves both pending with the local records present; reconciliation marks them
//! spent and delivered. Pending signatures are never handed out by restore (their payment
//! may yet be released) but block their `B_`s, so nothing is signed twice in any case. A
//! delivered row names its operation (the receipt of inputs and outputs), so the same
//! request sent to another host after a lost reply is answered with these signatures.
//! A lease refund's change follows steps 2 to 4 (the lease's balance is local, so there is
//! no input to fence; the local transaction is the refund).
//!
//! Both spent sets implement one trait ([`payment::spent_set::SpentKeyStore`]), as cdk's
//! stores do, but on a fleet coinopd does not choose one of them: they are layers. The
//! SQLite spent set still records every claim and signature in the same transaction as
//! what they bought (the lease, the swap), which is what reconciliation reads; PostgreSQL
//! is in front of it, fencing and reserving across hosts. The keyset list
//! is the same story: a single host's file ([`payment::credit::keyset_store`]) holds its
//! seed, the fleet's table never does.
//!
//! # Schema
//! Versioned SQL files under `migrations/`, applied in one transaction under an advisory
//! lock ([`migrations`]); a database at a newer version than this build is refused
//! ([`PgStoreError::SchemaTooNew`]). A claim is one statement (the `coinop_claim` function),
//! so one round trip; concurrent claimers of a key serialise on its primary key.
//!
//! # Quotes across hosts
//! A quote is committed in PostgreSQL before its address is answered; paying it needs no
//! further write to the quote but the paid mark (idempotent), and the payment's outpoints
//! are then fenced by the spent set like any other: so a quote from host 1 paid and used on
//! host 2 follows the two-phase claim above, and a request repeated after a crash finds the
//! same quote and the same (idempotent) marks. Payments named by quote id only are found in
//! `coinop_quote_outputs`, written by whichever host fetched the paying block (each host
//! with Bitcoin peers scans blocks for every fleet quote's script); the host honouring the
//! payment still checks that block against its own header chain.
//!
//! # NUT-30 mint quotes
//! [`PgNut30Quotes`] keeps each NUT-30 quote's key lock and balance beside its
//! `coinop_quotes` row. A payment's outpoints are claimed `Spent` in the fleet spent set in
//! the same transaction that credits the quote, and a mint's signatures are inserted
//! delivered into the signed outputs in the same transaction that raises the quote's
//! `amount_issued`, both under the quote's row lock: nothing is pending across a crash, and
//! the same request again (any host) is answered from what committed. See the `nut30`
//! module doc.
//!
//! # What is not here yet
//! Retiring a keyset fleet-wide has no route yet.

mod error;
pub mod host_lock;
mod keysets;
pub mod migrations;
mod nut30;
mod quotes;
mod signed_outputs;
mod spent_key_store;
mod spent_set;
mod stale_sessions;
mod store;
#[cfg(feature = "test-cluster")]
pub mod test_cluster;

pub use error::PgStoreError;
pub use keysets::{check_seed, FleetKeyset, NewKeyset, PgKeysets};
pub use nut30::{Nut30Issue, Nut30Quote, PgNut30Quotes};
pub use quotes::{
    FleetIndexPolicy, FleetQuote, PgQuoteBook, PgQuoteError, QuotePurpose, SeenPayment,
};
pub use signed_outputs::{
    OutputState, PendingOutputs, PgSignedOutputs, PublishedOutputs, Settled, StoredOutput,
};
pub use spent_set::{HeldKey, PendingOperation, PgSpentSet, Published, Reconciled};
pub use stale_sessions::{StaleSession, STALE_SESSIONS_WAIT};
pub use store::{application_name, PgStore, PgStoreOptions, StoreMetrics, DEFAULT_POOL_SIZE};
