//! The fleet's one mint (`--store`): every host signs with the same keysets and no `B_` is
//! signed twice anywhere. Beside [`crate::fleet`] (the spent set), on the same store.
//!
//! # Keysets
//! Each host derives the keys from the mint seed (`--mint-seed-file`, or the seed of its
//! STATE/credit-keysets.json when none is given); the store keeps the keyset list only
//! (`payment_postgres::PgKeysets`). At start-up the first host writes its list, every host
//! checks that its seed derives the ids of the fleet's rows (else it refuses to start:
//! another seed would sign notes no other host accepts) and adopts the list.
//!
//! A rotation (`POST /v1/keysets/rotate`, on any host) is one store transaction; the other
//! hosts pick it up by polling the list every [`KEYSET_POLL`] and, at once, when a request
//! names a keyset id they do not know (a wallet that learnt the new keyset from the
//! rotating host; at most one such read per 250 ms, so made-up ids cost no more). Polling rather than asking the store on each keys request keeps the
//! public, unauthenticated key routes off the database (they are the most frequent
//! requests and must answer while the store is down); the cost is that for up to one poll
//! interval another host still signs with the previous keyset, which stays valid for
//! redeeming, so no note is lost.
//!
//! # Signed outputs
//! Every mint, swap and lease refund's change reserves its outputs' `B_`s, with the
//! signatures, in the store (pending, under this host and the operation) after fencing its
//! inputs and before its local commit, and settles them after: delivered if the local spent
//! set recorded exactly the reserved signatures (they commit in the same SQLite transaction
//! as the claim that paid for them, or as the refund), else released. A local record of
//! another signature of the same `B_` does not count: it is one this host made before it
//! joined the fleet, which is why the local swap refused the `B_` (11003), and delivering
//! the reservation would hand its other amount to NUT-09 restore on every host unpaid.
//! (NUT-30 mints of fleet quotes record theirs
//! delivered with the quote's balance in one store transaction instead:
//! `crate::http::fleet_nut30`; a quote this host made before it joined is minted from its
//! ledger, reserving and settling like a swap: `crate::http::nut30`.) A crash in between leaves them pending; [`FleetMint::start`] settles
//! them by the same rule before money requests are served. A settle that fails (the store
//! unreachable for a moment) is tried again in the background every second, by the same
//! rule, read anew: left to the next start, a swap committed here would have its
//! signatures pending in the store, so the same swap retried on another host (its inputs
//! spent) could not be answered, and NUT-09 restore elsewhere would miss them. Until it
//! is done the operation reserves nothing again: a new reservation of it first settles
//! the earlier one (or is 503), else that settle, released, could delete the new
//! reservation's rows. So a `B_` signed on one host is
//! refused on every other (11003), NUT-09 restore on any host returns what any host
//! delivered, and the same request retried on another host gets the same signatures.
//!
//! # Signatures made before the join
//! A host that ran on its own (no `--store`) recorded its signatures in its SQLite spent
//! set alone. So at every start, after settling its pending reservations and before it
//! serves money requests, the signatures of the local set not yet marked published are
//! recorded delivered in the store under `pre-fleet:<host id>` (a page of
//! `PUBLISH_BATCH` per statement, `ON CONFLICT DO NOTHING`), then marked in the ledger,
//! so that the next start sends only what was signed since (the signatures this host made
//! through the fleet, which the store has already: bounded by what it did since its last
//! start, and cheap to compare). From then on another host refuses those `B_`s (11003)
//! and restores them. A `B_` the store holds with the same keyset, amount and `C_` is
//! nothing to do (another DLEQ proof of the same `C_` is the same signature). One it holds
//! delivered with another signature was signed twice, by this host before the join and
//! by the fleet: the wallet may hold two notes of one secret, of which only the first
//! spent counts. Nothing can undo that now; it is logged as an error with both amounts,
//! the fleet's row is kept (so NUT-09 restore answers the same on every host, this one
//! included) and the `B_` marked published (logged once). One another host holds pending
//! (a request in flight) is taken over as this host's delivered signature, as the spent
//! keys' publication takes over pending claims: left pending, that request could fail
//! and release it, and the store would then hold nothing of a `B_` this host signed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use payment::credit::keyset::UNIT_SAT;
use payment::credit::keyset_store::KeysetState;
use payment::credit::nut_types::{BlindSignature, BlindSignatureDleq, BlindedMessage};
use payment::credit::{signed_records, CreditError, Mint};
use payment::spent_set::{SignedOutput, SpentSet};
use payment_postgres::{
    check_seed, FleetKeyset, NewKeyset, PgKeysets, PgSignedOutputs, PgStore, PgStoreError, Settled,
};
use thiserror::Error;

