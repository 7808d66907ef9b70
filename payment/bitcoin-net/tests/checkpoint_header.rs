//! A chain started from a checkpoint known by hash only asks its peer for that header first.
//! The peer here is scripted on loopback (no real node serves a wrong header on purpose):
//! it answers the handshake, then `getheaders` as the test says. bcoin, the real node of
//! the other P2P tests, runs regtest from genesis and has no shipped checkpoint to ask for.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::block::Header;
use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::GetHeadersMessage;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::{Address, Magic, ServiceFlags};
use bitcoin::{BlockHash, TxMerkleNode};
use coinop_bitcoin_net::codec::{read_message, write_message};
use coinop_bitcoin_net::session::{self, SessionContext, SessionError, SessionTimers};
use coinop_bitcoin_net::{ChainAccess, SyncStatus};
use payment::onchain::regtest_fixtures::{mined_header, regtest_bits};
use payment::onchain::{
    AppendOutcome, ChainError, ChainNetwork, Checkpoint, HeaderChain, HeaderSource, Tip,
};
use tokio::net::{TcpListener, TcpStream};

const MAGIC: Magic = Magic::REGTEST;

struct Chain(Mutex<HeaderChain>);

impl Chain {
    fn lock(&self) -> std::sync::MutexGuard<'_, HeaderChain> {
        self.0.lock().unwrap()
    }
}

impl ChainAccess for Chain {
    fn locator(&self) -> Vec<BlockHash> {
        self.lock().locator()
    }
    fn checkpoint_header_wanted(&self) -> Option<BlockHash> {
        self.lock().checkpoint_header_wanted()
    }
    fn tip(&self) -> Tip {
        self.lock().tip()
    }
    fn knows(&self, hash: &BlockHash) -> bool {
        self.lock().contains(hash)
    }
    fn accept_headers(&self, headers: &[Header]) -> Result<AppendOutcome, ChainError> {
        let last = headers.last().map_or(0, |h| h.time);
        let now_us = u64::from(last + 60) * 1_000_000;
        self.lock().append(headers, now_us, HeaderSource::Untrusted)
    }
}

/// 30 regtest headers on genesis; `headers[i]` is at height `i + 1`.
fn headers() -> Vec<Header> {
    let mut out: Vec<Header> = Vec::new();
    let mut prev = ChainNetwork::Regtest.genesis_header();
    for i in 0..30u8 {
        let h = mined_header(
            prev.block_hash(),
            TxMerkleNode::from_byte_array([i; 32]),
            prev.time + 600,
            regtest_bits(),
        );
        out.push(h);
        prev = h;
    }
    out
}

/// A chain whose checkpoint is block 10, known by hash only.
fn chain_from_block_10(headers: &[Header]) -> Arc<Chain> {
    let cp = Checkpoint::by_hash(10, headers[9].block_hash());
    Arc::new(Chain(Mutex::new(
        HeaderChain::in_memory(ChainNetwork::Regtest, cp).unwrap(),
    )))
}

/// The peer's side of the handshake.
async fn accept_handshake(stream: &mut TcpStream) {
    let NetworkMessage::Version(_) = read_message(stream, MAGIC).await.unwrap() else {
        panic!("the client must open with version");
    };
    let addr = stream.local_addr().unwrap();
    let mut v = VersionMessage::new(
        ServiceFlags::NETWORK,
        0,
        Address::new(&addr, ServiceFlags::NONE),
        Address::new(&addr, ServiceFlags::NONE),
        7,
        "/scripted-peer/".into(),
        30,
    );
    v.version = 70016;
    write_message(stream, MAGIC, NetworkMessage::Version(v))
        .await
        .unwrap();
    write_message(stream, MAGIC, NetworkMessage::Verack)
        .await
        .unwrap();
}

/// Reads until the client's next `getheaders`; also reports whether `sendheaders` came first.
async fn next_getheaders(stream: &mut TcpStream, sendheaders: &mut bool) -> GetHeadersMessage {
    loop {
        match read_message(stream, MAGIC).await.unwrap() {
            NetworkMessage::GetHeaders(g) => return g,
            NetworkMessage::SendHeaders => *sendheaders = true,
            _ => {}
        }
    }
}

fn context(chain: Arc<Chain>) -> SessionContext {
    SessionContext {
        label: "scripted".into(),
        magic: MAGIC,
        user_agent: "/coinop-test/".into(),
        timers: SessionTimers {
            handshake: Duration::from_secs(5),
            ping_interval: Duration::from_secs(60),
            headers_timeout: Duration::from_secs(10),
        },
        chain,
        status: Arc::new(SyncStatus::default()),
    }
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
