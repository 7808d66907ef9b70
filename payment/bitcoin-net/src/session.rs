//! One connected peer, from the handshake to the disconnect: ask for headers from a block
//! locator until the peer has no more, then follow its announcements (`headers` thanks to
//! `sendheaders`, or `inv` from peers that announce that way), answer pings and send our own.
//!
//! A peer whose headers the chain refuses as invalid (or as a branch too weak to store) has
//! misbehaved: the session ends with [`SessionError::Misbehaved`] and the peer set bans it.
//! A header refused only for being too far ahead of the host's clock is not misbehaviour (an
//! honest peer's clock may run ahead of ours): it is dropped, the valid headers before it are
//! kept, and the session goes on.
//! A `headers` message whose first header builds on nothing known is what an announcement
//! looks like while the host is behind: it is answered with `getheaders`, and only a peer
//! that keeps sending such headers is treated as misbehaving.
//!
//! A chain that starts from a checkpoint known by hash only first asks for that block's
//! header (`getheaders` with an empty locator and the checkpoint as stop hash, which a node
//! answers with exactly that header), and sends `sendheaders` only after it, so that no
//! announcement can be mistaken for the answer. A peer that answers with a header hashing to
//! anything else has misbehaved; one that answers with none does not have the block, and the
//! session ends without a ban.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::block::Header;
use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::{GetHeadersMessage, Inventory};
use bitcoin::p2p::Magic;
use bitcoin::BlockHash;
use payment::onchain::ChainError;
use thiserror::Error;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::codec::{read_message, write_message, CodecError};
use crate::handshake::{handshake, HandshakeError};
use crate::status::SyncStatus;
use crate::ChainAccess;

/// A `headers` message carries at most this many (the protocol's limit): a full one means
/// the peer has more.
pub const MAX_HEADERS_PER_MESSAGE: usize = 2000;
/// Blocks asked for at once from one peer.
const MAX_BLOCKS_IN_FLIGHT: usize = 16;
/// Headers messages in a row that connect to nothing before the peer counts as misbehaving
/// (Bitcoin Core's MAX_NUM_UNCONNECTING_HEADERS_MSGS).
const MAX_UNCONNECTING: u32 = 10;

/// Timing of one session.
#[derive(Clone, Debug)]
pub struct SessionTimers {
    pub handshake: Duration,
    /// A ping is sent this often; a pong must come back before the next one is due.
    pub ping_interval: Duration,
    /// How long a `getheaders` may go unanswered.
    pub headers_timeout: Duration,
    /// How long one message may take to write. Every write is bounded: a peer that stops
    /// reading (its receive window closed) would otherwise block the session's loop in a
    /// write for ever, and with it the ping and stall checks that would end the session.
    pub write: Duration,
}

impl Default for SessionTimers {
    fn default() -> Self {
        SessionTimers {
            handshake: Duration::from_secs(10),
            ping_interval: Duration::from_secs(120),
            headers_timeout: Duration::from_secs(120),
            write: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("peer closed the connection")]
    Closed,
    #[error("misbehaved: {0}")]
    Misbehaved(String),
    #[error("no pong within {0:?}")]
    PingTimeout(Duration),
    #[error("getheaders unanswered for {0:?}")]
    Stalled(Duration),
    /// The peer did not take a message within the write timeout: it stopped reading.
    #[error("peer took no message within {0:?} (not reading)")]
    WriteTimeout(Duration),
    #[error("peer does not have the checkpoint block {0}")]
    NoCheckpoint(BlockHash),
    /// The host's own chain failed (storage); not the peer's fault.
    #[error("header chain: {0}")]
    Chain(ChainError),
    #[error("chain worker: {0}")]
    Worker(String),
}

impl SessionError {
    /// Whether the peer should be banned for it.
    pub fn is_misbehaviour(&self) -> bool {
        matches!(
            self,
            SessionError::Misbehaved(_)
                | SessionError::Handshake(HandshakeError::UserAgentTooLong { .. })
        )
    }

