//! The tenant's side of payments, for scenarios that pay coinopd: a minimal Cashu wallet
//! (blind, unblind) that mints credit against a regtest payment, and on-chain payments for
//! a fresh quote, both through the lease crate's regtest payer as `coinop regtest pay` does.

use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
use bitcoin::secp256k1::{PublicKey, SecretKey};
use payment::credit::bdhke::{blind_message, unblind};
use payment::credit::nut_types::{BlindSignature, BlindedMessage, Proof};
use serde_json::{json, Value};

use crate::daemon_proc::Daemon;
use crate::error::BenchError;

fn err(detail: impl std::fmt::Display) -> BenchError {
    BenchError::Run {
        what: "payment setup".into(),
        detail: detail.to_string(),
    }
}

struct Blank {
    secret: String,
    r: SecretKey,
    msg: BlindedMessage,
}

fn blanks(keyset_id: &str, amounts: &[u64]) -> Result<Vec<Blank>, BenchError> {
    amounts
        .iter()
        .map(|&amount| {
            let mut bytes = [0u8; 32];
            OsRng.fill_bytes(&mut bytes);
            let secret = hex::encode(bytes);
            let r = SecretKey::new(&mut OsRng);
            let b_ = blind_message(secret.as_bytes(), &r).map_err(err)?;
            Ok(Blank {
                secret,
                r,
                msg: BlindedMessage {
                    amount,
                    id: keyset_id.to_string(),
                    b_: b_.to_string(),
                },
            })
        })
        .collect()
}

fn ok_json(r: coinop_cli::client::Reply, what: &str) -> Result<Value, BenchError> {
    if r.status != 200 {
        return Err(err(format!("{what}: HTTP {}: {}", r.status, r.text())));
    }
    Ok(r.json())
}

/// Mints proofs of exactly `amounts` (each a power of two, in sat) in one mint operation.
pub async fn mint_proofs(d: &Daemon, amounts: &[u64]) -> Result<Vec<Proof>, BenchError> {
    let keys = ok_json(d.call("GET", "/v1/keys", None, None).await?, "GET /v1/keys")?;
    let ks = &keys["keysets"][0];
    let keyset_id = ks["id"].as_str().ok_or_else(|| err("no keyset id"))?;
    let total: u64 = amounts.iter().sum();
    let q = d
        .call(
            "POST",
            "/v1/mint/quote/onchain",
            None,
            Some(json!({"amount": total, "unit": "sat"})),
        )
        .await?;
    let q = ok_json(q, "POST /v1/mint/quote/onchain")?;
    let quote = q["quote"]
        .as_str()
        .ok_or_else(|| err("mint quote without id"))?;
    let pay = coinop_cli::regtest_pay::pay_quote(&d.client, quote)
        .await
        .map_err(err)?;
    let blank = blanks(keyset_id, amounts)?;
    let body = json!({"payment": pay["onchain"],
                      "outputs": blank.iter().map(|b| &b.msg).collect::<Vec<_>>()});
    let r = d.call("POST", "/v1/mint/onchain", None, Some(body)).await?;
    let r = ok_json(r, "POST /v1/mint/onchain")?;
    let sigs: Vec<BlindSignature> = serde_json::from_value(r["signatures"].clone()).map_err(err)?;
    sigs.iter()
        .zip(&blank)
        .map(|(s, b)| {
            let k: PublicKey = ks["keys"][s.amount.to_string()]
                .as_str()
                .and_then(|k| k.parse().ok())
                .ok_or_else(|| err(format!("no mint key for amount {}", s.amount)))?;
            let c_: PublicKey = s.c_.parse().map_err(err)?;
            let c = unblind(&c_, &b.r, &k).map_err(err)?;
            Ok(Proof {
                amount: s.amount,
                id: s.id.clone(),
                secret: b.secret.clone(),
                c: c.to_string(),
                witness: None,
                dleq: None,
            })
        })
        .collect()
}

/// `count` credit payments of `sat` each (a power of two), minted in one operation.
pub async fn credit_payments(d: &Daemon, count: usize, sat: u64) -> Result<Vec<Value>, BenchError> {
    let proofs = mint_proofs(d, &vec![sat; count]).await?;
    Ok(proofs
        .into_iter()
        .map(|p| json!({"credit": {"proofs": [p]}}))
        .collect())
}

/// An on-chain payment for a fresh quote, mined on the daemon's regtest chain.
pub async fn onchain_payment(
    d: &Daemon,
    vcpus: u32,
    mem_mib: u64,
    seconds: u64,
) -> Result<Value, BenchError> {
    let q = d
        .call(
            "POST",
            "/v1/quotes",
            None,
            Some(json!({"vcpus": vcpus, "mem_mib": mem_mib, "seconds": seconds})),
        )
        .await?;
    let q = ok_json(q, "POST /v1/quotes")?;
    let id = q["quote_id"]
        .as_str()
        .ok_or_else(|| err("quote without id"))?;
    coinop_cli::regtest_pay::pay_quote(&d.client, id)
        .await
        .map_err(err)
}
