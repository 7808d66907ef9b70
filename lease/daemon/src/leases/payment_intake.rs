//! Turning the `payment` object of a request into a [`Credit`] the ledger can claim:
//! on-chain (SPV proof against the host's header chain, for a quote it issued) or blind-signed
//! credit (Cashu proofs checked by the mint). Nothing is claimed here: the ledger claims the
//! keys in the same transaction that records what they buy.

use std::sync::{PoisonError, RwLock};

use coinop_proto::requests::{CreditPayment, PaymentBody};
use payment::credit::nut_types::OnchainPayment;
use payment::credit::Mint;
use payment::onchain::{
    check_payment, HeaderChain, PaymentError, PaymentWatch, Quote, SeenOutput, VerifiedPayment,
};

use super::{blocking, LeaseError};
use crate::app::{AppState, Shared};
use crate::ledger::{Credit, Ledger, ONCHAIN_LATE};
use crate::quote_store::Quotes;
use bitcoin::hashes::Hash;
use payment::spent_set::SpendKey;

/// Credit payments with at most this many proofs are verified inline (each proof is one
/// hash-to-curve and one point multiplication, tens of µs); bigger ones go to the pool.
const INLINE_PROOFS: usize = 8;

/// Verifies a payment body into a credit. On-chain proofs take the chain lock (which a
/// header append may hold) and large credit payments take real CPU, so those run on the
/// blocking pool; a small credit payment is checked right here.
///
/// `holder` is the lease a top-up is for: a payment named by quote id alone then counts
/// only the quote's outputs nobody claimed yet once the lease holds some of them (see
/// [`verify_onchain`]).
pub async fn verify_payment(
    s: &Shared,
    p: PaymentBody,
    holder: Option<&str>,
) -> Result<Credit, LeaseError> {
    let kind = match &p {
        PaymentBody::Onchain(_) => "onchain",
        PaymentBody::Credit(_) => "credit",
    };
    let out = match p {
        PaymentBody::Credit(c) if c.proofs.len() <= INLINE_PROOFS => verify_credit(&s.mint, &c),
        PaymentBody::Credit(c) => {
            let s2 = s.clone();
            blocking(move || verify_credit(&s2.mint, &c)).await
        }
        PaymentBody::Onchain(o) => verify_onchain_body(s, o, holder).await,
    };
    notice_storage(s, &out);
    s.metrics.payment(kind, out.is_ok());
    out
}

/// [`verify_payment`] of an on-chain payment. A create needs no token and may name any
/// quote id, so with a fleet store the quote's lookup ([`payment_quote`]) is a public read
/// of the store: it is made within the public read share
/// ([`crate::fleet::Fleet::public_read`]; beyond it [`crate::fleet::FleetError::ReadsBusy`],
/// nothing read). What follows a quote found (the payment's checks, the outputs seen
/// paying it, its paid mark) is the payment's own work, outside the share.
async fn verify_onchain_body(
    s: &Shared,
    o: OnchainPayment,
    holder: Option<&str>,
) -> Result<Credit, LeaseError> {
    let place = match &s.fleet {
        Some(fleet) => Some(fleet.public_read().await?),
        None => None,
    };
    let s2 = s.clone();
    let holder = holder.map(str::to_string);
    blocking(move || {
        let quote = {
            // Held by this closure, which runs to its end on the blocking pool even if the
            // request is dropped: the place stays taken as long as the lookup uses a
            // connection, and is given back once it is done.
            let _place = place;
            payment_quote(&s2, &o.quote_id)?
        };
        let holder = holder.as_deref().map(|lease_id| Holder {
            ledger: &s2.ledger,
            lease_id,
        });
        verify_onchain_for(
            &s2.chain,
            &s2.quotes,
            Some(&s2.watch),
            s2.config.min_conf,
            &quote,
            &o,
            holder,
        )
    })
    .await
}

/// The quote an on-chain payment names, read before anything of the payment is checked:
/// [`LeaseError::UnknownQuote`] if there is none, [`LeaseError::QuoteKeyLocked`] for a
/// NUT-30 quote of this host (its ledger) or of another (the fleet's). With a fleet store
/// this is one read of it whatever id the request names, so callers make it within the
/// public read share.
pub fn payment_quote(s: &AppState, quote_id: &str) -> Result<Quote, LeaseError> {
    if s.ledger.nut30_quote(quote_id)?.is_some() {
        return Err(LeaseError::QuoteKeyLocked(quote_id.to_string()));
    }
    let found = s
        .quotes
        .find(quote_id)?
        .ok_or_else(|| LeaseError::UnknownQuote(quote_id.to_string()))?;
    if found.key_locked {
        return Err(LeaseError::QuoteKeyLocked(quote_id.to_string()));
    }
    Ok(found.quote)
}