    /// Whether the peer went quiet: it let a timeout run out (handshake, ping, headers,
    /// write). A session ending so is a failure however long it lasted: a peer that
    /// shakes hands and then never answers keeps a session up for the whole stall timeout.
    pub fn is_silence(&self) -> bool {
        matches!(
            self,
            SessionError::PingTimeout(_)
                | SessionError::Stalled(_)
                | SessionError::WriteTimeout(_)
                | SessionError::Handshake(HandshakeError::Timeout(_))
        )
    }

    /// Whether the host, not the peer, ended it (its chain's storage, a worker thread):
    /// nothing to hold against the peer.
    pub fn is_host_fault(&self) -> bool {
        matches!(self, SessionError::Chain(_) | SessionError::Worker(_))
    }
}

/// Where a session reports, and what it talks to.
pub struct SessionContext {
    pub label: String,
    pub magic: Magic,
    pub user_agent: String,
    pub timers: SessionTimers,
    pub chain: Arc<dyn ChainAccess>,
    pub status: Arc<SyncStatus>,
}

/// Aborts the reader task when the session ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SessionError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SessionError::Worker(e.to_string()))
}

/// Runs the session until the connection ends; the result says why it ended.
pub async fn run(stream: TcpStream, ctx: &SessionContext) -> SessionError {
    match run_inner(stream, ctx).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

async fn run_inner(mut stream: TcpStream, ctx: &SessionContext) -> Result<Never, SessionError> {
    let peer = stream.peer_addr().map_err(CodecError::Io)?;
    let local = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let chain = Arc::clone(&ctx.chain);
    let height = blocking(move || chain.tip().height).await?;
    let info = handshake(
        &mut stream,
        ctx.magic,
        peer,
        local,
        height,
        &ctx.user_agent,
        ctx.timers.handshake,
    )
    .await?;
    // A session can end with our messages unread in the send buffer (a peer that stopped
    // reading). Closing then resets the connection at once instead of leaving an orphaned
    // socket that holds the unsent bytes while it probes the peer's closed window; nothing
    // coinopd sends needs to arrive after the session has ended.
    stream.set_zero_linger().map_err(CodecError::Io)?;
    tracing::info!(peer = %ctx.label, agent = %info.user_agent, height = info.start_height, "bitcoin peer connected");
    ctx.status.connected(&ctx.label, &info.user_agent);

    let (mut rd, wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel(4);
    let magic = ctx.magic;
    // Reading a message is not cancel-safe, so it happens in its own task and the loop
    // below selects over whole messages.
    let _reader = AbortOnDrop(tokio::spawn(async move {
        loop {
            let msg = read_message(&mut rd, magic).await;
            let end = msg.is_err();
            if tx.send(msg).await.is_err() || end {
                break;
            }
        }
    }));

    let mut s = Session {
        ctx,
        wr,
        awaiting_headers: None,
        // A negative height is nonsense; it claims nothing.
        peer_height: u32::try_from(info.start_height).unwrap_or(0),
        anchoring: None,
        unconnecting: 0,
        ping: None,
        blocks_in_flight: Vec::new(),
    };
    s.get_headers().await?;
    if s.anchoring.is_none() {
        s.send(NetworkMessage::SendHeaders).await?;
    }
    let mut ticker = tokio::time::interval(ctx.timers.ping_interval.min(Duration::from_secs(5)));
    let mut next_ping = Instant::now() + ctx.timers.ping_interval;
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                None => return Err(SessionError::Closed),
                Some(Err(CodecError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(SessionError::Closed)
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(m)) => s.handle(m).await?,
            },
            _ = ticker.tick() => {
                let now = Instant::now();
                if let Some(since) = s.awaiting_headers {
                    if now.duration_since(since) > ctx.timers.headers_timeout {
                        return Err(SessionError::Stalled(ctx.timers.headers_timeout));
                    }
                }
                if s.blocks_in_flight.iter().any(|(_, t)| now.duration_since(*t) > ctx.timers.headers_timeout) {
                    return Err(SessionError::Stalled(ctx.timers.headers_timeout));
                }
                s.request_blocks().await?;
                if now >= next_ping {
                    if s.ping.is_some() {
                        return Err(SessionError::PingTimeout(ctx.timers.ping_interval));
                    }
                    let nonce: u64 = bitcoin::secp256k1::rand::random();
                    s.ping = Some(nonce);
                    s.send(NetworkMessage::Ping(nonce)).await?;
                    next_ping = now + ctx.timers.ping_interval;
                }
            }
        }
    }
}

