//! The fleet's quotes and their address index in PostgreSQL ([`PgQuoteBook`]): what
//! `payment::onchain::quote_book` does in one host's SQLite, for every host that derives
//! addresses from the same xpub.
//!
//! - **Allocation is race-free across hosts:** a quote is issued in one transaction that
//!   first locks its xpub's counter row (`coinop_quote_index` in
//!   `migrations/0003_quotes.sql`), then inserts the quote, then commits. Every other host
//!   issuing a quote of that xpub waits on the row, so no index is handed to two live quotes
//!   anywhere in the fleet (a partial unique index backs this up).
//! - **Reuse and the gap bound are fleet-wide:** an unpaid quote of any host that expired
//!   more than `reuse_after_us` ago gives its index back (lowest first, retired at the
//!   issuing host's tip, as on one host), and at most `max_open` unpaid quotes of the whole
//!   fleet hold an index. So derived − paid indexes ≤ `max_open` for the xpub, across the
//!   fleet: a wallet with that gap limit sees every payment. Each host applies its own
//!   `--max-open-quotes` to the fleet's count; give every host the same value.
//! - **Paid marks and seen payments are fleet-wide:** [`PgQuoteBook::mark_paid`] keeps an
//!   index that a payment reached out of reuse for every host, and
//!   [`PgQuoteBook::record_seen`] keeps the outputs a host found in a block, so any other
//!   host can honour a payment by quote id (it still checks the block against its own
//!   header chain).
//!
//! Issuing is serialised per xpub across the fleet (a few ms each: the lock is held for the
//! allocation, the insert and the commit). On one host, issues also queue in-process
//! ([`PgQuoteBook::create_at_tip`]), so that a burst of quote requests waits without holding
//! pooled connections that payments need, and takes one connection of the pool at a time.
//!
//! Nothing here spends money: outpoints are fenced by the spent set
//! ([`crate::PgSpentSet`]), whichever quote they paid.

use std::collections::HashMap;
use std::str::FromStr;

use bitcoin::hashes::Hash;
use bitcoin::{Address, BlockHash, OutPoint, ScriptBuf, Txid};
use payment::onchain::quote::{bip21_uri, dust_limit_sat, possible_quote_id};
use payment::onchain::receive_address::HARDENED;
use payment::onchain::{msat_to_sat_ceil, AddressDeriver, Quote, QuoteError};
use thiserror::Error;

use crate::error::{classify, PgStoreError};
use crate::store::PgStore;

/// Why a fleet quote could not be issued or read.
#[derive(Debug, Error)]
pub enum PgQuoteError {
    /// The store failed or refused (an outage is [`PgStoreError::Unavailable`]).
    #[error(transparent)]
    Store(#[from] PgStoreError),
    /// The quote itself could not be made (no free index, derivation), as on one host.
    #[error(transparent)]
    Quote(#[from] QuoteError),
}

impl PgQuoteError {
    /// Whether this is an outage (fail closed, retry later).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, PgQuoteError::Store(e) if e.is_unavailable())
    }
}

/// How indexes are handed out across the fleet (the fields of
/// `payment::onchain::IndexPolicy`, which needs the crate's SQLite feature).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FleetIndexPolicy {
    /// How long after its expiry an unpaid quote keeps its index, µs.
    pub reuse_after_us: u64,
    /// Most quotes of the fleet holding an index without a payment, at once.
    pub max_open: u64,
}

/// What a quote is for: a NUT-30 quote is locked to a key and never pays a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotePurpose {
    /// Leases, top-ups and key-less mints.
    Lease,
    /// A NUT-30 on-chain mint quote.
    Nut30,
}

impl QuotePurpose {
    fn as_str(self) -> &'static str {
        match self {
            QuotePurpose::Lease => "lease",
            QuotePurpose::Nut30 => "nut30",
        }
    }

    fn parse(text: &str) -> Result<Self, PgStoreError> {
        match text {
            "lease" => Ok(QuotePurpose::Lease),
            "nut30" => Ok(QuotePurpose::Nut30),
            other => Err(PgStoreError::Corrupt(format!(
                "coinop_quotes.purpose {other:?}"
            ))),
        }
    }
}

/// One fleet quote as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetQuote {
    pub quote: Quote,
    pub purpose: QuotePurpose,
    /// A payment to its address was seen or verified by some host.
    pub paid: bool,
    /// The host that issued it.
    pub host_id: String,
}

