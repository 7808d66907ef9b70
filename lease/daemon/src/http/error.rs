//! The API's error answer: every non-2xx response of coinop's own routes is
//! `{"error":{"code":"<snake_case>","message":"<human text>"}}` with the status from
//! `lease/openapi.yaml`; the Cashu routes (`/v1/keys*`, `/v1/keysets`, `/v1/info`,
//! `/v1/swap`, `/v1/checkstate`, `/v1/mint*`, `/v1/restore`) answer NUT-00's
//! `{"detail":"<human text>","code":<number>}` instead ([`CashuError`]). This is the one
//! place that decides which status a domain error (a lease flow's, the mint's, the
//! chain's) is answered with.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use payment::credit::CreditError;
use payment::onchain::{ChainError, PaymentError, QuoteError};
use payment::spent_set::SpendState;
use payment::storage_refusal::{StorageFault, StorageRefused};
use serde::Serialize;

use crate::fleet::FleetError;
use crate::fleet_mint::FleetMintError;
use crate::leases::LeaseError;
use payment_postgres::PgStoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for `Retry-After` (503, 507 and 429 only).
    pub retry_after_s: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// The one answer for a wrong or missing token and for an unknown lease id.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token for this lease",
        )
    }

    pub fn not_operator() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "not_operator",
            "this endpoint is for the host operator (root or the configured uid/gid)",
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn host_full(message: impl Into<String>, retry_after_s: u64) -> Self {
        ApiError {
            retry_after_s: Some(retry_after_s),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "host_full", message)
        }
    }

    /// A connection beyond `--max-connections` or `--max-connections-per-uid`.
    pub fn too_many_connections(message: impl Into<String>) -> Self {
        ApiError {
            retry_after_s: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                message,
            )
        }
    }

    /// A quote beyond `--quotes-per-min` for the peer's uid.
    pub fn too_many_quotes(retry_after: std::time::Duration) -> Self {
        // Whole seconds, rounded up: retrying at the advertised time must succeed.
        let retry_after_s = retry_after.as_millis().div_ceil(1000).max(1) as u64;
        ApiError {
            retry_after_s: Some(retry_after_s),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_quotes",
                format!("this uid asked for too many address quotes; retry in {retry_after_s} s"),
            )
        }
    }

    /// A quote beyond `--max-open-quotes-per-uid` for the peer's uid.
    pub fn too_many_open_quotes(retry_after: std::time::Duration) -> Self {
        let retry_after_s = retry_after.as_millis().div_ceil(1000).max(1) as u64;
        ApiError {
            retry_after_s: Some(retry_after_s),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_open_quotes",
                format!(
                    "this uid holds as many unpaid quotes' addresses as one uid may; pay \
                     one, or retry in {retry_after_s} s"
                ),
            )
        }
    }

    /// The state directory's disk is full: nothing was changed, try again later.
    pub fn insufficient_storage(message: impl Into<String>) -> Self {
        ApiError {
            retry_after_s: Some(STORAGE_RETRY_S),
            ..Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                message,
            )
        }
    }

    /// The state directory's disk fails (I/O errors): nothing was changed, try again later.
    pub fn storage_unavailable(message: impl Into<String>) -> Self {
        ApiError {
            retry_after_s: Some(STORAGE_RETRY_S),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                message,
            )
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        })
        .unwrap_or_else(|_| {
            br#"{"error":{"code":"internal","message":"error encoding"}}"#.to_vec()
        });
        json_response(self.status, body, self.retry_after_s)
    }
}

impl From<crate::ledger::LedgerError> for ApiError {
    fn from(e: crate::ledger::LedgerError) -> Self {
        use crate::ledger::{LedgerError, StorageFault};
        match &e {
            // The step rolled back: the same request succeeds once the disk has room.
            LedgerError::Storage { fault, .. } => {
                tracing::warn!(error = %e, "ledger step refused by the disk; rolled back");
                let message = format!("the host could not record this: {e}; nothing changed");
                match fault {
                    StorageFault::Full => ApiError::insufficient_storage(message),
                    StorageFault::Io => ApiError::storage_unavailable(message),
                }
            }
            LedgerError::OutputsAlreadySigned(b_hex) => {
                credit_error(CreditError::OutputsAlreadySigned {
                    b_hex: b_hex.clone(),
                })
            }
            _ => {
                tracing::error!(error = %e, "ledger error");
                ApiError::internal(format!("ledger: {e}"))
            }
        }
    }
}

