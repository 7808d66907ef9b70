//! Three coinopd hosts as one Cashu mint on one PostgreSQL fleet store, with no keyset
//! file copied between them: the keys come from one mint seed file, the keyset list and
//! the signed blinded messages from the store. Against a real throwaway PostgreSQL cluster
//! (payment_postgres::test_cluster), never a mock.

mod common;

use std::path::Path;
use std::time::Duration;

use common::leases::{credit_payment, testguest_body};
use common::{mint_seed_file as seed_file, Daemon, StateDir, Wallet};
use payment::credit::nut_types::{BlindSignature, BlindedMessage, Proof};
use payment_postgres::test_cluster::TestCluster;
use serde_json::{json, Value};

/// This binary's jail uid ranges, one per host, clear of other test binaries' (fleet.rs
/// takes 4_300_000 on).
const UID_BASE: u32 = 4_400_000;
const UIDS_PER_HOST: u32 = 16;

/// NUT-00 codes (error_codes.md).
const SPENT: u64 = 11001;
const PENDING: u64 = 11002;
const OUTPUT_SIGNED: u64 = 11003;
const KEYSET_INACTIVE: u64 = 12002;

/// A cluster with database `fleet`, or `None` (SKIPPED printed) without PostgreSQL.
fn cluster(test: &str) -> Option<TestCluster> {
    let pg = TestCluster::start(test).expect("starting the test PostgreSQL")?;
    pg.create_database("fleet").expect("createdb fleet");
    Some(pg)
}

/// Host `n`'s arguments: the fleet store, its id and uid range, the seed file.
fn host_args(pg: &TestCluster, n: u32, seed: &Path) -> Vec<String> {
    let mut args = vec!["--mint-seed-file".into(), seed.display().to_string()];
    args.extend(joined_args(pg, n));
    args
}

/// Host `n`'s arguments in the fleet without a seed file: its mint seed is the one in its
/// state dir, from the time it ran on its own.
fn joined_args(pg: &TestCluster, n: u32) -> Vec<String> {
    let mut args = vec![
        "--store".into(),
        pg.conninfo("fleet"),
        "--host-id".into(),
        format!("host-{n}"),
    ];
    args.extend(standalone_args(n));
    args
}

/// Host `n`'s uid range and the rest of what every host here runs with, in the fleet or
/// on its own.
fn standalone_args(n: u32) -> Vec<String> {
    vec![
        "--jail-uid-base".into(),
        (UID_BASE + n * UIDS_PER_HOST).to_string(),
        "--jail-uid-count".into(),
        UIDS_PER_HOST.to_string(),
        "--jail-pool".into(),
        "1".into(),
        "--guest-network".into(),
        "never".into(),
    ]
}

async fn host(pg: &TestCluster, dir: &StateDir, n: u32, seed: &Path) -> Daemon {
    host_with(pg, dir, n, seed, &[]).await
}

/// [`host`] with `env` (faults to inject).
async fn host_with(
    pg: &TestCluster,
    dir: &StateDir,
    n: u32,
    seed: &Path,
    env: &[(&str, &str)],
) -> Daemon {
    let args = host_args(pg, n, seed);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::spawn(dir.path(), &args, env).await
}

