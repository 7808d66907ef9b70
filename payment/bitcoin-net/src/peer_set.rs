//! The set of peers: one task per configured `HOST:PORT` (and, when asked, per address the
//! network's DNS seeds return), each connecting, running a [`session`](crate::session) and
//! reconnecting after it ends, with exponential back-off. A peer that misbehaved is banned:
//! its task waits out the ban before connecting again. Stopping the set (aborting the
//! handle [`spawn`] returns) stops every peer task with it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::p2p::Magic;
use payment::onchain::ChainNetwork;
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};

use crate::session::{self, SessionContext, SessionTimers};
use crate::status::SyncStatus;
use crate::ChainAccess;

/// How the peer set runs.
#[derive(Clone, Debug)]
pub struct PeerSetConfig {
    pub network: ChainNetwork,
    /// `HOST:PORT` of each peer to keep a connection to.
    pub peers: Vec<String>,
    /// Also connect to addresses from the network's DNS seeds (mainnet and testnets only).
    pub dns_seeds: bool,
    /// The seeds asked when `dns_seeds` is on, and the port their addresses are dialled on:
    /// the network's own ([`dns_seeds`]) unless changed. Tests name loopback addresses here,
    /// which resolve as themselves, so the seeded path runs without DNS.
    pub seeds: Vec<String>,
    pub seed_port: u16,
    /// How many DNS-seed addresses to use at most.
    pub seed_peers: usize,
    /// How long a misbehaving peer is shunned (at most [`MAX_BAN`]; the back-off still
    /// applies after it).
    pub ban_for: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A session that lasted this long resets the back-off.
    pub stable_after: Duration,
    pub timers: SessionTimers,
    pub user_agent: String,
}

impl PeerSetConfig {
    pub fn new(network: ChainNetwork, peers: Vec<String>) -> Self {
        let (seeds, seed_port) = dns_seeds(network);
        PeerSetConfig {
            network,
            peers,
            dns_seeds: false,
            seeds: seeds.iter().map(|s| s.to_string()).collect(),
            seed_port,
            seed_peers: 4,
            ban_for: Duration::from_secs(24 * 60 * 60),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            stable_after: Duration::from_secs(60),
            timers: SessionTimers::default(),
            user_agent: format!("/coinopd:{}/", env!("CARGO_PKG_VERSION")),
        }
    }

    /// Whether there is anyone to connect to.
    pub fn is_enabled(&self) -> bool {
        !self.peers.is_empty() || (self.dns_seeds && !self.seeds.is_empty())
    }
}

/// The network's DNS seeds and default port (Bitcoin Core's chainparams).
pub fn dns_seeds(network: ChainNetwork) -> (&'static [&'static str], u16) {
    match network {
        ChainNetwork::Mainnet => (
            &[
                "seed.bitcoin.sipa.be",
                "dnsseed.bluematt.me",
                "seed.bitcoin.jonasschnelli.ch",
                "seed.btc.petertodd.net",
                "seed.bitcoin.sprovoost.nl",
                "dnsseed.emzy.de",
                "seed.bitcoin.wiz.biz",
            ],
            8333,
        ),
        ChainNetwork::Testnet3 => (
            &[
                "testnet-seed.bitcoin.jonasschnelli.ch",
                "seed.tbtc.petertodd.net",
                "seed.testnet.bitcoin.sprovoost.nl",
                "testnet-seed.bluematt.me",
            ],
            18333,
        ),
        ChainNetwork::Testnet4 => (
            &[
                "seed.testnet4.bitcoin.sprovoost.nl",
                "seed.testnet4.wiz.biz",
            ],
            48333,
        ),
        // Signet headers are taken only from the operator; regtest has no public nodes.
        ChainNetwork::Signet | ChainNetwork::Regtest => (&[], 0),
    }
}

