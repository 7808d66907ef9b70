//! Payments the host saw itself: for every block of the best chain fetched while quotes are
//! open, the outputs that pay an open quote's script, kept in SQLite (the ledger's file) so
//! a tenant can claim them later by quote id alone, from any wallet, without a proof.
//!
//! A block is taken only after its transactions are tied to the header the chain already
//! judged ([`check_block`]: merkle root, and the witness commitment when it has one). A
//! sighting is a fact about one block: whether it still counts (on the best chain, deep
//! enough) is asked of the header chain when the payment is claimed, so a reorg needs no
//! clean-up here, and the block at that height on the new best chain is scanned anew.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use bitcoin::hashes::Hash;
use bitcoin::{Block, BlockHash, OutPoint, ScriptBuf, Txid};
use rusqlite::{params, Connection, OptionalExtension};
use thiserror::Error;

use super::error::PaymentError;
use super::header_chain::HeaderChain;
use super::proof::{on_best_chain, OnBestChain};
use super::quote::Quote;
use crate::spent_set::open_durable;

#[derive(Debug, Error)]
pub enum WatchError {
    #[error("payment watch storage: {0}")]
    Storage(String),
}

fn storage(e: rusqlite::Error) -> WatchError {
    WatchError::Storage(e.to_string())
}

/// Why a fetched block does not belong to the header it claims.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BlockError {
    #[error("block {hash}: transactions do not hash to the header's merkle root")]
    MerkleRoot { hash: BlockHash },
    #[error("block {hash}: witness data does not match the coinbase's commitment")]
    WitnessCommitment { hash: BlockHash },
    #[error("block {hash} has no transactions")]
    Empty { hash: BlockHash },
}

/// Checks that a block's transactions are the ones its header commits to.
pub fn check_block(block: &Block) -> Result<(), BlockError> {
    let hash = block.block_hash();
    if block.txdata.is_empty() {
        return Err(BlockError::Empty { hash });
    }
    if !block.check_merkle_root() {
        return Err(BlockError::MerkleRoot { hash });
    }
    if !block.check_witness_commitment() {
        return Err(BlockError::WitnessCommitment { hash });
    }
    Ok(())
}

/// One output paying a quote, as seen in one block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenOutput {
    pub quote_id: String,
    pub outpoint: OutPoint,
    pub amount_sat: u64,
    pub block_hash: BlockHash,
    pub height: u32,
    pub block_time: u32,
    /// Paid by the block's coinbase.
    pub coinbase: bool,
}

/// The outputs of `block` (at `height`) that pay one of `scripts` (script → quote id).
pub fn scan_block(
    block: &Block,
    height: u32,
    scripts: &HashMap<ScriptBuf, String>,
) -> Vec<SeenOutput> {
    let hash = block.block_hash();
    let mut out = Vec::new();
    for (i, tx) in block.txdata.iter().enumerate() {
        let mut txid: Option<Txid> = None;
        for (vout, o) in tx.output.iter().enumerate() {
            if let Some(quote_id) = scripts.get(&o.script_pubkey) {
                let txid = *txid.get_or_insert_with(|| tx.compute_txid());
                out.push(SeenOutput {
                    quote_id: quote_id.clone(),
                    outpoint: OutPoint::new(txid, vout as u32),
                    amount_sat: o.value.to_sat(),
                    block_hash: hash,
                    height,
                    block_time: block.header.time,
                    coinbase: i == 0,
                });
            }
        }
    }
    out
}

/// The outputs of a tenant's transaction that pay `quote`, shown by its merkle proof
/// (`gettxoutproof`) to be in a block of the host's best chain, at any depth: what a scan of
/// that block would have filed. A host without `--bitcoin-peer` fetches no blocks, so this
/// is how it learns that a payment whose block a reorg took away was mined again
/// ([`PaymentWatch::record_proven`]). How deep the block is does not matter here: whoever
/// counts an output asks the header chain then, as for a scanned one.
pub fn proven_outputs(
    chain: &HeaderChain,
    quote: &Quote,
    tx_hex: &str,
    proof_hex: &str,
) -> Result<Vec<SeenOutput>, PaymentError> {
    let OnBestChain {
        tx,
        txid,
        block_hash,
        block,
        block_time,
    } = on_best_chain(chain, tx_hex, proof_hex)?;
    // Past a hand-over of the quote's index, the output pays the index's next quote.
    quote.pays_at_height(block.height)?;
    let seen: Vec<SeenOutput> = tx
        .output
        .iter()
        .enumerate()
        .filter(|(_, o)| o.script_pubkey == quote.script_pubkey)
        .map(|(vout, o)| SeenOutput {
            quote_id: quote.quote_id.clone(),
            outpoint: OutPoint::new(txid, vout as u32),
            amount_sat: o.value.to_sat(),
            block_hash,
            height: block.height,
            block_time,
            coinbase: tx.is_coinbase(),
        })
        .collect();
    if seen.is_empty() {
        return Err(PaymentError::WrongAddress {
            txid,
            address: quote.address.clone(),
        });
    }
    Ok(seen)
}

