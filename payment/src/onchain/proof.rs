//! The SPV check of a payment: a raw transaction plus the `gettxoutproof` for it, judged
//! against the host's own header chain and a quote.
//!
//! Inputs are bounded before decoding: a transaction of at most [`MAX_TX_BYTES`] (the
//! standardness limit of 400 000 weight units can never need more), a proof of at most
//! [`MAX_PROOF_BYTES`] (a single-transaction proof is about 1 kB; the cap leaves room for
//! proofs of several transactions), and the proof's length prefixes are checked against the
//! bytes actually present before anything is allocated from them.

use bitcoin::consensus::encode::{deserialize, Decodable, VarInt};
use bitcoin::hashes::Hash;
use bitcoin::{BlockHash, MerkleBlock, OutPoint, Transaction, Txid};

use super::error::PaymentError;
use super::header_chain::{check_pow, BlockInfo, HeaderChain};
use super::quote::Quote;
use crate::spent_set::{KeyKind, SpendKey, SpendState, SpentSet, SpentSetError};

/// Largest raw transaction accepted, in bytes.
pub const MAX_TX_BYTES: usize = 400_000;
/// Largest serialized merkle block accepted, in bytes.
pub const MAX_PROOF_BYTES: usize = 500_000;

/// A payment that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPayment {
    pub txid: Txid,
    /// The outputs that pay the quote's address: each pays for this quote only, once.
    pub outpoints: Vec<OutPoint>,
    /// Everything those outputs carry (may exceed the quote), in msat.
    pub amount_msat: u64,
    pub block_hash: BlockHash,
    pub height: u32,
    pub confirmations: u32,
    /// The block's time is after the quote's expiry: credited, but worth a note.
    pub late: bool,
}

impl VerifiedPayment {
    /// The spent-set keys of the paying outpoints.
    pub fn spend_keys(&self) -> Vec<SpendKey> {
        self.outpoints
            .iter()
            .map(|o| SpendKey::outpoint(o.txid.to_byte_array(), o.vout))
            .collect()
    }
}

