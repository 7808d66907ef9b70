//! The fleet-wide spent set in PostgreSQL: the semantics of
//! [`payment::spent_set::SpentSet`] (all-or-none claims, `Pending` → `Spent` or released,
//! receipts for idempotent retries, states), async, and with every claim naming the host
//! and the operation it guards; see the crate doc for the two-phase protocol. Its common
//! operations are also [`payment::spent_set::SpentKeyStore`] (module `spent_key_store`).

use std::collections::HashSet;
use std::time::SystemTime;

use payment::spent_set::{KeyKind, SpendKey, SpendState};
use tokio_postgres::error::SqlState;

use crate::error::{classify, PgStoreError};
use crate::store::PgStore;

/// Raised by `coinop_claim` when a key is taken (migrations/0001_spent_keys.sql).
pub(crate) const KEY_TAKEN: &str = "CO001";
/// Raised by `coinop_settle` when a key is not pending under the host.
const NOT_PENDING: &str = "CO002";
/// A conflict whose holder let go before we could read it is retried this often.
const CLAIM_ATTEMPTS: usize = 4;

/// One operation's pending claim by this host, found at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingOperation {
    pub operation_id: String,
    pub note: String,
    pub keys: Vec<SpendKey>,
    pub claimed_at: SystemTime,
}

/// What [`PgSpentSet::reconcile`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Operations the local ledger had committed: their keys are now `Spent`.
    pub committed: Vec<String>,
    /// Operations the local ledger never committed: their keys are free again.
    pub released: Vec<String>,
    /// Operations nobody could say about (`committed_locally` answered `None`): their keys
    /// stay pending under this host for a later pass.
    pub undecided: Vec<String>,
}

/// What [`PgSpentSet::publish_spent`] did with the keys it was given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// Keys this call recorded as `Spent`.
    pub inserted: usize,
    /// Keys already `Spent` under this host and the same operation: published before.
    pub already: usize,
    /// Keys held otherwise (spent by another operation, or pending on this host): left
    /// exactly as they were.
    pub held_elsewhere: Vec<HeldKey>,
    /// Keys another host held `Pending` (a request of its in flight), now recorded `Spent`
    /// here, each with that host's claim as it was. Left pending, its request could fail
    /// and release the key, and the store would then hold nothing of a spent key (a request
    /// with a bad proof fences its keys before the proof is checked, so anyone who knows a
    /// spent note's secret could make that happen during a join). Its host finds the
    /// claim settled when it settles.
    pub taken_over: Vec<HeldKey>,
}

/// A key and who holds it in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldKey {
    pub key: SpendKey,
    pub state: SpendState,
    pub host_id: String,
    pub operation_id: String,
}

/// The spent set of the fleet. Cheap to clone (shares the store's pool).
#[derive(Clone, Debug)]
pub struct PgSpentSet {
    store: PgStore,
}

fn kind_code(kind: KeyKind) -> i16 {
    match kind {
        KeyKind::Outpoint => 1,
        KeyKind::CreditY => 2,
    }
}

pub(crate) fn kind_from_code(code: i16) -> Result<KeyKind, PgStoreError> {
    match code {
        1 => Ok(KeyKind::Outpoint),
        2 => Ok(KeyKind::CreditY),
        other => Err(PgStoreError::Corrupt(format!(
            "coinop_spent_keys.kind {other}"
        ))),
    }
}

pub(crate) fn state_code(state: SpendState) -> i16 {
    match state {
        SpendState::Pending => 1,
        SpendState::Spent => 2,
    }
}

fn state_from_code(code: i16) -> Result<SpendState, PgStoreError> {
    match code {
        1 => Ok(SpendState::Pending),
        2 => Ok(SpendState::Spent),
        other => Err(PgStoreError::Corrupt(format!(
            "coinop_spent_keys.state {other}"
        ))),
    }
}