/// Tells the disk reserve about a verification that failed on a full disk: marking a quote
/// paid is a write to the quote book, so a full disk can refuse it like any ledger step,
/// and the reserve must go back to the metering it is kept for.
pub fn notice_storage<T>(s: &AppState, out: &Result<T, LeaseError>) {
    match out {
        Err(LeaseError::Quote(e)) => s.disk.notice(e.storage_refused()),
        // The spent set read while checking (a read may have to grow SQLite's
        // shared-memory file on a full disk).
        Err(LeaseError::Payment(e)) => s.disk.notice(e.storage_refused()),
        _ => {}
    }
}

/// Verifies an on-chain payment for one of our quotes and marks the quote paid; the
/// credit's kind says whether it arrived after the quote expired (`onchain_late`). A
/// payment with neither `tx_hex` nor `proof_hex` is looked up among the outputs the host
/// saw itself or, with a fleet store, that another host saw (`seen`; `None` where only a
/// proof will do). With a fleet store the quote may be another host's, and its paid mark
/// is fleet-wide. The quote book (perhaps the fleet store, over the network) is read before
/// the chain's lock is taken and written after it is let go, so that a slow store never
/// holds up the header sync.
///
/// A payment by quote id alone counts whichever of the quote's outputs are deep enough
/// now, so the same request sent again later may see more of them than the first time. For
/// a top-up, `holder` names the lease: once it holds some of the quote's outputs, only the
/// ones nobody claimed yet are counted (without the quote's price as a floor: the quote was
/// paid in full already), and [`LeaseError::QuoteCounted`] says there are none. So a
/// top-up retried after a lost reply credits nothing twice, and an output paid to the
/// quote after the lease took it is not stranded: it goes to that lease.
pub fn verify_onchain(
    chain: &RwLock<HeaderChain>,
    quotes: &Quotes,
    seen: Option<&PaymentWatch>,
    min_conf: u32,
    p: &OnchainPayment,
    holder: Option<Holder<'_>>,
) -> Result<Credit, LeaseError> {
    let quote = quotes
        .get(&p.quote_id)?
        .ok_or_else(|| LeaseError::UnknownQuote(p.quote_id.clone()))?;
    verify_onchain_for(chain, quotes, seen, min_conf, &quote, p, holder)
}