/// A quote book's refusal: the local book's as [`quote_error`], the fleet store's as
/// [`fleet_error`] (503 `store_unavailable` while it cannot be reached).
pub fn quotes_error(e: crate::quote_store::QuotesError) -> ApiError {
    match e {
        crate::quote_store::QuotesError::Quote(q) => quote_error(q),
        crate::quote_store::QuotesError::Fleet(f) => fleet_error(f),
    }
}

/// How long a tenant refused because the fleet store is unreachable should wait.
const STORE_RETRY_S: u64 = 2;

/// How long a read refused for a full public read share should wait: places free as soon
/// as reads end, which is quick unless the share is flooded.
const READS_BUSY_RETRY_S: u64 = 1;

/// The fleet store's answers: 409 for a key another operation holds, 503
/// `store_unavailable` (Retry-After) while the store cannot be reached, so nothing is
/// accepted on this host's state alone; 503 `store_busy` (Retry-After) for an
/// unauthenticated read beyond this host's public read share.
pub fn fleet_error(e: FleetError) -> ApiError {
    match &e {
        FleetError::AlreadySpent { .. } => ApiError::conflict("already_spent", e.to_string()),
        FleetError::Unavailable(_) => ApiError {
            retry_after_s: Some(STORE_RETRY_S),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("{e}; nothing was accepted, retry the same request"),
            )
        },
        FleetError::ReadsBusy { .. } => ApiError {
            retry_after_s: Some(READS_BUSY_RETRY_S),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_busy",
                format!("{e}; nothing was read, retry shortly"),
            )
        },
        FleetError::Store(PgStoreError::DuplicateKey { .. } | PgStoreError::NoKeys) => {
            ApiError::bad_request(e.to_string())
        }
        // A value from the request the server refused (nothing took effect). Logged at
        // warn, not error: anyone can send one, but a value of coinopd's own making
        // refused here would be a bug worth seeing.
        FleetError::Store(PgStoreError::InvalidInput(_)) => {
            tracing::warn!(error = %e, "fleet store refused a value of a request");
            ApiError::bad_request(e.to_string())
        }
        FleetError::Store(_) => {
            tracing::error!(error = %e, "fleet store error");
            ApiError::internal(e.to_string())
        }
    }
}

/// How long a tenant refused for a full or failing disk should wait before asking again.
const STORAGE_RETRY_S: u64 = 30;

/// How long a tenant refused for a database lock held too long should wait: a lock passes
/// sooner than a full disk empties.
const STORAGE_BUSY_RETRY_S: u64 = 1;

/// The payment crate's storage (spent set, quote book) refused by the disk or a lock: the
/// same answers as the ledger's own refusals, since nothing changed either.
pub fn storage_refused(r: &StorageRefused) -> ApiError {
    tracing::warn!(error = %r, "payment storage refused the step; rolled back");
    let message = format!("the host could not record this: {r}; nothing changed");
    match r.fault {
        StorageFault::Full => ApiError::insufficient_storage(message),
        StorageFault::Io => ApiError::storage_unavailable(message),
        StorageFault::Busy => ApiError {
            retry_after_s: Some(STORAGE_BUSY_RETRY_S),
            ..ApiError::storage_unavailable(message)
        },
    }
}

/// How long a tenant refused for lack of room should wait before asking again.
const HOST_FULL_RETRY_S: u64 = 5;

