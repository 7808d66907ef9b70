//! Checkpoints shipped in code: a block per public network the host's chain may start from,
//! so a new host needs only the headers after it before it can verify a payment (mainnet:
//! about 85,000 instead of 925,000; testnet3: 2.4 M instead of 4.8 M; signet: 130,000 fewer).
//!
//! Each is a height and hash that two independent sources agree on (named beside it). A
//! wrong hash there could only stall a new host (no peer has a header hashing to it), or, if
//! both sources were wrong the same way, start it on a branch somebody mined for the
//! purpose; so one source is never enough.
//!
//! Only mainnet's comes with its full 80-byte header and the chain's cumulative work up to
//! it (both checked when the chain opens). The others are known by hash alone: the header is
//! taken from the first peer (or, on signet, from the operator's feed) that sends one hashing
//! to the shipped hash, and its proof of work then checks itself (see
//! [`super::header_chain`]). Their chain work is counted from the checkpoint on, which no
//! decision depends on: fork choice compares only branches that contain the checkpoint, and
//! the bound on weak side branches is measured from the best tip.
//!
//! None of them is at a 2016-block period start, so the first retarget after each cannot be
//! computed exactly (its period's first block, whose time it needs, is below the checkpoint):
//! it is held to consensus's factor-of-4 bound around the previous target instead (see
//! [`super::retarget::Expected::Within`]); every later one is checked exactly. Shipping that
//! first block's time would make it exact, but no two independent sources for it were at
//! hand, and a wrong one would stall every new host at that retarget. Testnet4 has none: no two independent sources name the same block
//! (Bitcoin Core lists 90,000 and 120,000, the kyoto light client every 10,000 up to 70,000,
//! Electrum the last block of each 2016-block period), and at 20,000 headers/s its whole
//! chain of about 130,000 headers syncs in seconds. Regtest starts at genesis.

use bitcoin::block::Header;
use bitcoin::consensus::encode::deserialize_hex;
use bitcoin::BlockHash;

use super::header_chain::Checkpoint;
use super::network::ChainNetwork;

/// One shipped checkpoint, in the form a reader can compare with a block explorer.
pub struct Shipped {
    pub height: u32,
    pub hash: &'static str,
    /// The full header, where shipped.
    pub header_hex: Option<&'static str>,
    /// Cumulative chain work up to and including this block, where known.
    pub chainwork: Option<u128>,
}

/// Block 840,000 (the fourth halving). Sources: Bitcoin Core's `m_assumeutxo_data` for
/// mainnet (src/kernel/chainparams.cpp, as vendored by the libbitcoinkernel-sys 0.4.1 crate)
/// and the kyoto-cbf light client's `MAINNET_HEADER_CP` (crates 0.8.0 to 0.14.0).
const MAINNET_840000: Shipped = Shipped {
    height: 840_000,
    hash: "0000000000000000000320283a032748cef8227873ff4872689bf23f1cda83a5",
    header_hex: Some("00e05f2aab948491071265ad552351d0ad625745668da54b0172010000000000000000004f89a5d73bd4d4887f25981fe81892ccafda10c27f52d6f3dd28183a7c411b03b7072366194203177d9863ea"),
    // Block 839,999's chain work (0x753b8c1eaae701e1f0146360) plus this block's.
    chainwork: Some(0x753b_dab0_e0d7_4545_3677_442b),
};

/// Testnet3 block 2,500,000. Sources: Bitcoin Core's `m_assumeutxo_data` for testnet3 (as
/// above) and Hemi Labs' heminetwork indexer (`testnet3Checkpoints` in service/tbc, every
/// 100,000 blocks from its own node).
const TESTNET3_2500000: Shipped = Shipped {
    height: 2_500_000,
    hash: "0000000000000093bcb68c03a9a168ae252572d348a2eaeba2cdf9231d73206f",
    header_hex: None,
    chainwork: None,
};

