//! The peer set's ban, at the edges of `ban_for`: a ban too long for `Instant` is kept (at
//! most [`MAX_BAN`]) rather than killing the peer's task, and a zero ban still leaves the
//! back-off between redials. The peer is scripted on loopback: it finishes the handshake,
//! then sends more headers in one message than the protocol allows, which gets it banned.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::p2p::message::NetworkMessage;
use coinop_bitcoin_net::codec::write_message;
use coinop_bitcoin_net::peer_set::{self, PeerSetConfig};
use coinop_bitcoin_net::session::MAX_HEADERS_PER_MESSAGE;
use coinop_bitcoin_net::SyncStatus;
use common::{accept_handshake, headers, Chain, MAGIC};
use payment::onchain::ChainNetwork;
use tokio::net::TcpListener;

/// A peer at a loopback address that misbehaves on every connection; counts connections.
async fn misbehaving_peer() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&count);
    let too_many = vec![headers()[0]; MAX_HEADERS_PER_MESSAGE + 1];
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            let too_many = too_many.clone();
            tokio::spawn(async move {
                accept_handshake(&mut s).await;
                let _ = write_message(&mut s, MAGIC, NetworkMessage::Headers(too_many)).await;
                // Hold the connection until the host drops it.
                let _ = coinop_bitcoin_net::codec::read_message(&mut s, MAGIC).await;
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn a_ban_too_long_for_instant_is_kept_and_does_not_kill_the_peer_task() {
    let (addr, count) = misbehaving_peer().await;
    let mut config = PeerSetConfig::new(ChainNetwork::Regtest, vec![addr.clone()]);
    config.ban_for = Duration::MAX;
    let status = Arc::new(SyncStatus::default());
    let set = peer_set::spawn(config, Chain::regtest_genesis(), Arc::clone(&status));
    let deadline = Instant::now() + Duration::from_secs(15);
    while status.snapshot().bans_total == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status.snapshot().bans_total, 1, "the peer was banned");
    assert!(status.is_banned(
        &addr,
        Instant::now() + Duration::from_secs(10 * 365 * 86_400)
    ));
    // Banned, so not dialled again: past the back-off (500 ms by default) the count stays.
    // (Counted from the ban, not from 1: under load a first session can end for another
    // reason before the peer's headers arrive, and that one is redialled.)
    let at_ban = count.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(count.load(Ordering::SeqCst), at_ban);
    assert_eq!(status.snapshot().bans_total, 1);
    set.abort();
}

#[tokio::test]
async fn a_zero_ban_still_backs_off_between_redials() {
    let (addr, count) = misbehaving_peer().await;
    let mut config = PeerSetConfig::new(ChainNetwork::Regtest, vec![addr]);
    config.ban_for = Duration::ZERO;
    config.backoff_min = Duration::from_millis(200);
    let status = Arc::new(SyncStatus::default());
    let set = peer_set::spawn(config, Chain::regtest_genesis(), Arc::clone(&status));
    // Dials at about 0, 0.2, 0.6, 1.4 s (back-off doubling) within two seconds; without
    // the back-off it is hundreds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    set.abort();
    let dials = count.load(Ordering::SeqCst);
    assert!((2..=6).contains(&dials), "{dials} connections in 2 s");
}
