//! The fleet's signed blinded messages in PostgreSQL: each `B_` signed at most once across
//! the hosts (NUT-00 11003), the signatures handed out again to a NUT-09 restore on any
//! host, and to the same request retried on another host. A host reserves the `B_`s of an
//! operation with their signatures (`Pending`, naming itself and the operation) before its
//! local commit, and settles them after: delivered, or released (see the crate doc).

use std::collections::HashSet;

use payment::spent_set::SignedOutput;
use tokio_postgres::error::SqlState;

use crate::error::{classify, PgStoreError};
use crate::store::PgStore;

/// Raised by `coinop_reserve_outputs` when a `B_` is taken (migrations/0002).
pub(crate) const OUTPUT_TAKEN: &str = "CO003";
/// A conflict whose holder let go before we could read it is retried this often.
const RESERVE_ATTEMPTS: usize = 4;

/// Whether a reserved signature has been delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputState {
    /// Reserved for an operation whose local commit is not confirmed yet.
    Pending,
    /// The operation committed: the signature is the wallet's.
    Delivered,
}

/// How [`PgSignedOutputs::settle_as_recorded`] ended an operation's reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Every pending signature of the operation was the one recorded: `rows` delivered.
    Delivered { rows: u64 },
    /// Some pending signature was not recorded as it is reserved: `rows` released.
    Released { rows: u64 },
}

/// What [`PgSignedOutputs::publish_delivered`] did with the signatures it was given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishedOutputs {
    /// Signatures this call recorded as delivered.
    pub inserted: usize,
    /// `B_`s the store held delivered with the same keyset, amount and `C_` (published
    /// before, or signed through the fleet by this host and recorded here too).
    pub same: usize,
    /// `B_`s the store held delivered with another signature (keyset, amount or `C_`):
    /// another host signed them too. Each with our signature and the stored row, which is
    /// left as it is.
    pub signed_twice: Vec<(SignedOutput, StoredOutput)>,
    /// `B_`s another host held pending (a request of its in flight), now delivered under
    /// this publication, each with that host's row as it was. Left pending, its request
    /// could fail and release them, and the store would then hold nothing of a `B_` this
    /// host signed. That host's settle finds nothing of them pending any more.
    pub taken_over: Vec<StoredOutput>,
    /// `B_`s this host itself holds pending (none is, once its start-up settled its
    /// reservations): left as they are, to publish again at a later start.
    pub left: Vec<Vec<u8>>,
}

/// One host's operation with reserved, unsettled signatures, found at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingOutputs {
    pub operation_id: String,
    /// The `B_`s reserved for it.
    pub b_s: Vec<Vec<u8>>,
}

/// A stored row: the signature, and who holds it how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredOutput {
    pub signed: SignedOutput,
    pub state: OutputState,
    pub host_id: String,
    pub operation_id: String,
}

/// Signed outputs as the parallel arrays `coinop_reserve_outputs` takes, sorted by `B_` so
/// that two overlapping reservations insert in the same order (no deadlock between them).
pub(crate) struct OutputColumns<'a> {
    pub(crate) b_s: Vec<&'a [u8]>,
    pub(crate) keysets: Vec<&'a str>,
    pub(crate) amounts: Vec<i64>,
    pub(crate) c_s: Vec<&'a [u8]>,
    pub(crate) es: Vec<Option<&'a [u8]>>,
    pub(crate) ss: Vec<Option<&'a [u8]>>,
}

impl<'a> OutputColumns<'a> {
    pub(crate) fn of(signed: &'a [SignedOutput]) -> Result<Self, PgStoreError> {
        let mut sorted: Vec<&SignedOutput> = signed.iter().collect();
        sorted.sort_unstable_by(|a, b| a.b_.cmp(&b.b_));
        Ok(OutputColumns {
            b_s: sorted.iter().map(|s| s.b_.as_slice()).collect(),
            keysets: sorted.iter().map(|s| s.keyset_id.as_str()).collect(),
            amounts: sorted
                .iter()
                .map(|s| amount_param(s.amount))
                .collect::<Result<Vec<i64>, _>>()?,
            c_s: sorted.iter().map(|s| s.c_.as_slice()).collect(),
            es: sorted
                .iter()
                .map(|s| s.dleq.as_ref().map(|(e, _)| e.as_slice()))
                .collect(),
            ss: sorted
                .iter()
                .map(|s| s.dleq.as_ref().map(|(_, s)| s.as_slice()))
                .collect(),
        })
    }
}