/// Starts the peer set; abort the handle to stop it and every peer task.
pub fn spawn(
    config: PeerSetConfig,
    chain: Arc<dyn ChainAccess>,
    status: Arc<SyncStatus>,
) -> JoinHandle<()> {
    for p in &config.peers {
        status.configured(p);
    }
    tokio::spawn(async move {
        let config = Arc::new(config);
        let mut tasks = JoinSet::new();
        for p in &config.peers {
            tasks.spawn(peer_loop(
                p.clone(),
                p.clone(),
                Arc::clone(&config),
                Arc::clone(&chain),
                Arc::clone(&status),
            ));
        }
        if config.dns_seeds && !config.seeds.is_empty() {
            let addrs = resolve_until_some(
                &config.seeds,
                config.seed_port,
                config.seed_peers,
                config.backoff_min,
                config.backoff_max,
                |seed, port| async move {
                    tokio::net::lookup_host((seed.as_str(), port))
                        .await
                        .map(Iterator::collect)
                },
            )
            .await;
            for addr in addrs {
                let label = format!("seed:{addr}");
                status.configured(&label);
                tasks.spawn(peer_loop(
                    label,
                    addr,
                    Arc::clone(&config),
                    Arc::clone(&chain),
                    Arc::clone(&status),
                ));
            }
        }
        // The tasks loop forever; this waits until the set is aborted (dropping `tasks`
        // aborts them all).
        while tasks.join_next().await.is_some() {}
    })
}

/// At most this many addresses are taken from one DNS seed, so that no single seed operator
/// (or whoever spoofs its unauthenticated DNS answers) picks every seeded peer.
pub const MAX_PER_SEED: usize = 2;

/// Resolves the seeds until some address comes back, waiting `backoff_min` doubling to
/// `backoff_max` between rounds: at boot DNS may not be up yet, and giving up then left
/// the host without seeded peers until it restarted. `resolve` is the DNS lookup (tests
/// give their own: they talk only to loopback).
async fn resolve_until_some<F, Fut>(
    seeds: &[String],
    port: u16,
    max: usize,
    backoff_min: Duration,
    backoff_max: Duration,
    resolve: F,
) -> Vec<String>
where
    F: Fn(String, u16) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<Vec<SocketAddr>>>,
{
    let mut wait = backoff_min;
    loop {
        let addrs = seed_addresses(seeds, port, max, &resolve).await;
        if !addrs.is_empty() || max == 0 {
            return addrs;
        }
        tracing::warn!(
            retry_ms = wait.as_millis() as u64,
            "no DNS seed gave an address"
        );
        tokio::time::sleep(wait).await;
        wait = wait.saturating_mul(2).min(backoff_max);
    }
}

/// Up to `max` distinct addresses from the seeds, at most [`MAX_PER_SEED`] from each.
async fn seed_addresses<F, Fut>(seeds: &[String], port: u16, max: usize, resolve: &F) -> Vec<String>
where
    F: Fn(String, u16) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<Vec<SocketAddr>>>,
{
    let mut out: Vec<String> = Vec::new();
    for seed in seeds {
        if out.len() >= max {
            break;
        }
        match resolve(seed.clone(), port).await {
            Ok(addrs) => {
                let mut taken = 0;
                for a in addrs {
                    if taken >= MAX_PER_SEED || out.len() >= max {
                        break;
                    }
                    let a = a.to_string();
                    if !out.contains(&a) {
                        out.push(a);
                        taken += 1;
                    }
                }
            }
            Err(e) => tracing::warn!(seed, error = %e, "DNS seed lookup failed"),
        }
    }
    out
}

