//! The `SpentKeyStore` conformance suite (payment::spent_set::conformance), the one the
//! SQLite sets pass in payment's tests/spent_key_store.rs, against the PostgreSQL set on a
//! real throwaway cluster (payment_postgres::test_cluster).

use std::time::Duration;

use payment::spent_set::conformance;
use payment_postgres::test_cluster::TestCluster;
use payment_postgres::{PgSpentSet, PgStore, PgStoreOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_set_conforms() {
    let Some(pg) = TestCluster::start("the_postgres_set_conforms").expect("starting PostgreSQL")
    else {
        return;
    };
    pg.create_database("coinop").expect("createdb coinop");
    let mut options = PgStoreOptions::new(pg.conninfo("coinop"), "h1");
    // Room for every racer of the concurrency check to hold a connection at once.
    options.pool_size = conformance::RACERS as usize;
    options.connect_timeout = Duration::from_secs(2);
    options.statement_timeout = Duration::from_secs(5);
    options.pool_wait_timeout = Duration::from_secs(5);
    options.operation_timeout = Duration::from_secs(10);
    let store = PgStore::connect(&options)
        .await
        .expect("connecting to the test PostgreSQL");
    conformance::run_all(PgSpentSet::new(store)).await;
}
