//! What the CLI's `wallet` commands do against a daemon: mint credit on the regtest demo
//! chain, turn notes into a `payment` object, collect a stopped lease's change, send and
//! receive Cashu tokens, and restore a seeded wallet (NUT-09/13), each with the tenant's
//! [`Wallet`] file on one side and coinopd's mint on the other.
//!
//! Sending or paying an amount the notes do not add up to exactly swaps at the mint first
//! (NUT-03), so exactly that amount leaves and the change stays: a 100-sat top-up does not
//! spend a whole 4096-sat note.

use coinop_proto::replies::StopResponse;
use coinop_proto::requests::{CreditPayment, PaymentBody, StopRequest};
use coinop_proto::LeaseView;
use hyper::body::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use bitcoin::hashes::{sha256, Hash};
use payment::credit::amount::split;
use payment::credit::hash_to_curve::secret_to_curve;
use payment::credit::nut_types::{
    BlindedMessage, CashuErrorResponse, CheckStateRequest, CheckStateResponse, KeysResponse,
    KeysetsResponse, MintOnchainRequest, MintOnchainResponse, MintQuoteOnchainRequest,
    MintQuoteOnchainResponse, Proof, ProofState, RestoreRequest, RestoreResponse, SwapRequest,
    SwapResponse,
};
use payment::credit::token::{Token, TokenError};

use crate::client::{Client, ClientError, Reply};
use crate::exit::note;
use crate::regtest_pay::{pay_quote_onchain, PayError};
use crate::wallet::{check_proof_dleq, Wallet, WalletError};
use crate::wallet_seed::Seed;

#[derive(Debug, Error)]
pub enum WalletCmdError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Wallet(#[from] WalletError),
    #[error(transparent)]
    Pay(#[from] PayError),
    #[error("{what}: HTTP {status}: {body}")]
    Api {
        what: &'static str,
        status: u16,
        body: String,
        /// The NUT-00 error code, when the answer has one.
        code: Option<u32>,
    },
    /// Kept change outputs were refused, and the mint had signed some of them: the stop
    /// was made with them before; that change is now in the wallet.
    #[error(
        "the stop was made earlier: its change, {sat} sat, was found with the mint (NUT-09) \
         and is in the wallet; the stop sent again was refused ({refusal})"
    )]
    ChangeRecovered {
        sat: u64,
        refusal: Box<WalletCmdError>,
    },
    /// The host's change does not add up to the refund it reports.
    #[error(
        "the host reports a refund of {refund_sat} sat but signed change worth {signed_sat} \
         sat (the notes it signed are kept in the wallet)"
    )]
    ChangeShort { signed_sat: u64, refund_sat: u64 },
    #[error("{what}: the reply has no usable '{field}'")]
    Field {
        what: &'static str,
        field: &'static str,
    },
    /// The answer is not the type this coinop knows; its text is kept in the message, as
    /// it may carry change that is the tenant's money.
    #[error("{what}: cannot read the reply ({source}): {body}")]
    Body {
        what: &'static str,
        source: serde_json::Error,
        body: String,
    },
    #[error("{what}: cannot encode the request: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the token is from mint {mint} (keyset {keyset}), which is not this coinopd's mint")]
    OtherMint { mint: String, keyset: String },
    #[error("the token is in unit '{0}'; this wallet holds sat")]
    Unit(String),
    #[error("the token is worth {amount} sat, less than the mint's fee of {fee} sat")]
    BelowFee { amount: u64, fee: u64 },
    /// A swap whose reply was lost, sent again and refused, whose inputs the mint does not
    /// call unspent: its first request may have committed, so its blanks are kept.
    #[error(
        "swap {batch} is not settled ({why}); its blank outputs are kept in the wallet and \
         the next coinop wallet command asks the mint again (if its inputs were spent by \
         another request, e.g. a token's sender spent it twice, `coinop wallet drop-swap \
         {batch}` gives it up)"
    )]
    SwapUnsettled { batch: String, why: String },
    #[error("the wallet has no unsettled swap named '{0}' (the notes printed by a wallet command name them)")]
    NoSuchSwap(String),
    /// `wallet drop-swap` of a swap the mint may still settle.
    #[error("swap {batch} is not dropped: {why}")]
    NotDropped { batch: String, why: String },
}

/// NUT-00 code of coinopd's mint for inputs held by a request still in flight (on a fleet,
/// a resend meeting its own first request on another host).
const CASHU_PENDING: u32 = 11002;

/// A request body as JSON.
fn encode(what: &'static str, body: &impl Serialize) -> Result<Vec<u8>, WalletCmdError> {
    serde_json::to_vec(body).map_err(|source| WalletCmdError::Encode { what, source })
}

