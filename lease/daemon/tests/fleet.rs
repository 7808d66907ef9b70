//! Several coinopd hosts sharing one PostgreSQL fleet store (`--store`): a payment is
//! accepted once across them, under races, across a crash between the store's fence and
//! the local commit, and not at all while the store is down; all against a real throwaway
//! PostgreSQL cluster (payment_postgres::test_cluster).

mod common;

use std::time::{Duration, Instant};

use common::leases::{credit_payment, testguest_body};
use common::{Daemon, StateDir, Wallet};
use payment::credit::nut_types::{BlindSignature, BlindedMessage, Proof};
use payment_postgres::test_cluster::TestCluster;
use serde_json::json;

/// This binary's jail uid ranges, one per host, clear of other test binaries.
const UID_BASE: u32 = 4_300_000;
const UIDS_PER_HOST: u32 = 16;

/// A cluster with database `fleet`, or `None` (SKIPPED printed) without PostgreSQL.
fn cluster(test: &str) -> Option<TestCluster> {
    let pg = TestCluster::start(test).expect("starting the test PostgreSQL")?;
    pg.create_database("fleet").expect("createdb fleet");
    Some(pg)
}

/// Host `n` of the fleet on `dir`, with `env` (e.g. a fault to inject).
async fn host(pg: &TestCluster, dir: &StateDir, n: u32, env: &[(&str, &str)]) -> Daemon {
    let conninfo = pg.conninfo("fleet");
    let host_id = format!("host-{n}");
    let mut args = vec!["--store", &conninfo, "--host-id", &host_id];
    let base = (UID_BASE + n * UIDS_PER_HOST).to_string();
    let count = UIDS_PER_HOST.to_string();
    args.extend(host_args(&base, &count));
    Daemon::spawn(dir.path(), &args, env).await
}

/// Host `n` of the fleet on `dir`, with `extra` flags.
async fn host_with(pg: &TestCluster, dir: &StateDir, n: u32, extra: &[&str]) -> Daemon {
    let conninfo = pg.conninfo("fleet");
    let host_id = format!("host-{n}");
    let mut args = vec!["--store", &conninfo, "--host-id", &host_id];
    let base = (UID_BASE + n * UIDS_PER_HOST).to_string();
    let count = UIDS_PER_HOST.to_string();
    args.extend(host_args(&base, &count));
    args.extend(extra);
    Daemon::spawn(dir.path(), &args, &[]).await
}

/// Host `n` on `dir` on its own, before it joins the fleet: no `--store`, the same uid
/// range as [`host`] gives it.
async fn standalone(dir: &StateDir, n: u32) -> Daemon {
    let base = (UID_BASE + n * UIDS_PER_HOST).to_string();
    let count = UIDS_PER_HOST.to_string();
    Daemon::spawn(dir.path(), &host_args(&base, &count), &[]).await
}

/// What every host of these tests is started with, whether in the fleet or not.
fn host_args<'a>(uid_base: &'a str, uid_count: &'a str) -> [&'a str; 8] {
    [
        "--jail-uid-base",
        uid_base,
        "--jail-uid-count",
        uid_count,
        "--jail-pool",
        "1",
        "--guest-network",
        "never",
    ]
}

/// The mint keys of `from`'s state dir, copied into `to` before its daemon first starts:
/// until the keysets live in the fleet store, hosts of one mint share them this way.
fn share_mint_keys(from: &StateDir, to: &StateDir) {
    let name = payment::credit::keyset_store::STORE_FILE;
    std::fs::copy(from.path().join(name), to.path().join(name)).expect("copying the mint keys");
}

fn messages(blanks: &[common::Blank]) -> Vec<&BlindedMessage> {
    blanks.iter().map(|b| &b.msg).collect()
}

/// Swaps `proofs` on `d` for fresh notes of the same amounts: the reply, and what unblinds
/// it.
async fn swap(
    d: &Daemon,
    wallet: &Wallet,
    proofs: &[Proof],
) -> (coinop_cli::client::Reply, Vec<common::Blank>) {
    let blanks = wallet.outputs(&proofs.iter().map(|p| p.amount).collect::<Vec<_>>());
    let r = d
        .call(
            "POST",
            "/v1/swap",
            None,
            Some(json!({"inputs": proofs, "outputs": messages(&blanks)})),
        )
        .await;
    (r, blanks)
}

/// The NUT-00 error code of a Cashu route's answer (`/v1/swap` speaks Cashu).
fn cashu_code(r: &coinop_cli::client::Reply) -> u64 {
    r.json()["code"].as_u64().unwrap_or(u64::MAX)
}

/// NUT-00 "proofs already spent" and "proofs are pending" (error_codes.md).
const SPENT: u64 = 11001;
const PENDING: u64 = 11002;

