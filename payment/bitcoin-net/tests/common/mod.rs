//! What the peer tests share: a header chain behind [`ChainAccess`], mined regtest headers,
//! and the peer's side of the handshake. A misbehaving peer is scripted on loopback because
//! no real node misbehaves (or runs its clock ahead) on purpose; a test that needs a peer
//! that simply works starts bcoin, a real node ([`bcoin`]).

#![allow(dead_code)] // Each test file uses its own part of this.

pub mod bcoin;
pub mod bcoin_install;

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
use coinop_bitcoin_net::session::{SessionContext, SessionTimers};
use coinop_bitcoin_net::{ChainAccess, SyncStatus};
use payment::onchain::regtest_fixtures::{mined_header, regtest_bits};
use payment::onchain::{
    AppendOutcome, ChainError, ChainNetwork, Checkpoint, HeaderChain, HeaderSource, Tip,
};
use tokio::net::TcpStream;

pub const MAGIC: Magic = Magic::REGTEST;

/// The host's chain. Its clock is one minute after the newest header of each batch unless
/// the test sets it.
pub struct Chain {
    chain: Mutex<HeaderChain>,
    clock_us: Option<u64>,
}

impl Chain {
    pub fn new(chain: HeaderChain) -> Arc<Self> {
        Arc::new(Chain {
            chain: Mutex::new(chain),
            clock_us: None,
        })
    }

    /// An empty regtest chain: its genesis block alone, kept in memory.
    pub fn regtest_genesis() -> Arc<Self> {
        Chain::new(
            HeaderChain::in_memory(
                ChainNetwork::Regtest,
                Checkpoint::genesis(ChainNetwork::Regtest),
            )
            .expect("an in-memory chain from regtest's genesis"),
        )
    }

    /// A chain whose clock stands still at `now_us`.
    pub fn with_clock(chain: HeaderChain, now_us: u64) -> Arc<Self> {
        Arc::new(Chain {
            chain: Mutex::new(chain),
            clock_us: Some(now_us),
        })
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, HeaderChain> {
        self.chain.lock().unwrap()
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
        let now_us = self.clock_us.unwrap_or_else(|| {
            let last = headers.last().map_or(0, |h| h.time);
            u64::from(last + 60) * 1_000_000
        });
        self.lock().append(headers, now_us, HeaderSource::Untrusted)
    }
}

/// 30 regtest headers on genesis, 600 s apart; `headers[i]` is at height `i + 1`.
pub fn headers() -> Vec<Header> {
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

/// The peer's side of the handshake, announcing height 30.
pub async fn accept_handshake(stream: &mut TcpStream) {
    accept_handshake_at(stream, 30).await;
}

/// The peer's side of the handshake, announcing `start_height`.
pub async fn accept_handshake_at(stream: &mut TcpStream, start_height: i32) {
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
        start_height,
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
pub async fn next_getheaders(stream: &mut TcpStream, sendheaders: &mut bool) -> GetHeadersMessage {
    loop {
        match read_message(stream, MAGIC).await.unwrap() {
            NetworkMessage::GetHeaders(g) => return g,
            NetworkMessage::SendHeaders => *sendheaders = true,
            _ => {}
        }
    }
}

pub fn context(chain: Arc<Chain>) -> SessionContext {
    SessionContext {
        label: "scripted".into(),
        magic: MAGIC,
        user_agent: "/coinop-test/".into(),
        timers: SessionTimers {
            handshake: Duration::from_secs(5),
            ping_interval: Duration::from_secs(60),
            headers_timeout: Duration::from_secs(10),
            write: Duration::from_secs(10),
        },
        chain,
        status: Arc::new(SyncStatus::default()),
    }
}
