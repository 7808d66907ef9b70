//! Claims/s and CPU µs per claim: the PostgreSQL spent set (a throwaway local cluster on a
//! Unix socket, fsync and synchronous_commit on) against the SQLite group commit
//! (`payment::spent_set::GroupCommitSpentSet`, WAL, synchronous=FULL) on the same disk, at
//! 1, 8 and 32 concurrent claimers, each claim one fresh credit Y marked `Spent`.
//!
//! Then three hosts (three pools) of 8 claimers each race for the same key, round after
//! round (`COINOP_RACE_ROUNDS`, default 10,000): exactly one claim must win each round,
//! checked over every attempt.
//!
//! Run: `cargo bench -p payment-postgres --bench claims` (as root the cluster runs as
//! nobody under /tmp). CPU is split into this process (the claimers and, for SQLite, its
//! committer thread) and, for PostgreSQL, the server processes (postmaster and its
//! children: the backends serving the claims, the WAL writer...).

use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use nix::sys::resource::{getrusage, UsageWho};
use nix::unistd::{sysconf, SysconfVar};
use payment::spent_set::{GroupCommitSpentSet, KeyKind, SpendKey, SpendState, SpentSet};
use payment_postgres::test_cluster::TestCluster;
use payment_postgres::{PgSpentSet, PgStore, PgStoreOptions};

/// Claims per configuration, shared among its claimers.
const CLAIMS: u64 = 3200;
const CLAIMERS: [u64; 3] = [1, 8, 32];

/// A fresh key: a run tag and a counter make every claim of the whole bench distinct.
fn fresh_key(run: u8, n: u64) -> SpendKey {
    let mut bytes = vec![0u8; 33];
    bytes[0] = 0x02;
    bytes[1] = run;
    bytes[2..10].copy_from_slice(&n.to_be_bytes());
    SpendKey {
        kind: KeyKind::CreditY,
        bytes,
    }
}

/// CPU time of this process so far.
fn self_cpu() -> Duration {
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage of this process");
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    tv(u.user_time()) + tv(u.system_time())
}

/// CPU time (user + system) of `pid` and its live children, from /proc.
fn server_cpu(postmaster: i32) -> Duration {
    let ticks = sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as u64;
    let mut total = 0u64;
    for entry in fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the ")" that ends the command name: state ppid ... utime(14) stime(15).
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let pid: i32 = head
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ppid: i32 = f.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        if pid == postmaster || ppid == postmaster {
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            total += t(11) + t(12);
        }
    }
    Duration::from_micros(total * 1_000_000 / ticks)
}

struct Figures {
    claims_per_s: f64,
    client_us: f64,
    server_us: Option<f64>,
}

fn report(store: &str, claimers: u64, f: &Figures) {
    let server = f.server_us.map_or("-".to_string(), |s| format!("{s:.0}"));
    let total = f.client_us + f.server_us.unwrap_or(0.0);
    println!(
        "{store:<22} {claimers:>3} claimers: {:>8.0} claims/s   CPU µs/claim: {:>5.0} here + {server:>5} server = {total:>5.0}",
        f.claims_per_s, f.client_us
    );
}

fn bench_sqlite(run: u8, claimers: u64) -> Figures {
    let dir = tempfile::tempdir().expect("temp dir for the SQLite spent set");
    let set = Arc::new(GroupCommitSpentSet::open(&dir.path().join("spent.sqlite")).expect("open"));
    let per = CLAIMS / claimers;
    let barrier = Arc::new(Barrier::new(claimers as usize + 1));
    let handles: Vec<_> = (0..claimers)
        .map(|c| {
            let (set, barrier) = (set.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..per {
                    set.claim(&[fresh_key(run, c * per + i)], SpendState::Spent, "bench")
                        .expect("claiming a fresh key");
                }
            })
        })
        .collect();
    let cpu0 = self_cpu();
    let t0 = Instant::now();
    barrier.wait();
    for h in handles {
        h.join().expect("claimer thread");
    }
    let wall = t0.elapsed();
    let cpu = self_cpu() - cpu0;
    let n = (per * claimers) as f64;
    Figures {
        claims_per_s: n / wall.as_secs_f64(),
        client_us: cpu.as_secs_f64() * 1e6 / n,
        server_us: None,
    }
}

