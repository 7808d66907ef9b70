//! Header sync from Bitcoin peers (`--bitcoin-peer`, `--bitcoin-dns-seeds`): the daemon's
//! side of [`coinop_bitcoin_net`]. Peers' headers go through [`HeaderChain::append`] as
//! [`HeaderSource::Untrusted`], the same checks the operator's `POST /v1/chain/headers`
//! runs (the operator's feed is trusted only for signet and for weak side branches).
//!
//! While quotes are open, each new best-chain block (the last [`SCAN_WINDOW`] at most) is
//! fetched whole, tied to its header ([`check_block`]) and scanned for outputs to the
//! quotes' scripts, which [`PaymentWatch`] keeps: a tenant can then pay from any wallet and
//! name only the quote. Blocks mined while no quote is open are marked scanned unfetched
//! (a quote's fresh address cannot be paid before it exists).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bitcoin::block::Header;
use bitcoin::Block;
use bitcoin::BlockHash;
use coinop_bitcoin_net::BlockRejected;
use coinop_bitcoin_net::{ChainAccess, PeerSetConfig};
use payment::onchain::{
    check_block, scan_block, AppendOutcome, ChainError, HeaderChain, HeaderSource, PaymentWatch,
    Tip,
};
use tokio::task::JoinHandle;

use crate::app::AppState;
use crate::clock::unix_s;
use crate::quote_store::Quotes;

/// How far back from the tip blocks are scanned for payments (two days of blocks).
pub const SCAN_WINDOW: u32 = 288;
/// Expired quotes are still watched this long, so a late payment is seen too.
const LATE_WATCH_US: u64 = 24 * 3600 * 1_000_000;

/// The host's chain, quotes and seen payments as the P2P client reaches them.
struct SharedChain {
    chain: Arc<RwLock<HeaderChain>>,
    /// The host's quotes, or with a fleet store every host's (each host scans blocks for
    /// all of them, and records what it finds there for the others).
    quotes: Arc<Quotes>,
    watch: Arc<PaymentWatch>,
}

impl SharedChain {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HeaderChain> {
        self.chain
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn watched(&self) -> Result<std::collections::HashMap<bitcoin::ScriptBuf, String>, String> {
        let now_us = (unix_s() as u64).saturating_mul(1_000_000);
        self.quotes
            .watched_scripts(now_us.saturating_sub(LATE_WATCH_US))
            .map_err(|e| e.to_string())
    }

    fn try_blocks_wanted(&self, max: usize) -> Result<Vec<BlockHash>, String> {
        let (from, best) = {
            let chain = self.read();
            let tip = chain.tip();
            let start = self
                .watch
                .start_height(tip.height)
                .map_err(|e| e.to_string())?;
            let from = start
                .saturating_add(1)
                .max(tip.height.saturating_sub(SCAN_WINDOW - 1));
            let best: Vec<(u32, BlockHash)> = (from..=tip.height)
                .filter_map(|h| chain.best_hash_at(h).map(|hash| (h, hash)))
                .collect();
            (from, best)
        };
        let Some(&(to, _)) = best.last() else {
            return Ok(Vec::new());
        };
        let scanned = self.watch.scanned(from, to).map_err(|e| e.to_string())?;
        let todo: Vec<(u32, BlockHash)> = best
            .into_iter()
            .filter(|(h, hash)| scanned.get(h) != Some(hash))
            .collect();
        if todo.is_empty() {
            return Ok(Vec::new());
        }
        if self.watched()?.is_empty() {
            for (h, hash) in todo {
                self.watch
                    .record_block(h, hash, &[])
                    .map_err(|e| e.to_string())?;
            }
            return Ok(Vec::new());
        }
        Ok(todo.into_iter().take(max).map(|(_, hash)| hash).collect())
    }
}

/// What appending `headers` would come to when the chain knows each of them already: a
/// peer repeating headers (2000 a message, as often as it likes) would otherwise hold the
/// chain's write lock while they are hashed, and payment checks and quotes, which read
/// the chain, would wait on it. Hashed before any lock, looked up under the read lock.
fn known_already(chain: &RwLock<HeaderChain>, headers: &[Header]) -> Option<AppendOutcome> {
    let hashes: Vec<BlockHash> = headers.iter().map(Header::block_hash).collect();
    let chain = chain
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    hashes
        .iter()
        .all(|h| chain.contains(h))
        .then(|| AppendOutcome {
            added: 0,
            tip: chain.tip(),
            reorg: false,
        })
}

impl ChainAccess for SharedChain {
    fn locator(&self) -> Vec<BlockHash> {
        self.read().locator()
    }

