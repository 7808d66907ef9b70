//! The JSON bodies of the Cashu endpoints, field for field as NUT-00/01/02/03/04/06/07/12
//! give them, so existing wallets can talk to coinop. Points and scalars stay hex strings
//! here and are parsed by the mint, so a bad encoding is a typed error naming its field
//! rather than an opaque deserialization failure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// NUT-00 `BlindedMessage`: an output the wallet asks the mint to sign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlindedMessage {
    pub amount: u64,
    pub id: String,
    #[serde(rename = "B_")]
    pub b_: String,
}

/// NUT-12 DLEQ proof as carried in a `BlindSignature`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlindSignatureDleq {
    pub e: String,
    pub s: String,
}

/// NUT-00 `BlindSignature` (with NUT-12 `dleq`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlindSignature {
    pub amount: u64,
    pub id: String,
    #[serde(rename = "C_")]
    pub c_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dleq: Option<BlindSignatureDleq>,
}

/// NUT-12 DLEQ proof as carried in a `Proof`: also the wallet's blinding factor `r`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofDleq {
    pub e: String,
    pub s: String,
    pub r: String,
}

/// NUT-00 `Proof`: an unblinded note.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub amount: u64,
    pub id: String,
    pub secret: String,
    #[serde(rename = "C")]
    pub c: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dleq: Option<ProofDleq>,
}

/// NUT-01: one keyset's public keys, amount → compressed point hex, with whether it signs
/// new outputs and its NUT-02 input fee.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySet {
    pub id: String,
    pub unit: String,
    pub active: bool,
    #[serde(default)]
    pub input_fee_ppk: u64,
    pub keys: BTreeMap<u64, String>,
}

/// NUT-01 `GET /v1/keys` and `GET /v1/keys/{keyset_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysResponse {
    pub keysets: Vec<KeySet>,
}

/// NUT-02: one entry of `GET /v1/keysets`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysetInfo {
    pub id: String,
    pub unit: String,
    pub active: bool,
    #[serde(default)]
    pub input_fee_ppk: u64,
}

/// NUT-02 `GET /v1/keysets`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysetsResponse {
    pub keysets: Vec<KeysetInfo>,
}

/// NUT-03 `POST /v1/swap` request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapRequest {
    pub inputs: Vec<Proof>,
    pub outputs: Vec<BlindedMessage>,
}

/// NUT-03 `POST /v1/swap` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapResponse {
    pub signatures: Vec<BlindSignature>,
}

/// NUT-07 proof states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ProofState {
    Unspent,
    Pending,
    Spent,
}

/// NUT-07 `POST /v1/checkstate` request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckStateRequest {
    #[serde(rename = "Ys")]
    pub ys: Vec<String>,
}

/// NUT-07: the state of one `Y`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofStateEntry {
    #[serde(rename = "Y")]
    pub y: String,
    pub state: ProofState,
    /// Always present, `null` here: this mint has no NUT-10 witnesses to report.
    pub witness: Option<String>,
}

/// NUT-07 `POST /v1/checkstate` response, in request order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckStateResponse {
    pub states: Vec<ProofStateEntry>,
}

/// NUT-04 quote states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MintQuoteState {
    Unpaid,
    Paid,
    Issued,
}

/// `POST /v1/mint/quote/onchain` request, modelled on NUT-04's `PostMintQuoteBolt11Request`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintQuoteOnchainRequest {
    pub amount: u64,
    pub unit: String,
}

/// `POST /v1/mint/quote/onchain` response, modelled on NUT-04: `request` is the BIP21 URI
/// to pay, `expiry` a unix time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintQuoteOnchainResponse {
    pub quote: String,
    pub request: String,
    pub amount: u64,
    pub unit: String,
    pub state: MintQuoteState,
    pub expiry: Option<u64>,
}