struct Session<'a> {
    ctx: &'a SessionContext,
    wr: OwnedWriteHalf,
    /// When the last unanswered `getheaders` was sent.
    awaiting_headers: Option<Instant>,
    /// The height the peer announced in its `version`: it has at least that many blocks,
    /// so an answer that leaves the host's tip below it is not "nothing more".
    peer_height: u32,
    /// The checkpoint whose header the last `getheaders` asked for, if it did.
    anchoring: Option<BlockHash>,
    unconnecting: u32,
    ping: Option<u64>,
    /// Blocks asked for with `getdata` and not yet received, with when they were asked.
    blocks_in_flight: Vec<(BlockHash, Instant)>,
}

impl Session<'_> {
    /// Writes one message within the write timeout. A write cut off half-way leaves the
    /// stream unusable, which is fine: the timeout ends the session.
    async fn send(&mut self, msg: NetworkMessage) -> Result<(), SessionError> {
        let limit = self.ctx.timers.write;
        match tokio::time::timeout(limit, write_message(&mut self.wr, self.ctx.magic, msg)).await {
            Ok(written) => Ok(written?),
            Err(_) => Err(SessionError::WriteTimeout(limit)),
        }
    }

    async fn get_headers(&mut self) -> Result<(), SessionError> {
        self.get_headers_after(None).await
    }

    /// `getheaders` from the chain's locator, with `first` (a header just received, not
    /// yet stored) in front of it.
    async fn get_headers_after(&mut self, first: Option<BlockHash>) -> Result<(), SessionError> {
        let chain = Arc::clone(&self.ctx.chain);
        let (wanted, mut locator) =
            blocking(move || (chain.checkpoint_header_wanted(), chain.locator())).await?;
        self.awaiting_headers = Some(Instant::now());
        if let (Some(checkpoint), None) = (wanted, first) {
            self.anchoring = Some(checkpoint);
            return self
                .send(NetworkMessage::GetHeaders(GetHeadersMessage::new(
                    Vec::new(),
                    checkpoint,
                )))
                .await;
        }
        if let Some(hash) = first {
            locator.insert(0, hash);
        }
        self.send(NetworkMessage::GetHeaders(GetHeadersMessage::new(
            locator,
            BlockHash::all_zeros(),
        )))
        .await
    }

    /// The answer to a request for the checkpoint's header: it must be there (and is then
    /// stored like any header); then sync goes on from it.
    async fn on_checkpoint_header(
        &mut self,
        checkpoint: BlockHash,
        headers: Vec<Header>,
    ) -> Result<(), SessionError> {
        if headers.is_empty() {
            return Err(SessionError::NoCheckpoint(checkpoint));
        }
        if !headers.iter().any(|h| h.block_hash() == checkpoint) {
            return Err(SessionError::Misbehaved(format!(
                "asked for the header of checkpoint {checkpoint}, sent {} header(s) hashing to \
                 something else (first {})",
                headers.len(),
                headers[0].block_hash()
            )));
        }
        let chain = Arc::clone(&self.ctx.chain);
        match blocking(move || chain.accept_headers(&headers)).await? {
            Ok(out) => {
                self.ctx.status.headers_added(out.added);
                tracing::info!(peer = %self.ctx.label, %checkpoint, "checkpoint header from peer");
                // Announcements as `headers` only from now on: before, one could have been
                // taken for the answer about the checkpoint.
                self.send(NetworkMessage::SendHeaders).await?;
                self.get_headers().await
            }
            Err(e) if e.is_peer_fault() => Err(SessionError::Misbehaved(e.to_string())),
            Err(e) => Err(SessionError::Chain(e)),
        }
    }

    async fn handle(&mut self, msg: NetworkMessage) -> Result<(), SessionError> {
        match msg {
            NetworkMessage::Headers(headers) => self.on_headers(headers).await,
            NetworkMessage::Inv(items) => self.on_inv(items).await,
            NetworkMessage::Block(block) => self.on_block(block).await,
            NetworkMessage::NotFound(items) => {
                // A pruned peer may not have an old block: stop waiting for it here.
                self.blocks_in_flight.retain(|(h, _)| {
                    !items.iter().any(
                        |i| matches!(i, Inventory::WitnessBlock(x) | Inventory::Block(x) if x == h),
                    )
                });
                Ok(())
            }
            NetworkMessage::Ping(nonce) => self.send(NetworkMessage::Pong(nonce)).await,
            NetworkMessage::Pong(nonce) => {
                if self.ping == Some(nonce) {
                    self.ping = None;
                }
                Ok(())
            }
            // Everything else (addr, feefilter, sendcmpct, getheaders from the peer, ...):
            // coinopd serves nothing, so it has nothing to answer.
            _ => Ok(()),
        }
    }

    async fn on_headers(&mut self, headers: Vec<Header>) -> Result<(), SessionError> {
        // Only an answer to our own `getheaders` can say the peer has nothing more (an
        // announcement, or anything sent unasked, says nothing about what we lack), and
        // only it stops the stall timer.
        let asked_at = self.awaiting_headers.take();
        if headers.len() > MAX_HEADERS_PER_MESSAGE {
            return Err(SessionError::Misbehaved(format!(
                "{} headers in one message",
                headers.len()
            )));
        }
        if let Some(checkpoint) = self.anchoring.take() {
            return self.on_checkpoint_header(checkpoint, headers).await;
        }
        if headers.is_empty() {
            if let Some(asked_at) = asked_at {
                let chain = Arc::clone(&self.ctx.chain);
                let tip = blocking(move || chain.tip().height).await?;
                self.answered(asked_at, tip);
            }
            return Ok(());
        }
        let full = headers.len() == MAX_HEADERS_PER_MESSAGE;
        if full {
            // Ask for the next batch before checking this one, so the peer prepares it
            // while the chain validates and stores: sync runs at the slower of the two
            // rather than their sum. An invalid batch ends the session anyway.
            let last = headers.last().map(Header::block_hash);
            self.ctx.status.caught_up(&self.ctx.label, false);
            self.get_headers_after(last).await?;
        }
        let chain = Arc::clone(&self.ctx.chain);
        let (result, headers) = blocking(move || (chain.accept_headers(&headers), headers)).await?;
        match result {
            Ok(out) => {
                self.unconnecting = 0;
                self.ctx.status.headers_added(out.added);
                if out.added > 0 {
                    tracing::debug!(peer = %self.ctx.label, added = out.added, tip = out.tip.height, "headers from peer");
                }
                if !full {
                    if let Some(asked_at) = asked_at {
                        self.answered(asked_at, out.tip.height);
                    }
                    self.request_blocks().await?;
                }
                Ok(())
            }
            Err(e) if e.is_unconnected_start() => {
                self.unconnecting += 1;
                if self.unconnecting > MAX_UNCONNECTING {
                    return Err(SessionError::Misbehaved(format!(
                        "{} headers messages in a row that connect to nothing: {e}",
                        self.unconnecting
                    )));
                }
                self.ctx.status.caught_up(&self.ctx.label, false);
                self.get_headers().await
            }
            // Nothing more is asked for here: a request now would only bring the same
            // header back. The batch connected (only its time was refused), so it ends a
            // run of unconnected ones: with the host's clock far behind, every block
            // announced on top of a dropped header connects to nothing, and counting those
            // across premature batches would ban an honest peer.
            Err(e) if e.is_premature() => {
                self.unconnecting = 0;
                self.keep_before_premature(e, headers).await
            }
            Err(e) if e.is_peer_fault() => Err(SessionError::Misbehaved(e.to_string())),
            Err(e) => Err(SessionError::Chain(e)),
        }
    }

    /// Our `getheaders` (sent at `asked_at`) was answered with less than a full batch, and
    /// the host's tip is now at `tip`. That is "nothing more" only once the tip has reached
    /// the height the peer announced at the handshake: short of it, the peer has blocks it
    /// is not sending (a lagging or lying peer, which must not make the host "synced" on a
    /// stale tip), so the request stays outstanding and the stall timer ends the session
    /// unless a real answer comes.
    fn answered(&mut self, asked_at: Instant, tip: u32) {
        if tip >= self.peer_height {
            self.ctx.status.caught_up(&self.ctx.label, true);
        } else {
            tracing::debug!(peer = %self.ctx.label, tip, peer_height = self.peer_height, "peer stopped short of its announced height");
            self.awaiting_headers = Some(asked_at);
        }
    }

    /// A batch refused only because one header is too far ahead of the host's clock: not
    /// the peer's fault (see [`ChainError::is_premature`]), so the session goes on. The
    /// headers before that one were valid but not kept (a batch is all or nothing): they
    /// are stored now; that header and the rest are dropped, to be asked for again when a
    /// block built on them is announced.
    async fn keep_before_premature(
        &mut self,
        refused: ChainError,
        mut headers: Vec<Header>,
    ) -> Result<(), SessionError> {
        tracing::info!(peer = %self.ctx.label, "header dropped, ahead of the host's clock: {refused}");
        let keep = match refused {
            ChainError::Rejected { index, .. } => index,
            _ => 0,
        };
        headers.truncate(keep);
        if headers.is_empty() {
            return Ok(());
        }
        let chain = Arc::clone(&self.ctx.chain);
        match blocking(move || chain.accept_headers(&headers)).await? {
            Ok(out) => {
                self.ctx.status.headers_added(out.added);
                Ok(())
            }
            Err(e) if e.is_peer_fault() => Err(SessionError::Misbehaved(e.to_string())),
            Err(e) => Err(SessionError::Chain(e)),
        }
    }

    /// Asks for the blocks the host wants, up to the in-flight limit.
    async fn request_blocks(&mut self) -> Result<(), SessionError> {
        let room = MAX_BLOCKS_IN_FLIGHT.saturating_sub(self.blocks_in_flight.len());
        if room == 0 || self.awaiting_headers.is_some() {
            return Ok(());
        }
        let chain = Arc::clone(&self.ctx.chain);
        let wanted = blocking(move || chain.blocks_wanted(MAX_BLOCKS_IN_FLIGHT)).await?;
        let now = Instant::now();
        let new: Vec<BlockHash> = wanted
            .into_iter()
            .filter(|h| !self.blocks_in_flight.iter().any(|(x, _)| x == h))
            .take(room)
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        self.blocks_in_flight.extend(new.iter().map(|h| (*h, now)));
        self.send(NetworkMessage::GetData(
            new.into_iter().map(Inventory::WitnessBlock).collect(),
        ))
        .await
    }

    async fn on_block(&mut self, block: bitcoin::Block) -> Result<(), SessionError> {
        let hash = block.block_hash();
        let before = self.blocks_in_flight.len();
        self.blocks_in_flight.retain(|(h, _)| *h != hash);
        if self.blocks_in_flight.len() == before {
            // Not asked for (a peer pushing blocks): ignored.
            return Ok(());
        }
        let chain = Arc::clone(&self.ctx.chain);
        match blocking(move || chain.block_received(block)).await? {
            Ok(()) => self.request_blocks().await,
            Err(e @ crate::BlockRejected::Invalid(_)) => {
                Err(SessionError::Misbehaved(e.to_string()))
            }
            Err(e) => Err(SessionError::Worker(e.to_string())),
        }
    }

    async fn on_inv(&mut self, items: Vec<Inventory>) -> Result<(), SessionError> {
        let blocks: Vec<BlockHash> = items
            .into_iter()
            .filter_map(|i| match i {
                Inventory::Block(h) | Inventory::WitnessBlock(h) | Inventory::CompactBlock(h) => {
                    Some(h)
                }
                _ => None,
            })
            .collect();
        if blocks.is_empty() || self.awaiting_headers.is_some() {
            return Ok(());
        }
        let chain = Arc::clone(&self.ctx.chain);
        let unknown = blocking(move || blocks.iter().any(|h| !chain.knows(h))).await?;
        if unknown {
            self.ctx.status.caught_up(&self.ctx.label, false);
            self.get_headers().await?;
        }
        Ok(())
    }
}