/// The keys as the two parallel arrays the SQL functions take, sorted so that two claims
/// of overlapping keys insert them in the same order (no deadlock between them).
pub(crate) fn key_arrays(keys: &[SpendKey]) -> Result<(Vec<i16>, Vec<&[u8]>), PgStoreError> {
    if keys.is_empty() {
        return Err(PgStoreError::NoKeys);
    }
    let mut seen = HashSet::with_capacity(keys.len());
    for key in keys {
        if !seen.insert((key.kind, key.bytes.as_slice())) {
            return Err(PgStoreError::DuplicateKey {
                kind: key.kind,
                key_hex: hex::encode(&key.bytes),
            });
        }
    }
    let mut sorted: Vec<(i16, &[u8])> = keys
        .iter()
        .map(|k| (kind_code(k.kind), k.bytes.as_slice()))
        .collect();
    sorted.sort_unstable();
    Ok(sorted.into_iter().unzip())
}

pub(crate) fn sql_state_is(e: &tokio_postgres::Error, code: &str) -> bool {
    e.code() == Some(&SqlState::from_code(code))
}

/// A key (kind code, bytes) the store already had when it was published, and its holder
/// read afterwards (`None`: let go meanwhile).
type HeldRow<'a> = ((i16, &'a [u8]), Option<Holder>);

/// Who holds a key now.
pub(crate) struct Holder {
    pub(crate) state: SpendState,
    pub(crate) host_id: String,
    pub(crate) operation_id: String,
}

impl Holder {
    /// The key `(kind, key)` as this holder holds it.
    fn held_key(self, kind: i16, key: &[u8]) -> Result<HeldKey, PgStoreError> {
        Ok(HeldKey {
            key: SpendKey {
                kind: kind_from_code(kind)?,
                bytes: key.to_vec(),
            },
            state: self.state,
            host_id: self.host_id,
            operation_id: self.operation_id,
        })
    }
}

impl PgSpentSet {
    pub fn new(store: PgStore) -> Self {
        PgSpentSet { store }
    }

    /// The store this set lives in.
    pub fn store(&self) -> &PgStore {
        &self.store
    }

    /// Claims every key with `state`, all or none, for `operation_id` (the lease id or the
    /// request the keys pay for) by this host. Durable when it returns `Ok`.
    ///
    /// A `Pending` claim repeated by the same host for the same operation and the same keys
    /// succeeds again: a caller that met `Unavailable` after sending (outcome unknown)
    /// retries with the same operation id and cannot lock its own payment out.
    pub async fn claim(
        &self,
        keys: &[SpendKey],
        state: SpendState,
        note: &str,
        operation_id: &str,
    ) -> Result<(), PgStoreError> {
        self.claim_inner(keys, state, note, operation_id, None)
            .await
    }

    /// Claims every key as `Spent`, all or none, keeping `receipt` with each; see
    /// [`payment::spent_set::SpentSet::claim_with_receipt`].
    pub async fn claim_with_receipt(
        &self,
        keys: &[SpendKey],
        note: &str,
        operation_id: &str,
        receipt: &[u8; 32],
    ) -> Result<(), PgStoreError> {
        self.claim_inner(keys, SpendState::Spent, note, operation_id, Some(receipt))
            .await
    }

