//! NUT-30 on-chain minting, the way current Cashu wallets ask for it: a quote locked to the
//! wallet's NUT-20 key with an address and no amount, its state (`amount_paid`,
//! `amount_issued`), and mints of up to what was paid and not yet issued, each signed by
//! the quote's key. coinopd sees no mempool: a payment counts once its transaction and SPV
//! proof are posted to `POST /v1/mint/quote/onchain/{quote}/payment` (coinop's addition)
//! and pass the same checks as every on-chain payment (confirmations on the host's own
//! header chain, outputs to the quote's address), claiming its outpoints for this quote.
//! coinop's own body (`{payment, outputs}`) stays served by [`super::credit::mint`].
//!
//! On a fleet (`--store`) a quote's lock and balance are the fleet's, and each route hands
//! a fleet quote to [`super::fleet_nut30`]; this module's ledger path serves a single host
//! (and a fleet host's NUT-30 quotes from before it joined, whose mints reserve their
//! outputs in the fleet store as every fleet host's signatures do).

use crate::http::path_param::CashuIdPath;
use axum::extract::State;
use axum::Json;
use payment::credit::mint_quote_signature::verify_mint_signature;
use payment::credit::nut_types::{
    BlindedMessage, MintNut30Request, MintOnchainResponse, MintQuoteNut30Request,
    MintQuoteNut30Response, OnchainPayment, QuotePaymentProof, RestoreRequest,
};
use payment::credit::receipt::receipt;
use payment::credit::{curve::parse_point, signed_records, CreditError};

use super::credit::blocking;
use super::host::issue_quote_for;
use super::json_body::CashuBody;
use super::{fleet_credit, fleet_nut30};
use crate::app::Shared;
use crate::fleet_mint::FleetMint;
use crate::http::degraded;
use crate::http::error::{quotes_error, ApiError, CashuError};
use crate::leases::payment_intake::{notice_storage, verify_onchain};
use crate::ledger::mint_quotes::Nut30Quote;
use crate::ledger::ONCHAIN_LATE;
use payment::spent_set::SpentSet;
use payment_postgres::QuotePurpose;
use std::sync::Arc;

fn unknown_quote(quote: &str) -> CashuError {
    ApiError::not_found(format!("no on-chain mint quote {quote:?} with a pubkey")).into()
}

/// The quote as NUT-30 shows it.
fn view(s: &Shared, quote_id: &str, q: &Nut30Quote) -> Result<MintQuoteNut30Response, CashuError> {
    let book = s
        .quotes
        .get(quote_id)
        .map_err(quotes_error)?
        .ok_or_else(|| unknown_quote(quote_id))?;
    Ok(MintQuoteNut30Response {
        quote: quote_id.to_string(),
        request: book.address,
        unit: "sat".into(),
        expiry: Some(book.expires_at_us / 1_000_000),
        pubkey: q.pubkey.clone(),
        amount_paid: q.amount_paid_sat,
        amount_issued: q.amount_issued_sat,
    })
}

/// `POST /v1/mint/quote/onchain` with a `pubkey`: a fresh address of the operator's xpub,
/// locked to that key.
pub async fn create_quote(
    s: Shared,
    req: MintQuoteNut30Request,
) -> Result<Json<MintQuoteNut30Response>, CashuError> {
    if req.unit != "sat" {
        return Err(CreditError::UnsupportedUnit { unit: req.unit }.into());
    }
    parse_point("pubkey", &req.pubkey)?;
    if let Some(nut30) = s.quotes.fleet_nut30().map_err(quotes_error)? {
        let s2 = s.clone();
        // No amount: the address may be paid any number of times before it expires.
        let q = blocking(move || Ok(issue_quote_for(&s2, 0, QuotePurpose::Nut30)?)).await?;
        return fleet_nut30::open(&nut30, &q.quote_id, &req.pubkey).await;
    }
    blocking(move || {
        // No amount: the address may be paid any number of times before it expires.
        let q = issue_quote_for(&s, 0, QuotePurpose::Nut30)?;
        s.ledger.open_nut30_quote(&q.quote_id, &req.pubkey)?;
        let row = Nut30Quote {
            pubkey: req.pubkey,
            amount_paid_sat: 0,
            amount_issued_sat: 0,
        };
        Ok(Json(view(&s, &q.quote_id, &row)?))
    })
    .await
}

/// `GET /v1/mint/quote/onchain/{quote}`.
pub async fn quote_state(
    State(s): State<Shared>,
    CashuIdPath(quote): CashuIdPath,
) -> Result<Json<MintQuoteNut30Response>, CashuError> {
    if let Some(nut30) = s.quotes.fleet_nut30().map_err(quotes_error)? {
        // Anyone may ask, about any id: within the public read share.
        if let Some(q) = fleet_nut30::fleet_quote_shared(&s, &nut30, &quote).await? {
            return Ok(Json(fleet_nut30::view(&q)));
        }
    }
    blocking(move || {
        let row = s
            .ledger
            .nut30_quote(&quote)?
            .ok_or_else(|| unknown_quote(&quote))?;
        Ok(Json(view(&s, &quote, &row)?))
    })
    .await
}