/// The durable record of blocks scanned and outputs seen.
pub struct PaymentWatch {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for PaymentWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentWatch").finish_non_exhaustive()
    }
}

impl PaymentWatch {
    pub fn open(path: &Path) -> Result<Self, WatchError> {
        let conn = open_durable(path).map_err(storage)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS watch_scanned_blocks (
                height INTEGER PRIMARY KEY,
                hash BLOB NOT NULL
            );
            CREATE TABLE IF NOT EXISTS watch_seen_outputs (
                txid BLOB NOT NULL,
                vout INTEGER NOT NULL,
                block_hash BLOB NOT NULL,
                quote_id TEXT NOT NULL,
                amount_sat INTEGER NOT NULL,
                height INTEGER NOT NULL,
                block_time INTEGER NOT NULL,
                coinbase INTEGER NOT NULL,
                PRIMARY KEY (txid, vout, block_hash)
            );
            CREATE INDEX IF NOT EXISTS watch_seen_by_quote ON watch_seen_outputs (quote_id);
            CREATE TABLE IF NOT EXISTS watch_start (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                height INTEGER NOT NULL
            );",
        )
        .map_err(storage)?;
        Ok(PaymentWatch {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The height scanning starts above: the tip when the watch first ran (no quote can be
    /// paid in a block mined before the host issued it).
    pub fn start_height(&self, tip_height: u32) -> Result<u32, WatchError> {
        let conn = self.lock();
        // Asked every few seconds: read first, write (and fsync) only the first time.
        let known: Option<u32> = conn
            .query_row("SELECT height FROM watch_start WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(storage)?;
        if let Some(h) = known {
            return Ok(h);
        }
        conn.execute(
            "INSERT OR IGNORE INTO watch_start (id, height) VALUES (1, ?1)",
            params![tip_height],
        )
        .map_err(storage)?;
        conn.query_row("SELECT height FROM watch_start WHERE id = 1", [], |r| {
            r.get(0)
        })
        .map_err(storage)
    }

    /// The block hash scanned at each height in `from..=to`.
    pub fn scanned(&self, from: u32, to: u32) -> Result<HashMap<u32, BlockHash>, WatchError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT height, hash FROM watch_scanned_blocks WHERE height BETWEEN ?1 AND ?2",
            )
            .map_err(storage)?;
        let rows = stmt
            .query_map(params![from, to], |r| {
                Ok((r.get::<_, u32>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(storage)?;
        let mut out = HashMap::new();
        for row in rows {
            let (h, bytes) = row.map_err(storage)?;
            let hash = BlockHash::from_slice(&bytes)
                .map_err(|e| WatchError::Storage(format!("scanned block at {h}: {e}")))?;
            out.insert(h, hash);
        }
        Ok(out)
    }

    /// Records that the block `hash` at `height` was scanned and what it paid, in one
    /// transaction (committed to disk before this returns).
    pub fn record_block(
        &self,
        height: u32,
        hash: BlockHash,
        seen: &[SeenOutput],
    ) -> Result<(), WatchError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(storage)?;
        insert_seen(&tx, seen)?;
        tx.execute(
            "INSERT INTO watch_scanned_blocks (height, hash) VALUES (?1, ?2)
             ON CONFLICT (height) DO UPDATE SET hash = excluded.hash",
            params![height, hash.as_byte_array().as_slice()],
        )
        .map_err(storage)?;
        tx.commit().map_err(storage)
    }

    /// Records outputs a tenant proved in a block ([`proven_outputs`]), in one transaction
    /// (committed before this returns). The block is not marked scanned: only these outputs
    /// of it are known, and a host with peers still scans it for the rest.
    pub fn record_proven(&self, seen: &[SeenOutput]) -> Result<(), WatchError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(storage)?;
        insert_seen(&tx, seen)?;
        tx.commit().map_err(storage)
    }

    /// Every output seen paying `quote_id`, in any block (best chain or not).
    pub fn seen_for(&self, quote_id: &str) -> Result<Vec<SeenOutput>, WatchError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT txid, vout, block_hash, amount_sat, height, block_time, coinbase
                 FROM watch_seen_outputs WHERE quote_id = ?1 ORDER BY height, txid, vout",
            )
            .map_err(storage)?;
        let rows = stmt
            .query_map(params![quote_id], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, u32>(4)?,
                    r.get::<_, u32>(5)?,
                    r.get::<_, bool>(6)?,
                ))
            })
            .map_err(storage)?;
        let mut out = Vec::new();
        for row in rows {
            let (txid, vout, block, amount, height, block_time, coinbase) = row.map_err(storage)?;
            let bad =
                |what: &str| WatchError::Storage(format!("seen output of {quote_id}: {what}"));
            out.push(SeenOutput {
                quote_id: quote_id.to_owned(),
                outpoint: OutPoint::new(Txid::from_slice(&txid).map_err(|_| bad("txid"))?, vout),
                amount_sat: u64::try_from(amount).map_err(|_| bad("amount"))?,
                block_hash: BlockHash::from_slice(&block).map_err(|_| bad("block hash"))?,
                height,
                block_time,
                coinbase,
            });
        }
        Ok(out)
    }

    /// The blocks `outpoint` was seen paying a quote in (any branch).
    pub fn blocks_with(&self, outpoint: &OutPoint) -> Result<Vec<BlockHash>, WatchError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT block_hash FROM watch_seen_outputs WHERE txid = ?1 AND vout = ?2",
            )
            .map_err(storage)?;
        let rows = stmt
            .query_map(
                params![outpoint.txid.as_byte_array().as_slice(), outpoint.vout],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .map_err(storage)?;
        let mut out = Vec::new();
        for row in rows {
            let bytes = row.map_err(storage)?;
            out.push(
                BlockHash::from_slice(&bytes)
                    .map_err(|e| WatchError::Storage(format!("seen block hash: {e}")))?,
            );
        }
        Ok(out)
    }

    /// Whether a scan was ever recorded for a quote (any output seen).
    pub fn any_seen(&self, quote_id: &str) -> Result<bool, WatchError> {
        let conn = self.lock();
        conn.query_row(
            "SELECT 1 FROM watch_seen_outputs WHERE quote_id = ?1 LIMIT 1",
            params![quote_id],
            |_| Ok(()),
        )
        .optional()
        .map(|o| o.is_some())
        .map_err(storage)
    }
}

