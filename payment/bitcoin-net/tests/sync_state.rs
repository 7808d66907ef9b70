//! "Synced" must not be one peer's say-so. The host's chain is at block 10; a scripted
//! loopback peer announces a height in its `version` and answers the host's `getheaders`
//! with an empty `headers` message ("nothing more"). Below the announced height that answer
//! is a lagging or lying peer: the host stays `syncing` (a tip taken as synced decides
//! where a reused quote index's old quote is retired), and the request counts as
//! unanswered, so the stall timer ends the session.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bitcoin::p2p::message::NetworkMessage;
use coinop_bitcoin_net::codec::{read_message, write_message};
use coinop_bitcoin_net::peer_set::{self, PeerSetConfig};
use coinop_bitcoin_net::session::SessionTimers;
use coinop_bitcoin_net::{ChainAccess, SyncState, SyncStatus};
use common::{accept_handshake_at, headers, next_getheaders, Chain, MAGIC};
use payment::onchain::ChainNetwork;
use tokio::net::TcpListener;

/// What the peer saw: the sync state once its empty answer was handled, and whether the
/// host then hung up within `hangup_within`.
async fn empty_answer_from_peer_at(
    start_height: i32,
    hangup_within: Duration,
) -> (SyncState, bool) {
    let chain = Chain::regtest_genesis();
    chain.accept_headers(&headers()[..10]).unwrap();
    assert_eq!(chain.tip().height, 10);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let status = Arc::new(SyncStatus::default());
    let seen = Arc::clone(&status);
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        accept_handshake_at(&mut s, start_height).await;
        let mut sendheaders = false;
        next_getheaders(&mut s, &mut sendheaders).await;
        write_message(&mut s, MAGIC, NetworkMessage::Headers(Vec::new()))
            .await
            .unwrap();
        // Messages are handled in order: once the pong is back, so is the empty answer.
        write_message(&mut s, MAGIC, NetworkMessage::Ping(9))
            .await
            .unwrap();
        loop {
            match read_message(&mut s, MAGIC).await.unwrap() {
                NetworkMessage::Pong(9) => break,
                _ => continue,
            }
        }
        let state = seen.snapshot().state;
        let hung_up = tokio::time::timeout(hangup_within, async {
            while read_message(&mut s, MAGIC).await.is_ok() {}
        })
        .await
        .is_ok();
        (state, hung_up)
    });
    let mut config = PeerSetConfig::new(ChainNetwork::Regtest, vec![addr]);
    config.timers = SessionTimers {
        handshake: Duration::from_secs(5),
        ping_interval: Duration::from_secs(600),
        headers_timeout: Duration::from_secs(1),
        write: Duration::from_secs(5),
    };
    let set = peer_set::spawn(config, chain, status);
    let out = tokio::time::timeout(Duration::from_secs(20), peer)
        .await
        .expect("the scripted peer finishes")
        .unwrap();
    set.abort();
    out
}

#[tokio::test]
async fn an_empty_answer_below_the_peers_announced_height_is_not_synced() {
    let (state, hung_up) = empty_answer_from_peer_at(50, Duration::from_secs(8)).await;
    assert_eq!(state, SyncState::Syncing);
    assert!(hung_up, "the unanswered getheaders stalled the session");
}

#[tokio::test]
async fn an_empty_answer_at_the_peers_height_is_synced() {
    let (state, hung_up) = empty_answer_from_peer_at(10, Duration::from_secs(3)).await;
    assert_eq!(state, SyncState::Synced);
    assert!(!hung_up, "an answered getheaders does not stall");
}
