//! Any bytes as a transaction, then through the full payment check against a small regtest
//! chain: typed errors only.
#![no_main]

use std::sync::OnceLock;

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::hashes::Hash;
use libfuzzer_sys::fuzz_target;
use payment::onchain::proof::{check_payment, parse_tx};
use payment::onchain::regtest_fixtures::RegtestChain;
use payment::onchain::{ChainNetwork, Checkpoint, HeaderChain, HeaderSource, Quote};

struct World {
    chain: HeaderChain,
    quote: Quote,
    proof_hex: String,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let net = ChainNetwork::Regtest;
        let mut blocks = RegtestChain::new();
        blocks.mine_empty(3, b"fuzz");
        let mut chain = HeaderChain::in_memory(net, Checkpoint::genesis(net)).expect("genesis");
        chain
            .append(
                &blocks.headers_after(0),
                blocks.now_us(),
                HeaderSource::Untrusted,
            )
            .expect("mined headers");
        let block = &blocks.blocks[1];
        let proof_hex = payment::onchain::regtest_fixtures::txout_proof_hex(
            block,
            &[block.txdata[0].compute_txid()],
        );
        let script =
            bitcoin::ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([3; 20]));
        let quote = Quote {
            quote_id: "fuzz".into(),
            amount_msat: 1000,
            amount_sat: 1,
            address: "bcrt1q".into(),
            script_pubkey: script,
            bip21: String::new(),
            derivation_index: 0,
            created_at_us: 0,
            expires_at_us: u64::MAX,
            paid_above_height: None,
            retired_at_height: None,
        };
        World {
            chain,
            quote,
            proof_hex,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let tx_hex = data.iter().map(|b| format!("{b:02x}")).collect::<String>();
    if let Ok(tx) = parse_tx(&tx_hex) {
        // Round trip: what parses re-serializes to the same bytes.
        assert_eq!(serialize_hex(&tx), tx_hex);
    }
    let _ = check_payment(&w.chain, &w.quote, &tx_hex, &w.proof_hex, 1);
});
