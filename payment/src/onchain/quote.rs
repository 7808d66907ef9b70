//! Quotes: an amount (never below the dust limit of the address's output type), a receive
//! address no paid quote has had, a BIP21 URI and an expiry. The book that issues and keeps
//! them is [`super::quote_book`].

use bitcoin::{Amount, Denomination, Script, ScriptBuf};

/// Longest quote id accepted from a caller (ids are 32 hex characters).
pub const MAX_QUOTE_ID_LEN: usize = 64;

/// Whether `id` could name a quote: books issue ids of lowercase hex (16 random bytes,
/// hex-encoded), so anything else (empty, too long, another character such as a NUL) is
/// an unknown quote without asking a store. PostgreSQL refuses a NUL in a text parameter
/// outright, so a fleet store must not even be sent one; answering "unknown" here keeps a
/// fleet host's answer what a single host's SQLite book gives for the same id.
pub fn possible_quote_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_QUOTE_ID_LEN
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

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
    /// Set when this quote took over the index of an earlier quote that expired unpaid: only
    /// payments in blocks above this height are this quote's (the earlier quote's tenant may
    /// still have paid below it).
    pub paid_above_height: Option<u32>,
    /// Set when this quote expired unpaid and a newer quote took over its index: only
    /// payments in blocks up to this height are this quote's.
    pub retired_at_height: Option<u32>,
}

impl Quote {
    /// Whether a payment in a block at `height` is this quote's, when its derivation index
    /// changed hands: the blocks up to the height of the hand-over pay the earlier quote,
    /// the blocks above it the later one. Checked on every path a payment takes (a proof,
    /// or the outputs the host saw paying the script), so one output never pays two quotes.
    pub fn pays_at_height(&self, height: u32) -> Result<(), super::error::PaymentError> {
        if let Some(above) = self.paid_above_height {
            if height <= above {
                return Err(super::error::PaymentError::PaysEarlierQuote { height, above });
            }
        }
        if let Some(retired_at) = self.retired_at_height {
            if height > retired_at {
                return Err(super::error::PaymentError::QuoteRetired { height, retired_at });
            }
        }
        Ok(())
    }
}

/// The smallest amount, in sat, an output paying `script` may carry without being dust:
/// Bitcoin Core neither relays nor mines (by default) a transaction with a dust output, so a
/// quote below it could not be paid by any ordinary wallet.
///
/// Core's rule (`GetDustThreshold`): an output is dust when spending it would cost more than
/// a third of its value at the dust relay fee of 3 sat/vB, i.e. the limit is
/// 3 × (the output's serialized size + the size of the input that spends it):
///
/// | type | output | spending input | limit |
/// |---|---|---|---|
/// | P2WPKH | 8 + 1 + 22 = 31 | 32 + 4 + 1 + ⌊107 / 4⌋ + 4 = 67 (witness discounted) | 3 × 98 = 294 |
/// | P2TR | 8 + 1 + 34 = 43 | 67 (Core uses the same estimate for every witness program) | 3 × 110 = 330 |
/// | P2SH-P2WPKH | 8 + 1 + 23 = 32 | 32 + 4 + 1 + 107 + 4 = 148 (not a witness program) | 3 × 180 = 540 |
///
/// The `bitcoin` crate implements the same rule; this uses it rather than the table.
pub fn dust_limit_sat(script: &Script) -> u64 {
    script.minimal_non_dust().to_sat()
}

/// `bitcoin:ADDRESS?amount=0.00012345` (BIP21; the amount in BTC, at most 8 decimals).
pub fn bip21_uri(address: &str, amount_sat: u64) -> String {
    let btc = Amount::from_sat(amount_sat).to_string_in(Denomination::Bitcoin);
    format!("bitcoin:{address}?amount={btc}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lowercase_hex_of_a_bounded_length_can_be_a_quote_id() {
        // What the books issue: 16 random bytes, hex-encoded.
        assert!(possible_quote_id("00112233445566778899aabbccddeeff"));
        assert!(possible_quote_id(&"f".repeat(MAX_QUOTE_ID_LEN)));
        for bad in [
            "",
            "\0",
            "00112233\0",
            "00112233445566778899AABBCCDDEEFF",
            "not-a-quote",
            "é",
            &"0".repeat(MAX_QUOTE_ID_LEN + 1),
        ] {
            assert!(!possible_quote_id(bad), "{bad:?}");
        }
    }
}
