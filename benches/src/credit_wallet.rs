//! The tenant's side of payments, for scenarios that pay coinopd: a minimal Cashu wallet
//! (blind, unblind) that mints credit against a regtest payment, and on-chain payments for
//! a fresh quote, both through the lease crate's regtest payer as `coinop regtest pay` does.

use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
use bitcoin::secp256k1::{PublicKey, SecretKey};
use coinop_proto::replies::QuoteResponse;
use coinop_proto::requests::{CreditPayment, PaymentBody, QuoteRequest};
use payment::credit::bdhke::{blind_message, unblind};
use payment::credit::nut_types::{
    BlindSignature, BlindedMessage, KeysResponse, MintOnchainRequest, MintOnchainResponse,
    MintQuoteOnchainRequest, MintQuoteOnchainResponse, Proof,
};

use crate::daemon_proc::{read_ok, Daemon};
use crate::error::BenchError;

fn err(detail: impl std::fmt::Display) -> BenchError {
    BenchError::Run {
        what: "payment setup".into(),
        detail: detail.to_string(),
    }
}

pub struct Blank {
    pub secret: String,
    pub r: SecretKey,
    pub msg: BlindedMessage,
}

pub fn blanks(keyset_id: &str, amounts: &[u64]) -> Result<Vec<Blank>, BenchError> {
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

/// Mints proofs of exactly `amounts` (each a power of two, in sat) in one mint operation.
pub async fn mint_proofs(d: &Daemon, amounts: &[u64]) -> Result<Vec<Proof>, BenchError> {
    let keys: KeysResponse = read_ok(&d.get("/v1/keys", None).await?, "GET /v1/keys")?;
    let ks = keys.keysets.first().ok_or_else(|| err("no keyset"))?;
    let total: u64 = amounts.iter().sum();
    let ask = MintQuoteOnchainRequest {
        amount: total,
        unit: "sat".into(),
    };
    let q = d.post("/v1/mint/quote/onchain", None, &ask).await?;
    let q: MintQuoteOnchainResponse = read_ok(&q, "POST /v1/mint/quote/onchain")?;
    let pay = coinop_cli::regtest_pay::pay_quote_onchain(&d.client, &q.quote)
        .await
        .map_err(err)?;
    let blank = blanks(&ks.id, amounts)?;
    let mint = MintOnchainRequest {
        payment: pay,
        outputs: blank.iter().map(|b| b.msg.clone()).collect(),
    };
    let r = d.post("/v1/mint/onchain", None, &mint).await?;
    let r: MintOnchainResponse = read_ok(&r, "POST /v1/mint/onchain")?;
    unblind_all(&keys, &r.signatures, &blank)
}

/// The proofs `sigs` make of `blank` (in order), each unblinded with its keyset's key for
/// its amount: what a wallet keeps from a mint, a swap or a refund.
pub fn unblind_all(
    keys: &KeysResponse,
    sigs: &[BlindSignature],
    blank: &[Blank],
) -> Result<Vec<Proof>, BenchError> {
    sigs.iter()
        .zip(blank)
        .map(|(s, b)| {
            let ks = keys
                .keysets
                .iter()
                .find(|k| k.id == s.id)
                .ok_or_else(|| err(format!("signature by unknown keyset {}", s.id)))?;
            let k: PublicKey = ks
                .keys
                .get(&s.amount)
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
pub async fn credit_payments(
    d: &Daemon,
    count: usize,
    sat: u64,
) -> Result<Vec<PaymentBody>, BenchError> {
    let proofs = mint_proofs(d, &vec![sat; count]).await?;
    Ok(proofs
        .into_iter()
        .map(|p| PaymentBody::Credit(CreditPayment { proofs: vec![p] }))
        .collect())
}

/// An on-chain payment for a fresh quote, mined on the daemon's regtest chain.
pub async fn onchain_payment(
    d: &Daemon,
    vcpus: u32,
    mem_mib: u64,
    seconds: u64,
) -> Result<PaymentBody, BenchError> {
    let ask = QuoteRequest {
        vcpus,
        mem_mib,
        seconds,
        image: None,
    };
    let q: QuoteResponse = read_ok(&d.post("/v1/quotes", None, &ask).await?, "POST /v1/quotes")?;
    let paid = coinop_cli::regtest_pay::pay_quote_onchain(&d.client, &q.quote_id)
        .await
        .map_err(err)?;
    Ok(PaymentBody::Onchain(paid))
}
