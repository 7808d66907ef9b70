//! On-chain figures: proof verification against a 1 M-header chain, header append rate,
//! chain load time and memory for 1 M headers, spent-set claims per second with
//! synchronous=FULL. Run: `cargo bench -p payment --bench onchain --features fixtures`
//! (`COINOP_BENCH_HEADERS` changes the chain length).

use std::time::{Duration, Instant};

use bitcoin::bip32::{Xpriv, Xpub};
use bitcoin::block::Header;
use bitcoin::hashes::Hash;
use bitcoin::{Amount, NetworkKind, TxMerkleNode};
use payment::onchain::proof::check_payment;
use payment::onchain::regtest_fixtures::{
    mine_block, mined_header, payment_tx, regtest_bits, tx_hex, txout_proof_hex,
};
use payment::onchain::{
    AddressDeriver, AddressKind, ChainNetwork, Checkpoint, HeaderChain, HeaderSource, QuoteBook,
};
use payment::spent_set::{SpendKey, SpendState, SpentSet, SqliteSpentSet};

const NET: ChainNetwork = ChainNetwork::Regtest;
const BATCH: usize = 2000;

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let median = samples[samples.len() / 2];
    let p95 = samples[(samples.len() * 95 / 100).min(samples.len() - 1)];
    println!(
        "{name}: median {:.1} µs, p95 {:.1} µs (n={})",
        median.as_secs_f64() * 1e6,
        p95.as_secs_f64() * 1e6,
        samples.len()
    );
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::var("COINOP_BENCH_HEADERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir_in(
        std::env::var("COINOP_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()),
    )
    .expect("bench dir");

    // A quote and a block paying it, placed 6 blocks below the tip.
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let xpub = Xpub::from_priv(
        &secp,
        &Xpriv::new_master(NetworkKind::Test, &[1; 32]).expect("seed"),
    )
    .to_string();
    let book = QuoteBook::open(
        &dir.path().join("q.sqlite"),
        AddressDeriver::new(&xpub, AddressKind::P2wpkh, NET).expect("xpub"),
    )
    .expect("quote book");
    let quote = book.create(1_000_000, 0, u64::MAX / 2).expect("quote");
    let pay = payment_tx(&[(quote.script_pubkey.clone(), Amount::from_sat(1_000))], 1);
    let filler: Vec<_> = (0..500)
        .map(|i| {
            payment_tx(
                &[(quote.script_pubkey.clone(), Amount::from_sat(1))],
                10 + i,
            )
        })
        .collect();

    let t = Instant::now();
    let genesis = NET.genesis_header();
    let mut headers: Vec<Header> = Vec::with_capacity(n);
    let mut prev = genesis;
    let pay_height = n - 5;
    let mut pay_block = None;
    for h in 1..=n {
        let header = if h == pay_height {
            let mut txs = filler.clone();
            txs.insert(137, pay.clone());
            let b = mine_block(prev.block_hash(), h as u32, prev.time + 600, b"bench", txs);
            let hd = b.header;
            pay_block = Some(b);
            hd
        } else {
            mined_header(
                prev.block_hash(),
                TxMerkleNode::from_byte_array([(h % 251) as u8; 32]),
                prev.time + 600,
                regtest_bits(),
            )
        };
        headers.push(header);
        prev = header;
    }
    let pay_block = pay_block.expect("n > 5");
    println!(
        "mined {n} regtest headers in {:.2} s (setup, not a figure)",
        t.elapsed().as_secs_f64()
    );
    let now_us = u64::from(prev.time) * 1_000_000;

    // Append rate, in memory and to the fsynced file, in 2000-header batches.
    let mut mem = HeaderChain::in_memory(NET, Checkpoint::genesis(NET)).expect("chain");
    let t = Instant::now();
    for b in headers.chunks(BATCH) {
        mem.append(b, now_us, HeaderSource::Untrusted)
            .expect("valid headers");
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "header append (in memory, batches of {BATCH}): {:.0} headers/s",
        n as f64 / secs
    );
    let path = dir.path().join("headers.dat");
    let mut disk = HeaderChain::open(&path, NET, Checkpoint::genesis(NET)).expect("chain file");
    let t = Instant::now();
    for b in headers.chunks(BATCH) {
        disk.append(b, now_us, HeaderSource::Untrusted)
            .expect("valid headers");
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "header append (to file, fsync per batch of {BATCH}): {:.0} headers/s",
        n as f64 / secs
    );
    drop(disk);
    drop(mem);
    drop(headers);

    // Load time and resident memory of the loaded chain.
    let mut loads = Vec::new();
    let mut heap = 0;
    let rss_before = rss_kib();
    for _ in 0..5 {
        let t = Instant::now();
        let chain = HeaderChain::open(&path, NET, Checkpoint::genesis(NET)).expect("reload");
        loads.push(t.elapsed());
        heap = chain.heap_bytes();
        assert_eq!(chain.tip().height as usize, n);
    }
    let grown = rss_kib().saturating_sub(rss_before);
    loads.sort();
    println!(
        "chain load ({n} headers, {} MB file): median {:.3} s, max {:.3} s; index heap {:.1} MiB (process RSS grew {:.1} MiB over 5 loads)",
        std::fs::metadata(&path).map(|m| m.len() / 1_000_000).unwrap_or(0),
        loads[2].as_secs_f64(),
        loads[4].as_secs_f64(),
        heap as f64 / (1024.0 * 1024.0),
        grown as f64 / 1024.0
    );

    // Proof verification against the loaded chain.
    let chain = HeaderChain::open(&path, NET, Checkpoint::genesis(NET)).expect("reload");
    let proof = txout_proof_hex(&pay_block, &[pay.compute_txid()]);
    let txh = tx_hex(&pay);
    let mut samples = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        let ok = check_payment(&chain, &quote, &txh, &proof, 3).expect("valid payment");
        samples.push(t.elapsed());
        assert_eq!(ok.confirmations, 6);
    }
    summary(
        &format!(
            "proof verify (block of {} txs, chain of {n})",
            pay_block.txdata.len()
        ),
        samples,
    );

    // Spent-set claims with synchronous=FULL, one key per claim (one fsync each).
    let set = SqliteSpentSet::open(&dir.path().join("spent.sqlite")).expect("spent set");
    let claims = 2000u32;
    let mut samples = Vec::with_capacity(claims as usize);
    let t = Instant::now();
    for i in 0..claims {
        let key = SpendKey::outpoint([7; 32], i);
        let s = Instant::now();
        set.claim(&[key], SpendState::Spent, "bench")
            .expect("fresh key");
        samples.push(s.elapsed());
    }
    println!(
        "spent-set claims (durable, sequential): {:.0} claims/s",
        f64::from(claims) / t.elapsed().as_secs_f64()
    );
    summary("spent-set claim latency", samples);
}
