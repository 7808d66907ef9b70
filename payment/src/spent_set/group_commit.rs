//! A group-committing spent set over the same SQLite file and schema as [`SqliteSpentSet`]:
//! concurrent writers share one fsync instead of paying one each.
//!
//! Callers queue their operation and block; one committer thread takes everything queued,
//! runs it in one IMMEDIATE transaction with each request in its own savepoint (a request's
//! conflict undoes only that request, so all-or-none holds per request), commits once, and
//! only then answers every caller. No caller hears `Ok` before its write is on disk.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::{Connection, TransactionBehavior};

use super::sqlite::storage;
use super::{
    open_durable, SignedOutput, SpendKey, SpendState, SpentSet, SpentSetError, SqliteSpentSet,
};
use crate::storage_refusal::StorageRefused;

/// The most requests one transaction carries, so a burst cannot grow one batch without bound.
const MAX_BATCH: usize = 1024;

/// One queued write.
#[derive(Debug)]
enum Op {
    Claim {
        keys: Vec<SpendKey>,
        state: SpendState,
        note: String,
        receipt: Option<[u8; 32]>,
        signed: Vec<SignedOutput>,
    },
    CommitPending(Vec<SpendKey>),
    ReleasePending(Vec<SpendKey>),
}

type Reply = Result<(), SpentSetError>;

struct Request {
    op: Op,
    reply: SyncSender<Reply>,
}

/// A [`SpentSet`] whose writes are group-committed by one background thread.
pub struct GroupCommitSpentSet {
    queue: Option<Sender<Request>>,
    committer: Option<JoinHandle<()>>,
    reader: Mutex<Connection>,
    commits: Arc<AtomicU64>,
}

impl std::fmt::Debug for GroupCommitSpentSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitSpentSet")
            .field("commits", &self.commits())
            .finish_non_exhaustive()
    }
}

impl GroupCommitSpentSet {
    /// Opens (creating if needed) the spent set in the SQLite file at `path` and starts its
    /// committer thread.
    pub fn open(path: &Path) -> Result<Self, SpentSetError> {
        let writer = open_durable(path).map_err(storage)?;
        SqliteSpentSet::create_schema(&writer)?;
        let reader = open_durable(path).map_err(storage)?;
        let commits = Arc::new(AtomicU64::new(0));
        let (queue, requests) = mpsc::channel();
        let counter = commits.clone();
        let committer = std::thread::Builder::new()
            .name("spent-set-commit".into())
            .spawn(move || run_committer(writer, requests, &counter))
            .map_err(|e| SpentSetError::Storage(format!("spawning the committer thread: {e}")))?;
        Ok(GroupCommitSpentSet {
            queue: Some(queue),
            committer: Some(committer),
            reader: Mutex::new(reader),
            commits,
        })
    }

    /// How many transactions the committer has committed: with concurrent writers this is
    /// far below the number of requests (one fsync per batch).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn submit(&self, op: Op) -> Reply {
        let (reply, answer) = mpsc::sync_channel(1);
        let gone = || SpentSetError::Storage("spent set committer thread has stopped".into());
        self.queue
            .as_ref()
            .ok_or_else(gone)?
            .send(Request { op, reply })
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

impl Drop for GroupCommitSpentSet {
    fn drop(&mut self) {
        // Closing the queue ends the committer after it has answered what is already queued.
        drop(self.queue.take());
        if let Some(committer) = self.committer.take() {
            if committer.join().is_err() {
                tracing::error!("spent set committer thread panicked");
            }
        }
    }
}

impl SpentSet for GroupCommitSpentSet {
    fn claim(&self, keys: &[SpendKey], state: SpendState, note: &str) -> Reply {
        self.submit(Op::Claim {
            keys: keys.to_vec(),
            state,
            note: note.to_owned(),
            receipt: None,
            signed: Vec::new(),
        })
    }

    fn claim_with_receipt(
        &self,
        keys: &[SpendKey],
        note: &str,
        receipt: &[u8; 32],
        signed: &[SignedOutput],
    ) -> Reply {
        self.submit(Op::Claim {
            keys: keys.to_vec(),
            state: SpendState::Spent,
            note: note.to_owned(),
            receipt: Some(*receipt),
            signed: signed.to_vec(),
        })
    }

    fn signed_outputs(&self, b_s: &[Vec<u8>]) -> Result<Vec<Option<SignedOutput>>, SpentSetError> {
        let conn = self
            .reader
            .lock()
            .map_err(|_| SpentSetError::Storage("spent set reader lock poisoned".into()))?;
        SqliteSpentSet::signed_outputs_in(&conn, b_s)
    }

