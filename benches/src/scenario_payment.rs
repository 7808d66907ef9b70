//! Scenario `payment`: the payment crate as a library, as coinopd calls it: SPV proof checks
//! against a regtest header chain of `headers` blocks, credit proof verification, redemption
//! (one proof per call, each a durable SQLite claim) and swaps (2 in → 3 out). Each run
//! times a batch of each operation; the table gives µs per operation and operations/s.

use std::sync::Arc;
use std::time::Instant;

use bitcoin::bip32::{Xpriv, Xpub};
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::rand::{thread_rng, RngCore};
use bitcoin::secp256k1::SecretKey;
use bitcoin::{Amount, NetworkKind, TxMerkleNode};
use payment::credit::bdhke::{blind_message, unblind};
use payment::credit::nut_types::{BlindedMessage, Proof, SwapRequest};
use payment::credit::{Mint, MintLimits};
use payment::onchain::proof::check_payment;
use payment::onchain::regtest_fixtures::{
    mine_block, mined_header, payment_tx, regtest_bits, tx_hex, txout_proof_hex,
};
use payment::onchain::{
    AddressDeriver, AddressKind, ChainNetwork, Checkpoint, HeaderChain, HeaderSource, Quote,
    QuoteBook,
};
use payment::spent_set::{SpentSet, SqliteSpentSet};

use crate::error::BenchError;
use crate::report::ScenarioReport;
use crate::sample_set::SampleSet;

pub struct PaymentScenario {
    /// Length of the header chain the SPV proof is checked against.
    pub headers: usize,
    /// Operations per run, per kind.
    pub batch: usize,
    pub runs: usize,
    pub warmup: usize,
    pub notes: Vec<String>,
}

const NET: ChainNetwork = ChainNetwork::Regtest;

fn err(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Run {
        what: format!("payment: {what}"),
        detail: e.to_string(),
    }
}

/// A chain, a quote, and a payment to it 5 blocks below the tip.
struct OnchainFixture {
    chain: HeaderChain,
    quote: Quote,
    tx_hex: String,
    proof_hex: String,
    block_txs: usize,
}

impl PaymentScenario {
    pub fn run(&self) -> Result<Vec<ScenarioReport>, BenchError> {
        let dir = tempfile::tempdir().map_err(|e| err("temp dir", e))?;
        let fx = onchain_fixture(dir.path(), self.headers)?;
        let spent = Arc::new(
            SqliteSpentSet::open(&dir.path().join("spent.sqlite"))
                .map_err(|e| err("spent set", e))?,
        );
        let mint = Mint::open(
            dir.path(),
            spent as Arc<dyn SpentSet>,
            MintLimits::default(),
        )
        .map_err(|e| err("mint", e))?;
        let mut s = SampleSet::default();
        for round in 0..self.warmup + self.runs {
            let mut one = SampleSet::default();
            self.onchain_round(&fx, &mut one)?;
            self.credit_round(&mint, &mut one)?;
            if round >= self.warmup {
                for row in one.rows() {
                    s.push(&row.engine, &row.metric, row.summary.median);
                }
            }
        }
        Ok(vec![ScenarioReport {
            scenario: "payment".into(),
            config: format!(
                "payment crate in-process: chain of {} regtest headers, proof in a block of {} txs; {} ops of each kind per run",
                self.headers, fx.block_txs, self.batch
            ),
            runs: self.runs,
            warmup: self.warmup,
            rows: s.rows(),
            ratios: Vec::new(),
            notes: self.notes.clone(),
        }])
    }

    fn onchain_round(&self, fx: &OnchainFixture, s: &mut SampleSet) -> Result<(), BenchError> {
        let t = Instant::now();
        for _ in 0..self.batch {
            check_payment(&fx.chain, &fx.quote, &fx.tx_hex, &fx.proof_hex, 3)
                .map_err(|e| err("proof check", e))?;
        }
        rate(s, "onchain", "SPV proof verify", t, self.batch);
        Ok(())
    }

    fn credit_round(&self, mint: &Mint, s: &mut SampleSet) -> Result<(), BenchError> {
        let n = self.batch;
        let proofs = mint_proofs(mint, &vec![1; n])?;
        let t = Instant::now();
        mint.validate_inputs(&proofs)
            .map_err(|e| err("validate", e))?;
        rate(s, "credit", "proof verify (no claim)", t, n);

        let t = Instant::now();
        for p in &proofs {
            mint.redeem(std::slice::from_ref(p), "bench")
                .map_err(|e| err("redeem", e))?;
        }
        rate(s, "credit", "redeem 1 proof/call, durable", t, n);

        let id = mint.active_keyset_id();
        let inputs: Vec<Vec<Proof>> = (0..n)
            .map(|_| mint_proofs(mint, &[2, 2]))
            .collect::<Result<_, _>>()?;
        let outputs: Vec<Vec<BlindedMessage>> = (0..n)
            .map(|_| blanks(&id, &[1, 1, 2]).map(|b| b.into_iter().map(|x| x.2).collect()))
            .collect::<Result<_, _>>()?;
        let t = Instant::now();
        for (i, o) in inputs.into_iter().zip(outputs) {
            mint.swap(&SwapRequest {
                inputs: i,
                outputs: o,
            })
            .map_err(|e| err("swap", e))?;
        }
        rate(s, "credit", "swap 2 in→3 out", t, n);
        Ok(())
    }
}