/// Sends `body` to `h`'s swap route until it is no longer refused as pending (11002: the
/// same request in flight there), for at most 30 s; the first other answer.
async fn swap_once_not_pending(h: &Daemon, body: &Value) -> coinop_cli::client::Reply {
    let start = std::time::Instant::now();
    loop {
        let r = h.call("POST", "/v1/swap", None, Some(body.clone())).await;
        if (r.status, cashu_code(&r)) != (400, PENDING) || start.elapsed() > Duration::from_secs(30)
        {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn messages(blanks: &[common::Blank]) -> Vec<&BlindedMessage> {
    blanks.iter().map(|b| &b.msg).collect()
}

fn cashu_code(r: &coinop_cli::client::Reply) -> u64 {
    r.json()["code"].as_u64().unwrap_or(u64::MAX)
}

fn signatures(r: &coinop_cli::client::Reply) -> Vec<BlindSignature> {
    serde_json::from_value(r.json()["signatures"].clone()).expect("signatures")
}

/// The body of a swap of `proofs` onto `blanks`.
fn swap_body(proofs: &[Proof], blanks: &[common::Blank]) -> Value {
    json!({"inputs": proofs, "outputs": messages(blanks)})
}

fn amounts(proofs: &[Proof]) -> Vec<u64> {
    proofs.iter().map(|p| p.amount).collect()
}

/// Credit minted on host 1 swaps on host 2 (the same swap sent again to host 3 gets the
/// same signatures), host 1 restores host 2's signatures, outputs signed on host 2 are
/// 11003 on host 1 and spend nothing there, and the notes pay a lease on host 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_with_one_mint_seed_are_one_mint() {
    let Some(pg) = cluster("three_hosts_with_one_mint_seed_are_one_mint") else {
        return;
    };
    let secrets = tempfile::tempdir().expect("tempdir");
    let seed = seed_file(secrets.path(), 0x5e, 0o600);
    let dirs = [StateDir::new(), StateDir::new(), StateDir::new()];
    let h1 = host(&pg, &dirs[0], 1, &seed).await;
    let h2 = host(&pg, &dirs[1], 2, &seed).await;
    let h3 = host(&pg, &dirs[2], 3, &seed).await;
    let keysets = h1.call("GET", "/v1/keysets", None, None).await.json();
    for (h, dir) in [(&h1, &dirs[0]), (&h2, &dirs[1]), (&h3, &dirs[2])] {
        assert_eq!(
            h.call("GET", "/v1/keysets", None, None).await.json(),
            keysets
        );
        // No private key material in the state dir: the seed file is the only copy.
        let keyset_file = dir.path().join(payment::credit::keyset_store::STORE_FILE);
        assert!(!keyset_file.exists(), "{}", keyset_file.display());
    }
    let wallet = Wallet::new(&h1).await;
    assert_eq!(
        Wallet::new(&h3).await.keys,
        wallet.keys,
        "one mint, one set of keys"
    );

    let minted = h1.mint_credit(300).await;
    let blanks = wallet.outputs(&amounts(&minted));
    let body = swap_body(&minted, &blanks);
    let r = h2.call("POST", "/v1/swap", None, Some(body.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let signed_on_2 = signatures(&r);
    let notes = wallet.unblind(&blanks, &signed_on_2);
    // The same swap sent again to another host (its reply lost): the same signatures.
    let r = h3.call("POST", "/v1/swap", None, Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(signatures(&r), signed_on_2);
    // NUT-09 restore on host 1 of what host 2 signed, and nothing for unsigned outputs.
    let unsigned = wallet.outputs(&[1, 2]);
    let mut asked = messages(&blanks);
    asked.extend(messages(&unsigned));
    let r = h1
        .call("POST", "/v1/restore", None, Some(json!({"outputs": asked})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(signatures(&r), signed_on_2);
    let restored: Vec<BlindedMessage> =
        serde_json::from_value(r.json()["outputs"].clone()).expect("outputs");
    assert_eq!(restored.len(), blanks.len());
    assert!(restored.iter().zip(&blanks).all(|(o, b)| o.b_ == b.msg.b_));

    // Fresh credit onto the outputs host 2 signed, at host 1: 11003, and nothing spent.
    let fresh = h1.mint_credit(300).await;
    assert_eq!(amounts(&fresh), amounts(&minted));
    let r = h1
        .call("POST", "/v1/swap", None, Some(swap_body(&fresh, &blanks)))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(cashu_code(&r), OUTPUT_SIGNED, "{}", r.text());
    for h in [&h1, &h2, &h3] {
        h.assert_unspent(&fresh).await;
    }
    // The same fresh credit onto new outputs is fine, on host 3.
    let r = h3
        .call(
            "POST",
            "/v1/swap",
            None,
            Some(swap_body(&fresh, &wallet.outputs(&amounts(&fresh)))),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The notes from host 2 pay a lease on host 3, and are then spent on host 1 too.
    if common::kvm_or_skip() {
        let lease = h3
            .create_lease(testguest_body("mode=echo", credit_payment(&notes)))
            .await;
        let r = h1
            .call(
                "POST",
                "/v1/swap",
                None,
                Some(swap_body(&notes, &wallet.outputs(&amounts(&notes)))),
            )
            .await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(cashu_code(&r), SPENT, "{}", r.text());
        h3.stop_lease(&lease.id, &lease.token).await;
    }
}

/// A rotation made on host 1 is the fleet's: host 2 knows the new keyset as soon as a
/// wallet names it, host 3 by its poll, old notes still redeem (on host 3, into the new
/// keyset), outputs of the old keyset are refused as inactive, and a restarted host keeps
/// the fleet's list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_on_one_host_is_used_by_every_host() {
    let Some(pg) = cluster("a_rotation_on_one_host_is_used_by_every_host") else {
        return;
    };
    let secrets = tempfile::tempdir().expect("tempdir");
    let seed = seed_file(secrets.path(), 0x7a, 0o600);
    let dirs = [StateDir::new(), StateDir::new(), StateDir::new()];
    let h1 = host(&pg, &dirs[0], 1, &seed).await;
    let h2 = host(&pg, &dirs[1], 2, &seed).await;
    let h3 = host(&pg, &dirs[2], 3, &seed).await;
    let old_wallet = Wallet::new(&h1).await;
    let old_notes = h1.mint_credit(200).await;

    let r = h1.call("POST", "/v1/keysets/rotate", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let listed = r.json();
    let active: Vec<&Value> = listed["keysets"]
        .as_array()
        .expect("keysets")
        .iter()
        .filter(|k| k["active"] == true)
        .collect();
    assert_eq!(active.len(), 1, "{listed}");
    let new_id = active[0]["id"].as_str().expect("id").to_string();
    assert_ne!(new_id, old_wallet.keyset_id);
    assert!(
        listed["keysets"]
            .as_array()
            .expect("keysets")
            .iter()
            .any(|k| k["id"] == old_wallet.keyset_id.as_str() && k["active"] == false),
        "the old keyset is listed inactive: {listed}"
    );

    // Host 2, asked for the new keyset at once, reads the fleet's list for it.
    let r = h2
        .call("GET", &format!("/v1/keys/{new_id}"), None, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["keysets"][0]["active"], true, "{}", r.text());
    // Host 3 by its poll.
    common::wait_for(
        async || Wallet::new(&h3).await.keyset_id == new_id,
        "host 3 adopting the rotation",
    )
    .await;
    let new_wallet = Wallet::new(&h3).await;
    assert_ne!(new_wallet.keys, old_wallet.keys);

    // Old notes redeem on host 3 into notes of the new keyset.
    let blanks = new_wallet.outputs(&amounts(&old_notes));
    let r = h3
        .call(
            "POST",
            "/v1/swap",
            None,
            Some(swap_body(&old_notes, &blanks)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sigs = signatures(&r);
    assert!(sigs.iter().all(|s| s.id == new_id), "{}", r.text());
    let new_notes = new_wallet.unblind(&blanks, &sigs);
    // Outputs of the old keyset are refused on every host now, as inactive.
    common::wait_for(
        async || Wallet::new(&h2).await.keyset_id == new_id,
        "host 2 adopting the rotation",
    )
    .await;
    for h in [&h1, &h2, &h3] {
        let r = h
            .call(
                "POST",
                "/v1/swap",
                None,
                Some(swap_body(
                    &new_notes,
                    &old_wallet.outputs(&amounts(&new_notes)),
                )),
            )
            .await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(cashu_code(&r), KEYSET_INACTIVE, "{}", r.text());
    }
    // The new notes swap on host 1 (they were signed on host 3).
    let r = h1
        .call(
            "POST",
            "/v1/swap",
            None,
            Some(swap_body(
                &new_notes,
                &new_wallet.outputs(&amounts(&new_notes)),
            )),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A restarted host starts from the fleet's list, not from keyset 0.
    h2.shutdown().await;
    let h2 = host(&pg, &dirs[1], 2, &seed).await;
    h2.wait_store_ready().await;
    common::wait_for(
        async || Wallet::new(&h2).await.keyset_id == new_id,
        "host 2 reading the fleet's keysets after a restart",
    )
    .await;
    assert_eq!(
        h2.call("GET", "/v1/keysets", None, None).await.json(),
        h1.call("GET", "/v1/keysets", None, None).await.json()
    );
}

/// Spawns coinopd on `dir` with `args` expecting it to refuse to start: its exit status
/// and its log.
async fn refused_start(dir: &StateDir, args: &[String]) -> (std::process::ExitStatus, String) {
    let socket = dir.path().join("coinop.sock");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let all = common::daemon_args(dir.path(), &socket, &args);
    let log_path = dir.path().join("coinopd.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_coinopd"))
        .args(&all[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start coinopd");
    for _ in 0..1500 {
        if let Some(status) = child.try_wait().expect("wait coinopd") {
            return (
                status,
                std::fs::read_to_string(&log_path).unwrap_or_default(),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "coinopd did not refuse to start: {}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
}

/// A host whose mint seed derives other keyset ids than the fleet's refuses to start,
/// naming both ids; so does one whose seed file others may read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_another_mint_seed_refuses_to_start() {
    let Some(pg) = cluster("a_host_with_another_mint_seed_refuses_to_start") else {
        return;
    };
    let secrets = tempfile::tempdir().expect("tempdir");
    let fleet_seed = seed_file(secrets.path(), 0x11, 0o600);
    let dir1 = StateDir::new();
    let h1 = host(&pg, &dir1, 1, &fleet_seed).await;
    let fleet_id = Wallet::new(&h1).await.keyset_id;

    let other_seed = seed_file(secrets.path(), 0x22, 0o600);
    let dir2 = StateDir::new();
    let (status, log) = refused_start(&dir2, &host_args(&pg, 2, &other_seed)).await;
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("mint seed derives keyset"), "{log}");
    assert!(log.contains(&fleet_id), "names the fleet's keyset: {log}");

    let readable = seed_file(secrets.path(), 0x11, 0o644);
    let dir3 = StateDir::new();
    let (status, log) = refused_start(&dir3, &host_args(&pg, 3, &readable)).await;
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("chmod 600"), "{log}");

    // The fleet's own seed on a new host is fine, and is the same mint.
    let dir4 = StateDir::new();
    let h4 = host(&pg, &dir4, 4, &fleet_seed).await;
    assert_eq!(Wallet::new(&h4).await.keyset_id, fleet_id);
}

/// PostgreSQL stopped: swap, on-chain mint and restore answer 503 `store_unavailable` and
/// sign nothing; started again: the same requests succeed without restarting coinopd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_refuses_mints_swaps_and_restores_until_it_is_back() {
    let Some(pg) = cluster("a_store_outage_refuses_mints_swaps_and_restores_until_it_is_back")
    else {
        return;
    };
    let secrets = tempfile::tempdir().expect("tempdir");
    let seed = seed_file(secrets.path(), 0x33, 0o600);
    let dir = StateDir::new();
    let h1 = host(&pg, &dir, 1, &seed).await;
    let wallet = Wallet::new(&h1).await;
    let proofs = h1.mint_credit(64).await;
    let (mint_body, mint_wallet, mint_blanks) = h1.mint_request(32).await;
    let blanks = wallet.outputs(&amounts(&proofs));
    let swap = swap_body(&proofs, &blanks);
    let restore = json!({"outputs": messages(&blanks)});

    pg.stop().expect("stopping PostgreSQL");
    for (path, body) in [
        ("/v1/swap", &swap),
        ("/v1/mint/onchain", &mint_body),
        ("/v1/restore", &restore),
    ] {
        let r = h1.call("POST", path, None, Some(body.clone())).await;
        assert_eq!(r.status, 503, "{path}: {}", r.text());
        assert!(
            r.text().contains("fleet store is unavailable"),
            "{path}: {}",
            r.text()
        );
    }

    pg.start_again().expect("starting PostgreSQL again");
    let r = h1.call("POST", "/v1/swap", None, Some(swap)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let swapped = signatures(&r);
    let r = h1
        .call("POST", "/v1/mint/onchain", None, Some(mint_body))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let minted = mint_wallet.unblind(&mint_blanks, &signatures(&r));
    assert_eq!(minted.iter().map(|p| p.amount).sum::<u64>(), 32);
    let r = h1.call("POST", "/v1/restore", None, Some(restore)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(signatures(&r), swapped);
}

/// Sends a swap to `d`, which must abort at its injected fault without answering.
async fn swap_into_crash(d: Daemon, body: &Value) {
    use std::os::unix::process::ExitStatusExt;
    let r = d
        .client
        .call(
            "POST",
            "/v1/swap",
            None,
            Some(serde_json::to_vec(body).expect("a Value serializes")),
        )
        .await;
    assert!(r.is_err(), "coinopd answered despite the fault: {r:?}");
    let status = d.wait_crash().await;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
}

/// Host 1 killed between reserving a swap's outputs in the store and its local commit:
/// meanwhile no host signs those outputs (11003) nor spends the inputs, restore hands out
/// nothing; after its restart both are free again and the same swap succeeds on host 2.
/// Killed after the local commit: after the restart the signatures are delivered, restored
/// on host 2, and the same swap sent to host 2 gets them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_reservation_and_the_local_commit_signs_nothing_twice() {
    let Some(pg) =
        cluster("a_crash_between_the_reservation_and_the_local_commit_signs_nothing_twice")
    else {
        return;
    };
    let secrets = tempfile::tempdir().expect("tempdir");
    let seed = seed_file(secrets.path(), 0x44, 0o600);
    let dirs = [StateDir::new(), StateDir::new()];
    let h1 = host(&pg, &dirs[0], 1, &seed).await;
    let h2 = host(&pg, &dirs[1], 2, &seed).await;
    let wallet = Wallet::new(&h2).await;
    let lost = h1.mint_credit(100).await;
    let kept = h1.mint_credit(100).await;
    let other = h2.mint_credit(100).await;
    h1.shutdown().await;

    // Killed after the reservation, before the local commit.
    let args = host_args(&pg, 1, &seed);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let h1 = Daemon::spawn(
        dirs[0].path(),
        &args,
        &[("COINOPD_FAULT", "fleet_outputs_reserved")],
    )
    .await;
    let blanks = wallet.outputs(&amounts(&lost));
    let body = swap_body(&lost, &blanks);
    swap_into_crash(h1, &body).await;
    let restore = json!({"outputs": messages(&blanks)});
    let r = h2
        .call("POST", "/v1/restore", None, Some(restore.clone()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        signatures(&r).is_empty(),
        "pending is not delivered: {}",
        r.text()
    );
    let r = h2
        .call("POST", "/v1/swap", None, Some(swap_body(&other, &blanks)))
        .await;
    assert_eq!(
        (r.status, cashu_code(&r)),
        (400, OUTPUT_SIGNED),
        "{}",
        r.text()
    );
    let h1 = host(&pg, &dirs[0], 1, &seed).await;
    h1.wait_store_ready().await;
    // Reconciled at start-up: released, so the same swap succeeds, on host 2.
    let r = h2.call("POST", "/v1/swap", None, Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    h1.shutdown().await;

    // Killed after the local commit, before the settle.
    let h1 = Daemon::spawn(
        dirs[0].path(),
        &args,
        &[("COINOPD_FAULT", "swap_committed")],
    )
    .await;
    let blanks = wallet.outputs(&amounts(&kept));
    let body = swap_body(&kept, &blanks);
    swap_into_crash(h1, &body).await;
    let h1 = host(&pg, &dirs[0], 1, &seed).await;
    h1.wait_store_ready().await;
    let restore = json!({"outputs": messages(&blanks)});
    common::wait_for(
        async || {
            let r = h2
                .call("POST", "/v1/restore", None, Some(restore.clone()))
                .await;
            r.status == 200 && signatures(&r).len() == blanks.len()
        },
        "host 1 delivering its signatures at start-up",
    )
    .await;
    let restored = signatures(&h2.call("POST", "/v1/restore", None, Some(restore)).await);
    // The wallet whose reply was lost asks host 2: the same signatures, good notes.
    let r = h2.call("POST", "/v1/swap", None, Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(signatures(&r), restored);
    let notes = wallet.unblind(&blanks, &restored);
    let r = h1
        .call(
            "POST",
            "/v1/swap",
            None,
            Some(swap_body(&notes, &wallet.outputs(&amounts(&notes)))),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// `n` notes of 1 sat minted on `h` (one on-chain mint, then a swap into ones).
async fn ones(h: &Daemon, wallet: &Wallet, n: u64) -> Vec<Proof> {
    let minted = h.mint_credit(n).await;
    let blanks = wallet.outputs(&vec![1; n as usize]);
    let r = h
        .call("POST", "/v1/swap", None, Some(swap_body(&minted, &blanks)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    wallet.unblind(&blanks, &signatures(&r))
}

/// The same blinded output sent to three hosts at once, each time with other (fresh)
/// inputs: exactly one host signs it, the two others answer 11003 and spend nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_output_sent_to_three_hosts_at_once_is_signed_once() {
    let Some(pg) = cluster("the_same_output_sent_to_three_hosts_at_once_is_signed_once") else {
        return;
    };
    let secrets = tempfile::tempdir().expect("tempdir");
    let seed = seed_file(secrets.path(), 0x55, 0o600);
    let dirs = [StateDir::new(), StateDir::new(), StateDir::new()];
    let hosts = [
        host(&pg, &dirs[0], 1, &seed).await,
        host(&pg, &dirs[1], 2, &seed).await,
        host(&pg, &dirs[2], 3, &seed).await,
    ];
    let wallet = Wallet::new(&hosts[0]).await;
    const ROUNDS: u64 = 48;
    let mut notes = Vec::new();
    for h in &hosts {
        notes.push(ones(h, &wallet, ROUNDS).await);
    }
    let mut wins = [0u32; 3];
    let mut unspent = Vec::new();
    for round in 0..ROUNDS as usize {
        let output = wallet.outputs(&[1]);
        let body = |i: usize| swap_body(&notes[i][round..=round], &output);
        let (a, b, c) = tokio::join!(
            hosts[0].call("POST", "/v1/swap", None, Some(body(0))),
            hosts[1].call("POST", "/v1/swap", None, Some(body(1))),
            hosts[2].call("POST", "/v1/swap", None, Some(body(2)))
        );
        let mut winner = None;
        for (i, r) in [a, b, c].iter().enumerate() {
            match (r.status, cashu_code(r)) {
                (200, _) => {
                    assert!(winner.is_none(), "round {round}: a second host signed");
                    winner = Some(i);
                }
                (400, OUTPUT_SIGNED) => unspent.push(notes[i][round].clone()),
                other => panic!(
                    "round {round}: host {} answered {other:?}: {}",
                    i + 1,
                    r.text()
                ),
            }
        }
        let winner = winner.unwrap_or_else(|| panic!("round {round}: no host signed"));
        wins[winner] += 1;
    }
    eprintln!("signed by host: {wins:?}");
    assert_eq!(wins.iter().sum::<u32>(), ROUNDS as u32);
    // The refused requests spent nothing: their inputs are unspent on every host.
    assert_eq!(unspent.len(), 2 * ROUNDS as usize);
    hosts[1].assert_unspent(&unspent).await;
}

/// A swap whose reservation's answer is lost (injected: the store reserved its outputs,
/// host 1 is told the connection dropped) is 503, and its settles release what it took.
/// The same swap sent again to host 1 meanwhile, while the first is between its two
/// settles (held there 1 s), must not have its own reservation deleted by the first's
/// settle: once it is answered, its signatures are delivered in the store (restored on
/// host 2, which signed nothing of it). Each copy is held 3 s after its reservation, so
/// that the first's last settle falls in the copy's own window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_swap_whose_reservation_answer_was_lost_keeps_its_signatures() {
    let Some(pg) =
        cluster("a_copy_of_a_swap_whose_reservation_answer_was_lost_keeps_its_signatures")
    else {
        return;
    };
    let secrets = tempfile::tempdir().expect("tempdir");
    let seed = seed_file(secrets.path(), 0x66, 0o600);
    let dirs = [StateDir::new(), StateDir::new()];
    let h1 = host_with(
        &pg,
        &dirs[0],
        1,
        &seed,
        &[
            ("COINOPD_FAULT_LOST", "fleet_outputs_reserved:1"),
            (
                "COINOPD_FAULT_DELAY",
                "fleet_settling:1000,fleet_outputs_reserved:3000",
            ),
        ],
    )
    .await;
    let h2 = host(&pg, &dirs[1], 2, &seed).await;
    let wallet = Wallet::new(&h2).await;
    // Minted on host 2: host 1's first reservation is the swap's.
    let proofs = h2.mint_credit(100).await;
    let blanks = wallet.outputs(&amounts(&proofs));
    let body = swap_body(&proofs, &blanks);

    let first = h1.call("POST", "/v1/swap", None, Some(body.clone()));
    let copy = async {
        // Once the first's answer was lost and it is settling (held 1 s there).
        tokio::time::sleep(Duration::from_millis(300)).await;
        swap_once_not_pending(&h1, &body).await
    };
    let (first, copy) = tokio::join!(first, copy);
    assert_eq!(first.status, 503, "{}", first.text());
    assert_eq!(copy.status, 200, "{}", copy.text());
    let restore = json!({"outputs": messages(&blanks)});
    let r = h2.call("POST", "/v1/restore", None, Some(restore)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        signatures(&r),
        signatures(&copy),
        "the copy's signatures delivered in the store"
    );
}

/// A swap on host 1 whose local commit comes while PostgreSQL is down (stopped while the
/// swap is held between its reservation and its local commit, 3 s): the swap is answered,
/// its settles fail. PostgreSQL started again, and host 1 not restarted, its signatures
/// are delivered in the store: the same swap sent to host 2 (a wallet whose reply was
/// lost) gets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_committed_during_a_store_outage_is_delivered_once_the_store_is_back() {
    let Some(pg) =
        cluster("a_swap_committed_during_a_store_outage_is_delivered_once_the_store_is_back")
    else {
        return;
    };
    let secrets = tempfile::tempdir().expect("tempdir");
    let seed = seed_file(secrets.path(), 0x77, 0o600);
    let dirs = [StateDir::new(), StateDir::new()];
    let h1 = host_with(
        &pg,
        &dirs[0],
        1,
        &seed,
        &[("COINOPD_FAULT_DELAY", "fleet_outputs_reserved:3000")],
    )
    .await;
    let h2 = host(&pg, &dirs[1], 2, &seed).await;
    let wallet = Wallet::new(&h2).await;
    let proofs = h2.mint_credit(100).await;
    let blanks = wallet.outputs(&amounts(&proofs));
    let body = swap_body(&proofs, &blanks);

    let first = h1.call("POST", "/v1/swap", None, Some(body.clone()));
    let outage = async {
        // Once host 1 has reserved the outputs (and is held before its local commit).
        common::wait_for(
            async || {
                pg.psql(
                    "fleet",
                    "SELECT count(*) FROM coinop_signed_outputs \
                     WHERE host_id = 'host-1' AND state = 1",
                )
                .is_ok_and(|n| n != "0")
            },
            "host 1 reserving the swap's outputs",
        )
        .await;
        pg.stop().expect("stopping PostgreSQL");
    };
    let (first, ()) = tokio::join!(first, outage);
    assert_eq!(first.status, 200, "{}", first.text());
    pg.start_again().expect("starting PostgreSQL again");

    let start = std::time::Instant::now();
    let again = loop {
        let r = h2.call("POST", "/v1/swap", None, Some(body.clone())).await;
        if r.status == 200 || start.elapsed() > Duration::from_secs(30) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(signatures(&again), signatures(&first));
}

/// A lease refund's change is the fleet's: a lease paid with credit on host 1 and stopped
/// there with outputs (the change signed by host 1) is restored by NUT-09 on host 2, its
/// outputs are 11003 for a swap on host 2, and the change notes swap on host 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refunds_change_is_restored_and_refused_again_on_another_host() {
    let Some(pg) = cluster("a_refunds_change_is_restored_and_refused_again_on_another_host") else {
        return;
    };
    if !common::kvm_or_skip() {
        return;
    }
    let secrets = tempfile::tempdir().expect("tempdir");
    let seed = seed_file(secrets.path(), 0x4e, 0o600);
    let dirs = [StateDir::new(), StateDir::new()];
    let h1 = host(&pg, &dirs[0], 1, &seed).await;
    let h2 = host(&pg, &dirs[1], 2, &seed).await;
    let wallet = Wallet::new(&h1).await;
    let paid = h1.mint_credit(500).await;
    let lease = h1
        .create_lease(testguest_body("mode=echo", credit_payment(&paid)))
        .await;
    let blanks = wallet.outputs(&[1; 10]);
    let r = h1
        .call(
            "POST",
            &format!("/v1/leases/{}/stop", lease.id),
            Some(&lease.token),
            Some(json!({"outputs": messages(&blanks)})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let change = signatures(&r);
    assert!(!change.is_empty(), "a refund: {}", r.text());
    let signed = &blanks[..change.len()];

    // NUT-09 on host 2: the change host 1 signed.
    let r = h2
        .call(
            "POST",
            "/v1/restore",
            None,
            Some(json!({"outputs": messages(signed)})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(signatures(&r), change);

    // Those outputs (with the amounts they were signed for) in a balanced swap on host 2:
    // 11003, and the swap's inputs stay unspent.
    let change_sat: u64 = change.iter().map(|c| c.amount).sum();
    let other = h2.mint_credit(change_sat).await;
    let reused: Vec<BlindedMessage> = signed
        .iter()
        .zip(&change)
        .map(|(b, c)| BlindedMessage {
            amount: c.amount,
            ..b.msg.clone()
        })
        .collect();
    let r = h2
        .call(
            "POST",
            "/v1/swap",
            None,
            Some(json!({"inputs": other, "outputs": reused})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(cashu_code(&r), OUTPUT_SIGNED, "{}", r.text());
    let r = h2
        .call(
            "POST",
            "/v1/swap",
            None,
            Some(swap_body(&other, &wallet.outputs(&amounts(&other)))),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The change is good money on host 2.
    let notes = wallet.unblind(signed, &change);
    let r = h2
        .call(
            "POST",
            "/v1/swap",
            None,
            Some(swap_body(&notes, &wallet.outputs(&amounts(&notes)))),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Host 1 killed between reserving a refund's change in the store and the ledger's refund:
/// meanwhile the change's outputs are 11003 on host 2 and restore hands out nothing; after
/// the restart the reservation is released (the lease was not refunded), the same stop
/// gets its change, and host 2 restores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_a_refunds_reservation_and_the_ledger_loses_nothing() {
    use std::os::unix::process::ExitStatusExt;
    let Some(pg) = cluster("a_crash_between_a_refunds_reservation_and_the_ledger_loses_nothing")
    else {
        return;
    };
    if !common::kvm_or_skip() {
        return;
    }
    let secrets = tempfile::tempdir().expect("tempdir");
    let seed = seed_file(secrets.path(), 0x52, 0o600);
    let dirs = [StateDir::new(), StateDir::new()];
    let args = host_args(&pg, 1, &seed);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Host 1 crashes at its first reservation of signed outputs: the refund below (its
    // credit is minted on host 2, and a create reserves none).
    let h1 = Daemon::spawn(
        dirs[0].path(),
        &args,
        &[("COINOPD_FAULT", "fleet_outputs_reserved")],
    )
    .await;
    let h2 = host(&pg, &dirs[1], 2, &seed).await;
    let wallet = Wallet::new(&h2).await;
    let paid = h2.mint_credit(500).await;
    let lease = h1
        .create_lease(testguest_body("mode=echo", credit_payment(&paid)))
        .await;
    let blanks = wallet.outputs(&[1; 10]);
    let stop = json!({"outputs": messages(&blanks)});
    let path = format!("/v1/leases/{}/stop", lease.id);
    let r = h1
        .client
        .call(
            "POST",
            &path,
            Some(&lease.token),
            Some(serde_json::to_vec(&stop).expect("a Value serializes")),
        )
        .await;
    assert!(r.is_err(), "coinopd answered despite the fault: {r:?}");
    let status = h1.wait_crash().await;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");

    // Meanwhile: reserved (11003 for anyone), not delivered (restore: nothing).
    let r = h2
        .call(
            "POST",
            "/v1/restore",
            None,
            Some(json!({"outputs": messages(&blanks)})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(signatures(&r).is_empty(), "{}", r.text());
    let other = h2.mint_credit(1).await;
    let r = h2
        .call(
            "POST",
            "/v1/swap",
            None,
            Some(swap_body(&other, &blanks[..1])),
        )
        .await;
    assert_eq!(
        (r.status, cashu_code(&r)),
        (400, OUTPUT_SIGNED),
        "{}",
        r.text()
    );

    // Restarted: reconciled (released), and the same stop refunds the lease.
    let h1 = host(&pg, &dirs[0], 1, &seed).await;
    h1.wait_store_ready().await;
    let r = h1
        .call("POST", &path, Some(&lease.token), Some(stop.clone()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let change = signatures(&r);
    assert!(!change.is_empty(), "a refund: {}", r.text());
    let r = h2
        .call(
            "POST",
            "/v1/restore",
            None,
            Some(json!({"outputs": messages(&blanks[..change.len()])})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(signatures(&r), change);
    common::wait_for(
        async || {
            h1.call(
                "GET",
                &format!("/v1/leases/{}", lease.id),
                Some(&lease.token),
                None,
            )
            .await
            .json()["state"]
                == "stopped"
        },
        "the stopped lease's guest to exit",
    )
    .await;
}

/// A refund whose change reservation's answer is lost (the store reserved it, host 1
/// carries on as if the connection dropped): the stop fails (503) and its reservation is
/// released at once, not left pending fleet-wide until host 1 restarts, so host 2 signs
/// one of those outputs for something else; the stop onto other outputs then refunds the
/// whole balance, which host 2 restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_whose_reservation_answer_was_lost_leaves_no_output_pending() {
    let Some(pg) = cluster("a_refund_whose_reservation_answer_was_lost_leaves_no_output_pending")
    else {
        return;
    };
    if !common::kvm_or_skip() {
        return;
    }
    let secrets = tempfile::tempdir().expect("tempdir");
    let seed = seed_file(secrets.path(), 0x53, 0o600);
    let dirs = [StateDir::new(), StateDir::new()];
    // Host 1's first reservation of signed outputs is the refund below (its credit is
    // minted on host 2, and a create reserves none): its answer is lost.
    let h1 = host_with(
        &pg,
        &dirs[0],
        1,
        &seed,
        &[("COINOPD_FAULT_LOST", "fleet_outputs_reserved:1")],
    )
    .await;
    let h2 = host(&pg, &dirs[1], 2, &seed).await;
    h1.wait_store_ready().await;
    h2.wait_store_ready().await;
    let wallet = Wallet::new(&h2).await;
    let paid = h2.mint_credit(500).await;
    let lease = h1
        .create_lease(testguest_body("mode=echo", credit_payment(&paid)))
        .await;
    let blanks = wallet.outputs(&[1; 10]);
    let path = format!("/v1/leases/{}/stop", lease.id);
    let r = h1
        .call(
            "POST",
            &path,
            Some(&lease.token),
            Some(json!({"outputs": messages(&blanks)})),
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.text());

    // Released: host 2 signs the first of those outputs for a swap of its own.
    let other = h2.mint_credit(1).await;
    let r = h2
        .call(
            "POST",
            "/v1/swap",
            None,
            Some(swap_body(&other, &blanks[..1])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The lease kept its balance: the stop onto the other outputs refunds it.
    let rest = json!({"outputs": messages(&blanks[1..])});
    let r = h1.call("POST", &path, Some(&lease.token), Some(rest)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let change = signatures(&r);
    assert!(!change.is_empty(), "a refund: {}", r.text());
    let r = h2
        .call(
            "POST",
            "/v1/restore",
            None,
            Some(json!({"outputs": messages(&blanks[1..1 + change.len()])})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(signatures(&r), change);
}

/// A `B_` this host signed (for 1 sat) while it ran on its own, so only its local spent
/// set knows it, then sent in a swap of fresh inputs at 64 sat once it has joined: the
/// local swap refuses it (11003), and the reservation the store held for the 64-sat
/// signature must be released, not delivered because the local set has *a* signature for
/// that `B_`: else NUT-09 restore on any host hands out 64 sat the swap never paid for,
/// while its inputs stay unspent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_signed_before_the_join_is_not_delivered_again_at_another_amount() {
    let Some(pg) =
        cluster("an_output_signed_before_the_join_is_not_delivered_again_at_another_amount")
    else {
        return;
    };
    let dirs = [StateDir::new(), StateDir::new()];
    let alone = standalone_args(1);
    let alone: Vec<&str> = alone.iter().map(String::as_str).collect();
    let h1 = Daemon::spawn(dirs[0].path(), &alone, &[]).await;
    let wallet = Wallet::new(&h1).await;
    let one = h1.mint_credit(1).await;
    let blank = wallet.outputs(&[1]);
    let r = h1
        .call("POST", "/v1/swap", None, Some(swap_body(&one, &blank)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let signed_alone = signatures(&r);
    h1.shutdown().await;

    // Both hosts of the fleet sign with host 1's mint keys, from its state dir.
    let name = payment::credit::keyset_store::STORE_FILE;
    std::fs::copy(dirs[0].path().join(name), dirs[1].path().join(name))
        .expect("copying the mint keys");
    let spawn = |dir: &StateDir, n: u32| {
        let args = joined_args(&pg, n);
        let path = dir.path().to_path_buf();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Daemon::spawn(&path, &args, &[]).await
        }
    };
    let h1 = spawn(&dirs[0], 1).await;
    let h2 = spawn(&dirs[1], 2).await;
    for h in [&h1, &h2] {
        h.wait_store_ready().await;
    }

    let fresh = h1.mint_credit(64).await;
    let again = BlindedMessage {
        amount: 64,
        ..blank[0].msg.clone()
    };
    let r = h1
        .call(
            "POST",
            "/v1/swap",
            None,
            Some(json!({"inputs": fresh, "outputs": [again]})),
        )
        .await;
    assert_eq!(
        (r.status, cashu_code(&r)),
        (400, OUTPUT_SIGNED),
        "{}",
        r.text()
    );
    for h in [&h1, &h2] {
        h.assert_unspent(&fresh).await;
    }
    // The reservation was settled before the swap answered (or never made: host 1
    // published its own signature when it joined). Every host restores what host 1
    // signed on its own, the 1-sat note, and nothing else.
    let restore = json!({"outputs": [again]});
    for h in [&h2, &h1] {
        let r = h
            .call("POST", "/v1/restore", None, Some(restore.clone()))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(signatures(&r), signed_alone);
    }
}

/// The body of a NUT-30 mint of `quote`: `outputs` signed with `key` (NUT-20).
fn nut30_mint_body(
    quote: &str,
    outputs: Vec<BlindedMessage>,
    key: &bitcoin::secp256k1::Keypair,
) -> Value {
    use bitcoin::secp256k1::{Message, Secp256k1};
    use payment::credit::mint_quote_signature::mint_message_digest;
    let digest = mint_message_digest(quote, &outputs).expect("hex outputs");
    let sig = Secp256k1::new().sign_schnorr_no_aux_rand(&Message::from_digest(digest), key);
    json!({"quote": quote, "outputs": outputs, "signature": hex::encode(sig.as_ref())})
}

/// Host 1's history from before it joined, and the two hosts of the fleet it then joined.
struct Joined {
    h1: Daemon,
    h2: Daemon,
    wallet: Wallet,
    /// The output of a swap host 1 made alone, and its signature.
    blank: Vec<common::Blank>,
    signed_alone: Vec<BlindSignature>,
    /// A NUT-30 quote made and paid (600 sat) on host 1 alone, locked to `key`.
    quote: String,
    key: bitcoin::secp256k1::Keypair,
}

/// Host 1 alone swaps a note onto one output and gets a NUT-30 quote paid, then joins a
/// fleet (`pg`) with host 2, which signs with host 1's mint keys; host 1 in the fleet runs
/// with `env` (faults to inject).
async fn joined_with_history(
    pg: &TestCluster,
    dirs: &[StateDir; 2],
    env: &[(&str, &str)],
) -> Joined {
    let alone = standalone_args(1);
    let alone: Vec<&str> = alone.iter().map(String::as_str).collect();
    let h1 = Daemon::spawn(dirs[0].path(), &alone, &[]).await;
    let wallet = Wallet::new(&h1).await;
    let one = h1.mint_credit(1).await;
    let blank = wallet.outputs(&[1]);
    let r = h1
        .call("POST", "/v1/swap", None, Some(swap_body(&one, &blank)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let signed_alone = signatures(&r);
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let key = bitcoin::secp256k1::Keypair::new(&secp, &mut bitcoin::secp256k1::rand::thread_rng());
    let r = h1
        .call(
            "POST",
            "/v1/mint/quote/onchain",
            None,
            Some(json!({"unit": "sat", "pubkey": key.public_key().to_string()})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let quote = r.json()["quote"].as_str().expect("quote").to_string();
    let address = r.json()["request"].as_str().expect("address").to_string();
    let (tx_hex, proof_hex) = common::pay_address(&h1, &address, 600).await;
    let r = h1
        .call(
            "POST",
            &format!("/v1/mint/quote/onchain/{quote}/payment"),
            None,
            Some(json!({"tx_hex": tx_hex, "proof_hex": proof_hex})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["amount_paid"], 600, "{}", r.text());
    h1.shutdown().await;

    let name = payment::credit::keyset_store::STORE_FILE;
    std::fs::copy(dirs[0].path().join(name), dirs[1].path().join(name))
        .expect("copying the mint keys");
    let h1 = joined_host(pg, &dirs[0], 1, env).await;
    let h2 = joined_host(pg, &dirs[1], 2, &[]).await;
    Joined {
        h1,
        h2,
        wallet,
        blank,
        signed_alone,
        quote,
        key,
    }
}

/// Host `n` in the fleet with the mint keys of its state dir and `env`, ready.
async fn joined_host(pg: &TestCluster, dir: &StateDir, n: u32, env: &[(&str, &str)]) -> Daemon {
    let args = joined_args(pg, n);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::spawn(dir.path(), &args, env).await;
    d.wait_store_ready().await;
    d
}

/// Review F1 (a): what host 1 signed on its own is the fleet's once it joined: NUT-09
/// restore on host 2 returns it, and a swap on host 2 with that `B_` as an output is
/// refused (11003) and spends nothing. Host 1's next start records nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_made_before_the_join_are_restored_and_refused_on_every_host() {
    let Some(pg) =
        cluster("signatures_made_before_the_join_are_restored_and_refused_on_every_host")
    else {
        return;
    };
    let dirs = [StateDir::new(), StateDir::new()];
    let Joined {
        h1,
        h2,
        blank,
        signed_alone,
        ..
    } = joined_with_history(&pg, &dirs, &[]).await;
    let restore = json!({"outputs": messages(&blank)});
    let r = h2.call("POST", "/v1/restore", None, Some(restore)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(signatures(&r), signed_alone, "host 2 restores host 1's own");
    let fresh = h2.mint_credit(1).await;
    let r = h2
        .call("POST", "/v1/swap", None, Some(swap_body(&fresh, &blank)))
        .await;
    assert_eq!(
        (r.status, cashu_code(&r)),
        (400, OUTPUT_SIGNED),
        "{}",
        r.text()
    );
    h2.assert_unspent(&fresh).await;
    let published = pg
        .psql(
            "fleet",
            "SELECT count(*) FROM coinop_signed_outputs \
             WHERE operation_id = 'pre-fleet:host-1' AND state = 2",
        )
        .expect("psql");
    assert_eq!(published, "2", "the mint's output and the swap's");

    // Host 1 again: what it published is marked in its ledger, so nothing is recorded
    // again (its log, kept across its runs, tells of one publication).
    h1.shutdown().await;
    let h1 = joined_host(&pg, &dirs[0], 1, &[]).await;
    let log = h1.log();
    assert_eq!(log.matches("own signatures published").count(), 1, "{log}");
    assert!(!log.contains("signed again by the fleet"), "{log}");
}

/// Review F1 (b): a NUT-30 quote host 1 made (and was paid) before it joined, minted on
/// host 1 after: its outputs are reserved and delivered in the fleet store, so NUT-09
/// restore on host 2 returns them and a swap on host 2 with one of them is 11003. The same
/// mint again gets the same signatures and issues nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_fleet_nut30_quote_minted_after_the_join_is_the_fleets() {
    let Some(pg) = cluster("a_pre_fleet_nut30_quote_minted_after_the_join_is_the_fleets") else {
        return;
    };
    let dirs = [StateDir::new(), StateDir::new()];
    let Joined {
        h1,
        h2,
        wallet,
        quote,
        key,
        ..
    } = joined_with_history(&pg, &dirs, &[]).await;
    let blanks = wallet.outputs(&[512, 64]);
    let msgs: Vec<BlindedMessage> = blanks.iter().map(|b| b.msg.clone()).collect();
    let body = nut30_mint_body(&quote, msgs.clone(), &key);
    let r = h1
        .call("POST", "/v1/mint/onchain", None, Some(body.clone()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let minted = signatures(&r);
    assert_eq!(amounts(&wallet.unblind(&blanks, &minted)), [512, 64]);
    let r = h2
        .call("POST", "/v1/restore", None, Some(json!({"outputs": msgs})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        signatures(&r),
        minted,
        "host 2 restores the pre-fleet quote's mint"
    );
    let fresh = h2.mint_credit(64).await;
    let r = h2
        .call(
            "POST",
            "/v1/swap",
            None,
            Some(json!({"inputs": fresh, "outputs": [msgs[1]]})),
        )
        .await;
    assert_eq!(
        (r.status, cashu_code(&r)),
        (400, OUTPUT_SIGNED),
        "{}",
        r.text()
    );
    h2.assert_unspent(&fresh).await;
    // The same mint again (a lost reply): the same signatures, nothing issued again.
    let r = h1.call("POST", "/v1/mint/onchain", None, Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(signatures(&r), minted);
    let r = h1
        .call(
            "GET",
            &format!("/v1/mint/quote/onchain/{quote}"),
            None,
            None,
        )
        .await;
    assert_eq!(r.json()["amount_issued"], 576, "{}", r.text());
    // More than is left is refused, and leaves nothing pending in the store.
    let more = nut30_mint_body(&quote, vec![wallet.outputs(&[32])[0].msg.clone()], &key);
    let r = h1.call("POST", "/v1/mint/onchain", None, Some(more)).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let pending = pg
        .psql(
            "fleet",
            "SELECT count(*) FROM coinop_signed_outputs WHERE state = 1",
        )
        .expect("psql");
    assert_eq!(pending, "0");
}

/// A pre-fleet NUT-30 quote's mint held 3 s after reserving its outputs on host 1: a copy
/// sent to host 1 meanwhile is 11002 (pending, which wallets retry), not a second
/// reservation whose failure could release the first's; the first is answered, and the
/// copy sent again gets its signatures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_pre_fleet_nut30_mint_in_flight_is_pending() {
    let Some(pg) = cluster("a_copy_of_a_pre_fleet_nut30_mint_in_flight_is_pending") else {
        return;
    };
    let dirs = [StateDir::new(), StateDir::new()];
    let delay = [("COINOPD_FAULT_DELAY", "fleet_outputs_reserved:3000")];
    let Joined {
        h1,
        h2,
        wallet,
        quote,
        key,
        ..
    } = joined_with_history(&pg, &dirs, &delay).await;
    let blanks = wallet.outputs(&[256]);
    let body = nut30_mint_body(&quote, vec![blanks[0].msg.clone()], &key);
    let first = h1.call("POST", "/v1/mint/onchain", None, Some(body.clone()));
    let copy = async {
        common::wait_for(
            async || {
                pg.psql(
                    "fleet",
                    "SELECT count(*) FROM coinop_signed_outputs \
                     WHERE host_id = 'host-1' AND state = 1",
                )
                .is_ok_and(|n| n != "0")
            },
            "host 1 reserving the mint's outputs",
        )
        .await;
        h1.call("POST", "/v1/mint/onchain", None, Some(body.clone()))
            .await
    };
    let (first, copy) = tokio::join!(first, copy);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(
        (copy.status, cashu_code(&copy)),
        (400, PENDING),
        "{}",
        copy.text()
    );
    let r = h1.call("POST", "/v1/mint/onchain", None, Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(signatures(&r), signatures(&first));
    let r = h2
        .call(
            "POST",
            "/v1/restore",
            None,
            Some(json!({"outputs": messages(&blanks)})),
        )
        .await;
    assert_eq!(signatures(&r), signatures(&first));
}

/// Host 1 killed between reserving a pre-fleet NUT-30 quote's outputs and its ledger
/// commit: meanwhile host 2 signs none of them (11003) and restores nothing; host 1's
/// restart releases the reservation (nothing was issued), and the same mint then issues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_a_pre_fleet_nut30_reservation_and_the_ledger_issues_once() {
    use std::os::unix::process::ExitStatusExt;
    let Some(pg) =
        cluster("a_crash_between_a_pre_fleet_nut30_reservation_and_the_ledger_issues_once")
    else {
        return;
    };
    let dirs = [StateDir::new(), StateDir::new()];
    let crash = [("COINOPD_FAULT", "fleet_outputs_reserved")];
    let Joined {
        h1,
        h2,
        wallet,
        quote,
        key,
        ..
    } = joined_with_history(&pg, &dirs, &crash).await;
    let blanks = wallet.outputs(&[64]);
    let body = nut30_mint_body(&quote, vec![blanks[0].msg.clone()], &key);
    let r = h1
        .client
        .call(
            "POST",
            "/v1/mint/onchain",
            None,
            Some(serde_json::to_vec(&body).expect("a Value serializes")),
        )
        .await;
    assert!(r.is_err(), "coinopd answered despite the fault: {r:?}");
    let status = h1.wait_crash().await;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");

    let restore = json!({"outputs": messages(&blanks)});
    let r = h2
        .call("POST", "/v1/restore", None, Some(restore.clone()))
        .await;
    assert!(signatures(&r).is_empty(), "pending: {}", r.text());
    let fresh = h2.mint_credit(64).await;
    let r = h2
        .call("POST", "/v1/swap", None, Some(swap_body(&fresh, &blanks)))
        .await;
    assert_eq!(
        (r.status, cashu_code(&r)),
        (400, OUTPUT_SIGNED),
        "{}",
        r.text()
    );

    let h1 = joined_host(&pg, &dirs[0], 1, &[]).await;
    let r = h1
        .call(
            "GET",
            &format!("/v1/mint/quote/onchain/{quote}"),
            None,
            None,
        )
        .await;
    assert_eq!(r.json()["amount_issued"], 0, "{}", r.text());
    let r = h1.call("POST", "/v1/mint/onchain", None, Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let minted = signatures(&r);
    let r = h2.call("POST", "/v1/restore", None, Some(restore)).await;
    assert_eq!(signatures(&r), minted);
    let r = h1
        .call(
            "GET",
            &format!("/v1/mint/quote/onchain/{quote}"),
            None,
            None,
        )
        .await;
    assert_eq!(r.json()["amount_issued"], 64, "{}", r.text());
}

/// NUT-00 code 20002: the quote's payment minted already (final for a wallet).
const QUOTE_ISSUED: u64 = 20002;

/// A regtest tpub from a fixed seed, for hosts whose quotes are the fleet's (one xpub).
fn fleet_tpub() -> String {
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let master = bitcoin::bip32::Xpriv::new_master(bitcoin::NetworkKind::Test, &[17u8; 32])
        .expect("a 32-byte seed");
    bitcoin::bip32::Xpub::from_priv(&secp, &master).to_string()
}

/// Host `n` with the fleet's xpub (its quotes paid and minted on any host) and `env`.
async fn quoting_host(
    pg: &TestCluster,
    dir: &StateDir,
    n: u32,
    seed: &Path,
    env: &[(&str, &str)],
) -> Daemon {
    let mut args = host_args(pg, n, seed);
    args.extend(["--xpub".into(), fleet_tpub()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::spawn(dir.path(), &args, env).await;
    d.wait_store_ready().await;
    d
}

/// The store refuses every settle of a signed-outputs reservation (a trigger on its
/// table), as it refuses them while it is failing: the settle is left for the background.
const REFUSE_OUTPUT_SETTLES: &str = "
    CREATE FUNCTION coinop_test_refuse() RETURNS trigger LANGUAGE plpgsql AS
      $$ BEGIN RAISE EXCEPTION 'output settles refused by the test'; END $$;
    CREATE TRIGGER coinop_test_refuse BEFORE UPDATE OR DELETE ON coinop_signed_outputs
      FOR EACH ROW EXECUTE FUNCTION coinop_test_refuse();";

/// An on-chain mint on host 1, held 3 s after reserving its outputs. A copy of it sent
/// meanwhile, to host 1 (the operation in flight there) or to host 2 (host 1's claim
/// pending in the store), is 11002, which wallets retry, never 20002 (already issued),
/// which they take as final. The first is answered while the store refuses its outputs'
/// settle (left for the background) but not its fence's: the payment is spent under
/// this very request and its signatures are not delivered yet, so the copy on host 2 is
/// still 11002, and once the settle is done it gets the first's signatures. The same
/// payment with other outputs is 20002 throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_mint_in_flight_or_not_settled_is_pending_not_issued() {
    let Some(pg) = cluster("a_copy_of_a_mint_in_flight_or_not_settled_is_pending_not_issued")
    else {
        return;
    };
    let secrets = tempfile::tempdir().expect("tempdir");
    let seed = seed_file(secrets.path(), 0x88, 0o600);
    let dirs = [StateDir::new(), StateDir::new()];
    let h1 = quoting_host(
        &pg,
        &dirs[0],
        1,
        &seed,
        &[("COINOPD_FAULT_DELAY", "fleet_outputs_reserved:3000")],
    )
    .await;
    let h2 = quoting_host(&pg, &dirs[1], 2, &seed, &[]).await;

    let r = h1
        .call(
            "POST",
            "/v1/mint/quote/onchain",
            None,
            Some(json!({"amount": 64, "unit": "sat"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let quote_id = r.json()["quote"].as_str().expect("quote").to_string();
    let r = h1
        .call("GET", &format!("/v1/quotes/{quote_id}"), None, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let quote = r.json();
    let (tx_hex, proof_hex) = common::pay_address_on(
        &[&h1, &h2],
        quote["address"].as_str().expect("address"),
        quote["amount_sat"].as_u64().expect("amount_sat"),
    )
    .await;
    let payment = json!({"quote_id": quote_id, "tx_hex": tx_hex, "proof_hex": proof_hex});
    let wallet = Wallet::new(&h2).await;
    let blanks = wallet.outputs(&[64]);
    let body = json!({"payment": payment, "outputs": messages(&blanks)});
    let other = json!({"payment": payment, "outputs": messages(&wallet.outputs(&[64]))});

    let first = h1.call("POST", "/v1/mint/onchain", None, Some(body.clone()));
    let meanwhile = async {
        common::wait_for(
            async || {
                pg.psql(
                    "fleet",
                    "SELECT count(*) FROM coinop_signed_outputs \
                     WHERE host_id = 'host-1' AND state = 1",
                )
                .is_ok_and(|n| n != "0")
            },
            "host 1 reserving the mint's outputs",
        )
        .await;
        for (h, what) in [(&h1, "on host 1"), (&h2, "on host 2")] {
            let r = h
                .call("POST", "/v1/mint/onchain", None, Some(body.clone()))
                .await;
            assert_eq!(
                (r.status, cashu_code(&r)),
                (400, PENDING),
                "a copy {what} while the first is in flight: {}",
                r.text()
            );
        }
        pg.psql("fleet", REFUSE_OUTPUT_SETTLES)
            .expect("refusing output settles");
    };
    let (first, ()) = tokio::join!(first, meanwhile);
    assert_eq!(first.status, 200, "{}", first.text());

    let r = h2
        .call("POST", "/v1/mint/onchain", None, Some(body.clone()))
        .await;
    assert_eq!(
        (r.status, cashu_code(&r)),
        (400, PENDING),
        "the payment spent by this request, its outputs not delivered yet: {}",
        r.text()
    );
    let r = h2
        .call("POST", "/v1/mint/onchain", None, Some(other.clone()))
        .await;
    assert_eq!(
        (r.status, cashu_code(&r)),
        (400, QUOTE_ISSUED),
        "{}",
        r.text()
    );

    pg.psql(
        "fleet",
        "DROP TRIGGER coinop_test_refuse ON coinop_signed_outputs",
    )
    .expect("settles allowed again");
    let start = std::time::Instant::now();
    let again = loop {
        let r = h2
            .call("POST", "/v1/mint/onchain", None, Some(body.clone()))
            .await;
        if (r.status, cashu_code(&r)) != (400, PENDING) || start.elapsed() > Duration::from_secs(30)
        {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(signatures(&again), signatures(&first));
    let r = h1.call("POST", "/v1/mint/onchain", None, Some(other)).await;
    assert_eq!(
        (r.status, cashu_code(&r)),
        (400, QUOTE_ISSUED),
        "{}",
        r.text()
    );
}
