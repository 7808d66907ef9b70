//! Regtest blocks built and mined in-process, for tests that must not need a bitcoind:
//! coinbase and payment transactions, blocks whose proof of work really meets regtest's
//! (trivial) target, and `gettxoutproof`-style MerkleBlock proofs.
//!
//! Compiled for this crate's tests and, with the `fixtures` feature, for other crates' tests.

use bitcoin::absolute::LockTime;
use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::consensus::encode::{serialize, serialize_hex};
use bitcoin::hashes::Hash;
use bitcoin::script::PushBytesBuf;
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, Block, BlockHash, CompactTarget, MerkleBlock, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxMerkleNode, TxOut, Txid, Witness,
};

use super::network::ChainNetwork;

/// Regtest's fixed target, in compact form.
pub fn regtest_bits() -> CompactTarget {
    ChainNetwork::Regtest.pow_limit_bits()
}

/// Seconds between fixture blocks.
pub const BLOCK_SPACING_S: u32 = 600;

/// Tries nonces until the header's hash meets its own target. With regtest bits that takes
/// two tries on average; with harder bits it may take long, so callers keep bits easy.
pub fn mine(mut header: Header) -> Header {
    let target = header.target();
    loop {
        if target.is_met_by(header.block_hash()) {
            return header;
        }
        header.nonce = header.nonce.wrapping_add(1);
        if header.nonce == 0 {
            // Every nonce failed: move the time on to get a fresh search space.
            header.time = header.time.wrapping_add(1);
        }
    }
}

/// A header on `prev` with the given merkle root, time and bits, mined.
pub fn mined_header(
    prev: BlockHash,
    merkle_root: TxMerkleNode,
    time: u32,
    bits: CompactTarget,
) -> Header {
    mine(Header {
        version: BlockVersion::from_consensus(0x2000_0000),
        prev_blockhash: prev,
        merkle_root,
        time,
        bits,
        nonce: 0,
    })
}

/// A coinbase for `height`; `tag` makes the coinbases of competing branches differ.
pub fn coinbase(height: u32, tag: &[u8]) -> Transaction {
    coinbase_paying(
        height,
        tag,
        &[(
            ScriptBuf::new_op_return([0u8; 4]),
            Amount::from_sat(50 * 100_000_000),
        )],
    )
}

/// A coinbase for `height` paying `outputs` (a miner paying a quote straight from its
/// block reward).
pub fn coinbase_paying(height: u32, tag: &[u8], outputs: &[(ScriptBuf, Amount)]) -> Transaction {
    let mut tag_push = PushBytesBuf::new();
    // Tags are short test labels; a push of up to 4 GiB cannot fail for them.
    tag_push
        .extend_from_slice(&tag[..tag.len().min(64)])
        .expect("at most 64 bytes always fit a push");
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: ScriptBuf::builder()
                .push_int(i64::from(height))
                .push_slice(tag_push)
                .into_script(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: outputs
            .iter()
            .map(|(script, value)| TxOut {
                value: *value,
                script_pubkey: script.clone(),
            })
            .collect(),
    }
}

/// A transaction paying `outputs`, spending a made-up outpoint (`salt` keeps txids apart).
/// Headers-only verification never looks at inputs, so they need not exist.
pub fn payment_tx(outputs: &[(ScriptBuf, Amount)], salt: u32) -> Transaction {
    let mut funding = [0u8; 32];
    funding[..4].copy_from_slice(&salt.to_le_bytes());
    funding[4] = 0xfe;
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(Txid::from_byte_array(funding), 0),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::from_slice(&[vec![0x30; 71], vec![0x02; 33]]),
        }],
        output: outputs
            .iter()
            .map(|(script, value)| TxOut {
                value: *value,
                script_pubkey: script.clone(),
            })
            .collect(),
    }
}

/// A mined block on `prev` at `height` and `time` holding a coinbase and `txs`.
pub fn mine_block(
    prev: BlockHash,
    height: u32,
    time: u32,
    tag: &[u8],
    txs: Vec<Transaction>,
) -> Block {
    mine_block_with_coinbase(prev, time, coinbase(height, tag), txs)
}

