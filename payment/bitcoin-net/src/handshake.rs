//! The `version`/`verack` exchange that opens every connection. coinopd announces itself as
//! a client that serves nothing (no service bits) and wants no transaction relay.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::{Magic, ServiceFlags};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::codec::{read_message, write_message, CodecError};

/// The protocol version coinopd speaks: 70012 added `sendheaders`, 70016 is current.
pub const OUR_VERSION: u32 = 70016;
/// Peers older than this cannot announce blocks as headers (`sendheaders`, BIP130).
pub const MIN_PEER_VERSION: u32 = 70012;

#[derive(Debug, Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("no version/verack within {0:?}")]
    Timeout(Duration),
    #[error("peer speaks protocol {got}, at least {MIN_PEER_VERSION} is needed")]
    TooOld { got: u32 },
    #[error("peer sent {0} before the handshake finished")]
    Unexpected(&'static str),
    #[error("connected to ourselves (nonce echoed)")]
    SelfConnection,
}

/// What the peer said about itself.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub version: u32,
    pub user_agent: String,
    pub start_height: i32,
    pub services: ServiceFlags,
}

/// Our side of the handshake, then the peer's, within `timeout`.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    magic: Magic,
    peer: SocketAddr,
    local: SocketAddr,
    our_height: u32,
    user_agent: &str,
    timeout: Duration,
) -> Result<PeerInfo, HandshakeError> {
    tokio::time::timeout(
        timeout,
        exchange(stream, magic, peer, local, our_height, user_agent),
    )
    .await
    .map_err(|_| HandshakeError::Timeout(timeout))?
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    magic: Magic,
    peer: SocketAddr,
    local: SocketAddr,
    our_height: u32,
    user_agent: &str,
) -> Result<PeerInfo, HandshakeError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Random, so that a connection to ourselves shows as our own nonce coming back.
    let nonce: u64 = bitcoin::secp256k1::rand::random();
    let mut ours = VersionMessage::new(
        ServiceFlags::NONE,
        i64::try_from(now).unwrap_or(i64::MAX),
        Address::new(&peer, ServiceFlags::NONE),
        Address::new(&local, ServiceFlags::NONE),
        nonce,
        user_agent.to_string(),
        i32::try_from(our_height).unwrap_or(i32::MAX),
    );
    ours.version = OUR_VERSION;
    ours.relay = false;
    write_message(stream, magic, NetworkMessage::Version(ours)).await?;
    let mut info = None;
    let mut verack = false;
    while info.is_none() || !verack {
        match read_message(stream, magic).await? {
            NetworkMessage::Version(v) => {
                if v.nonce == nonce {
                    return Err(HandshakeError::SelfConnection);
                }
                if v.version < MIN_PEER_VERSION {
                    return Err(HandshakeError::TooOld { got: v.version });
                }
                write_message(stream, magic, NetworkMessage::Verack).await?;
                info = Some(PeerInfo {
                    version: v.version,
                    user_agent: v.user_agent,
                    start_height: v.start_height,
                    services: v.services,
                });
            }
            NetworkMessage::Verack => verack = true,
            // Feature negotiation a peer may send between version and verack (BIP155,
            // BIP339, fee filter): optional, and nothing coinopd needs.
            NetworkMessage::SendAddrV2
            | NetworkMessage::WtxidRelay
            | NetworkMessage::FeeFilter(_)
            | NetworkMessage::Unknown { .. } => {}
            other if info.is_none() => return Err(HandshakeError::Unexpected(other.cmd())),
            _ => {}
        }
    }
    Ok(info.expect("the loop ends only once the version arrived"))
}
