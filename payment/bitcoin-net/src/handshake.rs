//! The `version`/`verack` exchange that opens every connection. coinopd announces itself as
//! a client that serves nothing (no service bits) and wants no transaction relay.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::{Magic, ServiceFlags};
// A peer's words escaped whole, newlines too, so they cannot start a forged log line.
use payment::text::printable;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::codec::{read_message, write_message, CodecError};

/// The protocol version coinopd speaks: 70012 added `sendheaders`, 70016 is current.
pub const OUR_VERSION: u32 = 70016;
/// Peers older than this cannot announce blocks as headers (`sendheaders`, BIP130).
pub const MIN_PEER_VERSION: u32 = 70012;
/// The longest user agent a peer may announce, in bytes (Bitcoin Core's
/// MAX_SUBVERSION_LENGTH: Core refuses a longer one, so no honest node sends it). Without a
/// limit a peer could make every connection log up to a message's 4 MB.
pub const MAX_USER_AGENT: usize = 256;

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
    #[error("peer's user agent is {len} bytes, above the {MAX_USER_AGENT}-byte limit")]
    UserAgentTooLong { len: usize },
}

/// What the peer said about itself.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub version: u32,
    /// At most [`MAX_USER_AGENT`] bytes as received, with control characters escaped (see
    /// [`printable`]): it goes into log lines and the host's status as it is.
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
                if v.user_agent.len() > MAX_USER_AGENT {
                    return Err(HandshakeError::UserAgentTooLong {
                        len: v.user_agent.len(),
                    });
                }
                write_message(stream, magic, NetworkMessage::Verack).await?;
                info = Some(PeerInfo {
                    version: v.version,
                    user_agent: printable(&v.user_agent),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs our side of the handshake against a peer that announces `agent`.
    async fn handshake_with_agent(agent: String) -> Result<PeerInfo, HandshakeError> {
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        let magic = Magic::REGTEST;
        let addr = SocketAddr::from(([127, 0, 0, 1], 18444));
        let peer = tokio::spawn(async move {
            let _ = read_message(&mut theirs, magic).await;
            let mut v = VersionMessage::new(
                ServiceFlags::NETWORK,
                0,
                Address::new(&addr, ServiceFlags::NONE),
                Address::new(&addr, ServiceFlags::NONE),
                7,
                agent,
                30,
            );
            v.version = OUR_VERSION;
            let _ = write_message(&mut theirs, magic, NetworkMessage::Version(v)).await;
            let _ = write_message(&mut theirs, magic, NetworkMessage::Verack).await;
            // Keep the stream open until our side is done with it.
            let _ = read_message(&mut theirs, magic).await;
        });
        let out = handshake(
            &mut ours,
            magic,
            addr,
            addr,
            0,
            "/test/",
            Duration::from_secs(5),
        )
        .await;
        drop(ours);
        let _ = peer.await;
        out
    }

    #[tokio::test]
    async fn a_user_agent_over_256_bytes_is_refused() {
        let err = handshake_with_agent(format!("/long\n{}/", "x".repeat(293)))
            .await
            .unwrap_err();
        assert!(
            matches!(err, HandshakeError::UserAgentTooLong { len: 300 }),
            "{err}"
        );
        // No honest node sends one (Bitcoin Core refuses it): the peer is banned.
        assert!(crate::session::SessionError::from(err).is_misbehaviour());
        let ok = handshake_with_agent(format!("/{}/", "x".repeat(254)))
            .await
            .unwrap();
        assert_eq!(ok.user_agent.len(), 256);
    }

    #[tokio::test]
    async fn control_characters_in_a_user_agent_are_escaped() {
        let info = handshake_with_agent(
            "/Satoshi:27.0/\n2025-01-01T00:00:00Z INFO payment to a quote seen\r\u{1b}[2J".into(),
        )
        .await
        .unwrap();
        assert!(
            !info.user_agent.chars().any(char::is_control),
            "{:?}",
            info.user_agent
        );
        assert_eq!(
            info.user_agent,
            "/Satoshi:27.0/\\n2025-01-01T00:00:00Z INFO payment to a quote seen\\r\\u{1b}[2J"
        );
    }
}
