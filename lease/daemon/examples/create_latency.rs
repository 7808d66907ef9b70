//! Benchmark: request arrival → guest_ready for credit-paid leases, stage by stage, against a
//! real coinopd process. Mints one credit note per lease on the daemon's regtest chain, then
//! creates the leases one after another (each stopped before the next) and prints the median
//! and p95 of each boot figure the daemon reports.
//!
//! ```text
//! cargo run --release -p coinopd --example create_latency -- \
//!     --coinopd target/release/coinopd --vmm STATIC_COINOP_VMM --testguest testguest-pvh.elf --count 25
//! # the same without the jail (the cgroup stays), for the cost of jailing:
//!     ... --coinopd-arg --no-jail
//! # leases restored from the image's golden snapshot instead of booted cold:
//!     ... --start restore
//! # with the fleet store: a throwaway PostgreSQL cluster on a Unix socket (as the tests
//! # start it), the payments fenced there and the mint's quote issued there:
//!     ... --store postgres
//! ```
//!
//! `--start restore` offers the test guest as an image with `snapshot` (coinopd's golden
//! snapshots), creates one lease first (it boots cold and the snapshot is built beside it),
//! waits for the snapshot, and then measures; every measured create must say
//! `boot.start = "restore"`. `--start cold` (the default) measures the same image without
//! `snapshot`: the same guest (`mode=echo`), the same create path but for the boot.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
use bitcoin::secp256k1::{PublicKey, SecretKey};
use coinop_cli::client::Client;
use payment::credit::bdhke::{blind_message, unblind};
use payment::credit::nut_types::{BlindSignature, BlindedMessage, Proof};
use serde_json::{json, Value};

const STAGES: [&str; 5] = [
    "payment_verified_us",
    "ledger_committed_us",
    "vmm_spawned_us",
    "vcpus_started_us",
    "guest_ready_us",
];
/// Sat per note: one note pays one lease.
const NOTE_SAT: u64 = 4;

struct Args {
    coinopd: PathBuf,
    vmm: PathBuf,
    testguest: PathBuf,
    count: usize,
    /// More coinopd flags (`--coinopd-arg --no-jail` measures the unjailed create path).
    coinopd_args: Vec<String>,
    /// Leases restored from the image's golden snapshot (`restore`) or booted (`cold`).
    restore: bool,
    /// `--store postgres`: coinopd with a fleet store (a throwaway local cluster) rather
    /// than its SQLite alone (`sqlite`, the default).
    postgres: bool,
}

/// The image measured: the test guest echoing, with or without a golden snapshot.
const IMAGE: &str = "bench";

