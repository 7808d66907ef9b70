//! coinop's Bitcoin peer-to-peer client: keeps the host's header chain up to date from
//! Bitcoin nodes over TCP, with the wire messages of the `bitcoin` crate's `p2p` module.
//!
//! It lives apart from `payment` so that payment (and the tenant CLI that links it) stays
//! free of tokio and sockets. The pieces, one job each:
//! - [`codec`]: reading and writing framed messages (magic, command, length, checksum);
//! - [`handshake`]: `version`/`verack` with one peer;
//! - [`session`]: one connected peer: `sendheaders`, `getheaders` from a block locator,
//!   `headers` and `inv` announcements, `ping`/`pong`, the verdict on a bad header, and
//!   the full blocks (`getdata` witness block) the host wants to scan for payments;
//! - [`peer_set`]: one task per configured peer (and DNS-seed slots when asked): connect,
//!   reconnect with exponential back-off, ban a misbehaving peer for a while;
//! - [`seed_pool`]: the DNS seeds' addresses the seeded slots share: a slot whose peer was
//!   banned or keeps failing gives its address back and takes another (bounded per seed);
//! - [`status`]: what the daemon shows (peers connected, syncing or synced, last header).
//!
//! The chain itself is reached through [`ChainAccess`]: every header a peer sends goes
//! through the same [`payment::onchain::HeaderChain::append`] the operator's
//! `POST /v1/chain/headers` uses, so the chain's checks stay the judge.

pub mod codec;
pub mod handshake;
pub mod peer_set;
pub mod seed_pool;
pub mod session;
pub mod status;

use bitcoin::block::Header;
use bitcoin::Block;
use bitcoin::BlockHash;
use payment::onchain::{AppendOutcome, ChainError, Tip};

pub use peer_set::{spawn, PeerSetConfig};
pub use status::{SyncSnapshot, SyncState, SyncStatus};

/// The host's header chain as the P2P client sees it. Calls may block (a durable append
/// fsyncs): the client makes them from blocking threads.
pub trait ChainAccess: Send + Sync + 'static {
    /// A block locator of the best chain, tip first.
    fn locator(&self) -> Vec<BlockHash>;
    /// The hash of the chain's checkpoint while its header is still missing (a checkpoint
    /// shipped by hash only): the session asks a peer for that header before anything else.
    fn checkpoint_header_wanted(&self) -> Option<BlockHash> {
        None
    }
    fn tip(&self) -> Tip;
    /// Whether the chain holds this block's header (any branch).
    fn knows(&self, hash: &BlockHash) -> bool;
    /// Validates and stores headers from an untrusted peer, all or nothing.
    fn accept_headers(&self, headers: &[Header]) -> Result<AppendOutcome, ChainError>;

    /// Best-chain blocks whose transactions the host wants to look at (at most `max`,
    /// oldest first); none by default.
    fn blocks_wanted(&self, _max: usize) -> Vec<BlockHash> {
        Vec::new()
    }

    /// A full block a peer sent for [`ChainAccess::blocks_wanted`].
    fn block_received(&self, _block: Block) -> Result<(), BlockRejected> {
        Ok(())
    }
}

/// Why a block from a peer was not taken.
#[derive(Debug, thiserror::Error)]
pub enum BlockRejected {
    /// The block does not match its header (the peer's fault: it is banned).
    #[error("invalid block: {0}")]
    Invalid(String),
    /// The host could not use it (storage): not the peer's fault.
    #[error("block not used: {0}")]
    Local(String),
}