    async fn claim_inner(
        &self,
        keys: &[SpendKey],
        state: SpendState,
        note: &str,
        operation_id: &str,
        receipt: Option<&[u8; 32]>,
    ) -> Result<(), PgStoreError> {
        let (kinds, bytes) = key_arrays(keys)?;
        let host = self.store.host_id().to_owned();
        for _ in 0..CLAIM_ATTEMPTS {
            let (kinds, bytes, host) = (&kinds, &bytes, &host);
            let outcome = self
                .store
                .with_client(1, |client| async move {
                    let stmt = client
                        .prepare_cached("SELECT coinop_claim($1, $2, $3, $4, $5, $6, $7)")
                        .await
                        .map_err(classify)?;
                    let receipt = receipt.map(|r| r.as_slice());
                    match client
                        .query_one(
                            &stmt,
                            &[
                                kinds,
                                bytes,
                                &state_code(state),
                                &note,
                                &receipt,
                                host,
                                &operation_id,
                            ],
                        )
                        .await
                    {
                        Ok(_) => Ok(None),
                        Err(e) if sql_state_is(&e, KEY_TAKEN) => {
                            Self::holders(&client, kinds, bytes).await.map(Some)
                        }
                        Err(e) => Err(classify(e)),
                    }
                })
                .await?;
            let Some(holders) = outcome else {
                return Ok(());
            };
            self.store.add_round_trips(1);
            let ours = |h: &Option<Holder>| {
                h.as_ref().is_some_and(|h| {
                    state == SpendState::Pending
                        && h.state == SpendState::Pending
                        && h.host_id == *host
                        && h.operation_id == operation_id
                })
            };
            if holders.iter().all(ours) {
                return Ok(());
            }
            // The first key held by anyone: the claim failed because of it. A repeat of our
            // own pending claim mixed with other keys is a different claim, and fails too.
            let taken = kinds
                .iter()
                .zip(bytes)
                .zip(&holders)
                .find_map(|((k, b), h)| h.as_ref().map(|h| (*k, *b, h.state)));
            if let Some((kind, key, state)) = taken {
                return Err(PgStoreError::AlreadyClaimed {
                    kind: kind_from_code(kind)?,
                    key_hex: hex::encode(key),
                    state,
                });
            }
            // Every holder let go between our insert and our read: try again.
        }
        Err(PgStoreError::Unavailable(format!(
            "claim kept conflicting with claims released at once, {CLAIM_ATTEMPTS} times"
        )))
    }

    /// Records keys this host spent on its own (before it joined the fleet) as `Spent`
    /// under this host and `operation_id`, one statement for all of them. Unlike
    /// [`PgSpentSet::claim`] this is not all or none: a key the store holds already is
    /// left as it is and reported ([`Published::already`] when it is this very
    /// publication's, else [`Published::held_elsewhere`]), and the others are recorded all
    /// the same, since each of them was spent, whatever became of its neighbours. So the
    /// same keys published again change nothing.
    pub async fn publish_spent(
        &self,
        keys: &[SpendKey],
        note: &str,
        operation_id: &str,
    ) -> Result<Published, PgStoreError> {
        let (mut kinds, mut bytes) = key_arrays(keys)?;
        let host = self.store.host_id().to_owned();
        let mut done = Published::default();
        for _ in 0..CLAIM_ATTEMPTS {
            let (k, b, h) = (&kinds, &bytes, &host);
            let (inserted, holders) = self
                .store
                .with_client(1, |client| async move {
                    let stmt = client
                        .prepare_cached(
                            "INSERT INTO coinop_spent_keys
                                 (kind, key, state, note, receipt, host_id, operation_id, spent_at)
                             SELECT k.kind, k.key, $3, $4, NULL, $5, $6, now()
                             FROM unnest($1::smallint[], $2::bytea[]) AS k(kind, key)
                             ON CONFLICT (kind, key) DO NOTHING
                             RETURNING kind, key",
                        )
                        .await
                        .map_err(classify)?;
                    let spent = state_code(SpendState::Spent);
                    let rows = client
                        .query(&stmt, &[k, b, &spent, &note, h, &operation_id])
                        .await
                        .map_err(classify)?;
                    let inserted: HashSet<(i16, Vec<u8>)> =
                        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                    if inserted.len() == k.len() {
                        return Ok((inserted, Vec::new()));
                    }
                    // The rest were held by someone: who, read in a fresh snapshot (a key
                    // whose holder committed after this statement's snapshot is seen now).
                    let (rest_k, rest_b): (Vec<i16>, Vec<&[u8]>) = k
                        .iter()
                        .zip(b)
                        .filter(|(kind, key)| !inserted.contains(&(**kind, key.to_vec())))
                        .map(|(kind, key)| (*kind, *key))
                        .unzip();
                    let holders = Self::holders(&client, &rest_k, &rest_b).await?;
                    let held: Vec<HeldRow<'_>> =
                        rest_k.into_iter().zip(rest_b).zip(holders).collect();
                    Ok((inserted, held))
                })
                .await?;
            if !holders.is_empty() {
                // The read of the holders.
                self.store.add_round_trips(1);
            }
            done.inserted += inserted.len();
            let mut again = (Vec::new(), Vec::new());
            for ((kind, key), holder) in holders {
                match holder {
                    Some(h)
                        if h.state == SpendState::Spent
                            && h.host_id == host
                            && h.operation_id == operation_id =>
                    {
                        done.already += 1;
                    }
                    Some(h) if h.state == SpendState::Pending && h.host_id != host => {
                        let taken = self
                            .take_over_pending(kind, key, &h, note, operation_id)
                            .await?;
                        let held = h.held_key(kind, key)?;
                        if taken {
                            done.taken_over.push(held);
                        } else {
                            // Settled or released meanwhile: looked at again.
                            again.0.push(kind);
                            again.1.push(key);
                        }
                    }
                    Some(h) => done.held_elsewhere.push(h.held_key(kind, key)?),
                    // Its holder let go between the insert and the read: try it again.
                    None => {
                        again.0.push(kind);
                        again.1.push(key);
                    }
                }
            }
            if again.0.is_empty() {
                return Ok(done);
            }
            (kinds, bytes) = again;
        }
        Err(PgStoreError::Unavailable(format!(
            "publishing kept meeting claims released at once, {CLAIM_ATTEMPTS} times"
        )))
    }