/// [`OutputColumns`] borrowed, as `reserve` passes them on.
type Columns<'a> = (
    &'a [&'a [u8]],
    &'a [&'a str],
    &'a [i64],
    &'a [&'a [u8]],
    &'a [Option<&'a [u8]>],
    &'a [Option<&'a [u8]>],
);

/// The signed blinded messages of the fleet. Cheap to clone (shares the store's pool).
#[derive(Clone, Debug)]
pub struct PgSignedOutputs {
    store: PgStore,
}

fn amount_param(amount: u64) -> Result<i64, PgStoreError> {
    i64::try_from(amount).map_err(|_| PgStoreError::Config(format!("amount {amount}")))
}

fn scalar(bytes: Option<Vec<u8>>) -> Result<Option<[u8; 32]>, PgStoreError> {
    bytes
        .map(|b| {
            b.try_into().map_err(|b: Vec<u8>| {
                PgStoreError::Corrupt(format!("a DLEQ value of {} bytes", b.len()))
            })
        })
        .transpose()
}

impl PgSignedOutputs {
    pub fn new(store: PgStore) -> Self {
        PgSignedOutputs { store }
    }

    /// Reserves every `B_` of `signed` with its signature for `operation_id` by this host,
    /// all or none. A `B_` held by anyone else (another operation, or another host) fails
    /// the whole call with [`PgStoreError::OutputAlreadySigned`]; the same reservation
    /// repeated by this host for this operation succeeds (a retry after an unknown
    /// outcome, or the same request again after it was delivered). Repeated with other
    /// signatures of the same `B_`s, its pending rows take the new ones (the operation
    /// signed again, and its local commit records those); a delivered one is refused.
    pub async fn reserve(
        &self,
        signed: &[SignedOutput],
        operation_id: &str,
    ) -> Result<(), PgStoreError> {
        if signed.is_empty() {
            return Ok(());
        }
        let mut seen = HashSet::with_capacity(signed.len());
        if let Some(dup) = signed.iter().find(|s| !seen.insert(s.b_.as_slice())) {
            return Err(PgStoreError::OutputAlreadySigned {
                b_hex: hex::encode(&dup.b_),
            });
        }
        let OutputColumns {
            b_s,
            keysets,
            amounts,
            c_s,
            es,
            ss,
        } = OutputColumns::of(signed)?;
        let host = self.store.host_id().to_owned();
        for _ in 0..RESERVE_ATTEMPTS {
            let (b_s, keysets, amounts, c_s, es, ss, host) =
                (&b_s, &keysets, &amounts, &c_s, &es, &ss, &host);
            let outcome = self
                .store
                .with_client(1, |client| async move {
                    let stmt = client
                        .prepare_cached(
                            "SELECT coinop_reserve_outputs($1, $2, $3, $4, $5, $6, $7, $8)",
                        )
                        .await
                        .map_err(classify)?;
                    match client
                        .query_one(
                            &stmt,
                            &[
                                &b_s,
                                &keysets,
                                &amounts,
                                &c_s,
                                &es,
                                &ss,
                                host,
                                &operation_id,
                            ],
                        )
                        .await
                    {
                        Ok(_) => Ok(None),
                        Err(e) if e.code() == Some(&SqlState::from_code(OUTPUT_TAKEN)) => {
                            Self::rows(&client, b_s).await.map(Some)
                        }
                        Err(e) => Err(classify(e)),
                    }
                })
                .await?;
            let Some(holders) = outcome else {
                return Ok(());
            };
            self.store.add_round_trips(1);
            let ours = |h: &Option<StoredOutput>| {
                h.as_ref()
                    .is_some_and(|h| h.host_id == *host && h.operation_id == operation_id)
            };
            if holders.iter().all(ours) {
                let columns = (
                    b_s.as_slice(),
                    keysets.as_slice(),
                    amounts.as_slice(),
                    c_s.as_slice(),
                    es.as_slice(),
                    ss.as_slice(),
                );
                match self.replace_stale(&holders, columns, operation_id).await? {
                    true => return Ok(()),
                    // A row changed state in between: looked at again.
                    false => continue,
                }
            }
            let taken = b_s
                .iter()
                .zip(&holders)
                .find(|(_, h)| h.is_some() && !ours(h));
            if let Some((b_, _)) = taken {
                return Err(PgStoreError::OutputAlreadySigned {
                    b_hex: hex::encode(b_),
                });
            }
            // Every other holder let go between our insert and our read: try again.
        }
        Err(PgStoreError::Unavailable(format!(
            "reserving outputs kept conflicting with reservations released at once, \
             {RESERVE_ATTEMPTS} times"
        )))
    }

