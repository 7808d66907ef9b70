//! Real Bitcoin data nobody here made (see /work/shared/testdata/bitcoin/README.md for
//! sources): testnet3 headers 1-546 from Bitcoin Core's tests with a two-header fork, the
//! genesis headers, and a real mainnet `gettxoutproof` from rust-bitcoin's tests.

use std::path::PathBuf;

use bitcoin::block::Header;
use bitcoin::consensus::encode::deserialize_hex;
use bitcoin::{BlockHash, Txid};
use payment::onchain::proof::{parse_proof, verify_proof};
use payment::onchain::{ChainNetwork, Checkpoint, HeaderChain, HeaderSource, PaymentError};

fn data(name: &str) -> String {
    let path = PathBuf::from("/work/shared/testdata/bitcoin").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&data(name)).expect("test data is JSON")
}

/// 2027-01-15: after every header in the data, so none is "too far in the future".
const NOW_US: u64 = 1_800_000_000 * 1_000_000;

/// (main headers in order, fork headers in order).
fn testnet3_headers() -> (Vec<Header>, Vec<Header>) {
    let mut main = Vec::new();
    let mut fork = Vec::new();
    for line in data("blockheader_testnet3.hex").lines() {
        match line.strip_prefix("fork:") {
            Some(hex) => fork.push(deserialize_hex(hex).expect("fork header decodes")),
            None => main.push(deserialize_hex(line).expect("header decodes")),
        }
    }
    (main, fork)
}

#[test]
fn testnet3_headers_from_genesis_reach_the_old_checkpoint() {
    let net = ChainNetwork::Testnet3;
    let (main, fork) = testnet3_headers();
    assert_eq!((main.len(), fork.len()), (546, 2));
    let mut chain = HeaderChain::in_memory(net, Checkpoint::genesis(net)).unwrap();
    let out = chain
        .append(&main, NOW_US, HeaderSource::Untrusted)
        .unwrap();
    assert_eq!(out.added, 546);
    let tip = chain.tip();
    assert_eq!(tip.height, 546);
    let expected: BlockHash = "000000002a936ca763904c3c35fce2f3556c559c0214345d31b1bcebf76acb70"
        .parse()
        .unwrap();
    assert_eq!(tip.hash, expected);

    // The fork is a valid side branch 544 blocks short of the best chain: from an
    // untrusted peer that is below the anti-DoS floor and is not stored ...
    let err = chain
        .append(&fork, NOW_US, HeaderSource::Untrusted)
        .unwrap_err();
    assert_eq!(err.code(), "low_work_branch", "{err}");
    assert!(err.is_peer_fault());
    assert_eq!(chain.len(), 547);
    // ... from the operator it is kept, never best.
    let out = chain.append(&fork, NOW_US, HeaderSource::Operator).unwrap();
    assert_eq!(out.added, 2);
    assert!(!out.reorg);
    assert_eq!(chain.tip().hash, expected);
    let fork_tip: BlockHash = "00000000b0494bd6c3d5ff79c497cfce40831871cbf39b1bc28bd1dac817dc39"
        .parse()
        .unwrap();
    let info = chain.block(&fork_tip).expect("fork kept");
    assert_eq!(info.height, 2);
    assert!(!info.on_best_chain);
    assert_eq!(chain.confirmations(&fork_tip), 0);
    assert_eq!(chain.confirmations(&main[0].block_hash()), 546);
}

#[test]
fn testnet3_headers_out_of_order_do_not_link() {
    let net = ChainNetwork::Testnet3;
    let (main, _) = testnet3_headers();
    let mut chain = HeaderChain::in_memory(net, Checkpoint::genesis(net)).unwrap();
    let err = chain
        .append(&main[1..], NOW_US, HeaderSource::Untrusted)
        .unwrap_err();
    assert_eq!(err.code(), "header_not_linking");
    // A real header with one bit of its nonce flipped no longer meets its target.
    let mut bad = main[0];
    bad.nonce ^= 1;
    let err = chain
        .append(&[bad], NOW_US, HeaderSource::Untrusted)
        .unwrap_err();
    assert_eq!(err.code(), "bad_pow");
}

#[test]
fn genesis_headers_match_the_networks() {
    let g = json("genesis_headers.json");
    for (key, net) in [
        ("mainnet", ChainNetwork::Mainnet),
        ("testnet3", ChainNetwork::Testnet3),
        ("testnet4", ChainNetwork::Testnet4),
        ("signet", ChainNetwork::Signet),
    ] {
        let header: Header = deserialize_hex(g[key]["header_hex"].as_str().unwrap()).unwrap();
        let hash: BlockHash = g[key]["hash"].as_str().unwrap().parse().unwrap();
        assert_eq!(header.block_hash(), hash, "{key}");
        assert_eq!(net.genesis_header(), header, "{key}");
        let chain = HeaderChain::in_memory(net, Checkpoint::genesis(net)).unwrap();
        assert_eq!(chain.tip().hash, hash, "{key}");
        assert_eq!(chain.tip().height, 0);
    }
}

#[test]
fn real_mainnet_gettxoutproof_verifies_against_its_checkpoint() {
    let j = json("mainnet_merkleblock.json");
    let proof = parse_proof(j["merkleblock_hex"].as_str().unwrap()).unwrap();
    let (hash, txids) = verify_proof(&proof).unwrap();
    let expected_hash: BlockHash = j["block_hash"].as_str().unwrap().parse().unwrap();
    let expected_txid: Txid = j["matched_txids"][0].as_str().unwrap().parse().unwrap();
    assert_eq!(hash, expected_hash);
    assert_eq!(txids, vec![expected_txid]);

    // The operator vouches for this block as a checkpoint (height believed 100002).
    let net = ChainNetwork::Mainnet;
    let cp = Checkpoint::operator(net, 100_002, expected_hash, proof.header).unwrap();
    let chain = HeaderChain::in_memory(net, cp).unwrap();
    assert_eq!(chain.confirmations(&hash), 1);
    let info = chain.block(&hash).unwrap();
    assert_eq!(info.height, 100_002);
    assert_eq!(info.time, 1_293_625_051);
}

#[test]
fn real_mainnet_proof_with_a_changed_hash_is_refused() {
    let j = json("mainnet_merkleblock.json");
    let hex = j["merkleblock_hex"].as_str().unwrap();
    // Byte 90 lies in the first hash of the partial tree (after 80 + 4 + 1 bytes).
    let mut bytes = hex::decode(hex).unwrap();
    bytes[90] ^= 0x01;
    let proof = parse_proof(&hex::encode(&bytes)).unwrap();
    let err = verify_proof(&proof).unwrap_err();
    assert!(matches!(err, PaymentError::BadMerkleProof(_)), "{err}");
    // A changed header byte (the nonce) breaks its proof of work.
    let mut bytes = hex::decode(hex).unwrap();
    bytes[79] ^= 0x01;
    let err = verify_proof(&parse_proof(&hex::encode(&bytes)).unwrap()).unwrap_err();
    assert_eq!(err.code(), "bad_pow");
}