    fn spent_with(&self, keys: &[SpendKey], receipt: &[u8; 32]) -> Result<bool, SpentSetError> {
        let conn = self
            .reader
            .lock()
            .map_err(|_| SpentSetError::Storage("spent set reader lock poisoned".into()))?;
        SqliteSpentSet::spent_with_in(&conn, keys, receipt)
    }

    fn commit_pending(&self, keys: &[SpendKey]) -> Reply {
        self.submit(Op::CommitPending(keys.to_vec()))
    }

    fn release_pending(&self, keys: &[SpendKey]) -> Reply {
        self.submit(Op::ReleasePending(keys.to_vec()))
    }

    fn states(&self, keys: &[SpendKey]) -> Result<Vec<Option<SpendState>>, SpentSetError> {
        let conn = self
            .reader
            .lock()
            .map_err(|_| SpentSetError::Storage("spent set reader lock poisoned".into()))?;
        SqliteSpentSet::states_in(&conn, keys)
    }
}

/// Takes whatever is queued, up to [`MAX_BATCH`], commits it as one batch and answers it;
/// returns when every sender is gone.
fn run_committer(mut conn: Connection, requests: Receiver<Request>, commits: &AtomicU64) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let ops: Vec<&Op> = batch.iter().map(|r| &r.op).collect();
        let (results, committed) = run_batch(&mut conn, &ops);
        if committed {
            commits.fetch_add(1, Ordering::Relaxed);
        }
        for (request, result) in batch.into_iter().zip(results) {
            // A caller that stopped waiting has nobody to tell; its write stands regardless.
            let _ = request.reply.send(result);
        }
    }
}

/// Runs `ops` in one IMMEDIATE transaction, each in its own savepoint, and commits once.
/// Returns each op's result (all `Storage` errors if the transaction could not commit) and
/// whether a commit happened.
fn run_batch(conn: &mut Connection, ops: &[&Op]) -> (Vec<Reply>, bool) {
    // A refusal by the disk or the lock stays typed for every request (each may simply be
    // retried); anything else is reported as what it is.
    let fail_all = |e: rusqlite::Error| {
        let what = format!("group commit of {} requests: {e}", ops.len());
        let refused = StorageRefused::from_sqlite(&e).map(|r| StorageRefused {
            reason: what.clone(),
            ..r
        });
        (every_request_failed(ops.len(), refused, &what), false)
    };
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail_all(e),
    };
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        let result = apply_in_savepoint(&mut tx, op);
        if tx.is_autocommit() {
            // SQLite rolled the whole transaction back (it may, on SQLITE_FULL, IOERR,
            // BUSY or NOMEM): nothing the batch did so far stands, and a request run now
            // would be its own durable transaction, answered as failed with the rest.
            // Every request fails, typed as the refusal that ended it when it is one.
            let what = format!(
                "group commit of {} requests: the transaction was rolled back",
                ops.len()
            );
            let refused = match result {
                Err(SpentSetError::StorageRefused(r)) => Some(StorageRefused {
                    reason: format!("{what}: {}", r.reason),
                    ..r
                }),
                _ => None,
            };
            return (every_request_failed(ops.len(), refused, &what), false);
        }
        results.push(result);
    }
    match tx.commit() {
        Ok(()) => (results, true),
        Err(e) => fail_all(e),
    }
}

/// `n` requests all answered failed: with the disk's or the lock's refusal, typed, when
/// that is what ended the batch (each may simply be retried), else as `what`.
fn every_request_failed(n: usize, refused: Option<StorageRefused>, what: &str) -> Vec<Reply> {
    (0..n)
        .map(|_| {
            Err(match &refused {
                Some(r) => SpentSetError::StorageRefused(r.clone()),
                None => SpentSetError::Storage(what.to_string()),
            })
        })
        .collect()
}

