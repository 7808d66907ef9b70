//! The fleet store (`--store postgres://...`): several coinopd hosts share one spent set in
//! PostgreSQL (crate `payment-postgres`), so an outpoint or a Cashu proof pays for one
//! thing across the fleet. Each money request first fences its keys there ([`Fleet::fence`]:
//! a `Pending` claim naming this host and the operation), then does its usual local work
//! (the ledger or the mint claims the same keys in SQLite, with what they bought), then
//! settles the fence ([`Fleet::settle`]: `Spent` if the local step committed, released if
//! not). A crash in between leaves the fence `Pending` under this host; at start-up
//! [`Fleet::start`] settles each such operation by asking the local spent set whether its
//! keys were claimed there (the local claim commits in the same SQLite transaction as what
//! they bought, so "claimed locally" means "delivered").
//!
//! Joining a fleet publishes this host's own spends: a host that ran on its own (no
//! `--store`) spent keys its SQLite set alone knows, and the other hosts of the fleet, which
//! share its mint keys, would accept them again. So at every start, after the
//! reconciliation, the keys of the local spent set not yet marked published are recorded
//! `Spent` in the store under `pre-fleet:<host id>` (the ones it has already are left as
//! they are), then marked in the ledger, so that the next start sends only what was spent
//! since. A key another host holds already was spent twice before the join: that is
//! logged as an error, and the start goes on (nothing can undo it now).
//! The blind signatures it made on its own are published the same way, by
//! [`crate::fleet_mint`] once its pending reservations are settled.
//!
//! Fail closed: while the store is unreachable, or until the start-up schema check,
//! reconciliation and publication are done, fences fail with [`FleetError::Unavailable`]
//! (503 `store_unavailable`), so nothing is accepted on local state alone; guests and
//! metering are local and carry on. A settle that fails is retried in the background until
//! it succeeds; the keys stay fenced meanwhile. A settle names its operation: retried after
//! its reply was lost (it did end the fence), it must not end the fence another operation
//! took on the same keys since, and a commit that finds its fence gone records the keys
//! spent all the same, or reports who holds them.
//!
//! A claim whose answer is lost (`Unavailable`: the connection dropped, or no answer in
//! time) may have been granted, or may still be, by a statement the server is running:
//! the fence fails (503), and its claim is released at once and then again, from the
//! background, until the server can no longer be running that claim (its statement
//! timeout and a margin). Left to the next start-up, those keys would stay pending in the
//! store under an operation that does nothing, and the tenant's retry, on this host or any
//! other, would be refused until this host restarts. No local step ran, so a release is
//! the only settle. The same request again on this host (the same operation and keys)
//! takes that fence over: it claims again, and its own settle, by the ledger, is done
//! again until the lost claim can no longer land.
//!
//! One operation is fenced at most once at a time in this process: the store grants the
//! same host and operation its pending claim again (a retry after a lost reply), so two
//! copies of one request in flight together would both hold the fence, and the one whose
//! local step failed could release the keys in the store after the other had spent them
//! here. A copy that finds its operation in flight is refused as the keys being pending.
//! "Its operation" is the operation id with the keys: a create names its lease, whose id
//! can come back to another create (a slot built ahead of time, given back when the first
//! create failed), with another payment; the store never grants a claim of other keys as
//! a repeat, and each settle touches its own keys only, so the two cannot meet.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use payment::spent_set::{KeyKind, SpendKey, SpendState};
use payment_postgres::{HeldKey, PgSpentSet, PgStore, PgStoreError, PgStoreOptions, StoreMetrics};
use thiserror::Error;

use crate::config::Config;
use crate::ledger::Ledger;
use crate::names_in_flight::{Entered, NamesInFlight};

/// How often a failed schema check, reconciliation, publication or settle is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Beyond the store's statement timeout, how long a claim whose answer was lost is still
/// released again: the statement may have reached the server after the loss was seen
/// (queued in a socket, in the server's backlog), and its start is what the timeout
/// counts from.
const LATE_CLAIM_MARGIN: Duration = Duration::from_secs(2);

/// How often a request whose own lost claim a background pass is releasing looks again.
const SETTLING_POLL: Duration = Duration::from_millis(20);

/// How long an unauthenticated read waits for a place in the public read share before it
/// is refused busy: a burst of honest wallets' reads queues through, while a flood is
/// answered within this, holding nothing of the store meanwhile.
pub const PUBLIC_READ_WAIT: Duration = Duration::from_secs(1);

/// Keys per round trip when publishing this host's own spends at start-up.
const PUBLISH_BATCH: usize = 1000;

