//! The `SpentKeyStore` conformance suite (payment::spent_set::conformance) against the SQLite
//! sets, each in a fresh database in a temp dir: the plain set and the group-commit wrapper
//! coinopd uses, both through `Arc` on tokio's blocking pool.

use std::sync::Arc;

use payment::spent_set::{conformance, GroupCommitSpentSet, SqliteSpentSet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_set_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let set = SqliteSpentSet::open(&dir.path().join("spent.sqlite")).expect("opening the set");
    conformance::run_all(Arc::new(set)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_commit_set_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let set = GroupCommitSpentSet::open(&dir.path().join("spent.sqlite")).expect("opening the set");
    conformance::run_all(Arc::new(set)).await;
}