/// The same proofs sent to three hosts at once, 200 times: exactly one host accepts each
/// time, the others answer Cashu's 400 with 11001 (spent) or 11002 (pending: the winner's
/// fence is still in flight); the winner's new notes are next round's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_proofs_sent_to_three_hosts_at_once_are_accepted_once() {
    let Some(pg) = cluster("the_same_proofs_sent_to_three_hosts_at_once_are_accepted_once") else {
        return;
    };
    let dirs = [StateDir::new(), StateDir::new(), StateDir::new()];
    let h1 = host(&pg, &dirs[0], 1, &[]).await;
    share_mint_keys(&dirs[0], &dirs[1]);
    share_mint_keys(&dirs[0], &dirs[2]);
    let h2 = host(&pg, &dirs[1], 2, &[]).await;
    let h3 = host(&pg, &dirs[2], 3, &[]).await;
    let hosts = [&h1, &h2, &h3];
    for h in hosts {
        let view = h.call("GET", "/v1/host", None, None).await.json();
        assert_eq!(view["store"]["kind"], "postgres", "{view}");
        assert_eq!(view["store"]["ready"], true, "{view}");
    }
    let wallet = Wallet::new(&h1).await;
    for h in [&h2, &h3] {
        assert_eq!(Wallet::new(h).await.keyset_id, wallet.keyset_id, "one mint");
    }
    let mut proofs = h1.mint_credit(13).await;
    let mut wins = [0u32; 3];
    const ROUNDS: usize = 200;
    for round in 0..ROUNDS {
        let (a, b, c) = tokio::join!(
            swap(&h1, &wallet, &proofs),
            swap(&h2, &wallet, &proofs),
            swap(&h3, &wallet, &proofs)
        );
        let mut next = None;
        for (i, (r, blanks)) in [a, b, c].into_iter().enumerate() {
            match r.status {
                200 => {
                    assert!(next.is_none(), "round {round}: a second host accepted");
                    let sigs: Vec<BlindSignature> =
                        serde_json::from_value(r.json()["signatures"].clone()).expect("sigs");
                    next = Some(wallet.unblind(&blanks, &sigs));
                    wins[i] += 1;
                }
                400 => assert!(
                    matches!(cashu_code(&r), SPENT | PENDING),
                    "round {round}: {}",
                    r.text()
                ),
                other => panic!(
                    "round {round}: host {} answered {other}: {}",
                    i + 1,
                    r.text()
                ),
            }
        }
        proofs = next.unwrap_or_else(|| panic!("round {round}: no host accepted"));
    }
    assert_eq!(wins.iter().sum::<u32>(), ROUNDS as u32);
    eprintln!("accepted by host: {wins:?}");
    // The last notes are good on any host, once; NUT-07 on every host says so.
    for h in hosts {
        h.assert_unspent(&proofs).await;
    }
    let (r, _) = swap(&h3, &wallet, &proofs).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for h in hosts {
        let states = h.proof_states(&proofs).await;
        assert!(states.iter().all(|s| s == "SPENT"), "{states:?}");
    }
    let (r, _) = swap(&h2, &wallet, &proofs).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(cashu_code(&r), SPENT, "{}", r.text());
    // Every host counted its store round trips.
    let m = h1.call("GET", "/metrics", None, None).await;
    assert!(
        m.text()
            .contains("coinop_fleet_store_total{what=\"round_trips\"}"),
        "{}",
        m.text()
    );
}

/// coinopd killed between fencing a create's payment in the store and committing the lease
/// locally: after the restart the payment is spendable again (on any host); killed after
/// the local commit: the lease exists and the payment stays spent everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_fence_and_the_ledger_loses_and_doubles_nothing() {
    let Some(pg) = cluster("a_crash_between_the_fence_and_the_ledger_loses_and_doubles_nothing")
    else {
        return;
    };
    let dirs = [StateDir::new(), StateDir::new()];
    let h1 = host(&pg, &dirs[0], 1, &[]).await;
    share_mint_keys(&dirs[0], &dirs[1]);
    let h2 = host(&pg, &dirs[1], 2, &[]).await;
    let wallet = Wallet::new(&h2).await;
    let lost = h1.mint_credit(300).await;
    let kept = h1.mint_credit(300).await;
    h1.shutdown().await;

    // Killed after the fence, before the ledger.
    let h1 = host(&pg, &dirs[0], 1, &[("COINOPD_FAULT", "fleet_fenced")]).await;
    h1.create_into_crash(&testguest_body("mode=echo", credit_payment(&lost)))
        .await;
    // Until host 1 is back, its fence holds: nobody spends the payment meanwhile.
    let (r, _) = swap(&h2, &wallet, &lost).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(cashu_code(&r), PENDING, "{}", r.text());
    let h1 = host(&pg, &dirs[0], 1, &[]).await;
    assert_eq!(
        h1.call("GET", "/v1/leases", None, None).await.json()["leases"]
            .as_array()
            .map_or(0, Vec::len),
        0,
        "no lease was committed"
    );
    // Reconciled at start-up: released, so the payment is spendable again, on any host.
    let (r, _) = swap(&h2, &wallet, &lost).await;
    assert_eq!(r.status, 200, "{}", r.text());
    h1.shutdown().await;

    // Killed after the ledger committed, before the fence was settled.
    let h1 = host(&pg, &dirs[0], 1, &[("COINOPD_FAULT", "create_committed")]).await;
    h1.create_into_crash(&testguest_body("mode=echo", credit_payment(&kept)))
        .await;
    let h1 = host(&pg, &dirs[0], 1, &[]).await;
    let leases = h1.call("GET", "/v1/leases", None, None).await.json();
    assert_eq!(
        leases["leases"].as_array().map_or(0, Vec::len),
        1,
        "the committed lease is there: {leases}"
    );
    // Reconciled at start-up: spent, on every host.
    for h in [&h1, &h2] {
        let (r, _) = swap(h, &wallet, &kept).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(cashu_code(&r), SPENT, "{}", r.text());
    }
}

/// The advisory lock key behind which the test holds a crashed coinopd's statement.
const LATE_CLAIM_GATE: i64 = 4_300_077;

