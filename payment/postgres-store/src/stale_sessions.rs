//! Ending the sessions an earlier, crashed process of this host id left on the server,
//! before this one reconciles.
//!
//! PostgreSQL does not cancel a statement when its client goes away: it notices the lost
//! socket only when it next writes to it, so a claim, a reservation or a settle that a
//! crashed coinopd had sent goes on running on its backend (waiting on a row lock, a slow
//! disk) and may commit afterwards. If that happens after the new process has reconciled
//! this host's pending claims at start-up, the late claim's keys stay pending until the
//! next restart, or a fence the reconciliation released is taken again by the dead
//! process's statement.
//!
//! Every connection of a host carries [`crate::application_name`] of its host id. Once a
//! process holds the host id's lock (see the `host_lock` module), no other live process
//! of that id exists, so every other backend with that name on this database belongs to
//! a dead one: [`end_stale_sessions`] terminates them (`pg_terminate_backend`, which rolls
//! back what they had not committed) and waits until the server has removed them, before
//! the lock counts as held and so before anything under the id runs. A backend this
//! process opened itself is spared: its pool records the pid of each connection it makes
//! until the sweep is done ([`OwnSessions`]).
//!
//! Terminating another role's backend needs that role's privileges (or membership in
//! `pg_signal_backend`, and a superuser's backend only a superuser may end): when every run
//! of a host connects as one role, which is the normal set-up, nothing more is needed.
//! Otherwise the sweep fails with [`PgStoreError::StaleSessionsNotEnded`], naming the
//! sessions and their roles, and nothing is done under the id.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;

use crate::error::{classify, PgStoreError};

/// How long terminated backends may take to go (a rollback of what they wrote, their
/// exit): coinopd's transactions are small, so this is generous; beyond it the sweep
/// fails with [`PgStoreError::StaleSessionsLinger`] and is tried again.
pub const STALE_SESSIONS_WAIT: Duration = Duration::from_secs(5);

/// How often the sweep looks whether terminated backends are gone.
const GONE_POLL: Duration = Duration::from_millis(10);

/// The backend pids of the connections this process's pool opened, recorded until the
/// first sweep is done (after it, nothing needs them: a sweep runs once per process).
#[derive(Debug, Default)]
pub(crate) struct OwnSessions {
    /// `None` once the sweep is done: connections made from then on send no extra query.
    pids: Mutex<Option<HashSet<i32>>>,
}

impl OwnSessions {
    pub(crate) fn new() -> Self {
        OwnSessions {
            pids: Mutex::new(Some(HashSet::new())),
        }
    }

    /// Whether pids are still wanted (the sweep is not done).
    pub(crate) fn recording(&self) -> bool {
        self.pids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    pub(crate) fn record(&self, pid: i32) {
        if let Some(pids) = self
            .pids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            pids.insert(pid);
        }
    }

    fn snapshot(&self) -> Vec<i32> {
        self.pids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The sweep is done: stop recording.
    pub(crate) fn done(&self) {
        *self.pids.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// One backend of a dead process of this host id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleSession {
    pub pid: i32,
    /// The role it runs as (what terminating it needs the privileges of).
    pub role: String,
}

/// Terminates every backend on this database with `client`'s application name but
/// `client`'s own and `own`'s, and waits up to `wait` until the server has removed them.
/// Returns how many were ended. `client` must hold the host id's lock: that is what proves
/// the others to be a dead process's.
pub(crate) async fn end_stale_sessions(
    client: &tokio_postgres::Client,
    host_id: &str,
    own: &OwnSessions,
    wait: Duration,
) -> Result<usize, PgStoreError> {
    let own_pids = own.snapshot();
    // The name as the server holds it for this very session, so that it is compared as
    // the server stored every other (it is printable ASCII within the server's length
    // anyway: `crate::application_name`). Same database only: the same host id in another
    // database is another fleet. backend_start (with the pid) tells a backend from a later
    // one that got the same pid; it reads NULL for another role's backend without
    // pg_read_all_stats, hence IS NOT DISTINCT FROM below.
    let rows = client
        .query(
            "SELECT pid, backend_start::text, COALESCE(usename::text, '?') \
             FROM pg_stat_activity \
             WHERE application_name = current_setting('application_name') \
               AND datname = current_database() \
               AND pid <> pg_backend_pid() \
               AND NOT (pid = ANY($1::int4[]))",
            &[&own_pids],
        )
        .await
        .map_err(classify)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut ended: Vec<(i32, Option<String>)> = Vec::with_capacity(rows.len());
    let mut refused = Vec::new();
    for row in &rows {
        let (pid, started, role): (i32, Option<String>, String) =
            (row.get(0), row.get(1), row.get(2));
        match client
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
        {
            // false: it was gone already (a warning, not an error).
            Ok(_) => ended.push((pid, started)),
            Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                refused.push(StaleSession { pid, role })
            }
            Err(e) => return Err(classify(e)),
        }
    }
    if !refused.is_empty() {
        return Err(PgStoreError::StaleSessionsNotEnded {
            host_id: host_id.to_owned(),
            sessions: refused,
        });
    }
    let (pids, starts): (Vec<i32>, Vec<Option<String>>) = ended.iter().cloned().unzip();
    let deadline = Instant::now() + wait;
    loop {
        let left: Vec<i32> = client
            .query(
                "SELECT a.pid FROM pg_stat_activity a \
                 JOIN unnest($1::int4[], $2::text[]) AS t(pid, started) \
                   ON a.pid = t.pid AND a.backend_start::text IS NOT DISTINCT FROM t.started",
                &[&pids, &starts],
            )
            .await
            .map_err(classify)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if left.is_empty() {
            return Ok(ended.len());
        }
        if Instant::now() >= deadline {
            return Err(PgStoreError::StaleSessionsLinger {
                host_id: host_id.to_owned(),
                pids: left,
                waited_ms: wait.as_millis() as u64,
            });
        }
        tokio::time::sleep(GONE_POLL).await;
    }
}