impl From<LeaseError> for ApiError {
    fn from(e: LeaseError) -> Self {
        use LeaseError::*;
        match e {
            InvalidSpec(m) => ApiError::unprocessable("invalid_spec", m),
            UnknownImage(m) => ApiError::unprocessable("unknown_image", m),
            BadRecoveryKey(_) | NoProofs => ApiError::bad_request(e.to_string()),
            HostFull { .. } => ApiError::host_full(e.to_string(), HOST_FULL_RETRY_S),
            DiskFull(_) => ApiError::insufficient_storage(e.to_string()),
            Credit(c) => credit_error(c),
            Payment(p) => payment_error(p),
            UnknownQuote(_) => ApiError::not_found(e.to_string()),
            QuoteKeyLocked(_) => ApiError::conflict("quote_key_locked", e.to_string()),
            Quote(q) => quote_error(q),
            AlreadySpent(m) => ApiError::conflict("already_spent", m),
            QuoteCounted { .. } => ApiError::conflict("already_spent", e.to_string()),
            AlreadyRefunded(_) => ApiError::conflict("already_refunded", e.to_string()),
            RefundedTakesNoPayment(_) | StateConflict(_) => {
                ApiError::conflict("state_conflict", e.to_string())
            }
            NoLease => ApiError::unauthorized(),
            Ledger(l) => l.into(),
            Fleet(f) => fleet_error(f),
            FleetMint(f) => fleet_mint_error(f),
            Worker(_) | Console(_) => ApiError::internal(e.to_string()),
        }
    }
}