/// coinopd killed between a create's fence and its ledger, while another statement it had
/// sent, a claim of other notes, is still running on its backend (held behind a lock the
/// test holds, as one waits behind a row lock or a slow disk: PostgreSQL does not cancel a
/// statement whose client died). The restarted coinopd ends that session before it
/// reconciles: let go after the reconciliation, the claim lands nowhere (without the fix
/// it commits, and the notes stay pending under host 1 until its next restart). The
/// create's fence is reconciled as ever: released, the payment spendable on any host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_coinopds_statement_still_running_is_ended_before_reconciliation() {
    let Some(pg) =
        cluster("a_crashed_coinopds_statement_still_running_is_ended_before_reconciliation")
    else {
        return;
    };
    let dirs = [StateDir::new(), StateDir::new()];
    let h1 = host(&pg, &dirs[0], 1, &[]).await;
    share_mint_keys(&dirs[0], &dirs[1]);
    let h2 = host(&pg, &dirs[1], 2, &[]).await;
    let wallet = Wallet::new(&h2).await;
    let lost = h1.mint_credit(300).await;
    let late = h1.mint_credit(300).await;
    h1.shutdown().await;
    let h1 = host(&pg, &dirs[0], 1, &[("COINOPD_FAULT", "fleet_fenced")]).await;
    h1.create_into_crash(&testguest_body("mode=echo", credit_payment(&lost)))
        .await;

    let conninfo = pg.conninfo("fleet");
    let connect = |name: String| {
        let conninfo = conninfo.clone();
        async move {
            let (client, connection) = tokio_postgres::connect(
                &format!("{conninfo} application_name='{name}'"),
                tokio_postgres::NoTls,
            )
            .await
            .expect("a session of the test's");
            tokio::spawn(connection);
            client
        }
    };
    let gate = connect("test gate".into()).await;
    gate.execute("SELECT pg_advisory_lock($1)", &[&LATE_CLAIM_GATE])
        .await
        .expect("gate");
    // The crashed coinopd's session: named as host 1's sessions are.
    let name = payment_postgres::application_name("host-1");
    let crashed = connect(name.clone()).await;
    let ys: Vec<Vec<u8>> = late
        .iter()
        .map(|p| {
            payment::credit::hash_to_curve::secret_to_curve(&p.secret)
                .expect("a minted secret")
                .serialize()
                .to_vec()
        })
        .collect();
    let kinds: Vec<i16> = vec![2; ys.len()];
    let claim = tokio::spawn(async move {
        crashed
            .query_one(
                "SELECT coinop_claim($1, $2, 1::int2, 'late', NULL, 'host-1', 'crashed') \
                 FROM pg_advisory_lock($3)",
                &[&kinds, &ys, &LATE_CLAIM_GATE],
            )
            .await
    });
    common::wait_for(
        async || {
            pg.psql(
                "fleet",
                &format!(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = '{name}' AND wait_event_type = 'Lock'"
                ),
            )
            .expect("psql")
                == "1"
        },
        "the crashed coinopd's claim waiting behind the gate",
    )
    .await;

    let h1 = host(&pg, &dirs[0], 1, &[]).await;
    h1.wait_store_ready().await;
    // Reconciled: let the late claim go now.
    gate.execute("SELECT pg_advisory_unlock($1)", &[&LATE_CLAIM_GATE])
        .await
        .expect("ungate");
    match claim.await.expect("the crashed session's task") {
        Err(e)
            if e.is_closed()
                || e.code() == Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN) => {}
        other => panic!("the crashed coinopd's claim ran on after the restart: {other:?}"),
    }
    for h in [&h1, &h2] {
        let states = h.proof_states(&late).await;
        assert!(
            states.iter().all(|s| s == "UNSPENT"),
            "nothing of the late claim landed: {states:?}"
        );
    }
    // The create's fence, reconciled at the start: released, spendable on any host.
    let (r, _) = swap(&h2, &wallet, &lost).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (r, _) = swap(&h2, &wallet, &late).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        h1.log().contains("ended the fleet store sessions"),
        "{}",
        h1.log()
    );
}

/// A crashed run's session of host 1 runs as another role than the one coinopd connects
/// as, which may not end it: coinopd refuses to start (exit 2), its log naming the session,
/// its role and the remedy, rather than reconcile while that session's statements could
/// still commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_runs_session_the_role_may_not_end_refuses_the_start() {
    let Some(pg) = cluster("a_crashed_runs_session_the_role_may_not_end_refuses_the_start") else {
        return;
    };
    pg.psql(
        "fleet",
        "CREATE ROLE fleet_host LOGIN; CREATE ROLE stranger LOGIN; \
         ALTER DATABASE fleet OWNER TO fleet_host",
    )
    .expect("roles");
    let as_role = |role: &str| {
        pg.conninfo("fleet").replace(
            &format!("user={}", payment_postgres::test_cluster::USER),
            &format!("user={role}"),
        )
    };
    let (stranger, connection) = tokio_postgres::connect(
        &format!(
            "{} application_name='{}'",
            as_role("stranger"),
            payment_postgres::application_name("host-1")
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("the stranger's session");
    tokio::spawn(connection);
    let pid: i32 = stranger
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);

    let dir = StateDir::new();
    let conninfo = as_role("fleet_host");
    let base = (UID_BASE + UIDS_PER_HOST).to_string();
    let count = UIDS_PER_HOST.to_string();
    let mut args = vec!["--store", conninfo.as_str(), "--host-id", "host-1"];
    args.extend(host_args(&base, &count));
    let socket = dir.path().join("coinop.sock");
    let full = common::daemon_args(dir.path(), &socket, &args);
    let log_path = dir.path().join("refused.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_coinopd"))
        .args(&full[1..])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("run coinopd");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait coinopd") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "coinopd still runs after a minute: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(status.code(), Some(2), "{status:?}: {text}");
    for said in [
        format!("pid {pid} as role stranger"),
        "may not end them".to_string(),
        "pg_signal_backend".to_string(),
    ] {
        assert!(text.contains(&said), "{said:?} in: {text}");
    }
    stranger
        .simple_query("SELECT 1")
        .await
        .expect("the other role's session untouched");
}

/// How many statements of host `n`'s sessions wait on a lock in the store.
fn waiting_on_a_lock(pg: &TestCluster, n: u32) -> usize {
    let name = payment_postgres::application_name(&format!("host-{n}"));
    let count = pg
        .psql(
            "fleet",
            &format!(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = '{name}' AND wait_event_type = 'Lock'"
            ),
        )
        .expect("psql");
    count.parse().expect("a count")
}

/// A cluster for `test` and host 1 on it with `--store-public-reads share`, its store
/// ready; `None` (the test skips) without PostgreSQL. Bound in this order, the host is
/// dropped first and the cluster last.
async fn host_with_read_share(test: &str, share: usize) -> Option<(TestCluster, StateDir, Daemon)> {
    let pg = cluster(test)?;
    let dir = StateDir::new();
    let h1 = host_with(&pg, &dir, 1, &["--store-public-reads", &share.to_string()]).await;
    h1.wait_store_ready().await;
    Some((pg, dir, h1))
}

/// `table` of the fleet database locked (ACCESS EXCLUSIVE) in a session of the test's own,
/// its transaction open until the test commits it through the returned client: whatever
/// touches the table waits in the store meanwhile.
async fn lock_table(pg: &TestCluster, table: &str) -> tokio_postgres::Client {
    let (locker, connection) =
        tokio_postgres::connect(&pg.conninfo("fleet"), tokio_postgres::NoTls)
            .await
            .expect("the test's session");
    tokio::spawn(connection);
    locker
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
        ))
        .await
        .unwrap_or_else(|e| panic!("locking {table}: {e}"));
    locker
}

/// A read of [`fill_the_share`]: its answer and how long it took.
type HeldRead = tokio::task::JoinHandle<(coinop_cli::client::Reply, Duration)>;

