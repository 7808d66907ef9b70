//! Stopping a lease: the tenant's stop (its balance refunded as blind-signed change onto
//! the outputs it brings, or kept for a later stop with outputs), and carrying out a guest
//! stop off the request path for every flow that ends a lease. A stop with outputs whose
//! reply was lost is answered again, the same, when retried with the same outputs.

use coinop_proto::replies::StopResponse;
use coinop_proto::requests::StopRequest;
use coinop_proto::{LeaseState, Msat, StopReason};
use payment::credit::nut_types::{BlindSignature, BlindedMessage};
use payment::credit::{signed_records, CreditError, Mint};
use payment::spent_set::{SignedOutput, SpentSet};
use std::sync::Arc;

use super::{blocking, LeaseError};
use crate::app::{AppState, Shared};
use crate::fleet_mint::FleetMint;
use crate::ledger::recovery::outputs_digest;
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
    let row = l.clone();
    let body = blocking(move || {
        // A VMM gone silent is billed its unread stretch before the balance is refunded.
        crate::scheduler::bill_if_silent(&s2, &row);
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

/// A refund is credit (bearer money): like minting, it waits until every on-chain payment
/// of the lease is `--mint-min-conf` deep, so no reorg can take back what it paid out. The
/// tenant may stop without outputs meanwhile and collect the refund later. Returns the
/// blocks checked, for the refund's transaction to refuse a payment in any other (a
/// top-up that committed after this check).
pub(super) fn refund_deep_enough(s: &AppState, id: &str) -> Result<Vec<String>, LeaseError> {
    let need = s.config.mint_min_conf.max(s.config.min_conf);
    let blocks = s.ledger.unsettled_blocks_of(id)?;
    let chain = s.chain_read();
    for hash in &blocks {
        let have = hash
            .parse::<bitcoin::BlockHash>()
            .map_or(0, |h| chain.confirmations(&h));
        if have < need {
            return Err(LeaseError::StateConflict(format!(
                "lease {id}: an on-chain payment has {have} of the {need} confirmations a \
                 refund needs (--mint-min-conf); stop without outputs now and collect the \
                 refund later"
            )));
        }
    }
    Ok(blocks)
}

/// Refunds a lease's balance onto `outputs` (once, in one ledger transaction that also
/// records which outputs); the sub-sat remainder stays with the host as the lease's recorded
/// residual. A lease refunded before onto these very outputs gets the same signatures again
/// (`repeated`: the same notes, no new money); onto other outputs, `AlreadyRefunded`. On a
/// fleet the change's outputs are reserved in the fleet store first ([`refund_on_fleet`]).
pub(super) fn refund_with(
    s: &AppState,
    id: &str,
    outputs: &[BlindedMessage],
) -> Result<Refund<Vec<BlindSignature>>, LeaseError> {
    let checked = refund_deep_enough(s, id)?;
    let r = match &s.fleet_mint {
        Some(fleet_mint) => refund_on_fleet(s, fleet_mint, id, outputs, &checked)?,
        None => s
            .ledger
            .refund_onto_checked(id, outputs, Some(&checked), |msat, outs| {
                sign_change(s, msat, outs)
            })
            .map_err(LeaseError::from_claim)??,
    };
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

/// The mint's change for a refund of `msat` onto `outputs`, with the records to keep.
fn sign_change(
    s: &AppState,
    msat: u64,
    outputs: &[BlindedMessage],
) -> Result<(Vec<BlindSignature>, Vec<SignedOutput>), CreditError> {
    let signed = s.mint.change(msat, outputs)?;
    let records = signed_records(outputs, &signed)?;
    Ok((signed, records))
}

/// A fleet refund's ledger transaction found another balance than the one its reserved
/// change was signed for (a metering tick between the read and the transaction): sign and
/// reserve again.
struct BalanceMoved;

/// How many times a fleet refund signs again because the balance moved meanwhile.
const FLEET_REFUND_ATTEMPTS: usize = 5;

/// A refund on a fleet (`--store`), as a swap: the change is signed for the balance read
/// now and its outputs' `B_`s reserved in the fleet store under the refund (so no host
/// signs them for anything else: 11003 fleet-wide), then the ledger transaction refunds
/// the lease and records the signatures if the balance is still the one signed for, then
/// the reservation is settled by what the local spent set recorded: delivered (NUT-09
/// restore on any host finds them) or released. A crash between the reservation and the
/// settle is settled at the next start-up the same way ([`crate::fleet_mint`]). Runs on a
/// blocking-pool thread (it waits for the store there).
fn refund_on_fleet(
    s: &AppState,
    fleet_mint: &Arc<FleetMint>,
    id: &str,
    outputs: &[BlindedMessage],
    checked: &[String],
) -> Result<Refund<Vec<BlindSignature>>, LeaseError> {
    let store = tokio::runtime::Handle::current();
    let spent: Arc<dyn SpentSet> = s.spent.clone();
    for _ in 0..FLEET_REFUND_ATTEMPTS {
        let lease = s.ledger.get(id)?.ok_or(LeaseError::NoLease)?;
        if lease.refunded_msat.is_some() {
            // Refunded before: its change was reserved and settled then; the ledger
            // answers a repeat onto the same outputs as on one host.
            return s
                .ledger
                .refund_onto(id, outputs, |msat, outs| sign_change(s, msat, outs))
                .map_err(LeaseError::from_claim)?
                .map_err(LeaseError::from);
        }
        let msat = lease.balance_msat - lease.balance_msat % 1000;
        let signed = s.mint.change(msat, outputs)?;
        let used = &outputs[..signed.len()];
        let records = signed_records(used, &signed)?;
        let operation = format!("refund {id} {}", hex::encode(outputs_digest(used)));
        if !signed.is_empty() {
            if let Err(e) = store.block_on(fleet_mint.reserve(used, &signed, &operation)) {
                // Nothing was committed locally, so the settle releases the reservation,
                // one whose outcome is unknown included (its answer lost, or the insert
                // still waiting on another host's row when the call timed out): left as
                // it is, its `B_`s would stay pending fleet-wide (11003 on every host)
                // until this host restarts. As the swap's and mint's `settle_both` do.
                store.block_on(fleet_mint.settle(&spent, used, &operation));
                return Err(e.into());
            }
            crate::fault::hit(crate::fault::point::FLEET_OUTPUTS_RESERVED);
        }
        let refunded = s
            .ledger
            .refund_onto_checked(id, outputs, Some(checked), |m, _| {
                if m == msat {
                    Ok((signed.clone(), records.clone()))
                } else {
                    Err(BalanceMoved)
                }
            });
        if !signed.is_empty() {
            store.block_on(fleet_mint.settle(&spent, used, &operation));
        }
        if let Ok(r) = refunded.map_err(LeaseError::from_claim)? {
            return Ok(r);
        }
    }
    Err(LeaseError::StateConflict(format!(
        "lease {id}: its balance kept changing while its refund was signed; stop again"
    )))
}
