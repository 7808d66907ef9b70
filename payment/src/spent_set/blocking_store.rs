//! [`SpentKeyStore`] for every synchronous [`SpentSet`] held in an `Arc` (the SQLite set and
//! its group-commit wrapper): each call runs on tokio's blocking pool
//! (`tokio::task::spawn_blocking`).
//!
//! Why the blocking pool: a SQLite claim waits for its fsync, a group-commit claim for its
//! whole batch's fsync, and both for the set's lock; on a tokio worker thread that wait
//! would stall every other task on the thread. The blocking pool is made for such calls.
//! The call owns its inputs (the keys are copied, the set's `Arc` cloned) because a
//! blocking task may outlive the future that started it: a caller that drops the future
//! does not cancel the claim, which then completes or fails as a whole like any SQLite
//! transaction. These futures must be polled inside a tokio runtime.
//!
//! Claims and settles of no keys are refused here ([`SpentKeyStoreError::NoKeys`]), as the
//! PostgreSQL set refuses them, where the synchronous trait accepts them as no-ops.
//!
//! Inside, the calls name `SpentSet::…(&*set, …)` explicitly: `set.claim(…)` on the `Arc`
//! would find this very async impl first.

use std::future::Future;
use std::sync::Arc;

use super::key_store::{SpentKeyStore, SpentKeyStoreError};
use super::{SpendKey, SpendState, SpentSet, SpentSetError};

/// Runs `call` on the blocking pool and maps its error to the trait's.
async fn on_blocking_pool<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, SpentSetError> + Send + 'static,
) -> Result<T, SpentKeyStoreError> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(SpentKeyStoreError::from),
        // A panic in the set is a bug, not an answer: let it surface as the panic it is.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down and never started the call: nothing was written.
        Err(e) => Err(SpentKeyStoreError::Unavailable(format!(
            "the blocking call was not run: {e}"
        ))),
    }
}

impl<S: SpentSet + ?Sized + 'static> SpentKeyStore for Arc<S> {
    fn claim(
        &self,
        keys: &[SpendKey],
        state: SpendState,
        operation: &str,
    ) -> impl Future<Output = Result<(), SpentKeyStoreError>> + Send {
        let (set, keys, operation) = (Arc::clone(self), keys.to_vec(), operation.to_owned());
        async move {
            if keys.is_empty() {
                return Err(SpentKeyStoreError::NoKeys);
            }
            on_blocking_pool(move || SpentSet::claim(&*set, &keys, state, &operation)).await
        }
    }

    fn claim_with_receipt(
        &self,
        keys: &[SpendKey],
        operation: &str,
        receipt: &[u8; 32],
    ) -> impl Future<Output = Result<(), SpentKeyStoreError>> + Send {
        let (set, keys, operation, receipt) = (
            Arc::clone(self),
            keys.to_vec(),
            operation.to_owned(),
            *receipt,
        );
        async move {
            if keys.is_empty() {
                return Err(SpentKeyStoreError::NoKeys);
            }
            on_blocking_pool(move || {
                SpentSet::claim_with_receipt(&*set, &keys, &operation, &receipt, &[])
            })
            .await
        }
    }

    fn spent_with(
        &self,
        keys: &[SpendKey],
        receipt: &[u8; 32],
    ) -> impl Future<Output = Result<bool, SpentKeyStoreError>> + Send {
        let (set, keys, receipt) = (Arc::clone(self), keys.to_vec(), *receipt);
        on_blocking_pool(move || SpentSet::spent_with(&*set, &keys, &receipt))
    }

    fn commit_pending(
        &self,
        keys: &[SpendKey],
    ) -> impl Future<Output = Result<(), SpentKeyStoreError>> + Send {
        let (set, keys) = (Arc::clone(self), keys.to_vec());
        async move {
            if keys.is_empty() {
                return Err(SpentKeyStoreError::NoKeys);
            }
            on_blocking_pool(move || SpentSet::commit_pending(&*set, &keys)).await
        }
    }

    fn release_pending(
        &self,
        keys: &[SpendKey],
    ) -> impl Future<Output = Result<(), SpentKeyStoreError>> + Send {
        let (set, keys) = (Arc::clone(self), keys.to_vec());
        async move {
            if keys.is_empty() {
                return Err(SpentKeyStoreError::NoKeys);
            }
            on_blocking_pool(move || SpentSet::release_pending(&*set, &keys)).await
        }
    }

    fn states(
        &self,
        keys: &[SpendKey],
    ) -> impl Future<Output = Result<Vec<Option<SpendState>>, SpentKeyStoreError>> + Send {
        let (set, keys) = (Arc::clone(self), keys.to_vec());
        on_blocking_pool(move || SpentSet::states(&*set, &keys))
    }
}