/// Fills host 1's public read share and holds it: the NUT-30 quotes' table locked in a
/// session of the test's own (its transaction open until it commits), then as many NUT-30
/// quote state lookups at once as the host has store connections, each of those the share
/// lets through waiting in the store on its connection. Returns once every read is waiting
/// there or answered: the session, and the reads.
async fn fill_the_share(pg: &TestCluster, h1: &Daemon) -> (tokio_postgres::Client, Vec<HeldRead>) {
    let locker = lock_table(pg, "coinop_nut30_quotes").await;
    let pool = payment_postgres::DEFAULT_POOL_SIZE;
    let reads: Vec<_> = (0..pool)
        .map(|_| {
            let client = coinop_cli::client::Client::new(&h1.socket);
            tokio::spawn(async move {
                let sent = Instant::now();
                let r = client
                    .call("GET", "/v1/mint/quote/onchain/00ab", None, None)
                    .await
                    .expect("an answer");
                (r, sent.elapsed())
            })
        })
        .collect();
    common::wait_for(
        async || {
            waiting_on_a_lock(pg, 1) + reads.iter().filter(|r| r.is_finished()).count() >= pool
        },
        "every read in the store or answered",
    )
    .await;
    (locker, reads)
}

/// A Cashu route's 503 for a read beyond the public read share: NUT-00's shape, code 0.
fn assert_cashu_store_busy(r: &coinop_cli::client::Reply) {
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["code"], 0, "NUT-00's shape: {}", r.text());
    assert!(
        r.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("unauthenticated reads")),
        "{}",
        r.text()
    );
}

/// A metric's value from `d`'s `/metrics` (`None` when absent).
async fn metric(d: &Daemon, name: &str) -> Option<u64> {
    let text = d.call("GET", "/metrics", None, None).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// As many unauthenticated reads at once as the host has store connections, each held in
/// the store (the NUT-30 quotes' table locked by the test, so a quote state lookup waits
/// there on its connection; a swap does not touch that table): the reads beyond the
/// public read share (`--store-public-reads 3`) are answered 503 busy within the share's
/// short wait, not left hanging, and a swap, a money request, still gets its connections
/// and completes meanwhile. Without the share the reads take every connection and the
/// swap is 503 `store_unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unauthenticated_reads_leaves_money_requests_their_connections() {
    const SHARE: usize = 3;
    let Some((pg, _dir, h1)) = host_with_read_share(
        "a_flood_of_unauthenticated_reads_leaves_money_requests_their_connections",
        SHARE,
    )
    .await
    else {
        return;
    };
    let wallet = Wallet::new(&h1).await;
    let proofs = h1.mint_credit(64).await;

    let pool = payment_postgres::DEFAULT_POOL_SIZE;
    let (locker, reads) = fill_the_share(&pg, &h1).await;

    // A swap, a money request, and the other routes' unauthenticated reads, all at once
    // while the share's reads are held in the store: the swap gets its connections, the
    // reads are busy.
    let sent = Instant::now();
    let blanks = wallet.outputs(&[1]);
    let ((r, _), checked, restored, quote) = tokio::join!(
        swap(&h1, &wallet, &proofs),
        h1.checkstate(&proofs),
        h1.call(
            "POST",
            "/v1/restore",
            None,
            Some(json!({"outputs": messages(&blanks)}))
        ),
        h1.call("GET", "/v1/quotes/00ab", None, None),
    );
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(r.status, 200, "the swap got its connections: {}", r.text());
    assert_eq!(
        waiting_on_a_lock(&pg, 1),
        SHARE,
        "the reads in the store are the share's"
    );
    for cashu in [&checked, &restored] {
        assert_eq!(cashu.status, 503, "{}", cashu.text());
        assert_eq!(cashu.json()["code"], 0, "{}", cashu.text());
    }
    assert_eq!(quote.status, 503, "{}", quote.text());
    assert_eq!(
        quote.json()["error"]["code"],
        "store_busy",
        "{}",
        quote.text()
    );
    let (mut answered, mut held) = (Vec::new(), Vec::new());
    for read in reads {
        if read.is_finished() {
            answered.push(read.await.expect("read task"));
        } else {
            held.push(read);
        }
    }
    assert_eq!(answered.len(), pool - SHARE, "answered beyond the share");
    for (r, took) in &answered {
        assert_cashu_store_busy(r);
        assert!(
            *took < coinopd::fleet::PUBLIC_READ_WAIT + Duration::from_secs(2),
            "answered after {took:?}"
        );
    }
    // Let the share's reads go: answered as ever (no such quote: NUT-00's 400), and the
    // share is free.
    locker.batch_execute("COMMIT").await.expect("unlock");
    for read in held {
        let (r, _) = read.await.expect("read task");
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains("no on-chain mint quote"), "{}", r.text());
    }
    let states = h1.proof_states(&proofs).await;
    assert!(states.iter().all(|s| s == "SPENT"), "{states:?}");
}