fn args() -> Args {
    let mut a = Args {
        coinopd: PathBuf::from("target/release/coinopd"),
        vmm: PathBuf::new(),
        testguest: PathBuf::new(),
        count: 25,
        coinopd_args: Vec::new(),
        restore: false,
        postgres: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--coinopd" => a.coinopd = value.into(),
            "--vmm" => a.vmm = value.into(),
            "--testguest" => a.testguest = value.into(),
            "--count" => a.count = value.parse().unwrap_or(25),
            "--coinopd-arg" => a.coinopd_args.push(value),
            "--start" => {
                a.restore = match value.as_str() {
                    "cold" => false,
                    "restore" => true,
                    other => panic!("--start cold|restore, not {other:?}"),
                }
            }
            "--store" => {
                a.postgres = match value.as_str() {
                    "sqlite" => false,
                    "postgres" => true,
                    other => panic!("--store sqlite|postgres, not {other:?}"),
                }
            }
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

async fn ok(c: &Client, method: &str, path: &str, body: Option<Value>) -> Value {
    let r = c
        .call(
            method,
            path,
            None,
            body.map(|b| serde_json::to_vec(&b).expect("json")),
        )
        .await
        .expect("daemon answers");
    assert!(r.status < 300, "{method} {path}: {} {}", r.status, r.text());
    r.json()
}

/// Mints `count` notes of NOTE_SAT each (one on-chain payment, mined in-process).
async fn mint_notes(c: &Client, count: usize) -> Vec<Proof> {
    let total = NOTE_SAT * count as u64;
    let q = ok(
        c,
        "POST",
        "/v1/mint/quote/onchain",
        Some(json!({"amount": total, "unit": "sat"})),
    )
    .await;
    let quote = q["quote"].as_str().expect("quote id");
    let pay = coinop_cli::regtest_pay::pay_quote(c, quote)
        .await
        .expect("regtest payment");
    let keys = ok(c, "GET", "/v1/keys", None).await;
    let ks = &keys["keysets"][0];
    let keyset_id = ks["id"].as_str().expect("keyset id").to_string();
    let k: PublicKey = ks["keys"][NOTE_SAT.to_string()]
        .as_str()
        .expect("key")
        .parse()
        .expect("point");
    let blanks: Vec<(String, SecretKey, BlindedMessage)> = (0..count)
        .map(|_| {
            let mut b = [0u8; 32];
            OsRng.fill_bytes(&mut b);
            let secret = hex::encode(b);
            let r = SecretKey::new(&mut OsRng);
            let b_ = blind_message(secret.as_bytes(), &r).expect("blind");
            let msg = BlindedMessage {
                amount: NOTE_SAT,
                id: keyset_id.clone(),
                b_: b_.to_string(),
            };
            (secret, r, msg)
        })
        .collect();
    let outputs: Vec<&BlindedMessage> = blanks.iter().map(|b| &b.2).collect();
    let minted = ok(
        c,
        "POST",
        "/v1/mint/onchain",
        Some(json!({"payment": pay["onchain"], "outputs": outputs})),
    )
    .await;
    let sigs: Vec<BlindSignature> =
        serde_json::from_value(minted["signatures"].clone()).expect("signatures");
    sigs.iter()
        .zip(&blanks)
        .map(|(s, (secret, r, _))| {
            let c_: PublicKey = s.c_.parse().expect("C_");
            Proof {
                amount: s.amount,
                id: s.id.clone(),
                secret: secret.clone(),
                c: unblind(&c_, r, &k).expect("unblind").to_string(),
                witness: None,
                dleq: None,
            }
        })
        .collect()
}

/// Creates a lease of the measured image paid by `note`, stops it, and returns the create's
/// reply.
async fn create_and_stop(c: &Client, note: Proof) -> Value {
    let body = json!({"vcpus": 1, "mem_mib": 64, "image": IMAGE,
                      "payment": {"credit": {"proofs": [note]}}});
    let v = ok(c, "POST", "/v1/leases", Some(body)).await;
    let id = v["lease_id"].as_str().expect("lease id");
    let token = v["token"].as_str().expect("token");
    let r = c
        .call(
            "POST",
            &format!("/v1/leases/{id}/stop"),
            Some(token),
            Some(b"{}".to_vec()),
        )
        .await
        .expect("stop");
    assert_eq!(r.status, 200, "{}", r.text());
    // Let the VMM tear down (12-23 ms of VM destruction) off the next boot's clock.
    tokio::time::sleep(Duration::from_millis(150)).await;
    v
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = args();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("coinop.sock");
    let snapshot = if a.restore { ",snapshot" } else { "" };
    let image = format!(
        "{IMAGE}={}{snapshot},cmdline=mode=echo",
        a.testguest.display()
    );
    // Kept until the end: dropping it stops the cluster.
    let cluster = if a.postgres {
        let pg = payment_postgres::test_cluster::TestCluster::start("create_latency")
            .expect("starting a PostgreSQL cluster")
            .expect("PostgreSQL is installed");
        pg.create_database("fleet").expect("createdb fleet");
        Some(pg)
    } else {
        None
    };
    let store_args: Vec<String> = match &cluster {
        Some(pg) => vec![
            "--store".into(),
            pg.conninfo("fleet"),
            "--host-id".into(),
            "bench-1".into(),
        ],
        None => Vec::new(),
    };
    let mut child = Command::new(&a.coinopd)
        .args(["--state-dir", &dir.path().display().to_string()])
        .args(["--socket", &socket.display().to_string()])
        .args(["--vmm-bin", &a.vmm.display().to_string()])
        .args(["--testguest", &a.testguest.display().to_string()])
        .args(["--capacity-vcpus", "8", "--capacity-mib", "4096"])
        .args(["--image", &image])
        .args(&a.coinopd_args)
        .args(&store_args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start coinopd");
    for _ in 0..500 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = Client::new(&socket);
    if a.postgres {
        // Money waits for the host's start-up check against the store.
        for _ in 0..500 {
            if ok(&c, "GET", "/v1/host", None).await["store"]["ready"] == true {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut notes = mint_notes(&c, a.count + usize::from(a.restore)).await;
    if a.restore {
        // The first lease boots cold and starts the snapshot's build.
        let first = notes.pop().expect("one note more than --count");
        create_and_stop(&c, first).await;
        let image_dir = dir.path().join("snapshots").join(IMAGE);
        let written = || {
            std::fs::read_dir(&image_dir)
                .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.path().join("state").is_file())))
        };
        for _ in 0..1000 {
            if written() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            written(),
            "no golden snapshot under {}",
            image_dir.display()
        );
    }
    let want = if a.restore { "restore" } else { "cold" };
    let mut figures: Vec<Vec<u64>> = vec![Vec::new(); STAGES.len()];
    let mut steps: Vec<Vec<i64>> = vec![Vec::new(); STAGES.len()];
    for note in notes {
        let v = create_and_stop(&c, note).await;
        assert_eq!(v["boot"]["start"], want, "{v}");
        let mut previous = Some(0);
        for (i, stage) in STAGES.iter().enumerate() {
            let us = v["boot"][stage].as_u64();
            if let Some(us) = us {
                figures[i].push(us);
            }
            // Without the jail the cgroup move after the spawn can end after the guest is
            // ready: steps may be negative.
            if let (Some(now), Some(before)) = (us, previous) {
                steps[i].push(now as i64 - before as i64);
            }
            previous = us;
        }
    }
    println!(
        "{} credit-paid creates ({want}, store {}), µs from request arrival:",
        a.count,
        if a.postgres { "postgres" } else { "sqlite" }
    );
    println!("{:<22} {:>8} {:>8} {:>8}", "stage", "median", "p95", "max");
    for (i, stage) in STAGES.iter().enumerate() {
        let mut v = figures[i].clone();
        v.sort_unstable();
        if v.is_empty() {
            continue;
        }
        println!(
            "{:<22} {:>8} {:>8} {:>8}",
            stage,
            percentile(&v, 0.5),
            percentile(&v, 0.95),
            v[v.len() - 1]
        );
    }
    let step_medians: Vec<i64> = steps
        .iter()
        .map(|v| {
            let mut v = v.clone();
            v.sort_unstable();
            v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0)
        })
        .collect();
    let total: i64 = step_medians.iter().map(|m| m.max(&0)).sum();
    println!("each stage's own time (µs since the previous stage):");
    println!(
        "{:<22} {:>8} {:>8} {:>8}",
        "stage", "median", "p95", "share"
    );
    for (i, stage) in STAGES.iter().enumerate() {
        let mut v = steps[i].clone();
        v.sort_unstable();
        if v.is_empty() {
            continue;
        }
        let p95 = v[(((v.len() - 1) as f64) * 0.95).round() as usize];
        let share = 100.0 * step_medians[i].max(0) as f64 / total.max(1) as f64;
        println!(
            "{:<22} {:>8} {:>8} {:>7.0}%",
            stage, step_medians[i], p95, share
        );
    }
    // SIGTERM, not SIGKILL: coinopd removes its unused pool slots (cgroups, jail roots) on a
    // clean shutdown, and this state dir is gone afterwards.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    drop(cluster);
}
