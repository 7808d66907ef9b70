//! The sessions a crashed process of a host id left on the server are ended when the next
//! process of that id takes the id's lock, before anything runs under the id: against a
//! real throwaway PostgreSQL cluster (payment_postgres::test_cluster).

use std::time::{Duration, Instant};

use payment::spent_set::{KeyKind, SpendKey};
use payment_postgres::test_cluster::{TestCluster, USER};
use payment_postgres::{
    application_name, PgSpentSet, PgStore, PgStoreError, PgStoreOptions, StaleSession,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// A cluster with database `coinop`, or `None` (SKIPPED printed) without PostgreSQL.
fn cluster(test: &str) -> Option<TestCluster> {
    let cluster = TestCluster::start(test).expect("starting the test PostgreSQL")?;
    cluster.create_database("coinop").expect("createdb coinop");
    Some(cluster)
}

fn options(conninfo: String, host: &str) -> PgStoreOptions {
    let mut o = PgStoreOptions::new(conninfo, host);
    o.pool_size = 4;
    o.connect_timeout = Duration::from_secs(2);
    o.operation_timeout = Duration::from_secs(10);
    o
}

/// A session of its own on `conninfo` named `name`, as a crashed process's (or anyone's).
async fn session(conninfo: &str, name: &str) -> Client {
    let (client, connection) =
        tokio_postgres::connect(&format!("{conninfo} application_name='{name}'"), NoTls)
            .await
            .expect("connecting a test session");
    tokio::spawn(connection);
    client
}

async fn backend_pid(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pg_backend_pid")
        .get(0)
}

/// Whether the server still has backend `pid`.
fn alive(pg: &TestCluster, pid: i32) -> bool {
    pg.psql(
        "coinop",
        &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
    )
    .expect("psql")
        == "1"
}

/// Waits until the server has removed backend `pid`.
async fn until_gone(pg: &TestCluster, pid: i32) {
    let started = Instant::now();
    while alive(pg, pid) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "backend {pid} never went"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `n` sessions named `name` wait on a lock.
async fn until_waiting(pg: &TestCluster, name: &str, n: usize) {
    let started = Instant::now();
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE application_name = '{name}' AND wait_event_type = 'Lock'"
    );
    while pg.psql("coinop", &sql).expect("psql") != n.to_string() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name}: {n} sessions never waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `e` is the server ending the session (pg_terminate_backend), or its socket
/// closing under the statement.
fn ended(e: &tokio_postgres::Error) -> bool {
    e.is_closed() || e.code() == Some(&SqlState::ADMIN_SHUTDOWN)
}

const GATE: i64 = 7_300_042;

/// A claim a crashed process had sent, still running on its backend (held behind a lock
/// the test holds, as a statement waits behind a row lock or a slow disk), is ended when
/// the next process of its host id takes the id's lock: released afterwards, it claims
/// nothing. This process's own pool session, made before the lock (the schema check), and
/// the sessions of other host ids and of another database are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_processs_statement_is_ended_before_the_host_id_is_held() {
    let Some(pg) = cluster("a_crashed_processs_statement_is_ended_before_the_host_id_is_held")
    else {
        return;
    };
    pg.create_database("elsewhere").expect("createdb elsewhere");
    let conninfo = pg.conninfo("coinop");
    let name = application_name("h1");
    assert_eq!(name, "coinopd h1");
    let set = PgSpentSet::new(
        PgStore::connect(&options(conninfo.clone(), "h1"))
            .await
            .expect("connecting"),
    );
    let own = pg
        .psql(
            "coinop",
            &format!("SELECT pid FROM pg_stat_activity WHERE application_name = '{name}'"),
        )
        .expect("psql");
    let own: i32 = own
        .parse()
        .expect("one session of this store: the schema check's");

    let gate = session(&conninfo, "test gate").await;
    gate.execute("SELECT pg_advisory_lock($1)", &[&GATE])
        .await
        .expect("gate");
    let key = SpendKey {
        kind: KeyKind::CreditY,
        bytes: vec![2; 33],
    };
    let crashed = session(&conninfo, &name).await;
    let late = {
        let bytes = key.bytes.clone();
        tokio::spawn(async move {
            crashed
                .query_one(
                    "SELECT coinop_claim(ARRAY[2]::int2[], ARRAY[$1]::bytea[], 1::int2, \
                     'late', NULL, 'h1', 'crashed-op') FROM pg_advisory_lock($2)",
                    &[&bytes, &GATE],
                )
                .await
        })
    };
    until_waiting(&pg, &name, 1).await;
    let neighbour = session(&conninfo, &application_name("h10")).await;
    let elsewhere = session(&pg.conninfo("elsewhere"), &name).await;

    set.store()
        .hold_host_lock()
        .await
        .expect("the id's lock, the crashed session ended");
    // Let the claim go: ended, it can no longer land.
    gate.execute("SELECT pg_advisory_unlock($1)", &[&GATE])
        .await
        .expect("ungate");
    match late.await.expect("the crashed session's task") {
        Err(e) if ended(&e) => {}
        other => panic!("the crashed process's claim ran on: {other:?}"),
    }
    assert_eq!(
        set.states(std::slice::from_ref(&key))
            .await
            .expect("states"),
        vec![None],
        "nothing claimed after the lock was taken"
    );
    assert!(alive(&pg, own), "this store's own session spared");
    for (what, other) in [
        ("another host id", &neighbour),
        ("another database", &elsewhere),
    ] {
        other
            .simple_query("SELECT 1")
            .await
            .unwrap_or_else(|e| panic!("{what}'s session ended: {e}"));
    }
}