/// The routes that take a payment or a mint naming a quote look the quote up in the store
/// before anything else of the request is checked, so anyone can have them read it with
/// any id. With the public read share held full (as above), a payment proof and both
/// bodies of `POST /v1/mint/onchain` naming a quote nobody made are answered 503 busy in
/// NUT-00's shape, and a create paying with it `store_busy` in coinop's, all within the
/// share's wait and none of them waiting in the store; `/metrics` counts every refusal.
/// Once the share is free the same requests get their ordinary answers, refused no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_and_mints_naming_any_quote_look_it_up_within_the_share() {
    const SHARE: usize = 3;
    const BUSY: &str = "coinop_fleet_store_reads_busy_total";
    let Some((pg, _dir, h1)) = host_with_read_share(
        "payments_and_mints_naming_any_quote_look_it_up_within_the_share",
        SHARE,
    )
    .await
    else {
        return;
    };
    assert_eq!(metric(&h1, BUSY).await, Some(0), "nothing refused yet");

    let (locker, reads) = fill_the_share(&pg, &h1).await;
    let flooded = reads.iter().filter(|r| r.is_finished()).count();
    assert_eq!(
        flooded,
        payment_postgres::DEFAULT_POOL_SIZE - SHARE,
        "answered beyond the share"
    );
    // A quote id nobody made, as a flood would send (any id will do).
    let unknown = "00cd";
    let onchain = json!({"quote_id": unknown, "tx_hex": "00", "proof_hex": "00"});
    let prove = format!("/v1/mint/quote/onchain/{unknown}/payment");
    let requests = || async {
        tokio::join!(
            h1.call(
                "POST",
                &prove,
                None,
                Some(json!({"tx_hex": "00", "proof_hex": "00"})),
            ),
            h1.call(
                "POST",
                "/v1/mint/onchain",
                None,
                Some(json!({"quote": unknown, "outputs": [], "signature": "00"})),
            ),
            h1.call(
                "POST",
                "/v1/mint/onchain",
                None,
                Some(json!({"payment": onchain, "outputs": []})),
            ),
            h1.call(
                "POST",
                "/v1/leases",
                None,
                Some(testguest_body("", json!({"onchain": onchain}))),
            ),
        )
    };
    let sent = Instant::now();
    // Bounded all the same: a lookup made outside the share waits in the store (the NUT-30
    // ones on the locked table, until the store's statement timeout), holding a connection.
    let Ok((proved, minted, minted_coinop, created)) =
        tokio::time::timeout(Duration::from_secs(10), requests()).await
    else {
        panic!(
            "a lookup waited in the store beyond the share: {} statements wait on the lock",
            waiting_on_a_lock(&pg, 1)
        );
    };
    for cashu in [&proved, &minted, &minted_coinop] {
        assert_cashu_store_busy(cashu);
    }
    assert_eq!(created.status, 503, "{}", created.text());
    assert_eq!(
        created.json()["error"]["code"],
        "store_busy",
        "{}",
        created.text()
    );
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "answered within the share's wait: {:?}",
        sent.elapsed()
    );
    assert_eq!(
        waiting_on_a_lock(&pg, 1),
        SHARE,
        "the only statements in the store are the share's reads"
    );
    let refused = u64::try_from(flooded + 4).expect("a small count");
    assert_eq!(
        metric(&h1, BUSY).await,
        Some(refused),
        "every refusal counted"
    );

    // The share free again: the ordinary answers for a quote nobody made.
    locker.batch_execute("COMMIT").await.expect("unlock");
    for read in reads {
        read.await.expect("read task");
    }
    let (proved, minted, minted_coinop, created) = requests().await;
    for cashu in [&proved, &minted, &minted_coinop] {
        assert_eq!(cashu.status, 400, "{}", cashu.text());
        assert!(
            cashu.json()["detail"]
                .as_str()
                .is_some_and(|d| d.contains("quote") && d.contains(unknown)),
            "no such quote: {}",
            cashu.text()
        );
    }
    assert_eq!(created.status, 404, "{}", created.text());
    assert_eq!(metric(&h1, BUSY).await, Some(refused), "none refused since");
}

/// The same swap sent twice at once to one host, the first held between its fence and its
/// local step: the copy is refused as pending (11002), not granted the same fence, which
/// would let a copy whose local step failed release in the store what the other spent
/// here. Once the first is answered, the copy sent again gets the same signatures, and the
/// proofs are spent on every host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_sent_twice_at_once_to_one_host_is_done_once() {
    let Some(pg) = cluster("a_swap_sent_twice_at_once_to_one_host_is_done_once") else {
        return;
    };
    let dirs = [StateDir::new(), StateDir::new()];
    let h1 = host(
        &pg,
        &dirs[0],
        1,
        &[("COINOPD_FAULT_DELAY", "fleet_outputs_reserved:1500")],
    )
    .await;
    share_mint_keys(&dirs[0], &dirs[1]);
    let h2 = host(&pg, &dirs[1], 2, &[]).await;
    let wallet = Wallet::new(&h1).await;
    let proofs = h1.mint_credit(300).await;
    let blanks = wallet.outputs(&proofs.iter().map(|p| p.amount).collect::<Vec<_>>());
    let body = json!({"inputs": proofs, "outputs": messages(&blanks)});

    let first = h1.call("POST", "/v1/swap", None, Some(body.clone()));
    let copy = async {
        // Sent once the first holds its fence (the delay is 1.5 s).
        tokio::time::sleep(Duration::from_millis(500)).await;
        h1.call("POST", "/v1/swap", None, Some(body.clone())).await
    };
    let (first, copy) = tokio::join!(first, copy);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(copy.status, 400, "{}", copy.text());
    assert_eq!(cashu_code(&copy), PENDING, "{}", copy.text());

    let again = h1.call("POST", "/v1/swap", None, Some(body)).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(
        again.json()["signatures"],
        first.json()["signatures"],
        "the repeat is answered with the first's signatures"
    );
    for h in [&h1, &h2] {
        let (r, _) = swap(h, &wallet, &proofs).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(cashu_code(&r), SPENT, "{}", r.text());
    }
}