/// An output paying a quote's script, as a host found it in a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenPayment {
    pub quote_id: String,
    pub outpoint: OutPoint,
    pub amount_sat: u64,
    pub block_hash: BlockHash,
    pub height: u32,
    pub block_time: u32,
    /// Paid by the block's coinbase.
    pub coinbase: bool,
}

/// The fleet's quote book for one xpub (share it in an `Arc`: it owns its deriver).
pub struct PgQuoteBook {
    store: PgStore,
    deriver: AddressDeriver,
    policy: FleetIndexPolicy,
    dust_floor: bool,
    /// This host's issues, one at a time (they serialise on the xpub's row anyway).
    issuing: tokio::sync::Mutex<()>,
    /// Set once what the store kept under other spellings of this key was moved to its key
    /// id ([`PgQuoteBook::adopt_spellings`]); every read and issue waits for it.
    adopted: tokio::sync::OnceCell<()>,
}

/// Longest wait of one issue for this host's earlier ones: then the store is as good as
/// unavailable for quotes.
const ISSUE_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl std::fmt::Debug for PgQuoteBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgQuoteBook")
            .field("deriver", &self.deriver)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn to_i64(v: u64, what: &str) -> Result<i64, PgStoreError> {
    i64::try_from(v).map_err(|_| PgStoreError::Config(format!("{what} {v} exceeds 2^63")))
}

fn to_u64(v: i64, what: &str) -> Result<u64, PgStoreError> {
    u64::try_from(v).map_err(|_| PgStoreError::Corrupt(format!("{what} {v}")))
}

fn to_u32(v: i64, what: &str) -> Result<u32, PgStoreError> {
    u32::try_from(v).map_err(|_| PgStoreError::Corrupt(format!("{what} {v}")))
}

fn hash32(bytes: &[u8], what: &str) -> Result<[u8; 32], PgStoreError> {
    bytes
        .try_into()
        .map_err(|_| PgStoreError::Corrupt(format!("{what} of {} bytes", bytes.len())))
}

/// The columns [`quote_from_row`] reads, in its order.
const QUOTE_COLUMNS: &str = "quote_id, derivation_index, address, script_pubkey, amount_msat,
    created_at_us, expires_at_us, paid_above_height, retired_at_height, purpose, paid, host_id";

fn quote_from_row(row: &tokio_postgres::Row) -> Result<FleetQuote, PgStoreError> {
    let quote_id: String = row.get(0);
    let address: String = row.get(2);
    if Address::from_str(&address).is_err() {
        return Err(PgStoreError::Corrupt(format!(
            "quote {quote_id}: address {address} does not parse"
        )));
    }
    let amount_msat = to_u64(row.get(4), "amount_msat")?;
    let amount_sat = msat_to_sat_ceil(amount_msat);
    let height = |v: Option<i32>, what: &str| {
        v.map(|h| u32::try_from(h).map_err(|_| PgStoreError::Corrupt(format!("{what} {h}"))))
            .transpose()
    };
    Ok(FleetQuote {
        quote: Quote {
            bip21: bip21_uri(&address, amount_sat),
            amount_msat,
            amount_sat,
            address,
            script_pubkey: ScriptBuf::from_bytes(row.get(3)),
            derivation_index: to_u32(row.get(1), "derivation_index")?,
            created_at_us: to_u64(row.get(5), "created_at_us")?,
            expires_at_us: to_u64(row.get(6), "expires_at_us")?,
            paid_above_height: height(row.get(7), "paid_above_height")?,
            retired_at_height: height(row.get(8), "retired_at_height")?,
            quote_id,
        },
        purpose: QuotePurpose::parse(row.get(9))?,
        paid: row.get(10),
        host_id: row.get(11),
    })
}

/// Why an issue found no quote to make (an answer, not a store failure).
enum Refusal {
    /// `open` unpaid quotes hold an index: the cap.
    Full {
        open: u64,
        first_expiry: Option<u64>,
    },
    /// The index could not be turned into an address.
    Quote(QuoteError),
}