async fn bench_postgres(pg: &TestCluster, postmaster: i32, run: u8, claimers: u64) -> Figures {
    let mut options = PgStoreOptions::new(pg.conninfo("coinop"), "bench");
    options.pool_size = claimers as usize;
    let set = PgSpentSet::new(PgStore::connect(&options).await.expect("connecting"));
    // Warm up: open every pooled connection and prepare the statement on each.
    let warm = (0..claimers).map(|c| {
        let set = set.clone();
        tokio::spawn(async move {
            set.claim(
                &[fresh_key(run ^ 0x80, c)],
                SpendState::Spent,
                "warm",
                "warm",
            )
            .await
        })
    });
    for w in warm {
        w.await.expect("warm-up task").expect("warm-up claim");
    }
    let per = CLAIMS / claimers;
    let done = Arc::new(AtomicU64::new(0));
    let (cpu0, server0) = (self_cpu(), server_cpu(postmaster));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..claimers)
        .map(|c| {
            let (set, done) = (set.clone(), done.clone());
            tokio::spawn(async move {
                for i in 0..per {
                    set.claim(
                        &[fresh_key(run, c * per + i)],
                        SpendState::Spent,
                        "bench",
                        "bench",
                    )
                    .await
                    .expect("claiming a fresh key");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("claimer task");
    }
    let wall = t0.elapsed();
    let (cpu, server) = (self_cpu() - cpu0, server_cpu(postmaster) - server0);
    let n = done.load(Ordering::Relaxed) as f64;
    Figures {
        claims_per_s: n / wall.as_secs_f64(),
        client_us: cpu.as_secs_f64() * 1e6 / n,
        server_us: Some(server.as_secs_f64() * 1e6 / n),
    }
}

/// Three hosts × 8 claimers race for one fresh key per round; panics unless exactly one
/// claim wins each round. Returns (attempts, rounds per second).
async fn race(pg: &TestCluster, rounds: u64) -> (u64, f64) {
    const PER_HOST: usize = 8;
    let mut hosts = Vec::new();
    for h in 0..3 {
        let mut options = PgStoreOptions::new(pg.conninfo("coinop"), format!("race-{h}"));
        options.pool_size = PER_HOST;
        hosts.push(PgSpentSet::new(
            PgStore::connect(&options).await.expect("connecting"),
        ));
    }
    let attempts = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    for round in 0..rounds {
        let barrier = Arc::new(tokio::sync::Barrier::new(PER_HOST * hosts.len()));
        let mut tasks = Vec::new();
        for host in &hosts {
            for _ in 0..PER_HOST {
                let (host, barrier, attempts) = (host.clone(), barrier.clone(), attempts.clone());
                tasks.push(tokio::spawn(async move {
                    barrier.wait().await;
                    attempts.fetch_add(1, Ordering::Relaxed);
                    match host
                        .claim(&[fresh_key(0xee, round)], SpendState::Spent, "race", "race")
                        .await
                    {
                        Ok(()) => 1u32,
                        Err(payment_postgres::PgStoreError::AlreadyClaimed { .. }) => 0,
                        Err(e) => panic!("round {round}: {e}"),
                    }
                }));
            }
        }
        let mut wins = 0;
        for t in tasks {
            wins += t.await.expect("race task");
        }
        assert_eq!(wins, 1, "round {round}: {wins} claims won");
    }
    let per_s = rounds as f64 / t0.elapsed().as_secs_f64();
    (attempts.load(Ordering::Relaxed), per_s)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this with no argument and
    // only wants it to build and start.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(pg) = TestCluster::start("bench claims").expect("starting PostgreSQL") else {
        return;
    };
    pg.create_database("coinop").expect("createdb");
    let postmaster: i32 = fs::read_to_string(pg.socket_dir().join("data/postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next()?.trim().parse().ok())
        .expect("the postmaster's pid");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "{CLAIMS} claims of one fresh key each per line; {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (i, claimers) in CLAIMERS.into_iter().enumerate() {
        let run = i as u8;
        report(
            "sqlite group commit",
            claimers,
            &bench_sqlite(run, claimers),
        );
        let f = runtime.block_on(bench_postgres(&pg, postmaster, run, claimers));
        report("postgresql", claimers, &f);
    }
    let rounds: u64 = std::env::var("COINOP_RACE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10_000);
    let (attempts, per_s) = runtime.block_on(race(&pg, rounds));
    println!(
        "race: 3 hosts x 8 claimers, {rounds} rounds, {attempts} attempts: exactly one win \
         every round ({per_s:.0} rounds/s)"
    );
}
