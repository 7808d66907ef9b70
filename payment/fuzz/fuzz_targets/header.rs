//! Any bytes as a batch of 80-byte headers appended to a regtest chain (and checked as a
//! checkpoint): typed errors only, and a failed batch leaves the chain as it was.
#![no_main]

use bitcoin::block::Header;
use bitcoin::consensus::encode::deserialize;
use libfuzzer_sys::fuzz_target;
use payment::onchain::{ChainNetwork, Checkpoint, HeaderChain, HeaderSource};

fuzz_target!(|data: &[u8]| {
    let net = ChainNetwork::Regtest;
    let mut headers: Vec<Header> = data
        .chunks_exact(80)
        .filter_map(|c| deserialize(c).ok())
        .collect();
    // Most random headers would stop at "unknown parent"; let an even nonce mean "links to
    // the header before" so the later rules (bits, work, time) get exercised too.
    let mut prev = net.genesis_header().block_hash();
    for h in &mut headers {
        if h.nonce & 1 == 0 {
            h.prev_blockhash = prev;
        }
        prev = h.block_hash();
    }
    let mut chain = HeaderChain::in_memory(net, Checkpoint::genesis(net)).expect("genesis");
    let before = chain.tip();
    let now = u64::from(u32::MAX) * 1_000_000;
    match chain.append(&headers, now, HeaderSource::Untrusted) {
        Ok(out) => assert_eq!(out.tip, chain.tip()),
        Err(_) => {
            assert_eq!(chain.tip(), before);
            assert_eq!(chain.len(), 1);
        }
    }
    if let Some(h) = headers.first() {
        let _ = Checkpoint::operator(net, 5, h.block_hash(), *h)
            .map(|cp| HeaderChain::in_memory(net, cp));
        let _ = payment::onchain::header_chain::check_pow(net.pow_limit(), h);
    }
});
