//! What the CLI's `wallet` commands do against a daemon: mint credit on the regtest demo
//! chain, turn notes into a `payment` object, and collect a stopped lease's change, each
//! with the tenant's [`Wallet`] file on one side and coinopd's API on the other.

use serde_json::{json, Value};
use thiserror::Error;

use payment::credit::amount::split;
use payment::credit::nut_types::{BlindSignature, KeysResponse};

use crate::client::{Client, ClientError, Reply};
use crate::regtest_pay::{pay_quote, PayError};
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
}

async fn call_ok(
    c: &Client,
    what: &'static str,
    (method, path): (&str, &str),
    token: Option<&str>,
    body: Option<Value>,
) -> Result<Value, WalletCmdError> {
    let bytes = body.map(|b| serde_json::to_vec(&b).expect("JSON values always encode"));
    let Reply { status, body } = c.call(method, path, token, bytes).await?;
    let text = String::from_utf8_lossy(&body).into_owned();
    if !(200..300).contains(&status) {
        return Err(WalletCmdError::Api {
            what,
            status,
            body: text,
        });
    }
    serde_json::from_str(&text).map_err(|_| WalletCmdError::Field {
        what,
        field: "(JSON body)",
    })
}

async fn mint_keys(c: &Client) -> Result<KeysResponse, WalletCmdError> {
    let v = call_ok(c, "GET /v1/keys", ("GET", "/v1/keys"), None, None).await?;
    serde_json::from_value(v).map_err(|_| WalletCmdError::Field {
        what: "GET /v1/keys",
        field: "keysets",
    })
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

fn signatures(v: &Value, what: &'static str) -> Result<Vec<BlindSignature>, WalletCmdError> {
    serde_json::from_value(v["signatures"].clone()).map_err(|_| WalletCmdError::Field {
        what,
        field: "signatures",
    })
}

/// Mints `amount_sat` of credit paid on the daemon's regtest chain into `wallet`.
pub async fn mint_regtest(
    c: &Client,
    wallet: &mut Wallet,
    amount_sat: u64,
) -> Result<u64, WalletCmdError> {
    const QUOTE: &str = "POST /v1/mint/quote/onchain";
    let body = json!({"amount": amount_sat, "unit": "sat"});
    let q = call_ok(
        c,
        QUOTE,
        ("POST", "/v1/mint/quote/onchain"),
        None,
        Some(body),
    )
    .await?;
    let quote = q["quote"].as_str().ok_or(WalletCmdError::Field {
        what: QUOTE,
        field: "quote",
    })?;
    let paid = pay_quote(c, quote).await?;
    let keys = mint_keys(c).await?;
    let batch = format!("mint-{quote}");
    let outputs = wallet.new_outputs(&batch, &active_keyset(&keys)?, &split(amount_sat))?;
    let body = json!({"payment": paid["onchain"], "outputs": outputs});
    const MINT: &str = "POST /v1/mint/onchain";
    let r = call_ok(c, MINT, ("POST", "/v1/mint/onchain"), None, Some(body)).await?;
    Ok(wallet.receive(&batch, &keys.keysets, &signatures(&r, MINT)?)?)
}

/// Takes notes worth at least `amount_sat` and wraps them as a lease `payment`.
pub fn credit_payment(wallet: &mut Wallet, amount_sat: u64) -> Result<Value, WalletCmdError> {
    let proofs = wallet.take(amount_sat)?;
    Ok(json!({"credit": {"proofs": proofs}}))
}

/// Stops lease `id` and keeps its change in `wallet`. Returns the daemon's reply and the sat
/// received.
pub async fn stop_with_change(
    c: &Client,
    wallet: &mut Wallet,
    id: &str,
    token: &str,
) -> Result<(Value, u64), WalletCmdError> {
    const SHOW: &str = "GET /v1/leases/{id}";
    let path = format!("/v1/leases/{id}");
    let lease = call_ok(c, SHOW, ("GET", &path), Some(token), None).await?;
    let balance_sat = lease["balance_msat"]
        .as_u64()
        .ok_or(WalletCmdError::Field {
            what: SHOW,
            field: "balance_msat",
        })?
        / 1000;
    // The refund can only be smaller than the balance seen now, and a number needs at most
    // as many power-of-two notes as it has bits: this many blanks always suffice.
    let blanks = (u64::BITS - balance_sat.leading_zeros()).max(1) as usize;
    let keys = mint_keys(c).await?;
    let batch = format!("change-{id}");
    let outputs = wallet.new_outputs(&batch, &active_keyset(&keys)?, &vec![1; blanks])?;
    const STOP: &str = "POST /v1/leases/{id}/stop";
    let stop_path = format!("/v1/leases/{id}/stop");
    let body = json!({"outputs": outputs});
    let r = call_ok(c, STOP, ("POST", &stop_path), Some(token), Some(body)).await?;
    let sigs = if r["signatures"].is_null() {
        Vec::new()
    } else {
        signatures(&r, STOP)?
    };
    let received = wallet.receive(&batch, &keys.keysets, &sigs)?;
    Ok((r, received))
}
