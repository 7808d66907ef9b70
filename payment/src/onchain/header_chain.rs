//! The host's own chain of block headers, from a checkpoint, with every competing branch.
//!
//! Each header is checked before it is kept: it links to a known header, its hash meets its
//! own target, that target is within the network's limit and is what the retarget rule
//! requires (or, at the first retarget after a checkpoint, within its factor of 4), and its
//! time is above the median of the 11 before it (right after a checkpoint, above the least
//! that median can be) and at most two hours ahead of the caller's clock. The best chain is
//! the branch with the most cumulative work (first seen wins a tie); a branch that overtakes
//! it causes a reorg.
//!
//! A chain may start from a checkpoint known only by height and hash (a shipped one, see
//! [`super::checkpoints`]): until a source sends the header that hashes to it, the chain is
//! *unanchored*. Its first header is taken from whichever source sends it first, because
//! the hash alone decides whether it is the right one, and its proof of work then checks
//! itself; only then are the headers after it accepted and the chain file written.
//!
//! In memory a block is 64 bytes ([`Entry`]: hash, work, time, bits, parent, height) plus 5
//! bytes in the hash index and 4 in the best-chain vector, so a million headers take about
//! 75 MB. The full 80-byte headers live only in the [`ChainStore`] file.

use std::path::{Path, PathBuf};

use bitcoin::block::Header;
use bitcoin::hashes::Hash;
use bitcoin::{BlockHash, CompactTarget, Target};
use hashbrown::HashTable;

use super::chain_store::ChainStore;
use super::error::{ChainError, HeaderError};
use super::network::{ChainNetwork, RetargetRule};
use super::retarget::{check_timewarp, required_bits, Expected};

/// Headers further than this ahead of the host's clock are refused (consensus rule).
pub const MAX_FUTURE_DRIFT_S: u64 = 2 * 60 * 60;
/// How many previous timestamps the median-time-past rule looks at.
const MTP_SPAN: usize = 11;
/// Most headers accepted in one call (a P2P `headers` message carries at most 2000).
pub const MAX_HEADERS_PER_APPEND: usize = 100_000;
/// An untrusted batch may leave a side branch at most this many blocks (at the tip's
/// difficulty) short of the best chain's work: a weaker branch could only be an attempt to
/// fill the host's memory and disk with cheap low-difficulty forks, so it is not stored. A
/// peer delivers a longer competing branch 2000 headers a message, so a real reorg up to
/// 2000 + this deep still gets through.
pub const SIDE_BRANCH_MARGIN_BLOCKS: u128 = 144;

/// One block as the chain keeps it in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Block hash, internal byte order.
    pub hash: [u8; 32],
    /// Work of every block from the checkpoint up to and including this one. Real chains
    /// stay far below 2^128 (mainnet today is about 2^95).
    pub chainwork: u128,
    pub time: u32,
    pub bits: u32,
    /// Index of the parent entry, or [`Entry::NO_PREV`] for the checkpoint.
    pub prev: u32,
    pub height: u32,
}

impl Entry {
    pub const NO_PREV: u32 = u32::MAX;
}

/// Where headers come from. Signet headers are only taken from the operator (see
/// [`ChainNetwork::needs_operator_feed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderSource {
    /// The operator's own trusted node, e.g. `POST /v1/chain/headers` from root.
    Operator,
    /// Anyone else.
    Untrusted,
}

/// The block the chain starts from: genesis, or one the operator vouches for, or a shipped
/// one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub height: u32,
    pub hash: BlockHash,
    /// The block's header; `None` for a checkpoint known by hash only, whose header the
    /// chain takes from the first source that sends one hashing to `hash`.
    pub header: Option<Header>,
    /// Cumulative work of the chain up to this block, when known (mainnet's shipped
    /// checkpoint); otherwise the chain counts work from this block's own, which changes no
    /// decision: every branch the chain compares contains the checkpoint.
    pub chainwork: Option<u128>,
}

impl Checkpoint {
    pub fn genesis(network: ChainNetwork) -> Self {
        let header = network.genesis_header();
        Checkpoint {
            height: 0,
            hash: header.block_hash(),
            header: Some(header),
            chainwork: None,
        }
    }

    /// A checkpoint known by height and hash only (see the module doc).
    pub fn by_hash(height: u32, hash: BlockHash) -> Self {
        Checkpoint {
            height,
            hash,
            header: None,
            chainwork: None,
        }
    }

    /// A checkpoint given by the operator as height, hash and header: the header must hash
    /// to `hash` and carry valid proof of work within the network's limit.
    pub fn operator(
        network: ChainNetwork,
        height: u32,
        hash: BlockHash,
        header: Header,
    ) -> Result<Self, HeaderError> {
        let got = header.block_hash();
        if got != hash {
            return Err(HeaderError::CheckpointHash {
                expected: hash,
                got,
            });
        }
        check_pow(network.pow_limit(), &header)?;
        Ok(Checkpoint {
            height,
            hash,
            header: Some(header),
            chainwork: None,
        })
    }

    /// The same checkpoint with the chain's cumulative work up to it.
    pub fn with_chainwork(self, chainwork: u128) -> Self {
        Checkpoint {
            chainwork: Some(chainwork),
            ..self
        }
    }
}

/// The best chain's tip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tip {
    pub height: u32,
    pub hash: BlockHash,
}

/// What the chain knows about one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    pub height: u32,
    pub time: u32,
    pub on_best_chain: bool,
    /// Best height − height + 1 on the best chain, 0 on a side branch.
    pub confirmations: u32,
}

/// The result of a successful [`HeaderChain::append`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Headers that were new (known ones are skipped silently).
    pub added: usize,
    pub tip: Tip,
    /// The previous tip left the best chain.
    pub reorg: bool,
}