    /// Records `Spent` under this host and `operation_id` a key that `holder` (another
    /// host) holds `Pending`, if it still does; whether it did.
    async fn take_over_pending(
        &self,
        kind: i16,
        key: &[u8],
        holder: &Holder,
        note: &str,
        operation_id: &str,
    ) -> Result<bool, PgStoreError> {
        let host = self.store.host_id().to_owned();
        let (their_host, their_op) = (holder.host_id.clone(), holder.operation_id.clone());
        let key = key.to_vec();
        self.store
            .with_client(1, |client| async move {
                let stmt = client
                    .prepare_cached(
                        "UPDATE coinop_spent_keys
                         SET state = $3, note = $4, receipt = NULL, host_id = $5,
                             operation_id = $6, spent_at = now()
                         WHERE kind = $1 AND key = $2 AND state = $7 AND host_id = $8
                           AND operation_id = $9",
                    )
                    .await
                    .map_err(classify)?;
                let n = client
                    .execute(
                        &stmt,
                        &[
                            &kind,
                            &key,
                            &state_code(SpendState::Spent),
                            &note,
                            &host,
                            &operation_id,
                            &state_code(SpendState::Pending),
                            &their_host,
                            &their_op,
                        ],
                    )
                    .await
                    .map_err(classify)?;
                Ok(n == 1)
            })
            .await
    }

    /// Who holds each key (in the order given), read in a fresh snapshot.
    pub(crate) async fn holders(
        client: &deadpool_postgres::Client,
        kinds: &[i16],
        bytes: &[&[u8]],
    ) -> Result<Vec<Option<Holder>>, PgStoreError> {
        let stmt = client
            .prepare_cached(
                "SELECT s.state, s.host_id, s.operation_id
                 FROM unnest($1::smallint[], $2::bytea[]) WITH ORDINALITY AS k(kind, key, n)
                 LEFT JOIN coinop_spent_keys s ON s.kind = k.kind AND s.key = k.key
                 ORDER BY k.n",
            )
            .await
            .map_err(classify)?;
        let rows = client
            .query(&stmt, &[&kinds, &bytes])
            .await
            .map_err(classify)?;
        rows.iter()
            .map(|row| {
                let state: Option<i16> = row.get(0);
                state
                    .map(|s| {
                        Ok(Holder {
                            state: state_from_code(s)?,
                            host_id: row.get(1),
                            operation_id: row.get(2),
                        })
                    })
                    .transpose()
            })
            .collect()
    }

