//! Topping up a lease: a new payment adds to its balance in one ledger transaction, and a
//! lease paused for lack of funds runs again. The same payment for the same lease again (a
//! retry after a lost reply) is answered with the lease, crediting nothing twice.

use coinop_proto::replies::TopupResponse;
use coinop_proto::requests::TopupRequest;
use coinop_proto::LeaseState;
use vmm_protocol::Request;

use super::create::{count_refused_claim, metric_kind};
use super::payment_intake::verify_payment;
use super::{blocking, LeaseError};
use crate::app::Shared;
use crate::ledger::LeaseRow;

/// `POST /v1/leases/{id}/topup` for the lease `l` (already authenticated).
pub async fn topup(
    s: &Shared,
    l: LeaseRow,
    req: TopupRequest,
) -> Result<TopupResponse, LeaseError> {
    if l.refunded_msat.is_some() {
        return Err(LeaseError::RefundedTakesNoPayment(l.id));
    }
    let credit = verify_payment(s, req.payment).await?;
    let kind = metric_kind(&credit);
    // With a fleet store the payment is fenced there first (see crate::fleet); the
    // operation names the lease and the payment, so a retried top-up is known again.
    let fence = match &s.fleet {
        Some(fleet) => {
            let operation = format!(
                "topup {} {}",
                l.id,
                hex::encode(crate::ledger::recovery::payment_digest(&credit.keys))
            );
            let fence = fleet.fence(&credit.keys, "topup", &operation).await?;
            Some((fleet.clone(), fence))
        }
        None => None,
    };
    let s2 = s.clone();
    let id = l.id.clone();
    let late = credit.is_late();
    let out = blocking(move || {
        s2.ledger.topup(&id, &credit).map_err(|e| {
            count_refused_claim(&s2, kind, &e);
            LeaseError::from_claim(e)
        })
    })
    .await;
    if let Some((fleet, fence)) = fence {
        fleet.settle(fence, &s.ledger).await;
    }
    let out = out?;
    crate::fault::hit(crate::fault::point::TOPUP_COMMITTED);
    // A repeat tells the guest again what its lost request did (the resume may have been lost
    // with the reply; resuming a running guest changes nothing), while the lease still runs.
    let resume = if out.repeated {
        s.metrics.payment_recovered(kind);
        tracing::info!(lease = %l.id, "top-up answered again");
        out.resumed
            && s.ledger
                .get(&l.id)?
                .is_some_and(|n| n.state == LeaseState::Running)
    } else {
        out.resumed
    };
    if resume {
        s.supervisor
            .isolation()
            .hold_paused(&l.id, l.vcpus, l.mem_mib, false);
        if let Err(e) =
            vmm_protocol::client::set_state(std::path::Path::new(&l.control_path), Request::Resume)
                .await
        {
            tracing::warn!(lease = %l.id, error = %e, "resume after top-up failed");
        }
    }
    let now = s.ledger.get(&l.id)?.ok_or(LeaseError::NoLease)?;
    Ok(TopupResponse {
        lease: super::view(s, &now),
        resumed: out.resumed,
        late,
    })
}
