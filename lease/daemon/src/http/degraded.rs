//! What a degraded coinopd (its disk reserve released, see [`crate::disk_reserve`]) still
//! takes on the mint's and the quote book's routes. Their writes (a swap's or a mint's
//! spent inputs and receipt, a new quote) would go into the room kept for metering,
//! stops and refunds, which a local user could then use up by swapping notes back and
//! forth; so, like a create, they are refused with 507 until space returns. A request
//! whose payment or inputs are spent already is let through: its answer (409, or the
//! same signatures for a retry after a lost reply) is read, not written.

use payment::spent_set::SpendKey;

use crate::app::AppState;
use crate::http::error::ApiError;

/// `Ok` when a request that would spend `keys` may go on: coinopd is not degraded (or can
/// put its reserve back now), or a key is spent already. Blocking (may allocate the
/// reserve).
pub fn admit_spending(s: &AppState, keys: &[SpendKey]) -> Result<(), ApiError> {
    if !s.disk.degraded() || s.ledger.first_claimed(keys)?.is_some() {
        return Ok(());
    }
    admit(s)
}

/// `Ok` when a request that writes something new may go on: coinopd is not degraded, or
/// can put its reserve back now. Blocking (may allocate the reserve).
pub fn admit(s: &AppState) -> Result<(), ApiError> {
    if !s.disk.degraded() {
        return Ok(());
    }
    s.disk.admit().map_err(|d| {
        ApiError::insufficient_storage(format!(
            "the host's disk is nearly full ({} MiB free): no new swaps, mints or quotes \
             until space returns; nothing changed",
            d.free_mib
        ))
    })
}
