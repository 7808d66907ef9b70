//! `GET /v1/host` and `POST /v1/quotes`.

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use coinop_proto::replies::{
    HostCapacity, HostChain, HostChainSync, HostPrices, HostStore, HostView, ImageView,
    QuoteResponse,
};
use coinop_proto::requests::QuoteRequest;
use coinop_proto::Msat;
use payment::onchain::{price, Quote, Spec};

use super::json_body::JsonBody;
use super::read_share::within_read_share;
use crate::app::{AppState, Shared};
use crate::clock::unix_s;
use crate::http::error::{quotes_error, ApiError, CashuError};
use crate::http::limits::QuoteHold;
use crate::http::path_param::IdPath;
use crate::http::peer::PeerCred;
use crate::leases::{spec, LeaseError};
use crate::ledger::QuoteRow;
use payment_postgres::QuotePurpose;

/// Issues a quote for `amount_msat` valid for `--quote-ttl-s`, at the chain's tip (an
/// expired unpaid quote's address may be taken over: see `payment::onchain::quote_book`).
/// Blocking: one durable SQLite commit, or with a fleet store one PostgreSQL transaction.
pub fn issue_quote(s: &AppState, amount_msat: u64) -> Result<Quote, ApiError> {
    issue_quote_for(s, amount_msat, QuotePurpose::Lease)
}

/// [`issue_quote`] for `purpose` (a NUT-30 quote is marked so in the fleet store, so that
/// no host takes its payment for a lease).
pub fn issue_quote_for(
    s: &AppState,
    amount_msat: u64,
    purpose: QuotePurpose,
) -> Result<Quote, ApiError> {
    crate::http::degraded::admit(s)?;
    let now_us = (unix_s() as u64).saturating_mul(1_000_000);
    let peers_wanted = !s.config.bitcoin_peers.is_empty() || s.config.bitcoin_dns_seeds;
    let (tip, tip_time) = {
        let chain = s.chain_read();
        let tip = chain.tip();
        (tip.height, chain.block(&tip.hash).map(|b| b.time))
    };
    let tip = reuse_tip(
        &s.chain_sync.snapshot(),
        ChainTip {
            height: tip,
            time: tip_time,
        },
        unix_s(),
        peers_wanted,
    );
    s.quotes
        .create_at_tip(
            amount_msat,
            now_us,
            s.config.quote_ttl_s.saturating_mul(1_000_000),
            tip,
            purpose,
        )
        .map_err(|e| {
            s.disk.notice(e.storage_refused());
            quotes_error(e)
        })
}

/// The height to retire a reused index's old quote at, or `None` to derive a new index.
/// A reused index's old quote keeps only payments in blocks up to the retiring height;
/// those above go to the new quote. So that height must not be below a block that already
/// pays the old quote: while peers are configured but none says the chain is caught up
/// (`syncing`, `no_peers`), this host's tip may be blocks behind the real one, a late
/// payment to the old quote may sit in one of them, and no index is reused. With no peers
/// configured (`off`, `peers_wanted` false) the operator feeds the headers, and the tip is
/// the one there is; `off` while peers are wanted (DNS seeds not resolved yet, or never)
/// is a host that has not synced.
///
/// `synced` comes from peers, and a peer can be lagging or lying, so with peers the tip must
/// also be recent: a best block more than [`MAX_REUSE_TIP_AGE_S`] old (by its header time,
/// at `now_s`) is a tip the host cannot vouch for. Not reusing costs only a fresh index.
pub(crate) fn reuse_tip(
    sync: &coinop_bitcoin_net::SyncSnapshot,
    tip: ChainTip,
    now_s: i64,
    peers_wanted: bool,
) -> Option<u32> {
    use coinop_bitcoin_net::SyncState;
    let recent = tip
        .time
        .is_some_and(|t| i64::from(t) >= now_s.saturating_sub(MAX_REUSE_TIP_AGE_S));
    match sync.state {
        SyncState::Synced if recent => Some(tip.height),
        SyncState::Off if !peers_wanted => Some(tip.height),
        SyncState::Synced | SyncState::Off | SyncState::Syncing | SyncState::NoPeers => None,
    }
}

