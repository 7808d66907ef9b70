//! A header more than two hours ahead of the host's clock is refused, but the peer that sent
//! it is not punished: an honest peer's clock may run ahead of a host whose clock lags (Bitcoin
//! Core does not punish it either). The peer is scripted on loopback (see `common`): bcoin
//! mines with its own clock, so it cannot be made to run ahead of the host's.

mod common;

use std::time::Duration;

use bitcoin::p2p::message::NetworkMessage;
use coinop_bitcoin_net::codec::{read_message, write_message};
use coinop_bitcoin_net::session::{self, SessionError};
use coinop_bitcoin_net::ChainAccess;
use common::{accept_handshake, context, headers, next_getheaders, Chain, MAGIC};
use payment::onchain::{ChainNetwork, Checkpoint, HeaderChain};
use tokio::net::{TcpListener, TcpStream};

/// A host chain at genesis whose clock stands at block 10's time (`headers[i]` is block
/// i + 1): block 23 is 2 h 10 min ahead of it, the first one past the two-hour limit (block
/// 22 is exactly 2 h ahead).
fn host_at_block_10(headers: &[bitcoin::block::Header]) -> std::sync::Arc<Chain> {
    let now_s = u64::from(headers[9].time);
    assert!(u64::from(headers[22].time) > now_s + 7200);
    assert_eq!(u64::from(headers[21].time), now_s + 7200);
    Chain::with_clock(
        HeaderChain::in_memory(
            ChainNetwork::Regtest,
            Checkpoint::genesis(ChainNetwork::Regtest),
        )
        .unwrap(),
        now_s * 1_000_000,
    )
}

/// The peer's last word: a ping, and whether the session answers it (still connected). A
/// session that ended leaves the read to fail; returning closes the connection, which ends
/// the session.
async fn answers_ping(s: &mut TcpStream, nonce: u64) -> bool {
    write_message(s, MAGIC, NetworkMessage::Ping(nonce))
        .await
        .unwrap();
    loop {
        match read_message(s, MAGIC).await {
            Ok(NetworkMessage::Pong(n)) if n == nonce => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// Runs the host's session against the peer at `addr` until it ends.
async fn session_with(chain: &std::sync::Arc<Chain>, addr: std::net::SocketAddr) -> SessionError {
    let ctx = context(std::sync::Arc::clone(chain));
    let stream = TcpStream::connect(addr).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), session::run(stream, &ctx))
        .await
        .expect("the session ends")
}

#[tokio::test]
async fn a_header_ahead_of_the_host_clock_is_dropped_without_a_ban() {
    let headers = headers();
    let chain = host_at_block_10(&headers);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = headers.clone();
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        accept_handshake(&mut s).await;
        let mut sendheaders = false;
        next_getheaders(&mut s, &mut sendheaders).await;
        write_message(
            &mut s,
            MAGIC,
            NetworkMessage::Headers(served[..25].to_vec()),
        )
        .await
        .unwrap();
        // Still connected afterwards: a ping is answered.
        answers_ping(&mut s, 42).await
    });
    let end = session_with(&chain, addr).await;
    let answered_ping = peer.await.unwrap();
    assert!(!end.is_misbehaviour(), "{end}");
    assert!(matches!(end, SessionError::Closed), "{end}");
    assert!(answered_ping, "the session went on after the early header");
    // The 22 headers before the early one are kept; it and the ones after it are not.
    assert_eq!(chain.tip().height, 22);
    assert_eq!(chain.tip().hash, headers[21].block_hash());
    assert!(!chain.knows(&headers[22].block_hash()));
}

/// With the host's clock far behind, every block the peer announces builds on a header the
/// host dropped, so each announcement connects to nothing, and the headers the host then
/// asks for begin with the early one again. A premature batch connected: it ends the run of
/// unconnected messages, so an honest peer announcing block after block is not banned.
#[tokio::test]
async fn announcements_on_top_of_an_early_header_do_not_get_the_peer_banned() {
    let headers = headers();
    let chain = host_at_block_10(&headers);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = headers.clone();
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        accept_handshake(&mut s).await;
        let mut sendheaders = false;
        next_getheaders(&mut s, &mut sendheaders).await;
        write_message(
            &mut s,
            MAGIC,
            NetworkMessage::Headers(served[..25].to_vec()),
        )
        .await
        .unwrap();
        // More announcements than a peer may send unconnected in a row (10), each followed
        // by the host's getheaders and the answer from its tip: the early header first.
        for _ in 0..12 {
            write_message(&mut s, MAGIC, NetworkMessage::Headers(vec![served[26]]))
                .await
                .unwrap();
            next_getheaders(&mut s, &mut sendheaders).await;
            write_message(
                &mut s,
                MAGIC,
                NetworkMessage::Headers(served[22..25].to_vec()),
            )
            .await
            .unwrap();
        }
        answers_ping(&mut s, 7).await
    });
    let end = session_with(&chain, addr).await;
    let answered_ping = peer.await.unwrap();
    assert!(!end.is_misbehaviour(), "{end}");
    assert!(
        answered_ping,
        "the session went on through every announcement"
    );
    assert_eq!(chain.tip().height, 22);
}
