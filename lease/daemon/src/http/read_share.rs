//! The unauthenticated routes that read the fleet store (NUT-07 check state, NUT-09
//! restore, `GET /v1/quotes/{id}`, `GET /v1/mint/quote/onchain/{quote}`) run their reads
//! within this host's public read share ([`crate::fleet::Fleet::public_read`]): anyone may
//! send any number of them, and without a bound they could hold every pooled connection
//! of the store and leave money requests (swaps, mints, creates, refunds) none. So do the
//! routes that take a payment or a mint naming a quote by id, for their first lookup of
//! that quote, which anyone can make with any id before anything else is checked:
//! `POST /v1/mint/quote/onchain/{quote}/payment` and `POST /v1/mint/onchain` (both bodies)
//! here, and a create's or a top-up's on-chain payment in
//! [`crate::leases::payment_intake`], which takes its place from the fleet directly. The
//! work that follows a quote found is money work and runs outside the share. Beyond the
//! share a read is answered 503 `store_busy` with Retry-After (in NUT-00's shape on the
//! Cashu routes) after a short wait, rather than waiting for a connection, and counted
//! (`coinop_fleet_store_reads_busy_total`). Without a fleet store the work just runs.

use std::future::Future;

use crate::app::Shared;
use crate::http::error::{fleet_error, ApiError};

/// Runs `work`, which reads the fleet store one call at a time, holding a place in the
/// public read share, or answers [`crate::fleet::FleetError::ReadsBusy`] as the route's
/// error.
pub(super) async fn within_read_share<T, E>(
    s: &Shared,
    work: impl Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<ApiError> + Send + 'static,
{
    let Some(fleet) = &s.fleet else {
        return work.await;
    };
    let place = fleet
        .public_read()
        .await
        .map_err(|e| E::from(fleet_error(e)))?;
    // A task of its own, holding the place: a client that goes away drops this handler,
    // and with it a store call whose statement the server still runs on its connection;
    // the place must stay taken as long as that connection does.
    tokio::spawn(async move {
        let _place = place;
        work.await
    })
    .await
    .map_err(|e| E::from(ApiError::internal(format!("worker: {e}"))))?
}
