//! Header sync from Bitcoin peers (`--bitcoin-peer`, `--bitcoin-dns-seeds`): the daemon's
//! side of [`coinop_bitcoin_net`]. Peers' headers go through [`HeaderChain::append`] as
//! [`HeaderSource::Untrusted`], the same checks the operator's `POST /v1/chain/headers`
//! runs (the operator's feed is trusted only for signet and for weak side branches).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bitcoin::block::Header;
use bitcoin::BlockHash;
use coinop_bitcoin_net::{ChainAccess, PeerSetConfig};
use payment::onchain::{AppendOutcome, ChainError, HeaderChain, HeaderSource, Tip};
use tokio::task::JoinHandle;

use crate::app::AppState;
use crate::clock::unix_s;

/// The host's chain as the P2P client reaches it.
struct SharedChain(Arc<RwLock<HeaderChain>>);

impl SharedChain {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HeaderChain> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ChainAccess for SharedChain {
    fn locator(&self) -> Vec<BlockHash> {
        self.read().locator()
    }

    fn tip(&self) -> Tip {
        self.read().tip()
    }

    fn knows(&self, hash: &BlockHash) -> bool {
        self.read().contains(hash)
    }

    fn accept_headers(&self, headers: &[Header]) -> Result<AppendOutcome, ChainError> {
        let now_us = (unix_s() as u64).saturating_mul(1_000_000);
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .append(headers, now_us, HeaderSource::Untrusted)
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
        Arc::new(SharedChain(Arc::clone(&state.chain))),
        Arc::clone(&state.chain_sync),
    ))
}