    /// This operation holds every `B_` already (`holders`, in the order of the columns):
    /// a retry, or the same operation signing again. Pending rows whose signature is not
    /// the one given now (the same `B_`s signed for other amounts: a fleet refund signed
    /// again after its balance moved, its first reservation left pending by a settle that
    /// did not reach the store) take the new signatures, else a settle would deliver the
    /// stale ones. A delivered row is never changed: another signature of it is refused
    /// as already signed. Whether the reservation now holds the signatures given (`false`:
    /// a row changed state in between, to look at again).
    async fn replace_stale(
        &self,
        holders: &[Option<StoredOutput>],
        columns: Columns<'_>,
        operation_id: &str,
    ) -> Result<bool, PgStoreError> {
        let (b_s, keysets, amounts, c_s, es, ss) = columns;
        let mut stale = false;
        for (i, held) in holders.iter().enumerate() {
            let Some(held) = held else { continue };
            // The DLEQ proof is left out: signing again may prove the same `C_` otherwise.
            let same = held.signed.keyset_id == keysets[i]
                && amount_param(held.signed.amount)? == amounts[i]
                && held.signed.c_ == c_s[i];
            if same {
                continue;
            }
            if held.state == OutputState::Delivered {
                return Err(PgStoreError::OutputAlreadySigned {
                    b_hex: hex::encode(b_s[i]),
                });
            }
            stale = true;
        }
        if !stale {
            return Ok(true);
        }
        let pending = holders
            .iter()
            .flatten()
            .filter(|h| h.state == OutputState::Pending)
            .count();
        let host = self.store.host_id().to_owned();
        let host = &host;
        let replaced = self
            .store
            .with_client(1, |client| async move {
                let stmt = client
                    .prepare_cached(
                        "UPDATE coinop_signed_outputs o
                         SET keyset_id = n.keyset, amount = n.amount, c_ = n.c,
                             dleq_e = n.e, dleq_s = n.s, signed_at = now()
                         FROM unnest($1::bytea[], $2::text[], $3::bigint[], $4::bytea[],
                                     $5::bytea[], $6::bytea[]) AS n(b, keyset, amount, c, e, s)
                         WHERE o.b_ = n.b AND o.host_id = $7 AND o.operation_id = $8
                           AND o.state = 1",
                    )
                    .await
                    .map_err(classify)?;
                client
                    .execute(
                        &stmt,
                        &[
                            &b_s,
                            &keysets,
                            &amounts,
                            &c_s,
                            &es,
                            &ss,
                            host,
                            &operation_id,
                        ],
                    )
                    .await
                    .map_err(classify)
            })
            .await?;
        Ok(usize::try_from(replaced).is_ok_and(|n| n == pending))
    }