/// Applies one request inside a savepoint that is released only if the request succeeded;
/// otherwise it rolls back (on drop) and leaves the batch's other requests untouched.
fn apply_in_savepoint(tx: &mut rusqlite::Transaction<'_>, op: &Op) -> Reply {
    let sp = tx.savepoint().map_err(storage)?;
    match op {
        Op::Claim {
            keys,
            state,
            note,
            receipt,
            signed,
        } => SqliteSpentSet::claim_on(&sp, keys, *state, note, receipt.as_ref(), signed),
        Op::CommitPending(keys) => SqliteSpentSet::commit_pending_on(&sp, keys),
        Op::ReleasePending(keys) => SqliteSpentSet::release_pending_on(&sp, keys),
    }?;
    sp.commit().map_err(storage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spent_set::KeyKind;
    use crate::storage_refusal::StorageFault;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Barrier;

    fn key(n: u32) -> SpendKey {
        let mut bytes = vec![2u8; 33];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        SpendKey {
            kind: KeyKind::CreditY,
            bytes,
        }
    }

    fn fresh() -> (tempfile::TempDir, std::path::PathBuf, GroupCommitSpentSet) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spent.sqlite");
        let set = GroupCommitSpentSet::open(&path).expect("open");
        (dir, path, set)
    }

    fn claim(keys: &[SpendKey]) -> Op {
        Op::Claim {
            keys: keys.to_vec(),
            state: SpendState::Spent,
            note: "batch".into(),
            receipt: None,
            signed: Vec::new(),
        }
    }

    /// A batch the disk refuses part-way (here: the file at its page limit) answers every
    /// request as what happened to it: none answered failed is spent, none answered spent
    /// is missing (SQLite may roll back the whole transaction on SQLITE_FULL, after which
    /// later requests would have run in autocommit mode, each durable on its own).
    #[test]
    fn a_batch_the_disk_refuses_answers_each_request_truly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spent.sqlite");
        let mut conn = open_durable(&path).unwrap();
        SqliteSpentSet::create_schema(&conn).unwrap();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        conn.pragma_update(None, "max_page_count", pages + 3)
            .unwrap();
        let big = |n: u32| Op::Claim {
            keys: vec![key(n)],
            state: SpendState::Spent,
            note: "x".repeat(3000),
            receipt: None,
            signed: Vec::new(),
        };
        let ops: Vec<Op> = (0..40).map(big).collect();
        let refs: Vec<&Op> = ops.iter().collect();
        let (results, committed) = run_batch(&mut conn, &refs);
        assert!(
            results.iter().any(|r| r.is_err()),
            "the page limit was reached"
        );
        let states =
            SqliteSpentSet::states_in(&conn, &(0..40).map(key).collect::<Vec<_>>()).unwrap();
        for (i, (r, st)) in results.iter().zip(&states).enumerate() {
            assert_eq!(
                r.is_ok() && committed,
                st.is_some(),
                "request {i}: answered {r:?} (committed {committed}), stored {st:?}"
            );
        }
    }

    #[test]
    fn a_conflicting_request_in_a_batch_undoes_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spent.sqlite");
        let mut conn = open_durable(&path).unwrap();
        SqliteSpentSet::create_schema(&conn).unwrap();
        let (a, b, c, d, e) = (key(1), key(2), key(3), key(4), key(5));
        let ops = [
            claim(std::slice::from_ref(&a)),
            // Writes `b` before finding `a` taken by the request above: `b` must vanish.
            claim(&[b.clone(), a.clone()]),
            claim(&[c.clone(), c.clone()]),
            Op::CommitPending(vec![d.clone()]),
            claim(std::slice::from_ref(&e)),
        ];
        let refs: Vec<&Op> = ops.iter().collect();
        let (results, committed) = run_batch(&mut conn, &refs);
        assert!(committed);
        assert!(results[0].is_ok(), "{:?}", results[0]);
        assert!(
            matches!(results[1], Err(SpentSetError::AlreadyClaimed { .. })),
            "{:?}",
            results[1]
        );
        assert!(
            matches!(results[2], Err(SpentSetError::DuplicateKey { .. })),
            "{:?}",
            results[2]
        );
        assert!(
            matches!(results[3], Err(SpentSetError::NotPending { .. })),
            "{:?}",
            results[3]
        );
        assert!(results[4].is_ok(), "{:?}", results[4]);
        let reopened = SqliteSpentSet::open(&path).unwrap();
        assert_eq!(
            reopened.states(&[a, b, c, d, e]).unwrap(),
            vec![
                Some(SpendState::Spent),
                None,
                None,
                None,
                Some(SpendState::Spent)
            ]
        );
    }

    #[test]
    fn a_failed_commit_fails_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spent.sqlite");
        let mut conn = open_durable(&path).unwrap();
        SqliteSpentSet::create_schema(&conn).unwrap();
        conn.busy_timeout(std::time::Duration::from_millis(1))
            .unwrap();
        // Another writer holds the lock, so this batch cannot even begin.
        let mut other = open_durable(&path).unwrap();
        let held = other
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        let ops = [claim(&[key(1)]), claim(&[key(2)])];
        let refs: Vec<&Op> = ops.iter().collect();
        let (results, committed) = run_batch(&mut conn, &refs);
        assert!(!committed);
        assert!(
            results.iter().all(|r| matches!(
                r,
                Err(SpentSetError::StorageRefused(StorageRefused {
                    fault: StorageFault::Busy,
                    ..
                }))
            )),
            "{results:?}"
        );
        drop(held);
        let reopened = SqliteSpentSet::open(&path).unwrap();
        assert_eq!(
            reopened.states(&[key(1), key(2)]).unwrap(),
            vec![None, None]
        );
    }

    #[test]
    fn thousand_threads_one_key_one_winner() {
        let (_d, _p, set) = fresh();
        let set = Arc::new(set);
        const THREADS: usize = 1000;
        let wins = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (set, wins, barrier) = (set.clone(), wins.clone(), barrier.clone());
                std::thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        barrier.wait();
                        match set.claim(&[key(7)], SpendState::Spent, &t.to_string()) {
                            Ok(()) => {
                                wins.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(SpentSetError::AlreadyClaimed { .. }) => {}
                            Err(other) => panic!("unexpected error {other:?}"),
                        }
                    })
                    .unwrap()
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(wins.load(Ordering::SeqCst), 1);
        assert_eq!(
            set.states(&[key(7)]).unwrap(),
            vec![Some(SpendState::Spent)]
        );
    }

    #[test]
    fn concurrent_distinct_claims_share_commits() {
        let (_d, path, set) = fresh();
        let set = Arc::new(set);
        const THREADS: u32 = 64;
        // Holding the write lock from a second connection stalls the committer on its first
        // batch, so the other claims queue up behind it whatever the disk speed.
        let mut blocker = open_durable(&path).unwrap();
        let held = blocker
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        let barrier = Arc::new(Barrier::new(THREADS as usize + 1));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (set, barrier) = (set.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    set.claim(&[key(t)], SpendState::Spent, "distinct")
                })
            })
            .collect();
        barrier.wait();
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(held);
        for h in handles {
            h.join().unwrap().unwrap();
        }
        let keys: Vec<SpendKey> = (0..THREADS).map(key).collect();
        assert!(set
            .states(&keys)
            .unwrap()
            .iter()
            .all(|s| *s == Some(SpendState::Spent)));
        let commits = set.commits();
        assert!(
            (1..=16).contains(&commits),
            "{commits} commits for 64 claims"
        );
    }

    #[test]
    fn a_returned_claim_is_on_disk() {
        let (_d, path, set) = fresh();
        set.claim(&[key(1)], SpendState::Spent, "x").unwrap();
        set.claim(&[key(2)], SpendState::Pending, "y").unwrap();
        // A new handle reads the file, not the committer's connection.
        let reopened = SqliteSpentSet::open(&path).unwrap();
        assert_eq!(
            reopened.states(&[key(1), key(2)]).unwrap(),
            vec![Some(SpendState::Spent), Some(SpendState::Pending)]
        );
        drop(set);
        assert!(reopened
            .claim(&[key(1)], SpendState::Spent, "again")
            .is_err());
    }

    #[test]
    fn a_receipt_is_written_with_its_claim_and_read_back_after_a_reopen() {
        let (_d, path, set) = fresh();
        let receipt = [9u8; 32];
        set.claim_with_receipt(&[key(1), key(2)], "swap", &receipt, &[])
            .unwrap();
        assert!(set.spent_with(&[key(2), key(1)], &receipt).unwrap());
        drop(set);
        let reopened = SqliteSpentSet::open(&path).unwrap();
        assert!(reopened.spent_with(&[key(1), key(2)], &receipt).unwrap());
        assert!(!reopened.spent_with(&[key(1)], &[8u8; 32]).unwrap());
    }

    #[test]
    fn pending_commit_and_release_through_the_group_path() {
        let (_d, _p, set) = fresh();
        let (a, b) = (key(1), key(2));
        set.claim(&[a.clone(), b.clone()], SpendState::Pending, "swap")
            .unwrap();
        assert!(matches!(
            set.claim(std::slice::from_ref(&a), SpendState::Spent, "other"),
            Err(SpentSetError::AlreadyClaimed {
                state: SpendState::Pending,
                ..
            })
        ));
        set.commit_pending(std::slice::from_ref(&a)).unwrap();
        set.release_pending(std::slice::from_ref(&b)).unwrap();
        assert_eq!(
            set.states(&[a.clone(), b.clone()]).unwrap(),
            vec![Some(SpendState::Spent), None]
        );
        assert!(matches!(
            set.release_pending(std::slice::from_ref(&a)),
            Err(SpentSetError::NotPending { .. })
        ));
        set.claim(std::slice::from_ref(&b), SpendState::Spent, "again")
            .unwrap();
        assert_eq!(
            set.states(&[a, b]).unwrap(),
            vec![Some(SpendState::Spent), Some(SpendState::Spent)]
        );
    }
}