/// PostgreSQL stopped mid-run: money requests get 503 `store_unavailable` with Retry-After
/// quickly, nothing is accepted, a running guest keeps running and is metered; started
/// again: the same requests succeed, without restarting coinopd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_refuses_money_and_heals_by_itself() {
    let Some(pg) = cluster("a_store_outage_refuses_money_and_heals_by_itself") else {
        return;
    };
    let dir = StateDir::new();
    let h1 = host(&pg, &dir, 1, &[]).await;
    let wallet = Wallet::new(&h1).await;
    let proofs = h1.mint_credit(64).await;
    let lease = if common::kvm_or_skip() {
        let pay = h1.mint_credit(400).await;
        Some(
            h1.create_lease(testguest_body("mode=echo", credit_payment(&pay)))
                .await,
        )
    } else {
        None
    };

    pg.stop().expect("stopping PostgreSQL");
    let blanks = wallet.outputs(&proofs.iter().map(|p| p.amount).collect::<Vec<_>>());
    let body = json!({"inputs": proofs, "outputs": messages(&blanks)});
    let started = Instant::now();
    let r = h1.call("POST", "/v1/swap", None, Some(body.clone())).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("fleet store is unavailable"),
        "{}",
        r.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // NUT-07 cannot say what the fleet holds either: 503, not this host's view alone.
    let r = h1.checkstate(&proofs).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.json()["detail"].is_string(), "NUT-00 body: {}", r.text());
    // The host answers everything else; a running guest runs on and is metered.
    assert_eq!(h1.call("GET", "/v1/host", None, None).await.status, 200);
    if let Some(lease) = &lease {
        let path = format!("/v1/leases/{}", lease.id);
        let before = h1.call("GET", &path, Some(&lease.token), None).await.json();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = h1.call("GET", &path, Some(&lease.token), None).await.json();
        assert_eq!(after["state"], "running", "{after}");
        assert!(
            after["balance_msat"].as_u64() < before["balance_msat"].as_u64(),
            "metered during the outage: {before} then {after}"
        );
    }

    pg.start_again().expect("starting PostgreSQL again");
    // Nothing was accepted on local state alone: the notes are unspent, fleet-wide.
    h1.assert_unspent(&proofs).await;
    let r = h1.call("POST", "/v1/swap", None, Some(body)).await;
    let sigs: Vec<BlindSignature> =
        serde_json::from_value(r.json()["signatures"].clone()).unwrap_or_default();
    let fresh_notes = wallet.unblind(&blanks, &sigs);
    assert_eq!(
        r.status,
        200,
        "the same swap once the store is back: {}",
        r.text()
    );
    let m = h1.call("GET", "/metrics", None, None).await.text();
    assert!(
        m.contains("coinop_fleet_store_total{what=\"unavailable\"}"),
        "{m}"
    );
    // A repeated input is the mint's 400, whether or not a store is in front of it.
    let twice = [proofs[0].clone(), proofs[0].clone()];
    let (r, _) = swap(&h1, &wallet, &twice).await;
    assert_eq!((r.status, cashu_code(&r)), (400, 11007), "{}", r.text());
    if let Some(lease) = lease {
        h1.stop_lease(&lease.id, &lease.token).await;
    }

    // coinopd started while the store is down: it serves, money waits for the store.
    h1.shutdown().await;
    pg.stop().expect("stopping PostgreSQL");
    let h1 = host(&pg, &dir, 1, &[]).await;
    let view = h1.call("GET", "/v1/host", None, None).await.json();
    assert_eq!(view["store"]["ready"], false, "{view}");
    // Its keysets are the fleet's once read from the store: until then, none are given
    // (keyset 0 alone would be wrong once the fleet has rotated).
    for route in ["/v1/keys", "/v1/keysets"] {
        let r = h1.call("GET", route, None, None).await;
        assert_eq!(r.status, 503, "{route}: {}", r.text());
        assert!(r.json()["detail"].is_string(), "NUT-00 body: {}", r.text());
    }
    let (r, _) = swap(&h1, &wallet, &fresh_notes).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("fleet store is unavailable"),
        "{}",
        r.text()
    );
    pg.start_again().expect("starting PostgreSQL again");
    h1.wait_store_ready().await;
    assert_eq!(h1.call("GET", "/v1/keysets", None, None).await.status, 200);
    let (r, _) = swap(&h1, &wallet, &fresh_notes).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A create whose client drops its connection after the payment was fenced in the store
/// (the host made to wait there): the create still runs to its end (the lease is
/// committed, the fence settled spent: the proofs are 11001 on another host, not held
/// pending), and the same request again, with its recovery key, gets the lease back. Two
/// guards keep the flow going: the server's HTTP/1 half-close (a request whose client
/// closed is still served) and the create running as its own task; with neither, this
/// fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_client_leaves_after_the_fence_is_finished_and_recovered() {
    use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
    let Some(pg) =
        cluster("a_create_whose_client_leaves_after_the_fence_is_finished_and_recovered")
    else {
        return;
    };
    if !common::kvm_or_skip() {
        return;
    }
    let dirs = [StateDir::new(), StateDir::new()];
    let h1 = host(
        &pg,
        &dirs[0],
        1,
        &[("COINOPD_FAULT_DELAY", "fleet_fenced:1500")],
    )
    .await;
    share_mint_keys(&dirs[0], &dirs[1]);
    let h2 = host(&pg, &dirs[1], 2, &[]).await;
    let wallet = Wallet::new(&h2).await;
    let proofs = h1.mint_credit(300).await;
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    let mut body = testguest_body("mode=echo", credit_payment(&proofs));
    body["recovery_key"] = json!(hex::encode(key));

    let cut = tokio::time::timeout(
        Duration::from_millis(300),
        h1.call("POST", "/v1/leases", None, Some(body.clone())),
    )
    .await;
    assert!(cut.is_err(), "the client left before the answer");
    // Without its client the create goes on: its lease is committed and boots.
    common::wait_for(
        async || {
            let leases = h1.call("GET", "/v1/leases", None, None).await.json();
            leases["leases"][0]["state"] == "running"
        },
        "the abandoned create's lease running",
    )
    .await;
    // The fence was settled spent, not left pending until a restart.
    let (r, _) = swap(&h2, &wallet, &proofs).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(cashu_code(&r), SPENT, "{}", r.text());
    // The same request again: the lease, recovered with a fresh token.
    let r = h1.call("POST", "/v1/leases", None, Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let listed = h1.call("GET", "/v1/leases", None, None).await.json();
    assert_eq!(
        listed["leases"].as_array().map_or(0, Vec::len),
        1,
        "{listed}"
    );
    assert_eq!(r.json()["lease_id"], listed["leases"][0]["lease_id"]);
    let token = r.json()["token"].as_str().expect("token").to_string();
    let id = r.json()["lease_id"].as_str().expect("lease_id").to_string();
    h1.stop_lease(&id, &token).await;
}

/// Two hosts of one fleet sharing the mint's keys, host 1 losing the answer of its first
/// fleet claim (`COINOPD_FAULT_LOST`), for `test`; `None` when PostgreSQL or KVM is
/// missing (skipped). The daemons are declared first: they end before the cluster.
struct LostClaimFleet {
    h1: Daemon,
    h2: Daemon,
    _dirs: [StateDir; 2],
    _pg: TestCluster,
}

impl LostClaimFleet {
    /// Notes minted on host 2 (a mint fences too, so host 1's first claim is the
    /// create's) and a create paid with them sent to host 1, whose claim's answer is lost:
    /// 503 `store_unavailable`. The notes and the create's body.
    async fn lost_create(&self) -> (Vec<Proof>, serde_json::Value) {
        let proofs = self.h2.mint_credit(300).await;
        let body = testguest_body("mode=echo", credit_payment(&proofs));
        let r = self
            .h1
            .call("POST", "/v1/leases", None, Some(body.clone()))
            .await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.text().contains("store_unavailable"), "{}", r.text());
        (proofs, body)
    }
}