/// [`verify_onchain`] with `quote`, the quote `p` names, read already (by
/// [`payment_quote`], within the public read share).
pub fn verify_onchain_for(
    chain: &RwLock<HeaderChain>,
    quotes: &Quotes,
    seen: Option<&PaymentWatch>,
    min_conf: u32,
    quote: &Quote,
    p: &OnchainPayment,
    holder: Option<Holder<'_>>,
) -> Result<Credit, LeaseError> {
    let by_quote_id = p.tx_hex.is_empty() && p.proof_hex.is_empty();
    let (seen, held) = match (by_quote_id, seen) {
        (false, _) => (None, None),
        (true, Some(watch)) => {
            let all = quotes.seen_for(&quote.quote_id, watch)?;
            match holder {
                Some(h) => match unclaimed_if_held(&h, &all)? {
                    Some(rest) => (Some(rest), Some(h.lease_id)),
                    None => (Some(all), None),
                },
                None => (Some(all), None),
            }
        }
        (true, None) => return Err(PaymentError::ProofRequired.into()),
    };
    let v = {
        let chain = chain.read().unwrap_or_else(PoisonError::into_inner);
        match (&seen, held) {
            (None, _) => check_payment(&chain, quote, &p.tx_hex, &p.proof_hex, min_conf)?,
            (Some(seen), None) => seen_payment(&chain, quote, seen, min_conf, true)?,
            (Some(seen), Some(lease_id)) => {
                match seen_payment(&chain, quote, seen, min_conf, false) {
                    Ok(v) => v,
                    // Nothing new deep enough: what the lease holds is all there is for now.
                    // A retry of an earlier top-up is answered as it; otherwise a new
                    // output not deep enough yet is that error, 402 (see topup).
                    Err(PaymentError::NotSeen { .. }) => {
                        return Err(LeaseError::QuoteCounted {
                            quote_id: quote.quote_id.clone(),
                            lease_id: lease_id.to_string(),
                            shallow: None,
                        })
                    }
                    Err(
                        e @ (PaymentError::NotEnoughConfirmations { .. }
                        | PaymentError::CoinbaseImmature { .. }),
                    ) => {
                        return Err(LeaseError::QuoteCounted {
                            quote_id: quote.quote_id.clone(),
                            lease_id: lease_id.to_string(),
                            shallow: Some(Box::new(e)),
                        })
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    };
    // A payment to this address exists: its index must never go to another quote, whether
    // or not this claim goes through.
    quotes.mark_paid(&quote.quote_id)?;
    let keys = v.spend_keys();
    let reference = v
        .outpoints
        .iter()
        .map(|o| o.to_string())
        .collect::<Vec<_>>()
        .join(",");
    Ok(Credit {
        kind: if v.late { ONCHAIN_LATE } else { "onchain" },
        reference,
        amount_msat: v.amount_msat,
        keys,
        block_hash: Some(v.block_hash.to_string()),
        quote_id: Some(quote.quote_id.clone()),
    })
}

/// The lease a top-up paid by quote id is for, and the ledger that knows what it holds.
pub struct Holder<'a> {
    pub ledger: &'a Ledger,
    pub lease_id: &'a str,
}

/// If `h`'s lease already holds one of the `seen` outputs (claimed it with an earlier
/// payment), the outputs nobody has claimed; `None` if it holds none of them (the payment
/// is then counted whole, and meets the ordinary 409 if another claimed part of it).
fn unclaimed_if_held(
    h: &Holder<'_>,
    seen: &[SeenOutput],
) -> Result<Option<Vec<SeenOutput>>, LeaseError> {
    let keys: Vec<SpendKey> = seen
        .iter()
        .map(|s| SpendKey::outpoint(s.outpoint.txid.to_byte_array(), s.outpoint.vout))
        .collect();
    let notes = h.ledger.notes(&keys)?;
    if !notes.iter().any(|n| n.as_deref() == Some(h.lease_id)) {
        return Ok(None);
    }
    Ok(Some(
        seen.iter()
            .zip(&notes)
            .filter(|(_, n)| n.is_none())
            .map(|(s, _)| s.clone())
            .collect(),
    ))
}

/// The outputs to `quote`'s script the host saw in best-chain blocks with at least
/// `min_conf` confirmations (coinbase outputs once mature), as one payment, from `seen`
/// (the outputs seen paying the quote, on any chain). With `full_price` they must add up to
/// the quote's price; without, any amount will do (outputs paid after the quote was).
pub fn seen_payment(
    chain: &HeaderChain,
    quote: &Quote,
    seen: &[SeenOutput],
    min_conf: u32,
    full_price: bool,
) -> Result<VerifiedPayment, PaymentError> {
    let need = min_conf.max(1);
    // A coinbase output can be spent only once it has 100 confirmations (consensus): before
    // that a reorg can make it vanish for good, so it does not count as a payment until then
    // (the same bound the tx+proof form applies).
    let coinbase_need = chain.network().coinbase_maturity().max(need);
    let mut counted: Vec<&payment::onchain::SeenOutput> = Vec::new();
    // The not-yet-counted output with the most confirmations: what the refusal reports.
    let mut deepest_pending: Option<&payment::onchain::SeenOutput> = None;
    let mut deepest_have = 0;
    for s in seen {
        let Some(b) = chain.block(&s.block_hash).filter(|b| b.on_best_chain) else {
            continue;
        };
        // The script's index changed hands: an output in a block on the other side of the
        // hand-over pays the other quote, whichever quote the scan filed it under (a block
        // scanned after the hand-over, or brought back by a reorg).
        if quote.pays_at_height(b.height).is_err() {
            continue;
        }
        let need_here = if s.coinbase { coinbase_need } else { need };
        if b.confirmations >= need_here {
            if !counted.iter().any(|c| c.outpoint == s.outpoint) {
                counted.push(s);
            }
        } else if deepest_pending.is_none() || b.confirmations > deepest_have {
            deepest_pending = Some(s);
            deepest_have = b.confirmations;
        }
    }
    let Some(first) = counted.first() else {
        return Err(match deepest_pending {
            // Deep enough for min_conf, but a coinbase not yet mature: say which rule waits.
            Some(s) if s.coinbase && deepest_have >= need => PaymentError::CoinbaseImmature {
                txid: s.outpoint.txid,
                have: deepest_have,
                need: coinbase_need,
            },
            Some(s) => PaymentError::NotEnoughConfirmations {
                hash: s.block_hash,
                have: deepest_have,
                need,
            },
            None => PaymentError::NotSeen {
                quote_id: quote.quote_id.clone(),
            },
        });
    };
    let paid_sat = counted
        .iter()
        .fold(0u64, |sum, s| sum.saturating_add(s.amount_sat));
    let paid_msat = paid_sat.saturating_mul(1000);
    if full_price && paid_msat < quote.amount_msat {
        return Err(PaymentError::Insufficient {
            paid_msat,
            required_msat: quote.amount_msat,
        });
    }
    // The shallowest block that paid: the payment settles when that one does.
    let last = counted
        .iter()
        .max_by_key(|s| s.height)
        .expect("counted is not empty");
    let info = chain.block(&last.block_hash);
    Ok(VerifiedPayment {
        txid: first.outpoint.txid,
        outpoints: counted.iter().map(|s| s.outpoint).collect(),
        amount_msat: paid_msat,
        block_hash: last.block_hash,
        height: last.height,
        confirmations: info.map_or(0, |b| b.confirmations),
        late: counted
            .iter()
            .any(|s| u64::from(s.block_time) * 1_000_000 > quote.expires_at_us),
    })
}

pub fn verify_credit(mint: &Mint, p: &CreditPayment) -> Result<Credit, LeaseError> {
    if p.proofs.is_empty() {
        return Err(LeaseError::NoProofs);
    }
    let v = mint.validate_inputs(&p.proofs)?;
    let amount_msat = v.amount_msat()?;
    Ok(Credit {
        kind: "credit",
        reference: format!("{} proofs", v.keys.len()),
        amount_msat,
        keys: v.keys,
        block_hash: None,
        quote_id: None,
    })
}