/// The mint's errors: 400 malformed, 402 unbalanced, 404 unknown keyset, 409 spent or
/// pending, 413 too many, 422 well-formed but invalid.
pub fn credit_error(e: CreditError) -> ApiError {
    use CreditError::*;
    if let Some(r) = e.storage_refused() {
        return storage_refused(r);
    }
    let status = match &e {
        InvalidPoint { .. }
        | InvalidScalar { .. }
        | AmountNotPowerOfTwo { .. }
        | UnsupportedUnit { .. }
        | DuplicateInputs { .. }
        | DuplicateOutputs { .. }
        | NoInputs
        | NoOutputs
        | TooFewChangeOutputs { .. } => StatusCode::BAD_REQUEST,
        Unbalanced { .. } | UnbalancedWithFee { .. } | QuoteNotPaid { .. } => {
            StatusCode::PAYMENT_REQUIRED
        }
        MintSignatureInvalid | MintPubkeyRequired => StatusCode::UNAUTHORIZED,
        QuoteExpired { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        UnknownKeyset { .. } => StatusCode::NOT_FOUND,
        AlreadySpent { .. } | Pending { .. } | OutputsAlreadySigned { .. } => StatusCode::CONFLICT,
        TooManyInputs { .. } | TooManyOutputs { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        InactiveKeyset { .. }
        | RetiredKeyset { .. }
        | AmountOutOfRange { .. }
        | ProofInvalid { .. }
        | SecretRejected { .. }
        | DleqInvalid
        | Degenerate { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        Store { .. } | SpentSet(_) | StorageRefused(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.code(), e.to_string())
}

/// On-chain payments: 400 malformed, 402 not enough or not confirmed (yet), 409 already
/// spent, 422 well-formed but invalid.
pub fn payment_error(e: PaymentError) -> ApiError {
    use PaymentError::*;
    if let Some(r) = e.storage_refused() {
        return storage_refused(r);
    }
    let status = match &e {
        TooLong { .. } | NotHex { .. } | MalformedTx(_) | MalformedProof(_) | ProofRequired => {
            StatusCode::BAD_REQUEST
        }
        SixtyFourByteTx { .. }
        | BadProofOfWork { .. }
        | BadMerkleProof(_)
        | ProofForOtherTx { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        BlockNotInChain { .. }
        | NotOnBestChain { .. }
        | NotEnoughConfirmations { .. }
        | CoinbaseImmature { .. }
        | PaysEarlierQuote { .. }
        | QuoteRetired { .. }
        | WrongAddress { .. }
        | NotSeen { .. }
        | Insufficient { .. } => StatusCode::PAYMENT_REQUIRED,
        AlreadySpent { .. } => StatusCode::CONFLICT,
        SpentSet(_) | SeenStorage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.code(), e.to_string())
}

/// Quotes: a spec that cannot be priced is the caller's; every address held by an unpaid
/// quote (`--max-open-quotes`) is 503 with Retry-After; the rest is the host's.
pub fn quote_error(e: QuoteError) -> ApiError {
    if let Some(r) = e.storage_refused() {
        return storage_refused(r);
    }
    let status = match &e {
        QuoteError::Price(_) => StatusCode::BAD_REQUEST,
        QuoteError::NoFreeIndex { retry_after_s, .. } => {
            return ApiError {
                retry_after_s: Some(*retry_after_s),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string())
            }
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.code(), e.to_string())
}

/// Headers the operator posts: 422 refused by consensus rules, 403 for a network whose
/// headers come only from the operator's feed, 413 too many at once.
pub fn chain_error(e: ChainError) -> ApiError {
    let status = match &e {
        ChainError::Rejected { .. } | ChainError::LowWorkBranch { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ChainError::SignetNeedsOperatorFeed => StatusCode::FORBIDDEN,
        ChainError::TooManyInOneAppend { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.code(), e.to_string())
}

/// NUT-00's code for an error the NUT tables give none (malformed JSON, a host fault).
pub const CASHU_CODE_UNLISTED: u32 = 0;
/// NUT-04 "Quote request is not paid" (error_codes.md).
const CASHU_QUOTE_NOT_PAID: u32 = 20001;
/// NUT-04 "Quote has already been issued" (error_codes.md).
const CASHU_QUOTE_ISSUED: u32 = 20002;
/// NUT-00 "Proofs already spent", "Proofs are pending", "Duplicate inputs provided"
/// (error_codes.md): the fleet store's refusals, which never pass through the mint's own
/// [`CreditError::cashu_code`].
const CASHU_PROOFS_SPENT: u32 = 11001;
const CASHU_PROOFS_PENDING: u32 = 11002;
const CASHU_DUPLICATE_INPUTS: u32 = 11007;

/// The error answer of the Cashu routes: NUT-00 `{"detail", "code"}` with the NUT error
/// table's code. NUT-00 answers every error of the request with 400; faults of the host
/// itself (its disk, a worker) keep their 5xx and `Retry-After`, so a wallet retries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CashuError {
    pub status: StatusCode,
    pub detail: String,
    pub code: u32,
    pub retry_after_s: Option<u64>,
}

impl CashuError {
    /// `api` (coinop's answer for the same cause) as a Cashu error with `code`.
    fn from_api(api: ApiError, code: u32) -> Self {
        // A host fault or a rate limit keeps its status (and Retry-After): the request was
        // not wrong, the wallet should retry later.
        let status = if api.status.is_server_error() || api.status == StatusCode::TOO_MANY_REQUESTS
        {
            api.status
        } else {
            StatusCode::BAD_REQUEST
        };
        CashuError {
            status,
            detail: api.message,
            code,
            retry_after_s: api.retry_after_s,
        }
    }
}

impl From<CreditError> for CashuError {
    fn from(e: CreditError) -> Self {
        let code = e.cashu_code().unwrap_or(CASHU_CODE_UNLISTED);
        CashuError::from_api(credit_error(e), code)
    }
}

/// Errors of coinop's own kind met on a Cashu route (a body that is not JSON, a host
/// fault): no NUT code names them.
impl From<ApiError> for CashuError {
    fn from(e: ApiError) -> Self {
        CashuError::from_api(e, CASHU_CODE_UNLISTED)
    }
}

impl From<crate::ledger::LedgerError> for CashuError {
    fn from(e: crate::ledger::LedgerError) -> Self {
        use crate::ledger::LedgerError;
        match e {
            LedgerError::OutputsAlreadySigned(b_hex) => {
                CreditError::OutputsAlreadySigned { b_hex }.into()
            }
            // On a mint route: the payment's outpoints have minted notes already.
            LedgerError::AlreadySpent(m) => {
                CashuError::from_api(ApiError::conflict("already_spent", m), CASHU_QUOTE_ISSUED)
            }
            other => ApiError::from(other).into(),
        }
    }
}

/// The fleet store's refusal on a Cashu route: a key another operation holds is the NUT
/// code of its state (11001 spent, 11002 pending), so a wallet sees on a fleet what it
/// sees on a single host; the store being down stays a 503 with Retry-After.
impl From<FleetError> for CashuError {
    fn from(e: FleetError) -> Self {
        let code = match &e {
            FleetError::AlreadySpent {
                state: SpendState::Spent,
                ..
            } => CASHU_PROOFS_SPENT,
            FleetError::AlreadySpent {
                state: SpendState::Pending,
                ..
            } => CASHU_PROOFS_PENDING,
            FleetError::Store(PgStoreError::DuplicateKey { .. }) => CASHU_DUPLICATE_INPUTS,
            _ => CASHU_CODE_UNLISTED,
        };
        CashuError::from_api(fleet_error(e), code)
    }
}

/// The fleet mint's answers (keysets and signed outputs in the fleet store): an output
/// signed before anywhere in the fleet is the mint's own 11003, an unreachable store the
/// fleet's 503 `store_unavailable`, a rotation another host made first a 409.
pub fn fleet_mint_error(e: FleetMintError) -> ApiError {
    match e {
        FleetMintError::Unavailable(m) => fleet_error(FleetError::Unavailable(m)),
        FleetMintError::OutputAlreadySigned { b_hex } => {
            credit_error(CreditError::OutputsAlreadySigned { b_hex })
        }
        FleetMintError::Mint(c) => credit_error(c),
        e @ FleetMintError::InFlight { .. } => ApiError::conflict(
            "request_in_flight",
            format!("{e}: retry once it is answered"),
        ),
        FleetMintError::Store(PgStoreError::KeysetsChanged(m)) => ApiError::conflict(
            "keysets_changed",
            format!("the fleet's keysets changed meanwhile: {m}"),
        ),
        FleetMintError::Store(e @ PgStoreError::InvalidInput(_)) => {
            fleet_error(FleetError::Store(e))
        }
        other => {
            tracing::error!(error = %other, "fleet mint error");
            ApiError::internal(other.to_string())
        }
    }
}

impl From<FleetMintError> for CashuError {
    fn from(e: FleetMintError) -> Self {
        match e {
            FleetMintError::OutputAlreadySigned { b_hex } => {
                CreditError::OutputsAlreadySigned { b_hex }.into()
            }
            FleetMintError::Mint(c) => c.into(),
            // As a copy of a fenced request in flight is: pending (11002), which wallets
            // retry; the first one's answer is then the copy's.
            e @ FleetMintError::InFlight { .. } => {
                CashuError::from_api(fleet_mint_error(e), CASHU_PROOFS_PENDING)
            }
            other => CashuError::from_api(fleet_mint_error(other), CASHU_CODE_UNLISTED),
        }
    }
}

/// A lease-layer error on the mint route (checking an on-chain payment).
impl From<LeaseError> for CashuError {
    fn from(e: LeaseError) -> Self {
        use PaymentError::*;
        match e {
            LeaseError::Credit(c) => c.into(),
            LeaseError::Payment(p) => {
                let code = match &p {
                    BlockNotInChain { .. }
                    | NotOnBestChain { .. }
                    | NotEnoughConfirmations { .. }
                    | CoinbaseImmature { .. }
                    | PaysEarlierQuote { .. }
                    | QuoteRetired { .. }
                    | WrongAddress { .. }
                    | Insufficient { .. } => CASHU_QUOTE_NOT_PAID,
                    AlreadySpent { .. } => CASHU_QUOTE_ISSUED,
                    _ => CASHU_CODE_UNLISTED,
                };
                CashuError::from_api(payment_error(p), code)
            }
            LeaseError::AlreadySpent(m) => {
                CashuError::from_api(ApiError::conflict("already_spent", m), CASHU_QUOTE_ISSUED)
            }
            other => ApiError::from(other).into(),
        }
    }
}

impl IntoResponse for CashuError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&payment::credit::nut_types::CashuErrorResponse {
            detail: self.detail,
            code: self.code,
        })
        .unwrap_or_else(|_| br#"{"detail":"error encoding","code":0}"#.to_vec());
        json_response(self.status, body, self.retry_after_s)
    }
}

/// A JSON error answer with its status and, for a retryable refusal, `Retry-After`: the one
/// shape both error bodies (coinop's and NUT-00's) go out in.
fn json_response(status: StatusCode, body: Vec<u8>, retry_after_s: Option<u64>) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(s) = retry_after_s {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;
    use bitcoin::{OutPoint, Txid};

    #[test]
    fn payment_errors_get_the_contracts_statuses() {
        let txid = Txid::all_zeros();
        let cases = [
            (PaymentError::MalformedTx("x".into()), 400, "malformed_tx"),
            (
                PaymentError::ProofForOtherTx {
                    txid,
                    matched: vec![],
                },
                422,
                "proof_for_other_tx",
            ),
            (
                PaymentError::Insufficient {
                    paid_msat: 1,
                    required_msat: 2,
                },
                402,
                "insufficient_payment",
            ),
            (
                PaymentError::AlreadySpent {
                    outpoint: OutPoint::null(),
                },
                409,
                "already_spent",
            ),
        ];
        for (e, status, code) in cases {
            let a = payment_error(e);
            assert_eq!((a.status.as_u16(), a.code), (status, code));
        }
    }

    #[test]
    fn fleet_store_errors_fail_closed_with_503_and_retry_after() {
        let down = ApiError::from(LeaseError::Fleet(FleetError::Unavailable("refused".into())));
        assert_eq!(
            (down.status.as_u16(), down.code, down.retry_after_s),
            (503, "store_unavailable", Some(STORE_RETRY_S))
        );
        let spent = fleet_error(FleetError::AlreadySpent {
            kind: payment::spent_set::KeyKind::CreditY,
            key_hex: "02ab".into(),
            state: payment::spent_set::SpendState::Pending,
        });
        assert_eq!((spent.status.as_u16(), spent.code), (409, "already_spent"));
        // The local spent set's words: a 409 does not tell which store refused.
        assert_eq!(spent.message, "CreditY 02ab is already Pending");
        let dup = fleet_error(FleetError::Store(PgStoreError::NoKeys));
        assert_eq!(dup.status.as_u16(), 400);
        let other = fleet_error(FleetError::Store(PgStoreError::Corrupt("x".into())));
        assert_eq!((other.status.as_u16(), other.code), (500, "internal"));
    }

    #[test]
    fn a_read_beyond_the_public_share_is_busy_with_retry_after_in_each_shape() {
        let busy = fleet_error(FleetError::ReadsBusy { share: 4 });
        assert_eq!(
            (busy.status.as_u16(), busy.code, busy.retry_after_s),
            (503, "store_busy", Some(READS_BUSY_RETRY_S))
        );
        // A Cashu route keeps the status and Retry-After, code 0 (no NUT code names it).
        let cashu = CashuError::from(FleetError::ReadsBusy { share: 4 });
        assert_eq!(
            (cashu.status.as_u16(), cashu.code, cashu.retry_after_s),
            (503, CASHU_CODE_UNLISTED, Some(READS_BUSY_RETRY_S))
        );
        assert!(
            cashu.detail.contains("unauthenticated reads"),
            "{}",
            cashu.detail
        );
    }

    #[test]
    fn a_copy_of_an_unfenced_mint_in_flight_is_pending_for_a_wallet() {
        let e = CashuError::from(FleetMintError::InFlight {
            operation: "ab".into(),
        });
        assert_eq!((e.status.as_u16(), e.code), (400, CASHU_PROOFS_PENDING));
        assert!(e.detail.contains("in flight"), "{}", e.detail);
    }

    #[test]
    fn credit_and_lease_errors_get_the_contracts_statuses() {
        assert_eq!(
            credit_error(CreditError::NoInputs).status,
            StatusCode::BAD_REQUEST
        );
        let unbalanced = CreditError::Unbalanced {
            inputs: 1,
            outputs: 2,
        };
        assert_eq!(
            credit_error(unbalanced).status,
            StatusCode::PAYMENT_REQUIRED
        );
        let full = ApiError::from(LeaseError::HostFull {
            vcpus_free: 0,
            mib_free: 0,
        });
        assert_eq!(
            (full.status, full.code, full.retry_after_s),
            (StatusCode::SERVICE_UNAVAILABLE, "host_full", Some(5))
        );
        let refunded = ApiError::from(LeaseError::AlreadyRefunded("l1".into()));
        assert_eq!(
            (refunded.status, refunded.code),
            (StatusCode::CONFLICT, "already_refunded")
        );
        assert_eq!(
            ApiError::from(LeaseError::NoLease).status,
            StatusCode::UNAUTHORIZED
        );
        let degraded = ApiError::from(LeaseError::DiskFull(crate::disk_reserve::Degraded {
            free_mib: 3,
        }));
        assert_eq!(
            (
                degraded.status.as_u16(),
                degraded.code,
                degraded.retry_after_s
            ),
            (507, "insufficient_storage", Some(STORAGE_RETRY_S))
        );
        let failure = |code| {
            crate::ledger::LedgerError::from(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                None,
            ))
        };
        let full = ApiError::from(LeaseError::Ledger(failure(rusqlite::ffi::SQLITE_FULL)));
        assert_eq!(
            (full.status.as_u16(), full.code, full.retry_after_s),
            (507, "insufficient_storage", Some(STORAGE_RETRY_S))
        );
        let io = ApiError::from(failure(rusqlite::ffi::SQLITE_IOERR_WRITE));
        assert_eq!(
            (io.status.as_u16(), io.code, io.retry_after_s),
            (503, "storage_unavailable", Some(STORAGE_RETRY_S))
        );
        // The payment crate's refusals: the same answers as the ledger's.
        let refused = |code| {
            StorageRefused::from_sqlite(&rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                None,
            ))
            .expect("a refusal")
        };
        let swap_full = credit_error(CreditError::StorageRefused(refused(
            rusqlite::ffi::SQLITE_FULL,
        )));
        assert_eq!(
            (
                swap_full.status.as_u16(),
                swap_full.code,
                swap_full.retry_after_s
            ),
            (507, "insufficient_storage", Some(STORAGE_RETRY_S))
        );
        let quote_busy = quote_error(QuoteError::StorageRefused(refused(
            rusqlite::ffi::SQLITE_BUSY,
        )));
        assert_eq!(
            (
                quote_busy.status.as_u16(),
                quote_busy.code,
                quote_busy.retry_after_s
            ),
            (503, "storage_unavailable", Some(STORAGE_BUSY_RETRY_S))
        );
        let mint_io = payment_error(PaymentError::SpentSet(
            payment::spent_set::SpentSetError::StorageRefused(refused(
                rusqlite::ffi::SQLITE_IOERR_WRITE,
            )),
        ));
        assert_eq!(
            (mint_io.status.as_u16(), mint_io.code),
            (503, "storage_unavailable")
        );
        let other = ApiError::from(failure(rusqlite::ffi::SQLITE_CORRUPT));
        assert_eq!((other.status.as_u16(), other.code), (500, "internal"));
        let spec = ApiError::from(LeaseError::UnknownImage("x".into()));
        assert_eq!(
            (spec.status, spec.code),
            (StatusCode::UNPROCESSABLE_ENTITY, "unknown_image")
        );
    }

    #[test]
    fn cashu_routes_answer_400_with_the_nut_code_and_keep_host_faults() {
        let spent = CashuError::from(CreditError::AlreadySpent { y_hex: "02".into() });
        assert_eq!((spent.status, spent.code), (StatusCode::BAD_REQUEST, 11001));
        let signed = CashuError::from(crate::ledger::LedgerError::OutputsAlreadySigned(
            "02ab".into(),
        ));
        assert_eq!(
            (signed.status, signed.code),
            (StatusCode::BAD_REQUEST, 11003)
        );
        let unknown = CashuError::from(CreditError::UnknownKeyset { id: "00ff".into() });
        assert_eq!(unknown.code, 12001);
        let json = CashuError::from(ApiError::bad_request("not JSON"));
        assert_eq!((json.status, json.code), (StatusCode::BAD_REQUEST, 0));
        let full = CashuError::from(ApiError::insufficient_storage("disk"));
        assert_eq!(
            (full.status.as_u16(), full.retry_after_s),
            (507, Some(STORAGE_RETRY_S))
        );
        let unpaid = CashuError::from(LeaseError::Payment(PaymentError::Insufficient {
            paid_msat: 1,
            required_msat: 2,
        }));
        assert_eq!(
            (unpaid.status, unpaid.code),
            (StatusCode::BAD_REQUEST, 20001)
        );
    }
}