    /// Records signatures this host made on its own (before it joined the fleet, or while
    /// it ran without its `--store`) as delivered under this host and `operation_id`, one
    /// statement for all of them. Unlike [`PgSignedOutputs::reserve`] this is not all or
    /// none: each was handed out, whatever became of its neighbours, so a `B_` the store
    /// holds already is reported (see [`PublishedOutputs`]) and the others are recorded
    /// all the same. The same signatures published again change nothing.
    pub async fn publish_delivered(
        &self,
        signed: &[SignedOutput],
        operation_id: &str,
    ) -> Result<PublishedOutputs, PgStoreError> {
        let mut done = PublishedOutputs::default();
        let mut todo: Vec<SignedOutput> = signed.to_vec();
        // A `B_` twice in one call would make the insert touch a row twice: once is enough.
        let mut seen = HashSet::with_capacity(todo.len());
        todo.retain(|s| seen.insert(s.b_.clone()));
        let host = self.store.host_id().to_owned();
        for _ in 0..RESERVE_ATTEMPTS {
            let cols = OutputColumns::of(&todo)?;
            let (cols, h) = (&cols, &host);
            let (inserted, holders) = self
                .store
                .with_client(1, |client| async move {
                    let stmt = client
                        .prepare_cached(
                            "INSERT INTO coinop_signed_outputs
                                 (b_, keyset_id, amount, c_, dleq_e, dleq_s, state, host_id,
                                  operation_id, delivered_at)
                             SELECT o.b, o.keyset, o.amount, o.c, o.e, o.s, 2, $7, $8, now()
                             FROM unnest($1::bytea[], $2::text[], $3::bigint[], $4::bytea[],
                                         $5::bytea[], $6::bytea[]) AS o(b, keyset, amount, c, e, s)
                             ON CONFLICT (b_) DO NOTHING
                             RETURNING b_",
                        )
                        .await
                        .map_err(classify)?;
                    let rows = client
                        .query(
                            &stmt,
                            &[
                                &cols.b_s,
                                &cols.keysets,
                                &cols.amounts,
                                &cols.c_s,
                                &cols.es,
                                &cols.ss,
                                h,
                                &operation_id,
                            ],
                        )
                        .await
                        .map_err(classify)?;
                    let inserted: HashSet<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
                    if inserted.len() == cols.b_s.len() {
                        return Ok((inserted.len(), Vec::new()));
                    }
                    // The rest were held by someone: who, read in a fresh snapshot.
                    let rest: Vec<&[u8]> = cols
                        .b_s
                        .iter()
                        .filter(|b| !inserted.contains(**b))
                        .copied()
                        .collect();
                    let holders = Self::rows(&client, &rest).await?;
                    let held: Vec<(Vec<u8>, Option<StoredOutput>)> =
                        rest.into_iter().map(<[u8]>::to_vec).zip(holders).collect();
                    Ok((inserted.len(), held))
                })
                .await?;
            if !holders.is_empty() {
                // The read of the holders.
                self.store.add_round_trips(1);
            }
            done.inserted += inserted;
            let mut again = Vec::new();
            for (b_, holder) in holders {
                let Some(ours) = todo.iter().find(|s| s.b_ == b_) else {
                    continue; // Every `B_` read back is one of `todo`'s.
                };
                match holder {
                    Some(h) if h.state == OutputState::Delivered => {
                        // The DLEQ proof is left out: another proof of the same `C_` is
                        // the same signature.
                        let same = h.signed.keyset_id == ours.keyset_id
                            && h.signed.amount == ours.amount
                            && h.signed.c_ == ours.c_;
                        if same {
                            done.same += 1;
                        } else {
                            done.signed_twice.push((ours.clone(), h));
                        }
                    }
                    Some(h) if h.host_id == host => done.left.push(b_),
                    Some(h) => {
                        if self.take_over_pending(ours, &h, operation_id).await? {
                            done.taken_over.push(h);
                        } else {
                            again.push(ours.clone()); // Settled meanwhile: looked at again.
                        }
                    }
                    // Its holder let go between the insert and the read: try it again.
                    None => again.push(ours.clone()),
                }
            }
            if again.is_empty() {
                return Ok(done);
            }
            todo = again;
        }
        Err(PgStoreError::Unavailable(format!(
            "publishing signatures kept meeting reservations released at once, \
             {RESERVE_ATTEMPTS} times"
        )))
    }