/// How old a peer-synced tip may be for an index to be reused at it: three hours, which
/// the real chain goes without a block about once in 10^8 intervals on mainnet.
pub(crate) const MAX_REUSE_TIP_AGE_S: i64 = 3 * 60 * 60;

/// The best tip as [`reuse_tip`] sees it: its height and header time (unknown: not recent).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChainTip {
    pub height: u32,
    pub time: Option<u32>,
}

pub async fn host(State(s): State<Shared>) -> Json<HostView> {
    let tip = s.chain_read().tip();
    let (limit, free) = {
        let c = s.capacity();
        (c.limit(), c.free())
    };
    let images = s
        .config
        .images
        .iter()
        .map(|i| ImageView {
            name: i.name.clone(),
            cmdline: i.cmdline.clone(),
        })
        .collect();
    let time = s.chain_read().block(&tip.hash).map(|b| b.time);
    let sync = s.chain_sync.snapshot();
    Json(HostView {
        network: s.chain_network.name().to_string(),
        chain: HostChain {
            height: tip.height,
            hash: tip.hash.to_string(),
            time,
            sync: HostChainSync {
                state: sync.state.as_str().to_string(),
                peers_connected: sync.peers_connected,
                peers_banned: sync.peers_banned,
                headers_from_peers: sync.headers_accepted,
                last_header_at: sync.last_header_unix_s,
            },
        },
        min_conf: s.config.min_conf,
        capacity: HostCapacity {
            vcpus_total: limit.vcpus,
            vcpus_free: free.vcpus,
            mib_total: limit.mib,
            mib_free: free.mib,
        },
        prices: HostPrices {
            vcpu_msat_per_s: s.prices.vcpu_msat_per_s,
            gib_msat_per_s: s.prices.gib_msat_per_s,
        },
        images,
        tick_ms: s.config.tick_ms,
        grace_s: s.config.grace_s,
        store: match &s.fleet {
            Some(fleet) => HostStore {
                kind: "postgres".into(),
                host_id: Some(fleet.host_id().to_string()),
                location: Some(fleet.description().to_string()),
                // Money requests are served: the spent set and the mint are checked.
                ready: fleet.is_ready() && s.fleet_mint.as_ref().is_none_or(|m| m.is_ready()),
            },
            None => HostStore::default(),
        },
    })
}

/// Middleware for the routes that hand out an address of the operator's xpub: at most
/// `--quotes-per-min` per non-operator uid, and `--max-open-quotes-per-uid` held at once,
/// checked before the body is read.
pub async fn quote_rate(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let hold = take_quote(&s, &peer)?;
    Ok(issued(hold, next.run(req).await))
}

/// Gives a quote's hold back if the route refused the quote (not a 2xx); else it stays.
fn issued(hold: Option<QuoteHold>, response: Response) -> Response {
    if let Some(hold) = hold.filter(|_| !response.status().is_success()) {
        hold.give_back();
    }
    response
}

/// [`quote_rate`] for the Cashu mint-quote route: the same limit, answered in NUT-00's
/// shape (still 429 with `Retry-After`, so a wallet backs off).
pub async fn mint_quote_rate(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
    req: Request,
    next: Next,
) -> Result<Response, CashuError> {
    let hold = take_quote(&s, &peer)?;
    Ok(issued(hold, next.run(req).await))
}

/// One quote from `peer`'s budget, and its hold (operators are not limited).
fn take_quote(s: &AppState, peer: &PeerCred) -> Result<Option<QuoteHold>, ApiError> {
    if s.operator.allows(peer) {
        return Ok(None);
    }
    let now = std::time::Instant::now();
    // The hold first: a quote refused for it does not use up the uid's rate.
    let hold = s
        .quote_holds
        .take(peer.uid, now)
        .map_err(ApiError::too_many_open_quotes)?;
    if let Err(wait) = s.quote_limiter.take(peer.uid, now) {
        hold.give_back();
        return Err(ApiError::too_many_quotes(wait));
    }
    Ok(Some(hold))
}

