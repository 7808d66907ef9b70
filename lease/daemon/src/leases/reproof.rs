//! A payment mined again after a reorg, proven by its tenant. A lease whose on-chain
//! payment left the best chain is frozen (`paused_reorg`) until the payment's outputs are in
//! a best-chain block again ([`crate::payment_reorgs`]). A host with `--bitcoin-peer` sees
//! that itself, from the blocks it fetches; a host without peers gets headers only (from
//! its operator), so it would stop a lease whose payment was mined again, just in a block it
//! never looked into. The tenant can show it: the same transaction, sent as a top-up with
//! its proof in the new block, is filed in the payment watch as if the host had scanned
//! that block, and the next reorg check moves the payment there and thaws the lease.
//! Nothing is claimed or credited: the outputs are the lease's already.

use coinop_proto::replies::TopupResponse;
use payment::credit::nut_types::OnchainPayment;
use payment::onchain::{proven_outputs, PaymentError, SeenOutput};

use super::{blocking, LeaseError};
use crate::app::Shared;
use crate::ledger::LeaseRow;

/// If `l` is frozen by a reorg and `o` proves, in a block of the best chain, outpoints of
/// its frozen payments, files those outputs there and answers with the lease
/// (still frozen until the next reorg check). `None`: not such a proof (the lease is not
/// frozen, the payment is by quote id alone, or the transaction pays for none of the
/// lease's frozen payments): an ordinary top-up, which a frozen lease refuses.
pub async fn reproof(
    s: &Shared,
    l: &LeaseRow,
    o: &OnchainPayment,
) -> Result<Option<TopupResponse>, LeaseError> {
    if o.tx_hex.is_empty() || o.proof_hex.is_empty() {
        return Ok(None);
    }
    // Held until the answer is made: the reorg check does not stop this lease between the
    // filing and the answer (see AppState::reorg_gate).
    let _gate = s.reorg_gate.lock().await;
    let s2 = s.clone();
    let id = l.id.clone();
    let o = o.clone();
    let filed = blocking(move || {
        let frozen: Vec<_> = s2
            .ledger
            .unsettled_payments()?
            .into_iter()
            .filter(|p| p.lease_id == id && p.reorg_at.is_some())
            .collect();
        if frozen.is_empty() {
            return Ok(None);
        }
        let Some(quote) = s2.quotes.get(&o.quote_id)? else {
            return Ok(None);
        };
        let seen = proven_outputs(&s2.chain_read(), &quote, &o.tx_hex, &o.proof_hex)?;
        // The outpoints of the lease's frozen payments, any the proof shows among them: a
        // payment by quote id may have outputs in several transactions, each proven on its
        // own, and the reorg check thaws the lease only once every one of them is in a
        // best-chain block again.
        let wanted: Vec<bitcoin::OutPoint> = frozen
            .iter()
            .flat_map(|p| p.reference.split(','))
            .filter_map(|text| text.trim().parse().ok())
            .collect();
        let ours: Vec<SeenOutput> = seen
            .into_iter()
            .filter(|s| wanted.contains(&s.outpoint))
            .collect();
        if ours.is_empty() {
            return Ok(None);
        }
        s2.watch
            .record_proven(&ours)
            .map_err(|e| PaymentError::SeenStorage(e.to_string()))?;
        Ok(Some(ours[0].block_hash))
    })
    .await?;
    let Some(block) = filed else {
        return Ok(None);
    };
    tracing::info!(lease = %l.id, %block, "the tenant proved its frozen payment mined again; the lease thaws at the next reorg check");
    let now = s.ledger.get(&l.id)?.ok_or(LeaseError::NoLease)?;
    Ok(Some(TopupResponse {
        lease: super::view(s, &now),
        resumed: false,
        late: false,
    }))
}