/// The note on the store's rows of the keys this host spent before it joined.
const PRE_FLEET_NOTE: &str = "spent on this host before it joined the fleet";

#[derive(Debug, Error)]
pub enum FleetError {
    /// The store cannot be reached now, or this host has not finished its start-up check
    /// against it: nothing was accepted, the same request may be retried later.
    #[error("the fleet store is unavailable: {0}")]
    Unavailable(String),
    /// Another operation (on this host or another) holds a key. Worded as the local spent
    /// set words it, so a 409 does not tell which store refused.
    #[error("{kind:?} {key_hex} is already {state:?}")]
    AlreadySpent {
        kind: KeyKind,
        key_hex: String,
        state: SpendState,
    },
    /// The store refused the request for another reason.
    #[error("fleet store: {0}")]
    Store(PgStoreError),
    /// Every place of the public read share ([`Fleet::public_read`]) stayed taken for
    /// [`PUBLIC_READ_WAIT`]: nothing was read, the same request may be retried shortly.
    #[error(
        "the {share} fleet store connections this host gives unauthenticated reads are all \
         in use"
    )]
    ReadsBusy { share: usize },
}

impl From<PgStoreError> for FleetError {
    fn from(e: PgStoreError) -> Self {
        match e {
            PgStoreError::Unavailable(m) => FleetError::Unavailable(m),
            PgStoreError::AlreadyClaimed {
                kind,
                key_hex,
                state,
            } => FleetError::AlreadySpent {
                kind,
                key_hex,
                state,
            },
            other => FleetError::Store(other),
        }
    }
}

/// How long a start waits for its host id's lock held by another session: the session
/// of this host's own earlier coinopd, crashed on a machine that went away without
/// closing its socket, ends by then (the server's keepalives on that session, and a
/// margin); a live twin holds it longer.
const HOST_LOCK_WAIT: Duration =
    Duration::from_secs(payment_postgres::host_lock::SESSION_NOTICED_WITHIN.as_secs() + 5);

/// Why the daemon does not start against this store.
#[derive(Debug, Error)]
pub enum FleetStartError {
    /// The start-up schema check refused this database.
    #[error("fleet store: {0}")]
    Store(#[source] PgStoreError),
    /// Another coinopd holds this host id's lock in the store, and kept it while this one
    /// waited for the session of a crashed earlier run to end.
    #[error(
        "another coinopd holds host id {host_id:?} in the fleet store: its session kept \
         the host id's lock for the {waited_s} s this coinopd waited (long enough for the \
         session of a crashed earlier coinopd of this host to end); two hosts must never \
         share a host id: give this host its own --host-id, or stop the other coinopd"
    )]
    HostIdHeld { host_id: String, waited_s: u64 },
    /// Sessions a crashed earlier coinopd of this host left on the store run as a role the
    /// store's role may not end: their statements could still commit after this start's
    /// reconciliation (see `payment_postgres`'s `stale_sessions`). An operator must grant
    /// the right or end them.
    #[error("fleet store: {0}")]
    StaleSessions(#[source] PgStoreError),
}

/// Keys fenced in the store for one operation, until [`Fleet::settle`].
#[derive(Debug)]
#[must_use = "a fence must be settled, else its keys stay pending until the next start"]
pub struct Fence {
    keys: Vec<SpendKey>,
    operation: String,
    /// The store had these keys under this very operation already, delivered: this request
    /// repeats one whose reply was lost, and the local ledger answers it. Nothing to settle.
    pub repeat: bool,
    /// The claim's answer was lost and no local step ran (see the module's top): the
    /// settle releases whatever the claim took.
    unanswered: bool,
    /// A claim of this operation whose answer was lost may land until then: the settle is
    /// done again until this instant, after which no statement of it can still be running
    /// on the server.
    settle_until: Option<Instant>,
    /// The operation's place in [`Fleet::in_flight`], given up when the fence is settled.
    _in_flight: Entered,
}

/// Fences whose claim's answer was lost kept for release in the background, at most.
const MAX_UNANSWERED: usize = 256;

/// Why a settle was put off (it is tried again).
#[derive(Debug, Error)]
enum SettleError {
    #[error("cannot read the local spent set: {0}")]
    Ledger(crate::ledger::LedgerError),
    #[error("worker failed: {0}")]
    Worker(String),
    #[error(transparent)]
    Store(PgStoreError),
    /// The local ledger spent keys another host holds pending in the store: recorded here
    /// once that claim is released (or reported as spent twice once it is committed).
    #[error("spent here, held pending by another host: {0}")]
    PendingElsewhere(PgStoreError),
}

