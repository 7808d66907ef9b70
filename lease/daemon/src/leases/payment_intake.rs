//! Turning the `payment` object of a request into a [`Credit`] the ledger can claim:
//! on-chain (SPV proof against the host's header chain, for a quote it issued) or blind-signed
//! credit (Cashu proofs checked by the mint). Nothing is claimed here: the ledger claims the
//! keys in the same transaction that records what they buy.

use coinop_proto::requests::{CreditPayment, PaymentBody};
use payment::credit::nut_types::OnchainPayment;
use payment::credit::Mint;
use payment::onchain::{check_payment, HeaderChain, QuoteBook};

use super::{blocking, LeaseError};
use crate::app::Shared;
use crate::ledger::{Credit, ONCHAIN_LATE};

/// Credit payments with at most this many proofs are verified inline (each proof is one
/// hash-to-curve and one point multiplication, tens of µs); bigger ones go to the pool.
const INLINE_PROOFS: usize = 8;

/// Verifies a payment body into a credit. On-chain proofs take the chain lock (which a
/// header append may hold) and large credit payments take real CPU, so those run on the
/// blocking pool; a small credit payment is checked right here.
pub async fn verify_payment(s: &Shared, p: PaymentBody) -> Result<Credit, LeaseError> {
    let kind = match &p {
        PaymentBody::Onchain(_) => "onchain",
        PaymentBody::Credit(_) => "credit",
    };
    let out = match p {
        PaymentBody::Credit(c) if c.proofs.len() <= INLINE_PROOFS => verify_credit(&s.mint, &c),
        p => {
            let s2 = s.clone();
            blocking(move || match &p {
                PaymentBody::Onchain(o) => {
                    let chain = s2.chain_read();
                    verify_onchain(&chain, &s2.quotes, s2.config.min_conf, o)
                }
                PaymentBody::Credit(c) => verify_credit(&s2.mint, c),
            })
            .await
        }
    };
    s.metrics.payment(kind, out.is_ok());
    out
}

/// Verifies an on-chain payment for one of our quotes and marks the quote paid; the
/// credit's kind says whether it arrived after the quote expired (`onchain_late`).
pub fn verify_onchain(
    chain: &HeaderChain,
    quotes: &QuoteBook,
    min_conf: u32,
    p: &OnchainPayment,
) -> Result<Credit, LeaseError> {
    let quote = quotes
        .get(&p.quote_id)?
        .ok_or_else(|| LeaseError::UnknownQuote(p.quote_id.clone()))?;
    let v = check_payment(chain, &quote, &p.tx_hex, &p.proof_hex, min_conf)?;
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
    })
}
