//! The sync state the daemon shows on `GET /v1/host` and in `/metrics`: which peers are
//! connected, which are banned, whether the chain has caught up with them, and when the
//! last new header arrived.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Whether the host's chain has caught up with its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncState {
    /// No peer is configured: headers come only from the operator.
    Off,
    /// Peers are configured, none is connected.
    NoPeers,
    /// Connected, and some peer still has headers the chain lacks.
    Syncing,
    /// A connected peer answered our `getheaders` with less than a full batch (nothing
    /// more), and the chain's tip had reached the height the peer announced.
    Synced,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Off => "off",
            SyncState::NoPeers => "no_peers",
            SyncState::Syncing => "syncing",
            SyncState::Synced => "synced",
        }
    }
}

#[derive(Clone, Debug, Default)]
struct PeerEntry {
    connected: bool,
    caught_up: bool,
    banned_until: Option<Instant>,
    user_agent: String,
    /// A seed address its slot gave up, kept only while its ban lasts (so that
    /// `peers_banned` still counts it).
    released: bool,
}

#[derive(Debug, Default)]
struct Inner {
    configured: bool,
    peers: BTreeMap<String, PeerEntry>,
    headers_accepted: u64,
    last_header_unix_s: Option<u64>,
    bans: u64,
}

/// Shared between the peer tasks (writers) and the daemon's handlers (readers).
#[derive(Debug, Default)]
pub struct SyncStatus {
    inner: Mutex<Inner>,
}

/// A copy of the state at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncSnapshot {
    pub state: SyncState,
    pub peers_connected: u32,
    pub peers_banned: u32,
    /// Headers peers sent that the chain took as new, since start.
    pub headers_accepted: u64,
    /// Unix time the last new header from a peer was stored.
    pub last_header_unix_s: Option<u64>,
    /// Peers banned since start (each ban counts once).
    pub bans_total: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SyncStatus {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut inner)
    }

    pub(crate) fn configured(&self, peer: &str) {
        self.with(|i| {
            i.configured = true;
            i.peers.entry(peer.to_string()).or_default().released = false;
        });
    }

    /// A seed slot gave `peer` up for another address: it is forgotten, unless banned at
    /// `now`, in which case it is kept until its ban is over. Every released entry whose
    /// ban has ended goes too, so entries stay as few as the slots and the banned seed
    /// addresses (bounded by the seed pool).
    pub(crate) fn released(&self, peer: &str, now: Instant) {
        self.with(|i| {
            if let Some(e) = i.peers.get_mut(peer) {
                e.released = true;
                e.connected = false;
                e.caught_up = false;
            }
            i.peers
                .retain(|_, e| !e.released || e.banned_until.is_some_and(|t| t > now));
        });
    }

    pub(crate) fn connected(&self, peer: &str, user_agent: &str) {
        self.with(|i| {
            let e = i.peers.entry(peer.to_string()).or_default();
            e.connected = true;
            e.caught_up = false;
            e.user_agent = user_agent.to_string();
        });
    }

    pub(crate) fn disconnected(&self, peer: &str) {
        self.with(|i| {
            if let Some(e) = i.peers.get_mut(peer) {
                e.connected = false;
                e.caught_up = false;
            }
        });
    }

    pub(crate) fn banned(&self, peer: &str, until: Instant) {
        self.with(|i| {
            i.bans += 1;
            let e = i.peers.entry(peer.to_string()).or_default();
            e.banned_until = Some(until);
        });
    }

    pub(crate) fn caught_up(&self, peer: &str, yes: bool) {
        self.with(|i| {
            if let Some(e) = i.peers.get_mut(peer) {
                e.caught_up = yes;
            }
        });
    }

    pub(crate) fn headers_added(&self, added: usize) {
        if added == 0 {
            return;
        }
        self.with(|i| {
            i.headers_accepted += added as u64;
            i.last_header_unix_s = Some(unix_now());
        });
    }

    /// Whether `peer` is banned at `now`.
    pub fn is_banned(&self, peer: &str, now: Instant) -> bool {
        self.with(|i| {
            i.peers
                .get(peer)
                .and_then(|e| e.banned_until)
                .is_some_and(|t| t > now)
        })
    }

    pub fn snapshot(&self) -> SyncSnapshot {
        let now = Instant::now();
        self.with(|i| {
            let connected = i.peers.values().filter(|e| e.connected);
            let peers_connected = connected.clone().count() as u32;
            let caught_up = connected.clone().any(|e| e.caught_up);
            let state = if !i.configured {
                SyncState::Off
            } else if peers_connected == 0 {
                SyncState::NoPeers
            } else if caught_up {
                SyncState::Synced
            } else {
                SyncState::Syncing
            };
            SyncSnapshot {
                state,
                peers_connected,
                peers_banned: i
                    .peers
                    .values()
                    .filter(|e| e.banned_until.is_some_and(|t| t > now))
                    .count() as u32,
                headers_accepted: i.headers_accepted,
                last_header_unix_s: i.last_header_unix_s,
                bans_total: i.bans,
            }
        })
    }
}
