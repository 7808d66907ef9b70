//! Schema migrations: SQL files in this crate's `migrations/` dir, numbered, applied in
//! order at start-up inside one transaction that holds a transaction-scoped advisory lock,
//! so N hosts starting together apply each migration exactly once and none reads a half
//! migrated schema. A database already at a version newer than this build knows is refused
//! (an old coinop must not write rows whose meaning it does not know).

use tokio_postgres::Client;

use crate::error::{classify, PgStoreError};

/// One versioned schema change.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration this build knows, oldest first; versions are 1, 2, 3... with no gaps.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "spent_keys",
        sql: include_str!("../migrations/0001_spent_keys.sql"),
    },
    Migration {
        version: 2,
        name: "mint_keysets",
        sql: include_str!("../migrations/0002_mint_keysets.sql"),
    },
    Migration {
        version: 3,
        name: "quotes",
        sql: include_str!("../migrations/0003_quotes.sql"),
    },
    Migration {
        version: 4,
        name: "nut30_quotes",
        sql: include_str!("../migrations/0004_nut30_quotes.sql"),
    },
    Migration {
        version: 5,
        name: "settle_by_operation",
        sql: include_str!("../migrations/0005_settle_by_operation.sql"),
    },
    Migration {
        version: 6,
        name: "quote_key_ids",
        sql: include_str!("../migrations/0006_quote_key_ids.sql"),
    },
];

/// The schema version this build writes.
pub fn supported_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The advisory lock key that serialises migrations across hosts ("coinopsc" in ASCII).
const MIGRATION_LOCK: i64 = 0x636f_696e_6f70_7363;

/// Brings the schema up to [`supported_version`], or refuses a newer one. Returns the
/// versions applied by this call (empty when the schema was current).
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, PgStoreError> {
    let tx = client.transaction().await.map_err(classify)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(classify)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS coinop_schema_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(classify)?;
    let current: Option<i32> = tx
        .query_one("SELECT max(version) FROM coinop_schema_migrations", &[])
        .await
        .map_err(classify)?
        .get(0);
    let current = current.unwrap_or(0);
    let supported = supported_version();
    if current > supported {
        return Err(PgStoreError::SchemaTooNew {
            found: current,
            supported,
        });
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        let failed = |source| PgStoreError::Migration {
            version: m.version,
            name: m.name,
            source,
        };
        tx.batch_execute(m.sql).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO coinop_schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(failed)?;
        applied.push(m.version);
    }
    tx.commit().await.map_err(classify)?;
    if !applied.is_empty() {
        tracing::info!(?applied, "PostgreSQL store schema migrated");
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_one_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "migration {}", m.name);
            assert!(!m.sql.trim().is_empty(), "migration {} is empty", m.name);
        }
    }
}
