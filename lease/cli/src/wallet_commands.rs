//! What the CLI's `wallet` commands do against a daemon: mint credit on the regtest demo
//! chain, turn notes into a `payment` object, and collect a stopped lease's change, each
//! with the tenant's [`Wallet`] file on one side and coinopd's API on the other.

use coinop_proto::replies::StopResponse;
use coinop_proto::requests::{CreditPayment, PaymentBody, StopRequest};
use coinop_proto::LeaseView;
use hyper::body::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use payment::credit::amount::split;
use payment::credit::nut_types::{
    KeysResponse, MintOnchainRequest, MintOnchainResponse, MintQuoteOnchainRequest,
    MintQuoteOnchainResponse,
};

use crate::client::{Client, ClientError, Reply};
use crate::regtest_pay::{pay_quote_onchain, PayError};
use crate::wallet::{Wallet, WalletError};

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
    },
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
}

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
        return Err(WalletCmdError::Api {
            what,
            status: r.status,
            body: r.text(),
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
    // NUT-01: /v1/keys lists only active keysets; the first one signs.
    keys.keysets
        .first()
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

/// Takes notes worth at least `amount_sat` and wraps them as a lease `payment`.
pub fn credit_payment(wallet: &mut Wallet, amount_sat: u64) -> Result<PaymentBody, WalletCmdError> {
    let proofs = wallet.take(amount_sat)?;
    Ok(PaymentBody::Credit(CreditPayment { proofs }))
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
    let keys = mint_keys(c).await?;
    let batch = format!("change-{id}");
    let kept = wallet.pending_outputs(&batch);
    let resent = kept.is_some();
    let outputs = match kept {
        Some(outputs) => outputs,
        None => {
            let path = format!("/v1/leases/{id}");
            let (lease, _): (LeaseView, _) =
                call_ok(c, "GET /v1/leases/{id}", ("GET", &path), Some(token), None).await?;
            let balance_sat = lease.balance_msat.sat_floor();
            // The refund can only be smaller than the balance seen now, and a number needs
            // at most as many power-of-two notes as it has bits: this many blanks suffice.
            let blanks = (u64::BITS - balance_sat.leading_zeros()).max(1) as usize;
            wallet.new_outputs(&batch, &active_keyset(&keys)?, &vec![1; blanks])?
        }
    };
    let stop_path = format!("/v1/leases/{id}/stop");
    let ask = StopRequest {
        outputs: Some(outputs),
    };
    const STOP: &str = "POST /v1/leases/{id}/stop";
    let (reply, body): (StopResponse, _) = call_ok(
        c,
        STOP,
        ("POST", &stop_path),
        Some(token),
        Some(encode(STOP, &ask)?),
    )
    .await?;
    let sigs = reply.signatures.as_deref().unwrap_or_default();
    let received_sat = wallet.receive(&batch, &keys.keysets, sigs)?;
    Ok(Stopped {
        reply,
        body,
        received_sat,
        resent,
    })
}
