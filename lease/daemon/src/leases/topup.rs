//! Topping up a lease: a new payment adds to its balance in one ledger transaction, and a
//! lease paused for lack of funds runs again. The same payment for the same lease again (a
//! retry after a lost reply) is answered with the lease, crediting nothing twice. A lease
//! frozen by a reorg takes no payment; its own payment proven again goes to [`super::reproof`].

use coinop_proto::replies::TopupResponse;
use coinop_proto::requests::{PaymentBody, TopupRequest};
use coinop_proto::LeaseState;
use vmm_protocol::Request;

use super::create::{count_refused_claim, metric_kind};
use super::payment_intake::verify_payment;
use super::{blocking, LeaseError};
use crate::app::Shared;
use crate::ledger::{LeaseRow, TopupOutcome};

/// `POST /v1/leases/{id}/topup` for the lease `l` (already authenticated).
pub async fn topup(
    s: &Shared,
    l: LeaseRow,
    req: TopupRequest,
) -> Result<TopupResponse, LeaseError> {
    if l.refunded_msat.is_some() {
        return Err(LeaseError::RefundedTakesNoPayment(l.id));
    }
    // A lease frozen by a reorg takes no payment, but its own payment proven again in a
    // best-chain block is how a host without peers learns it was mined again.
    if let PaymentBody::Onchain(o) = &req.payment {
        if let Some(reply) = super::reproof::reproof(s, &l, o).await? {
            return Ok(reply);
        }
    }
    let credit = match verify_payment(s, req.payment, Some(&l.id)).await {
        // Paid by quote id, and every output to the quote deep enough now is this lease's
        // already: a retry of a top-up from this quote (whose reply was lost) is answered
        // as that top-up; else the quote only paid for the lease's create, a reuse (409).
        Err(LeaseError::QuoteCounted {
            quote_id,
            lease_id,
            shallow,
        }) => {
            let id = l.id.clone();
            let qid = quote_id.clone();
            let s2 = s.clone();
            let earlier = blocking(move || Ok(s2.ledger.quote_topup(&id, &qid)?)).await?;
            let Some((resumed, late)) = earlier else {
                // No top-up to repeat: an output still too shallow says to wait (402).
                if let Some(wait) = shallow {
                    return Err((*wait).into());
                }
                s.metrics.payment_already_spent("onchain");
                return Err(LeaseError::QuoteCounted {
                    quote_id,
                    lease_id,
                    shallow: None,
                });
            };
            let balance_msat = s
                .ledger
                .get(&l.id)?
                .ok_or(LeaseError::NoLease)?
                .balance_msat;
            let out = TopupOutcome {
                balance_msat,
                resumed,
                repeated: true,
            };
            return answer(s, &l, "onchain", out, late).await;
        }
        other => other?,
    };
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
    answer(s, &l, kind, out, late).await
}

/// The reply to a top-up of lease `l` that committed (`out`), or to its retry.
async fn answer(
    s: &Shared,
    l: &LeaseRow,
    kind: &'static str,
    out: TopupOutcome,
    late: bool,
) -> Result<TopupResponse, LeaseError> {
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
