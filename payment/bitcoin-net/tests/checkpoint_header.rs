//! A chain started from a checkpoint known by hash only asks its peer for that header first.
//! The peer here is scripted on loopback (no real node serves a wrong header on purpose):
//! it answers the handshake, then `getheaders` as the test says (see `common`). bcoin, the
//! real node of the other P2P tests, runs regtest from genesis and has no shipped checkpoint
//! to ask for.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bitcoin::block::Header;
use bitcoin::p2p::message::NetworkMessage;
use coinop_bitcoin_net::codec::{read_message, write_message};
use coinop_bitcoin_net::session::{self, SessionError};
use coinop_bitcoin_net::ChainAccess;
use common::{accept_handshake, context, headers, next_getheaders, Chain, MAGIC};
use payment::onchain::{ChainNetwork, Checkpoint, HeaderChain};
use tokio::net::{TcpListener, TcpStream};

/// A chain whose checkpoint is block 10, known by hash only.
fn chain_from_block_10(headers: &[Header]) -> Arc<Chain> {
    let cp = Checkpoint::by_hash(10, headers[9].block_hash());
    Chain::new(HeaderChain::in_memory(ChainNetwork::Regtest, cp).unwrap())
}

#[tokio::test]
async fn a_peer_serving_a_wrong_header_for_the_checkpoint_is_refused_as_misbehaving() {
    let headers = headers();
    let chain = chain_from_block_10(&headers);
    let checkpoint = headers[9].block_hash();
    // Same parent and fields as block 10, another nonce: valid work, another hash.
    let mut forged = headers[9];
    loop {
        forged.nonce = forged.nonce.wrapping_add(1);
        if forged.target().is_met_by(forged.block_hash()) {
            break;
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        accept_handshake(&mut s).await;
        let mut sendheaders = false;
        let g = next_getheaders(&mut s, &mut sendheaders).await;
        write_message(&mut s, MAGIC, NetworkMessage::Headers(vec![forged]))
            .await
            .unwrap();
        // Keep the connection open until the client hangs up.
        let _ = read_message(&mut s, MAGIC).await;
        (g, sendheaders)
    });
    let ctx = context(Arc::clone(&chain));
    let stream = TcpStream::connect(addr).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), session::run(stream, &ctx))
        .await
        .expect("the session ends");
    assert!(err.is_misbehaviour(), "{err}");
    assert!(err.to_string().contains(&checkpoint.to_string()), "{err}");
    let (g, sendheaders) = peer.await.unwrap();
    // The request named the checkpoint and nothing else.
    assert!(g.locator_hashes.is_empty());
    assert_eq!(g.stop_hash, checkpoint);
    assert!(
        !sendheaders,
        "sendheaders waits until the checkpoint is known"
    );
    assert_eq!(chain.checkpoint_header_wanted(), Some(checkpoint));
    assert_eq!(chain.lock().len(), 1);
}

#[tokio::test]
async fn the_right_checkpoint_header_anchors_the_chain_and_sync_goes_on_from_it() {
    let headers = headers();
    let chain = chain_from_block_10(&headers);
    let checkpoint = headers[9].block_hash();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = headers.clone();
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        accept_handshake(&mut s).await;
        let mut sendheaders = false;
        let first = next_getheaders(&mut s, &mut sendheaders).await;
        write_message(&mut s, MAGIC, NetworkMessage::Headers(vec![served[9]]))
            .await
            .unwrap();
        let second = next_getheaders(&mut s, &mut sendheaders).await;
        write_message(
            &mut s,
            MAGIC,
            NetworkMessage::Headers(served[10..].to_vec()),
        )
        .await
        .unwrap();
        (first, second, sendheaders)
    });
    let ctx = context(Arc::clone(&chain));
    let stream = TcpStream::connect(addr).await.unwrap();
    let session = tokio::spawn(async move { session::run(stream, &ctx).await });
    let (first, second, sendheaders) = peer.await.unwrap();
    assert_eq!(
        (first.locator_hashes.len(), first.stop_hash),
        (0, checkpoint)
    );
    // Once anchored: announcements as headers, and a locator that ends at the checkpoint.
    assert!(sendheaders);
    assert_eq!(second.locator_hashes, vec![checkpoint]);
    // The session ends when the scripted peer hangs up; by then the chain has it all.
    let end = tokio::time::timeout(Duration::from_secs(20), session)
        .await
        .expect("the session ends")
        .unwrap();
    assert!(!end.is_misbehaviour(), "{end}");
    assert_eq!(chain.checkpoint_header_wanted(), None);
    assert_eq!(chain.tip().height, 30);
}

#[tokio::test]
async fn a_peer_without_the_checkpoint_block_is_left_without_a_ban() {
    let headers = headers();
    let chain = chain_from_block_10(&headers);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        accept_handshake(&mut s).await;
        let mut sendheaders = false;
        next_getheaders(&mut s, &mut sendheaders).await;
        write_message(&mut s, MAGIC, NetworkMessage::Headers(Vec::new()))
            .await
            .unwrap();
        let _ = read_message(&mut s, MAGIC).await;
    });
    let ctx = context(Arc::clone(&chain));
    let stream = TcpStream::connect(addr).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), session::run(stream, &ctx))
        .await
        .expect("the session ends");
    assert!(
        matches!(err, SessionError::NoCheckpoint(h) if h == headers[9].block_hash()),
        "{err}"
    );
    assert!(!err.is_misbehaviour());
    peer.await.unwrap();
}
