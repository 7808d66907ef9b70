//! Credit benchmarks: median redeem latency per proof including the durable (fsynced)
//! spent-set write, swaps/s, blind signatures/s (with DLEQ) and proof verifications/s.
//!
//! Run: `cargo bench -p payment --bench credit`. The spent set is the SQLite one
//! (WAL, synchronous=FULL) in a temporary dir on the same disk as `$TMPDIR`; the last
//! section compares it with the group-committing one under N concurrent redeemers.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bitcoin::secp256k1::rand::{thread_rng, RngCore};
use bitcoin::secp256k1::{PublicKey, SecretKey};
use payment::credit::bdhke::{blind_message, unblind};
use payment::credit::nut_types::{BlindSignature, BlindedMessage, Proof, SwapRequest};
use payment::credit::{Mint, MintLimits};
use payment::spent_set::{GroupCommitSpentSet, SpentSet, SqliteSpentSet};

const REDEEMS: usize = 300;
const BATCH: usize = 64;

/// CPU time of this thread in ns (Linux `schedstat`), so latency can be split into CPU
/// work and waiting for the disk.
fn thread_cpu_ns() -> u64 {
    fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Wallet {
    pending: Vec<(String, SecretKey, BlindedMessage)>,
}

fn wallet_outputs(id: &str, amounts: &[u64]) -> Wallet {
    let pending = amounts
        .iter()
        .map(|&amount| {
            let mut bytes = [0u8; 32];
            thread_rng().fill_bytes(&mut bytes);
            let secret = hex::encode(bytes);
            let r = SecretKey::new(&mut thread_rng());
            let b_ = blind_message(secret.as_bytes(), &r).expect("blinding a random secret");
            let msg = BlindedMessage {
                amount,
                id: id.to_string(),
                b_: hex::encode(b_.serialize()),
            };
            (secret, r, msg)
        })
        .collect();
    Wallet { pending }
}

impl Wallet {
    fn messages(&self) -> Vec<BlindedMessage> {
        self.pending.iter().map(|p| p.2.clone()).collect()
    }

    fn proofs(&self, mint: &Mint, sigs: &[BlindSignature]) -> Vec<Proof> {
        self.pending
            .iter()
            .zip(sigs)
            .map(|((secret, r, _), sig)| {
                let a: PublicKey = mint
                    .public_key(&sig.id, sig.amount)
                    .expect("mint's own key");
                let c_ = payment::credit::curve::parse_point("C_", &sig.c_).expect("mint's point");
                let c = unblind(&c_, r, &a).expect("unblind");
                Proof {
                    amount: sig.amount,
                    id: sig.id.clone(),
                    secret: secret.clone(),
                    c: hex::encode(c.serialize()),
                    witness: None,
                    dleq: None,
                }
            })
            .collect()
    }
}

fn mint_proofs(mint: &Mint, amounts: &[u64]) -> Vec<Proof> {
    let w = wallet_outputs(&mint.active_keyset_id(), amounts);
    let sigs = mint
        .mint(amounts.iter().sum(), &w.messages())
        .expect("minting");
    w.proofs(mint, &sigs)
}

/// CPU time of the whole process (all threads, also exited ones) in ns, from
/// `/proc/self/stat` utime + stime (clock ticks of 10 ms, fine over a run of seconds).
fn process_cpu_ns() -> u64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) * 10_000_000
}

/// Total redeems per concurrent run, split across the redeemer threads.
const CONCURRENT_REDEEMS: usize = 960;

