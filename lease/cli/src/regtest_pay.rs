//! Demo payment on regtest with no bitcoind: build a transaction paying a quote, mine it
//! (and enough blocks for the host's confirmations) on the daemon's current tip with the
//! payment crate's fixtures, push the headers to the daemon, and return the on-chain
//! payment for a lease, top-up or mint.

use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
use bitcoin::{Address, Amount, BlockHash};
use coinop_proto::replies::{HostView, QuoteResponse};
use coinop_proto::requests::{HeadersRequest, PaymentBody};
use payment::credit::nut_types::OnchainPayment;
use payment::onchain::regtest_fixtures::{
    header_bytes, mine_block, payment_tx, tx_hex, txout_proof_hex,
};
use serde::de::DeserializeOwned;
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
    #[error("daemon answered {what} with a body this coinop cannot read: {source}")]
    Body {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("the daemon is on {0}, not regtest")]
    NotRegtest(String),
}

async fn get_ok<T: DeserializeOwned>(
    c: &Client,
    what: &'static str,
    path: &str,
) -> Result<T, PayError> {
    let r = c.call("GET", path, None, None).await?;
    if r.status != 200 {
        return Err(PayError::Api {
            what,
            status: r.status,
            body: r.text(),
        });
    }
    r.parse().map_err(|source| PayError::Body { what, source })
}

/// Pays `quote_id` (a lease quote or a mint quote) on the daemon's regtest chain.
pub async fn pay_quote_onchain(c: &Client, quote_id: &str) -> Result<OnchainPayment, PayError> {
    let host: HostView = get_ok(c, "GET /v1/host", "/v1/host").await?;
    if host.network != "regtest" {
        return Err(PayError::NotRegtest(host.network));
    }
    let quote: QuoteResponse =
        get_ok(c, "GET /v1/quotes/{id}", &format!("/v1/quotes/{quote_id}")).await?;
    let address: Address = quote
        .address
        .parse::<Address<_>>()
        .map(|a| a.assume_checked())
        .map_err(|_| PayError::Field {
            what: "quote",
            field: "address",
        })?;
    let tip_hash: BlockHash = host.chain.hash.parse().map_err(|_| PayError::Field {
        what: "host",
        field: "chain.hash",
    })?;
    let tip_height = host.chain.height;
    // A tip the daemon has no block time for: any later time will do for the next block.
    let tip_time = host.chain.time.unwrap_or(0);
    let min_conf = host.min_conf.max(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as u32;
    let mut time = now.max(tip_time + 1);
    let tx = payment_tx(
        &[(address.script_pubkey(), Amount::from_sat(quote.amount_sat))],
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
    const HEADERS: &str = "POST /v1/chain/headers";
    let body =
        serde_json::to_vec(&HeadersRequest { headers }).map_err(|source| PayError::Encode {
            what: HEADERS,
            source,
        })?;
    let r = c
        .call("POST", "/v1/chain/headers", None, Some(body))
        .await?;
    if r.status != 200 {
        return Err(PayError::Api {
            what: HEADERS,
            status: r.status,
            body: r.text(),
        });
    }
    Ok(OnchainPayment {
        quote_id: quote_id.to_string(),
        tx_hex: tx_hex(&tx),
        proof_hex,
    })
}

/// [`pay_quote_onchain`] as the untyped `{"onchain": {...}}` payment object. The CLI and
/// the benchmark harness use the typed one; this stays for coinopd's tests and examples,
/// which still build their request bodies as `serde_json::Value`.
pub async fn pay_quote(c: &Client, quote_id: &str) -> Result<serde_json::Value, PayError> {
    let p = PaymentBody::Onchain(pay_quote_onchain(c, quote_id).await?);
    serde_json::to_value(p).map_err(|source| PayError::Encode {
        what: "the payment",
        source,
    })
}
