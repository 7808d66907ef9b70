//! The pid coinopd recorded for a lease's VMM, read straight from its ledger.

use std::path::Path;

/// The pid of lease `id`'s VMM in the ledger under `state_dir` (opened read-only, so a
/// running daemon keeps its database to itself).
pub fn lease_pid(state_dir: &Path, id: &str) -> i32 {
    let db = rusqlite::Connection::open_with_flags(
        state_dir.join("ledger.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open ledger read-only");
    db.query_row("SELECT pid FROM leases WHERE id = ?1", [id], |r| r.get(0))
        .expect("the lease's pid")
}
