//! The store's errors, one variant per cause. [`PgStoreError::Unavailable`] is kept apart
//! from every answer the database gave about the data (a key taken, a key not pending), so
//! that coinopd can fail closed (503 `store_unavailable`) without ever mistaking an outage
//! for "already spent" or the reverse.

use payment::spent_set::{KeyKind, SpendState};
use thiserror::Error;
use tokio_postgres::error::SqlState;

#[derive(Debug, Error)]
pub enum PgStoreError {
    /// Nothing was claimed because this key was already taken.
    #[error("{kind:?} {key_hex} is already {state:?}")]
    AlreadyClaimed {
        kind: KeyKind,
        key_hex: String,
        state: SpendState,
    },
    /// The same key appears twice in one request.
    #[error("{kind:?} {key_hex} appears more than once in one claim")]
    DuplicateKey { kind: KeyKind, key_hex: String },
    /// A settle named a key that is not pending under this host.
    #[error("{kind:?} {key_hex} is not pending under this host")]
    NotPending { kind: KeyKind, key_hex: String },
    /// A commit ([`crate::PgSpentSet::commit_pending`]) found these keys held by another
    /// operation (of this host or another), and left them so; its other keys were
    /// recorded spent for it.
    #[error("keys held by another operation: {}", held_list(.0))]
    HeldElsewhere(Vec<crate::HeldKey>),
    /// A claim or settle of no keys at all: a caller bug, refused rather than a no-op.
    #[error("a spent-set request must name at least one key")]
    NoKeys,
    /// The database cannot be reached or did not answer in time (connection refused or
    /// lost, connect/statement/operation timeout, pool exhausted, server shutting down).
    /// Whether a write that met this error took effect is unknown: retry the same request
    /// (a pending claim by the same host and operation is idempotent; a receipt claim is
    /// recognised with `spent_with`).
    #[error("PostgreSQL store unavailable: {0}")]
    Unavailable(String),
    /// The database holds a schema newer than this build knows: refuse to touch it.
    #[error(
        "the PostgreSQL store has schema version {found}, newer than this coinop's {supported}: \
         upgrade coinop on this host before starting it against this database"
    )]
    SchemaTooNew { found: i32, supported: i32 },
    /// Applying schema migration `version` failed.
    #[error("applying store schema migration {version} ({name}): {source}")]
    Migration {
        version: i32,
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The connection string or options are not usable.
    #[error("PostgreSQL store configuration: {0}")]
    Config(String),
    /// The database refused a statement for a reason other than an outage.
    #[error("PostgreSQL store: {0}")]
    Database(#[source] tokio_postgres::Error),
    /// The server refused a value sent to it (SQLSTATE class 22, data exception: a NUL or
    /// bytes not valid in the database's encoding in a text parameter, a number out of
    /// range). Values come from requests, so this is the request's fault; the statement,
    /// and its transaction, took no effect.
    #[error("PostgreSQL store refused a value: {0}")]
    InvalidInput(#[source] tokio_postgres::Error),
    /// Nothing was reserved because this blinded message (`B_`) was signed before, or is
    /// reserved by another operation (NUT-00 11003).
    #[error("output {b_hex} was already signed")]
    OutputAlreadySigned { b_hex: String },
    /// This host's mint seed derives another keyset id than the fleet has at a derivation
    /// index: it holds another seed than the fleet's and must not sign nor redeem.
    #[error(
        "this host's mint seed derives keyset {derived_id} at derivation index \
         {derivation_index}, but the fleet store has keyset {fleet_id} there: give this host \
         the fleet's mint seed file"
    )]
    KeysetMismatch {
        derivation_index: u32,
        fleet_id: String,
        derived_id: String,
    },
    /// A caller asked to add an active keyset beside the fleet's list: only a rotation
    /// makes one active (the fleet has exactly one per unit).
    #[error("a keyset added to the fleet's list must not be active")]
    ActiveKeysetAdded,
    /// The keyset list changed under a rotation (another host rotated first).
    #[error("the fleet's keysets changed meanwhile: {0}")]
    KeysetsChanged(String),
    /// Another live session holds this host id's lock in the store: another coinopd runs
    /// with the same host id (see the `host_lock` module).
    #[error(
        "another coinopd holds host id {host_id:?} in the fleet store (a live session of \
         the database holds the id's lock): two hosts must never share a host id; give \
         this host its own --host-id, or stop the other coinopd"
    )]
    HostIdHeld { host_id: String },
    /// Sessions of this host id that an earlier, dead process left on the server (see the
    /// `stale_sessions` module) run as roles this store's role may not signal: until they
    /// are ended, a statement of theirs could still commit after this process reconciled,
    /// so nothing is done under the id.
    #[error(
        "sessions of host id {host_id:?} left by an earlier coinopd are still open on the          fleet store ({}) and this store role may not end them: connect every run of a host          as one role, or grant this role pg_signal_backend (a superuser's session only a          superuser may end), or end them by hand (SELECT pg_terminate_backend(pid))",
        stale_list(.sessions)
    )]
    StaleSessionsNotEnded {
        host_id: String,
        sessions: Vec<crate::StaleSession>,
    },
    /// Sessions of this host id that an earlier, dead process left were terminated and
    /// had not gone after `waited_ms` (still rolling back, or a server that does not
    /// answer the signal): nothing is done under the id until they have.
    #[error(
        "sessions of host id {host_id:?} left by an earlier coinopd (pids {pids:?}) were          terminated and were still there {waited_ms} ms later"
    )]
    StaleSessionsLinger {
        host_id: String,
        pids: Vec<i32>,
        waited_ms: u64,
    },
    /// A row holds a value this build cannot read.
    #[error("PostgreSQL store holds {0}")]
    Corrupt(String),
}