    /// Records `ours` delivered under this host and `operation_id` in place of `holder`'s
    /// pending reservation of the same `B_` (another host's), if it still holds it;
    /// whether it did.
    async fn take_over_pending(
        &self,
        ours: &SignedOutput,
        holder: &StoredOutput,
        operation_id: &str,
    ) -> Result<bool, PgStoreError> {
        let host = self.store.host_id().to_owned();
        let amount = amount_param(ours.amount)?;
        let (e, s) = match &ours.dleq {
            Some((e, s)) => (Some(e.as_slice()), Some(s.as_slice())),
            None => (None, None),
        };
        let (host, amount) = (&host, &amount);
        let n = self
            .store
            .with_client(1, |client| async move {
                let stmt = client
                    .prepare_cached(
                        "UPDATE coinop_signed_outputs
                         SET keyset_id = $2, amount = $3, c_ = $4, dleq_e = $5, dleq_s = $6,
                             state = 2, host_id = $7, operation_id = $8, signed_at = now(),
                             delivered_at = now()
                         WHERE b_ = $1 AND state = 1 AND host_id = $9 AND operation_id = $10",
                    )
                    .await
                    .map_err(classify)?;
                client
                    .execute(
                        &stmt,
                        &[
                            &ours.b_,
                            &ours.keyset_id,
                            amount,
                            &ours.c_,
                            &e,
                            &s,
                            host,
                            &operation_id,
                            &holder.host_id,
                            &holder.operation_id,
                        ],
                    )
                    .await
                    .map_err(classify)
            })
            .await?;
        Ok(n == 1)
    }

    /// The stored row of each `B_`, in order; `None` for one never reserved.
    pub(crate) async fn rows(
        client: &deadpool_postgres::Client,
        b_s: &[&[u8]],
    ) -> Result<Vec<Option<StoredOutput>>, PgStoreError> {
        let stmt = client
            .prepare_cached(
                "SELECT k.b, o.keyset_id, o.amount, o.c_, o.dleq_e, o.dleq_s, o.state,
                        o.host_id, o.operation_id
                 FROM unnest($1::bytea[]) WITH ORDINALITY AS k(b, n)
                 LEFT JOIN coinop_signed_outputs o ON o.b_ = k.b
                 ORDER BY k.n",
            )
            .await
            .map_err(classify)?;
        let rows = client.query(&stmt, &[&b_s]).await.map_err(classify)?;
        rows.iter()
            .map(|row| {
                let Some(keyset_id) = row.get::<_, Option<String>>(1) else {
                    return Ok(None);
                };
                let amount: i64 = row.get(2);
                let dleq = match (scalar(row.get(4))?, scalar(row.get(5))?) {
                    (Some(e), Some(s)) => Some((e, s)),
                    _ => None,
                };
                let state = match row.get::<_, i16>(6) {
                    1 => OutputState::Pending,
                    2 => OutputState::Delivered,
                    other => {
                        return Err(PgStoreError::Corrupt(format!(
                            "coinop_signed_outputs.state {other}"
                        )))
                    }
                };
                Ok(Some(StoredOutput {
                    signed: SignedOutput {
                        b_: row.get(0),
                        keyset_id,
                        amount: u64::try_from(amount).map_err(|_| {
                            PgStoreError::Corrupt(format!("coinop_signed_outputs.amount {amount}"))
                        })?,
                        c_: row.get(3),
                        dleq,
                    },
                    state,
                    host_id: row.get(7),
                    operation_id: row.get(8),
                }))
            })
            .collect()
    }