    /// Whether every key (at least one) is held by this host for `operation_id`, in any
    /// state: a request repeated after its operation delivered (its reply lost) is
    /// recognised by this, and answered from the host's own ledger.
    pub async fn held_for_operation(
        &self,
        keys: &[SpendKey],
        operation_id: &str,
    ) -> Result<bool, PgStoreError> {
        if keys.is_empty() {
            return Ok(false);
        }
        let kinds: Vec<i16> = keys.iter().map(|k| kind_code(k.kind)).collect();
        let bytes: Vec<&[u8]> = keys.iter().map(|k| k.bytes.as_slice()).collect();
        let host = self.store.host_id().to_owned();
        self.store
            .with_client(1, |client| async move {
                let holders = Self::holders(&client, &kinds, &bytes).await?;
                Ok(holders.iter().all(|h| {
                    h.as_ref()
                        .is_some_and(|h| h.host_id == host && h.operation_id == operation_id)
                }))
            })
            .await
    }

    /// Whether every key (at least one) is spent with exactly `receipt`; see
    /// [`payment::spent_set::SpentSet::spent_with`].
    pub async fn spent_with(
        &self,
        keys: &[SpendKey],
        receipt: &[u8; 32],
    ) -> Result<bool, PgStoreError> {
        if keys.is_empty() {
            return Ok(false);
        }
        let (kinds, bytes) = key_arrays(keys)?;
        let n =
            i64::try_from(keys.len()).map_err(|_| PgStoreError::Config("too many keys".into()))?;
        self.store
            .with_client(1, |client| async move {
                let stmt = client
                    .prepare_cached(
                        "SELECT count(*) FROM unnest($1::smallint[], $2::bytea[]) AS k(kind, key)
                         JOIN coinop_spent_keys s ON s.kind = k.kind AND s.key = k.key
                         WHERE s.state = 2 AND s.receipt = $3",
                    )
                    .await
                    .map_err(classify)?;
                let row = client
                    .query_one(&stmt, &[&kinds, &bytes, &receipt.as_slice()])
                    .await
                    .map_err(classify)?;
                Ok(row.get::<_, i64>(0) == n)
            })
            .await
    }