use crate::app::AppState;
use crate::ledger::Ledger;
use crate::names_in_flight::{Entered, NamesInFlight};

/// How often each host reads the fleet's keyset list (see the module doc).
pub const KEYSET_POLL: Duration = Duration::from_secs(2);
/// How often a start-up check that met an unavailable store is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// Signatures published per round trip at start-up.
const PUBLISH_BATCH: usize = 1000;
/// Least time between two reads of the list for unknown keyset ids: requests naming made-up
/// ids cannot turn into one database read each.
const UNKNOWN_ID_REFRESH: Duration = Duration::from_millis(250);

#[derive(Debug, Error)]
pub enum FleetMintError {
    /// The store cannot be reached now, or this host has not checked its keysets against
    /// it yet: nothing was signed, the same request may be retried later.
    #[error("the fleet store is unavailable: {0}")]
    Unavailable(String),
    /// An output was signed before, on this host or another (NUT-00 11003).
    #[error("output {b_hex} was already signed")]
    OutputAlreadySigned { b_hex: String },
    /// The mint refused (a malformed request, an unknown keyset...).
    #[error(transparent)]
    Mint(#[from] CreditError),
    /// The store refused for another reason (a keyset mismatch, a lost rotation race).
    #[error("fleet store: {0}")]
    Store(PgStoreError),
    /// The local spent set could not be read.
    #[error("local spent set: {0}")]
    Local(String),
    /// The same request is between its reservation and its settle on this host now: a
    /// copy must wait for its answer, else its failure could release what the other one
    /// commits (retry; the same request again is then answered with its signatures).
    #[error("the same request ({operation}) is in flight on this host")]
    InFlight { operation: String },
    /// This host's `--input-fee-ppk` is not the fee of the fleet's keysets.
    #[error(
        "--input-fee-ppk {ours} but the fleet's active keyset {id} charges {fleet}: every \
         host of the fleet must charge the fleet's fee"
    )]
    FeeMismatch { id: String, ours: u64, fleet: u64 },
}

impl From<PgStoreError> for FleetMintError {
    fn from(e: PgStoreError) -> Self {
        match e {
            PgStoreError::Unavailable(m) => FleetMintError::Unavailable(m),
            PgStoreError::OutputAlreadySigned { b_hex } => {
                FleetMintError::OutputAlreadySigned { b_hex }
            }
            other => FleetMintError::Store(other),
        }
    }
}

impl FleetMintError {
    /// Whether this host must not serve money with its keys (another seed or fee than the
    /// fleet's), as opposed to a passing outage.
    fn is_misconfiguration(&self) -> bool {
        matches!(
            self,
            FleetMintError::FeeMismatch { .. }
                | FleetMintError::Store(PgStoreError::KeysetMismatch { .. })
        )
    }
}

