//! NUT-30 on-chain mint quotes on a fleet (`--store`): the quote's key lock and balance
//! live in PostgreSQL (`payment_postgres::PgNut30Quotes`), so any host answers, credits and
//! mints a quote made by any other.
//!
//! # The order of each step, and what a crash leaves
//! - **Quote:** the fleet quote (address, expiry) commits, then its key lock (a second
//!   transaction). A crash between leaves a quote without a lock that nobody was told of:
//!   it answers 404 and only holds its address until it expires, like any orphan quote.
//! - **Payment** (`POST /v1/mint/quote/onchain/{quote}/payment`): the proof is checked
//!   against this host's header chain, then one store transaction, under the quote's row
//!   lock, claims the payment's outpoints `Spent` in the fleet spent set (with the
//!   payment's receipt) and credits the quote. Before the commit nothing happened; after
//!   it, the same proof again (any host) credits nothing more and answers the quote, and
//!   the outpoints are spent for every other use on every host (a lease, another quote).
//! - **Mint** (`POST /v1/mint/onchain`): the quote's key signature is checked, the
//!   operation id is the receipt of the quote and the outputs. A mint delivered before
//!   under that operation (any host) is answered with its signatures. Otherwise this host
//!   signs (no state), and one store transaction, under the quote's row lock, checks
//!   `issued + asked <= paid`, inserts the signatures delivered into the fleet's signed
//!   outputs (a `B_` signed anywhere before: 11003) and raises `amount_issued`. Before the
//!   commit nothing was issued (the same request signs afresh); after it the signatures
//!   are the fleet's, found by the same request again and by NUT-09 restore on any host.
//!   The same mint sent to two hosts at once serialises on the row lock: one commits, the
//!   other finds the issue made and answers with those signatures.
//!
//! Each route's first lookup of the quote is a read anyone can make with any id, made
//! within the public read share ([`fleet_quote_shared`]); the steps above follow only a
//! quote found, outside it.
//!
//! NUT-30 quotes a host made before it joined the fleet stay in its own ledger and are
//! served by it alone ([`super::nut30`]); their mints still reserve and settle their
//! outputs in the fleet's signed outputs, so no other host signs those `B_`s again.

use std::sync::Arc;

use axum::Json;
use payment::credit::mint_quote_signature::verify_mint_signature;
use payment::credit::nut_types::{
    BlindSignature, MintNut30Request, MintOnchainResponse, MintQuoteNut30Response, OnchainPayment,
    QuotePaymentProof,
};
use payment::credit::receipt::receipt;
use payment::credit::{signed_records, CreditError};
use payment_postgres::{Nut30Issue, Nut30Quote, PgNut30Quotes, PgStoreError};

use super::credit::blocking;
use super::read_share::within_read_share;
use crate::app::Shared;
use crate::fleet::FleetError;
use crate::fleet_mint::{FleetMint, FleetMintError};
use crate::http::degraded;
use crate::http::error::{quotes_error, ApiError, CashuError};
use crate::leases::payment_intake::{notice_storage, verify_onchain};
use crate::ledger::{LedgerError, ONCHAIN_LATE};
use crate::quote_store::QuotesError;

/// A store failure on a NUT-30 route: an outage is 503 `store_unavailable`.
fn store_error(e: PgStoreError) -> CashuError {
    quotes_error(QuotesError::from(e)).into()
}

/// The quote as NUT-30 shows it.
pub(super) fn view(q: &Nut30Quote) -> MintQuoteNut30Response {
    MintQuoteNut30Response {
        quote: q.quote_id.clone(),
        request: q.address.clone(),
        unit: "sat".into(),
        expiry: Some(q.expires_at_us / 1_000_000),
        pubkey: q.pubkey.clone(),
        amount_paid: q.amount_paid_sat,
        amount_issued: q.amount_issued_sat,
    }
}

/// The fleet's NUT-30 quote `quote` (`None`: not a fleet NUT-30 quote), read on any host.
pub(super) async fn fleet_quote(
    nut30: &PgNut30Quotes,
    quote: &str,
) -> Result<Option<Nut30Quote>, CashuError> {
    nut30.get(quote).await.map_err(store_error)
}

/// [`fleet_quote`] for a route anyone may call with any id (the quote's state, a payment's
/// proof, a mint): read within the public read share (503 `store_busy` beyond it), so that
/// such lookups never hold more of the store's connections than the share. The work that
/// follows a quote found is the route's money work, outside the share.
pub(super) async fn fleet_quote_shared(
    s: &Shared,
    nut30: &PgNut30Quotes,
    quote: &str,
) -> Result<Option<Nut30Quote>, CashuError> {
    let (nut30, quote) = (nut30.clone(), quote.to_string());
    within_read_share(s, async move { fleet_quote(&nut30, &quote).await }).await
}

/// Locks the fleet quote just made to `pubkey` and answers it.
pub(super) async fn open(
    nut30: &PgNut30Quotes,
    quote: &str,
    pubkey: &str,
) -> Result<Json<MintQuoteNut30Response>, CashuError> {
    nut30.open(quote, pubkey).await.map_err(store_error)?;
    let q = fleet_quote(nut30, quote)
        .await?
        .ok_or_else(|| ApiError::internal(format!("quote {quote} vanished after it was made")))?;
    Ok(Json(view(&q)))
}