    /// Ends `operation_id`'s pending claim as delivered: the keys it holds pending under
    /// this host become `Spent`, and a key nobody holds is recorded `Spent` for it (the
    /// host's ledger spent the keys, so the store must hold them, even if the claim was
    /// lost). Keys it holds `Spent` already (a settle repeated) are fine. A key held by
    /// anyone else is left as it is and reported in [`PgStoreError::HeldElsewhere`], after
    /// every other key was recorded: the caller decides what it means (another operation
    /// of this host settles its own claim; another host's is a key spent twice, or about
    /// to be).
    pub async fn commit_pending(
        &self,
        keys: &[SpendKey],
        operation_id: &str,
    ) -> Result<(), PgStoreError> {
        let (kinds, bytes) = key_arrays(keys)?;
        let host = self.store.host_id().to_owned();
        let spent = state_code(SpendState::Spent);
        let (kinds, bytes, host) = (&kinds, &bytes, &host);
        for _ in 0..CLAIM_ATTEMPTS {
            let held = self
                .store
                .with_client(1, |client| async move {
                    let stmt = client
                        .prepare_cached("SELECT coinop_settle_operation($1, $2, $3, $4, $5)")
                        .await
                        .map_err(classify)?;
                    let row = client
                        .query_one(&stmt, &[kinds, bytes, host, &operation_id, &spent])
                        .await
                        .map_err(classify)?;
                    let ours: i32 = row.get(0);
                    if usize::try_from(ours).is_ok_and(|n| n == kinds.len()) {
                        return Ok(None);
                    }
                    Self::holders(&client, kinds, bytes).await.map(Some)
                })
                .await?;
            let Some(holders) = held else {
                return Ok(());
            };
            self.store.add_round_trips(1);
            let (mut elsewhere, mut let_go) = (Vec::new(), false);
            for ((kind, key), holder) in kinds.iter().zip(bytes.iter()).zip(holders) {
                match holder {
                    Some(h)
                        if h.state == SpendState::Spent
                            && h.host_id == *host
                            && h.operation_id == operation_id => {}
                    Some(h) => elsewhere.push(h.held_key(*kind, key)?),
                    // Its holder let go between the commit and the read: the commit,
                    // which changes nothing already done, records it on the next pass.
                    None => let_go = true,
                }
            }
            if !let_go {
                return if elsewhere.is_empty() {
                    // A holder committed it for this operation in between: all ours.
                    Ok(())
                } else {
                    Err(PgStoreError::HeldElsewhere(elsewhere))
                };
            }
        }
        Err(PgStoreError::Unavailable(format!(
            "committing kept meeting claims released at once, {CLAIM_ATTEMPTS} times"
        )))
    }

    /// Ends `operation_id`'s pending claim as not delivered: forgets the keys it holds
    /// pending under this host, and nothing else. A key it no longer holds (released
    /// already, and perhaps fenced again by another operation since: a release retried
    /// after its reply was lost) is left as it is, so a late release cannot free another
    /// operation's claim. Returns how many keys were released.
    pub async fn release_pending(
        &self,
        keys: &[SpendKey],
        operation_id: &str,
    ) -> Result<u64, PgStoreError> {
        let (kinds, bytes) = key_arrays(keys)?;
        let host = self.store.host_id().to_owned();
        let (kinds, bytes, host) = (&kinds, &bytes, &host);
        let released: i32 = self
            .store
            .with_client(1, |client| async move {
                let stmt = client
                    .prepare_cached("SELECT coinop_settle_operation($1, $2, $3, $4, $5)")
                    .await
                    .map_err(classify)?;
                let row = client
                    .query_one(&stmt, &[kinds, bytes, host, &operation_id, &0i16])
                    .await
                    .map_err(classify)?;
                Ok(row.get(0))
            })
            .await?;
        u64::try_from(released)
            .map_err(|_| PgStoreError::Corrupt(format!("{released} keys released")))
    }

    /// Ends this host's pending claim on every key, whatever operation made it, all or
    /// none: `Spent`, or forgotten. Only for [`payment::spent_set::SpentKeyStore`], whose
    /// settles name no operation (code written for one host's spent set); coinopd settles
    /// with [`PgSpentSet::commit_pending`] and [`PgSpentSet::release_pending`], since a
    /// settle by host alone can end another operation's claim of the same keys.
    pub(crate) async fn settle_any_operation(
        &self,
        keys: &[SpendKey],
        to: Option<SpendState>,
    ) -> Result<(), PgStoreError> {
        let (kinds, bytes) = key_arrays(keys)?;
        let host = self.store.host_id().to_owned();
        let to = to.map_or(0, state_code);
        let host = &host;
        let missing = self
            .store
            .with_client(1, |client| async move {
                let stmt = client
                    .prepare_cached("SELECT coinop_settle($1, $2, $3, $4)")
                    .await
                    .map_err(classify)?;
                match client.query_one(&stmt, &[&kinds, &bytes, host, &to]).await {
                    Ok(_) => Ok(None),
                    Err(e) if sql_state_is(&e, NOT_PENDING) => {
                        let holders = Self::holders(&client, &kinds, &bytes).await?;
                        // The first key not pending under this host.
                        let i = holders.iter().position(|h| {
                            !h.as_ref().is_some_and(|h| {
                                h.state == SpendState::Pending && h.host_id == *host
                            })
                        });
                        Ok(Some(i.unwrap_or(0)))
                    }
                    Err(e) => Err(classify(e)),
                }
                .map(|i| i.map(|i| (kinds[i], bytes[i].to_vec())))
            })
            .await?;
        match missing {
            None => Ok(()),
            Some((kind, key)) => {
                self.store.add_round_trips(1);
                Err(PgStoreError::NotPending {
                    kind: kind_from_code(kind)?,
                    key_hex: hex::encode(key),
                })
            }
        }
    }