/// Files `seen` (an output already filed for its block is left as it is).
fn insert_seen(tx: &rusqlite::Transaction<'_>, seen: &[SeenOutput]) -> Result<(), WatchError> {
    for s in seen {
        tx.execute(
            "INSERT OR IGNORE INTO watch_seen_outputs
                (txid, vout, block_hash, quote_id, amount_sat, height, block_time, coinbase)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                s.outpoint.txid.as_byte_array().as_slice(),
                s.outpoint.vout,
                s.block_hash.as_byte_array().as_slice(),
                s.quote_id,
                i64::try_from(s.amount_sat).unwrap_or(i64::MAX),
                s.height,
                s.block_time,
                s.coinbase,
            ],
        )
        .map_err(storage)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onchain::regtest_fixtures::{mine_block, payment_tx};
    use crate::onchain::ChainNetwork;
    use bitcoin::Amount;

    #[test]
    fn a_block_is_tied_to_its_header_and_its_payments_are_kept() {
        let script = ScriptBuf::from_bytes([0x00, 0x14].into_iter().chain([9u8; 20]).collect());
        let mut paying = payment_tx(&[(script.clone(), Amount::from_sat(5_000))], 1);
        // Without a witness the fixture block needs no witness commitment.
        paying.input[0].witness = bitcoin::Witness::new();
        let genesis = ChainNetwork::Regtest.genesis_header().block_hash();
        let block = mine_block(genesis, 1, 1_700_000_000, b"w", vec![paying.clone()]);
        check_block(&block).unwrap();
        let scripts = HashMap::from([(script.clone(), "q1".to_string())]);
        let seen = scan_block(&block, 1, &scripts);
        assert_eq!(seen.len(), 1);
        assert_eq!(
            (seen[0].amount_sat, seen[0].coinbase, seen[0].outpoint),
            (5_000, false, OutPoint::new(paying.compute_txid(), 0))
        );

        // A peer that changes a transaction cannot keep the header's merkle root.
        let mut forged = block.clone();
        forged.txdata[1].output[0].value = Amount::from_sat(6_000);
        assert!(matches!(
            check_block(&forged),
            Err(BlockError::MerkleRoot { .. })
        ));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sqlite");
        let w = PaymentWatch::open(&path).unwrap();
        assert_eq!(w.start_height(7).unwrap(), 7);
        w.record_block(1, block.block_hash(), &seen).unwrap();
        drop(w);
        let w = PaymentWatch::open(&path).unwrap();
        assert_eq!(w.start_height(99).unwrap(), 7, "the start is kept");
        assert_eq!(w.seen_for("q1").unwrap(), seen);
        assert_eq!(w.scanned(0, 5).unwrap().get(&1), Some(&block.block_hash()));
        assert!(!w.any_seen("q2").unwrap());
        assert_eq!(
            w.blocks_with(&seen[0].outpoint).unwrap(),
            vec![block.block_hash()]
        );
    }
}