/// `POST /v1/mint/quote/onchain/{quote}/payment` for a fleet quote: see the module doc.
pub(super) async fn prove_payment(
    s: Shared,
    nut30: PgNut30Quotes,
    quote: String,
    req: QuotePaymentProof,
) -> Result<Json<MintQuoteNut30Response>, CashuError> {
    let s2 = s.clone();
    let quote2 = quote.clone();
    let paid = blocking(move || {
        // Minted credit is bearer money: the payment proved here, at --mint-min-conf,
        // through the same checks (and the same quote-book marking) as every mint.
        let need = s2.config.mint_min_conf.max(s2.config.min_conf);
        let payment = OnchainPayment {
            quote_id: quote2.clone(),
            tx_hex: req.tx_hex,
            proof_hex: req.proof_hex,
        };
        let verified = verify_onchain(&s2.chain, &s2.quotes, None, need, &payment, None);
        notice_storage(&s2, &verified);
        let paid = verified?;
        // NUT-30: a payment the mint first learns of after the expiry does not count.
        if paid.kind == ONCHAIN_LATE {
            return Err(CreditError::QuoteExpired { quote: quote2 }.into());
        }
        degraded::admit_spending(&s2, &paid.keys)?;
        Ok(paid)
    })
    .await?;
    let receipt = receipt(&format!("nut30 payment {quote}"), &paid.keys, &[]);
    let credited = nut30
        .credit_payment(
            &quote,
            &paid.keys,
            paid.amount_msat / 1000,
            &receipt,
            &format!("nut30 quote {quote}"),
        )
        .await;
    match credited {
        Ok(Some(q)) => Ok(Json(view(&q))),
        Ok(None) => Err(ApiError::not_found(format!("no on-chain mint quote {quote:?}")).into()),
        Err(e @ PgStoreError::AlreadyClaimed { .. }) => {
            Err(LedgerError::AlreadySpent(FleetError::from(e).to_string()).into())
        }
        Err(e) => Err(store_error(e)),
    }
}

/// The signatures the same mint got before, on any host.
async fn answered_before(
    fleet_mint: &FleetMint,
    req: &MintNut30Request,
    operation: &str,
) -> Result<Option<Vec<BlindSignature>>, CashuError> {
    Ok(fleet_mint.answer_again(&req.outputs, operation).await?)
}

/// `POST /v1/mint/onchain` with `{quote, outputs, signature}` for a fleet quote: see the
/// module doc.
pub(super) async fn mint(
    s: Shared,
    nut30: PgNut30Quotes,
    fleet_mint: Arc<FleetMint>,
    q: Nut30Quote,
    req: MintNut30Request,
) -> Result<Json<MintOnchainResponse>, CashuError> {
    verify_mint_signature(&req.quote, &req.outputs, &q.pubkey, &req.signature)?;
    fleet_mint
        .admit(&s.mint, req.outputs.iter().map(|o| o.id.as_str()))
        .await?;
    let operation = super::nut30::mint_operation(&req);
    // A retry after a lost reply, on this host or another: the same signatures.
    if let Some(signatures) = answered_before(&fleet_mint, &req, &operation).await? {
        return Ok(Json(MintOnchainResponse { signatures }));
    }
    // Checked again under the quote's lock; this spares signing for nothing.
    let asked = super::nut30::asked_within(&req.outputs, q.available_sat())?;
    let (s2, outputs) = (s.clone(), req.outputs.clone());
    let (signatures, records) = blocking(move || {
        let signatures = s2.mint.mint(asked, &outputs)?;
        let records = signed_records(&outputs, &signatures)?;
        Ok((signatures, records))
    })
    .await?;
    let issued = nut30.issue(&req.quote, &operation, asked, &records).await;
    let again = || async {
        answered_before(&fleet_mint, &req, &operation)
            .await?
            .map(|signatures| Json(MintOnchainResponse { signatures }))
            .ok_or_else(|| -> CashuError {
                ApiError::conflict(
                    "already_issued",
                    format!("quote {} issued these outputs already", req.quote),
                )
                .into()
            })
    };
    match issued {
        Ok(Nut30Issue::Issued) => Ok(Json(MintOnchainResponse { signatures })),
        Ok(Nut30Issue::Repeat) if req.outputs.is_empty() => Ok(Json(MintOnchainResponse {
            signatures: Vec::new(),
        })),
        Ok(Nut30Issue::Repeat) => again().await,
        Ok(Nut30Issue::NotPaid { asked, available }) => {
            Err(CreditError::QuoteNotPaid { asked, available }.into())
        }
        Ok(Nut30Issue::UnknownQuote) => {
            Err(ApiError::not_found(format!("no on-chain mint quote {:?}", req.quote)).into())
        }
        // Signed by the same mint on another host meanwhile (its signatures), or by
        // something else (11003).
        Err(PgStoreError::OutputAlreadySigned { b_hex }) => match again().await {
            Ok(answer) => Ok(answer),
            Err(_) => Err(FleetMintError::OutputAlreadySigned { b_hex }.into()),
        },
        Err(e) => Err(FleetMintError::from(e).into()),
    }
}
