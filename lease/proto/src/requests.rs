//! Request bodies of the lease API. Unknown fields are refused, so a misspelt option is an
//! error rather than silently ignored.

use payment::credit::nut_types::{BlindedMessage, OnchainPayment, Proof};
use serde::{Deserialize, Serialize};

/// `payment`: exactly one of `onchain` (an SPV-proved transaction paying a quote) or
/// `credit` (blind-signed Cashu proofs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PaymentBody {
    Onchain(OnchainPayment),
    Credit(CreditPayment),
}

/// Cashu proofs spent as payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditPayment {
    pub proofs: Vec<Proof>,
}

/// `POST /v1/leases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub vcpus: u32,
    pub mem_mib: u64,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// OpenSSH public key authorised for root in the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<String>,
    pub payment: PaymentBody,
    /// Blank outputs for a refund as blind-signed credit if the boot fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<BlindedMessage>>,
    /// 64 hex digits the tenant chose and kept ([`crate::recovery_key`]): with the same
    /// payment, it proves a retry of this create is the tenant's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_key: Option<String>,
}

/// `POST /v1/leases/{id}/topup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopupRequest {
    pub payment: PaymentBody,
}

/// `POST /v1/leases/{id}/stop`: with outputs, the balance comes back as blind-signed change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<BlindedMessage>>,
}

/// `POST /v1/quotes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteRequest {
    pub vcpus: u32,
    pub mem_mib: u64,
    pub seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// `POST /v1/chain/headers` (operator): 80-byte headers, hex, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersRequest {
    pub headers: Vec<String>,
}

/// The largest request body coinopd takes unless told otherwise (`--max-body-bytes`);
/// larger ones are answered 413. Clients that split a long upload (`coinop chain
/// add-headers`) size their requests by it.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

impl HeadersRequest {
    /// Bytes of this request encoded as JSON, computed without encoding it:
    /// `{"headers":[` + the strings, comma-separated + `]}`.
    pub fn encoded_len(&self) -> usize {
        let strings: usize = self.headers.iter().map(|h| json_string_len(h)).sum();
        "{\"headers\":[]}".len() + strings + self.headers.len().saturating_sub(1)
    }
}

/// Bytes of `s` as a JSON string (quotes and escapes included).
pub fn json_string_len(s: &str) -> usize {
    2 + s
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_len_is_the_length_of_the_encoding() {
        for headers in [
            vec![],
            vec!["ab".repeat(80)],
            vec!["00".repeat(80); 1608],
            vec!["a\"b\\c\u{1}é\n".to_string(), String::new()],
        ] {
            let r = HeadersRequest { headers };
            let json = serde_json::to_vec(&r).expect("encodes");
            assert_eq!(r.encoded_len(), json.len());
        }
        // 1608 hex headers fit the default body, 1609 do not: the figure the issue quotes.
        let fits = |n| {
            HeadersRequest {
                headers: vec!["00".repeat(80); n],
            }
            .encoded_len()
                <= DEFAULT_MAX_BODY_BYTES
        };
        assert!(fits(1608) && !fits(1609));
    }
}
