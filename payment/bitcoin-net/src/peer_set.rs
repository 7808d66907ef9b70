//! The set of peers: one task per configured `HOST:PORT`, and, when asked, `seed_peers`
//! slots that draw their addresses from the network's DNS seeds through a shared
//! [`SeedPool`]. Each connects, runs a [`session`] and reconnects after it ends, with
//! exponential back-off. A peer that misbehaved is banned. A configured peer's task waits
//! out the ban (the operator named that peer); a seeded slot gives a banned address back
//! to the pool, where the ban stays, and takes another, as it does after
//! [`FAILURES_BEFORE_REPLACING`] failed sessions in a row (a closed, silent or stalling
//! peer), so the host keeps as many seeded peers as it asked for. Stopping the set
//! (aborting the handle [`spawn`] returns) stops every peer task with it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitcoin::p2p::Magic;
use payment::onchain::ChainNetwork;
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};

use crate::seed_pool::{GiveUp, SeedPool, FAILURES_BEFORE_REPLACING, REST};
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
    /// How many connections to keep to addresses from the DNS seeds (slots; at most
    /// [`MAX_PER_SEED`](crate::seed_pool::MAX_PER_SEED) of them from any one seed).
    pub seed_peers: usize,
    /// How long a misbehaving peer is shunned (at most [`MAX_BAN`]; the back-off still
    /// applies after it). A seeded slot does not wait: it takes another address, and the
    /// banned one is not taken again before the ban ends.
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
                Arc::clone(&config),
                Arc::clone(&chain),
                Arc::clone(&status),
            ));
        }
        if config.dns_seeds && !config.seeds.is_empty() && config.seed_peers > 0 {
            let seeds = Arc::new(Seeds::new(
                &config,
                Box::new(|seed, port| {
                    Box::pin(async move {
                        tokio::net::lookup_host((seed.as_str(), port))
                            .await
                            .map(Iterator::collect)
                    })
                }),
            ));
            for _ in 0..config.seed_peers {
                tasks.spawn(seed_slot(
                    Arc::clone(&seeds),
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

/// A DNS lookup of one seed at a port. Tests give their own: they talk only to loopback.
type Resolve = dyn Fn(String, u16) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>
    + Send
    + Sync;

/// How long one seed's DNS lookup may take. The round holds every seeded slot that wants
/// an address (see [`Seeds::refresh`]), so a resolver that never answers must not hold
/// them for ever; the system resolver's own retries (resolv.conf's timeout and attempts)
/// fit well within this.
const DNS_LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The seeds and the pool of their addresses, shared by the seeded slots.
struct Seeds {
    seeds: Vec<String>,
    port: u16,
    resolve: Box<Resolve>,
    /// [`DNS_LOOKUP_TIMEOUT`]; tests shorten it.
    lookup_timeout: Duration,
    /// The configured peers given as `HOST:PORT` with a host name, resolved each round.
    named_peers: Vec<(String, u16)>,
    pool: Mutex<SeedPool>,
    /// When the seeds were last asked and how long until they may be asked again; held
    /// through a round, so that slots short of an address at the same moment (all of them
    /// at start) share one round rather than each asking every seed.
    asked: tokio::sync::Mutex<Asked>,
    backoff_min: Duration,
    backoff_max: Duration,
}

struct Asked {
    last: Option<Instant>,
    wait: Duration,
}

impl Seeds {
    fn new(config: &PeerSetConfig, resolve: Box<Resolve>) -> Self {
        // A configured peer has a slot of its own: a seed naming it would only make a
        // second connection to the same node. One given by host name is resolved with
        // each round (see `refresh`).
        let exclude = config.peers.iter().filter_map(|p| p.parse().ok()).collect();
        let named_peers = config
            .peers
            .iter()
            .filter(|p| p.parse::<SocketAddr>().is_err())
            .filter_map(|p| {
                let (host, port) = p.rsplit_once(':')?;
                Some((host.to_string(), port.parse().ok()?))
            })
            .collect();
        Seeds {
            seeds: config.seeds.clone(),
            port: config.seed_port,
            resolve,
            lookup_timeout: DNS_LOOKUP_TIMEOUT,
            named_peers,
            pool: Mutex::new(SeedPool::new(exclude)),
            asked: tokio::sync::Mutex::new(Asked {
                last: None,
                wait: config.backoff_min,
            }),
            backoff_min: config.backoff_min,
            backoff_max: config.backoff_max,
        }
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, SeedPool> {
        // The pool's methods cannot leave it half-changed (no panics inside), so a
        // poisoned lock holds a consistent pool.
        self.pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self) -> Option<SocketAddr> {
        self.pool().take(Instant::now())
    }

    fn give_back(&self, addr: SocketAddr, why: GiveUp) {
        self.pool().give_back(addr, why, Instant::now());
    }

    /// Asks every seed and adds their answers to the pool, unless the last round was too
    /// recent. While rounds bring nothing new the wait between them doubles from
    /// `backoff_min`: up to `backoff_max` while the pool is empty (at boot DNS may not be
    /// up yet, and giving up then left the host without seeded peers until it restarted),
    /// up to [`REST`] once it holds addresses (they become takeable again on their own, as
    /// bans end and rests pass), so that a dead pool does not make the seeds a target of
    /// a lookup a minute for ever.
    async fn refresh(&self) {
        let mut asked = self.asked.lock().await;
        if asked.last.is_some_and(|t| t.elapsed() < asked.wait) {
            return;
        }
        // A configured peer named by host name has a slot of its own too: what it resolves
        // to now is not dialled again from the pool.
        for (host, port) in &self.named_peers {
            if let Ok(Ok(addrs)) =
                tokio::time::timeout(self.lookup_timeout, (self.resolve)(host.clone(), *port)).await
            {
                self.pool().exclude(addrs);
            }
        }
        let mut answered = 0;
        let mut added = 0;
        for (i, seed) in self.seeds.iter().enumerate() {
            match tokio::time::timeout(self.lookup_timeout, (self.resolve)(seed.clone(), self.port))
                .await
            {
                Ok(Ok(addrs)) => {
                    answered += addrs.len();
                    added += self.pool().add(i, addrs, Instant::now());
                }
                Ok(Err(e)) => tracing::warn!(seed, error = %e, "DNS seed lookup failed"),
                Err(_) => tracing::warn!(
                    seed,
                    timeout_ms = self.lookup_timeout.as_millis() as u64,
                    "DNS seed lookup gave no answer in time; the next seed is asked"
                ),
            }
        }
        let (empty, cap) = {
            let pool = self.pool();
            let cap = if pool.is_empty() {
                self.backoff_max
            } else {
                self.backoff_max.max(REST)
            };
            (pool.is_empty(), cap)
        };
        asked.wait = if added > 0 {
            self.backoff_min
        } else {
            asked.wait.saturating_mul(2).min(cap)
        };
        asked.last = Some(Instant::now());
        if empty {
            tracing::warn!(
                retry_ms = asked.wait.as_millis() as u64,
                "no DNS seed gave an address"
            );
        } else {
            tracing::info!(answered, added, "DNS seeds asked for peer addresses");
        }
    }
}

/// How a connection to a peer ended.
struct Ended {
    why: String,
    /// It misbehaved: banned.
    ban: bool,
    /// The session lasted [`PeerSetConfig::stable_after`]: the back-off starts over.
    stable: bool,
    /// It counts against the address: no connection, no handshake, gone quiet, or over
    /// before it was stable; not when the host itself ended it.
    failed: bool,
}

/// Connects to `target` and runs a session until it ends.
async fn attempt(
    target: &str,
    ctx: &SessionContext,
    config: &PeerSetConfig,
    status: &SyncStatus,
) -> Ended {
    let started = Instant::now();
    let ended = match connect(target, config.timers.handshake).await {
        Ok(stream) => {
            let end = session::run(stream, ctx).await;
            let stable = started.elapsed() >= config.stable_after;
            Ended {
                why: end.to_string(),
                ban: end.is_misbehaviour(),
                stable,
                failed: !end.is_host_fault() && (!stable || end.is_silence()),
            }
        }
        Err(e) => Ended {
            why: format!("connect: {e}"),
            ban: false,
            stable: started.elapsed() >= config.stable_after,
            failed: true,
        },
    };
    status.disconnected(&ctx.label);
    ended
}

fn context(
    label: &str,
    config: &PeerSetConfig,
    chain: &Arc<dyn ChainAccess>,
    status: &Arc<SyncStatus>,
) -> SessionContext {
    SessionContext {
        label: label.to_string(),
        magic: Magic::from(config.network.bitcoin_network()),
        user_agent: config.user_agent.clone(),
        timers: config.timers.clone(),
        chain: Arc::clone(chain),
        status: Arc::clone(status),
    }
}

/// Keeps one configured peer connected for as long as the set runs. The operator named
/// it, so it is never swapped for another: a ban is waited out.
async fn peer_loop(
    target: String,
    config: Arc<PeerSetConfig>,
    chain: Arc<dyn ChainAccess>,
    status: Arc<SyncStatus>,
) {
    let ctx = context(&target, &config, &chain, &status);
    let mut backoff = config.backoff_min;
    loop {
        let started = Instant::now();
        let end = attempt(&target, &ctx, &config, &status).await;
        if end.ban {
            let until = ban_deadline(Instant::now(), config.ban_for);
            status.banned(&target, until);
            tracing::warn!(peer = %target, reason = %end.why, ban_s = config.ban_for.as_secs(), "bitcoin peer banned");
            tokio::time::sleep_until(until.into()).await;
        } else {
            tracing::info!(peer = %target, reason = %end.why, retry_ms = backoff.as_millis() as u64, "bitcoin peer disconnected");
        }
        // Counted from before the ban's wait: after a long ban the back-off starts over.
        if started.elapsed() >= config.stable_after {
            backoff = config.backoff_min;
        }
        // After a ban too: with a short (or zero) ban a peer that misbehaves at once would
        // otherwise be redialled in a tight loop.
        tokio::time::sleep(backoff).await;
        backoff = backoff.saturating_mul(2).min(config.backoff_max);
    }
}

/// One seeded slot: keeps a peer from the seeds' pool connected for as long as the set
/// runs. Its address is given back, and another taken, when the peer there is banned (the
/// ban stays on that address, in the pool) or fails [`FAILURES_BEFORE_REPLACING`] times in
/// a row. One back-off runs across addresses, reset only by a stable session, so a pool
/// of dead addresses is dialled no faster than one dead peer.
async fn seed_slot(
    seeds: Arc<Seeds>,
    config: Arc<PeerSetConfig>,
    chain: Arc<dyn ChainAccess>,
    status: Arc<SyncStatus>,
) {
    let mut backoff = config.backoff_min;
    loop {
        let addr = match seeds.take() {
            Some(addr) => Some(addr),
            None => {
                seeds.refresh().await;
                seeds.take()
            }
        };
        if let Some(addr) = addr {
            keep_seed_address(addr, &seeds, &config, &chain, &status, &mut backoff).await;
        }
        tokio::time::sleep(backoff).await;
        backoff = backoff.saturating_mul(2).min(config.backoff_max);
    }
}

/// Runs sessions with `addr` until the slot gives it up (back to the pool).
async fn keep_seed_address(
    addr: SocketAddr,
    seeds: &Seeds,
    config: &PeerSetConfig,
    chain: &Arc<dyn ChainAccess>,
    status: &Arc<SyncStatus>,
    backoff: &mut Duration,
) {
    let label = format!("seed:{addr}");
    status.configured(&label);
    let ctx = context(&label, config, chain, status);
    let target = addr.to_string();
    let mut failures = 0u32;
    loop {
        let end = attempt(&target, &ctx, config, status).await;
        if end.stable {
            *backoff = config.backoff_min;
        }
        if end.ban {
            let until = ban_deadline(Instant::now(), config.ban_for);
            status.banned(&label, until);
            tracing::warn!(peer = %label, reason = %end.why, ban_s = config.ban_for.as_secs(), "bitcoin peer banned; its slot takes another seed address");
            seeds.give_back(addr, GiveUp::Banned { until });
            status.released(&label, Instant::now());
            return;
        }
        failures = match (end.failed, end.stable) {
            (true, _) => failures + 1,
            (false, true) => 0,
            // Ended by the host, early: says nothing about the peer either way.
            (false, false) => failures,
        };
        if failures >= FAILURES_BEFORE_REPLACING {
            tracing::info!(peer = %label, reason = %end.why, failures, "bitcoin peer keeps failing; its slot takes another seed address");
            seeds.give_back(addr, GiveUp::Failing);
            status.released(&label, Instant::now());
            return;
        }
        tracing::info!(peer = %label, reason = %end.why, retry_ms = backoff.as_millis() as u64, "bitcoin peer disconnected");
        tokio::time::sleep(*backoff).await;
        *backoff = backoff.saturating_mul(2).min(config.backoff_max);
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

    fn seeds_with(resolve: Box<Resolve>) -> Seeds {
        let mut config = PeerSetConfig::new(ChainNetwork::Mainnet, vec!["127.0.9.9:8333".into()]);
        config.seeds = ["a", "b", "c", "d"].map(String::from).to_vec();
        config.backoff_min = Duration::from_millis(1);
        config.backoff_max = Duration::from_millis(4);
        Seeds::new(&config, resolve)
    }

    fn addrs(first: u8, n: u8) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, first, i], 8333)))
            .collect()
    }

    #[tokio::test]
    async fn every_seed_is_asked_and_none_fills_more_than_two_slots() {
        let seeds = seeds_with(Box::new(|seed, _port| {
            Box::pin(async move {
                match seed.as_str() {
                    "a" => Ok(addrs(1, 25)),
                    "b" => Err(std::io::Error::other("no answer")),
                    // The configured peer among them is not taken.
                    "c" => {
                        Ok([vec![SocketAddr::from(([127, 0, 9, 9], 8333))], addrs(3, 25)].concat())
                    }
                    _ => Ok(addrs(4, 25)),
                }
            })
        }));
        seeds.refresh().await;
        let got: Vec<String> = std::iter::from_fn(|| seeds.take())
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            got,
            [
                "127.0.1.0:8333",
                "127.0.1.1:8333",
                "127.0.3.0:8333",
                "127.0.3.1:8333",
                "127.0.4.0:8333",
                "127.0.4.1:8333",
            ]
        );
    }

    #[tokio::test]
    async fn seeds_are_asked_again_with_back_off_until_one_answers() {
        let rounds = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&rounds);
        let seeds = seeds_with(Box::new(move |seed, _port| {
            // Four seeds a round: the round number is the lookup's number over four.
            let round = counted.fetch_add(1, Ordering::SeqCst) / 4;
            Box::pin(async move {
                if round < 2 || seed != "d" {
                    Err(std::io::Error::other("DNS not up yet"))
                } else {
                    Ok(addrs(1, 1))
                }
            })
        }));
        // A round just asked is not asked again at once, however many slots want one.
        seeds.refresh().await;
        seeds.refresh().await;
        assert_eq!(rounds.load(Ordering::SeqCst), 4);
        let got = loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            seeds.refresh().await;
            if let Some(a) = seeds.take() {
                break a;
            }
        };
        assert_eq!(got, addrs(1, 1)[0]);
        assert_eq!(rounds.load(Ordering::SeqCst), 12);
    }

    #[tokio::test]
    async fn a_configured_peer_named_by_host_name_is_not_taken_from_the_seeds() {
        let mut config = PeerSetConfig::new(
            ChainNetwork::Mainnet,
            vec!["node.example:8333".into(), "127.0.9.9:8333".into()],
        );
        config.seeds = vec!["a".into()];
        let seeds = Seeds::new(
            &config,
            Box::new(|name, port| {
                Box::pin(async move {
                    match (name.as_str(), port) {
                        ("node.example", 8333) => {
                            Ok(vec![SocketAddr::from(([127, 0, 1, 0], 8333))])
                        }
                        ("a", _) => Ok(addrs(1, 3)),
                        other => Err(std::io::Error::other(format!("unexpected {other:?}"))),
                    }
                })
            }),
        );
        seeds.refresh().await;
        let got: Vec<SocketAddr> = std::iter::from_fn(|| seeds.take()).collect();
        assert_eq!(
            got,
            addrs(1, 3)[1..].to_vec(),
            "127.0.1.0 is the configured node"
        );
    }

    #[tokio::test]
    async fn a_seed_whose_lookup_never_answers_does_not_hold_the_round() {
        let mut seeds = seeds_with(Box::new(|seed, _port| {
            Box::pin(async move {
                if seed == "b" {
                    // A resolver that never answers.
                    std::future::pending::<()>().await;
                }
                Ok(addrs(seed.as_bytes()[0], 1))
            })
        }));
        seeds.lookup_timeout = Duration::from_millis(50);
        let round = tokio::time::timeout(Duration::from_secs(10), seeds.refresh()).await;
        assert!(
            round.is_ok(),
            "the round ended although seed b never answered"
        );
        let mut got: Vec<SocketAddr> = std::iter::from_fn(|| seeds.take()).collect();
        got.sort();
        let mut want = [b'a', b'c', b'd'].map(|s| addrs(s, 1)[0]).to_vec();
        want.sort();
        assert_eq!(got, want, "the seeds after the silent one were asked too");
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