fn decode_hex(field: &'static str, s: &str, max_bytes: usize) -> Result<Vec<u8>, PaymentError> {
    let max = max_bytes * 2;
    if s.len() > max {
        return Err(PaymentError::TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    hex::decode(s.trim()).map_err(|e| PaymentError::NotHex {
        field,
        reason: e.to_string(),
    })
}

/// Decodes `tx_hex` (at most [`MAX_TX_BYTES`]); every byte must belong to the transaction.
pub fn parse_tx(tx_hex: &str) -> Result<Transaction, PaymentError> {
    let bytes = decode_hex("tx_hex", tx_hex, MAX_TX_BYTES)?;
    deserialize(&bytes).map_err(|e| PaymentError::MalformedTx(e.to_string()))
}

fn read_varint(cur: &mut &[u8], what: &str) -> Result<u64, PaymentError> {
    VarInt::consensus_decode(cur)
        .map(|v| v.0)
        .map_err(|e| PaymentError::MalformedProof(format!("{what}: {e}")))
}

/// Checks that the proof's vector lengths fit the bytes present, so decoding allocates no
/// more than the input's size.
fn check_proof_lengths(bytes: &[u8]) -> Result<(), PaymentError> {
    let short = |what: &str| PaymentError::MalformedProof(format!("truncated in {what}"));
    let mut cur = bytes
        .get(84..)
        .ok_or_else(|| short("header and transaction count"))?;
    let hashes = read_varint(&mut cur, "hash count")?;
    let hash_bytes = hashes
        .checked_mul(32)
        .filter(|&n| n <= cur.len() as u64)
        .ok_or_else(|| {
            PaymentError::MalformedProof(format!(
                "{hashes} hashes do not fit in {} bytes",
                cur.len()
            ))
        })?;
    cur = &cur[hash_bytes as usize..];
    let flag_bytes = read_varint(&mut cur, "flag byte count")?;
    if flag_bytes != cur.len() as u64 {
        return Err(PaymentError::MalformedProof(format!(
            "{flag_bytes} flag bytes announced, {} present",
            cur.len()
        )));
    }
    Ok(())
}

/// Decodes `proof_hex` (at most [`MAX_PROOF_BYTES`]) as a serialized MerkleBlock.
pub fn parse_proof(proof_hex: &str) -> Result<MerkleBlock, PaymentError> {
    let bytes = decode_hex("proof_hex", proof_hex, MAX_PROOF_BYTES)?;
    check_proof_lengths(&bytes)?;
    deserialize(&bytes).map_err(|e| PaymentError::MalformedProof(e.to_string()))
}

/// Checks the proof on its own: the header's proof of work (against its own target, within
/// the widest network limit; whether the block is ours is the chain's question) and the
/// partial merkle tree against the header's merkle root. Returns the block hash and the
/// txids the proof matches.
pub fn verify_proof(proof: &MerkleBlock) -> Result<(BlockHash, Vec<Txid>), PaymentError> {
    let hash = proof.header.block_hash();
    check_pow(bitcoin::Target::MAX_ATTAINABLE_REGTEST, &proof.header)
        .map_err(|reason| PaymentError::BadProofOfWork { hash, reason })?;
    let mut matched = Vec::new();
    let mut indexes = Vec::new();
    // The crate checks the root against the header and rejects identical sibling hashes
    // (CVE-2012-2459), unused bits or hashes, and more hashes than transactions.
    proof
        .extract_matches(&mut matched, &mut indexes)
        .map_err(|e| PaymentError::BadMerkleProof(e.to_string()))?;
    Ok((hash, matched))
}

/// Checks that `proof` proves `tx` (among any others it also matches: a wallet's or
/// `gettxoutproof`'s proof may cover several transactions of the block) in a block with
/// valid proof of work; returns the txid and block hash.
pub fn check_inclusion(
    tx: &Transaction,
    proof: &MerkleBlock,
) -> Result<(Txid, BlockHash), PaymentError> {
    let txid = tx.compute_txid();
    // A 64-byte transaction could be read as an inner merkle node (two 32-byte hashes),
    // which would let a fake "transaction" be proven.
    if tx.base_size() == 64 {
        return Err(PaymentError::SixtyFourByteTx { txid });
    }
    let (hash, matched) = verify_proof(proof)?;
    if !matched.contains(&txid) {
        return Err(PaymentError::ProofForOtherTx { txid, matched });
    }
    Ok((txid, hash))
}

/// A transaction proven to be in a block of the host's best chain.
#[derive(Clone, Debug)]
pub struct OnBestChain {
    pub tx: Transaction,
    pub txid: Txid,
    pub block_hash: BlockHash,
    pub block: BlockInfo,
    /// The block header's time.
    pub block_time: u32,
}

/// Parses `tx_hex` and `proof_hex` (bounded, see the module) and checks that the proof
/// shows the transaction in a block on the best chain of `chain`, at any depth.
pub fn on_best_chain(
    chain: &HeaderChain,
    tx_hex: &str,
    proof_hex: &str,
) -> Result<OnBestChain, PaymentError> {
    let tx = parse_tx(tx_hex)?;
    let proof = parse_proof(proof_hex)?;
    let (txid, block_hash) = check_inclusion(&tx, &proof)?;
    let block = chain
        .block(&block_hash)
        .ok_or(PaymentError::BlockNotInChain { hash: block_hash })?;
    if !block.on_best_chain {
        return Err(PaymentError::NotOnBestChain { hash: block_hash });
    }
    Ok(OnBestChain {
        tx,
        txid,
        block_hash,
        block,
        block_time: proof.header.time,
    })
}

/// Every check but the spend: inclusion, confirmations on the best chain (a coinbase needs
/// [`ChainNetwork::coinbase_maturity`](super::ChainNetwork::coinbase_maturity)), the quote's
/// height window (a reused index), address, amount, expiry (a late payment is credited but
/// flagged). `min_conf` below 1 counts as 1.
pub fn check_payment(
    chain: &HeaderChain,
    quote: &Quote,
    tx_hex: &str,
    proof_hex: &str,
    min_conf: u32,
) -> Result<VerifiedPayment, PaymentError> {
    let OnBestChain {
        tx,
        txid,
        block_hash,
        block,
        block_time,
    } = on_best_chain(chain, tx_hex, proof_hex)?;
    let need = min_conf.max(1);
    if block.confirmations < need {
        return Err(PaymentError::NotEnoughConfirmations {
            hash: block_hash,
            have: block.confirmations,
            need,
        });
    }
    // A coinbase (its single input spends the null outpoint; consensus allows that only
    // for a block's first transaction) can be spent only after maturity, and a reorg
    // before then destroys it: it pays for nothing until then.
    if tx.is_coinbase() {
        let need = chain.network().coinbase_maturity().max(need);
        if block.confirmations < need {
            return Err(PaymentError::CoinbaseImmature {
                txid,
                have: block.confirmations,
                need,
            });
        }
    }
    // A reused derivation index ([`super::quote_book`]).
    quote.pays_at_height(block.height)?;
    let mut outpoints = Vec::new();
    let mut paid_sat: u64 = 0;
    for (vout, out) in tx.output.iter().enumerate() {
        if out.script_pubkey == quote.script_pubkey {
            outpoints.push(OutPoint::new(txid, vout as u32));
            // Output values are at most 21e14 sat each and a tx has < 10^5 outputs here.
            paid_sat = paid_sat.saturating_add(out.value.to_sat());
        }
    }
    if outpoints.is_empty() {
        return Err(PaymentError::WrongAddress {
            txid,
            address: quote.address.clone(),
        });
    }
    let paid_msat = paid_sat.saturating_mul(1000);
    if paid_msat < quote.amount_msat {
        return Err(PaymentError::Insufficient {
            paid_msat,
            required_msat: quote.amount_msat,
        });
    }
    let block_time_us = u64::from(block_time) * 1_000_000;
    Ok(VerifiedPayment {
        txid,
        outpoints,
        amount_msat: paid_msat,
        block_hash,
        height: block.height,
        confirmations: block.confirmations,
        late: block_time_us > quote.expires_at_us,
    })
}

/// Maps a spent-set refusal to the payment error the API shows (409 for a spent outpoint).
pub fn spend_error(e: SpentSetError) -> PaymentError {
    match e {
        SpentSetError::AlreadyClaimed {
            kind: KeyKind::Outpoint,
            ref key_hex,
            ..
        } => match outpoint_from_key_hex(key_hex) {
            Some(outpoint) => PaymentError::AlreadySpent { outpoint },
            None => PaymentError::SpentSet(e),
        },
        other => PaymentError::SpentSet(other),
    }
}

fn outpoint_from_key_hex(key_hex: &str) -> Option<OutPoint> {
    let bytes = hex::decode(key_hex).ok()?;
    let (txid, vout) = bytes.split_first_chunk::<32>()?;
    let vout: [u8; 4] = vout.try_into().ok()?;
    Some(OutPoint::new(
        Txid::from_byte_array(*txid),
        u32::from_le_bytes(vout),
    ))
}

/// [`check_payment`], then claims the paying outpoints in `spent` (durably, at most once
/// ever). The daemon, which must record the lease in the same transaction, uses
/// `check_payment` + `SqliteSpentSet::claim_in` + [`spend_error`] instead.
pub fn verify_and_claim(
    chain: &HeaderChain,
    quote: &Quote,
    tx_hex: &str,
    proof_hex: &str,
    min_conf: u32,
    spent: &dyn SpentSet,
) -> Result<VerifiedPayment, PaymentError> {
    let payment = check_payment(chain, quote, tx_hex, proof_hex, min_conf)?;
    let note = format!("quote {}", quote.quote_id);
    spent
        .claim(&payment.spend_keys(), SpendState::Spent, &note)
        .map_err(spend_error)?;
    Ok(payment)
}
