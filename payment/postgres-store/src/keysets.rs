//! The fleet's mint keyset list in PostgreSQL: which keysets exist (by id and derivation
//! index), which one signs, which still accept inputs, and their NUT-02 input fee. Never a
//! key: each host derives the keys from the mint seed it holds (see the crate doc), and
//! checks with [`check_seed`] that its seed derives the ids of these rows before it serves.

use std::time::SystemTime;

use payment::credit::keyset_store::{KeysetRecord, KeysetState};

use crate::error::{classify, PgStoreError};
use crate::store::PgStore;

/// One keyset as the fleet knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetKeyset {
    /// NUT-02 id, derived from the public keys.
    pub id: String,
    pub unit: String,
    /// The keyset's number in the seed's derivation path (its rotation counter).
    pub derivation_index: u32,
    pub state: KeysetState,
    /// NUT-02 fee per input, parts per thousand of a sat.
    pub input_fee_ppk: u64,
    /// The host that created it (first start or rotation).
    pub created_by: String,
    pub created_at: SystemTime,
}

impl FleetKeyset {
    /// The record the mint derives its keyset from.
    pub fn record(&self) -> KeysetRecord {
        KeysetRecord {
            counter: self.derivation_index,
            state: self.state,
        }
    }
}

/// A keyset to write: what the host derived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewKeyset {
    pub id: String,
    pub unit: String,
    pub derivation_index: u32,
    pub state: KeysetState,
    pub input_fee_ppk: u64,
}

fn state_code(state: KeysetState) -> i16 {
    match state {
        KeysetState::Active => 1,
        KeysetState::Inactive => 2,
        KeysetState::Retired => 3,
    }
}

fn state_from_code(code: i16) -> Result<KeysetState, PgStoreError> {
    match code {
        1 => Ok(KeysetState::Active),
        2 => Ok(KeysetState::Inactive),
        3 => Ok(KeysetState::Retired),
        other => Err(PgStoreError::Corrupt(format!(
            "coinop_mint_keysets.state {other}"
        ))),
    }
}

fn index_param(index: u32) -> Result<i32, PgStoreError> {
    i32::try_from(index).map_err(|_| PgStoreError::Config(format!("derivation index {index}")))
}

fn fee_param(fee: u64) -> Result<i64, PgStoreError> {
    i64::try_from(fee).map_err(|_| PgStoreError::Config(format!("input_fee_ppk {fee}")))
}

/// The advisory lock that serialises writers of the keyset list ("coinopks" in ASCII), so
/// a first registration and a rotation never interleave.
const KEYSETS_LOCK: i64 = 0x636f_696e_6f70_6b73;

const SELECT_ALL: &str = "SELECT id, unit, derivation_index, state, input_fee_ppk, created_by,
        created_at FROM coinop_mint_keysets ORDER BY unit, derivation_index";

fn read_rows(rows: &[tokio_postgres::Row]) -> Result<Vec<FleetKeyset>, PgStoreError> {
    rows.iter()
        .map(|row| {
            let index: i32 = row.get(2);
            let fee: i64 = row.get(4);
            Ok(FleetKeyset {
                id: row.get(0),
                unit: row.get(1),
                derivation_index: u32::try_from(index).map_err(|_| {
                    PgStoreError::Corrupt(format!("coinop_mint_keysets.derivation_index {index}"))
                })?,
                state: state_from_code(row.get(3))?,
                input_fee_ppk: u64::try_from(fee).map_err(|_| {
                    PgStoreError::Corrupt(format!("coinop_mint_keysets.input_fee_ppk {fee}"))
                })?,
                created_by: row.get(5),
                created_at: row.get(6),
            })
        })
        .collect()
}

/// Checks that `derive(index)` (the id this host's seed derives for a derivation index)
/// is every row's id: a host with another seed would sign notes no other host accepts, and
/// accept none of theirs.
pub fn check_seed<E: std::fmt::Display>(
    rows: &[FleetKeyset],
    mut derive: impl FnMut(u32) -> Result<String, E>,
) -> Result<(), PgStoreError> {
    for row in rows {
        let derived = derive(row.derivation_index)
            .map_err(|e| PgStoreError::Config(format!("deriving keyset {}: {e}", row.id)))?;
        if derived != row.id {
            return Err(PgStoreError::KeysetMismatch {
                derivation_index: row.derivation_index,
                fleet_id: row.id.clone(),
                derived_id: derived,
            });
        }
    }
    Ok(())
}

/// Opens a transaction on `client` that holds the keysets lock until it ends (commit, or
/// rollback when dropped): every writer of the list starts here, so none of them sees the
/// list another one is changing.
async fn begin_locked(
    client: &mut deadpool_postgres::Client,
) -> Result<deadpool_postgres::Transaction<'_>, PgStoreError> {
    let tx = client.transaction().await.map_err(classify)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&KEYSETS_LOCK])
        .await
        .map_err(classify)?;
    Ok(tx)
}

/// Reads the list as `tx` left it, then commits `tx`: what every writer returns, read
/// under the lock so it is the list its own change made.
async fn commit_listing(
    tx: deadpool_postgres::Transaction<'_>,
) -> Result<Vec<FleetKeyset>, PgStoreError> {
    let rows = tx.query(SELECT_ALL, &[]).await.map_err(classify)?;
    tx.commit().await.map_err(classify)?;
    read_rows(&rows)
}

