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
