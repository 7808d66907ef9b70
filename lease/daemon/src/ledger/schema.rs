//! The ledger's tables, and the columns an older ledger gains when it is opened.

use rusqlite::Connection;

use super::LedgerError;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY,
    token_hash BLOB NOT NULL,
    vcpus INTEGER NOT NULL,
    mem_mib INTEGER NOT NULL,
    image TEXT NOT NULL,
    cmdline TEXT NOT NULL,
    state TEXT NOT NULL,
    stop_reason TEXT,
    balance_msat INTEGER NOT NULL CHECK (balance_msat >= 0),
    carry_units INTEGER NOT NULL DEFAULT 0,
    used_vcpu_us INTEGER NOT NULL DEFAULT 0,
    used_mem_mib_us INTEGER NOT NULL DEFAULT 0,
    last_vcpu_total_us INTEGER NOT NULL DEFAULT 0,
    last_uptime_us INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    control_path TEXT NOT NULL,
    console_path TEXT NOT NULL,
    paused_at INTEGER,
    refunded_msat INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    boot_json TEXT,
    debited_msat INTEGER NOT NULL DEFAULT 0,
    residual_msat INTEGER,
    vmm_start_ticks INTEGER,
    vmm_gone INTEGER NOT NULL DEFAULT 0,
    metered_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS leases_state ON leases(state);