/// Each held key and its holder, for [`PgStoreError::HeldElsewhere`]'s message.
fn held_list(held: &[crate::HeldKey]) -> String {
    held.iter()
        .map(|h| {
            format!(
                "{:?} {} ({:?} by {} for {})",
                h.key.kind,
                hex::encode(&h.key.bytes),
                h.state,
                h.host_id,
                h.operation_id
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each stale session's pid and role, for [`PgStoreError::StaleSessionsNotEnded`].
fn stale_list(sessions: &[crate::StaleSession]) -> String {
    sessions
        .iter()
        .map(|s| format!("pid {} as role {}", s.pid, s.role))
        .collect::<Vec<_>>()
        .join(", ")
}

impl PgStoreError {
    /// Whether this is an outage (fail closed, retry later) rather than an answer.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, PgStoreError::Unavailable(_))
    }
}

/// What a server error code says about the statement that met it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CodeClass {
    /// The server cannot serve now, or gave up on this attempt; the same request may
    /// succeed later: connection exceptions (08), resource exhaustion such as too many
    /// connections (53), operator intervention incl. statement timeout and shutdown (57; a
    /// server still starting up or in recovery is 57P03), and a transaction rolled back
    /// because it met another one (40001 serialization failure, 40P01 deadlock: the
    /// server aborted it, so nothing of it took effect, and a retry normally passes).
    Outage,
    /// The request carried a value the server refuses (class 22, data exception).
    InvalidInput,
    /// Anything else: this statement is wrong for the data (a constraint, a bug).
    Other,
}

fn code_class(code: &SqlState) -> CodeClass {
    let c = code.code();
    if c.starts_with("08")
        || c.starts_with("53")
        || c.starts_with("57")
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
    {
        CodeClass::Outage
    } else if c.starts_with("22") {
        CodeClass::InvalidInput
    } else {
        CodeClass::Other
    }
}

/// Sorts a driver error into an outage, a refused value or a database answer.
pub(crate) fn classify(e: tokio_postgres::Error) -> PgStoreError {
    if e.is_closed() {
        return PgStoreError::Unavailable(e.to_string());
    }
    if let Some(code) = e.code() {
        return match code_class(code) {
            CodeClass::Outage => PgStoreError::Unavailable(e.to_string()),
            CodeClass::InvalidInput => PgStoreError::InvalidInput(e),
            CodeClass::Other => PgStoreError::Database(e),
        };
    }
    // No server answer: the socket failed (refused, reset) or the driver timed out.
    let io_failure =
        std::error::Error::source(&e).is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
    if io_failure || e.to_string().starts_with("timeout") {
        PgStoreError::Unavailable(e.to_string())
    } else {
        PgStoreError::Database(e)
    }
}

/// Sorts a pool error: every way of not getting a connection is an outage.
pub(crate) fn classify_pool(e: deadpool_postgres::PoolError) -> PgStoreError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => classify(e),
        PoolError::Timeout(kind) => {
            PgStoreError::Unavailable(format!("no connection from the pool in time ({kind:?})"))
        }
        PoolError::Closed => PgStoreError::Unavailable("the connection pool is closed".into()),
        PoolError::NoRuntimeSpecified => {
            PgStoreError::Config("the connection pool has no runtime for its timeouts".into())
        }
        PoolError::PostCreateHook(e) => PgStoreError::Unavailable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlocks_and_serialization_failures_are_outages_to_retry() {
        // The server rolled the transaction back: nothing took effect, and the callers'
        // handling of an outage (503 with Retry-After, a settle retried) is the right one.
        assert_eq!(
            code_class(&SqlState::T_R_DEADLOCK_DETECTED),
            CodeClass::Outage
        );
        assert_eq!(
            code_class(&SqlState::T_R_SERIALIZATION_FAILURE),
            CodeClass::Outage
        );
        for outage in [
            SqlState::CONNECTION_FAILURE,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::QUERY_CANCELED,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
        ] {
            assert_eq!(code_class(&outage), CodeClass::Outage, "{outage:?}");
        }
    }

    #[test]
    fn data_exceptions_are_the_requests_fault() {
        for refused in [
            SqlState::CHARACTER_NOT_IN_REPERTOIRE,
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
            SqlState::INVALID_TEXT_REPRESENTATION,
            SqlState::UNTRANSLATABLE_CHARACTER,
        ] {
            assert_eq!(code_class(&refused), CodeClass::InvalidInput, "{refused:?}");
        }
    }

    #[test]
    fn other_answers_stay_database_errors() {
        // Constraint violations are answers some callers read (a unique violation is a
        // repeat); the rest of class 40 is not a conflict to retry blindly.
        for other in [
            SqlState::UNIQUE_VIOLATION,
            SqlState::CHECK_VIOLATION,
            SqlState::UNDEFINED_TABLE,
            SqlState::T_R_INTEGRITY_CONSTRAINT_VIOLATION,
        ] {
            assert_eq!(code_class(&other), CodeClass::Other, "{other:?}");
        }
    }
}