/// Keeps one peer connected for as long as the set runs.
async fn peer_loop(
    label: String,
    target: String,
    config: Arc<PeerSetConfig>,
    chain: Arc<dyn ChainAccess>,
    status: Arc<SyncStatus>,
) {
    let ctx = SessionContext {
        label: label.clone(),
        magic: Magic::from(config.network.bitcoin_network()),
        user_agent: config.user_agent.clone(),
        timers: config.timers.clone(),
        chain,
        status: Arc::clone(&status),
    };
    let mut backoff = config.backoff_min;
    loop {
        let started = Instant::now();
        let ended = match connect(&target, config.timers.handshake).await {
            Ok(stream) => {
                let end = session::run(stream, &ctx).await;
                (end.to_string(), end.is_misbehaviour())
            }
            Err(e) => (format!("connect: {e}"), false),
        };
        status.disconnected(&label);
        let (why, ban) = ended;
        if ban {
            let until = ban_deadline(Instant::now(), config.ban_for);
            status.banned(&label, until);
            tracing::warn!(peer = %label, reason = %why, ban_s = config.ban_for.as_secs(), "bitcoin peer banned");
            tokio::time::sleep_until(until.into()).await;
        } else {
            tracing::info!(peer = %label, reason = %why, retry_ms = backoff.as_millis() as u64, "bitcoin peer disconnected");
        }
        if started.elapsed() >= config.stable_after {
            backoff = config.backoff_min;
        }
        // After a ban too: with a short (or zero) ban a peer that misbehaves at once would
        // otherwise be redialled in a tight loop.
        tokio::time::sleep(backoff).await;
        backoff = backoff.saturating_mul(2).min(config.backoff_max);
    }
}

/// The longest ban kept: about 30 years, tokio's own "far future". Bans do not outlive the
/// process, so any longer one is the same ban, and a deadline that far cannot overflow
/// `Instant` (which `--bitcoin-ban-s` near `u64::MAX` did, killing the peer's task).
pub const MAX_BAN: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// When a ban of `ban_for` from `now` ends: at most [`MAX_BAN`] ahead, and never a panic.
pub fn ban_deadline(now: Instant, ban_for: Duration) -> Instant {
    let mut ban = ban_for.min(MAX_BAN);
    // Halving ends at zero, and `now + 0` always exists; in practice the first try
    // succeeds (a monotonic clock is nowhere near the end of `Instant`'s range).
    loop {
        if let Some(until) = now.checked_add(ban) {
            return until;
        }
        ban /= 2;
    }
}

async fn connect(target: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {timeout:?}"),
            ))
        }
    };
    // Every message is written whole, so Nagle's algorithm only adds latency: a small
    // `getheaders` written while the last `sendheaders` is unacknowledged would wait for
    // the peer's delayed ACK (Bitcoin Core sets TCP_NODELAY on its sockets too).
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn addrs(first: u8, n: u8) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, first, i], 8333)))
            .collect()
    }

    #[tokio::test]
    async fn no_seed_gives_more_than_two_addresses() {
        let resolve = |seed: String, _port| async move {
            match seed.as_str() {
                "a" => Ok(addrs(1, 25)),
                "b" => Err(std::io::Error::other("no answer")),
                _ => Ok(addrs(3, 25)),
            }
        };
        let got = seed_addresses(&["a", "b", "c", "d"].map(String::from), 8333, 4, &resolve).await;
        assert_eq!(
            got,
            [
                "127.0.1.0:8333",
                "127.0.1.1:8333",
                "127.0.3.0:8333",
                "127.0.3.1:8333"
            ]
        );
    }

    #[tokio::test]
    async fn seeds_are_asked_again_until_one_answers() {
        let rounds = AtomicUsize::new(0);
        let resolve = |_seed: String, _port| {
            let round = rounds.fetch_add(1, Ordering::SeqCst);
            async move {
                if round < 2 {
                    Err(std::io::Error::other("DNS not up yet"))
                } else {
                    Ok(addrs(1, 1))
                }
            }
        };
        let got = resolve_until_some(
            &["only".to_string()],
            8333,
            4,
            Duration::from_millis(1),
            Duration::from_millis(4),
            resolve,
        )
        .await;
        assert_eq!(got, ["127.0.1.0:8333"]);
        assert_eq!(rounds.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_huge_ban_saturates_instead_of_overflowing() {
        let now = Instant::now();
        assert_eq!(ban_deadline(now, Duration::MAX), now + MAX_BAN);
        assert_eq!(
            ban_deadline(now, Duration::from_secs(u64::MAX)),
            now + MAX_BAN
        );
        assert_eq!(
            ban_deadline(now, Duration::from_secs(60)),
            now + Duration::from_secs(60)
        );
        assert_eq!(ban_deadline(now, Duration::ZERO), now);
    }
}