/// Inserts each of `keysets` (created by `host`) whose id and (unit, derivation index) no
/// row holds yet, inside the caller's transaction (which holds the keysets lock).
async fn insert_absent(
    tx: &tokio_postgres::Transaction<'_>,
    keysets: &[NewKeyset],
    host: &str,
) -> Result<(), PgStoreError> {
    for k in keysets {
        tx.execute(
            "INSERT INTO coinop_mint_keysets
                (id, unit, derivation_index, state, input_fee_ppk, created_by)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT DO NOTHING",
            &[
                &k.id,
                &k.unit,
                &index_param(k.derivation_index)?,
                &state_code(k.state),
                &fee_param(k.input_fee_ppk)?,
                &host,
            ],
        )
        .await
        .map_err(classify)?;
    }
    Ok(())
}

/// The fleet's keyset list. Cheap to clone (shares the store's pool).
#[derive(Clone, Debug)]
pub struct PgKeysets {
    store: PgStore,
}

impl PgKeysets {
    pub fn new(store: PgStore) -> Self {
        PgKeysets { store }
    }

    /// Every keyset, by unit and derivation index.
    pub async fn load(&self) -> Result<Vec<FleetKeyset>, PgStoreError> {
        self.store
            .with_client(1, |client| async move {
                let stmt = client.prepare_cached(SELECT_ALL).await.map_err(classify)?;
                let rows = client.query(&stmt, &[]).await.map_err(classify)?;
                read_rows(&rows)
            })
            .await
    }

    /// Writes `initial` (a host's keyset list: one active keyset) if the fleet has no
    /// keyset yet, and returns the fleet's list either way: the first host to start makes
    /// the list, every later one adopts it (after [`check_seed`]).
    pub async fn register_initial(
        &self,
        initial: &[NewKeyset],
    ) -> Result<Vec<FleetKeyset>, PgStoreError> {
        let host = self.store.host_id().to_owned();
        let host = &host;
        self.store
            .with_client(4, |mut client| async move {
                let tx = begin_locked(&mut client).await?;
                let existing = tx.query(SELECT_ALL, &[]).await.map_err(classify)?;
                if !existing.is_empty() {
                    tx.commit().await.map_err(classify)?;
                    return read_rows(&existing);
                }
                insert_absent(&tx, initial, host).await?;
                commit_listing(tx).await
            })
            .await
    }

    /// Adds `keysets` (keysets a joining host has that the fleet's list lacks, never an
    /// active one) where no keyset of their unit holds their derivation index yet, and
    /// returns the fleet's list. For a host whose seed [`check_seed`] already found to be
    /// the fleet's: without this, the notes it issued under keysets it rotated to while it
    /// ran alone would be unknown on every host, its own included.
    pub async fn add_missing(
        &self,
        keysets: &[NewKeyset],
    ) -> Result<Vec<FleetKeyset>, PgStoreError> {
        if keysets.iter().any(|k| k.state == KeysetState::Active) {
            return Err(PgStoreError::ActiveKeysetAdded);
        }
        let host = self.store.host_id().to_owned();
        let host = &host;
        self.store
            .with_client(4, |mut client| async move {
                let tx = begin_locked(&mut client).await?;
                insert_absent(&tx, keysets, host).await?;
                commit_listing(tx).await
            })
            .await
    }

    /// Rotation: in one transaction, the active keyset `from_id` becomes inactive and
    /// `next` (derived by the caller at the next derivation index) becomes the active one.
    /// Fails with [`PgStoreError::KeysetsChanged`] if `from_id` is no longer the active
    /// keyset (another host rotated first): reload, and rotate again if still wanted.
    pub async fn rotate(
        &self,
        from_id: &str,
        next: &NewKeyset,
    ) -> Result<Vec<FleetKeyset>, PgStoreError> {
        let host = self.store.host_id().to_owned();
        let host = &host;
        self.store
            .with_client(4, |mut client| async move {
                let tx = begin_locked(&mut client).await?;
                let demoted = tx
                    .execute(
                        "UPDATE coinop_mint_keysets SET state = 2
                         WHERE id = $1 AND unit = $2 AND state = 1",
                        &[&from_id, &next.unit],
                    )
                    .await
                    .map_err(classify)?;
                if demoted != 1 {
                    return Err(PgStoreError::KeysetsChanged(format!(
                        "keyset {from_id} is no longer the active {} keyset",
                        next.unit
                    )));
                }
                tx.execute(
                    "INSERT INTO coinop_mint_keysets
                        (id, unit, derivation_index, state, input_fee_ppk, created_by)
                     VALUES ($1, $2, $3, 1, $4, $5)",
                    &[
                        &next.id,
                        &next.unit,
                        &index_param(next.derivation_index)?,
                        &fee_param(next.input_fee_ppk)?,
                        host,
                    ],
                )
                .await
                .map_err(|e| match e.code() {
                    Some(c) if *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => {
                        PgStoreError::KeysetsChanged(format!(
                            "keyset {} or derivation index {} exists already",
                            next.id, next.derivation_index
                        ))
                    }
                    _ => classify(e),
                })?;
                commit_listing(tx).await
            })
            .await
    }
}