/// The target `bits` stand for, if they encode one Bitcoin Core would accept (positive,
/// non-zero, no overflow).
pub fn target_from_bits(bits: CompactTarget) -> Option<Target> {
    let raw = bits.to_consensus();
    let exponent = raw >> 24;
    let mantissa = raw & 0x00ff_ffff;
    let negative = mantissa & 0x0080_0000 != 0;
    // A 3-byte mantissa shifted past byte 32 would not fit in 256 bits.
    if mantissa == 0 || negative || exponent > 32 {
        return None;
    }
    let target = Target::from_compact(bits);
    (target != Target::ZERO).then_some(target)
}

/// Checks that `header` meets its own target and that the target is within `limit`.
pub fn check_pow(limit: Target, header: &Header) -> Result<BlockHash, HeaderError> {
    let hash = header.block_hash();
    check_pow_of(limit, header, hash).map(|()| hash)
}

/// [`check_pow`] with the header's hash already computed (hashing is most of the cost of
/// appending a header).
fn check_pow_of(limit: Target, header: &Header, hash: BlockHash) -> Result<(), HeaderError> {
    let target = target_from_bits(header.bits).ok_or(HeaderError::InvalidBits {
        bits: header.bits.to_consensus(),
    })?;
    if target > limit {
        return Err(HeaderError::TargetAboveLimit {
            bits: header.bits.to_consensus(),
        });
    }
    if target.is_met_by(hash) {
        Ok(())
    } else {
        Err(HeaderError::BadProofOfWork { hash })
    }
}

/// The work a block with these (already validated) bits represents.
fn block_work(bits: CompactTarget) -> Result<u128, HeaderError> {
    let work = Target::from_compact(bits).to_work().to_le_bytes();
    let (low, high) = work.split_at(16);
    if high.iter().any(|&b| b != 0) {
        return Err(HeaderError::WorkOverflow);
    }
    let mut le = [0u8; 16];
    le.copy_from_slice(low);
    Ok(u128::from_le_bytes(le))
}

/// The checkpoint as the chain's first entry, after checking that its header (if known)
/// hashes to the checkpoint's hash and carries valid proof of work. Without a header the
/// entry holds only height and hash until [`HeaderChain::append`] anchors it.
fn checkpoint_entry(rules: &Rules, checkpoint: &Checkpoint) -> Result<Entry, ChainError> {
    let Some(header) = checkpoint.header else {
        return Ok(Entry {
            hash: checkpoint.hash.to_byte_array(),
            chainwork: 0,
            time: 0,
            bits: 0,
            prev: Entry::NO_PREV,
            height: checkpoint.height,
        });
    };
    anchored_entry(rules, checkpoint, &header, 0)
}

/// The checkpoint's entry built from `header`, which must hash to the checkpoint and meet
/// its own target; `index` names the header's place in a batch for the error.
fn anchored_entry(
    rules: &Rules,
    checkpoint: &Checkpoint,
    header: &Header,
    index: usize,
) -> Result<Entry, ChainError> {
    let hash = header.block_hash();
    let reject = |reason| ChainError::Rejected {
        index,
        hash,
        reason,
    };
    if hash != checkpoint.hash {
        return Err(reject(HeaderError::CheckpointHash {
            expected: checkpoint.hash,
            got: hash,
        }));
    }
    check_pow(rules.params.max_attainable_target, header).map_err(reject)?;
    Ok(Entry {
        hash: hash.to_byte_array(),
        chainwork: match checkpoint.chainwork {
            Some(work) => work,
            None => block_work(header.bits).map_err(reject)?,
        },
        time: header.time,
        bits: header.bits.to_consensus(),
        prev: Entry::NO_PREV,
        height: checkpoint.height,
    })
}

/// A checkpoint still waiting for its header, and where the chain file goes once it has it.
#[derive(Debug)]
struct Unanchored {
    checkpoint: Checkpoint,
    path: Option<PathBuf>,
}

/// The consensus rules a chain enforces.
#[derive(Clone, Debug)]
struct Rules {
    network: ChainNetwork,
    retarget: RetargetRule,
    params: bitcoin::params::Params,
}

/// The header chain: an in-memory index, optionally backed by a [`ChainStore`] file.
pub struct HeaderChain {
    rules: Rules,
    entries: Vec<Entry>,
    /// Entry indexes, hashed by the first 8 bytes of the block hash (random even under PoW,
    /// whose zeros are at the other end).
    by_hash: HashTable<u32>,
    /// Best chain: `best[i]` is the entry at height `base_height + i`.
    best: Vec<u32>,
    base_height: u32,
    store: Option<ChainStore>,
    /// Set while the checkpoint's header is not known yet (see the module doc).
    unanchored: Option<Unanchored>,
}

impl std::fmt::Debug for HeaderChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderChain")
            .field("network", &self.rules.network)
            .field("entries", &self.entries.len())
            .field("tip", &self.tip())
            .finish()
    }
}

fn index_hash(hash: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(first)
}

impl HeaderChain {
    /// A chain held only in memory (tests, tools).
    pub fn in_memory(network: ChainNetwork, checkpoint: Checkpoint) -> Result<Self, ChainError> {
        let rules = Rules {
            network,
            retarget: network.retarget_rule(),
            params: network.params().clone(),
        };
        Self::from_checkpoint(rules, checkpoint)
    }

    /// Test-only: a chain with another network's retarget rule, so difficulty changes can be
    /// exercised with regtest's easy proof of work.
    #[cfg(test)]
    pub(crate) fn in_memory_with_rule(
        network: ChainNetwork,
        retarget: RetargetRule,
        checkpoint: Checkpoint,
    ) -> Result<Self, ChainError> {
        let mut params = network.params().clone();
        params.no_pow_retargeting = retarget == RetargetRule::Fixed;
        let rules = Rules {
            network,
            retarget,
            params,
        };
        Self::from_checkpoint(rules, checkpoint)
    }