/// The crashed process's sessions run as a role the store's role may not signal: taking
/// the lock fails with `StaleSessionsNotEnded` naming them (the same role's session is
/// ended all the same), the lock is not held, and a call under the id is refused. Once the
/// role is granted `pg_signal_backend`, the lock is taken and they are ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_the_role_may_not_end_refuse_the_host_id_until_granted() {
    let Some(pg) = cluster("sessions_the_role_may_not_end_refuse_the_host_id_until_granted") else {
        return;
    };
    pg.psql(
        "coinop",
        "CREATE ROLE fleet LOGIN; CREATE ROLE stranger LOGIN",
    )
    .expect("roles");
    let as_role = |role: &str| {
        pg.conninfo("coinop")
            .replace(&format!("user={USER}"), &format!("user={role}"))
    };
    let name = application_name("h1");
    let same_role = session(&as_role("fleet"), &name).await;
    let other_role = session(&as_role("stranger"), &name).await;
    let other_pid = backend_pid(&other_role).await;
    let same_pid = backend_pid(&same_role).await;
    let set = PgSpentSet::new(PgStore::new(&options(as_role("fleet"), "h1")).expect("store"));

    match set.store().hold_host_lock().await {
        Err(PgStoreError::StaleSessionsNotEnded { host_id, sessions }) => {
            assert_eq!(host_id, "h1");
            assert_eq!(
                sessions,
                vec![StaleSession {
                    pid: other_pid,
                    role: "stranger".into()
                }]
            );
        }
        other => panic!("expected StaleSessionsNotEnded, got {other:?}"),
    }
    assert!(!set.store().holds_host_lock());
    let refused = set.pending_operations().await;
    assert!(
        matches!(&refused, Err(PgStoreError::Unavailable(m)) if m.contains("may not end them")),
        "{refused:?}"
    );
    // The same role's session was ended (terminated before the refusal: it goes).
    until_gone(&pg, same_pid).await;
    assert!(alive(&pg, other_pid));

    pg.psql("coinop", "GRANT pg_signal_backend TO fleet")
        .expect("grant");
    set.store()
        .hold_host_lock()
        .await
        .expect("granted: the other role's session ended");
    assert!(!alive(&pg, other_pid));
    let err = other_role
        .simple_query("SELECT 1")
        .await
        .expect_err("ended");
    assert!(ended(&err), "{err}");
}

/// A crashed process's session that does not go when terminated (its backend stopped
/// here with SIGSTOP, as one stuck in the kernel would be): taking the lock fails with
/// `StaleSessionsLinger` after the bounded wait rather than hanging or going ahead, the
/// lock is let go, and once the backend can go, the lock is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_does_not_go_refuses_the_host_id_for_a_bounded_time() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Some(pg) = cluster("a_session_that_does_not_go_refuses_the_host_id_for_a_bounded_time")
    else {
        return;
    };
    let conninfo = pg.conninfo("coinop");
    let crashed = session(&conninfo, &application_name("h1")).await;
    let pid = backend_pid(&crashed).await;
    let set = PgSpentSet::new(PgStore::new(&options(conninfo.clone(), "h1")).expect("store"));
    // The backend is this test's cluster's, which the test made.
    kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP the crashed session's backend");
    let started = Instant::now();
    let held = set.store().hold_host_lock().await;
    let waited = started.elapsed();
    kill(Pid::from_raw(pid), Signal::SIGCONT).expect("SIGCONT");
    match held {
        Err(PgStoreError::StaleSessionsLinger {
            host_id,
            pids,
            waited_ms,
        }) => {
            assert_eq!((host_id.as_str(), pids), ("h1", vec![pid]));
            assert_eq!(
                waited_ms,
                payment_postgres::STALE_SESSIONS_WAIT.as_millis() as u64
            );
        }
        other => panic!("expected StaleSessionsLinger, got {other:?}"),
    }
    assert!(
        waited < payment_postgres::STALE_SESSIONS_WAIT + Duration::from_secs(3),
        "{waited:?}"
    );
    assert!(!set.store().holds_host_lock());
    // Let go at once: another store of the id is not told it is held.
    let again = PgSpentSet::new(PgStore::new(&options(conninfo, "h1")).expect("store"));
    again
        .store()
        .hold_host_lock()
        .await
        .expect("the backend went once it could");
    until_gone(&pg, pid).await;
}