pub async fn quote(
    State(s): State<Shared>,
    JsonBody(req): JsonBody<QuoteRequest>,
) -> Result<(StatusCode, Json<QuoteResponse>), ApiError> {
    spec::check(&s, req.vcpus, req.mem_mib, req.image.as_deref())?;
    spec::check_seconds(req.seconds)?;
    let amount_msat = price(
        &Spec {
            vcpus: req.vcpus,
            mem_mib: req.mem_mib,
            seconds: req.seconds,
        },
        &payment::onchain::Prices {
            msat_per_vcpu_s: s.prices.vcpu_msat_per_s,
            msat_per_gib_s: s.prices.gib_msat_per_s,
        },
    )
    .map_err(|e| LeaseError::InvalidSpec(e.to_string()))?;
    let s2 = s.clone();
    // Both durable commits on the blocking pool, not on the runtime's workers.
    let (q, expires_at) = tokio::task::spawn_blocking(move || {
        let q = issue_quote(&s2, amount_msat)?;
        let expires_at = (q.expires_at_us / 1_000_000) as i64;
        s2.ledger.insert_quote(&QuoteRow {
            id: q.quote_id.clone(),
            purpose: "lease".into(),
            address: q.address.clone(),
            derivation_index: q.derivation_index,
            amount_msat: q.amount_msat,
            vcpus: req.vcpus,
            mem_mib: req.mem_mib,
            seconds: req.seconds,
            image: req.image,
            expires_at,
            created_at: unix_s(),
        })?;
        Ok::<_, ApiError>((q, expires_at))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok((
        StatusCode::OK,
        Json(QuoteResponse {
            quote_id: q.quote_id,
            amount_msat: Msat::from_msat(q.amount_msat),
            amount_sat: q.amount_sat,
            address: q.address,
            bip21: q.bip21,
            expires_at,
            status: None,
            confirmations: None,
        }),
    ))
}

/// `GET /v1/quotes/{id}` (addition): a quote as issued, so scripts can pay it later.
pub async fn get_quote(
    State(s): State<Shared>,
    IdPath(id): IdPath,
) -> Result<Json<QuoteResponse>, ApiError> {
    let s2 = s.clone();
    // Blocking: the quote book (SQLite, or the fleet store waited for on this thread). On
    // a fleet anyone's lookup of any id reads the store: within the public read share.
    let lookup = async move {
        tokio::task::spawn_blocking(move || {
            let q = s2
                .quotes
                .get(&id)
                .map_err(quotes_error)?
                .ok_or_else(|| ApiError::not_found(format!("no quote {id:?}")))?;
            let status = quote_status(&s2, &q.quote_id, q.expires_at_us)?;
            Ok::<_, ApiError>((q, status))
        })
        .await
        .map_err(|e| ApiError::internal(format!("worker: {e}")))?
    };
    let (q, (status, confirmations)) = within_read_share(&s, lookup).await?;
    Ok(Json(QuoteResponse {
        quote_id: q.quote_id,
        amount_msat: Msat::from_msat(q.amount_msat),
        amount_sat: q.amount_sat,
        address: q.address,
        bip21: q.bip21,
        expires_at: (q.expires_at_us / 1_000_000) as i64,
        status: Some(status.to_string()),
        confirmations,
    }))
}

/// Where a quote's payment stands, from what the host saw on its best chain and what the
/// spent set has claimed.
fn quote_status(
    s: &Shared,
    quote_id: &str,
    expires_at_us: u64,
) -> Result<(&'static str, Option<u32>), ApiError> {
    use payment::spent_set::SpendKey;
    let seen = s
        .quotes
        .seen_for(quote_id, &s.watch)
        .map_err(quotes_error)?;
    let on_best: Vec<(bitcoin::OutPoint, u32)> = {
        let chain = s.chain_read();
        seen.iter()
            .filter_map(|o| {
                let b = chain.block(&o.block_hash)?;
                b.on_best_chain.then_some((o.outpoint, b.confirmations))
            })
            .collect()
    };
    let deepest = on_best.iter().map(|(_, c)| *c).max();
    if on_best.is_empty() {
        let expired = (unix_s() as u64).saturating_mul(1_000_000) > expires_at_us;
        return Ok((if expired { "expired" } else { "unpaid" }, None));
    }
    let keys: Vec<SpendKey> = on_best
        .iter()
        .map(|(o, _)| SpendKey::outpoint(bitcoin::hashes::Hash::to_byte_array(o.txid), o.vout))
        .collect();
    let states = s
        .quotes
        .spent_states(&keys, &s.spent)
        .map_err(quotes_error)?;
    let status = if states.iter().any(Option::is_some) {
        "paid"
    } else {
        "seen"
    };
    Ok((status, deepest))
}

#[cfg(test)]
mod tests {
    use super::{reuse_tip, ChainTip, MAX_REUSE_TIP_AGE_S};
    use coinop_bitcoin_net::{SyncSnapshot, SyncState};

    fn sync(state: SyncState) -> SyncSnapshot {
        SyncSnapshot {
            state,
            peers_connected: 1,
            peers_banned: 0,
            headers_accepted: 0,
            last_header_unix_s: None,
            bans_total: 0,
        }
    }

    /// A host still catching up with its peers (or cut off from them) may have a tip blocks
    /// behind: an old quote retired there would lose a late payment mined above it to the
    /// quote that took its index over, so no index is reused until the chain is synced.
    const NOW: i64 = 1_750_000_000;

    fn tip_aged(age_s: i64) -> ChainTip {
        ChainTip {
            height: 120,
            time: Some(u32::try_from(NOW - age_s).unwrap()),
        }
    }

    #[test]
    fn indexes_are_reused_only_at_a_tip_the_host_can_trust() {
        let tip = tip_aged(600);
        assert_eq!(
            reuse_tip(&sync(SyncState::Synced), tip, NOW, true),
            Some(120)
        );
        assert_eq!(reuse_tip(&sync(SyncState::Off), tip, NOW, false), Some(120));
        assert_eq!(reuse_tip(&sync(SyncState::Syncing), tip, NOW, true), None);
        assert_eq!(reuse_tip(&sync(SyncState::NoPeers), tip, NOW, true), None);
        // DNS seeds asked for and not resolved (yet, or ever): no peer was configured, so
        // the sync says `off`, but the tip is no operator's.
        assert_eq!(reuse_tip(&sync(SyncState::Off), tip, NOW, true), None);
    }

    /// A peer that is behind (or lies) can answer "nothing more" while the host's tip is
    /// hours old: `synced` then is not a tip to retire an old quote at.
    #[test]
    fn a_synced_tip_a_day_old_is_not_reused_at() {
        let synced = sync(SyncState::Synced);
        assert_eq!(reuse_tip(&synced, tip_aged(86_400), NOW, true), None);
        assert_eq!(
            reuse_tip(&synced, tip_aged(MAX_REUSE_TIP_AGE_S + 1), NOW, true),
            None
        );
        assert_eq!(
            reuse_tip(&synced, tip_aged(MAX_REUSE_TIP_AGE_S), NOW, true),
            Some(120)
        );
        let unknown = ChainTip {
            height: 120,
            time: None,
        };
        assert_eq!(reuse_tip(&synced, unknown, NOW, true), None);
        // The operator's own feed (no peers) is the tip there is, however old.
        assert_eq!(
            reuse_tip(&sync(SyncState::Off), tip_aged(86_400), NOW, false),
            Some(120)
        );
    }
}
