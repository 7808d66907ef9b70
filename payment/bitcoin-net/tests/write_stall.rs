//! A peer that stops reading must not hold a session for ever. It finishes the handshake,
//! then sends pings as fast as it can and reads nothing: every ping is answered with a
//! pong, and once the socket buffers between the two are full the next pong cannot be
//! written. The session must end within a bounded time (and not be counted as connected),
//! rather than sit in that write while its ping and stall checks never run.

mod common;

use std::time::{Duration, Instant};

use bitcoin::consensus::encode;
use bitcoin::p2p::message::{NetworkMessage, RawNetworkMessage};
use coinop_bitcoin_net::session::{self, SessionError, SessionTimers};
use common::{accept_handshake, context, Chain, MAGIC};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

#[tokio::test]
async fn a_peer_that_floods_pings_and_never_reads_ends_the_session() {
    let chain = Chain::regtest_genesis();
    // Small buffers on both ends, so that the pongs fill them after a few thousand pings
    // rather than after megabytes (the kernel may round these up; they only make the
    // test quicker).
    let listen = TcpSocket::new_v4().unwrap();
    listen.set_recv_buffer_size(4096).unwrap();
    listen.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = listen.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        accept_handshake(&mut s).await;
        // A batch of pings written at once, over and over, until the host hangs up.
        let mut batch = Vec::new();
        for nonce in 0..1000u64 {
            batch.extend(encode::serialize(&RawNetworkMessage::new(
                MAGIC,
                NetworkMessage::Ping(nonce),
            )));
        }
        while s.write_all(&batch).await.is_ok() {}
    });

    let mut ctx = context(chain);
    // The ping and getheaders timers are far beyond the test's bound, so only the write
    // timeout can end the session in time: they run in the same loop as the writes, and a
    // loop stuck in a write never gets to them.
    ctx.timers = SessionTimers {
        handshake: Duration::from_secs(5),
        ping_interval: Duration::from_secs(600),
        headers_timeout: Duration::from_secs(600),
        write: Duration::from_secs(2),
    };
    let host = TcpSocket::new_v4().unwrap();
    host.set_send_buffer_size(4096).unwrap();
    let stream = host.connect(addr).await.unwrap();
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(30), session::run(stream, &ctx))
        .await
        .expect("the session ends although the peer never reads");
    assert!(
        matches!(end, SessionError::WriteTimeout(_)),
        "ended for another reason: {end}"
    );
    assert!(!end.is_misbehaviour(), "{end}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // The host's end is closed, so the flooding peer's writes fail and it stops.
    tokio::time::timeout(Duration::from_secs(10), peer)
        .await
        .expect("the peer sees the connection closed")
        .unwrap();
}
