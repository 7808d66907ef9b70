//! The Cashu mint routes on a fleet (`--store`): swap, on-chain mint and NUT-09 restore
//! with the fleet store in front of this host's own spent set. The order of one request:
//! 0. (swap) the inputs' signatures checked, so a forged proof costs no store round trip
//!    and cannot fence the notes of a `Y` it copied, not even for the request's length;
//! 1. fence the inputs (swap: the proofs' Ys; mint: the payment's outpoints) under the
//!    request's receipt ([`crate::fleet`]);
//! 2. sign (no state) and reserve the outputs' `B_`s with the signatures under the same
//!    receipt ([`crate::fleet_mint`]): a `B_` taken anywhere is 11003;
//! 3. the local step, as on a single host (one SQLite transaction claims the inputs and
//!    records the signatures);
//! 4. settle both by what the local spent set holds: delivered, or released; the outputs
//!    first, while the fence keeps the request's copies out.
//!
//! A failure or crash at any point leaves nothing spent without its signatures recorded
//! locally, and nothing signed twice: see the two modules' docs. Inputs held under the same
//! receipt by another host (the same request, its reply lost) are answered with the
//! signatures that host delivered, or, while they are not delivered yet, refused as
//! pending (11002, which wallets retry).

use std::sync::Arc;

use axum::Json;
use payment::credit::nut_types::{
    BlindSignature, BlindedMessage, MintOnchainRequest, MintOnchainResponse, RestoreRequest,
    RestoreResponse, SwapRequest, SwapResponse,
};
use payment::credit::receipt::{receipt, SWAP};
use payment::credit::Mint;
use payment::spent_set::{SpendState, SpentSet};

use super::credit::{blocking, mint_locally, swap_input_keys, swap_locally};
use crate::app::Shared;
use crate::fleet::{Fence, Fleet, FleetError};
use crate::fleet_mint::{FleetMint, FleetMintError};
use crate::http::error::{ApiError, CashuError};
use crate::ledger::{Credit, LedgerError};

/// The local spent set, as the fleet mint reads it.
fn local_spent(s: &Shared) -> Arc<dyn SpentSet> {
    s.spent.clone()
}

/// The fence refused: if the inputs were spent by this very request (same receipt, on
/// another host: its reply lost) and its signatures delivered, those signatures. If they
/// were spent by it but its outputs' settle is not done yet (left for the background after
/// the store failed it, or still under way), the refusal says the inputs are pending: the
/// same request again is answered once that settle is done, so it must not be told, in
/// words a wallet takes as final, that its inputs went to something else. Else the
/// refusal itself.
async fn answered_before(
    fleet_mint: &FleetMint,
    outputs: &[BlindedMessage],
    operation: &str,
    refused: FleetError,
) -> Result<Vec<BlindSignature>, FleetError> {
    let FleetError::AlreadySpent {
        kind,
        key_hex,
        state: SpendState::Spent,
    } = refused
    else {
        return Err(refused);
    };
    let ours = match fleet_mint.answer_again(outputs, operation).await {
        Ok(Some(signatures)) => return Ok(signatures),
        Ok(None) => fleet_mint.held_for_operation(outputs, operation).await,
        Err(e) => Err(e),
    };
    let state = match ours {
        Ok(true) => SpendState::Pending,
        // Which it is cannot be told now: the store's own 503, which asks for a retry.
        Err(FleetMintError::Unavailable(m)) => return Err(FleetError::Unavailable(m)),
        // Outputs the mint cannot read (a bad `B_`) were never any operation's: the
        // inputs' refusal is the answer.
        Ok(false) | Err(_) => SpendState::Spent,
    };
    Err(FleetError::AlreadySpent {
        kind,
        key_hex,
        state,
    })
}

/// One fenced request: its inputs' fence, the outputs it signs, its operation id (the
/// request's receipt, hex).
struct Fenced<'a> {
    fence: Fence,
    outputs: &'a [BlindedMessage],
    operation: &'a str,
}