/// Why the start-up check did not finish (it is tried again).
#[derive(Debug, Error)]
enum NotReady {
    #[error(transparent)]
    Store(#[from] PgStoreError),
    /// A pending claim could not be settled: whether the local ledger committed its
    /// operation is unknown, and either guess could lose or double a payment.
    #[error("{0} pending fleet claims left undecided: the local ledger could not be read")]
    LedgerUnreadable(usize),
    /// The local spent set could not be read, or the keys published not marked: until
    /// they are in the store, another host could accept what this host spent on its own.
    #[error("publishing this host's own spends: the local spent set: {0}")]
    LocalSpends(crate::ledger::LedgerError),
    /// A worker reading or marking the local spent set failed.
    #[error("publishing this host's own spends: worker failed: {0}")]
    Worker(String),
}

/// Where a request's own fence left for the background is.
enum Unanswered {
    /// In the list: taken out of it for the request.
    Taken(Fence),
    /// A background pass has it and has not settled it yet.
    BeingSettled,
    /// In neither: the operation is in flight as a request.
    NotHere,
}

/// The fleet store as this coinopd uses it.
pub struct Fleet {
    set: PgSpentSet,
    /// The schema check and start-up reconciliation are done: fences may be taken.
    ready: AtomicBool,
    /// Settles that failed (store unavailable), to try again. Each is worked out anew
    /// from the ledger when tried: the fence holds its operation in flight meanwhile, so
    /// no copy of the request can change the answer, but a step that committed after a
    /// failed first try (a panic after the commit) is counted as it ended.
    unsettled: Mutex<Vec<Fence>>,
    /// The fences a background pass took out of `unsettled` and has not settled yet:
    /// (operation, in-flight name, keys).
    settling: Mutex<Vec<(String, String, Vec<SpendKey>)>>,
    /// Operations fenced and not yet settled (see the module's top).
    in_flight: NamesInFlight,
    /// The public read share: places for unauthenticated reads, each holding at most one
    /// of the store's pooled connections at a time (see [`Fleet::public_read`]).
    public_reads: Arc<tokio::sync::Semaphore>,
    /// How many places `public_reads` has (`--store-public-reads`).
    public_share: usize,
    /// Reads refused [`FleetError::ReadsBusy`] since start, for `/metrics`: counted where
    /// the refusal is made, so every route that takes a place is counted.
    reads_busy: AtomicU64,
}

/// A place in the public read share, given back when dropped.
#[must_use = "the place is given back when dropped: hold it while the read runs"]
#[derive(Debug)]
pub struct PublicRead {
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("store", &self.description())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// The fleet store named by `--store`, if any. Touches no network: [`Fleet::start`]
    /// connects.
    pub fn open(config: &Config) -> Result<Option<Arc<Fleet>>, PgStoreError> {
        let Some(store) = &config.store else {
            return Ok(None);
        };
        let mut options = PgStoreOptions::new(store.conninfo.clone(), config.host_id.clone());
        options.password = store.password.clone();
        let set = PgSpentSet::new(PgStore::new(&options)?);
        Ok(Some(Arc::new(Fleet {
            set,
            ready: AtomicBool::new(false),
            unsettled: Mutex::default(),
            settling: Mutex::default(),
            in_flight: NamesInFlight::default(),
            public_reads: Arc::new(tokio::sync::Semaphore::new(store.public_reads)),
            public_share: store.public_reads,
            reads_busy: AtomicU64::new(0),
        })))
    }

