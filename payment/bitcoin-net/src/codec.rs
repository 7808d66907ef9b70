//! Message framing on a byte stream: a 24-byte head (network magic, command, payload length,
//! checksum) and the payload. The `bitcoin` crate decodes and checks the message; this module
//! only bounds what is read before that, so a peer cannot make the host buffer more than one
//! protocol-sized message.

use bitcoin::consensus::encode;
use bitcoin::p2p::message::{NetworkMessage, RawNetworkMessage};
use bitcoin::p2p::Magic;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bitcoin Core's limit on one message's payload (MAX_PROTOCOL_MESSAGE_LENGTH): a block
/// at the weight limit fits.
pub const MAX_PAYLOAD: u32 = 4_000_000;
const HEAD_LEN: usize = 24;

#[derive(Debug, Error)]
pub enum CodecError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("message for network magic {got}, expected {expected}")]
    WrongMagic { got: Magic, expected: Magic },
    #[error("message payload of {len} bytes is above the {MAX_PAYLOAD}-byte limit")]
    TooLarge { len: u32 },
    #[error("malformed message: {0}")]
    Malformed(#[from] encode::Error),
}

/// Reads one message. A clean end of stream before a message is an `UnexpectedEof` I/O error.
pub async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    magic: Magic,
) -> Result<NetworkMessage, CodecError> {
    let mut buf = vec![0u8; HEAD_LEN];
    reader.read_exact(&mut buf).await?;
    let got = Magic::from_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if got != magic {
        return Err(CodecError::WrongMagic {
            got,
            expected: magic,
        });
    }
    let len = u32::from_le_bytes([buf[16], buf[17], buf[18], buf[19]]);
    if len > MAX_PAYLOAD {
        return Err(CodecError::TooLarge { len });
    }
    buf.resize(HEAD_LEN + len as usize, 0);
    reader.read_exact(&mut buf[HEAD_LEN..]).await?;
    let raw: RawNetworkMessage = encode::deserialize(&buf)?;
    Ok(raw.into_payload())
}

/// Writes one message and flushes it.
pub async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    magic: Magic,
    message: NetworkMessage,
) -> Result<(), CodecError> {
    let bytes = encode::serialize(&RawNetworkMessage::new(magic, message));
    writer.write_all(&bytes).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_message_survives_the_round_trip_and_a_bad_checksum_does_not() {
        let magic = Magic::REGTEST;
        let mut wire = Vec::new();
        write_message(&mut wire, magic, NetworkMessage::Ping(42))
            .await
            .unwrap();
        let got = read_message(&mut wire.as_slice(), magic).await.unwrap();
        assert_eq!(got, NetworkMessage::Ping(42));

        let err = read_message(&mut wire.as_slice(), Magic::BITCOIN)
            .await
            .unwrap_err();
        assert!(matches!(err, CodecError::WrongMagic { .. }), "{err}");

        let last = wire.len() - 1;
        wire[last] ^= 1;
        let err = read_message(&mut wire.as_slice(), magic).await.unwrap_err();
        assert!(matches!(err, CodecError::Malformed(_)), "{err}");
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_reading_the_payload() {
        let mut head = Vec::new();
        head.extend_from_slice(&Magic::REGTEST.to_bytes());
        head.extend_from_slice(b"block\0\0\0\0\0\0\0");
        head.extend_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        head.extend_from_slice(&[0; 4]);
        let err = read_message(&mut head.as_slice(), Magic::REGTEST)
            .await
            .unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { .. }), "{err}");
    }
}
