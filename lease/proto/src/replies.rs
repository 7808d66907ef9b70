//! Reply bodies of the lease API.

use payment::credit::nut_types::BlindSignature;
use serde::{Deserialize, Serialize};

use crate::lease_state::{LeaseState, StopReason};
use crate::lease_view::{BootFigures, LeaseView};
use crate::money::Msat;
use crate::network::NetInfo;

/// Every error of coinop's own routes: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// snake_case, stable: what scripts match on.
    pub code: String,
    /// For people.
    pub message: String,
}

impl ErrorDetail {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorDetail {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// `201` to `POST /v1/leases`: the lease is booted and the token is shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateResponse {
    pub lease_id: String,
    pub token: String,
    /// Which token of the lease this is: 1 here, +1 per recovery (the highest one works).
    pub token_seq: u64,
    pub state: LeaseState,
    pub balance_msat: Msat,
    pub boot: BootFigures,
    /// How to reach the guest; null without a NIC, as `GET /v1/leases/{id}` shows it (a
    /// client reads the same field the same way in both). Absent from older hosts' replies.
    #[serde(default)]
    pub network: Option<NetInfo>,
    /// The on-chain payment was mined after its quote expired: credited at the quote's
    /// price all the same. Present (true) only then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
}

/// `200` to a retried create that proved the lease is its own: the lease as it is now,
/// with a fresh token that replaces the old one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveredResponse {
    #[serde(flatten)]
    pub lease: LeaseView,
    pub token: String,
    pub token_seq: u64,
    /// Always true: tells a recovery from a first create.
    pub recovered: bool,
    /// The refund a lost reply carried, signed again onto the same outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund: Option<Refund>,
}

/// What became of a failed boot's balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Refund {
    /// Signed onto the outputs the create brought.
    Signatures {
        refund_msat: Msat,
        residual_msat: Msat,
        signatures: Vec<BlindSignature>,
    },
    /// Kept on the lease for the tenant to collect with its token.
    Kept {
        refund_msat: Msat,
        residual_msat: Msat,
        /// How to collect it.
        how: String,
    },
}

impl Refund {
    /// Whole sats of the balance, in msat, whichever way it went.
    pub fn refund_msat(&self) -> Msat {
        match self {
            Refund::Signatures { refund_msat, .. } | Refund::Kept { refund_msat, .. } => {
                *refund_msat
            }
        }
    }
}

/// `503 boot_failed` to a create: the payment was taken, the guest did not boot, and the
/// body says where the money is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootFailedResponse {
    pub error: ErrorDetail,
    pub lease_id: String,
    pub token: String,
    pub token_seq: u64,
    pub state: LeaseState,
    pub stop_reason: StopReason,
    pub refund: Refund,
    pub boot: BootFigures,
}

/// `503 host_full` to a recovered create whose lease never booted and finds no room now:
/// it waits (stopped, `boot_failed`, balance kept) for a later retry, and the new token lets
/// the tenant take the balance back instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotBootedYetResponse {
    pub error: ErrorDetail,
    pub lease_id: String,
    pub token: String,
    pub token_seq: u64,
    pub recovered: bool,
    pub state: LeaseState,
    pub stop_reason: StopReason,
}

/// `POST /v1/leases/{id}/topup`: the lease after the payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopupResponse {
    #[serde(flatten)]
    pub lease: LeaseView,
    /// The lease was paused for lack of funds and runs again.
    pub resumed: bool,
    /// As in [`CreateResponse::late`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
}

/// `POST /v1/leases/{id}/stop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopResponse {
    pub state: LeaseState,
    /// Whole sats of the balance, in msat: refunded (with outputs) or collectable.
    pub refund_msat: Msat,
    pub refund_sat: u64,
    /// The sub-sat remainder the host keeps.
    pub residual_msat: Msat,
    /// Blank outputs a refund of `refund_msat` needs.
    pub change_outputs_needed: usize,
    /// The change, when the request brought outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signatures: Option<Vec<BlindSignature>>,
    /// Without outputs: how to collect the balance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund: Option<String>,
}

/// `POST /v1/quotes` and `GET /v1/quotes/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteResponse {
    pub quote_id: String,
    pub amount_msat: Msat,
    /// What the tenant must send, rounded up to whole sats.
    pub amount_sat: u64,
    pub address: String,
    /// `bitcoin:ADDRESS?amount=BTC`.
    pub bip21: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// `GET /v1/quotes/{id}` only: `unpaid`, `seen` (a payment the host saw on the best
    /// chain, not yet used), `paid` (used for a lease) or `expired` (unpaid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// With `seen` and `paid`: confirmations of the deepest block that paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmations: Option<u32>,
}

/// `POST /v1/chain/headers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadersResponse {
    /// Headers that were new.
    pub added: usize,
    /// The previous tip left the best chain.
    pub reorg: bool,
    pub tip: ChainTip,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainTip {
    pub height: u32,
    pub hash: String,
}

/// `GET /v1/host`: what this host sells and at what price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    /// `mainnet`, `testnet3`, `testnet4`, `signet` or `regtest`.
    pub network: String,
    pub chain: HostChain,
    /// Confirmations an on-chain payment needs.
    pub min_conf: u32,
    pub capacity: HostCapacity,
    pub prices: HostPrices,
    pub images: Vec<ImageView>,
    /// The metering tick.
    pub tick_ms: u64,
    /// How long an unfunded lease stays paused before it is stopped.
    pub grace_s: u64,
    /// Where this host keeps the money state shared by a fleet (absent from older hosts:
    /// read as the embedded default).
    #[serde(default)]
    pub store: HostStore,
}

/// The money-state store of a host: `sqlite` (this host alone) or `postgres` (a fleet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStore {
    /// `sqlite` or `postgres`.
    pub kind: String,
    /// This host's id in the fleet (`--host-id`); `None` for `sqlite`.
    #[serde(default)]
    pub host_id: Option<String>,
    /// Hosts and database of a `postgres` store, never a password.
    #[serde(default)]
    pub location: Option<String>,
    /// Whether the store has answered this host's start-up check (money requests get 503
    /// `store_unavailable` until it has, and whenever it cannot be reached).
    #[serde(default)]
    pub ready: bool,
}

impl Default for HostStore {
    fn default() -> Self {
        HostStore {
            kind: "sqlite".into(),
            host_id: None,
            location: None,
            ready: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostChain {
    pub height: u32,
    pub hash: String,
    /// The tip's timestamp (Unix seconds).
    pub time: Option<u32>,
    /// Header sync from Bitcoin peers (`--bitcoin-peer`); absent from older hosts.
    #[serde(default)]
    pub sync: HostChainSync,
}

/// How the host's header chain keeps up with the Bitcoin network over P2P.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostChainSync {
    /// `off` (no peers configured: headers come from the operator), `no_peers` (none
    /// connected), `syncing`, or `synced` (a peer has nothing newer).
    pub state: String,
    pub peers_connected: u32,
    /// Peers shunned for sending invalid headers.
    pub peers_banned: u32,
    /// New headers taken from peers since coinopd started.
    pub headers_from_peers: u64,
    /// When the last new header from a peer was stored (Unix seconds).
    pub last_header_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCapacity {
    pub vcpus_total: u32,
    pub vcpus_free: u32,
    pub mib_total: u64,
    pub mib_free: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPrices {
    pub vcpu_msat_per_s: u64,
    pub gib_msat_per_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageView {
    pub name: String,
    pub cmdline: String,
}