async fn lost_claim_fleet(test: &str) -> Option<LostClaimFleet> {
    let pg = cluster(test)?;
    if !common::kvm_or_skip() {
        return None;
    }
    let dirs = [StateDir::new(), StateDir::new()];
    let h1 = host(
        &pg,
        &dirs[0],
        1,
        &[
            ("COINOPD_FAULT_LOST", "fleet_claimed:1"),
            // Each background pass holds the lost claim's fence a while before releasing it
            // again: a retry sent then finds the fence out of the list, in the pass.
            ("COINOPD_FAULT_DELAY", "fleet_background_settle:2000"),
        ],
    )
    .await;
    share_mint_keys(&dirs[0], &dirs[1]);
    let h2 = host(&pg, &dirs[1], 2, &[]).await;
    Some(LostClaimFleet {
        h1,
        h2,
        _dirs: dirs,
        _pg: pg,
    })
}

/// A create's fence claimed in the store, its answer lost (injected: the store granted the
/// claim, coinopd is told the connection dropped): the create is 503, and the keys are not
/// left pending under an operation that does nothing until host 1 restarts. The same
/// payment retried at once is accepted on host 1 (under the same lease id: the create's
/// slot built ahead of time came back to the pool, and the retry takes the lost fence
/// over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_claim_answer_is_lost_can_be_retried_at_once() {
    // Kept whole: its state directories and cluster live as long as the test.
    let Some(fleet) =
        lost_claim_fleet("a_create_whose_claim_answer_is_lost_can_be_retried_at_once").await
    else {
        return;
    };
    let (h1, h2) = (&fleet.h1, &fleet.h2);
    let (proofs, body) = fleet.lost_create().await;
    // Nothing of the lost claim is left pending in the store, on any host's view.
    let states = h2.proof_states(&proofs).await;
    assert!(
        states.iter().all(|s| s == "UNSPENT"),
        "the lost claim released: {states:?}"
    );
    // The tenant's retry, without a restart: a lease, paid with the same notes.
    let lease = h1.create_lease(body).await;
    h1.stop_lease(&lease.id, &lease.token).await;
}

/// The same create sent again while a background pass is releasing its lost claim once
/// more (held there: `fleet_background_settle`): the retry waits for that release and
/// takes the fence over, rather than being refused as pending with nothing in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_retried_while_its_lost_claim_is_released_again_waits_and_runs() {
    let Some(fleet) =
        lost_claim_fleet("a_create_retried_while_its_lost_claim_is_released_again_waits_and_runs")
            .await
    else {
        return;
    };
    let h1 = &fleet.h1;
    let (_, body) = fleet.lost_create().await;
    // Passes start every second and hold each fence 2 s: by now one has this fence.
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let r = h1.call("POST", "/v1/leases", None, Some(body)).await;
    assert_eq!(r.status, 201, "the retry runs: {}", r.text());
    let v = r.json();
    let (id, token) = (v["lease_id"].as_str(), v["token"].as_str());
    h1.stop_lease(id.expect("id"), token.expect("token")).await;
}

/// The lost claim's release goes on in the background for a while, naming its operation
/// (the lease id) only. A create that the slot pool gives the same lease id, paid with
/// some of the same notes (a wallet that picked its proofs again), is refused until that
/// release is done: granted at once, its claim on the shared notes would have been ended
/// by the release while its lease went ahead, and another host could have taken them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_sharing_notes_with_a_lost_claim_of_its_lease_id_waits_for_its_release() {
    let Some(fleet) = lost_claim_fleet(
        "a_create_sharing_notes_with_a_lost_claim_of_its_lease_id_waits_for_its_release",
    )
    .await
    else {
        return;
    };
    let (h1, h2) = (&fleet.h1, &fleet.h2);
    let proofs = h2.mint_credit(300).await;
    assert!(proofs.len() > 1, "300 sat in several notes");
    let r = h1
        .call(
            "POST",
            "/v1/leases",
            None,
            Some(testguest_body("mode=echo", credit_payment(&proofs))),
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    let some = &proofs[1..];
    let body = testguest_body("mode=echo", credit_payment(&some));
    let r = h1
        .call("POST", "/v1/leases", None, Some(body.clone()))
        .await;
    assert_eq!(
        r.status,
        409,
        "refused while the release goes on: {}",
        r.text()
    );
    // Once the release is over (the lost claim can no longer land), the same create runs.
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let r = h1
            .call("POST", "/v1/leases", None, Some(body.clone()))
            .await;
        if r.status == 201 {
            let v = r.json();
            let (id, token) = (v["lease_id"].as_str(), v["token"].as_str());
            h1.stop_lease(id.expect("id"), token.expect("token")).await;
            break;
        }
        assert_eq!(r.status, 409, "{}", r.text());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "still refused after a minute"
        );
    }
}

