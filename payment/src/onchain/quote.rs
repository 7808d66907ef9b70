//! Quotes: an amount, a never-before-used receive address, a BIP21 URI and an expiry. The
//! book that issues and keeps them is [`super::quote_book`].

use bitcoin::{Amount, Denomination, ScriptBuf};

/// Longest quote id accepted from a caller (ids are 32 hex characters).
pub const MAX_QUOTE_ID_LEN: usize = 64;

/// One quote as the host issued it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    pub quote_id: String,
    pub amount_msat: u64,
    /// `amount_msat` in whole satoshis, rounded up: what the tenant must send.
    pub amount_sat: u64,
    pub address: String,
    pub script_pubkey: ScriptBuf,
    /// `bitcoin:ADDRESS?amount=BTC`.
    pub bip21: String,
    pub derivation_index: u32,
    pub created_at_us: u64,
    pub expires_at_us: u64,
}

/// `bitcoin:ADDRESS?amount=0.00012345` (BIP21; the amount in BTC, at most 8 decimals).
pub fn bip21_uri(address: &str, amount_sat: u64) -> String {
    let btc = Amount::from_sat(amount_sat).to_string_in(Denomination::Bitcoin);
    format!("bitcoin:{address}?amount={btc}")
}
