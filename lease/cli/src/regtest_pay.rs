//! Demo payment on regtest with no bitcoind: build a transaction paying a quote, mine it
//! (and enough blocks for the host's confirmations) on the daemon's current tip with the
//! payment crate's fixtures, push the headers to the daemon, and return the `payment`
//! object for a lease or top-up.

use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
use bitcoin::{Address, Amount, BlockHash};
use payment::onchain::regtest_fixtures::{
    header_bytes, mine_block, payment_tx, tx_hex, txout_proof_hex,
};
use serde_json::{json, Value};
use thiserror::Error;

use crate::client::{Client, ClientError};

#[derive(Debug, Error)]
pub enum PayError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{what}: HTTP {status}: {body}")]
    Api {
        what: &'static str,
        status: u16,
        body: String,
    },
    #[error("daemon answered {what} without a usable {field}")]
    Field {
        what: &'static str,
        field: &'static str,
    },
    #[error("the daemon is on {0}, not regtest")]
    NotRegtest(String),
}

async fn get_ok(c: &Client, what: &'static str, path: &str) -> Result<Value, PayError> {
    let r = c.call("GET", path, None, None).await?;
    if r.status != 200 {
        return Err(PayError::Api {
            what,
            status: r.status,
            body: r.text(),
        });
    }
    Ok(r.json())
}

/// Pays `quote_id` on the daemon's regtest chain; returns `{"onchain": {...}}`.
pub async fn pay_quote(c: &Client, quote_id: &str) -> Result<Value, PayError> {
    let host = get_ok(c, "GET /v1/host", "/v1/host").await?;
    let network = host["network"].as_str().unwrap_or_default().to_string();
    if network != "regtest" {
        return Err(PayError::NotRegtest(network));
    }
    let quote = get_ok(c, "GET /v1/quotes/{id}", &format!("/v1/quotes/{quote_id}")).await?;
    let field = |field| PayError::Field {
        what: "quote",
        field,
    };
    let address: Address = quote["address"]
        .as_str()
        .and_then(|a| a.parse::<Address<_>>().ok())
        .map(|a| a.assume_checked())
        .ok_or_else(|| field("address"))?;
    let amount_sat = quote["amount_sat"]
        .as_u64()
        .ok_or_else(|| field("amount_sat"))?;
    let hfield = |field| PayError::Field {
        what: "host",
        field,
    };
    let tip_hash: BlockHash = host["chain"]["hash"]
        .as_str()
        .and_then(|h| h.parse().ok())
        .ok_or_else(|| hfield("chain.hash"))?;
    let tip_height = host["chain"]["height"]
        .as_u64()
        .ok_or_else(|| hfield("chain.height"))? as u32;
    let tip_time = host["chain"]["time"].as_u64().unwrap_or(0) as u32;
    let min_conf = host["min_conf"].as_u64().unwrap_or(1).max(1) as u32;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as u32;
    let mut time = now.max(tip_time + 1);
    let tx = payment_tx(
        &[(address.script_pubkey(), Amount::from_sat(amount_sat))],
        OsRng.next_u32(),
    );
    let mut tag = [0u8; 8];
    OsRng.fill_bytes(&mut tag);
    let block = mine_block(tip_hash, tip_height + 1, time, &tag, vec![tx.clone()]);
    let proof_hex = txout_proof_hex(&block, &[tx.compute_txid()]);
    let mut headers = vec![hex::encode(header_bytes(&block.header))];
    let mut prev = block.block_hash();
    for i in 1..min_conf {
        time += 1;
        let b = mine_block(prev, tip_height + 1 + i, time, &tag, vec![]);
        headers.push(hex::encode(header_bytes(&b.header)));
        prev = b.block_hash();
    }
    let body = serde_json::to_vec(&json!({ "headers": headers })).unwrap_or_default();
    let r = c
        .call("POST", "/v1/chain/headers", None, Some(body))
        .await?;
    if r.status != 200 {
        return Err(PayError::Api {
            what: "POST /v1/chain/headers",
            status: r.status,
            body: r.text(),
        });
    }
    Ok(json!({"onchain": {"quote_id": quote_id, "tx_hex": tx_hex(&tx), "proof_hex": proof_hex}}))
}