/// The on-chain payment, the same object as the lease API's `payment.onchain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnchainPayment {
    pub quote_id: String,
    /// The paying transaction, raw hex.
    pub tx_hex: String,
    /// `gettxoutproof` output (a serialized MerkleBlock), hex.
    pub proof_hex: String,
}

/// `POST /v1/mint/onchain` request, modelled on NUT-04's `PostMintBolt11Request` with the
/// SPV-proved payment travelling in the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintOnchainRequest {
    pub payment: OnchainPayment,
    pub outputs: Vec<BlindedMessage>,
}

/// `POST /v1/mint/onchain` response (NUT-04 `PostMintBolt11Response`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintOnchainResponse {
    pub signatures: Vec<BlindSignature>,
}

/// NUT-30 `POST /v1/mint/quote/onchain` request: no amount (the address may be paid any
/// number of times), and the NUT-20 key that must sign the mint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintQuoteNut30Request {
    pub unit: String,
    pub pubkey: String,
}

/// NUT-30 mint quote, as created and as `GET /v1/mint/quote/onchain/{quote}` shows it:
/// `request` is the address to pay; `amount_paid - amount_issued` may be minted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintQuoteNut30Response {
    pub quote: String,
    pub request: String,
    pub unit: String,
    pub expiry: Option<u64>,
    pub pubkey: String,
    pub amount_paid: u64,
    pub amount_issued: u64,
}

/// NUT-30 `POST /v1/mint/onchain` request: outputs for a paid quote, signed (NUT-20).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintNut30Request {
    pub quote: String,
    pub outputs: Vec<BlindedMessage>,
    pub signature: String,
}

/// coinop's way for the mint to learn of a NUT-30 quote's payment: the wallet (or anyone)
/// posts the paying transaction with its SPV proof to
/// `POST /v1/mint/quote/onchain/{quote}/payment`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotePaymentProof {
    pub tx_hex: String,
    pub proof_hex: String,
}

/// NUT-06 contact entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactInfo {
    pub method: String,
    pub info: String,
}

/// NUT-06 `MintMethodSetting` of NUT-04/05.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodSetting {
    pub method: String,
    pub unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_amount: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_amount: Option<u64>,
    /// Method-specific settings (NUT-30 onchain: `{"confirmations": n}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<serde_json::Value>,
}

/// NUT-06 settings of NUT-04 (mint) and NUT-05 (melt).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodSettings {
    pub methods: Vec<MethodSetting>,
    pub disabled: bool,
}

/// NUT-06 `{"supported": bool}` of an optional NUT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supported {
    pub supported: bool,
}

/// NUT-06 `nuts` map, keyed by NUT number: the optional NUTs this mint supports, and no
/// others (NUT-08 melt change, NUT-10/11 spending conditions are not offered).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nuts {
    #[serde(rename = "4")]
    pub nut04: MethodSettings,
    #[serde(rename = "5")]
    pub nut05: MethodSettings,
    #[serde(rename = "7")]
    pub nut07: Supported,
    #[serde(rename = "9")]
    pub nut09: Supported,
    #[serde(rename = "12")]
    pub nut12: Supported,
    /// Signatures on mint quotes, which NUT-30 on-chain quotes require.
    #[serde(rename = "20")]
    pub nut20: Supported,
}

/// NUT-06 `GET /v1/info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubkey: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description_long: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<Vec<ContactInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub motd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tos_url: Option<String>,
    pub nuts: Nuts,
}

/// NUT-09 `POST /v1/restore` request: outputs whose signatures a wallet asks for again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequest {
    pub outputs: Vec<BlindedMessage>,
}

/// NUT-09 `POST /v1/restore` response: of the outputs asked about, those the mint signed,
/// each with its signature at the same index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreResponse {
    pub outputs: Vec<BlindedMessage>,
    pub signatures: Vec<BlindSignature>,
}

/// The Cashu error body `{"detail": ..., "code": ...}` (NUT-00 "Errors").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CashuErrorResponse {
    pub detail: String,
    pub code: u32,
}