    /// The stored row of each `B_` (33 bytes), in order, in any state.
    pub async fn lookup(&self, b_s: &[Vec<u8>]) -> Result<Vec<Option<StoredOutput>>, PgStoreError> {
        if b_s.is_empty() {
            return Ok(Vec::new());
        }
        let b_s: Vec<&[u8]> = b_s.iter().map(Vec::as_slice).collect();
        self.store
            .with_client(1, |client| async move { Self::rows(&client, &b_s).await })
            .await
    }

    /// The delivered signature of each `B_`, in order; `None` for one never signed or
    /// not delivered yet (a pending reservation's payment may still be released, so its
    /// signature is nobody's yet): what NUT-09 restore hands out.
    pub async fn delivered(
        &self,
        b_s: &[Vec<u8>],
    ) -> Result<Vec<Option<SignedOutput>>, PgStoreError> {
        Ok(self
            .lookup(b_s)
            .await?
            .into_iter()
            .map(|row| {
                row.filter(|r| r.state == OutputState::Delivered)
                    .map(|r| r.signed)
            })
            .collect())
    }

    /// The signatures of `b_s` if every one (at least one) was delivered for
    /// `operation_id`, on any host: the same request again, answered with what it got.
    pub async fn delivered_for_operation(
        &self,
        b_s: &[Vec<u8>],
        operation_id: &str,
    ) -> Result<Option<Vec<SignedOutput>>, PgStoreError> {
        if b_s.is_empty() {
            return Ok(None);
        }
        let rows = self.lookup(b_s).await?;
        let all = rows.iter().all(|r| {
            r.as_ref().is_some_and(|r| {
                r.state == OutputState::Delivered && r.operation_id == operation_id
            })
        });
        Ok(all.then(|| rows.into_iter().flatten().map(|r| r.signed).collect()))
    }

    /// Ends this host's pending reservation for `operation_id`: `delivered` marks its
    /// signatures delivered, else forgets them (the `B_`s may be signed again). Settling
    /// an operation with nothing pending (settled already) is not an error. Returns how
    /// many rows changed.
    pub async fn settle(&self, operation_id: &str, delivered: bool) -> Result<u64, PgStoreError> {
        let host = self.store.host_id().to_owned();
        let host = &host;
        self.store
            .with_client(1, |client| async move {
                let sql = if delivered {
                    "UPDATE coinop_signed_outputs SET state = 2, delivered_at = now()
                     WHERE host_id = $1 AND operation_id = $2 AND state = 1"
                } else {
                    "DELETE FROM coinop_signed_outputs
                     WHERE host_id = $1 AND operation_id = $2 AND state = 1"
                };
                let stmt = client.prepare_cached(sql).await.map_err(classify)?;
                client
                    .execute(&stmt, &[host, &operation_id])
                    .await
                    .map_err(classify)
            })
            .await
    }

