//! Stopping a lease: the tenant's stop (its balance refunded as blind-signed change onto
//! the outputs it brings, or kept for a later stop with outputs), and carrying out a guest
//! stop off the request path for every flow that ends a lease. A stop with outputs whose
//! reply was lost is answered again, the same, when retried with the same outputs.

use coinop_proto::replies::StopResponse;
use coinop_proto::requests::StopRequest;
use coinop_proto::{LeaseState, Msat, StopReason};
use payment::credit::nut_types::{BlindSignature, BlindedMessage};
use payment::credit::{signed_records, CreditError, Mint};

use super::{blocking, LeaseError};
use crate::app::{AppState, Shared};
use crate::ledger::{LeaseRow, Refund};

/// `POST /v1/leases/{id}/stop` for the lease `l` (already authenticated). A refunded
/// lease answers a stop with the very outputs its refund was signed onto with the same
/// answer again (the reply may have been lost), and any other stop with 409.
pub async fn stop(s: &Shared, l: LeaseRow, req: StopRequest) -> Result<StopResponse, LeaseError> {
    if l.refunded_msat.is_some() && req.outputs.is_none() {
        return Err(LeaseError::AlreadyRefunded(l.id));
    }
    let was_live = l.state.is_live();
    let s2 = s.clone();
    let id = l.id.clone();
    let body = blocking(move || {
        let body = match req.outputs {
            Some(outs) => {
                let r = refund_with(&s2, &id, &outs)?;
                StopResponse {
                    state: LeaseState::Stopped,
                    refund_msat: Msat::from_msat(r.refund_msat),
                    refund_sat: r.refund_msat / 1000,
                    residual_msat: Msat::from_msat(r.residual_msat),
                    change_outputs_needed: Mint::change_outputs_needed(r.refund_msat),
                    signatures: Some(r.signed),
                    refund: None,
                }
            }
            None => {
                s2.ledger.mark_stopped(&id, StopReason::Tenant, None)?;
                let bal = Msat::from_msat(s2.ledger.get(&id)?.map(|l| l.balance_msat).unwrap_or(0));
                let change = bal.split_change();
                StopResponse {
                    state: LeaseState::Stopped,
                    refund_msat: change.whole,
                    refund_sat: bal.sat_floor(),
                    residual_msat: change.residual,
                    change_outputs_needed: Mint::change_outputs_needed(bal.msat()),
                    signatures: None,
                    refund: Some("kept: POST again with that many outputs to collect it".into()),
                }
            }
        };
        Ok(body)
    })
    .await?;
    crate::fault::hit(crate::fault::point::STOP_COMMITTED);
    if was_live {
        crate::guest_stop::stop_guest(s, &l);
    }
    Ok(body)
}

/// Refunds a lease's balance onto `outputs` (once, in one ledger transaction that also
/// records which outputs); the sub-sat remainder stays with the host as the lease's recorded
/// residual. A lease refunded before onto these very outputs gets the same signatures again
/// (`repeated`: the same notes, no new money); onto other outputs, `AlreadyRefunded`.
pub(super) fn refund_with(
    s: &AppState,
    id: &str,
    outputs: &[BlindedMessage],
) -> Result<Refund<Vec<BlindSignature>>, LeaseError> {
    let r = s
        .ledger
        .refund_onto(id, outputs, |msat, outs| {
            let signed = s.mint.change(msat, outs)?;
            let records = signed_records(outs, &signed)?;
            Ok::<_, CreditError>((signed, records))
        })
        .map_err(LeaseError::from_claim)??;
    if r.repeated {
        tracing::info!(
            lease = id,
            refund_msat = r.refund_msat,
            "refund answered again"
        );
    } else {
        s.metrics.refunded(r.refund_msat, r.residual_msat);
    }
    Ok(r)
}