/// Proofs spent on a host while it ran on its own (no `--store`), before it joined the
/// fleet: once it has joined, no host of the fleet accepts them again (they were published
/// to the store at its start-up), and a request mixing one of them with unspent proofs is
/// refused without burning the unspent ones. Proofs spent on two hosts while both ran on
/// their own (a double spend nothing can undo now) are reported at the join, which goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spends_from_before_a_host_joined_the_fleet_are_refused_on_every_host() {
    let Some(pg) = cluster("spends_from_before_a_host_joined_the_fleet_are_refused_on_every_host")
    else {
        return;
    };
    let dirs = [StateDir::new(), StateDir::new(), StateDir::new()];
    let h1 = standalone(&dirs[0], 1).await;
    // One mint across the three (host 3 too, though it runs alone at first).
    share_mint_keys(&dirs[0], &dirs[1]);
    share_mint_keys(&dirs[0], &dirs[2]);
    let h3 = standalone(&dirs[2], 3).await;
    let wallet = Wallet::new(&h1).await;
    let spent = h1.mint_credit(300).await;
    let twice = h1.mint_credit(200).await;
    let (r, blanks) = swap(&h1, &wallet, &spent).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sigs: Vec<BlindSignature> =
        serde_json::from_value(r.json()["signatures"].clone()).expect("sigs");
    let fresh = wallet.unblind(&blanks, &sigs);
    // Spent on host 1 and on host 3, each alone: a double spend before either joined.
    for h in [&h1, &h3] {
        let (r, _) = swap(h, &wallet, &twice).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    h1.shutdown().await;
    h3.shutdown().await;

    let h1 = host(&pg, &dirs[0], 1, &[]).await;
    let h2 = host(&pg, &dirs[1], 2, &[]).await;
    for h in [&h1, &h2] {
        h.wait_store_ready().await;
    }
    // Host 2 never saw these proofs, and must refuse them still.
    let (r, _) = swap(&h2, &wallet, &spent).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(cashu_code(&r), SPENT, "{}", r.text());
    // One pre-fleet spend among fresh notes, on the host that spent it: refused, and the
    // fresh notes stay good (the refusal did not spend them in the store).
    let mixed = [spent[0].clone(), fresh[0].clone()];
    let (r, _) = swap(&h1, &wallet, &mixed).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(cashu_code(&r), SPENT, "{}", r.text());
    let (r, _) = swap(&h2, &wallet, &fresh).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Host 3 joins: the proofs it spent are host 1's already in the store. Reported, and
    // the join goes on: host 3 serves money requests.
    let h3 = host(&pg, &dirs[2], 3, &[]).await;
    h3.wait_store_ready().await;
    let log = h3.log();
    let twice_y = payment::credit::hash_to_curve::secret_to_curve(&twice[0].secret)
        .expect("a minted secret")
        .to_string();
    let reported = |log: &str, y: &str| {
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("spent twice") && l.contains(y))
    };
    assert!(
        reported(&log, &twice_y),
        "the double spend before the join is logged with its key: {log}"
    );
    let more = h3.mint_credit(100).await;
    let (r, _) = swap(&h3, &wallet, &more).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Host 1 again: what it published is marked in its ledger, so nothing is sent again
    // (its log, kept across its runs, tells of one publication), and nothing is reported.
    h1.shutdown().await;
    let h1 = host(&pg, &dirs[0], 1, &[]).await;
    h1.wait_store_ready().await;
    let (r, _) = swap(&h2, &wallet, &twice).await;
    assert_eq!(cashu_code(&r), SPENT, "{}", r.text());
    let log = h1.log();
    assert_eq!(log.matches("own spends published").count(), 1, "{log}");
    assert!(!log.contains("spent twice"), "{log}");
}

/// Two coinopds with one `--host-id` on one store: the second, after waiting for what
/// could be a crashed earlier run's session to end, refuses to start (exit 2, its log
/// names the host id and says another coinopd holds it), and the first is untouched.
/// Once the first stops, the second starts with that id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coinopd_with_the_same_host_id_refuses_to_start() {
    let Some(pg) = cluster("a_second_coinopd_with_the_same_host_id_refuses_to_start") else {
        return;
    };
    let dirs = [StateDir::new(), StateDir::new()];
    let h1 = host(&pg, &dirs[0], 1, &[]).await;
    h1.wait_store_ready().await;
    // The fleet's mint keys: what refuses the second below is its host id alone.
    share_mint_keys(&dirs[0], &dirs[1]);
    let conninfo = pg.conninfo("fleet");
    let base = (UID_BASE + 2 * UIDS_PER_HOST).to_string();
    let count = UIDS_PER_HOST.to_string();
    // host 1's id, on its own state dir and uid range.
    let mut args = vec!["--store", conninfo.as_str(), "--host-id", "host-1"];
    args.extend(host_args(&base, &count));
    let socket = dirs[1].path().join("coinop.sock");
    let full = common::daemon_args(dirs[1].path(), &socket, &args);
    let log_path = dirs[1].path().join("twin.log");
    let log = std::fs::File::create(&log_path).expect("twin log");
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_coinopd"))
            .args(&full[1..])
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .status()
            .expect("run coinopd")
    })
    .await
    .expect("waiting for coinopd");
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(status.code(), Some(2), "{status:?}: {text}");
    assert!(
        text.contains("another coinopd holds host id \"host-1\""),
        "{text}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(20),
        "refused without waiting for a crashed session to end: {text}"
    );
    let view = h1.call("GET", "/v1/host", None, None).await.json();
    assert_eq!(view["store"]["ready"], true, "{view}");

    h1.shutdown().await;
    let twin = Daemon::spawn(dirs[1].path(), &args, &[]).await;
    twin.wait_store_ready().await;
    twin.shutdown().await;
}

/// A swap whose proofs this mint never signed (a real note's secret, so its `Y` is the
/// note's, with another note's `C`) is refused before the fleet store is asked: the test
/// holds the spent keys' table locked, where the fence would wait until the statement
/// timeout (5 s) and answer 503, but the forged swap is answered 10001 at once. The real
/// note was never fenced: once the table is free its owner swaps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_swap_is_refused_before_it_reaches_the_store() {
    let Some(pg) = cluster("a_forged_swap_is_refused_before_it_reaches_the_store") else {
        return;
    };
    let dir = StateDir::new();
    let h1 = host_with(&pg, &dir, 1, &[]).await;
    h1.wait_store_ready().await;
    let wallet = Wallet::new(&h1).await;
    // 3 sat: two notes, 1 and 2.
    let proofs = h1.mint_credit(3).await;
    assert_eq!(proofs.len(), 2, "{proofs:?}");
    let forged = Proof {
        c: proofs[1].c.clone(),
        ..proofs[0].clone()
    };

    let locker = lock_table(&pg, "coinop_spent_keys").await;
    let sent = Instant::now();
    let (r, _) = swap(&h1, &wallet, std::slice::from_ref(&forged)).await;
    let took = sent.elapsed();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        cashu_code(&r),
        10001,
        "the mint's invalid proof: {}",
        r.text()
    );
    assert!(
        took < Duration::from_secs(3),
        "refused at once, not after the store: {took:?}"
    );
    locker.batch_execute("ROLLBACK").await.expect("unlock");

    let (r, _) = swap(&h1, &wallet, &proofs[..1]).await;
    assert_eq!(r.status, 200, "the real note is its owner's: {}", r.text());
}