/// Records µs per operation and operations per second for `n` operations since `t`.
fn rate(s: &mut SampleSet, column: &str, what: &str, t: Instant, n: usize) {
    let secs = t.elapsed().as_secs_f64();
    s.push(column, &format!("{what} µs/op"), secs * 1e6 / n as f64);
    s.push(column, &format!("{what} ops/s"), n as f64 / secs);
}

type Blank = (String, SecretKey, BlindedMessage);

fn blanks(keyset_id: &str, amounts: &[u64]) -> Result<Vec<Blank>, BenchError> {
    amounts
        .iter()
        .map(|&amount| {
            let mut bytes = [0u8; 32];
            thread_rng().fill_bytes(&mut bytes);
            let secret = hex::encode(bytes);
            let r = SecretKey::new(&mut thread_rng());
            let b_ = blind_message(secret.as_bytes(), &r).map_err(|e| err("blind", e))?;
            let msg = BlindedMessage {
                amount,
                id: keyset_id.to_string(),
                b_: hex::encode(b_.serialize()),
            };
            Ok((secret, r, msg))
        })
        .collect()
}

fn mint_proofs(mint: &Mint, amounts: &[u64]) -> Result<Vec<Proof>, BenchError> {
    let b = blanks(&mint.active_keyset_id(), amounts)?;
    let msgs: Vec<_> = b.iter().map(|x| x.2.clone()).collect();
    let sigs = mint
        .mint(amounts.iter().sum(), &msgs)
        .map_err(|e| err("mint", e))?;
    sigs.iter()
        .zip(&b)
        .map(|(sig, (secret, r, _))| {
            let a = mint
                .public_key(&sig.id, sig.amount)
                .map_err(|e| err("mint key", e))?;
            let c_ =
                payment::credit::curve::parse_point("C_", &sig.c_).map_err(|e| err("C_", e))?;
            let c = unblind(&c_, r, &a).map_err(|e| err("unblind", e))?;
            Ok(Proof {
                amount: sig.amount,
                id: sig.id.clone(),
                secret: secret.clone(),
                c: hex::encode(c.serialize()),
                witness: None,
                dleq: None,
            })
        })
        .collect()
}

/// Mines `n` regtest headers (setup, untimed) with a 200-tx block paying a quote at n-5.
fn onchain_fixture(dir: &std::path::Path, n: usize) -> Result<OnchainFixture, BenchError> {
    let n = n.max(6);
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let master = Xpriv::new_master(NetworkKind::Test, &[7; 32]).map_err(|e| err("xpriv", e))?;
    let xpub = Xpub::from_priv(&secp, &master).to_string();
    let deriver =
        AddressDeriver::new(&xpub, AddressKind::P2wpkh, NET).map_err(|e| err("xpub", e))?;
    let book =
        QuoteBook::open(&dir.join("quotes.sqlite"), deriver).map_err(|e| err("quotes", e))?;
    let quote = book
        .create(1_000_000, 0, u64::MAX / 2)
        .map_err(|e| err("quote", e))?;
    let pay = payment_tx(&[(quote.script_pubkey.clone(), Amount::from_sat(1_000))], 1);
    let mut txs: Vec<_> = (0..199)
        .map(|i| {
            payment_tx(
                &[(quote.script_pubkey.clone(), Amount::from_sat(1))],
                10 + i,
            )
        })
        .collect();
    txs.insert(77, pay.clone());
    let genesis = NET.genesis_header();
    let mut chain =
        HeaderChain::in_memory(NET, Checkpoint::genesis(NET)).map_err(|e| err("chain", e))?;
    let mut prev = genesis;
    let mut pending = Vec::with_capacity(2000);
    let mut pay_block = None;
    for h in 1..=n {
        let header = if h == n - 5 {
            let b = mine_block(
                prev.block_hash(),
                h as u32,
                prev.time + 600,
                b"bench",
                txs.clone(),
            );
            let hd = b.header;
            pay_block = Some(b);
            hd
        } else {
            let root = TxMerkleNode::from_byte_array([(h % 251) as u8; 32]);
            mined_header(prev.block_hash(), root, prev.time + 600, regtest_bits())
        };
        pending.push(header);
        prev = header;
        if pending.len() == 2000 || h == n {
            let now_us = u64::from(prev.time) * 1_000_000;
            chain
                .append(&pending, now_us, HeaderSource::Untrusted)
                .map_err(|e| err("append headers", e))?;
            pending.clear();
        }
    }
    let block = pay_block.ok_or_else(|| err("fixture", "payment block not mined"))?;
    Ok(OnchainFixture {
        chain,
        proof_hex: txout_proof_hex(&block, &[pay.compute_txid()]),
        tx_hex: tx_hex(&pay),
        block_txs: block.txdata.len(),
        quote,
    })
}