impl PgQuoteBook {
    /// The fleet's book of quotes for `deriver`'s xpub, on `store` (already migrated, or
    /// migrated before the first call).
    pub fn new(store: PgStore, deriver: AddressDeriver, policy: FleetIndexPolicy) -> Self {
        PgQuoteBook {
            store,
            deriver,
            policy,
            dust_floor: true,
            issuing: tokio::sync::Mutex::new(()),
            adopted: tokio::sync::OnceCell::new(),
        }
    }

    /// Moves what the store kept under another spelling of this key (the xpub string as a
    /// host typed it, what rows were keyed by before [`AddressDeriver::key_id`]) to the key's
    /// id, once per book (again after a failure): the counter becomes the highest of the
    /// spellings' counters and of every index their quotes hold, plus one, so it never goes
    /// back; the quotes move with it, except one whose index a live quote of the key id
    /// holds too (handed out twice before this), which keeps its old key so that the
    /// one-holder-per-index rule still holds for the rest. The key id's counter row is
    /// locked first, so hosts adopting at once take turns, and issues wait on it.
    async fn adopt_spellings(&self) -> Result<(), PgStoreError> {
        self.adopted
            .get_or_try_init(|| async {
                let key = self.deriver.key_id();
                let spellings: Vec<String> = self
                    .store
                    .with_client(1, |client| async move {
                        client
                            .query(
                                "SELECT xpub FROM coinop_quote_derivation
                                 WHERE xpub NOT LIKE 'key:%'",
                                &[],
                            )
                            .await
                            .map_err(classify)
                    })
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .filter(|x: &String| payment::onchain::key_id_of(x).as_deref() == Some(key))
                    .collect();
                if spellings.is_empty() {
                    return Ok(());
                }
                let spellings = &spellings;
                self.store
                    .with_client(2 + 4 * spellings.len() as u64, |mut client| async move {
                        let tx = client.transaction().await.map_err(classify)?;
                        tx.execute(
                            "INSERT INTO coinop_quote_derivation (xpub, next_index)
                             VALUES ($1, 0) ON CONFLICT (xpub) DO NOTHING",
                            &[&key],
                        )
                        .await
                        .map_err(classify)?;
                        tx.execute(
                            "SELECT 1 FROM coinop_quote_derivation WHERE xpub = $1 FOR UPDATE",
                            &[&key],
                        )
                        .await
                        .map_err(classify)?;
                        for old in spellings {
                            tx.execute(
                                "UPDATE coinop_quote_derivation SET next_index = greatest(
                                    next_index,
                                    (SELECT max(next_index) FROM coinop_quote_derivation
                                     WHERE xpub = $2),
                                    (SELECT max(derivation_index) + 1 FROM coinop_quotes
                                     WHERE xpub = $2))
                                 WHERE xpub = $1",
                                &[&key, old],
                            )
                            .await
                            .map_err(classify)?;
                            tx.execute(
                                "UPDATE coinop_quotes c SET xpub = $1
                                 WHERE c.xpub = $2 AND (c.retired_at_height IS NOT NULL
                                    OR NOT EXISTS (SELECT 1 FROM coinop_quotes d
                                        WHERE d.xpub = $1
                                          AND d.derivation_index = c.derivation_index
                                          AND d.retired_at_height IS NULL))",
                                &[&key, old],
                            )
                            .await
                            .map_err(classify)?;
                            // An index both spellings handed out: the quote left under the
                            // old one is never retired by the key's quotes, so the key's
                            // holder of that index is kept from reuse, as a paid one is.
                            tx.execute(
                                "UPDATE coinop_quotes d SET paid = true
                                 WHERE d.xpub = $1 AND d.retired_at_height IS NULL
                                   AND d.derivation_index IN (
                                     SELECT c.derivation_index FROM coinop_quotes c
                                     WHERE c.xpub = $2 AND c.retired_at_height IS NULL)",
                                &[&key, old],
                            )
                            .await
                            .map_err(classify)?;
                            tx.execute(
                                "DELETE FROM coinop_quote_derivation WHERE xpub = $1",
                                &[old],
                            )
                            .await
                            .map_err(classify)?;
                        }
                        tx.commit().await.map_err(classify)
                    })
                    .await
            })
            .await
            .map(|_| ())
    }

    /// The same book raising amounts to the dust limit (`true`, the default) or not.
    pub fn with_dust_floor(mut self, on: bool) -> Self {
        self.dust_floor = on;
        self
    }

    /// Issues a quote for `amount_msat` (raised to the dust limit), valid until
    /// `now_us + ttl_us`, for `purpose`, by this host: the fleet's lowest reusable index
    /// (its old quote retired at `tip_height`), else a new one not below `floor_index` (the
    /// next index of this host's own book from before it joined the fleet). Committed
    /// before it returns. A call that met an outage may or may not have issued a quote;
    /// one issued and never answered only holds its index until it expires.
    pub async fn create_at_tip(
        &self,
        amount_msat: u64,
        now_us: u64,
        ttl_us: u64,
        tip_height: u32,
        purpose: QuotePurpose,
        floor_index: u64,
    ) -> Result<Quote, PgQuoteError> {
        self.create_at(
            amount_msat,
            now_us,
            ttl_us,
            Some(tip_height),
            purpose,
            floor_index,
        )
        .await
    }

    /// [`PgQuoteBook::create_at_tip`], reusing an index only with a tip to retire its old
    /// quote at; with `None` (a host whose tip may be stale) always a new index.
    pub async fn create_at(
        &self,
        amount_msat: u64,
        now_us: u64,
        ttl_us: u64,
        tip_height: Option<u32>,
        purpose: QuotePurpose,
        floor_index: u64,
    ) -> Result<Quote, PgQuoteError> {
        let reuse = tip_height.is_some();
        let tip_height = tip_height.unwrap_or(0);
        let mut id = [0u8; 16];
        bitcoin::secp256k1::rand::RngCore::fill_bytes(
            &mut bitcoin::secp256k1::rand::thread_rng(),
            &mut id,
        );
        let quote_id = hex::encode(id);
        let expires_at_us = now_us.saturating_add(ttl_us);
        let free_before = now_us.saturating_sub(self.policy.reuse_after_us);
        self.adopt_spellings().await?;
        let xpub = self.deriver.key_id();
        let host = self.store.host_id().to_owned();
        let max_open = to_i64(self.policy.max_open.min(i64::MAX as u64), "max_open")?;
        let floor = to_i64(floor_index, "floor_index")?;
        let free_before = to_i64(free_before, "now_us")?;
        let tip = i32::try_from(tip_height)
            .map_err(|_| PgStoreError::Config(format!("tip height {tip_height}")))?;
        let (created, expires) = (
            to_i64(now_us, "created_at_us")?,
            to_i64(expires_at_us, "expires_at_us")?,
        );
        let (quote_id_ref, host) = (&quote_id, &host);
        let _turn = tokio::time::timeout(ISSUE_QUEUE_WAIT, self.issuing.lock())
            .await
            .map_err(|_| {
                PgStoreError::Unavailable(format!(
                    "this host's earlier quotes still waited for the store after {} s",
                    ISSUE_QUEUE_WAIT.as_secs()
                ))
            })?;
        let out = self
            .store
            .with_client(4, |mut client| async move {
                let tx = client.transaction().await.map_err(classify)?;
                let row = tx
                    .query_one(
                        "SELECT o_index, o_reused, o_open, o_first_expiry
                         FROM coinop_quote_index($1, $2, $3, $4, $5, $6)",
                        &[&xpub, &floor, &free_before, &max_open, &tip, &reuse],
                    )
                    .await
                    .map_err(classify)?;
                let index: Option<i64> = row.get(0);
                let Some(index) = index else {
                    // Nothing to keep: the counter row was only locked.
                    tx.rollback().await.map_err(classify)?;
                    let first: Option<i64> = row.get(3);
                    return Ok(Err(Refusal::Full {
                        open: to_u64(row.get(2), "open quotes")?,
                        first_expiry: first.map(|f| to_u64(f, "expires_at_us")).transpose()?,
                    }));
                };
                if to_u64(index, "derivation_index")? >= HARDENED {
                    tx.rollback().await.map_err(classify)?;
                    return Ok(Err(Refusal::Quote(QuoteError::IndexExhausted {
                        index: to_u64(index, "derivation_index")?,
                    })));
                }
                let index = to_u32(index, "derivation_index")?;
                let reused: bool = row.get(1);
                let address = match self.deriver.address_at(index) {
                    Ok(a) => a,
                    Err(e) => {
                        tx.rollback().await.map_err(classify)?;
                        return Ok(Err(Refusal::Quote(e)));
                    }
                };
                let script_pubkey = address.script_pubkey();
                let address = address.to_string();
                let amount_msat = if self.dust_floor {
                    amount_msat.max(dust_limit_sat(&script_pubkey).saturating_mul(1000))
                } else {
                    amount_msat
                };
                let paid_above: Option<i32> = reused.then_some(tip);
                tx.execute(
                    "INSERT INTO coinop_quotes (quote_id, xpub, derivation_index, address,
                        script_pubkey, amount_msat, purpose, created_at_us, expires_at_us,
                        paid_above_height, host_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    &[
                        quote_id_ref,
                        &xpub,
                        &i64::from(index),
                        &address,
                        &script_pubkey.as_bytes(),
                        &to_i64(amount_msat, "amount_msat")?,
                        &purpose.as_str(),
                        &created,
                        &expires,
                        &paid_above,
                        host,
                    ],
                )
                .await
                .map_err(classify)?;
                tx.commit().await.map_err(classify)?;
                let amount_sat = msat_to_sat_ceil(amount_msat);
                Ok(Ok(Quote {
                    quote_id: quote_id_ref.clone(),
                    amount_msat,
                    amount_sat,
                    bip21: bip21_uri(&address, amount_sat),
                    address,
                    script_pubkey,
                    derivation_index: index,
                    created_at_us: now_us,
                    expires_at_us,
                    paid_above_height: reused.then_some(tip_height),
                    retired_at_height: None,
                }))
            })
            .await?;
        match out {
            Ok(quote) => Ok(quote),
            Err(Refusal::Quote(e)) => Err(e.into()),
            Err(Refusal::Full { open, first_expiry }) => {
                let frees_at = first_expiry
                    .unwrap_or(0)
                    .saturating_add(self.policy.reuse_after_us);
                Err(QuoteError::NoFreeIndex {
                    open,
                    retry_after_s: frees_at.saturating_sub(now_us).div_ceil(1_000_000).max(1),
                }
                .into())
            }
        }
    }

    /// The quote with this id, issued by any host of the fleet.
    /// An id no book issues (a NUL, which the server refuses as text, included) is no
    /// quote, unasked.
    pub async fn get(&self, quote_id: &str) -> Result<Option<FleetQuote>, PgStoreError> {
        if !possible_quote_id(quote_id) {
            return Ok(None);
        }
        self.store
            .with_client(1, |client| async move {
                let stmt = client
                    .prepare_cached(&format!(
                        "SELECT {QUOTE_COLUMNS} FROM coinop_quotes WHERE quote_id = $1"
                    ))
                    .await
                    .map_err(classify)?;
                let row = client
                    .query_opt(&stmt, &[&quote_id])
                    .await
                    .map_err(classify)?;
                row.as_ref().map(quote_from_row).transpose()
            })
            .await
    }

    /// Records that a payment to `quote_id`'s address exists: its index is never reused,
    /// by any host. Idempotent.
    pub async fn mark_paid(&self, quote_id: &str) -> Result<(), PgStoreError> {
        // No such quote (see `get`): nothing to mark.
        if !possible_quote_id(quote_id) {
            return Ok(());
        }
        self.store
            .with_client(1, |client| async move {
                client
                    .execute(
                        "UPDATE coinop_quotes SET paid = true WHERE quote_id = $1 AND NOT paid",
                        &[&quote_id],
                    )
                    .await
                    .map_err(classify)?;
                Ok(())
            })
            .await
    }

    /// Script → quote id of the fleet's quotes of this xpub that expire after `since_us`
    /// and still hold their address: what a host scanning a block looks for.
    pub async fn watched_scripts(
        &self,
        since_us: u64,
    ) -> Result<HashMap<ScriptBuf, String>, PgStoreError> {
        let since = to_i64(since_us, "since_us")?;
        self.adopt_spellings().await?;
        let xpub = self.deriver.key_id();
        let rows = self
            .store
            .with_client(1, |client| async move {
                client
                    .query(
                        "SELECT script_pubkey, quote_id FROM coinop_quotes
                         WHERE xpub = $1 AND expires_at_us > $2 AND retired_at_height IS NULL",
                        &[&xpub, &since],
                    )
                    .await
                    .map_err(classify)
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| (ScriptBuf::from_bytes(r.get(0)), r.get(1)))
            .collect())
    }

    /// Keeps outputs this host found paying quotes, and marks those quotes paid, in one
    /// transaction. Idempotent (a block scanned again adds nothing).
    pub async fn record_seen(&self, seen: &[SeenPayment]) -> Result<(), PgStoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        let host = self.store.host_id().to_owned();
        let host = &host;
        let statements = 3 + 2 * seen.len() as u64;
        self.store
            .with_client(statements, |mut client| async move {
                let tx = client.transaction().await.map_err(classify)?;
                for s in seen {
                    tx.execute(
                        "INSERT INTO coinop_quote_outputs (quote_id, txid, vout, block_hash,
                            height, block_time, amount_sat, coinbase, seen_by)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                         ON CONFLICT DO NOTHING",
                        &[
                            &s.quote_id,
                            &s.outpoint.txid.as_byte_array().as_slice(),
                            &i64::from(s.outpoint.vout),
                            &s.block_hash.as_byte_array().as_slice(),
                            &i32::try_from(s.height).map_err(|_| {
                                PgStoreError::Config(format!("height {}", s.height))
                            })?,
                            &i64::from(s.block_time),
                            &to_i64(s.amount_sat, "amount_sat")?,
                            &s.coinbase,
                            host,
                        ],
                    )
                    .await
                    .map_err(classify)?;
                    tx.execute(
                        "UPDATE coinop_quotes SET paid = true WHERE quote_id = $1 AND NOT paid",
                        &[&s.quote_id],
                    )
                    .await
                    .map_err(classify)?;
                }
                tx.commit().await.map_err(classify)
            })
            .await
    }

    /// The outputs any host of the fleet found paying `quote_id`, in any block (the caller
    /// keeps those on its best chain).
    pub async fn seen_for(&self, quote_id: &str) -> Result<Vec<SeenPayment>, PgStoreError> {
        // No such quote (see `get`): nothing paid it.
        if !possible_quote_id(quote_id) {
            return Ok(Vec::new());
        }
        let rows = self
            .store
            .with_client(1, |client| async move {
                client
                    .query(
                        "SELECT txid, vout, block_hash, height, block_time, amount_sat, coinbase
                         FROM coinop_quote_outputs WHERE quote_id = $1
                         ORDER BY height, txid, vout",
                        &[&quote_id],
                    )
                    .await
                    .map_err(classify)
            })
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SeenPayment {
                    quote_id: quote_id.to_owned(),
                    outpoint: OutPoint {
                        txid: Txid::from_byte_array(hash32(r.get(0), "txid")?),
                        vout: to_u32(r.get(1), "vout")?,
                    },
                    block_hash: BlockHash::from_byte_array(hash32(r.get(2), "block_hash")?),
                    height: to_u32(i64::from(r.get::<_, i32>(3)), "height")?,
                    block_time: to_u32(r.get(4), "block_time")?,
                    amount_sat: to_u64(r.get(5), "amount_sat")?,
                    coinbase: r.get(6),
                })
            })
            .collect()
    }

    /// Quotes of the fleet holding an index of this xpub without a payment.
    pub async fn open_unpaid(&self) -> Result<u64, PgStoreError> {
        self.adopt_spellings().await?;
        let xpub = self.deriver.key_id();
        let n: i64 = self
            .store
            .with_client(1, |client| async move {
                client
                    .query_one(
                        "SELECT count(*) FROM coinop_quotes
                         WHERE xpub = $1 AND retired_at_height IS NULL AND NOT paid",
                        &[&xpub],
                    )
                    .await
                    .map_err(classify)
                    .map(|r| r.get(0))
            })
            .await?;
        to_u64(n, "open quotes")
    }

    /// The index the next newly derived address of this xpub will use, fleet-wide.
    pub async fn next_index(&self) -> Result<u64, PgStoreError> {
        self.adopt_spellings().await?;
        let xpub = self.deriver.key_id();
        let n: Option<i64> = self
            .store
            .with_client(1, |client| async move {
                client
                    .query_opt(
                        "SELECT next_index FROM coinop_quote_derivation WHERE xpub = $1",
                        &[&xpub],
                    )
                    .await
                    .map_err(classify)
                    .map(|r| r.map(|r| r.get(0)))
            })
            .await?;
        n.map_or(Ok(0), |n| to_u64(n, "next_index"))
    }
}