/// Redeems one proof per call from `threads` threads at once over `spent`, and prints
/// redeems/s, median and p99 latency per call and process CPU per redeem.
fn concurrent_redeems(label: &str, state_dir: &Path, spent: Arc<dyn SpentSet>, threads: usize) {
    let mint = Mint::open(state_dir, spent, MintLimits::default()).expect("mint");
    let per_thread = CONCURRENT_REDEEMS / threads;
    let work: Vec<Vec<Proof>> = (0..threads)
        .map(|_| mint_proofs(&mint, &vec![8; per_thread]))
        .collect();
    let barrier = Barrier::new(threads + 1);
    let (wall, cpu, elapsed) = std::thread::scope(|s| {
        let handles: Vec<_> = work
            .iter()
            .map(|proofs| {
                let (mint, barrier) = (&mint, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let mut wall = Vec::with_capacity(proofs.len());
                    for p in proofs {
                        let t0 = Instant::now();
                        mint.redeem(std::slice::from_ref(p), "bench")
                            .expect("redeem");
                        wall.push(t0.elapsed());
                    }
                    wall
                })
            })
            .collect();
        let (c0, t0) = (process_cpu_ns(), Instant::now());
        barrier.wait();
        let wall: Vec<Duration> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("redeemer thread"))
            .collect();
        (wall, process_cpu_ns() - c0, t0.elapsed())
    });
    let mut wall = wall;
    wall.sort();
    let n = wall.len();
    println!(
        "{label:<12} {threads:>2} threads: {:>8.0} redeems/s, median {:>8.1} µs, p99 {:>8.1} µs wall; {:>6.1} µs CPU per redeem (process)",
        n as f64 / elapsed.as_secs_f64(),
        percentile(&wall, 0.5).as_secs_f64() * 1e6,
        percentile(&wall, 0.99).as_secs_f64() * 1e6,
        cpu as f64 / n as f64 / 1e3
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spent =
        Arc::new(SqliteSpentSet::open(&dir.path().join("spent.sqlite")).expect("spent set"));
    let mint = Mint::open(
        dir.path(),
        spent as Arc<dyn SpentSet>,
        MintLimits::default(),
    )
    .expect("mint");
    let id = mint.active_keyset_id();

    // Signing: blind signature + DLEQ proof per output.
    let w = wallet_outputs(&id, &[1; BATCH]);
    let msgs = w.messages();
    let rounds = 30;
    let (c0, t0) = (thread_cpu_ns(), Instant::now());
    for _ in 0..rounds {
        mint.mint(BATCH as u64, &msgs).expect("mint");
    }
    let sign_each = t0.elapsed() / (rounds * BATCH) as u32;
    let sign_cpu = (thread_cpu_ns() - c0) as f64 / (rounds * BATCH) as f64 / 1e3;
    println!(
        "sign (BDHKE + NUT-12 DLEQ): {:>8.1} µs each wall, {:>8.0} /s; {sign_cpu:>6.1} µs CPU",
        sign_each.as_secs_f64() * 1e6,
        1.0 / sign_each.as_secs_f64()
    );

    // Verification: hash_to_curve + k*Y per proof, no spent-set access.
    let proofs = mint_proofs(&mint, &[1; BATCH]);
    let (c0, t0) = (thread_cpu_ns(), Instant::now());
    for _ in 0..rounds {
        mint.validate_inputs(&proofs).expect("valid");
    }
    let verify_each = t0.elapsed() / (rounds * BATCH) as u32;
    let verify_cpu = (thread_cpu_ns() - c0) as f64 / (rounds * BATCH) as f64 / 1e3;
    println!(
        "verify (validate_inputs):   {:>8.1} µs each wall, {:>8.0} /s; {verify_cpu:>6.1} µs CPU",
        verify_each.as_secs_f64() * 1e6,
        1.0 / verify_each.as_secs_f64()
    );

    // Redeem one proof per call, each claim its own durable SQLite transaction.
    let singles = mint_proofs(&mint, &vec![8; REDEEMS]);
    let mut wall = Vec::with_capacity(REDEEMS);
    let mut cpu_total = 0u64;
    for p in &singles {
        let (c0, t0) = (thread_cpu_ns(), Instant::now());
        mint.redeem(std::slice::from_ref(p), "bench")
            .expect("redeem");
        wall.push(t0.elapsed());
        cpu_total += thread_cpu_ns() - c0;
    }
    wall.sort();
    println!(
        "redeem 1 proof/call:        median {:>8.1} µs, p99 {:>8.1} µs wall; {:>6.1} µs CPU (this thread, incl. SQLite)",
        percentile(&wall, 0.5).as_secs_f64() * 1e6,
        percentile(&wall, 0.99).as_secs_f64() * 1e6,
        cpu_total as f64 / REDEEMS as f64 / 1e3
    );

    // Redeem a batch per call: one fsync for the whole batch.
    let batches: Vec<Vec<Proof>> = (0..20).map(|_| mint_proofs(&mint, &[1; BATCH])).collect();
    let mut per_proof = Vec::new();
    let mut cpu_total = 0u64;
    for b in &batches {
        let (c0, t0) = (thread_cpu_ns(), Instant::now());
        mint.redeem(b, "bench").expect("redeem batch");
        per_proof.push(t0.elapsed() / BATCH as u32);
        cpu_total += thread_cpu_ns() - c0;
    }
    per_proof.sort();
    println!(
        "redeem {BATCH} proofs/call:       median {:>8.1} µs per proof wall; {:>6.1} µs CPU per proof",
        percentile(&per_proof, 0.5).as_secs_f64() * 1e6,
        cpu_total as f64 / (batches.len() * BATCH) as f64 / 1e3
    );

    // Swaps: 2 inputs -> 3 outputs (sign, then one durable claim with the swap's receipt
    // and the signatures). The median and the CPU time are the figures to compare on a
    // loaded machine: the mean follows whatever else is using the disk.
    const SWAPS: usize = 200;
    let inputs: Vec<Vec<Proof>> = (0..SWAPS).map(|_| mint_proofs(&mint, &[2, 2])).collect();
    let outs: Vec<Vec<BlindedMessage>> = (0..SWAPS)
        .map(|_| wallet_outputs(&id, &[1, 1, 2]).messages())
        .collect();
    let mut each = Vec::with_capacity(SWAPS);
    let (c0, t0) = (thread_cpu_ns(), Instant::now());
    for (i, o) in inputs.into_iter().zip(outs) {
        let t = Instant::now();
        mint.swap(&SwapRequest {
            inputs: i,
            outputs: o,
        })
        .expect("swap");
        each.push(t.elapsed());
    }
    let swap_each = t0.elapsed() / SWAPS as u32;
    let swap_cpu = (thread_cpu_ns() - c0) as f64 / SWAPS as f64 / 1e3;
    each.sort();
    println!(
        "swap 2 in -> 3 out:         {:>8.1} µs each, {:>8.0} /s; median {:>8.1} µs ({:>6.0} /s); {swap_cpu:>6.1} µs CPU",
        swap_each.as_secs_f64() * 1e6,
        1.0 / swap_each.as_secs_f64(),
        percentile(&each, 0.5).as_secs_f64() * 1e6,
        1.0 / percentile(&each, 0.5).as_secs_f64()
    );

    // Concurrent redeemers, 1 proof per call: one fsync per claim vs one per batch.
    for threads in [1, 8, 32] {
        let d = tempfile::tempdir().expect("temp dir");
        let sqlite = SqliteSpentSet::open(&d.path().join("spent.sqlite")).expect("spent set");
        concurrent_redeems("sqlite", d.path(), Arc::new(sqlite), threads);
        let d = tempfile::tempdir().expect("temp dir");
        let group =
            Arc::new(GroupCommitSpentSet::open(&d.path().join("spent.sqlite")).expect("spent set"));
        concurrent_redeems("group-commit", d.path(), group.clone(), threads);
        println!(
            "             group-commit made {} commits for {CONCURRENT_REDEEMS} redeems",
            group.commits()
        );
    }
}