    /// Checks (and migrates) the schema, settles this host's pending fences left by a
    /// crash and publishes its own spends (see the module's top), before the daemon takes
    /// requests. A newer schema is an error (the daemon does not start); an unreachable
    /// store is not: the daemon serves (guests, metering) with money requests refused
    /// while this keeps trying in the background.
    ///
    /// First of all this process takes its host id's lock in the store (see
    /// `payment_postgres::host_lock`), so that no other coinopd with the same id can run
    /// the reconciliation meanwhile: held by another session, the start waits up to
    /// [`HOST_LOCK_WAIT`] for it (a crashed earlier run's session the server has not
    /// dropped yet), then fails with [`FleetStartError::HostIdHeld`]. Taking it ends the
    /// sessions a crashed earlier run left (statements of theirs still running could
    /// commit claims after the reconciliation); sessions of a role the store's role may
    /// not end fail the start with [`FleetStartError::StaleSessions`].
    pub async fn start(self: &Arc<Self>, ledger: Arc<Ledger>) -> Result<(), FleetStartError> {
        match self.start_waiting_for_host_lock(&ledger).await {
            Ok(()) => {}
            Err(NotReady::Store(e @ PgStoreError::SchemaTooNew { .. })) => {
                return Err(FleetStartError::Store(e))
            }
            Err(NotReady::Store(PgStoreError::HostIdHeld { host_id })) => {
                return Err(FleetStartError::HostIdHeld {
                    host_id,
                    waited_s: HOST_LOCK_WAIT.as_secs(),
                })
            }
            Err(NotReady::Store(e @ PgStoreError::StaleSessionsNotEnded { .. })) => {
                return Err(FleetStartError::StaleSessions(e))
            }
            Err(e) => {
                tracing::warn!(error = %e, "fleet store not ready; money requests get 503 until it is");
                let (fleet, ledger) = (Arc::clone(self), Arc::clone(&ledger));
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(RETRY).await;
                        match fleet.start_once(&ledger).await {
                            Ok(()) => break,
                            // Found late (the store was down at start): refused until an
                            // operator acts, as loudly as it can be without stopping the
                            // guests.
                            Err(
                                e @ NotReady::Store(
                                    PgStoreError::HostIdHeld { .. }
                                    | PgStoreError::StaleSessionsNotEnded { .. },
                                ),
                            ) => {
                                tracing::error!(error = %e, "fleet store: money requests refused")
                            }
                            Err(e) => tracing::warn!(error = %e, "fleet store still not ready"),
                        }
                    }
                });
            }
        }
        let fleet = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETRY).await;
                fleet.keep_host_lock().await;
                fleet.settle_unsettled(&ledger).await;
            }
        });
        Ok(())
    }

    /// [`Fleet::start_once`], again while another session holds the host id's lock, for
    /// at most [`HOST_LOCK_WAIT`].
    async fn start_waiting_for_host_lock(&self, ledger: &Arc<Ledger>) -> Result<(), NotReady> {
        let deadline = Instant::now() + HOST_LOCK_WAIT;
        let mut told = false;
        loop {
            match self.start_once(ledger).await {
                Err(NotReady::Store(PgStoreError::HostIdHeld { host_id }))
                    if Instant::now() < deadline =>
                {
                    if !told {
                        tracing::warn!(
                            host_id,
                            "another session holds this host id's lock in the fleet store; \
                             waiting up to {} s for a crashed earlier coinopd's session to end",
                            HOST_LOCK_WAIT.as_secs()
                        );
                        told = true;
                    }
                    tokio::time::sleep(RETRY).await;
                }
                done => return done,
            }
        }
    }

    /// Takes the host id's lock again once its session is lost, without waiting for the
    /// next store call (which would take it first, or be refused: 503 for money requests),
    /// and says so. Nothing is reconciled again: this process's fences in flight are its
    /// own, not a crash's leftovers.
    async fn keep_host_lock(&self) {
        if !self.ready.load(Ordering::Acquire) || self.set.store().holds_host_lock() {
            return; // Not started (start_once takes it), or held.
        }
        match self.set.store().hold_host_lock().await {
            Ok(()) => tracing::info!(
                host_id = self.host_id(),
                "this host's id lock in the fleet store taken again"
            ),
            Err(e @ PgStoreError::HostIdHeld { .. }) => {
                tracing::error!(error = %e, "fleet store: money requests refused")
            }
            Err(e) => tracing::warn!(error = %e, "taking this host's id lock again"),
        }
    }

    async fn start_once(&self, ledger: &Arc<Ledger>) -> Result<(), NotReady> {
        // Before anything under this host's id: no twin may reconcile while this runs.
        self.set.store().hold_host_lock().await?;
        self.set.store().migrate().await?;
        let done = self
            .set
            .reconcile(|op| match ledger.first_claimed(&op.keys) {
                Ok(found) => Some(found.is_some()),
                // Unknown: the keys stay fenced (released is the wrong guess if it was
                // delivered, spent if it was not); this pass fails below and runs again.
                Err(e) => {
                    tracing::error!(operation = %op.operation_id, error = %e,
                                    "reading the local spent set to reconcile");
                    None
                }
            })
            .await?;
        if !done.undecided.is_empty() {
            return Err(NotReady::LedgerUnreadable(done.undecided.len()));
        }
        if !done.committed.is_empty() || !done.released.is_empty() {
            tracing::info!(committed = ?done.committed, released = ?done.released,
                           "fleet store: pending claims from before a crash settled");
        }
        // After the reconciliation: none of this host's claims is pending in the store any
        // more, so a key it holds there under another operation is one it spent through the
        // fleet, the same spend as the local one.
        self.publish_own_spends(ledger).await?;
        self.ready.store(true, Ordering::Release);
        tracing::info!(store = %self.description(), host_id = self.host_id(), "fleet store ready");
        Ok(())
    }

    /// Publishes the keys of the local spent set not yet marked published (spent before
    /// this host joined the fleet, or while it ran without its store; and those spent
    /// through the fleet since the last start, which the store has already), a page of
    /// [`PUBLISH_BATCH`] keys per round trip, and marks them in the ledger. Run again from
    /// the start after a failure: a page published and not marked is published again,
    /// which changes nothing.
    ///
    /// Local `Pending` keys are published `Spent` too. coinopd makes no such claim (each of
    /// its local claims is `Spent`, in the transaction that records what it bought), so
    /// one can only come from an older build or another user of the file; but while it is
    /// there this host refuses the key, and if it were committed later, a store without it
    /// would have let another host spend it meanwhile. Published, the worst case is a key
    /// a local release would have freed staying spent fleet-wide, which the warning and the
    /// note let an operator find.
    async fn publish_own_spends(&self, ledger: &Arc<Ledger>) -> Result<(), NotReady> {
        let operation = format!("pre-fleet:{}", self.host_id());
        let (mut after, mut sent, mut recorded, mut twice) = (None::<SpendKey>, 0, 0, 0);
        loop {
            let (l, from) = (Arc::clone(ledger), after.take());
            let page = tokio::task::spawn_blocking(move || {
                l.unpublished_spends(from.as_ref(), PUBLISH_BATCH)
            })
            .await
            .map_err(|e| NotReady::Worker(e.to_string()))?
            .map_err(NotReady::LocalSpends)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = Some(last.clone());
            let last_page = page.len() < PUBLISH_BATCH;
            let pending = page
                .iter()
                .filter(|(_, state)| *state == SpendState::Pending)
                .count();
            if pending > 0 {
                tracing::warn!(
                    pending,
                    note = PRE_FLEET_NOTE,
                    "local spent set keys pending (no coinopd claim leaves one so): \
                     published to the fleet store as spent"
                );
            }
            let keys: Vec<SpendKey> = page.into_iter().map(|(key, _)| key).collect();
            let published = self
                .set
                .publish_spent(&keys, PRE_FLEET_NOTE, &operation)
                .await?;
            for held in &published.held_elsewhere {
                if held.host_id == self.host_id() {
                    continue;
                }
                twice += 1;
                tracing::error!(
                    kind = ?held.key.kind,
                    key = %hex::encode(&held.key.bytes),
                    other_host = %held.host_id,
                    other_operation = %held.operation_id,
                    state = ?held.state,
                    "a key this host spent before it joined the fleet was spent twice: \
                     another host of the fleet holds it too"
                );
            }
            for taken in &published.taken_over {
                twice += 1;
                tracing::error!(
                    kind = ?taken.key.kind,
                    key = %hex::encode(&taken.key.bytes),
                    other_host = %taken.host_id,
                    other_operation = %taken.operation_id,
                    "a key this host spent before it joined the fleet was being spent on \
                     another host: recorded spent here (that request finds its claim settled)"
                );
            }
            sent += keys.len();
            recorded += published.inserted + published.taken_over.len();
            // Keys another host holds are marked too: logged once, nothing more to do.
            let l = Arc::clone(ledger);
            tokio::task::spawn_blocking(move || l.mark_published(&keys))
                .await
                .map_err(|e| NotReady::Worker(e.to_string()))?
                .map_err(NotReady::LocalSpends)?;
            if last_page {
                break;
            }
        }
        if sent > 0 {
            tracing::info!(
                sent,
                recorded,
                spent_twice = twice,
                operation,
                "fleet store: this host's own spends published"
            );
        }
        Ok(())
    }

    /// Whether the start-up schema check, reconciliation and publication are done. (The
    /// host id's lock is not asked here: a lost one is taken again by the next store call,
    /// which is refused if it cannot be; see `payment_postgres::host_lock`.)
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The store's pool, shared with the fleet's mint ([`crate::fleet_mint`]) and quote book.
    pub fn store(&self) -> &PgStore {
        self.set.store()
    }

    /// This host's id in the fleet.
    pub fn host_id(&self) -> &str {
        self.set.store().host_id()
    }

    /// The store's kind and location, without secrets.
    pub fn description(&self) -> &str {
        self.set.store().description()
    }

    /// Round trips and errors so far.
    pub fn metrics(&self) -> StoreMetrics {
        self.set.store().metrics()
    }

    /// A place in the public read share, waited for up to [`PUBLIC_READ_WAIT`], else
    /// [`FleetError::ReadsBusy`]. The store's pool is shared by unauthenticated reads
    /// (NUT-07 check state, NUT-09 restore of up to 1000 outputs, quote lookups, and the
    /// first lookup of the quote a payment or a mint names: anyone may send any number of
    /// them, naming any id) and money requests; each read holds one place
    /// while it uses the store, one pooled connection at a time, so reads never hold more
    /// than `--store-public-reads` of the connections and a flood of them leaves the rest to
    /// money requests (and to this host's own settles).
    pub async fn public_read(&self) -> Result<PublicRead, FleetError> {
        let waited = tokio::time::timeout(
            PUBLIC_READ_WAIT,
            Arc::clone(&self.public_reads).acquire_owned(),
        )
        .await;
        match waited {
            Ok(Ok(place)) => Ok(PublicRead { _place: place }),
            // Closed cannot happen (nothing closes it); refused like a full share.
            Ok(Err(_)) | Err(_) => {
                self.reads_busy.fetch_add(1, Ordering::Relaxed);
                Err(FleetError::ReadsBusy {
                    share: self.public_share,
                })
            }
        }
    }

    /// How many reads [`Fleet::public_read`] refused since start (`/metrics`).
    pub fn reads_busy(&self) -> u64 {
        self.reads_busy.load(Ordering::Relaxed)
    }

    /// Each key's state in the store (in order; `None` for one no host claimed): what
    /// every host of the fleet sees, for NUT-07 check state.
    pub async fn states(&self, keys: &[SpendKey]) -> Result<Vec<Option<SpendState>>, FleetError> {
        Ok(self.set.states(keys).await?)
    }

    /// Fences `keys` for `operation` (what they pay for: a lease id, a swap's receipt):
    /// from here no host can spend them, until [`Fleet::settle`]. The same operation
    /// fenced again (a retry) is granted; one already delivered is a [`Fence::repeat`].
    pub async fn fence(
        &self,
        keys: &[SpendKey],
        note: &str,
        operation: &str,
    ) -> Result<Fence, FleetError> {
        if !self.ready.load(Ordering::Acquire) {
            return Err(FleetError::Unavailable(
                "this host has not finished its start-up check against the store".into(),
            ));
        }
        let name = format!(
            "{operation} {}",
            hex::encode(payment::credit::receipt::keys_digest(keys))
        );
        // A settle left for the background names its operation only, so it would end the
        // claim of a later request of the same operation (a lease id a slot gives again)
        // on any key the two share: such a request waits until that settle is done.
        if let Some(key) = self.shared_with_deferred(operation, &name, keys) {
            return Err(FleetError::AlreadySpent {
                kind: key.kind,
                key_hex: hex::encode(&key.bytes),
                state: SpendState::Pending,
            });
        }
        let Some((in_flight, settle_until)) = self.enter_or_take_over(&name).await else {
            // Worded as another host's claim in flight is: the keys are pending.
            let key = keys
                .first()
                .ok_or(FleetError::Store(PgStoreError::NoKeys))?;
            return Err(FleetError::AlreadySpent {
                kind: key.kind,
                key_hex: hex::encode(&key.bytes),
                state: SpendState::Pending,
            });
        };
        let mut fence = Fence {
            keys: keys.to_vec(),
            operation: operation.to_string(),
            repeat: false,
            unanswered: false,
            settle_until,
            _in_flight: in_flight,
        };
        let claimed = match self
            .set
            .claim(keys, SpendState::Pending, note, operation)
            .await
        {
            Ok(()) if crate::fault::lost(crate::fault::point::FLEET_CLAIMED) => Err(
                PgStoreError::Unavailable("the claim's answer was lost (injected)".into()),
            ),
            other => other,
        };
        let claim_lost = matches!(claimed, Err(PgStoreError::Unavailable(_)));
        let refused = match claimed {
            Ok(()) => return Ok(fence),
            Err(e @ PgStoreError::AlreadyClaimed { .. }) => {
                match self.set.held_for_operation(keys, operation).await {
                    // Spent under this operation already: a lost claim taken over cannot
                    // land any more (the keys are taken), so nothing is left to settle.
                    Ok(true) => {
                        fence.repeat = true;
                        return Ok(fence);
                    }
                    Ok(false) => e,
                    Err(read) => read,
                }
            }
            Err(e) => e,
        };
        if claim_lost {
            // It may have been granted all the same, or be still (see the module's top).
            let late = Instant::now() + self.set.store().statement_timeout() + LATE_CLAIM_MARGIN;
            fence.settle_until = Some(fence.settle_until.map_or(late, |t| t.max(late)));
        }
        if fence.settle_until.is_some() {
            // Released now, so that the request can be retried at once, and again until
            // no lost claim of it can land (a lost claim taken over is given back so).
            fence.unanswered = true;
            self.release_unanswered(fence).await;
        }
        Err(refused.into())
    }

    /// A key of `keys` that a fence left for the background under the same `operation`,
    /// but not the same request (`name`), still holds: its settle would end this
    /// request's claim on it.
    fn shared_with_deferred(
        &self,
        operation: &str,
        name: &str,
        keys: &[SpendKey],
    ) -> Option<SpendKey> {
        let shared = |op: &str, other: &str, held: &[SpendKey]| {
            (op == operation && other != name)
                .then(|| keys.iter().find(|k| held.contains(k)).cloned())
                .flatten()
        };
        let in_list = self
            .unsettled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find_map(|f| shared(&f.operation, f._in_flight.name(), &f.keys));
        in_list.or_else(|| {
            self.settling
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .find_map(|(op, other, held)| shared(op, other, held))
        })
    }

    /// The operation `name` (operation and keys) entered in flight, or, for the same
    /// request whose claim's answer was lost, its fence taken over with the time until
    /// which that lost claim may land. `None` while a copy of the request is in flight.
    ///
    /// A background pass releasing the lost claim holds its fence out of the list for
    /// that release's round trip: the tenant's retry, sent then, waits for it (bounded by
    /// the statement timeout) instead of being refused as pending, which a wallet would
    /// show as "the first request is still in flight" with nothing in flight.
    async fn enter_or_take_over(&self, name: &str) -> Option<(Entered, Option<Instant>)> {
        let give_up = Instant::now() + self.set.store().statement_timeout() + LATE_CLAIM_MARGIN;
        loop {
            if let Some(entered) = self.in_flight.enter(name) {
                return Some((entered, None));
            }
            match self.take_unanswered(name) {
                Unanswered::Taken(lost) => return Some((lost._in_flight, lost.settle_until)),
                Unanswered::BeingSettled if Instant::now() < give_up => {}
                Unanswered::BeingSettled | Unanswered::NotHere => return None,
            }
            tokio::time::sleep(SETTLING_POLL).await;
        }
    }

    /// The fence of the same request (`name`: operation and keys) left waiting after its
    /// claim's answer was lost, taken out of the background list if it is there. Both
    /// lists are read under the list's lock, as a pass moves fences between them.
    fn take_unanswered(&self, name: &str) -> Unanswered {
        let mut unsettled = self
            .unsettled
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = unsettled
            .iter()
            .position(|f| f.unanswered && f._in_flight.name() == name)
        {
            return Unanswered::Taken(unsettled.swap_remove(i));
        }
        let settling = self.settling.lock().unwrap_or_else(PoisonError::into_inner);
        if settling.iter().any(|(_, n, _)| n == name) {
            Unanswered::BeingSettled
        } else {
            Unanswered::NotHere
        }
    }

    /// Releases what a claim whose answer was lost may have taken, then leaves it to the
    /// background to release again until the claim cannot land any more. Needs no ledger:
    /// no local step ran for it.
    async fn release_unanswered(&self, fence: Fence) {
        match self
            .set
            .release_pending(&fence.keys, &fence.operation)
            .await
        {
            Ok(released) => tracing::info!(operation = %fence.operation, released,
                                           "fleet claim with a lost answer released"),
            Err(e) => tracing::warn!(operation = %fence.operation, error = %e,
                                     "fleet claim with a lost answer: release deferred"),
        }
        // While the store is out every claim's answer is taken for lost (most were never
        // sent), and each would be tried again, one after another, before the settles of
        // leases that did commit: past a bound they are left to the next start's
        // reconciliation, as every such claim was before.
        let waiting = self
            .unsettled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|f| f.unanswered)
            .count();
        if waiting >= MAX_UNANSWERED {
            tracing::error!(operation = %fence.operation, waiting,
                "too many fleet claims with a lost answer to release in the background; this one \
                 is left to the next start's reconciliation");
            return;
        }
        self.defer(fence);
    }

    fn defer(&self, fence: Fence) {
        self.unsettled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(fence);
    }

    /// Ends a fence once the local step is over, whatever its outcome: the keys are marked
    /// spent if the local spent set has them (the local step committed, or they were spent
    /// here before), else freed. Asking the ledger rather than the step's result makes a
    /// step that committed and then failed (a panic after the commit) count as delivered.
    /// A settle that cannot be done now (the store unreachable, the ledger unreadable) is
    /// tried again in the background; the keys stay fenced, and the operation in flight,
    /// meanwhile.
    pub async fn settle(&self, fence: Fence, ledger: &Arc<Ledger>) {
        if fence.repeat {
            return;
        }
        match self.try_settle(&fence, ledger).await {
            // Released, but the lost claim could still land: released again later.
            Ok(()) if fence.settle_until.is_some_and(|t| Instant::now() < t) => self.defer(fence),
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(operation = %fence.operation, error = %e, "fleet settle deferred");
                self.defer(fence);
            }
        }
    }

    async fn try_settle(&self, fence: &Fence, ledger: &Arc<Ledger>) -> Result<(), SettleError> {
        let delivered = if fence.unanswered {
            // Its local step never ran: whatever the ledger says of these keys was
            // spent by another operation, which settles them itself.
            false
        } else {
            let (l, keys) = (Arc::clone(ledger), fence.keys.clone());
            tokio::task::spawn_blocking(move || l.first_claimed(&keys))
                .await
                .map_err(|e| SettleError::Worker(e.to_string()))?
                .map_err(SettleError::Ledger)?
                .is_some()
        };
        // Both name the operation: a settle deferred after a lost reply must not end the
        // claim of another operation that fenced the same keys since (the tenant's retry).
        if !delivered {
            // Nothing released: released already (a deferred settle whose first try did
            // reach the store), and perhaps fenced by another operation since.
            self.set
                .release_pending(&fence.keys, &fence.operation)
                .await
                .map_err(SettleError::Store)?;
            return Ok(());
        }
        match self.set.commit_pending(&fence.keys, &fence.operation).await {
            Ok(()) => Ok(()),
            Err(PgStoreError::HeldElsewhere(held)) => self.held_elsewhere(fence, held),
            Err(e) => Err(SettleError::Store(e)),
        }
    }

    /// A commit found keys the local ledger spent held by other operations in the store
    /// (its own claim gone: released by a settle whose reply was lost). Another operation
    /// of this host settles its claim by the same ledger, so those are left to it. Another
    /// host's spent claim is a key spent twice, which nothing can undo now: reported. Its
    /// pending claim would let it spend the key again: reported, and the commit is tried
    /// again until that claim is released (and the key recorded here) or committed.
    fn held_elsewhere(&self, fence: &Fence, held: Vec<HeldKey>) -> Result<(), SettleError> {
        let mut pending_elsewhere = false;
        for h in &held {
            let key = hex::encode(&h.key.bytes);
            if h.host_id == self.host_id() {
                tracing::info!(operation = %fence.operation, kind = ?h.key.kind, key,
                               other_operation = %h.operation_id, state = ?h.state,
                               "fleet commit: key held by another operation of this host");
            } else {
                pending_elsewhere |= h.state == SpendState::Pending;
                tracing::error!(operation = %fence.operation, kind = ?h.key.kind, key,
                                other_host = %h.host_id, other_operation = %h.operation_id,
                                state = ?h.state,
                                "a key spent on this host is held by another host of the fleet");
            }
        }
        if pending_elsewhere {
            return Err(SettleError::PendingElsewhere(PgStoreError::HeldElsewhere(
                held,
            )));
        }
        Ok(())
    }

    async fn settle_unsettled(&self, ledger: &Arc<Ledger>) {
        // Out of the list for the pass, but still what a new request of the same operation
        // must not share keys with (shared_with_deferred), and what the same request
        // waits for (enter_or_take_over): each fence's release only ends in the store as
        // its turn in the pass comes. Both lists change under the list's lock, so that a
        // request looking at them in between finds each fence in one of them.
        let todo = {
            let mut unsettled = self
                .unsettled
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let todo = std::mem::take(&mut *unsettled);
            *self.settling.lock().unwrap_or_else(PoisonError::into_inner) = todo
                .iter()
                .map(|f| {
                    (
                        f.operation.clone(),
                        f._in_flight.name().to_string(),
                        f.keys.clone(),
                    )
                })
                .collect();
            todo
        };
        for fence in todo {
            let name = fence._in_flight.name().to_string();
            crate::fault::delay(crate::fault::point::FLEET_BACKGROUND_SETTLE).await;
            self.settle(fence, ledger).await;
            // Settled, or back in the list: no longer this pass's.
            self.settling
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|(_, n, _)| *n != name);
        }
    }
}