    /// Opens the chain file at `path`, creating it from `checkpoint` if it does not exist. An
    /// existing file must be for the same network and start at the same checkpoint. A
    /// checkpoint known by hash only creates no file until its header arrives.
    pub fn open(
        path: &Path,
        network: ChainNetwork,
        checkpoint: Checkpoint,
    ) -> Result<Self, ChainError> {
        let rules = Rules {
            network,
            retarget: network.retarget_rule(),
            params: network.params().clone(),
        };
        if checkpoint.header.is_none() && !ChainStore::exists(path) {
            let mut chain = Self::from_checkpoint(rules, checkpoint)?;
            chain.unanchored = Some(Unanchored {
                checkpoint,
                path: Some(path.to_owned()),
            });
            return Ok(chain);
        }
        let first = checkpoint_entry(&rules, &checkpoint)?;
        let (store, entries) = ChainStore::open(path, network, &checkpoint, first.chainwork)?;
        let mut chain = Self::indexed(rules, checkpoint.height, entries)?;
        chain.store = Some(store);
        Ok(chain)
    }

    fn from_checkpoint(rules: Rules, checkpoint: Checkpoint) -> Result<Self, ChainError> {
        let entry = checkpoint_entry(&rules, &checkpoint)?;
        let mut chain = Self::indexed(rules, checkpoint.height, vec![entry])?;
        if checkpoint.header.is_none() {
            chain.unanchored = Some(Unanchored {
                checkpoint,
                path: None,
            });
        }
        Ok(chain)
    }

    /// An in-memory chain over `entries` (the first at `base_height`), not yet stored.
    fn indexed(rules: Rules, base_height: u32, entries: Vec<Entry>) -> Result<Self, ChainError> {
        let mut chain = HeaderChain {
            rules,
            entries: Vec::new(),
            by_hash: HashTable::new(),
            best: Vec::new(),
            base_height,
            store: None,
            unanchored: None,
        };
        chain.load_entries(entries)?;
        Ok(chain)
    }