/// `POST /v1/mint/quote/onchain/{quote}/payment`: credits a confirmed payment to the
/// quote's address (once; the same proof again changes nothing) and answers the quote.
pub async fn prove_payment(
    State(s): State<Shared>,
    CashuIdPath(quote): CashuIdPath,
    CashuBody(req): CashuBody<QuotePaymentProof>,
) -> Result<Json<MintQuoteNut30Response>, CashuError> {
    if let Some(nut30) = s.quotes.fleet_nut30().map_err(quotes_error)? {
        // Anyone may send a proof for any id, checked only once its quote is found: the
        // lookup within the public read share, the payment's work after it outside.
        if fleet_nut30::fleet_quote_shared(&s, &nut30, &quote)
            .await?
            .is_some()
        {
            return fleet_nut30::prove_payment(s, nut30, quote, req).await;
        }
    }
    blocking(move || {
        s.ledger
            .nut30_quote(&quote)?
            .ok_or_else(|| unknown_quote(&quote))?;
        let paid = {
            // Minted credit is bearer money: the payment proved here, at --mint-min-conf,
            // through the same checks (and the same quote-book marking) as every mint.
            let need = s.config.mint_min_conf.max(s.config.min_conf);
            let payment = OnchainPayment {
                quote_id: quote.clone(),
                tx_hex: req.tx_hex,
                proof_hex: req.proof_hex,
            };
            let verified = verify_onchain(&s.chain, &s.quotes, None, need, &payment, None);
            notice_storage(&s, &verified);
            verified?
        };
        // NUT-30: a payment the mint first learns of after the expiry does not count.
        if paid.kind == ONCHAIN_LATE {
            return Err(CreditError::QuoteExpired { quote }.into());
        }
        degraded::admit_spending(&s, &paid.keys)?;
        let receipt = receipt(&format!("nut30 payment {quote}"), &paid.keys, &[]);
        let row = s
            .ledger
            .credit_nut30_quote(&quote, &paid.keys, paid.amount_msat / 1000, &receipt)?
            .ok_or_else(|| unknown_quote(&quote))?;
        Ok(Json(view(&s, &quote, &row)?))
    })
    .await
}

/// `POST /v1/mint/onchain` with `{quote, outputs, signature}`: signs outputs worth at most
/// what the quote was paid and has not issued, if the quote's key signed the request; the
/// signatures are recorded and `amount_issued` raised in one ledger transaction. On a
/// fleet, a quote this host made before it joined is minted here too, its outputs reserved
/// in the fleet store around that transaction ([`mint_own_quote_on_fleet`]).
pub async fn mint(
    s: Shared,
    req: MintNut30Request,
) -> Result<Json<MintOnchainResponse>, CashuError> {
    if let Some(nut30) = s.quotes.fleet_nut30().map_err(quotes_error)? {
        // Anyone may send a mint for any id, its signature checked only against the quote
        // found: the lookup within the public read share, the mint after it outside.
        if let Some(q) = fleet_nut30::fleet_quote_shared(&s, &nut30, &req.quote).await? {
            let Some(fleet_mint) = s.fleet_mint.clone() else {
                return Err(ApiError::internal("a fleet store without its mint").into());
            };
            return fleet_nut30::mint(s, nut30, fleet_mint, q, req).await;
        }
    }
    let (s2, req2) = (s.clone(), req.clone());
    let answered = blocking(move || {
        let (s, req) = (s2, req2);
        let row = s
            .ledger
            .nut30_quote(&req.quote)?
            .ok_or_else(|| unknown_quote(&req.quote))?;
        verify_mint_signature(&req.quote, &req.outputs, &row.pubkey, &req.signature)?;
        // A retry after a lost reply: every output was signed already, so the same request
        // gets the same signatures (what NUT-09 restore would hand anyone for these
        // outputs; nothing is issued again). Some signed and some not stays 11003.
        if !req.outputs.is_empty() {
            let before = s.mint.restore(&RestoreRequest {
                outputs: req.outputs.clone(),
            })?;
            if before.signatures.len() == req.outputs.len() {
                return Ok(Ok(before.signatures));
            }
        }
        // New signatures are new writes: refused while the disk is nearly full.
        degraded::admit(&s)?;
        Ok::<_, CashuError>(Err(row))
    })
    .await?;
    let row = match answered {
        Ok(signatures) => return Ok(Json(MintOnchainResponse { signatures })),
        Err(row) => row,
    };
    if let Some(fleet_mint) = s.fleet_mint.clone() {
        return fleet_credit::detached(mint_own_quote_on_fleet(s, fleet_mint, req, row)).await;
    }
    blocking(move || {
        let signed = s.ledger.issue_nut30(&req.quote, |q| {
            let q = q.ok_or_else(|| unknown_quote(&req.quote))?;
            let asked = asked_within(&req.outputs, q.available_sat())?;
            let signatures = s.mint.mint(asked, &req.outputs)?;
            let records = signed_records(&req.outputs, &signatures)?;
            Ok::<_, CashuError>((signatures, records, asked))
        })?;
        Ok(Json(MintOnchainResponse {
            signatures: signed?,
        }))
    })
    .await
}