/// Signet block 160,000. Sources: Bitcoin Core's `m_assumeutxo_data` for signet (as above)
/// and kyoto-cbf's `SIGNET_HEADER_CP` (crates 0.8.0 to 0.14.0, every 10,000 blocks).
const SIGNET_160000: Shipped = Shipped {
    height: 160_000,
    hash: "0000003ca3c99aff040f2563c2ad8f8ec88bd0fd6b8f0895cfaf1ef90353a62c",
    header_hex: None,
    chainwork: None,
};

/// The shipped checkpoint of `network`, if it has one.
pub fn shipped(network: ChainNetwork) -> Option<&'static Shipped> {
    match network {
        ChainNetwork::Mainnet => Some(&MAINNET_840000),
        ChainNetwork::Testnet3 => Some(&TESTNET3_2500000),
        ChainNetwork::Signet => Some(&SIGNET_160000),
        ChainNetwork::Testnet4 | ChainNetwork::Regtest => None,
    }
}

/// Where a new chain of `network` starts: its shipped checkpoint, else genesis.
pub fn default_checkpoint(network: ChainNetwork) -> Checkpoint {
    let Some(s) = shipped(network) else {
        return Checkpoint::genesis(network);
    };
    let hash: BlockHash = s.hash.parse().expect("a shipped hash parses (unit-tested)");
    let checkpoint = match s.header_hex {
        Some(hex) => {
            let header: Header = deserialize_hex(hex).expect("a shipped header decodes");
            Checkpoint::operator(network, s.height, hash, header)
                .expect("a shipped header hashes to its hash and carries valid proof of work")
        }
        None => Checkpoint::by_hash(s.height, hash),
    };
    match s.chainwork {
        Some(work) => checkpoint.with_chainwork(work),
        None => checkpoint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onchain::{HeaderChain, HeaderSource};

    #[test]
    fn every_shipped_checkpoint_parses_and_a_shipped_header_hashes_to_its_hash() {
        for net in ChainNetwork::ALL {
            let Some(s) = shipped(net) else { continue };
            let hash: BlockHash = s.hash.parse().unwrap();
            // Every real block hash at these difficulties starts with at least 6 zero hex
            // digits: a reversed (internal byte order) hash would not.
            assert!(s.hash.starts_with("000000"), "{}: {}", net.name(), s.hash);
            let cp = default_checkpoint(net);
            assert_eq!((cp.height, cp.hash), (s.height, hash), "{}", net.name());
            if let Some(hex) = s.header_hex {
                let header: Header = deserialize_hex(hex).unwrap();
                assert_eq!(header.block_hash(), hash, "{}", net.name());
                assert!(header.target().is_met_by(hash), "{}", net.name());
                assert_eq!(cp.header, Some(header));
            } else {
                assert_eq!(cp.header, None);
            }
        }
        assert!(shipped(ChainNetwork::Mainnet).is_some());
        assert!(shipped(ChainNetwork::Testnet3).is_some());
        assert!(shipped(ChainNetwork::Signet).is_some());
    }

    #[test]
    fn mainnet_starts_at_840000_and_takes_the_next_real_header() {
        let cp = default_checkpoint(ChainNetwork::Mainnet);
        assert_eq!(cp.height, 840_000);
        let mut chain = HeaderChain::in_memory(ChainNetwork::Mainnet, cp).unwrap();
        assert_eq!(chain.checkpoint_header_wanted(), None);
        assert_eq!(chain.tip().height, 840_000);
        assert_eq!(chain.tip_chainwork(), MAINNET_840000.chainwork.unwrap());
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
    fn hash_only_checkpoints_wait_for_their_header() {
        let cp = default_checkpoint(ChainNetwork::Testnet3);
        let chain = HeaderChain::in_memory(ChainNetwork::Testnet3, cp).unwrap();
        assert_eq!(chain.checkpoint_header_wanted(), Some(cp.hash));
        assert_eq!(chain.tip().height, 2_500_000);
        assert_eq!(chain.locator(), vec![cp.hash]);
    }

    #[test]
    fn testnet4_and_regtest_start_at_genesis() {
        for net in [ChainNetwork::Testnet4, ChainNetwork::Regtest] {
            assert_eq!(default_checkpoint(net), Checkpoint::genesis(net));
        }
    }
}