/// Steps 2 and 4 around the local step `local` (see the module doc): reserves the outputs
/// signed by `sign` unless the fence is a repeat, runs `local`, settles.
async fn reserve_run_settle<T: Send + 'static>(
    s: &Shared,
    fleet: &Fleet,
    fleet_mint: &FleetMint,
    op: Fenced<'_>,
    sign: impl FnOnce(&Shared) -> Result<Vec<BlindSignature>, CashuError> + Send + 'static,
    local: impl FnOnce(&Shared) -> Result<T, CashuError> + Send + 'static,
) -> Result<T, CashuError> {
    let spent = local_spent(s);
    let Fenced {
        fence,
        outputs,
        operation,
    } = op;
    if !fence.repeat {
        let s2 = s.clone();
        let reserved = match blocking(move || sign(&s2)).await {
            Ok(signatures) => fleet_mint
                .reserve(outputs, &signatures, operation)
                .await
                .map_err(CashuError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = reserved {
            // Nothing was committed locally: both are released (a reservation whose
            // outcome is unknown included).
            settle_both(s, fleet, fleet_mint, fence, &spent, outputs, operation).await;
            return Err(e);
        }
        crate::fault::hit(crate::fault::point::FLEET_OUTPUTS_RESERVED);
        crate::fault::delay(crate::fault::point::FLEET_OUTPUTS_RESERVED).await;
    }
    let s2 = s.clone();
    let out = blocking(move || local(&s2)).await;
    settle_both(s, fleet, fleet_mint, fence, &spent, outputs, operation).await;
    out
}

/// Step 4 (see the module doc): the outputs' reservation first, then the inputs' fence.
/// The fence holds the operation in flight on this host until it is settled, so no copy
/// of the request (one sent again after its answer was lost) gets past its fence before
/// this reservation is settled; the other way round, a copy could reserve the same
/// outputs again (its own rows, as the store sees them: the same host and operation) and
/// this settle, a release, would delete them, leaving the copy's signatures, committed
/// here, pending in the store for ever after.
async fn settle_both(
    s: &Shared,
    fleet: &Fleet,
    fleet_mint: &FleetMint,
    fence: Fence,
    spent: &Arc<dyn SpentSet>,
    outputs: &[BlindedMessage],
    operation: &str,
) {
    fleet_mint.settle(spent, outputs, operation).await;
    crate::fault::delay(crate::fault::point::FLEET_SETTLING).await;
    fleet.settle(fence, &s.ledger).await;
}

/// Runs `work` as a task of its own: a client that goes away (its connection, and with it
/// this handler, dropped) does not stop a request between its fence and its settle, which
/// would leave the inputs and outputs held until this host's next start.
pub(super) async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, CashuError>> + Send + 'static,
) -> Result<T, CashuError> {
    tokio::spawn(work)
        .await
        .map_err(|e| ApiError::internal(format!("worker: {e}")))?
}

/// NUT-03 swap on a fleet.
pub async fn swap(
    s: Shared,
    fleet: Arc<Fleet>,
    fleet_mint: Arc<FleetMint>,
    req: SwapRequest,
) -> Result<Json<SwapResponse>, CashuError> {
    detached(swap_detached(s, fleet, fleet_mint, req)).await
}

async fn swap_detached(
    s: Shared,
    fleet: Arc<Fleet>,
    fleet_mint: Arc<FleetMint>,
    req: SwapRequest,
) -> Result<Json<SwapResponse>, CashuError> {
    let keys = swap_input_keys(&req)?;
    let operation = hex::encode(receipt(SWAP, &keys, &req.outputs));
    let ids = req
        .inputs
        .iter()
        .map(|p| p.id.as_str())
        .chain(req.outputs.iter().map(|o| o.id.as_str()));
    fleet_mint.admit(&s.mint, ids).await?;
    // Anyone may send a swap naming anyone's `Y`s (NUT-07 shows them): only proofs this
    // mint signed reach the store. The local step checks them again, inside its
    // transaction; this is the cheap refusal in front of the fence.
    let (state, inputs) = (s.clone(), req.inputs.clone());
    blocking(move || {
        state.mint.validate_inputs(&inputs)?;
        Ok(())
    })
    .await?;
    let fence = match fleet.fence(&keys, "credit swap", &operation).await {
        Ok(fence) => fence,
        Err(refused) => {
            let signatures =
                answered_before(&fleet_mint, &req.outputs, &operation, refused).await?;
            return Ok(Json(SwapResponse { signatures }));
        }
    };
    let outputs = req.outputs.clone();
    let for_signing = req.clone();
    let op = Fenced {
        fence,
        outputs: &outputs,
        operation: &operation,
    };
    reserve_run_settle(
        &s,
        &fleet,
        &fleet_mint,
        op,
        move |s| Ok(s.mint.swap_signatures(&for_signing)?),
        move |s| swap_locally(s, &req),
    )
    .await
}

/// The on-chain mint (a payment proved in the request, already verified) on a fleet.
pub async fn mint(
    s: Shared,
    fleet: Arc<Fleet>,
    fleet_mint: Arc<FleetMint>,
    credit: Credit,
    req: MintOnchainRequest,
    note: String,
    receipt: [u8; 32],
) -> Result<Json<MintOnchainResponse>, CashuError> {
    detached(mint_detached(
        s, fleet, fleet_mint, credit, req, note, receipt,
    ))
    .await
}

async fn mint_detached(
    s: Shared,
    fleet: Arc<Fleet>,
    fleet_mint: Arc<FleetMint>,
    credit: Credit,
    req: MintOnchainRequest,
    note: String,
    receipt: [u8; 32],
) -> Result<Json<MintOnchainResponse>, CashuError> {
    let operation = hex::encode(receipt);
    fleet_mint
        .admit(&s.mint, req.outputs.iter().map(|o| o.id.as_str()))
        .await?;
    let fence = match fleet.fence(&credit.keys, &note, &operation).await {
        Ok(fence) => fence,
        Err(refused) => {
            return match answered_before(&fleet_mint, &req.outputs, &operation, refused).await {
                Ok(signatures) => Ok(Json(MintOnchainResponse { signatures })),
                // The payment's outpoints are spent by another request: it minted already
                // (20002, final).
                Err(
                    e @ FleetError::AlreadySpent {
                        state: SpendState::Spent,
                        ..
                    },
                ) => Err(LedgerError::AlreadySpent(e.to_string()).into()),
                // Pending (a copy of this request still in flight, this request's settle
                // not done yet, or another request's fence not settled yet) is 11002, which
                // wallets retry: it may yet be this request's to answer, or be released.
                Err(other) => Err(other.into()),
            };
        }
    };
    let outputs = req.outputs.clone();
    let paid_sat = credit.amount_msat / 1000;
    let for_signing = req.outputs.clone();
    let op = Fenced {
        fence,
        outputs: &outputs,
        operation: &operation,
    };
    reserve_run_settle(
        &s,
        &fleet,
        &fleet_mint,
        op,
        move |s| Ok(s.mint.mint(paid_sat, &for_signing)?),
        move |s| mint_locally(s, &credit, &req, &note, &receipt),
    )
    .await
}

/// NUT-09 restore on a fleet: the signatures any host delivered (and this host's own).
pub async fn restore(
    s: Shared,
    fleet_mint: Arc<FleetMint>,
    req: RestoreRequest,
) -> Result<Json<RestoreResponse>, CashuError> {
    let b_s = s.mint.restore_keys(&req)?;
    let found = fleet_mint.restore_records(&local_spent(&s), b_s).await?;
    Ok(Json(Mint::restore_answer(&req, found)))
}