/// The mint of a NUT-30 quote this host made before it joined the fleet (its lock and
/// balance are in this host's ledger alone), on the fleet: like every signature a fleet
/// host makes, its outputs are reserved in the fleet store before the local commit and
/// settled after (see [`crate::fleet_mint`]), so no other host signs these `B_`s and NUT-09
/// restore on any host finds them. The steps: sign (no state), reserve under the
/// operation (the receipt of the quote and the outputs, as a fleet quote's mint), the
/// ledger transaction that checks the balance again, records the signatures and raises
/// `amount_issued`, then settle: delivered if the ledger recorded these very signatures,
/// else released. A crash between leaves the reservation pending; the next start settles
/// it by the same rule, so a committed mint is delivered and the same request again is
/// answered from the ledger (above), an uncommitted one released and signed afresh.
async fn mint_own_quote_on_fleet(
    s: Shared,
    fleet_mint: Arc<FleetMint>,
    req: MintNut30Request,
    row: Nut30Quote,
) -> Result<Json<MintOnchainResponse>, CashuError> {
    fleet_mint
        .admit(&s.mint, req.outputs.iter().map(|o| o.id.as_str()))
        .await?;
    let operation = mint_operation(&req);
    // No fence of the spent set holds this operation (it spends nothing): this does.
    let _in_flight = fleet_mint.hold_unfenced(&operation)?;
    // Checked again in the ledger transaction; this spares signing for nothing.
    let asked = asked_within(&req.outputs, row.available_sat())?;
    let (s2, outputs) = (s.clone(), req.outputs.clone());
    let signatures = blocking(move || Ok(s2.mint.mint(asked, &outputs)?)).await?;
    let spent: Arc<dyn SpentSet> = s.spent.clone();
    if let Err(e) = fleet_mint
        .reserve(&req.outputs, &signatures, &operation)
        .await
    {
        // Nothing was committed locally: released (a reservation whose outcome is unknown
        // included).
        fleet_mint.settle(&spent, &req.outputs, &operation).await;
        return Err(e.into());
    }
    crate::fault::hit(crate::fault::point::FLEET_OUTPUTS_RESERVED);
    crate::fault::delay(crate::fault::point::FLEET_OUTPUTS_RESERVED).await;
    let (s2, req2) = (s.clone(), req.clone());
    let out = blocking(move || {
        let (s, req) = (s2, req2);
        let records = signed_records(&req.outputs, &signatures)?;
        let signed = s.ledger.issue_nut30(&req.quote, |q| {
            let q = q.ok_or_else(|| unknown_quote(&req.quote))?;
            let asked = asked_within(&req.outputs, q.available_sat())?;
            Ok::<_, CashuError>((signatures, records, asked))
        })?;
        Ok(Json(MintOnchainResponse {
            signatures: signed?,
        }))
    })
    .await;
    fleet_mint.settle(&spent, &req.outputs, &operation).await;
    out
}

/// The fleet store's operation id of a NUT-30 mint: the receipt of its quote and outputs,
/// one spelling for a fleet quote's mint and a pre-fleet quote's, so that a reservation
/// names the request, not the path that served it.
pub(super) fn mint_operation(req: &MintNut30Request) -> String {
    hex::encode(receipt(
        &format!("nut30 mint {}", req.quote),
        &[],
        &req.outputs,
    ))
}

/// What `outputs` ask for in total, refused (NUT-00 "quote not paid") above `available`,
/// the quote's paid and not yet issued amount. Shared by the single-host and fleet mints.
pub(super) fn asked_within(outputs: &[BlindedMessage], available: u64) -> Result<u64, CreditError> {
    let asked = outputs
        .iter()
        .try_fold(0u64, |sum, o| sum.checked_add(o.amount))
        .ok_or(CreditError::AmountOutOfRange {
            what: "outputs",
            amount: u64::MAX,
            min: 0,
            max: u64::MAX,
        })?;
    if asked > available {
        return Err(CreditError::QuoteNotPaid { asked, available });
    }
    Ok(asked)
}