/// The start-up check found this host's mint seed or fee not the fleet's.
#[derive(Debug, Error)]
#[error("fleet mint: {0}")]
pub struct FleetMintStartError(#[source] pub FleetMintError);

/// A reservation whose settle could not be done (the store unreachable, the local spent
/// set unreadable), tried again in the background.
struct Unsettled {
    operation: String,
    /// The operation's outputs' `B_`s: their local records are what the settle compares.
    b_s: Vec<Vec<u8>>,
    spent: Arc<dyn SpentSet>,
    /// The operation's place in [`FleetMint::settling`] until the settle is done.
    _settling: Entered,
}

/// The fleet's keysets and signed outputs as this coinopd uses them.
pub struct FleetMint {
    keysets: PgKeysets,
    outputs: PgSignedOutputs,
    store: PgStore,
    input_fee_ppk: u64,
    /// The keysets were checked against the fleet's and this host's pending reservations
    /// settled: outputs may be reserved.
    ready: AtomicBool,
    /// One refresh or rotation of the keyset list at a time on this host.
    sync: tokio::sync::Mutex<()>,
    /// When the list was last read for an unknown keyset id.
    last_unknown_refresh: std::sync::Mutex<Option<Instant>>,
    /// The rows last checked and adopted: the same rows again (every poll, mostly) are
    /// not derived and checked again.
    adopted: std::sync::Mutex<Vec<FleetKeyset>>,
    /// Settles that failed, to try again.
    unsettled: Mutex<Vec<Unsettled>>,
    /// Operations whose reservation is being settled, or waits in `unsettled`: no
    /// reservation of them is made meanwhile.
    settling: NamesInFlight,
    /// Operations between their reservation and their settle that no fence of the spent
    /// set holds in flight (a NUT-30 quote of this host's own: it spends nothing).
    unfenced: NamesInFlight,
}

impl std::fmt::Debug for FleetMint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetMint")
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

/// The `B_` bytes of `outputs`, for lookups; an output whose `B_` is not a point is left
/// to the mint, which refuses the request.
fn output_keys(outputs: &[BlindedMessage]) -> Result<Vec<Vec<u8>>, CreditError> {
    outputs
        .iter()
        .map(|o| {
            payment::credit::curve::parse_point("outputs.B_", &o.b_).map(|p| p.serialize().to_vec())
        })
        .collect()
}

/// A stored signature as NUT-00 hands it out.
fn blind_signature(s: SignedOutput) -> BlindSignature {
    BlindSignature {
        amount: s.amount,
        id: s.keyset_id,
        c_: hex::encode(&s.c_),
        dleq: s.dleq.map(|(e, s)| BlindSignatureDleq {
            e: hex::encode(e),
            s: hex::encode(s),
        }),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FleetMintError> + Send + 'static,
) -> Result<T, FleetMintError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FleetMintError::Local(format!("worker: {e}")))?
}

impl FleetMint {
    /// The fleet mint on `store` (the fleet's pool), charging `input_fee_ppk`. Touches no
    /// network: [`FleetMint::start`] does.
    pub fn new(store: PgStore, input_fee_ppk: u64) -> Self {
        FleetMint {
            keysets: PgKeysets::new(store.clone()),
            outputs: PgSignedOutputs::new(store.clone()),
            store,
            input_fee_ppk,
            ready: AtomicBool::new(false),
            sync: tokio::sync::Mutex::new(()),
            last_unknown_refresh: std::sync::Mutex::new(None),
            adopted: std::sync::Mutex::new(Vec::new()),
            unsettled: Mutex::default(),
            settling: NamesInFlight::default(),
            unfenced: NamesInFlight::default(),
        }
    }

    /// Whether the keysets are checked and pending reservations settled.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Refuses (503) while this host has not adopted the fleet's keysets: until then its
    /// mint holds keyset 0 alone, which is not what the fleet lists once it has rotated.
    pub(crate) fn require_ready(&self) -> Result<(), FleetMintError> {
        if self.is_ready() {
            Ok(())
        } else {
            Err(FleetMintError::Unavailable(
                "this host has not checked its mint keysets against the store yet".into(),
            ))
        }
    }