/// A mined block on `prev` at `time` whose first transaction is `coinbase`.
pub fn mine_block_with_coinbase(
    prev: BlockHash,
    time: u32,
    coinbase: Transaction,
    txs: Vec<Transaction>,
) -> Block {
    let mut txdata = Vec::with_capacity(txs.len() + 1);
    txdata.push(coinbase);
    txdata.extend(txs);
    let mut block = Block {
        header: Header {
            version: BlockVersion::from_consensus(0x2000_0000),
            prev_blockhash: prev,
            merkle_root: TxMerkleNode::all_zeros(),
            time,
            bits: regtest_bits(),
            nonce: 0,
        },
        txdata,
    };
    block.header.merkle_root = block
        .compute_merkle_root()
        .expect("a block with a coinbase has a merkle root");
    block.header = mine(block.header);
    block
}

/// The serialized MerkleBlock proving `txid` in `block`, as hex: what
/// `bitcoin-cli gettxoutproof '["txid"]' blockhash` prints.
pub fn txout_proof_hex(block: &Block, txids: &[Txid]) -> String {
    let mb = MerkleBlock::from_block_with_predicate(block, |t| txids.contains(t));
    serialize_hex(&mb)
}

pub fn tx_hex(tx: &Transaction) -> String {
    serialize_hex(tx)
}

/// The raw 80 bytes of a header.
pub fn header_bytes(header: &Header) -> Vec<u8> {
    serialize(header)
}

/// A regtest chain grown block by block from genesis, with branches.
#[derive(Clone, Debug)]
pub struct RegtestChain {
    /// Blocks from genesis (index = height).
    pub blocks: Vec<Block>,
}

impl Default for RegtestChain {
    fn default() -> Self {
        Self::new()
    }
}

impl RegtestChain {
    pub fn new() -> Self {
        RegtestChain {
            blocks: vec![bitcoin::constants::genesis_block(
                ChainNetwork::Regtest.params(),
            )],
        }
    }

    pub fn tip(&self) -> &Block {
        self.blocks.last().expect("a chain always has genesis")
    }

    pub fn height(&self) -> u32 {
        (self.blocks.len() - 1) as u32
    }

    /// Mines one block holding `txs` on the tip; `tag` distinguishes branches.
    pub fn mine(&mut self, tag: &[u8], txs: Vec<Transaction>) -> &Block {
        let tip = self.tip();
        let block = mine_block(
            tip.block_hash(),
            self.height() + 1,
            tip.header.time + BLOCK_SPACING_S,
            tag,
            txs,
        );
        self.blocks.push(block);
        self.tip()
    }

    /// Mines a block whose coinbase pays `outputs` on the tip.
    pub fn mine_paying_coinbase(&mut self, tag: &[u8], outputs: &[(ScriptBuf, Amount)]) -> &Block {
        let tip = self.tip();
        let block = mine_block_with_coinbase(
            tip.block_hash(),
            tip.header.time + BLOCK_SPACING_S,
            coinbase_paying(self.height() + 1, tag, outputs),
            Vec::new(),
        );
        self.blocks.push(block);
        self.tip()
    }

    /// Mines `n` blocks with only a coinbase.
    pub fn mine_empty(&mut self, n: usize, tag: &[u8]) {
        for _ in 0..n {
            self.mine(tag, Vec::new());
        }
    }

    /// A branch sharing this chain's blocks up to `height`.
    pub fn fork_at(&self, height: u32) -> RegtestChain {
        RegtestChain {
            blocks: self.blocks[..=height as usize].to_vec(),
        }
    }

    /// Headers above `height` (exclusive), ready for `HeaderChain::append`.
    pub fn headers_after(&self, height: u32) -> Vec<Header> {
        self.blocks[height as usize + 1..]
            .iter()
            .map(|b| b.header)
            .collect()
    }

    /// A clock reading (µs) at which every block here is in the past.
    pub fn now_us(&self) -> u64 {
        u64::from(self.tip().header.time) * 1_000_000
    }
}
