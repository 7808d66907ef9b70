//! Checkpoints shipped in code: a block per network the host's chain may start from, so a
//! new mainnet host needs only the headers after it (about 85,000 today instead of 925,000)
//! before it can verify a payment. Each is given as height, hash, the full 80-byte header
//! (its hash and proof of work are checked when the chain opens, so a typo cannot slip
//! through) and the chain's cumulative work up to it, so work compares as on a node that
//! synced from genesis.
//!
//! Mainnet's is block 840,000 (the fourth halving; also one of Bitcoin Core's assumeutxo
//! heights). It is not at a 2016-block period start, so the first retarget after it
//! (840,672) can only be held to the pow limit (see [`super::retarget::Expected`]); every
//! later one is checked exactly. Other networks start at genesis: their chains are short.

use bitcoin::block::Header;
use bitcoin::consensus::encode::deserialize_hex;
use bitcoin::BlockHash;

use super::header_chain::Checkpoint;
use super::network::ChainNetwork;

/// One shipped checkpoint, in the form a reader can compare with a block explorer.
pub struct Shipped {
    pub height: u32,
    pub hash: &'static str,
    pub header_hex: &'static str,
    /// Cumulative chain work up to and including this block.
    pub chainwork: u128,
}

const MAINNET_840000: Shipped = Shipped {
    height: 840_000,
    hash: "0000000000000000000320283a032748cef8227873ff4872689bf23f1cda83a5",
    header_hex: "00e05f2aab948491071265ad552351d0ad625745668da54b0172010000000000000000004f89a5d73bd4d4887f25981fe81892ccafda10c27f52d6f3dd28183a7c411b03b7072366194203177d9863ea",
    // Block 839,999's chain work (0x753b8c1eaae701e1f0146360) plus this block's.
    chainwork: 0x753b_dab0_e0d7_4545_3677_442b,
};

/// The shipped checkpoint of `network`, if it has one.
pub fn shipped(network: ChainNetwork) -> Option<&'static Shipped> {
    match network {
        ChainNetwork::Mainnet => Some(&MAINNET_840000),
        _ => None,
    }
}

/// Where a new chain of `network` starts: its shipped checkpoint, else genesis.
pub fn default_checkpoint(network: ChainNetwork) -> Checkpoint {
    let Some(s) = shipped(network) else {
        return Checkpoint::genesis(network);
    };
    let header: Header = deserialize_hex(s.header_hex).expect("a shipped header decodes");
    let hash: BlockHash = s.hash.parse().expect("a shipped hash parses");
    Checkpoint::operator(network, s.height, hash, header)
        .expect("a shipped header hashes to its hash and carries valid proof of work")
        .with_chainwork(s.chainwork)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onchain::{HeaderChain, HeaderSource};

    #[test]
    fn mainnet_starts_at_840000_and_takes_the_next_real_header() {
        let cp = default_checkpoint(ChainNetwork::Mainnet);
        assert_eq!(cp.height, 840_000);
        let mut chain = HeaderChain::in_memory(ChainNetwork::Mainnet, cp).unwrap();
        assert_eq!(chain.tip().height, 840_000);
        assert_eq!(chain.tip_chainwork(), MAINNET_840000.chainwork);
        // Block 840,001 as mined: links, meets its target, keeps the bits mid-period.
        let next: Header = deserialize_hex(
            "04002020a583da1c3ff29b687248ff737822f8ce4827033a282003000000000000000000bcc07f8618b7b063f833100724e2b40d6ee9dfa78087bfbe5d3441058a63de380e082366194203176d9026cc",
        )
        .unwrap();
        let now_us = 1_800_000_000 * 1_000_000;
        let out = chain
            .append(&[next], now_us, HeaderSource::Untrusted)
            .unwrap();
        assert_eq!(out.tip.height, 840_001);
        assert_eq!(
            out.tip.hash,
            "00000000000000000001b48a75d5a3077913f3f441eb7e08c13c43f768db2463"
                .parse::<BlockHash>()
                .unwrap()
        );
        // Every locator ends at the checkpoint.
        assert_eq!(
            chain.locator().last().unwrap().to_string(),
            MAINNET_840000.hash
        );
    }

    #[test]
    fn other_networks_start_at_genesis() {
        for net in [ChainNetwork::Testnet4, ChainNetwork::Regtest] {
            assert_eq!(default_checkpoint(net), Checkpoint::genesis(net));
        }
    }
}
