//! [`SpentKeyStore`] for [`PgSpentSet`]: the fleet's spent set behind the trait the host's
//! SQLite sets implement too, so that code needing only the common operations is written
//! once (and the one conformance suite, `payment::spent_set::conformance`, checks both).
//! The trait's `operation` is the claim's operation id and its note; the claiming host is
//! the store's. [`PgStoreError`] maps onto [`SpentKeyStoreError`] keeping an outage
//! (`Unavailable`) apart from every answer about the data.

use payment::spent_set::{SpendKey, SpendState, SpentKeyStore, SpentKeyStoreError};

use crate::error::PgStoreError;
use crate::spent_set::PgSpentSet;

impl From<PgStoreError> for SpentKeyStoreError {
    fn from(e: PgStoreError) -> Self {
        match e {
            PgStoreError::AlreadyClaimed {
                kind,
                key_hex,
                state,
            } => SpentKeyStoreError::AlreadyClaimed {
                kind,
                key_hex,
                state,
            },
            PgStoreError::DuplicateKey { kind, key_hex } => {
                SpentKeyStoreError::DuplicateKey { kind, key_hex }
            }
            PgStoreError::NotPending { kind, key_hex } => {
                SpentKeyStoreError::NotPending { kind, key_hex }
            }
            PgStoreError::NoKeys => SpentKeyStoreError::NoKeys,
            PgStoreError::Unavailable(message) => SpentKeyStoreError::Unavailable(message),
            // The rest are no answer of the spent set about keys (a refused statement, an
            // unreadable row, configuration, schema, keysets, outputs): the store failed.
            other @ (PgStoreError::SchemaTooNew { .. }
            | PgStoreError::Migration { .. }
            | PgStoreError::Config(_)
            | PgStoreError::Database(_)
            | PgStoreError::InvalidInput(_)
            | PgStoreError::HostIdHeld { .. }
            | PgStoreError::StaleSessionsNotEnded { .. }
            | PgStoreError::StaleSessionsLinger { .. }
            | PgStoreError::OutputAlreadySigned { .. }
            | PgStoreError::HeldElsewhere(_)
            | PgStoreError::KeysetMismatch { .. }
            | PgStoreError::ActiveKeysetAdded
            | PgStoreError::KeysetsChanged(_)
            | PgStoreError::Corrupt(_)) => SpentKeyStoreError::Storage(other.to_string()),
        }
    }
}

impl SpentKeyStore for PgSpentSet {
    async fn claim(
        &self,
        keys: &[SpendKey],
        state: SpendState,
        operation: &str,
    ) -> Result<(), SpentKeyStoreError> {
        Ok(PgSpentSet::claim(self, keys, state, operation, operation).await?)
    }

    async fn claim_with_receipt(
        &self,
        keys: &[SpendKey],
        operation: &str,
        receipt: &[u8; 32],
    ) -> Result<(), SpentKeyStoreError> {
        Ok(PgSpentSet::claim_with_receipt(self, keys, operation, operation, receipt).await?)
    }

    async fn spent_with(
        &self,
        keys: &[SpendKey],
        receipt: &[u8; 32],
    ) -> Result<bool, SpentKeyStoreError> {
        Ok(PgSpentSet::spent_with(self, keys, receipt).await?)
    }

    // The trait's settles name no operation: this host's pending claim, whatever its
    // operation (see `PgSpentSet::settle_any_operation`).
    async fn commit_pending(&self, keys: &[SpendKey]) -> Result<(), SpentKeyStoreError> {
        Ok(self
            .settle_any_operation(keys, Some(SpendState::Spent))
            .await?)
    }

    async fn release_pending(&self, keys: &[SpendKey]) -> Result<(), SpentKeyStoreError> {
        Ok(self.settle_any_operation(keys, None).await?)
    }

    async fn states(
        &self,
        keys: &[SpendKey],
    ) -> Result<Vec<Option<SpendState>>, SpentKeyStoreError> {
        Ok(PgSpentSet::states(self, keys).await?)
    }
}