    /// Builds the index from entries already validated (by `append`, possibly in an earlier
    /// run); entry 0 is the checkpoint.
    fn load_entries(&mut self, entries: Vec<Entry>) -> Result<(), ChainError> {
        self.by_hash = HashTable::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let idx = u32::try_from(i).map_err(|_| ChainError::TooManyHeaders)?;
            self.by_hash.insert_unique(index_hash(&e.hash), idx, |&j| {
                index_hash(&entries[j as usize].hash)
            });
        }
        self.entries = entries;
        let best_idx = self.most_work_entry(0);
        self.best.clear();
        self.set_best_tip(best_idx);
        Ok(())
    }

    pub fn network(&self) -> ChainNetwork {
        self.rules.network
    }

    /// The checkpoint's hash while its header is still missing: a peer should be asked for
    /// that header (`getheaders` with an empty locator and it as the stop hash) before any
    /// other.
    pub fn checkpoint_header_wanted(&self) -> Option<BlockHash> {
        self.unanchored.as_ref().map(|u| u.checkpoint.hash)
    }

    /// Takes the checkpoint's header if `headers` holds it: fills in the checkpoint entry and
    /// writes the chain file (fsynced) so the header is never asked for again.
    fn anchor(&mut self, headers: &[Header]) -> Result<(), ChainError> {
        let Some(u) = &self.unanchored else {
            return Ok(());
        };
        let Some((index, header)) = headers
            .iter()
            .enumerate()
            .find(|(_, h)| h.block_hash() == u.checkpoint.hash)
        else {
            return Ok(());
        };
        let entry = anchored_entry(&self.rules, &u.checkpoint, header, index)?;
        if let Some(path) = &u.path {
            let anchored = Checkpoint {
                header: Some(*header),
                ..u.checkpoint
            };
            let (store, _) =
                ChainStore::open(path, self.rules.network, &anchored, entry.chainwork)?;
            self.store = Some(store);
        }
        self.entries[0] = entry;
        self.unanchored = None;
        Ok(())
    }

    /// Number of headers known, all branches included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never true: the checkpoint is always there.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the in-memory index holds on the heap (entries, hash index, best chain).
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.by_hash.allocation_size()
            + self.best.capacity() * std::mem::size_of::<u32>()
    }

    pub fn tip(&self) -> Tip {
        let idx = *self
            .best
            .last()
            .expect("the best chain always holds at least the checkpoint");
        let e = &self.entries[idx as usize];
        Tip {
            height: e.height,
            hash: BlockHash::from_byte_array(e.hash),
        }
    }

    fn lookup(&self, hash: &[u8; 32]) -> Option<u32> {
        self.by_hash
            .find(index_hash(hash), |&i| {
                &self.entries[i as usize].hash == hash
            })
            .copied()
    }

    pub fn contains(&self, hash: &BlockHash) -> bool {
        self.lookup(hash.as_byte_array()).is_some()
    }

    fn on_best_chain(&self, idx: u32) -> bool {
        let h = self.entries[idx as usize].height;
        h >= self.base_height && self.best.get((h - self.base_height) as usize) == Some(&idx)
    }

    /// What the chain knows about `hash`, or `None` if it never saw that block.
    pub fn block(&self, hash: &BlockHash) -> Option<BlockInfo> {
        let idx = self.lookup(hash.as_byte_array())?;
        let e = &self.entries[idx as usize];
        let on_best_chain = self.on_best_chain(idx);
        let confirmations = if on_best_chain {
            self.tip().height - e.height + 1
        } else {
            0
        };
        Some(BlockInfo {
            height: e.height,
            time: e.time,
            on_best_chain,
            confirmations,
        })
    }

    /// Best height − block height + 1 if the block is on the best chain, else 0 (side branch
    /// or unknown).
    pub fn confirmations(&self, hash: &BlockHash) -> u32 {
        self.block(hash).map_or(0, |b| b.confirmations)
    }

    /// The best chain's block hash at `height`.
    pub fn best_hash_at(&self, height: u32) -> Option<BlockHash> {
        let i = height.checked_sub(self.base_height)?;
        let idx = *self.best.get(i as usize)?;
        Some(BlockHash::from_byte_array(self.entries[idx as usize].hash))
    }

    /// The median of the timestamps of `prev` and its 10 ancestors, which a new header's
    /// time must exceed; near genesis, of as many as exist (as consensus computes it).
    ///
    /// Right after a checkpoint some of those 11 blocks lie below it and their times are
    /// unknown. The median of only the known ones could be above the real one and refuse a
    /// block consensus accepts, for good. Instead this is the least the real median can be:
    /// with `missing` times unknown (possibly all lower than every known one), the real
    /// median is at least the known time at index `MTP_SPAN / 2 - missing` (ascending).
    /// `None` when more than half are unknown: then nothing bounds it.
    fn median_time_past(&self, prev: u32) -> Option<u32> {
        let mut times = [0u32; MTP_SPAN];
        let mut n = 0;
        let mut cur = prev;
        let mut first_height = None;
        while n < MTP_SPAN {
            let e = &self.entries[cur as usize];
            times[n] = e.time;
            n += 1;
            if e.prev == Entry::NO_PREV {
                first_height = Some(e.height);
                break;
            }
            cur = e.prev;
        }
        let times = &mut times[..n];
        times.sort_unstable();
        let missing = match first_height {
            // All 11 known; or the chain starts at genesis, where there are no more blocks
            // and consensus takes the median of these.
            None | Some(0) => return Some(times[n / 2]),
            Some(_) => MTP_SPAN - n,
        };
        (MTP_SPAN / 2).checked_sub(missing).map(|i| times[i])
    }

    /// Checks one header against every rule, given its parent's index.
    fn validate(
        &self,
        header: &Header,
        hash: BlockHash,
        prev: u32,
        now_us: u64,
    ) -> Result<Entry, HeaderError> {
        let parent = &self.entries[prev as usize];
        let height = parent
            .height
            .checked_add(1)
            .ok_or(HeaderError::HeightOverflow)?;
        match required_bits(
            self.rules.retarget,
            &self.rules.params,
            &self.entries,
            prev,
            header.time,
        ) {
            Expected::Exact(bits) if bits != header.bits => {
                return Err(HeaderError::WrongBits {
                    height,
                    got: header.bits.to_consensus(),
                    expected: bits.to_consensus(),
                })
            }
            Expected::Within { hardest, easiest } => {
                // Compared as targets, not as compact encodings: two encodings of one
                // target are the same difficulty. Bits that encode no target are refused
                // below as invalid.
                let out_of_range = target_from_bits(header.bits).is_some_and(|t| {
                    t < Target::from_compact(hardest) || t > Target::from_compact(easiest)
                });
                if out_of_range {
                    return Err(HeaderError::RetargetBeyondClamp {
                        height,
                        got: header.bits.to_consensus(),
                        hardest: hardest.to_consensus(),
                        easiest: easiest.to_consensus(),
                    });
                }
            }
            Expected::Exact(_) | Expected::UpToPowLimit => {}
        }
        check_pow_of(self.rules.params.max_attainable_target, header, hash)?;
        let min_version = self.rules.network.min_block_version(height);
        if header.version.to_consensus() < min_version {
            return Err(HeaderError::VersionTooLow {
                height,
                version: header.version.to_consensus(),
                min: min_version,
            });
        }
        if let Some(mtp) = self.median_time_past(prev) {
            if header.time <= mtp {
                return Err(HeaderError::TimeNotAfterMedian {
                    time: header.time,
                    median: mtp,
                });
            }
        }
        let latest = now_us / 1_000_000 + MAX_FUTURE_DRIFT_S;
        if u64::from(header.time) > latest {
            return Err(HeaderError::TimeTooFarAhead {
                time: header.time,
                latest,
            });
        }
        check_timewarp(
            self.rules.retarget,
            &self.rules.params,
            height,
            parent.time,
            header.time,
        )
        .map_err(|min_time| HeaderError::TimeWarp {
            time: header.time,
            min_time,
        })?;
        let chainwork = parent
            .chainwork
            .checked_add(block_work(header.bits)?)
            .ok_or(HeaderError::WorkOverflow)?;
        Ok(Entry {
            hash: hash.to_byte_array(),
            chainwork,
            time: header.time,
            bits: header.bits.to_consensus(),
            prev,
            height,
        })
    }

    /// Validates and adds `headers` (in order; each may build on a known header or on an
    /// earlier one in the batch). All or nothing: on the first invalid header nothing is
    /// added and the error names its position. Headers already known are skipped. With a
    /// store, the new headers are on disk (fsync) before this returns.
    pub fn append(
        &mut self,
        headers: &[Header],
        now_us: u64,
        source: HeaderSource,
    ) -> Result<AppendOutcome, ChainError> {
        if self.rules.network.needs_operator_feed() && source != HeaderSource::Operator {
            return Err(ChainError::SignetNeedsOperatorFeed);
        }
        if headers.len() > MAX_HEADERS_PER_APPEND {
            return Err(ChainError::TooManyInOneAppend {
                got: headers.len(),
                max: MAX_HEADERS_PER_APPEND,
            });
        }
        self.anchor(headers)?;
        let start = self.entries.len();
        let new_headers = match self.add_all(headers, now_us) {
            Ok(new) => new,
            Err(e) => {
                self.rollback(start);
                return Err(e);
            }
        };
        if source == HeaderSource::Untrusted {
            if let Err(e) = self.check_branch_work(start) {
                self.rollback(start);
                return Err(e);
            }
        }
        if let Some(store) = &mut self.store {
            if let Err(e) = store.append(&self.entries[start..], &new_headers) {
                self.rollback(start);
                return Err(e);
            }
        }
        let old_tip = *self.best.last().expect("best chain is never empty");
        let candidate = self.most_work_entry(start);
        let mut reorg = false;
        if candidate != old_tip
            && self.entries[candidate as usize].chainwork > self.entries[old_tip as usize].chainwork
        {
            self.set_best_tip(candidate);
            reorg = !self.on_best_chain(old_tip);
        }
        Ok(AppendOutcome {
            added: self.entries.len() - start,
            tip: self.tip(),
            reorg,
        })
    }

    /// The anti-DoS bound on side branches (see [`SIDE_BRANCH_MARGIN_BLOCKS`]): every branch
    /// tip added since entry `start` (a new header no other new header builds on) must come
    /// within the margin of the best tip's work. Each tip, not only the strongest: one strong
    /// header must not carry many weak fork headers in with it. The headers below a tip are
    /// not held to it: a deep reorg's branch starts far below the best tip's work and is
    /// judged by where it ends.
    fn check_branch_work(&self, start: usize) -> Result<(), ChainError> {
        let new = &self.entries[start..];
        let mut has_new_child = vec![false; new.len()];
        for e in new {
            // Every new entry has a parent (only the checkpoint has none); a parent before
            // `start` was there already.
            if let Some(i) = (e.prev as usize).checked_sub(start) {
                has_new_child[i] = true;
            }
        }
        let tip = &self.entries[*self.best.last().expect("best chain is never empty") as usize];
        let tip_block_work = block_work(CompactTarget::from_consensus(tip.bits)).unwrap_or(0);
        let floor = tip
            .chainwork
            .saturating_sub(tip_block_work.saturating_mul(SIDE_BRANCH_MARGIN_BLOCKS));
        let weak_tip = new
            .iter()
            .zip(&has_new_child)
            .find(|(e, &has_child)| !has_child && e.chainwork < floor);
        match weak_tip {
            Some((e, _)) => Err(ChainError::LowWorkBranch {
                hash: BlockHash::from_byte_array(e.hash),
                work: e.chainwork,
                floor,
            }),
            None => Ok(()),
        }
    }

    /// A block locator for `getheaders`: the best chain's hashes from the tip down, one
    /// apart for the first ten, then twice as far apart each step, ending with the
    /// checkpoint (the first block this chain knows).
    pub fn locator(&self) -> Vec<BlockHash> {
        let mut out = Vec::with_capacity(32);
        let mut i = self.best.len() - 1;
        let mut step = 1;
        loop {
            out.push(BlockHash::from_byte_array(
                self.entries[self.best[i] as usize].hash,
            ));
            if i == 0 {
                break;
            }
            if out.len() >= 10 {
                step *= 2;
            }
            i = i.saturating_sub(step);
        }
        out
    }

    /// The best tip's cumulative work: from genesis when the checkpoint came with the chain's
    /// work up to it (mainnet's), otherwise counted from the checkpoint's own work (0 while
    /// the checkpoint waits for its header). Only differences of it mean anything.
    pub fn tip_chainwork(&self) -> u128 {
        self.entries[*self.best.last().expect("best chain is never empty") as usize].chainwork
    }

    /// Adds each new header to the index; returns the headers that were new, in entry order.
    fn add_all<'h>(
        &mut self,
        headers: &'h [Header],
        now_us: u64,
    ) -> Result<Vec<&'h Header>, ChainError> {
        let mut new = Vec::with_capacity(headers.len());
        for (index, header) in headers.iter().enumerate() {
            let hash = header.block_hash();
            if self.lookup(hash.as_byte_array()).is_some() {
                continue;
            }
            let reject = |reason| ChainError::Rejected {
                index,
                hash,
                reason,
            };
            // An unanchored checkpoint has no time or bits to check a child against: its
            // children link to nothing known yet.
            let prev = self
                .lookup(header.prev_blockhash.as_byte_array())
                .filter(|&p| p != 0 || self.unanchored.is_none())
                .ok_or_else(|| {
                    reject(HeaderError::UnknownParent {
                        prev: header.prev_blockhash,
                    })
                })?;
            let entry = self.validate(header, hash, prev, now_us).map_err(reject)?;
            let idx = u32::try_from(self.entries.len())
                .ok()
                .filter(|&i| i != Entry::NO_PREV)
                .ok_or(ChainError::TooManyHeaders)?;
            self.entries.push(entry);
            let entries = &self.entries;
            self.by_hash
                .insert_unique(index_hash(&entry.hash), idx, |&j| {
                    index_hash(&entries[j as usize].hash)
                });
            new.push(header);
        }
        Ok(new)
    }

    /// Forgets every entry from index `start` on (a batch that failed part-way).
    fn rollback(&mut self, start: usize) {
        for idx in (start..self.entries.len()).rev() {
            let hash = index_hash(&self.entries[idx].hash);
            if let Ok(slot) = self.by_hash.find_entry(hash, |&i| i as usize == idx) {
                slot.remove();
            }
        }
        self.entries.truncate(start);
    }

    /// The entry with the most work at or after index `from` (the earliest on a tie), or
    /// the current tip if none beats it.
    fn most_work_entry(&self, from: usize) -> u32 {
        let mut best = self.best.last().copied();
        for (i, e) in self.entries.iter().enumerate().skip(from) {
            let better = match best {
                None => true,
                Some(b) => e.chainwork > self.entries[b as usize].chainwork,
            };
            if better {
                best = Some(i as u32);
            }
        }
        best.expect("there is at least the checkpoint entry")
    }

    /// Makes `tip` the best tip: rewrites the best-chain vector from the fork point up.
    fn set_best_tip(&mut self, tip: u32) {
        let mut path = Vec::new();
        let mut cur = tip;
        loop {
            if self.on_best_chain(cur) {
                break;
            }
            path.push(cur);
            let e = &self.entries[cur as usize];
            if e.prev == Entry::NO_PREV {
                break;
            }
            cur = e.prev;
        }
        let keep = match path.last() {
            Some(&lowest) => (self.entries[lowest as usize].height - self.base_height) as usize,
            None => self.best.len(),
        };
        self.best.truncate(keep);
        self.best.extend(path.into_iter().rev());
        let tip_height = self.entries[tip as usize].height;
        self.best
            .truncate((tip_height - self.base_height) as usize + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onchain::regtest_fixtures::{mined_header, regtest_bits};

    /// Mines `n` headers on `prev` with `spacing` seconds between them and the given bits.
    fn grow(prev: &Header, n: usize, spacing: u32, bits: CompactTarget) -> Vec<Header> {
        let mut out: Vec<Header> = Vec::with_capacity(n);
        let mut last = *prev;
        for i in 0..n {
            let h = mined_header(
                last.block_hash(),
                TxMerkleNode::from_byte_array([i as u8; 32]),
                last.time + spacing,
                bits,
            );
            out.push(h);
            last = h;
        }
        out
    }

    use bitcoin::TxMerkleNode;

    #[test]
    fn standard_retarget_is_enforced_at_the_period_boundary() {
        // Regtest's easy proof of work under mainnet's retarget rule: 2015 blocks one
        // minute apart make the 2016th block four times harder (the clamp).
        let genesis = ChainNetwork::Regtest.genesis_header();
        let mut chain = HeaderChain::in_memory_with_rule(
            ChainNetwork::Regtest,
            RetargetRule::Standard,
            Checkpoint::genesis(ChainNetwork::Regtest),
        )
        .unwrap();
        let period = grow(&genesis, 2015, 60, regtest_bits());
        let last = *period.last().unwrap();
        let now = u64::from(last.time + 10_000) * 1_000_000;
        chain.append(&period, now, HeaderSource::Untrusted).unwrap();
        assert_eq!(chain.tip().height, 2015);

        let expected = CompactTarget::from_next_work_required(
            regtest_bits(),
            u64::from(last.time - genesis.time),
            regtest_retargeting(),
        );
        assert_ne!(
            expected,
            regtest_bits(),
            "fast blocks must raise the difficulty"
        );

        // Keeping the old bits across the boundary is refused ...
        let stale = grow(&last, 1, 60, regtest_bits());
        let err = chain
            .append(&stale, now, HeaderSource::Untrusted)
            .unwrap_err();
        assert!(
            matches!(
                err,
                ChainError::Rejected {
                    reason: HeaderError::WrongBits { height: 2016, .. },
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.code(), "wrong_retarget");
        // ... the recomputed bits are accepted, and then stay for the period.
        let next = grow(&last, 2, 60, expected);
        chain.append(&next, now, HeaderSource::Untrusted).unwrap();
        assert_eq!(chain.tip().height, 2017);
    }

    #[test]
    fn the_first_retarget_after_a_mid_period_checkpoint_moves_the_target_at_most_fourfold() {
        // A checkpoint at 2000, not at a period start (like mainnet's 840,000): the retarget
        // at 2016 cannot be computed exactly, its period's first block (0) being below the
        // checkpoint. Bits 0x2001ffff are 1/64 of regtest's limit, so the limit is 64 times
        // easier than the parent: a branch forking there must not get it.
        let base = CompactTarget::from_consensus(0x2001_ffff);
        let cp_header = mined_header(
            BlockHash::all_zeros(),
            TxMerkleNode::from_byte_array([0xcc; 32]),
            1_700_000_000,
            base,
        );
        let cp = Checkpoint::operator(
            ChainNetwork::Regtest,
            2000,
            cp_header.block_hash(),
            cp_header,
        )
        .unwrap();
        let mut chain =
            HeaderChain::in_memory_with_rule(ChainNetwork::Regtest, RetargetRule::Standard, cp)
                .unwrap();
        let to_2015 = grow(&cp_header, 15, 600, base);
        let last = to_2015[14];
        let now = u64::from(last.time + 10_000) * 1_000_000;
        chain
            .append(&to_2015, now, HeaderSource::Untrusted)
            .unwrap();
        assert_eq!(chain.tip().height, 2015);

        // 0x01ffff·256^29 times 4 is 0x07fffc·256^29; a quarter of it is 0x7fffc0·256^28.
        let (hardest, easiest) = (0x1f7f_ffc0, 0x2007_fffc);
        // The pow limit, a hair easier than four times, and harder than a quarter: refused.
        for bits in [regtest_bits().to_consensus(), 0x2007_ffff, 0x1f7f_ff00] {
            let fork = grow(&last, 1, 600, CompactTarget::from_consensus(bits));
            let err = chain
                .append(&fork, now, HeaderSource::Untrusted)
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                ChainError::Rejected {
                    index: 0,
                    hash: fork[0].block_hash(),
                    reason: HeaderError::RetargetBeyondClamp {
                        height: 2016,
                        got: bits,
                        hardest,
                        easiest,
                    },
                }
                .to_string()
            );
            assert!(
                matches!(
                    err,
                    ChainError::Rejected {
                        reason: HeaderError::RetargetBeyondClamp { .. },
                        ..
                    }
                ),
                "{err}"
            );
            assert_eq!(err.code(), "wrong_retarget");
            assert_eq!(chain.len(), 16);
        }
        // Exactly four times easier (the slowest honest period) is accepted, and from then on
        // the new bits are exact again: the next block must keep them.
        let honest = grow(&last, 1, 600, CompactTarget::from_consensus(easiest));
        chain.append(&honest, now, HeaderSource::Untrusted).unwrap();
        assert_eq!(chain.tip().height, 2016);
        let stale = grow(&honest[0], 1, 600, base);
        let err = chain
            .append(&stale, now, HeaderSource::Untrusted)
            .unwrap_err();
        assert!(
            matches!(
                err,
                ChainError::Rejected {
                    reason: HeaderError::WrongBits { height: 2017, .. },
                    ..
                }
            ),
            "{err}"
        );
        // A retarget between the two ends (a real period's) is accepted as well.
        let between = grow(&last, 1, 601, CompactTarget::from_consensus(0x2001_0000));
        let out = chain
            .append(&between, now, HeaderSource::Untrusted)
            .unwrap();
        assert_eq!(out.added, 1);
    }

    #[test]
    fn median_time_past_right_after_a_checkpoint_is_no_stricter_than_consensus() {
        let genesis = ChainNetwork::Regtest.genesis_header();
        // main[i] is at height i + 1, with time genesis + 600·(i + 1).
        let main = grow(&genesis, 24, 600, regtest_bits());
        let now = u64::from(main[23].time + 10_000) * 1_000_000;
        // On block 24, consensus takes the median of blocks 14..=24: block 19's time.
        let mtp = main[18].time;
        let after = mined_header(
            main[23].block_hash(),
            TxMerkleNode::from_byte_array([0xee; 32]),
            mtp + 1,
            regtest_bits(),
        );
        let at = mined_header(
            main[23].block_hash(),
            TxMerkleNode::from_byte_array([0xef; 32]),
            mtp,
            regtest_bits(),
        );
        // From genesis, with every time known, `after` is valid: an honest block.
        let mut full = regtest_chain();
        full.append(&main, now, HeaderSource::Untrusted).unwrap();
        full.append(&[after], now, HeaderSource::Untrusted).unwrap();

        let from = |height: u32| {
            let header = main[height as usize - 1];
            let cp =
                Checkpoint::operator(ChainNetwork::Regtest, height, header.block_hash(), header)
                    .unwrap();
            let mut chain = HeaderChain::in_memory(ChainNetwork::Regtest, cp).unwrap();
            chain
                .append(&main[height as usize..], now, HeaderSource::Untrusted)
                .unwrap();
            chain
        };
        // From a checkpoint at 21 only blocks 21..=24 are known: their median (block 23)
        // would refuse `after` forever; with 7 of the 11 times unknown nothing bounds the
        // median, so the rule is not applied.
        let mut chain = from(21);
        chain
            .append(&[after], now, HeaderSource::Untrusted)
            .unwrap();
        assert_eq!(chain.tip().height, 25);
        // From a checkpoint at 18, blocks 18..=24 are known and 4 are not: even if those 4
        // were the lowest, the median is at least the second-lowest known time (block 19),
        // so a header at that time is refused, as consensus refuses it, and `after` is not.
        let mut chain = from(18);
        let err = chain
            .append(&[at], now, HeaderSource::Untrusted)
            .unwrap_err();
        assert!(
            matches!(
                err,
                ChainError::Rejected {
                    reason: HeaderError::TimeNotAfterMedian { time, median },
                    ..
                } if time == mtp && median == mtp
            ),
            "{err}"
        );
        chain
            .append(&[after], now, HeaderSource::Untrusted)
            .unwrap();
        assert_eq!(chain.tip().height, 25);
    }

    fn regtest_chain() -> HeaderChain {
        HeaderChain::in_memory(
            ChainNetwork::Regtest,
            Checkpoint::genesis(ChainNetwork::Regtest),
        )
        .unwrap()
    }

    #[test]
    fn a_version_below_the_bip65_floor_is_refused() {
        let genesis = ChainNetwork::Regtest.genesis_header();
        let mut chain = regtest_chain();
        let mut old = grow(&genesis, 1, 60, regtest_bits())[0];
        old.version = bitcoin::block::Version::from_consensus(3);
        // Re-mine: the version is part of the hash.
        while !Target::from_compact(old.bits).is_met_by(old.block_hash()) {
            old.nonce += 1;
        }
        let now = u64::from(old.time + 10) * 1_000_000;
        let err = chain
            .append(&[old], now, HeaderSource::Operator)
            .unwrap_err();
        assert!(
            matches!(
                err,
                ChainError::Rejected {
                    reason: HeaderError::VersionTooLow {
                        height: 1,
                        version: 3,
                        min: 4
                    },
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(chain.len(), 1);
    }

    #[test]
    fn locator_steps_double_after_ten_and_end_at_the_checkpoint() {
        let genesis = ChainNetwork::Regtest.genesis_header();
        let mut chain = regtest_chain();
        let headers = grow(&genesis, 100, 60, regtest_bits());
        let now = u64::from(headers[99].time + 10) * 1_000_000;
        chain.append(&headers, now, HeaderSource::Operator).unwrap();
        let heights: Vec<u32> = chain
            .locator()
            .iter()
            .map(|h| chain.block(h).unwrap().height)
            .collect();
        assert_eq!(
            heights,
            vec![100, 99, 98, 97, 96, 95, 94, 93, 92, 91, 89, 85, 77, 61, 29, 0]
        );
    }

    #[test]
    fn a_weak_side_branch_from_a_peer_is_not_stored() {
        let genesis = ChainNetwork::Regtest.genesis_header();
        let mut chain = regtest_chain();
        let main = grow(&genesis, 200, 60, regtest_bits());
        let now = u64::from(main[199].time + 10) * 1_000_000;
        chain.append(&main, now, HeaderSource::Operator).unwrap();
        // 10 blocks forking at height 20: 170 blocks short, beyond the 144-block margin.
        let mut weak = grow(&main[19], 10, 61, regtest_bits());
        let err = chain
            .append(&weak, now, HeaderSource::Untrusted)
            .unwrap_err();
        assert!(matches!(err, ChainError::LowWorkBranch { .. }), "{err}");
        assert_eq!(chain.len(), 201);
        // Forking at height 100 it is within the margin and kept as a side branch.
        weak = grow(&main[99], 10, 61, regtest_bits());
        let out = chain.append(&weak, now, HeaderSource::Untrusted).unwrap();
        assert_eq!((out.added, out.reorg), (10, false));
    }

    #[test]
    fn every_weak_branch_in_a_batch_is_refused_not_only_the_strongest_judged() {
        let genesis = ChainNetwork::Regtest.genesis_header();
        let mut chain = regtest_chain();
        let main = grow(&genesis, 200, 60, regtest_bits());
        let now = u64::from(main[199].time + 100_000) * 1_000_000;
        chain.append(&main, now, HeaderSource::Operator).unwrap();
        // One batch: two headers extending the best tip, then ten forking at height 20
        // (170 blocks short, beyond the margin). The strong pair must not carry the weak
        // fork in.
        let mut batch = grow(&main[199], 2, 60, regtest_bits());
        let weak = grow(&main[19], 10, 61, regtest_bits());
        batch.extend_from_slice(&weak);
        let err = chain
            .append(&batch, now, HeaderSource::Untrusted)
            .unwrap_err();
        assert!(
            matches!(err, ChainError::LowWorkBranch { hash, .. } if hash == weak[9].block_hash()),
            "{err}"
        );
        assert_eq!(chain.len(), 201);
        assert_eq!(chain.tip().height, 200);

        // A deep reorg in one batch: a branch forking at height 30 (its first headers 170
        // blocks short) that ends above the best tip is judged by its tip, and taken.
        let reorg = grow(&main[29], 180, 59, regtest_bits());
        let out = chain.append(&reorg, now, HeaderSource::Untrusted).unwrap();
        assert_eq!((out.added, out.reorg, out.tip.height), (180, true, 210));
    }

    #[test]
    fn a_hash_only_checkpoint_takes_only_the_header_that_hashes_to_it() {
        let genesis = ChainNetwork::Regtest.genesis_header();
        let headers = grow(&genesis, 30, 60, regtest_bits());
        let now = u64::from(headers[29].time + 10) * 1_000_000;
        // headers[i] is at height i + 1: the checkpoint is block 10.
        let cp = Checkpoint::by_hash(10, headers[9].block_hash());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("headers.dat");
        let mut chain = HeaderChain::open(&path, ChainNetwork::Regtest, cp).unwrap();
        assert_eq!(chain.checkpoint_header_wanted(), Some(cp.hash));
        assert_eq!(chain.tip().height, 10);

        // Its children cannot be checked yet: they link to nothing known.
        let err = chain
            .append(&headers[10..15], now, HeaderSource::Untrusted)
            .unwrap_err();
        assert!(err.is_unconnected_start(), "{err}");
        // A header claiming the checkpoint's place but not hashing to it (same parent and
        // fields, another nonce, still valid proof of work) is not taken ...
        let mut forged = headers[9];
        loop {
            forged.nonce = forged.nonce.wrapping_add(1);
            if forged.target().is_met_by(forged.block_hash()) {
                break;
            }
        }
        let err = chain
            .append(&[forged], now, HeaderSource::Operator)
            .unwrap_err();
        assert!(
            matches!(
                err,
                ChainError::Rejected {
                    reason: HeaderError::UnknownParent { .. },
                    ..
                }
            ),
            "{err}"
        );
        // ... nor is anything built on it, and nothing was written.
        assert_eq!(chain.checkpoint_header_wanted(), Some(cp.hash));
        assert_eq!(chain.len(), 1);
        assert!(!path.exists());

        // The real header anchors the chain; the rest of its batch follows it.
        let out = chain
            .append(&headers[9..20], now, HeaderSource::Untrusted)
            .unwrap();
        assert_eq!((out.added, out.tip.height), (10, 20));
        assert_eq!(chain.checkpoint_header_wanted(), None);
        assert!(path.exists());
        drop(chain);

        // The file remembers the header: the chain reopens anchored.
        let mut chain = HeaderChain::open(&path, ChainNetwork::Regtest, cp).unwrap();
        assert_eq!(chain.checkpoint_header_wanted(), None);
        assert_eq!(chain.tip().height, 20);
        chain
            .append(&headers[20..], now, HeaderSource::Untrusted)
            .unwrap();
        assert_eq!(chain.tip().height, 30);
        // Another checkpoint does not open that file.
        drop(chain);
        let other = Checkpoint::by_hash(11, headers[10].block_hash());
        assert!(matches!(
            HeaderChain::open(&path, ChainNetwork::Regtest, other),
            Err(ChainError::StoreCorrupt { .. })
        ));
    }

    #[test]
    fn a_checkpoint_header_with_bad_proof_of_work_is_refused() {
        // A header hashing to the checkpoint is the right one only if its work is real:
        // one that does not meet its own target is refused even with the matching hash.
        let genesis = ChainNetwork::Regtest.genesis_header();
        let mut weak = grow(&genesis, 1, 60, regtest_bits())[0];
        while Target::from_compact(weak.bits).is_met_by(weak.block_hash()) {
            weak.nonce = weak.nonce.wrapping_add(1);
        }
        let mut chain = HeaderChain::in_memory(
            ChainNetwork::Regtest,
            Checkpoint::by_hash(1, weak.block_hash()),
        )
        .unwrap();
        let now = u64::from(weak.time + 10) * 1_000_000;
        let err = chain
            .append(&[weak], now, HeaderSource::Operator)
            .unwrap_err();
        assert!(
            matches!(
                err,
                ChainError::Rejected {
                    reason: HeaderError::BadProofOfWork { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(chain.checkpoint_header_wanted(), Some(weak.block_hash()));
    }

    /// Regtest's limits with retargeting switched on.
    fn regtest_retargeting() -> bitcoin::params::Params {
        let mut p = bitcoin::params::Params::REGTEST;
        p.no_pow_retargeting = false;
        p
    }
}