    fn checkpoint_header_wanted(&self) -> Option<BlockHash> {
        self.read().checkpoint_header_wanted()
    }

    fn tip(&self) -> Tip {
        self.read().tip()
    }

    fn knows(&self, hash: &BlockHash) -> bool {
        self.read().contains(hash)
    }

    fn accept_headers(&self, headers: &[Header]) -> Result<AppendOutcome, ChainError> {
        if let Some(known) = known_already(&self.chain, headers) {
            return Ok(known);
        }
        let now_us = (unix_s() as u64).saturating_mul(1_000_000);
        self.chain
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .append(headers, now_us, HeaderSource::Untrusted)
    }

    fn blocks_wanted(&self, max: usize) -> Vec<BlockHash> {
        self.try_blocks_wanted(max).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot tell which blocks to scan for payments");
            Vec::new()
        })
    }

    fn block_received(&self, block: Block) -> Result<(), BlockRejected> {
        check_block(&block).map_err(|e| BlockRejected::Invalid(e.to_string()))?;
        let hash = block.block_hash();
        let Some(info) = self.read().block(&hash) else {
            return Err(BlockRejected::Local(format!(
                "block {hash} is not in the header chain"
            )));
        };
        let scripts = self.watched().map_err(BlockRejected::Local)?;
        let seen = scan_block(&block, info.height, &scripts);
        for s in &seen {
            tracing::info!(quote = %s.quote_id, outpoint = %s.outpoint, sat = s.amount_sat, height = s.height, "payment to a quote seen");
        }
        // Their addresses are paid: never handed to another quote, claimed or not (and
        // with a fleet store the outputs are there for every host). Before the local
        // record: if this fails the block is not marked scanned, and is fetched again.
        self.quotes
            .record_seen(&seen)
            .map_err(|e| BlockRejected::Local(e.to_string()))?;
        self.watch
            .record_block(info.height, hash, &seen)
            .map_err(|e| BlockRejected::Local(e.to_string()))
    }
}

/// Starts syncing from the configured peers; `None` when there are none. Abort the
/// handle to stop every peer.
pub fn start(state: &AppState) -> Option<JoinHandle<()>> {
    let c = &state.config;
    let mut config = PeerSetConfig::new(state.chain_network, c.bitcoin_peers.clone());
    config.dns_seeds = c.bitcoin_dns_seeds;
    config.ban_for = Duration::from_secs(c.bitcoin_ban_s);
    if !config.is_enabled() {
        return None;
    }
    if state.chain_network.needs_operator_feed() {
        tracing::warn!(
            "--bitcoin-peer on signet: peers' headers are refused (signet headers only from \
             the operator's own feed)"
        );
    }
    tracing::info!(peers = ?config.peers, dns_seeds = config.dns_seeds, "bitcoin header sync starting");
    Some(coinop_bitcoin_net::spawn(
        config,
        Arc::new(SharedChain {
            chain: Arc::clone(&state.chain),
            quotes: Arc::clone(&state.quotes),
            watch: Arc::clone(&state.watch),
        }),
        Arc::clone(&state.chain_sync),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use payment::onchain::{ChainNetwork, Checkpoint};

    /// Headers the chain has are answered under the read lock: with a reader holding the
    /// chain (a payment check), a peer's repeated batch neither waits for it nor makes it
    /// wait. A new header still goes to the append.
    #[test]
    fn headers_known_already_take_only_the_read_lock() {
        let chain = RwLock::new(
            HeaderChain::in_memory(
                ChainNetwork::Regtest,
                Checkpoint::genesis(ChainNetwork::Regtest),
            )
            .expect("chain"),
        );
        let genesis = bitcoin::constants::genesis_block(bitcoin::Network::Regtest).header;
        let reader = chain.read().expect("a reader");
        let known = known_already(&chain, &[genesis, genesis]).expect("known");
        assert_eq!((known.added, known.tip.height, known.reorg), (0, 0, false));
        let mut other = genesis;
        other.nonce ^= 1;
        assert!(known_already(&chain, &[genesis, other]).is_none());
        drop(reader);
    }
}
