//! A peer slot filled from the DNS seeds must not keep a dead address for good: when the
//! address it took is closed, silent (accepts and never speaks) or gets banned, the slot
//! takes another address the seeds gave, so the host keeps as many working peers as it
//! asked for. The seeds here are loopback IP literals, which resolve as themselves (the
//! real lookup, no DNS needed), all on one port: the silent and misbehaving peers listen on
//! 127.0.0.2 and 127.0.0.3, and the working address is bcoin, a real node, on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::p2p::message::NetworkMessage;
use coinop_bitcoin_net::codec::{read_message, write_message};
use coinop_bitcoin_net::peer_set::{self, PeerSetConfig};
use coinop_bitcoin_net::seed_pool::FAILURES_BEFORE_REPLACING;
use coinop_bitcoin_net::session::{SessionTimers, MAX_HEADERS_PER_MESSAGE};
use coinop_bitcoin_net::SyncStatus;
use common::bcoin::{bcoin_dir, free_port, Bcoin};
use common::{accept_handshake, headers, Chain, MAGIC};
use payment::onchain::ChainNetwork;
use tokio::net::TcpListener;

/// One seeded slot over `seeds` (IP literals) on `port`, with timers small enough that a
/// silent address is given up on within a second or two. bcoin at genesis does not answer
/// `getheaders` (it serves headers only once its own tip is recent), so the stall timer is
/// long: a session with it stays up for the whole test.
fn one_seed_slot(seeds: &[&str], port: u16) -> PeerSetConfig {
    let mut config = PeerSetConfig::new(ChainNetwork::Regtest, Vec::new());
    config.dns_seeds = true;
    config.seeds = seeds.iter().map(|s| s.to_string()).collect();
    config.seed_port = port;
    config.seed_peers = 1;
    config.backoff_min = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    config.timers = SessionTimers {
        handshake: Duration::from_millis(300),
        ping_interval: Duration::from_secs(60),
        headers_timeout: Duration::from_secs(60),
        write: Duration::from_secs(5),
    };
    config
}

/// Counts the connections a listener accepts; `serve` runs on each.
fn count_connections<F, Fut>(listener: TcpListener, serve: F) -> Arc<AtomicUsize>
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let count = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&count);
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(s));
        }
    });
    count
}

async fn bind(ip: [u8; 4], port: u16) -> TcpListener {
    TcpListener::bind(SocketAddr::from((ip, port)))
        .await
        .unwrap_or_else(|e| panic!("bind {ip:?}:{port}: {e}"))
}

/// Waits (up to `limit`) until `f` holds.
async fn wait_until(limit: Duration, f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::test]
async fn a_seed_slot_whose_address_is_closed_or_silent_moves_on_to_a_working_one() {
    let Some(dir) = bcoin_dir() else { return };
    let port = free_port();
    let _node = Bcoin::start(&dir, port);
    // 127.0.0.2: nothing listens (refused at once). 127.0.0.3: accepts, never speaks.
    let silent = count_connections(bind([127, 0, 0, 3], port).await, |mut s| async move {
        // Held open until the host hangs up.
        let _ = read_message(&mut s, MAGIC).await;
    });
    let status = Arc::new(SyncStatus::default());
    let set = peer_set::spawn(
        one_seed_slot(&["127.0.0.2", "127.0.0.3", "127.0.0.1"], port),
        Chain::regtest_genesis(),
        Arc::clone(&status),
    );
    // Only bcoin can finish a handshake: one peer connected is the slot on bcoin.
    let connected = wait_until(Duration::from_secs(20), || {
        status.snapshot().peers_connected == 1
    })
    .await;
    set.abort();
    assert!(
        connected,
        "the slot never left its dead addresses for bcoin: {:?}",
        status.snapshot()
    );
    // Tried as often as a failing address is before the slot gives it up, and not since
    // (it rests).
    assert_eq!(
        silent.load(Ordering::SeqCst),
        FAILURES_BEFORE_REPLACING as usize
    );
}

#[tokio::test]
async fn a_seed_slot_whose_peer_is_banned_moves_on_and_does_not_dial_it_again() {
    let Some(dir) = bcoin_dir() else { return };
    let port = free_port();
    let _node = Bcoin::start(&dir, port);
    // 127.0.0.3: finishes the handshake, then sends more headers than a message may hold.
    let too_many = vec![headers()[0]; MAX_HEADERS_PER_MESSAGE + 1];
    let hostile = count_connections(bind([127, 0, 0, 3], port).await, move |mut s| {
        let too_many = too_many.clone();
        async move {
            accept_handshake(&mut s).await;
            let _ = write_message(&mut s, MAGIC, NetworkMessage::Headers(too_many)).await;
            let _ = read_message(&mut s, MAGIC).await;
        }
    });
    let status = Arc::new(SyncStatus::default());
    let set = peer_set::spawn(
        one_seed_slot(&["127.0.0.3", "127.0.0.1"], port),
        Chain::regtest_genesis(),
        Arc::clone(&status),
    );
    let moved_on = wait_until(Duration::from_secs(20), || {
        let s = status.snapshot();
        s.bans_total == 1 && s.peers_connected == 1
    })
    .await;
    let at_connect = hostile.load(Ordering::SeqCst);
    // Well past the back-off (at most 200 ms here): a banned address is not dialled again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let snapshot = status.snapshot();
    set.abort();
    assert!(
        moved_on,
        "the banned slot did not move on to bcoin: {snapshot:?}"
    );
    assert!(status.is_banned(&format!("seed:127.0.0.3:{port}"), Instant::now()));
    assert_eq!(snapshot.peers_banned, 1);
    assert_eq!(snapshot.peers_connected, 1, "still on bcoin");
    assert_eq!(hostile.load(Ordering::SeqCst), at_connect);
}