CREATE TABLE IF NOT EXISTS payments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    reference TEXT NOT NULL,
    amount_msat INTEGER NOT NULL,
    lease_id TEXT NOT NULL REFERENCES leases(id),
    -- 1: the payment came after it was due: mined after its quote expired (kind
    -- onchain_late), or paid to a lease already stopped.
    late INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    payment_digest BLOB,
    resumed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS lease_quotes (
    id TEXT PRIMARY KEY,
    purpose TEXT NOT NULL,
    address TEXT NOT NULL,
    derivation_index INTEGER NOT NULL,
    amount_msat INTEGER NOT NULL,
    vcpus INTEGER NOT NULL,
    mem_mib INTEGER NOT NULL,
    seconds INTEGER NOT NULL,
    image TEXT,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// Columns added after the first schema; an older ledger gets them on open.
pub(super) fn add_missing_columns(conn: &Connection) -> Result<(), LedgerError> {
    let have: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('leases')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for (name, decl) in [
        ("debited_msat", "INTEGER NOT NULL DEFAULT 0"),
        ("residual_msat", "INTEGER"),
        ("payment_digest", "BLOB"),
        ("recovery_hash", "BLOB"),
        ("token_seq", "INTEGER NOT NULL DEFAULT 1"),
        ("refund_outputs_digest", "BLOB"),
        // The VMM's start time (with `pid`, its identity across restarts) and whether it is
        // known to be gone: see `lifecycle.rs`. Older rows have no start time and are
        // never signalled on the strength of their pid alone.
        ("vmm_start_ticks", "INTEGER"),
        ("vmm_gone", "INTEGER NOT NULL DEFAULT 0"),
        // Since when an on-chain payment of the lease is off the best chain (balance frozen:
        // no metering, no refund); NULL when none is. See `reorg.rs`.
        ("reorg_at", "INTEGER"),
        // What a booting lease's boot figures were when its VMM was spawned (see
        // `crate::boot_record`): a restart completes them from the VMM's log.
        ("spawn_json", "TEXT"),
        // When the lease last began running on its balance (its boot, or a top-up that
        // resumed it from `paused_unfunded`): its grace is at most the run since (`tick.rs`).
        // Older rows have none and keep the whole `--grace-s`.
        ("funded_at", "INTEGER"),
        // When the lease's usage marks were last set (unix ms): written by metering, never
        // by a tenant's request (see `LeaseRow::metered_at_ms`). Filled below for older rows.
        ("metered_at_ms", "INTEGER"),
    ] {
        if !have.iter().any(|h| h == name) {
            conn.execute_batch(&format!("ALTER TABLE leases ADD COLUMN {name} {decl}"))?;
        }
    }
    if !have.iter().any(|h| h == "metered_at_ms") {
        // Older rows: the nearest the ledger knew, their last update (a tick's, for a
        // metered lease). Once, here: from now on only metering moves it.
        conn.execute_batch(
            "UPDATE leases SET metered_at_ms = updated_at * 1000 WHERE metered_at_ms IS NULL",
        )?;
    }
    // After the columns: an older ledger only now has payment_digest. Older leases have
    // none (NULL) and cannot be recovered. Not UNIQUE: the spent set already makes a digest
    // occur once, and its claim must be what refuses a reuse (same 409 as ever).
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS leases_payment_digest ON leases(payment_digest)",
    )?;
    // What every metering tick asks for (`Ledger::stopped_with_vmm`): normally empty, so
    // indexed apart from the stopped leases that pile up.
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS leases_vmm_unsettled ON leases(state)
         WHERE vmm_gone = 0 AND vmm_start_ticks IS NOT NULL",
    )?;
    // A payment's digest and whether it resumed its lease, so that a top-up retried after a
    // lost reply is known (`payments.rs`). Older payments have none (NULL): a retry of their
    // top-up meets the 409 it always met.
    let have: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('payments')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for (name, decl) in [
        // The block an on-chain payment was in, and whether it is settled (deep enough
        // that a reorg no longer worries the host): see `reorg.rs`.
        ("block_hash", "TEXT"),
        ("settled", "INTEGER NOT NULL DEFAULT 0"),
        ("payment_digest", "BLOB"),
        ("resumed", "INTEGER NOT NULL DEFAULT 0"),
        // The quote an on-chain payment paid (`Credit::quote_id`); NULL for credit and for
        // payments taken before it was kept (their retries are known by digest only).
        ("quote_id", "TEXT"),
    ] {
        if !have.iter().any(|h| h == name) {
            conn.execute_batch(&format!("ALTER TABLE payments ADD COLUMN {name} {decl}"))?;
        }
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS payments_payment_digest ON payments(payment_digest)",
    )?;
    // A retry of a payment named by quote id looks its earlier payments up by quote.
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS payments_quote_id ON payments(quote_id)
         WHERE quote_id IS NOT NULL",
    )?;
    // What every metering tick asks for (`Ledger::unsettled_payments`): the few on-chain
    // payments not yet settled, among every payment ever taken.
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS payments_unsettled ON payments(lease_id)
         WHERE block_hash IS NOT NULL AND settled = 0",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ledger::test_support::{credit, new_lease};
    use crate::ledger::Ledger;
    use rusqlite::Connection;

    #[test]
    fn an_older_ledger_gains_the_new_columns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.db");
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch(
                "CREATE TABLE leases (id TEXT PRIMARY KEY, token_hash BLOB NOT NULL,
                 vcpus INTEGER NOT NULL, mem_mib INTEGER NOT NULL, image TEXT NOT NULL,
                 cmdline TEXT NOT NULL, state TEXT NOT NULL, stop_reason TEXT,
                 balance_msat INTEGER NOT NULL, carry_units INTEGER NOT NULL DEFAULT 0,
                 used_vcpu_us INTEGER NOT NULL DEFAULT 0, used_mem_mib_us INTEGER NOT NULL DEFAULT 0,
                 last_vcpu_total_us INTEGER NOT NULL DEFAULT 0, last_uptime_us INTEGER NOT NULL DEFAULT 0,
                 pid INTEGER, control_path TEXT NOT NULL, console_path TEXT NOT NULL,
                 paused_at INTEGER, refunded_msat INTEGER, created_at INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL, boot_json TEXT)",
            )
            .expect("old schema");
        }
        let l = Ledger::open(&path).expect("reopen with migration");
        l.create_lease(&new_lease("a"), &credit(1, 1500))
            .expect("create");
        let r = l.refund("a", Ok::<u64, ()>).expect("ledger").expect("sign");
        assert_eq!((r.refund_msat, r.residual_msat), (1000, 500));
        let row = l.get("a").expect("get").expect("row");
        assert_eq!((row.vmm_start_ticks, row.vmm_gone), (None, false));
    }

    /// A row from before `metered_at_ms` gets its last update as the time its usage marks
    /// were set, once: a later open leaves what metering wrote since.
    #[test]
    fn an_older_row_is_metered_from_its_last_update() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.db");
        {
            let l = Ledger::open(&path).expect("open");
            l.create_lease(&new_lease("a"), &credit(1, 1500))
                .expect("create");
            l.with_conn(|c| {
                c.execute_batch(
                    "ALTER TABLE leases DROP COLUMN metered_at_ms;
                     UPDATE leases SET updated_at = 1000",
                )?;
                Ok(())
            })
            .expect("as an older ledger had it");
        }
        let l = Ledger::open(&path).expect("reopen with migration");
        let row = l.get("a").expect("get").expect("row");
        assert_eq!(row.metered_at_ms, Some(1_000_000));
        l.with_conn(|c| {
            c.execute_batch("UPDATE leases SET metered_at_ms = 2000000, updated_at = 3000")?;
            Ok(())
        })
        .expect("metered since");
        drop(l);
        let l = Ledger::open(&path).expect("reopen");
        let row = l.get("a").expect("get").expect("row");
        assert_eq!(row.metered_at_ms, Some(2_000_000), "filled once only");
    }
}