/// One call that must succeed, its reply read as `T`; also the body as received.
async fn call_ok<T: DeserializeOwned>(
    c: &Client,
    what: &'static str,
    (method, path): (&str, &str),
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> Result<(T, Bytes), WalletCmdError> {
    let r: Reply = c.call(method, path, token, body).await?;
    if !(200..300).contains(&r.status) {
        // The Cashu routes answer NUT-00 `{"detail", "code"}`: said as the code and text.
        let (body, code) = match r.parse::<CashuErrorResponse>() {
            Ok(e) => (
                format!("Cashu error {}: {}", e.code, e.detail),
                Some(e.code),
            ),
            Err(_) => (r.text(), None),
        };
        return Err(WalletCmdError::Api {
            what,
            status: r.status,
            body,
            code,
        });
    }
    match r.parse() {
        Ok(v) => Ok((v, r.body)),
        Err(source) => Err(WalletCmdError::Body {
            what,
            source,
            body: r.text(),
        }),
    }
}

async fn mint_keys(c: &Client) -> Result<KeysResponse, WalletCmdError> {
    let (keys, _) = call_ok(c, "GET /v1/keys", ("GET", "/v1/keys"), None, None).await?;
    Ok(keys)
}

fn active_keyset(keys: &KeysResponse) -> Result<String, WalletCmdError> {
    // NUT-01: /v1/keys lists the active keysets; the first active sat one signs.
    keys.keysets
        .iter()
        .find(|k| k.active && k.unit == "sat")
        .map(|k| k.id.clone())
        .ok_or(WalletCmdError::Field {
            what: "GET /v1/keys",
            field: "keysets[0]",
        })
}

/// Mints `amount_sat` of credit paid on the daemon's regtest chain into `wallet`.
pub async fn mint_regtest(
    c: &Client,
    wallet: &mut Wallet,
    amount_sat: u64,
) -> Result<u64, WalletCmdError> {
    let ask = MintQuoteOnchainRequest {
        amount: amount_sat,
        unit: "sat".into(),
    };
    const QUOTE: &str = "POST /v1/mint/quote/onchain";
    let (q, _): (MintQuoteOnchainResponse, _) = call_ok(
        c,
        QUOTE,
        ("POST", "/v1/mint/quote/onchain"),
        None,
        Some(encode(QUOTE, &ask)?),
    )
    .await?;
    let paid = pay_quote_onchain(c, &q.quote).await?;
    let keys = mint_keys(c).await?;
    let batch = format!("mint-{}", q.quote);
    // The quote's amount, which may be more than asked (raised to the dust limit).
    let outputs = wallet.new_outputs(&batch, &active_keyset(&keys)?, &split(q.amount))?;
    let mint = MintOnchainRequest {
        payment: paid,
        outputs,
    };
    const MINT: &str = "POST /v1/mint/onchain";
    let (r, _): (MintOnchainResponse, _) = call_ok(
        c,
        MINT,
        ("POST", "/v1/mint/onchain"),
        None,
        Some(encode(MINT, &mint)?),
    )
    .await?;
    Ok(wallet.receive(&batch, &keys.keysets, &r.signatures)?)
}

/// NUT-13's batch size: how many counters one restore request asks about.
const RESTORE_BATCH: u32 = 100;
/// NUT-13: a restore stops after this many batches in a row came back empty.
const RESTORE_EMPTY_RUN: u32 = 3;

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn post<T: DeserializeOwned>(
    c: &Client,
    what: &'static str,
    path: &str,
    body: &impl Serialize,
) -> Result<T, WalletCmdError> {
    let (v, _) = call_ok(c, what, ("POST", path), None, Some(encode(what, body)?)).await?;
    Ok(v)
}

async fn keysets(c: &Client) -> Result<KeysetsResponse, WalletCmdError> {
    let (k, _) = call_ok(c, "GET /v1/keysets", ("GET", "/v1/keysets"), None, None).await?;
    Ok(k)
}

async fn keys_of(c: &Client, id: &str) -> Result<KeysResponse, WalletCmdError> {
    let path = format!("/v1/keys/{id}");
    let (k, _) = call_ok(c, "GET /v1/keys/{id}", ("GET", &path), None, None).await?;
    Ok(k)
}

/// NUT-02 fee of spending `inputs`: the sum of their keysets' `input_fee_ppk`, rounded up
/// to whole sat.
fn input_fee(inputs: &[Proof], sets: &KeysetsResponse) -> u64 {
    let ppk: u64 = inputs
        .iter()
        .map(|p| {
            sets.keysets
                .iter()
                .find(|k| k.id == p.id)
                .map_or(0, |k| k.input_fee_ppk)
        })
        .sum();
    ppk.div_ceil(1000)
}

/// NUT-07 states of `proofs`, in order.
async fn states(c: &Client, proofs: &[Proof]) -> Result<Vec<ProofState>, WalletCmdError> {
    if proofs.is_empty() {
        return Ok(Vec::new());
    }
    let ys = proofs
        .iter()
        .map(|p| {
            secret_to_curve(&p.secret)
                .map(|y| y.to_string())
                .map_err(|_| WalletCmdError::Field {
                    what: "a held note",
                    field: "secret",
                })
        })
        .collect::<Result<_, _>>()?;
    let r: CheckStateResponse = post(
        c,
        "POST /v1/checkstate",
        "/v1/checkstate",
        &CheckStateRequest { ys },
    )
    .await?;
    if r.states.len() != proofs.len() {
        return Err(WalletCmdError::Field {
            what: "POST /v1/checkstate",
            field: "states",
        });
    }
    Ok(r.states.into_iter().map(|s| s.state).collect())
}

/// The keys of every keyset in `ids` (NUT-01 `/v1/keys/{id}`, which answers inactive
/// keysets too): a signature is unblinded with the key of the keyset it names, which after
/// a rotation is not the active one.
async fn keys_for<'a>(
    c: &Client,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<KeysResponse, WalletCmdError> {
    let mut keys = KeysResponse {
        keysets: Vec::new(),
    };
    for id in ids {
        if !keys.keysets.iter().any(|k| k.id == id) {
            keys.keysets.extend(keys_of(c, id).await?.keysets);
        }
    }
    Ok(keys)
}

/// Those of `inputs` the mint says are unspent (NUT-07).
async fn unspent_of(c: &Client, inputs: &[Proof]) -> Result<Vec<Proof>, WalletCmdError> {
    let st = states(c, inputs).await?;
    Ok(inputs
        .iter()
        .zip(st)
        .filter(|(_, s)| *s == ProofState::Unspent)
        .map(|(p, _)| p.clone())
        .collect())
}

/// Sends a recorded swap and settles it: the signatures into the wallet, or, when the mint
/// refuses it for good (4xx), the swap forgotten and, for the wallet's own notes, those
/// still unspent kept. A lost reply or a 5xx leaves it recorded for the next run.
///
/// `resent` says an earlier run sent this very request and lost the reply. Its refusal
/// then does not say the swap did not happen: the first request may have committed (the
/// inputs spent, the outputs signed) and the resend be refused for another reason (the
/// keyset rotated since, 12002; on a fleet, the first request still in flight, 11002).
/// Dropping the blanks then would lose the notes, so see [`settle_refused_resend`].
async fn settle_swap(
    c: &Client,
    wallet: &mut Wallet,
    batch: &str,
    req: &SwapRequest,
    keys: &KeysResponse,
    resent: bool,
) -> Result<u64, WalletCmdError> {
    const SWAP: &str = "POST /v1/swap";
    match post::<SwapResponse>(c, SWAP, "/v1/swap", req).await {
        Ok(r) => Ok(wallet.receive(batch, &keys.keysets, &r.signatures)?),
        Err(refusal @ WalletCmdError::Api { status, .. }) if (400..500).contains(&status) => {
            if resent {
                return settle_refused_resend(c, wallet, batch, req, refusal).await;
            }
            // This request is the only one that carried these blanks, and its answer is a
            // refusal: nothing was signed on them, so they can go.
            let unspent = if wallet.swap_is_ours(batch) {
                unspent_of(c, &req.inputs).await?
            } else {
                Vec::new()
            };
            wallet.abort_swap(batch, unspent)?;
            Err(refusal)
        }
        Err(e) => Err(e),
    }
}

/// A resent swap the mint refused (`refusal`, a 4xx). Its blanks are dropped only once the
/// mint says every input is unspent (NUT-07: then no request of this swap committed, as a
/// swap spends its inputs and signs its outputs in one step). Before that, the mint is
/// asked (NUT-09 restore) for signatures it made on the blanks, and any it has are
/// unblinded into the wallet: all of them settle the swap. Otherwise (an input spent or
/// pending, or the first request still in flight) the swap stays for the next run.
async fn settle_refused_resend(
    c: &Client,
    wallet: &mut Wallet,
    batch: &str,
    req: &SwapRequest,
    refusal: WalletCmdError,
) -> Result<u64, WalletCmdError> {
    let unsettled = |why: String| WalletCmdError::SwapUnsettled {
        batch: batch.to_string(),
        why,
    };
    if let WalletCmdError::Api {
        code: Some(CASHU_PENDING),
        ..
    } = refusal
    {
        return Err(unsettled(format!(
            "{refusal}: its first request is still in flight"
        )));
    }
    let restored = restore_batch(c, wallet, batch, &req.outputs).await?;
    if wallet.pending_outputs(batch).is_none() {
        // Every blank was signed: the first request committed and this is its answer.
        return Ok(restored);
    }
    let unspent = unspent_of(c, &req.inputs).await?;
    if unspent.len() == req.inputs.len() {
        let back = if wallet.swap_is_ours(batch) {
            unspent
        } else {
            Vec::new()
        };
        wallet.abort_swap(batch, back)?;
        return Err(refusal);
    }
    Err(unsettled(format!(
        "{refusal}; some of its inputs are spent or pending and the mint returned \
         signatures worth {restored} sat for its outputs"
    )))
}

/// Asks the mint (NUT-09) for the signatures it holds on `outputs`, the blanks of `batch`,
/// and unblinds those into the wallet ([`Wallet::receive_restored`]). Returns the sat kept.
async fn restore_batch(
    c: &Client,
    wallet: &mut Wallet,
    batch: &str,
    outputs: &[BlindedMessage],
) -> Result<u64, WalletCmdError> {
    const RESTORE: &str = "POST /v1/restore";
    let r: RestoreResponse = post(
        c,
        RESTORE,
        "/v1/restore",
        &RestoreRequest {
            outputs: outputs.to_vec(),
        },
    )
    .await?;
    if r.outputs.len() != r.signatures.len() {
        return Err(WalletCmdError::Field {
            what: RESTORE,
            field: "signatures",
        });
    }
    if r.signatures.is_empty() {
        return Ok(0);
    }
    let keys = keys_for(c, r.signatures.iter().map(|s| s.id.as_str())).await?;
    let found: Vec<_> = r.outputs.into_iter().zip(r.signatures).collect();
    Ok(wallet.receive_restored(batch, &found, &keys.keysets)?)
}

/// Sends again the swaps an earlier run recorded and got no answer to. One that stays
/// unsettled (its blanks kept for a later run) is said on stderr and does not stop the
/// command: the wallet's other notes are still good.
pub async fn resume_swaps(c: &Client, wallet: &mut Wallet) -> Result<(), WalletCmdError> {
    for (batch, req) in wallet.pending_swaps() {
        // The keys of every keyset the outputs name (normally just the active one).
        let keys = keys_for(c, req.outputs.iter().map(|o| o.id.as_str())).await?;
        match settle_swap(c, wallet, &batch, &req, &keys, true).await {
            Ok(_) => {}
            Err(e @ WalletCmdError::SwapUnsettled { .. }) => note(&e.to_string()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Notes worth exactly `amount_sat`, swapping first when no set of held notes adds up to
/// it (the change stays in the wallet). The notes stay in the wallet.
async fn exact_notes(
    c: &Client,
    wallet: &mut Wallet,
    amount_sat: u64,
) -> Result<Vec<Proof>, WalletCmdError> {
    resume_swaps(c, wallet).await?;
    if let Some(exact) = wallet.exact(amount_sat) {
        return Ok(exact);
    }
    let keys = mint_keys(c).await?;
    let active = active_keyset(&keys)?;
    let sets = keysets(c).await?;
    // Inputs that cover the amount and the fee of spending them.
    let mut target = amount_sat;
    let inputs = loop {
        let inputs = wallet.cover(target)?;
        let need = amount_sat + input_fee(&inputs, &sets);
        if inputs.iter().map(|p| p.amount).sum::<u64>() >= need {
            break inputs;
        }
        target = need;
    };
    let sum: u64 = inputs.iter().map(|p| p.amount).sum();
    let change = sum - amount_sat - input_fee(&inputs, &sets);
    let mut amounts = split(amount_sat);
    amounts.extend(split(change));
    let batch = format!("swap-{}", now_unix_nanos());
    let req = wallet.begin_swap(&batch, inputs, true, None, &active, &amounts)?;
    settle_swap(c, wallet, &batch, &req, &keys, false).await?;
    wallet
        .exact(amount_sat)
        .ok_or(WalletCmdError::Wallet(WalletError::NotExact(amount_sat)))
}

fn now_unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Takes notes worth exactly `amount_sat` (swapping for change first if needed) and wraps
/// them as a lease `payment`; they go to the outbox as a token in the same write that
/// takes them out.
pub async fn credit_payment(
    c: &Client,
    wallet: &mut Wallet,
    amount_sat: u64,
    mint_url: &str,
) -> Result<PaymentBody, WalletCmdError> {
    let proofs = exact_notes(c, wallet, amount_sat).await?;
    let token = token_of(mint_url, &proofs).encode_v4()?;
    wallet.send_out(&proofs, token, now_unix())?;
    Ok(PaymentBody::Credit(CreditPayment { proofs }))
}

fn token_of(mint_url: &str, proofs: &[Proof]) -> Token {
    Token {
        mint: mint_url.to_string(),
        unit: Some("sat".into()),
        memo: None,
        proofs: proofs.to_vec(),
    }
}

/// `wallet send`: exactly `amount_sat` out of the wallet as a token (`cashuB`, or `cashuA`
/// with `v3`), recorded in the outbox before it is returned for printing.
pub async fn send_token(
    c: &Client,
    wallet: &mut Wallet,
    amount_sat: u64,
    mint_url: &str,
    v3: bool,
) -> Result<String, WalletCmdError> {
    let proofs = exact_notes(c, wallet, amount_sat).await?;
    let t = token_of(mint_url, &proofs);
    let text = if v3 { t.encode_v3() } else { t.encode_v4()? };
    wallet.send_out(&proofs, text.clone(), now_unix())?;
    Ok(text)
}

/// What `wallet receive` did.
pub struct Received {
    pub amount_sat: u64,
    /// The token had been received before (a retried command): nothing new came in.
    pub again: bool,
}

/// The digest that names a token across retries: SHA-256 of its secrets, sorted.
fn token_digest(t: &Token) -> String {
    let mut secrets: Vec<&str> = t.proofs.iter().map(|p| p.secret.as_str()).collect();
    secrets.sort_unstable();
    hex::encode(sha256::Hash::hash(secrets.join("\n").as_bytes()).to_byte_array())
}

/// `wallet receive`: swaps a token's notes for new ones of this wallet. The token must be
/// this mint's (its keysets are the mint's, whatever URL it names); DLEQ proofs it carries
/// are checked first. Safe to repeat: the swap is recorded before it is sent, and a token
/// received before is answered from the wallet.
pub async fn receive_token(
    c: &Client,
    wallet: &mut Wallet,
    text: &str,
) -> Result<Received, WalletCmdError> {
    let mut token = Token::decode(text)?;
    if let Some(unit) = token.unit.as_deref().filter(|u| *u != "sat") {
        return Err(WalletCmdError::Unit(unit.to_string()));
    }
    resume_swaps(c, wallet).await?;
    let digest = token_digest(&token);
    if let Some(amount_sat) = wallet.received_before(&digest) {
        return Ok(Received {
            amount_sat,
            again: true,
        });
    }
    let sets = keysets(c).await?;
    let known: Vec<&str> = sets.keysets.iter().map(|k| k.id.as_str()).collect();
    token.resolve_keyset_ids(&known)?;
    let mut keys = KeysResponse {
        keysets: Vec::new(),
    };
    for p in &token.proofs {
        if !known.contains(&p.id.as_str()) {
            return Err(WalletCmdError::OtherMint {
                mint: token.mint.clone(),
                keyset: p.id.clone(),
            });
        }
        if !keys.keysets.iter().any(|k| k.id == p.id) {
            keys.keysets.extend(keys_of(c, &p.id).await?.keysets);
        }
    }
    for (i, p) in token.proofs.iter().enumerate() {
        check_proof_dleq(i, p, &keys.keysets)?;
    }
    let active_keys = mint_keys(c).await?;
    let active = active_keyset(&active_keys)?;
    let amount = token.amount()?;
    let fee = input_fee(&token.proofs, &sets);
    if fee >= amount && fee > 0 {
        return Err(WalletCmdError::BelowFee { amount, fee });
    }
    let batch = format!("receive-{}", &digest[..32]);
    let req = wallet.begin_swap(
        &batch,
        token.proofs,
        false,
        Some(digest),
        &active,
        &split(amount - fee),
    )?;
    let got = settle_swap(c, wallet, &batch, &req, &active_keys, false).await?;
    Ok(Received {
        amount_sat: got,
        again: false,
    })
}

/// What `wallet restore` found.
#[derive(Serialize)]
pub struct Restored {
    /// Notes the mint had signed for this seed.
    pub found: usize,
    /// Of those, unspent and new to this wallet: the sat added.
    pub restored_sat: u64,
    pub balance_sat: u64,
}

/// `wallet restore`: makes the wallet deterministic with `seed` and asks the mint (NUT-09)
/// for every signature it holds on this seed's outputs, keyset by keyset, in batches of
/// 100 counters until three batches in a row come back empty (NUT-13). Notes the mint says
/// are spent (NUT-07) are dropped; each keyset's counter is set past the last one used.
pub async fn restore(
    c: &Client,
    wallet: &mut Wallet,
    seed: Seed,
) -> Result<Restored, WalletCmdError> {
    wallet.set_seed(seed)?;
    resume_swaps(c, wallet).await?;
    let sets = keysets(c).await?;
    let mut found = 0;
    let mut restored_sat = 0;
    for set in sets.keysets.iter().filter(|k| k.unit == "sat") {
        let keys = keys_of(c, &set.id).await?;
        let mut proofs = Vec::new();
        let mut next_counter = 0u32;
        let mut start = 0u32;
        let mut empty_run = 0;
        while empty_run < RESTORE_EMPTY_RUN {
            let blanks = wallet.restore_blanks(&set.id, start, RESTORE_BATCH)?;
            let outputs: Vec<BlindedMessage> = blanks.iter().map(|b| b.message().clone()).collect();
            let r: RestoreResponse = post(
                c,
                "POST /v1/restore",
                "/v1/restore",
                &RestoreRequest { outputs },
            )
            .await?;
            let sigs = r.signatures;
            if r.outputs.len() != sigs.len() {
                return Err(WalletCmdError::Field {
                    what: "POST /v1/restore",
                    field: "signatures",
                });
            }
            if sigs.is_empty() {
                empty_run += 1;
            } else {
                empty_run = 0;
            }
            for (out, sig) in r.outputs.iter().zip(&sigs) {
                let blank = blanks.iter().find(|b| b.message().b_ == out.b_).ok_or(
                    WalletCmdError::Field {
                        what: "POST /v1/restore",
                        field: "outputs (one this wallet did not ask about)",
                    },
                )?;
                proofs.push(Wallet::restored_proof(blank, sig, &keys.keysets)?);
                next_counter = next_counter.max(blank.counter + 1);
            }
            start += RESTORE_BATCH;
        }
        found += proofs.len();
        let st = states(c, &proofs).await?;
        let unspent: Vec<Proof> = proofs
            .into_iter()
            .zip(st)
            .filter(|(_, s)| *s == ProofState::Unspent)
            .map(|(p, _)| p)
            .collect();
        restored_sat += wallet.add_restored(&set.id, next_counter, unspent)?;
    }
    Ok(Restored {
        found,
        restored_sat,
        balance_sat: wallet.balance_sat(),
    })
}

/// What `wallet drop-swap` did with a swap.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct DroppedSwap {
    /// The swap's name.
    pub batch: String,
    /// Whether it was given up (false: it was settled after all).
    pub dropped: bool,
    /// Sat the mint had signed on its outputs after all (the swap is settled, not dropped).
    pub settled_sat: u64,
    /// Sat of its inputs the mint calls unspent, back in the wallet (its own notes only).
    pub returned_sat: u64,
    /// Sat of its inputs spent by some other request: given up.
    pub given_up_sat: u64,
}

/// `wallet drop-swap BATCH`: gives up a swap that stays unsettled because its inputs were
/// spent by another request (a received token whose sender spent it twice while this
/// wallet's first swap of it lost its reply). It is asked once more first: signatures the
/// mint holds on its outputs (NUT-09) settle it; an input still pending (NUT-07) means a
/// request spending it is in flight, and nothing is dropped. Otherwise its blanks are
/// forgotten and those of its inputs still unspent, when they were this wallet's, come back.
///
/// Only the tenant can know that nobody else will answer for the outputs (on a fleet, a
/// host other than the one asked may have committed the first request): hence a command,
/// not something a wallet run does by itself.
pub async fn drop_swap(
    c: &Client,
    wallet: &mut Wallet,
    batch: &str,
) -> Result<DroppedSwap, WalletCmdError> {
    let Some((_, req)) = wallet.pending_swaps().into_iter().find(|(b, _)| b == batch) else {
        return Err(WalletCmdError::NoSuchSwap(batch.to_string()));
    };
    let not_dropped = |why: String| WalletCmdError::NotDropped {
        batch: batch.to_string(),
        why,
    };
    let settled_sat = restore_batch(c, wallet, batch, &req.outputs).await?;
    if wallet.pending_outputs(batch).is_none() {
        return Ok(DroppedSwap {
            batch: batch.to_string(),
            dropped: false,
            settled_sat,
            returned_sat: 0,
            given_up_sat: 0,
        });
    }
    if settled_sat > 0 {
        // One request signs all of a swap's outputs or none: some signed means a request
        // of this swap committed, and the rest may yet be found.
        return Err(not_dropped(format!(
            "the mint signed {settled_sat} sat of its outputs (kept in the wallet), not all"
        )));
    }
    let st = states(c, &req.inputs).await?;
    if st.contains(&ProofState::Pending) {
        return Err(not_dropped(
            "an input is pending at the mint: a request spending it is in flight; \
             ask again once it is done"
                .to_string(),
        ));
    }
    let ours = wallet.swap_is_ours(batch);
    let (mut back, mut returned_sat, mut given_up_sat) = (Vec::new(), 0, 0);
    for (p, s) in req.inputs.iter().zip(st) {
        if s == ProofState::Unspent && ours {
            returned_sat += p.amount;
            back.push(p.clone());
        } else if s != ProofState::Unspent {
            given_up_sat += p.amount;
        }
    }
    wallet.abort_swap(batch, back)?;
    Ok(DroppedSwap {
        batch: batch.to_string(),
        dropped: true,
        settled_sat: 0,
        returned_sat,
        given_up_sat,
    })
}

/// `wallet check`: drops held notes the mint says are spent and outbox tokens whose notes
/// are all spent (claimed). Returns (notes dropped, outbox entries dropped).
pub async fn check(c: &Client, wallet: &mut Wallet) -> Result<(usize, usize), WalletCmdError> {
    resume_swaps(c, wallet).await?;
    let held = wallet.proofs().to_vec();
    let st = states(c, &held).await?;
    let spent: Vec<String> = held
        .iter()
        .zip(st)
        .filter(|(_, s)| *s == ProofState::Spent)
        .map(|(p, _)| p.secret.clone())
        .collect();
    let mut claimed = Vec::new();
    for sent in wallet.outbox() {
        let Ok(t) = Token::decode(&sent.token) else {
            continue;
        };
        if states(c, &t.proofs)
            .await?
            .iter()
            .all(|s| *s == ProofState::Spent)
        {
            claimed.push(sent.token.clone());
        }
    }
    wallet.drop_spent(&spent)?;
    wallet.drop_sent(&claimed)?;
    Ok((spent.len(), claimed.len()))
}

/// A stop that collected its change: the daemon's answer (read, and as received), the sat
/// that came into the wallet, and whether it was an earlier stop sent again.
pub struct Stopped {
    pub reply: StopResponse,
    pub body: Bytes,
    pub received_sat: u64,
    pub resent: bool,
}

/// Stops lease `id` and keeps its change in `wallet`.
///
/// The blank outputs are saved in the wallet (batch `change-ID`) before the stop is sent,
/// and stay there until the change is unblinded and kept. A run whose reply was lost
/// (coinopd restarted, the connection dropped) leaves them behind, and the next run sends
/// the very same outputs again: coinopd answers the same stop with the same signatures
/// (fresh outputs would get 409 `already_refunded`, and the change would be lost).
pub async fn stop_with_change(
    c: &Client,
    wallet: &mut Wallet,
    id: &str,
    token: &str,
) -> Result<Stopped, WalletCmdError> {
    let batch = format!("{}{id}", crate::wallet::CHANGE_BATCH_PREFIX);
    // Where kept blanks the host refused wait, in case the request that carried them first
    // commits after all (see below).
    let parked = format!("{batch}-refused");
    let mut resent = false;
    let (reply, body): (StopResponse, _) = loop {
        let kept = wallet.pending_outputs(&batch);
        let resending = kept.is_some();
        resent |= resending;
        let outputs = match kept {
            Some(outputs) => outputs,
            None => {
                let path = format!("/v1/leases/{id}");
                let (lease, _): (LeaseView, _) =
                    call_ok(c, "GET /v1/leases/{id}", ("GET", &path), Some(token), None).await?;
                let balance_sat = lease.balance_msat.sat_floor();
                // The refund can only be smaller than the balance seen now, and a number
                // needs at most as many power-of-two notes as it has bits: this many blanks
                // suffice.
                let blanks = (u64::BITS - balance_sat.leading_zeros()).max(1) as usize;
                let active = active_keyset(&mint_keys(c).await?)?;
                wallet.new_outputs(&batch, &active, &vec![1; blanks])?
            }
        };
        let stop_path = format!("/v1/leases/{id}/stop");
        let ask = StopRequest {
            outputs: Some(outputs.clone()),
        };
        const STOP: &str = "POST /v1/leases/{id}/stop";
        match call_ok(
            c,
            STOP,
            ("POST", &stop_path),
            Some(token),
            Some(encode(STOP, &ask)?),
        )
        .await
        {
            Ok(answer) => {
                // A lease is refunded once: blanks parked by an earlier run will never be
                // signed now.
                wallet.forget_outputs(&parked)?;
                break answer;
            }
            // Kept blanks the host refuses as outputs (their keyset rotated out, a top-up
            // since that needs more of them): the stop they were made for did not happen
            // with them yet, or its repeat would have been answered with its signatures.
            // The mint says (NUT-09) whether any was signed; if none was, they are parked
            // (a first request still in flight may yet commit onto them: see the 409 below)
            // and the stop is made once more with new ones, rather than refused on every
            // run while the lease goes on running and paying.
            Err(
                refusal @ WalletCmdError::Api {
                    status: 400 | 404 | 422,
                    ..
                },
            ) if resending => {
                let found = restore_batch(c, wallet, &batch, &outputs).await?;
                if found > 0 {
                    // The lease was refunded onto these: nothing else of it will be signed.
                    wallet.forget_outputs(&batch)?;
                    wallet.forget_outputs(&parked)?;
                    return Err(WalletCmdError::ChangeRecovered {
                        sat: found,
                        refusal: Box::new(refusal),
                    });
                }
                wallet.park_outputs(&batch, &parked)?;
                crate::exit::note(&format!(
                    "the change outputs kept from an earlier stop of {id} were refused and \
                     not signed ({refusal}): sending the stop with new ones"
                ));
            }
            // Refunded onto other outputs: those an earlier run parked, if the request that
            // carried them committed after all (it was still in flight when they were
            // refused). The mint has their signatures.
            Err(refusal @ WalletCmdError::Api { status: 409, .. }) => {
                let Some(kept) = wallet.pending_outputs(&parked) else {
                    return Err(refusal);
                };
                let found = restore_batch(c, wallet, &parked, &kept).await?;
                if found == 0 {
                    return Err(refusal);
                }
                wallet.forget_outputs(&parked)?;
                // This run's blanks were refused: nothing can be signed on them now.
                wallet.forget_outputs(&batch)?;
                return Err(WalletCmdError::ChangeRecovered {
                    sat: found,
                    refusal: Box::new(refusal),
                });
            }
            Err(e) => return Err(e),
        }
    };
    let sigs = reply.signatures.as_deref().unwrap_or_default();
    // The keyset each signature names: kept outputs of a stop whose reply was lost name
    // the keyset active then, which a rotation since has made inactive (and /v1/keys no
    // longer lists).
    let keys = keys_for(c, sigs.iter().map(|s| s.id.as_str())).await?;
    let received_sat = wallet.receive(&batch, &keys.keysets, sigs)?;
    // What was signed (not what was added: notes a `wallet restore` found first are held
    // already) must be the refund the host says it made; the notes are kept either way.
    let signed_sat = sigs
        .iter()
        .fold(0u64, |sum, s| sum.saturating_add(s.amount));
    if reply.signatures.is_some() && signed_sat != reply.refund_sat {
        return Err(WalletCmdError::ChangeShort {
            signed_sat,
            refund_sat: reply.refund_sat,
        });
    }
    Ok(Stopped {
        reply,
        body,
        received_sat,
        resent,
    })
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixListener;
    use std::path::Path;
    use std::sync::Arc;

    use payment::credit::{CreditError, Mint, MintLimits};
    use payment::spent_set::SqliteSpentSet;

    use super::*;

    /// How the test daemon answers one request: status and JSON body, from the request
    /// line (`POST /v1/swap`) and the body.
    type Answer = dyn Fn(&str, &[u8]) -> (u16, String) + Send + 'static;

    /// A daemon on `socket` answering each request with `answer`, until the test ends.
    fn test_daemon(socket: &Path, answer: Box<Answer>) {
        let listener = UnixListener::bind(socket).expect("bind");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let Ok(clone) = stream.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(clone);
                let mut first = String::new();
                if reader.read_line(&mut first).unwrap_or(0) == 0 {
                    continue;
                }
                let mut length = 0;
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 2 {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let asked = first.rsplit_once(' ').map_or("", |(a, _)| a);
                let (status, reply) = answer(asked, &body);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
            }
        });
    }

    fn json(v: &impl Serialize) -> String {
        serde_json::to_string(v).expect("JSON")
    }

    fn open_mint(dir: &Path) -> Arc<Mint> {
        let spent = SqliteSpentSet::open(&dir.join("spent.db")).expect("spent set");
        Arc::new(Mint::open(dir, Arc::new(spent), MintLimits::default()).expect("mint"))
    }

    /// A mint's answer as coinopd gives it: the reply, or 400 with the NUT-00 error.
    fn cashu<T: Serialize>(r: Result<T, CreditError>) -> (u16, String) {
        match r {
            Ok(v) => (200, json(&v)),
            Err(e) => (
                400,
                json(&CashuErrorResponse {
                    detail: e.to_string(),
                    code: e.cashu_code().unwrap_or(0),
                }),
            ),
        }
    }

    /// The Cashu routes of coinopd, served by a real mint; `swap` answers `POST /v1/swap`
    /// in its place when given.
    fn mint_routes(m: Arc<Mint>, swap: Option<(u16, String)>) -> Box<Answer> {
        Box::new(move |asked: &str, body: &[u8]| {
            // The tests' coinop sends well-formed requests: a bad one is a bug of the test.
            fn parse<T: DeserializeOwned>(body: &[u8]) -> T {
                serde_json::from_slice(body).expect("a request coinop sent is JSON")
            }
            match asked {
                "GET /v1/keys" => (200, json(&m.keys())),
                "POST /v1/swap" => match &swap {
                    Some(a) => a.clone(),
                    None => cashu(m.swap(&parse(body))),
                },
                "POST /v1/restore" => cashu(m.restore(&parse(body))),
                "POST /v1/checkstate" => cashu(m.check_state(&parse(body))),
                other => match other.strip_prefix("GET /v1/keys/") {
                    Some(id) => cashu(m.keys_for(id)),
                    None => (404, "{}".into()),
                },
            }
        })
    }

    /// A wallet holding one 8-sat note, with a swap of it recorded (blanks kept) as a run
    /// whose reply was lost leaves it; returns the request that run sent.
    fn wallet_with_a_lost_swap(m: &Mint, path: &Path) -> (Wallet, SwapRequest) {
        let mut w = Wallet::open(path).expect("wallet");
        let outputs = w
            .new_outputs("mint-1", &m.active_keyset_id(), &[8])
            .expect("blanks");
        let sigs = m.mint(8, &outputs).expect("minted");
        w.receive("mint-1", &m.keys().keysets, &sigs).expect("kept");
        let inputs = w.proofs().to_vec();
        let req = w
            .begin_swap(
                "swap-1",
                inputs,
                true,
                None,
                &m.active_keyset_id(),
                &[1, 2, 1, 4],
            )
            .expect("recorded");
        (w, req)
    }

    async fn resume(w: &mut Wallet, socket: &Path) -> Result<(), WalletCmdError> {
        resume_swaps(&Client::new(socket), w).await
    }

    /// The resend of a swap that committed is refused (the keyset rotated since: 12002):
    /// the mint's restore gives the signatures, and the notes are kept.
    #[tokio::test(flavor = "current_thread")]
    async fn a_committed_swap_refused_on_resend_is_settled_by_restore() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = open_mint(dir.path());
        let (mut w, req) = wallet_with_a_lost_swap(&m, &dir.path().join("w.json"));
        m.swap(&req).expect("committed; its reply is lost");
        m.rotate().expect("rotate");
        let socket = dir.path().join("d.sock");
        test_daemon(&socket, mint_routes(m.clone(), None));
        resume(&mut w, &socket).await.expect("settled");
        assert_eq!(w.balance_sat(), 8);
        assert!(w.pending_swaps().is_empty());
    }

    /// The resend is refused and its inputs are spent, but the mint signed none of its
    /// blanks (another request spent them, or the mint cannot tell): the blanks are kept
    /// for a later run, and the command goes on.
    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_resend_with_spent_inputs_keeps_its_blanks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_m, mut w, req, socket) = a_swap_spent_elsewhere(dir.path());
        resume(&mut w, &socket).await.expect("the command goes on");
        assert_eq!(w.pending_swaps(), vec![("swap-1".to_string(), req)], "kept");
        assert_eq!(w.balance_sat(), 0);
    }

    /// 11002: the first request is still in flight (a fleet). Kept for the next run,
    /// whatever the inputs' state says now.
    #[tokio::test(flavor = "current_thread")]
    async fn a_resend_meeting_its_request_in_flight_keeps_its_blanks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = open_mint(dir.path());
        let (mut w, req) = wallet_with_a_lost_swap(&m, &dir.path().join("w.json"));
        let pending = json(&CashuErrorResponse {
            detail: "proofs are pending".into(),
            code: CASHU_PENDING,
        });
        let socket = dir.path().join("d.sock");
        test_daemon(&socket, mint_routes(m.clone(), Some((400, pending))));
        resume(&mut w, &socket).await.expect("the command goes on");
        assert_eq!(w.pending_swaps(), vec![("swap-1".to_string(), req)], "kept");
    }

    /// A refused resend whose inputs are all unspent never committed: the swap is given up
    /// and the wallet's own note comes back.
    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_resend_with_unspent_inputs_gives_the_notes_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = open_mint(dir.path());
        let (mut w, _) = wallet_with_a_lost_swap(&m, &dir.path().join("w.json"));
        // Never committed, and now refused (its blanks name a keyset rotated out).
        m.rotate().expect("rotate");
        let socket = dir.path().join("d.sock");
        test_daemon(&socket, mint_routes(m.clone(), None));
        let err = resume(&mut w, &socket).await.expect_err("refused");
        assert!(
            matches!(
                err,
                WalletCmdError::Api {
                    code: Some(12002),
                    ..
                }
            ),
            "{err}"
        );
        assert!(w.pending_swaps().is_empty(), "given up");
        assert_eq!(w.balance_sat(), 8, "the note is back");
    }

    /// A test daemon (socket in `dir`) serving `m`'s routes, whose stop of lease `l1`
    /// answers a refund of `refund_sat` with `sigs` as its change; returns the socket.
    fn daemon_stopping_l1(
        dir: &Path,
        m: &Arc<Mint>,
        refund_sat: u64,
        sigs: &[payment::credit::nut_types::BlindSignature],
    ) -> std::path::PathBuf {
        let stopped = serde_json::json!({"state": "stopped",
            "refund_msat": refund_sat * 1000, "refund_sat": refund_sat, "residual_msat": 0,
            "change_outputs_needed": 2, "signatures": sigs})
        .to_string();
        let routes = mint_routes(m.clone(), None);
        let socket = dir.join("coinopd.sock");
        test_daemon(
            &socket,
            Box::new(move |asked: &str, body: &[u8]| match asked {
                "POST /v1/leases/l1/stop" => (200, stopped.clone()),
                _ => routes(asked, body),
            }),
        );
        socket
    }

    /// The outputs of a stop whose reply was lost are kept in the wallet; the keyset they
    /// name is rotated out before the rerun, and the daemon answers the rerun with the
    /// signatures made then, on that keyset, which `/v1/keys` no longer lists. The change
    /// is unblinded with that keyset's own keys and kept.
    #[tokio::test(flavor = "current_thread")]
    async fn change_signed_on_an_inactive_keyset_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = open_mint(dir.path());
        let old = m.active_keyset_id();
        let mut w = Wallet::open(&dir.path().join("wallet.json")).expect("wallet");
        let outputs = w
            .new_outputs("change-l1", &old, &[1, 1, 1, 1])
            .expect("blanks");
        // The refund of the first run: 2 sat on the two first outputs, on the keyset then.
        let sigs = m.mint(2, &outputs[..2]).expect("signed");
        let new = m.rotate().expect("rotate");
        assert_ne!(new, old);
        let socket = daemon_stopping_l1(dir.path(), &m, 2, &sigs);

        let c = Client::new(&socket);
        let got = stop_with_change(&c, &mut w, "l1", "token")
            .await
            .expect("the change is kept");
        assert!(got.resent, "the kept outputs were sent");
        assert_eq!(got.received_sat, 2);
        assert_eq!(w.balance_sat(), 2);
        assert!(w.pending_outputs("change-l1").is_none(), "settled");
        // The notes are real: the mint takes them (old keysets still redeem).
        let notes = w.proofs().to_vec();
        assert_eq!(m.redeem(&notes, "test").expect("redeem"), 2_000);
    }

    /// `GET /v1/leases/l1`'s answer for a running lease holding `balance_msat`.
    fn lease_json(balance_msat: u64) -> String {
        serde_json::json!({"lease_id": "l1", "state": "running", "stop_reason": null,
            "vcpus": 1, "mem_mib": 64, "image": "test", "balance_msat": balance_msat,
            "used": {"vcpu_us": 0, "mem_mib_us": 0, "cgroup_cpu_us": null},
            "estimated_remaining_s": 10, "debited_msat": 0, "refunded_msat": null,
            "residual_msat": null, "created_at": 0, "updated_at": 0, "boot": null,
            "network": null})
        .to_string()
    }

    /// The outputs of a stop whose reply was lost are kept; before the rerun the host
    /// refuses them (here: their keyset rotated out and the stop never happened). The mint
    /// signed none of them (NUT-09), so they are dropped and the stop goes with new ones,
    /// instead of being refused on every run while the lease goes on running.
    #[tokio::test(flavor = "current_thread")]
    async fn kept_change_outputs_the_host_refuses_are_replaced_once_none_was_signed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = open_mint(dir.path());
        let old = m.active_keyset_id();
        let mut w = Wallet::open(&dir.path().join("wallet.json")).expect("wallet");
        w.new_outputs("change-l1", &old, &[1, 1, 1, 1])
            .expect("blanks");
        let new = m.rotate().expect("rotate");
        let routes = mint_routes(m.clone(), None);
        let signer = m.clone();
        let socket = dir.path().join("coinopd.sock");
        test_daemon(
            &socket,
            Box::new(move |asked: &str, body: &[u8]| match asked {
                "GET /v1/leases/l1" => (200, lease_json(3_000)),
                "POST /v1/leases/l1/stop" => {
                    let ask: StopRequest = serde_json::from_slice(body).expect("stop");
                    let outs = ask.outputs.expect("outputs");
                    if outs[0].id == old {
                        (
                            422,
                            r#"{"error":{"code":"inactive_keyset","message":"no"}}"#.into(),
                        )
                    } else {
                        // 3 sat of change: 1 and 2 on the first two blanks.
                        let mut two = outs[..2].to_vec();
                        two[1].amount = 2;
                        let sigs = signer.mint(3, &two).expect("signed");
                        (
                            200,
                            serde_json::json!({"state": "stopped", "refund_msat": 3000,
                                "refund_sat": 3, "residual_msat": 0,
                                "change_outputs_needed": 2, "signatures": sigs})
                            .to_string(),
                        )
                    }
                }
                _ => routes(asked, body),
            }),
        );
        let c = Client::new(&socket);
        let got = stop_with_change(&c, &mut w, "l1", "token")
            .await
            .expect("stopped with new outputs");
        assert!(got.resent);
        assert_eq!(got.received_sat, 3);
        assert_eq!(w.balance_sat(), 3);
        assert!(w.proofs().iter().all(|p| p.id == new));
        assert!(w.pending_outputs("change-l1").is_none(), "settled");
    }

    /// Kept outputs refused while the request that first carried them is still in flight
    /// (a fleet host, its refund reserved but not committed, and the keyset rotated
    /// meanwhile): they are parked, not forgotten, and when the stop with new outputs is
    /// answered 409 (refunded onto the first ones after all), the parked blanks' change is
    /// found with the mint and kept.
    #[tokio::test(flavor = "current_thread")]
    async fn refused_kept_outputs_a_late_commit_signs_are_not_lost() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().expect("tempdir");
        let m = open_mint(dir.path());
        let old = m.active_keyset_id();
        let mut w = Wallet::open(&dir.path().join("wallet.json")).expect("wallet");
        let kept = w
            .new_outputs("change-l1", &old, &[1, 1, 1, 1])
            .expect("blanks");
        // What the first request's late commit signs: 3 sat on the first two blanks.
        let mut two = kept[..2].to_vec();
        two[1].amount = 2;
        let sigs = m.mint(3, &two).expect("signed");
        // The mint's NUT-09 answer once that commit is in (its record of what it signed).
        let restored = serde_json::json!({"outputs": two, "signatures": sigs}).to_string();
        m.rotate().expect("rotate");
        let committed = Arc::new(AtomicBool::new(false));
        let seen = committed.clone();
        let routes = mint_routes(m.clone(), None);
        let socket = dir.path().join("coinopd.sock");
        test_daemon(
            &socket,
            Box::new(move |asked: &str, body: &[u8]| match asked {
                "GET /v1/leases/l1" => (200, lease_json(3_000)),
                // Until the first request commits, the mint has signed none of them.
                "POST /v1/restore" if !seen.load(Ordering::SeqCst) => {
                    (200, r#"{"outputs":[],"signatures":[]}"#.into())
                }
                "POST /v1/restore" => (200, restored.clone()),
                "POST /v1/leases/l1/stop" => {
                    let ask: StopRequest = serde_json::from_slice(body).expect("stop");
                    if ask.outputs.expect("outputs")[0].id == old {
                        (
                            422,
                            r#"{"error":{"code":"inactive_keyset","message":"no"}}"#.into(),
                        )
                    } else {
                        seen.store(true, Ordering::SeqCst);
                        (
                            409,
                            r#"{"error":{"code":"already_refunded","message":"done"}}"#.into(),
                        )
                    }
                }
                _ => routes(asked, body),
            }),
        );
        let c = Client::new(&socket);
        let Err(err) = stop_with_change(&c, &mut w, "l1", "token").await else {
            panic!("the stop was made earlier: not this run's success");
        };
        assert!(
            matches!(err, WalletCmdError::ChangeRecovered { sat: 3, .. }),
            "{err}"
        );
        assert!(committed.load(Ordering::SeqCst));
        assert_eq!(w.balance_sat(), 3, "the late commit's change is kept");
        assert!(w.pending_outputs("change-l1").is_none());
        assert!(w.pending_outputs("change-l1-refused").is_none());
    }

    /// A host whose change is worth less than the refund it reports: the notes it did sign
    /// are kept, and the stop says the change is short (not a success).
    #[tokio::test(flavor = "current_thread")]
    async fn change_short_of_the_reported_refund_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = open_mint(dir.path());
        let mut w = Wallet::open(&dir.path().join("wallet.json")).expect("wallet");
        let outputs = w
            .new_outputs("change-l1", &m.active_keyset_id(), &[1, 1, 1, 1])
            .expect("blanks");
        let sigs = m.mint(2, &outputs[..2]).expect("signed");
        let socket = daemon_stopping_l1(dir.path(), &m, 5, &sigs);
        let c = Client::new(&socket);
        let Err(err) = stop_with_change(&c, &mut w, "l1", "token").await else {
            panic!("short change taken as a success");
        };
        assert!(
            matches!(
                err,
                WalletCmdError::ChangeShort {
                    signed_sat: 2,
                    refund_sat: 5
                }
            ),
            "{err}"
        );
        assert_eq!(w.balance_sat(), 2, "what was signed is kept");
    }

    /// A wallet with a lost swap whose inputs another request spent (as a token's sender
    /// spending it twice leaves one), its mint served on a socket; returns what resume
    /// keeps.
    fn a_swap_spent_elsewhere(dir: &Path) -> (Arc<Mint>, Wallet, SwapRequest, std::path::PathBuf) {
        let m = open_mint(dir);
        let (w, req) = wallet_with_a_lost_swap(&m, &dir.join("w.json"));
        let elsewhere = Wallet::open(&dir.join("other.json"))
            .expect("wallet")
            .new_outputs("x", &m.active_keyset_id(), &[8])
            .expect("blanks");
        m.swap(&SwapRequest {
            inputs: req.inputs.clone(),
            outputs: elsewhere,
        })
        .expect("the inputs spent by another request");
        let socket = dir.join("d.sock");
        test_daemon(&socket, mint_routes(m.clone(), None));
        (m, w, req, socket)
    }

    /// `wallet drop-swap`: a swap whose inputs another request spent, which every run
    /// keeps, is given up on request, its inputs' worth said; the wallet goes on without it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_swap_whose_inputs_were_spent_elsewhere_is_dropped_on_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_m, mut w, req, socket) = a_swap_spent_elsewhere(dir.path());
        resume(&mut w, &socket).await.expect("the command goes on");
        assert_eq!(
            w.pending_swaps(),
            vec![("swap-1".to_string(), req)],
            "kept by a run"
        );
        let c = Client::new(&socket);
        let d = drop_swap(&c, &mut w, "swap-1").await.expect("dropped");
        assert_eq!(
            d,
            DroppedSwap {
                batch: "swap-1".into(),
                dropped: true,
                settled_sat: 0,
                returned_sat: 0,
                given_up_sat: 8,
            }
        );
        assert!(w.pending_swaps().is_empty());
        assert!(w.pending_outputs("swap-1").is_none(), "its blanks are gone");
        assert!(matches!(
            drop_swap(&c, &mut w, "swap-1").await,
            Err(WalletCmdError::NoSuchSwap(b)) if b == "swap-1"
        ));
        // Saved: the wallet opened again has no such swap either.
        drop(w);
        let again = Wallet::open(&dir.path().join("w.json")).expect("reopened");
        assert!(again.pending_swaps().is_empty());
    }

    /// A swap that committed after all (its reply lost) is settled by drop-swap, never
    /// dropped: the mint's signatures on its blanks come into the wallet.
    #[tokio::test(flavor = "current_thread")]
    async fn drop_swap_settles_a_swap_that_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = open_mint(dir.path());
        let (mut w, req) = wallet_with_a_lost_swap(&m, &dir.path().join("w.json"));
        m.swap(&req).expect("committed; its reply is lost");
        let socket = dir.path().join("d.sock");
        test_daemon(&socket, mint_routes(m.clone(), None));
        let d = drop_swap(&Client::new(&socket), &mut w, "swap-1")
            .await
            .expect("settled");
        assert!(!d.dropped);
        assert_eq!(d.settled_sat, 8);
        assert_eq!(w.balance_sat(), 8);
        assert!(w.pending_swaps().is_empty());
    }

    /// An input the mint holds as pending (a request spending it in flight, which may be
    /// this swap's own first one) keeps the swap: nothing is dropped.
    #[tokio::test(flavor = "current_thread")]
    async fn drop_swap_keeps_a_swap_with_an_input_in_flight() {
        use payment::spent_set::{SpendState, SpentSet};
        let dir = tempfile::tempdir().expect("tempdir");
        let spent =
            Arc::new(SqliteSpentSet::open(&dir.path().join("spent.db")).expect("spent set"));
        let m =
            Arc::new(Mint::open(dir.path(), spent.clone(), MintLimits::default()).expect("mint"));
        let (mut w, req) = wallet_with_a_lost_swap(&m, &dir.path().join("w.json"));
        let keys = m.validate_inputs(&req.inputs).expect("valid").keys;
        spent
            .claim(&keys, SpendState::Pending, "a request in flight")
            .expect("claimed pending");
        let socket = dir.path().join("d.sock");
        test_daemon(&socket, mint_routes(m.clone(), None));
        match drop_swap(&Client::new(&socket), &mut w, "swap-1").await {
            Err(e @ WalletCmdError::NotDropped { .. }) => {
                assert!(e.to_string().contains("pending"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(w.pending_swaps(), vec![("swap-1".to_string(), req)], "kept");
    }
}