    /// Ends this host's pending reservation for `operation_id` by what the local spent set
    /// `recorded` (its signatures of the operation's `B_`s, as read there): delivered if
    /// every pending signature of the operation is one of `recorded` (same `B_`, keyset,
    /// amount and `C_`), else released, all of them. A local record of a `B_` is not
    /// enough: a host's spent set also holds what it signed before it joined the fleet,
    /// which the store never saw, so an operation that reserved such a `B_` at another
    /// amount and then failed locally (11003) finds *a* record there, not its own, and
    /// delivering its reservation would hand that signature to NUT-09 restore on every
    /// host without anything paid for it. The verdict and the settle are one statement.
    /// Nothing pending (settled already) is `Delivered { rows: 0 }`.
    pub async fn settle_as_recorded(
        &self,
        operation_id: &str,
        recorded: &[SignedOutput],
    ) -> Result<Settled, PgStoreError> {
        let OutputColumns {
            b_s,
            keysets,
            amounts,
            c_s,
            ..
        } = OutputColumns::of(recorded)?;
        let host = self.store.host_id().to_owned();
        let (host, b_s, keysets, amounts, c_s) = (&host, &b_s, &keysets, &amounts, &c_s);
        let (delivered, rows) = self
            .store
            .with_client(1, |client| async move {
                // Only one of the UPDATE and the DELETE matches rows (the verdict is one
                // boolean), so no row is changed twice by the statement.
                let stmt = client
                    .prepare_cached(
                        "WITH mine AS (
                             SELECT b_, keyset_id, amount, c_ FROM coinop_signed_outputs
                             WHERE host_id = $1 AND operation_id = $2 AND state = 1
                         ),
                         recorded AS (
                             SELECT * FROM unnest($3::bytea[], $4::text[], $5::bigint[],
                                                  $6::bytea[]) AS r(b_, keyset_id, amount, c_)
                         ),
                         verdict AS (
                             SELECT NOT EXISTS (
                                 SELECT 1 FROM mine m WHERE NOT EXISTS (
                                     SELECT 1 FROM recorded r
                                     WHERE r.b_ = m.b_ AND r.keyset_id = m.keyset_id
                                       AND r.amount = m.amount AND r.c_ = m.c_
                                 )
                             ) AS delivered
                         ),
                         delivered AS (
                             UPDATE coinop_signed_outputs o
                             SET state = 2, delivered_at = now()
                             FROM verdict v
                             WHERE v.delivered AND o.host_id = $1 AND o.operation_id = $2
                               AND o.state = 1
                             RETURNING 1
                         ),
                         released AS (
                             DELETE FROM coinop_signed_outputs o USING verdict v
                             WHERE NOT v.delivered AND o.host_id = $1 AND o.operation_id = $2
                               AND o.state = 1
                             RETURNING 1
                         )
                         SELECT (SELECT delivered FROM verdict),
                                (SELECT count(*) FROM delivered) + (SELECT count(*) FROM released)",
                    )
                    .await
                    .map_err(classify)?;
                let row = client
                    .query_one(&stmt, &[host, &operation_id, b_s, keysets, amounts, c_s])
                    .await
                    .map_err(classify)?;
                Ok((row.get::<_, bool>(0), row.get::<_, i64>(1)))
            })
            .await?;
        let rows = u64::try_from(rows)
            .map_err(|_| PgStoreError::Corrupt(format!("{rows} rows settled")))?;
        Ok(if delivered {
            Settled::Delivered { rows }
        } else {
            Settled::Released { rows }
        })
    }

    /// This host's pending reservations, by operation, oldest first.
    pub async fn pending_operations(&self) -> Result<Vec<PendingOutputs>, PgStoreError> {
        let host = self.store.host_id().to_owned();
        let rows = self
            .store
            .with_client(1, |client| async move {
                client
                    .query(
                        "SELECT operation_id, b_ FROM coinop_signed_outputs
                         WHERE state = 1 AND host_id = $1
                         ORDER BY signed_at, operation_id, b_",
                        &[&host],
                    )
                    .await
                    .map_err(classify)
            })
            .await?;
        let mut ops: Vec<PendingOutputs> = Vec::new();
        for row in rows {
            let operation_id: String = row.get(0);
            let b_: Vec<u8> = row.get(1);
            match ops.iter_mut().find(|op| op.operation_id == operation_id) {
                Some(op) => op.b_s.push(b_),
                None => ops.push(PendingOutputs {
                    operation_id,
                    b_s: vec![b_],
                }),
            }
        }
        Ok(ops)
    }

    /// Settles every pending reservation of this host that survived a crash: delivered if
    /// `committed_locally` says the local ledger recorded its signatures (they commit in
    /// the same SQLite transaction as what paid for them), else released. Run at start-up
    /// before serving money requests. Returns (delivered, released) operation ids.
    pub async fn reconcile(
        &self,
        mut committed_locally: impl FnMut(&PendingOutputs) -> bool,
    ) -> Result<(Vec<String>, Vec<String>), PgStoreError> {
        let (mut delivered, mut released) = (Vec::new(), Vec::new());
        for op in self.pending_operations().await? {
            let done = committed_locally(&op);
            self.settle(&op.operation_id, done).await?;
            if done {
                delivered.push(op.operation_id);
            } else {
                released.push(op.operation_id);
            }
        }
        Ok((delivered, released))
    }
}