    /// The state of each key, in order; `None` for a key never claimed.
    pub async fn states(&self, keys: &[SpendKey]) -> Result<Vec<Option<SpendState>>, PgStoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let kinds: Vec<i16> = keys.iter().map(|k| kind_code(k.kind)).collect();
        let bytes: Vec<&[u8]> = keys.iter().map(|k| k.bytes.as_slice()).collect();
        self.store
            .with_client(1, |client| async move {
                let holders = Self::holders(&client, &kinds, &bytes).await?;
                Ok(holders.into_iter().map(|h| h.map(|h| h.state)).collect())
            })
            .await
    }

    /// This host's pending claims, grouped by operation, oldest first.
    pub async fn pending_operations(&self) -> Result<Vec<PendingOperation>, PgStoreError> {
        let host = self.store.host_id().to_owned();
        let rows = self
            .store
            .with_client(1, |client| async move {
                client
                    .query(
                        "SELECT operation_id, note, kind, key, claimed_at
                         FROM coinop_spent_keys WHERE state = 1 AND host_id = $1
                         ORDER BY claimed_at, operation_id, kind, key",
                        &[&host],
                    )
                    .await
                    .map_err(classify)
            })
            .await?;
        let mut ops: Vec<PendingOperation> = Vec::new();
        for row in rows {
            let operation_id: String = row.get(0);
            let key = SpendKey {
                kind: kind_from_code(row.get(2))?,
                bytes: row.get(3),
            };
            match ops.iter_mut().find(|op| op.operation_id == operation_id) {
                Some(op) => op.keys.push(key),
                None => ops.push(PendingOperation {
                    operation_id,
                    note: row.get(1),
                    keys: vec![key],
                    claimed_at: row.get(4),
                }),
            }
        }
        Ok(ops)
    }

    /// Settles every pending claim of this host that survived a crash: an operation the
    /// local ledger committed (`committed_locally` says `Some(true)`) has its keys marked
    /// `Spent`, one it never committed (`Some(false)`) has them released, and one it cannot
    /// tell about (`None`: its ledger unreadable now) keeps them pending, in
    /// [`Reconciled::undecided`]. Run at start-up before taking requests, and again until it
    /// succeeds if the store was unavailable then (the keys stay taken meanwhile: nothing
    /// is lost, nothing can be spent twice).
    pub async fn reconcile(
        &self,
        mut committed_locally: impl FnMut(&PendingOperation) -> Option<bool>,
    ) -> Result<Reconciled, PgStoreError> {
        let mut done = Reconciled::default();
        for op in self.pending_operations().await? {
            match committed_locally(&op) {
                Some(true) => {
                    self.commit_pending(&op.keys, &op.operation_id).await?;
                    tracing::info!(operation = %op.operation_id, "store: pending claim completed");
                    done.committed.push(op.operation_id);
                }
                Some(false) => {
                    self.release_pending(&op.keys, &op.operation_id).await?;
                    tracing::info!(operation = %op.operation_id, "store: pending claim released");
                    done.released.push(op.operation_id);
                }
                None => done.undecided.push(op.operation_id),
            }
        }
        Ok(done)
    }
}
