//! The fleet store's part of one credit swap, swaps/s at 1, 8 and 32 concurrent swaps: the
//! inputs fenced and committed (`PgSpentSet`: the spent set alone, as before the signed
//! outputs were kept in the store), against the same plus the outputs reserved and settled
//! delivered (`PgSignedOutputs`: what a swap on a fleet does now). Each swap has 2 inputs
//! and 2 outputs, all fresh. A throwaway local cluster on a Unix socket, fsync and
//! synchronous_commit on.
//!
//! Run: `cargo bench -p payment-postgres --bench fleet_swap` (as root the cluster runs as
//! nobody under /tmp).

use std::sync::Arc;
use std::time::Instant;

use payment::spent_set::{KeyKind, SignedOutput, SpendKey, SpendState};
use payment_postgres::test_cluster::TestCluster;
use payment_postgres::{PgSignedOutputs, PgSpentSet, PgStore, PgStoreOptions};

/// Swaps per configuration, shared among the concurrent swappers.
const SWAPS: u64 = 1600;
const SWAPPERS: [u64; 3] = [1, 8, 32];

/// 33 distinct bytes for (run, swap, slot): inputs' Ys and outputs' B_s alike.
fn point(run: u8, n: u64, slot: u8) -> Vec<u8> {
    let mut bytes = vec![0u8; 33];
    bytes[0] = 0x02;
    bytes[1] = run;
    bytes[2] = slot;
    bytes[3..11].copy_from_slice(&n.to_be_bytes());
    bytes
}

fn inputs(run: u8, n: u64) -> Vec<SpendKey> {
    (0..2)
        .map(|slot| SpendKey {
            kind: KeyKind::CreditY,
            bytes: point(run, n, slot),
        })
        .collect()
}

fn outputs(run: u8, n: u64) -> Vec<SignedOutput> {
    (2..4)
        .map(|slot| SignedOutput {
            b_: point(run, n, slot),
            keyset_id: "00bench0000000000".into(),
            amount: 1 << slot,
            c_: point(run, n, slot + 10),
            dleq: Some(([slot; 32], [slot + 1; 32])),
        })
        .collect()
}

async fn bench(pg: &TestCluster, run: u8, swappers: u64, with_outputs: bool) -> f64 {
    let mut options = PgStoreOptions::new(pg.conninfo("coinop"), "bench");
    options.pool_size = swappers as usize;
    let store = PgStore::connect(&options).await.expect("connecting");
    let (set, signed) = (
        PgSpentSet::new(store.clone()),
        Arc::new(PgSignedOutputs::new(store)),
    );
    let per = SWAPS / swappers;
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..swappers)
        .map(|c| {
            let (set, signed) = (set.clone(), signed.clone());
            tokio::spawn(async move {
                for i in 0..per {
                    let n = c * per + i;
                    let (keys, op) = (inputs(run, n), format!("swap-{run}-{n}"));
                    set.claim(&keys, SpendState::Pending, "bench", &op)
                        .await
                        .expect("fencing fresh inputs");
                    if with_outputs {
                        signed
                            .reserve(&outputs(run, n), &op)
                            .await
                            .expect("reserving fresh outputs");
                    }
                    set.commit_pending(&keys, &op)
                        .await
                        .expect("committing the fence");
                    if with_outputs {
                        signed.settle(&op, true).await.expect("delivering");
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("swapper task");
    }
    (per * swappers) as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` only wants this to build and start.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(pg) = TestCluster::start("bench fleet_swap").expect("starting PostgreSQL") else {
        return;
    };
    pg.create_database("coinop").expect("createdb");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "{SWAPS} swaps (2 inputs, 2 outputs) per line; {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (i, swappers) in SWAPPERS.into_iter().enumerate() {
        let run = 2 * i as u8;
        let before = runtime.block_on(bench(&pg, run, swappers, false));
        let now = runtime.block_on(bench(&pg, run + 1, swappers, true));
        println!(
            "{swappers:>3} swappers: inputs only {before:>7.0} swaps/s, inputs + outputs \
             {now:>7.0} swaps/s ({:+.0}%)",
            (now / before - 1.0) * 100.0
        );
    }
}