    /// Checks this host's seed against the fleet's keysets (writing the first list if the
    /// fleet has none), adopts them and settles this host's pending reservations, then
    /// polls the list. A seed or fee that is not the fleet's is an error (the daemon does
    /// not start); an unreachable store is not: it is tried again in the background, and
    /// mints and swaps get 503 meanwhile.
    pub async fn start(self: &Arc<Self>, state: &Arc<AppState>) -> Result<(), FleetMintStartError> {
        match self.start_once(state).await {
            Ok(()) => {}
            Err(e) if e.is_misconfiguration() => return Err(FleetMintStartError(e)),
            Err(e) => {
                tracing::warn!(error = %e, "fleet mint not ready; mints and swaps get 503 until it is");
                let (me, weak) = (Arc::clone(self), Arc::downgrade(state));
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(RETRY).await;
                        let Some(state) = weak.upgrade() else { return };
                        match me.start_once(&state).await {
                            Ok(()) => break,
                            Err(e) if e.is_misconfiguration() => {
                                tracing::error!(error = %e, "this host cannot sign for the fleet; mints and swaps stay refused");
                                return;
                            }
                            Err(e) => tracing::warn!(error = %e, "fleet mint still not ready"),
                        }
                    }
                });
            }
        }
        let (me, weak) = (Arc::clone(self), Arc::downgrade(state));
        tokio::spawn(async move { me.poll(weak).await });
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETRY).await;
                me.settle_unsettled().await;
            }
        });
        Ok(())
    }

    async fn start_once(&self, state: &AppState) -> Result<(), FleetMintError> {
        self.store.migrate().await?;
        let initial = self.initial_list(&state.mint)?;
        let rows =
            {
                let _sync = self.sync.lock().await;
                let mut rows = self.keysets.register_initial(&initial).await?;
                // The fleet's list is checked against this host's seed first: only then may
                // keysets derived from it join the list.
                self.adopt(&state.mint, &rows)?;
                let missing = missing_from_fleet(&initial, &rows);
                if !missing.is_empty() {
                    let indexes: Vec<u32> = missing.iter().map(|k| k.derivation_index).collect();
                    rows = self.keysets.add_missing(&missing).await?;
                    self.adopt(&state.mint, &rows)?;
                    tracing::info!(?indexes,
                    "fleet mint: keysets this host had that the fleet's list lacked were added, \
                     none active (notes issued under them stay redeemable on every host)");
                }
                rows
            };
        let spent = Arc::clone(&state.spent);
        let pending = self.outputs.pending_operations().await?;
        for op in pending {
            let (spent, b_s) = (Arc::clone(&spent), op.b_s.clone());
            let recorded = blocking(move || local_records(&*spent, &b_s)).await?;
            let settled = self
                .outputs
                .settle_as_recorded(&op.operation_id, &recorded)
                .await?;
            tracing::info!(operation = %op.operation_id, ?settled,
                           "fleet store: pending signatures from before a crash settled");
        }
        // After the settle: this host holds nothing pending in the store now (and reserves
        // nothing until it is ready), so a `B_` it holds there is one it delivered.
        self.publish_own_signatures(&state.ledger).await?;
        self.ready.store(true, Ordering::Release);
        let active = rows.iter().find(|r| r.state == KeysetState::Active);
        tracing::info!(keysets = rows.len(), active = ?active.map(|r| &r.id), "fleet mint ready");
        Ok(())
    }

    /// Publishes the signatures of the local spent set not yet marked published (made
    /// before this host joined the fleet, or while it ran without its `--store`; and those
    /// made through the fleet since the last start, which the store has already) as
    /// delivered under `pre-fleet:<host id>`, a page of [`PUBLISH_BATCH`] per round trip,
    /// and marks them in the ledger (see the module doc). Run again from the start after a
    /// failure: a page published and not marked is published again, which changes nothing.
    async fn publish_own_signatures(&self, ledger: &Arc<Ledger>) -> Result<(), FleetMintError> {
        let operation = format!("pre-fleet:{}", self.store.host_id());
        let (mut after, mut sent, mut recorded, mut twice, mut left) =
            (None::<Vec<u8>>, 0, 0, 0, 0);
        loop {
            let (l, from) = (Arc::clone(ledger), after.take());
            let page = blocking(move || {
                l.unpublished_outputs(from.as_deref(), PUBLISH_BATCH)
                    .map_err(|e| FleetMintError::Local(e.to_string()))
            })
            .await?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.b_.clone());
            let last_page = page.len() < PUBLISH_BATCH;
            let published = self.outputs.publish_delivered(&page, &operation).await?;
            for (ours, theirs) in &published.signed_twice {
                twice += 1;
                tracing::error!(
                    b_ = %hex::encode(&ours.b_),
                    ours = %format!("{} sat, keyset {}", ours.amount, ours.keyset_id),
                    theirs = %format!("{} sat, keyset {}", theirs.signed.amount,
                                      theirs.signed.keyset_id),
                    other_host = %theirs.host_id,
                    other_operation = %theirs.operation_id,
                    "a blinded message this host signed before it joined the fleet was \
                     signed again by the fleet: its wallet may hold two notes of one secret, \
                     of which one only can be spent; the fleet's signature is kept (NUT-09 \
                     restore on every host answers it)"
                );
            }
            for taken in &published.taken_over {
                tracing::warn!(
                    b_ = %hex::encode(&taken.signed.b_),
                    other_host = %taken.host_id,
                    other_operation = %taken.operation_id,
                    "a blinded message this host signed before it joined the fleet was being \
                     signed on another host: recorded as this host's (that request finds \
                     its reservation gone, and the same request again is refused 11003)"
                );
            }
            // A `B_` this host holds pending is not marked: its settle decides it, and the
            // next start publishes it again. None should be (see the call).
            let held_here: std::collections::HashSet<&[u8]> =
                published.left.iter().map(Vec::as_slice).collect();
            left += held_here.len();
            let done: Vec<Vec<u8>> = page
                .iter()
                .map(|s| s.b_.clone())
                .filter(|b| !held_here.contains(b.as_slice()))
                .collect();
            sent += page.len();
            recorded += published.inserted + published.taken_over.len();
            // Signed twice is marked too: logged once, nothing more to do.
            let l = Arc::clone(ledger);
            blocking(move || {
                l.mark_outputs_published(&done)
                    .map_err(|e| FleetMintError::Local(e.to_string()))
            })
            .await?;
            if last_page {
                break;
            }
        }
        if recorded > 0 || twice > 0 || left > 0 {
            tracing::info!(
                sent,
                recorded,
                signed_twice = twice,
                left_pending = left,
                operation,
                "fleet store: this host's own signatures published"
            );
        } else if sent > 0 {
            // Signatures made through the fleet since the last start: the store had them.
            tracing::debug!(
                sent,
                "fleet store: this host's signatures checked, none new"
            );
        }
        Ok(())
    }

    /// This host's keyset list as it would start the fleet's.
    fn initial_list(&self, mint: &Mint) -> Result<Vec<NewKeyset>, FleetMintError> {
        mint.keyset_records()
            .into_iter()
            .map(|r| {
                Ok(NewKeyset {
                    id: mint.derive_keyset_id(r.counter)?,
                    unit: UNIT_SAT.into(),
                    derivation_index: r.counter,
                    state: r.state,
                    input_fee_ppk: self.input_fee_ppk,
                })
            })
            .collect()
    }

    /// Checks `rows` against this host's seed and fee and makes them the mint's list.
    fn adopt(&self, mint: &Mint, rows: &[FleetKeyset]) -> Result<(), FleetMintError> {
        let mut adopted = self
            .adopted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !adopted.is_empty() && adopted.as_slice() == rows {
            return Ok(());
        }
        let ours: Vec<&FleetKeyset> = rows.iter().filter(|r| r.unit == UNIT_SAT).collect();
        let owned: Vec<FleetKeyset> = ours.iter().map(|r| (*r).clone()).collect();
        check_seed(&owned, |i| mint.derive_keyset_id(i))?;
        if let Some(active) = ours.iter().find(|r| r.state == KeysetState::Active) {
            if active.input_fee_ppk != self.input_fee_ppk {
                return Err(FleetMintError::FeeMismatch {
                    id: active.id.clone(),
                    ours: self.input_fee_ppk,
                    fleet: active.input_fee_ppk,
                });
            }
        }
        let records: Vec<_> = owned.iter().map(FleetKeyset::record).collect();
        let before = mint.active_keyset_id();
        let active = mint.adopt_keysets(&records)?;
        if active != before {
            tracing::info!(from = %before, to = %active, "fleet mint: active keyset changed");
        }
        *adopted = rows.to_vec();
        Ok(())
    }

    /// Reads the fleet's list and adopts it.
    async fn refresh(&self, mint: &Mint) -> Result<(), FleetMintError> {
        let _sync = self.sync.lock().await;
        let rows = self.keysets.load().await?;
        self.adopt(mint, &rows)
    }

    async fn poll(&self, state: Weak<AppState>) {
        loop {
            tokio::time::sleep(KEYSET_POLL).await;
            let Some(state) = state.upgrade() else { return };
            if !self.is_ready() {
                continue;
            }
            match self.refresh(&state.mint).await {
                Ok(()) => {}
                Err(e) if e.is_misconfiguration() => {
                    // The fleet's list no longer matches this host's seed: stop signing.
                    self.ready.store(false, Ordering::Release);
                    tracing::error!(error = %e, "fleet keysets no longer match this host; mints and swaps refused");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "fleet keyset poll failed"),
            }
        }
    }

    /// Before a request that names keysets: refuses while not ready, and reads the fleet's
    /// list first if any id is unknown here (a rotation made on another host since the
    /// last poll).
    pub async fn admit<'a>(
        &self,
        mint: &Mint,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), FleetMintError> {
        self.require_ready()?;
        if !mint.knows_keysets(ids) && self.may_refresh_for_unknown() {
            self.refresh(mint).await?;
        }
        Ok(())
    }

    /// Whether a read of the list for an unknown id is due (at most one per
    /// [`UNKNOWN_ID_REFRESH`]); the poll covers the rest.
    fn may_refresh_for_unknown(&self) -> bool {
        let mut last = self
            .last_unknown_refresh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < UNKNOWN_ID_REFRESH) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Reads the fleet's list if `id` is unknown here (a keys request for a keyset made on
    /// another host since the last poll). An unreachable store leaves the list as it is.
    pub async fn learn_keyset(&self, mint: &Mint, id: &str) {
        if self.is_ready() && !mint.knows_keysets([id]) && self.may_refresh_for_unknown() {
            if let Err(e) = self.refresh(mint).await {
                tracing::debug!(error = %e, "reading the fleet's keysets for an unknown id");
            }
        }
    }

    /// Rotation: the next keyset (derived at the next index) becomes the fleet's active
    /// one and the current one inactive, in one store transaction; adopted here at once,
    /// by the other hosts at their next poll. Returns the new active id.
    pub async fn rotate(&self, mint: &Mint) -> Result<String, FleetMintError> {
        self.require_ready()?;
        let _sync = self.sync.lock().await;
        let rows = self.keysets.load().await?;
        self.adopt(mint, &rows)?;
        let current = mint.active_keyset_id();
        let next_index = rows
            .iter()
            .filter(|r| r.unit == UNIT_SAT)
            .map(|r| r.derivation_index)
            .max()
            .map_or(Some(0), |i| i.checked_add(1))
            .ok_or_else(|| {
                FleetMintError::Mint(CreditError::Store {
                    path: "fleet store".into(),
                    reason: "keyset derivation index exhausted".into(),
                })
            })?;
        let next = NewKeyset {
            id: mint.derive_keyset_id(next_index)?,
            unit: UNIT_SAT.into(),
            derivation_index: next_index,
            state: KeysetState::Active,
            input_fee_ppk: self.input_fee_ppk,
        };
        let rows = self.keysets.rotate(&current, &next).await?;
        self.adopt(mint, &rows)?;
        tracing::info!(from = %current, to = %next.id, "fleet mint: keysets rotated");
        Ok(next.id)
    }

    /// Reserves `signatures` of `outputs` for `operation` in the store: from here no host
    /// signs these `B_`s for anything else. Settle with [`FleetMint::settle`].
    pub async fn reserve(
        &self,
        outputs: &[BlindedMessage],
        signatures: &[BlindSignature],
        operation: &str,
    ) -> Result<(), FleetMintError> {
        self.require_ready()?;
        let records = signed_records(outputs, signatures)?;
        self.settle_earlier(operation).await?;
        self.outputs.reserve(&records, operation).await?;
        if crate::fault::lost(crate::fault::point::FLEET_OUTPUTS_RESERVED) {
            return Err(FleetMintError::Unavailable(
                "the reservation's answer was lost (injected)".into(),
            ));
        }
        Ok(())
    }

    /// Holds `operation` in flight on this host from before its reservation until after its
    /// settle, for an operation no fence holds (a NUT-30 quote of this host's own): two copies
    /// of one request at once would share one reservation (the same host and operation),
    /// and the settle of the one that failed, a release, could delete it before the other
    /// one's local commit, leaving that commit's signatures out of the store.
    pub(crate) fn hold_unfenced(&self, operation: &str) -> Result<Entered, FleetMintError> {
        self.unfenced
            .enter(operation)
            .ok_or_else(|| FleetMintError::InFlight {
                operation: operation.to_string(),
            })
    }

    /// Ends `operation`'s reservation: delivered if the local spent set recorded the very
    /// signatures reserved for `outputs`, else released (see the module doc). One that
    /// cannot be done now (the store unreachable) is tried again in the background; the
    /// `B_`s stay taken meanwhile, nothing is signed twice.
    pub async fn settle(
        &self,
        spent: &Arc<dyn SpentSet>,
        outputs: &[BlindedMessage],
        operation: &str,
    ) {
        let Ok(b_s) = output_keys(outputs) else {
            return; // The mint refused the request before anything was reserved.
        };
        // An earlier settle of the operation left for the background is this one: the
        // same rule, read now.
        let job = match self.take_unsettled(operation) {
            Some(earlier) => Some(earlier),
            None => self.settling.enter(operation).map(|settling| Unsettled {
                operation: operation.to_string(),
                b_s: Vec::new(),
                spent: Arc::clone(spent),
                _settling: settling,
            }),
        };
        let Some(mut job) = job else {
            // The background is settling the operation now, by the same rule: no new
            // reservation of it was made meanwhile, so there is nothing more to do.
            return;
        };
        for b_ in b_s {
            if !job.b_s.contains(&b_) {
                job.b_s.push(b_);
            }
        }
        if let Err(e) = self.try_settle(&job).await {
            tracing::warn!(operation, error = %e, "reservation's settle deferred");
            self.defer(job);
        }
    }

    /// One try at settling `job`'s reservation by the local spent set.
    async fn try_settle(&self, job: &Unsettled) -> Result<(), FleetMintError> {
        let (spent, b_s) = (Arc::clone(&job.spent), job.b_s.clone());
        let recorded = blocking(move || local_records(&*spent, &b_s)).await?;
        let operation = job.operation.as_str();
        match self
            .outputs
            .settle_as_recorded(operation, &recorded)
            .await?
        {
            Settled::Released { rows } if rows > 0 && !recorded.is_empty() => {
                // The local set has other signatures of these `B_`s: made before the join.
                tracing::warn!(
                    operation,
                    rows,
                    "reservation released: the local spent set holds other signatures of \
                     its outputs"
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// Before a reservation of `operation`: an earlier one of it whose settle waits in the
    /// background is settled first (see the module doc), or the reservation is refused
    /// for now.
    async fn settle_earlier(&self, operation: &str) -> Result<(), FleetMintError> {
        if !self.settling.contains(operation) {
            return Ok(());
        }
        let Some(earlier) = self.take_unsettled(operation) else {
            return Err(FleetMintError::Unavailable(
                "an earlier reservation of the same request is being settled".into(),
            ));
        };
        if let Err(e) = self.try_settle(&earlier).await {
            self.defer(earlier);
            return Err(FleetMintError::Unavailable(format!(
                "an earlier reservation of the same request is not settled yet: {e}"
            )));
        }
        Ok(())
    }

    fn take_unsettled(&self, operation: &str) -> Option<Unsettled> {
        let mut unsettled = self
            .unsettled
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let i = unsettled.iter().position(|u| u.operation == operation)?;
        Some(unsettled.swap_remove(i))
    }

    fn defer(&self, job: Unsettled) {
        self.unsettled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(job);
    }

    /// The background's pass over the settles that failed.
    async fn settle_unsettled(&self) {
        let todo = std::mem::take(
            &mut *self
                .unsettled
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for job in todo {
            match self.try_settle(&job).await {
                Ok(()) => {
                    tracing::info!(operation = %job.operation, "deferred reservation settled")
                }
                Err(e) => {
                    tracing::debug!(operation = %job.operation, error = %e,
                                    "deferred reservation still not settled");
                    self.defer(job);
                }
            }
        }
    }

    /// The signatures of `outputs` if every one was delivered for `operation` (on any
    /// host): the same request again, answered as it was the first time.
    pub async fn answer_again(
        &self,
        outputs: &[BlindedMessage],
        operation: &str,
    ) -> Result<Option<Vec<BlindSignature>>, FleetMintError> {
        let b_s = output_keys(outputs)?;
        Ok(self
            .outputs
            .delivered_for_operation(&b_s, operation)
            .await?
            .map(|found| found.into_iter().map(blind_signature).collect()))
    }

    /// Whether every one of `outputs` (at least one) is held in the store for `operation`,
    /// delivered or still pending: read after [`FleetMint::answer_again`] found them not
    /// all delivered, `true` means the request is the operation itself, its settle not done
    /// yet (deferred, or under way on another host), so the same request again will be
    /// answered once it is; `false`, that these outputs were never the operation's.
    pub async fn held_for_operation(
        &self,
        outputs: &[BlindedMessage],
        operation: &str,
    ) -> Result<bool, FleetMintError> {
        let b_s = output_keys(outputs)?;
        if b_s.is_empty() {
            return Ok(false);
        }
        let rows = self.outputs.lookup(&b_s).await?;
        Ok(rows
            .iter()
            .all(|r| r.as_ref().is_some_and(|r| r.operation_id == operation)))
    }

    /// NUT-09 restore's records: for each `B_`, what the fleet delivered, else what this
    /// host's own spent set recorded (a signature whose settle is still to be done, the
    /// store unreachable when it was tried; the ones from before the join are published at
    /// start-up, see the module doc).
    pub async fn restore_records(
        &self,
        spent: &Arc<dyn SpentSet>,
        b_s: Vec<Vec<u8>>,
    ) -> Result<Vec<Option<SignedOutput>>, FleetMintError> {
        self.require_ready()?;
        let fleet = self.outputs.delivered(&b_s).await?;
        let spent = Arc::clone(spent);
        let local = blocking(move || {
            spent
                .signed_outputs(&b_s)
                .map_err(|e| FleetMintError::Local(e.to_string()))
        })
        .await?;
        Ok(fleet.into_iter().zip(local).map(|(f, l)| f.or(l)).collect())
    }
}

/// The local spent set's signatures of `b_s` (those it has), for the store to compare with
/// what it reserved: the local commit that records them is the one that spent what paid
/// for them, but only if they are the reserved signatures themselves.
fn local_records(
    spent: &dyn SpentSet,
    b_s: &[Vec<u8>],
) -> Result<Vec<SignedOutput>, FleetMintError> {
    let found = spent
        .signed_outputs(b_s)
        .map_err(|e| FleetMintError::Local(e.to_string()))?;
    Ok(found.into_iter().flatten().collect())
}

/// The keysets of `local` (this host's list) whose derivation index no keyset of their
/// unit in the fleet's `rows` holds, as they join the fleet's list: an active one inactive
/// (the fleet has its own active keyset), a retired one retired.
fn missing_from_fleet(local: &[NewKeyset], rows: &[FleetKeyset]) -> Vec<NewKeyset> {
    local
        .iter()
        .filter(|k| {
            !rows
                .iter()
                .any(|r| r.unit == k.unit && r.derivation_index == k.derivation_index)
        })
        .map(|k| NewKeyset {
            state: match k.state {
                KeysetState::Active => KeysetState::Inactive,
                other => other,
            },
            ..k.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(index: u32, state: KeysetState) -> NewKeyset {
        NewKeyset {
            id: format!("00{index:014x}"),
            unit: UNIT_SAT.into(),
            derivation_index: index,
            state,
            input_fee_ppk: 0,
        }
    }

    fn fleet(index: u32, state: KeysetState) -> FleetKeyset {
        FleetKeyset {
            id: format!("00{index:014x}"),
            unit: UNIT_SAT.into(),
            derivation_index: index,
            state,
            input_fee_ppk: 0,
            created_by: "other".into(),
            created_at: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_joining_hosts_keysets_the_fleet_lacks_join_it_never_active() {
        // Alone, this host rotated twice and retired its first keyset; the fleet has only
        // index 0 (active) and index 1 (inactive).
        let ours = [
            local(0, KeysetState::Retired),
            local(1, KeysetState::Inactive),
            local(2, KeysetState::Active),
            local(3, KeysetState::Retired),
        ];
        let theirs = [
            fleet(0, KeysetState::Active),
            fleet(1, KeysetState::Inactive),
        ];
        let missing = missing_from_fleet(&ours, &theirs);
        let got: Vec<(u32, KeysetState)> = missing
            .iter()
            .map(|k| (k.derivation_index, k.state))
            .collect();
        assert_eq!(
            got,
            [(2, KeysetState::Inactive), (3, KeysetState::Retired)],
            "indexes the fleet holds stay the fleet's; the active one joins inactive"
        );
        assert!(missing_from_fleet(&ours[..2], &theirs).is_empty());
    }
}
