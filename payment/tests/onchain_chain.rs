//! Header chain rules on regtest blocks mined in-process: linkage, proof of work, bits,
//! time, forks and reorgs, all-or-none batches, persistence.

use bitcoin::block::Header;
use bitcoin::hashes::Hash;
use bitcoin::{BlockHash, CompactTarget, TxMerkleNode};
use payment::onchain::header_chain::check_pow;
use payment::onchain::regtest_fixtures::{mine, mined_header, regtest_bits, RegtestChain};
use payment::onchain::{
    ChainError, ChainNetwork, Checkpoint, HeaderChain, HeaderError, HeaderSource,
};

const NET: ChainNetwork = ChainNetwork::Regtest;

fn fresh() -> HeaderChain {
    HeaderChain::in_memory(NET, Checkpoint::genesis(NET)).unwrap()
}

fn reason(e: ChainError) -> HeaderError {
    match e {
        ChainError::Rejected { reason, .. } => reason,
        other => panic!("expected a rejected header, got {other}"),
    }
}

/// A header that links to `prev` but whose hash misses its target.
fn unmined(prev: &Header) -> Header {
    let mut h = mined_header(
        prev.block_hash(),
        TxMerkleNode::all_zeros(),
        prev.time + 600,
        regtest_bits(),
    );
    while h.target().is_met_by(h.block_hash()) {
        h.nonce = h.nonce.wrapping_add(1);
    }
    h
}

#[test]
fn extends_and_counts_confirmations() {
    let mut blocks = RegtestChain::new();
    blocks.mine_empty(10, b"a");
    let mut chain = fresh();
    let out = chain
        .append(
            &blocks.headers_after(0),
            blocks.now_us(),
            HeaderSource::Untrusted,
        )
        .unwrap();
    assert_eq!(out.added, 10);
    assert!(!out.reorg);
    assert_eq!(chain.tip().height, 10);
    assert_eq!(chain.tip().hash, blocks.tip().block_hash());
    assert_eq!(chain.confirmations(&blocks.blocks[10].block_hash()), 1);
    assert_eq!(chain.confirmations(&blocks.blocks[3].block_hash()), 8);
    assert_eq!(chain.confirmations(&BlockHash::all_zeros()), 0);
    // Known headers are skipped, not errors.
    let again = chain
        .append(
            &blocks.headers_after(5),
            blocks.now_us(),
            HeaderSource::Untrusted,
        )
        .unwrap();
    assert_eq!(again.added, 0);
}

#[test]
fn bad_proof_of_work_is_refused() {
    let genesis = NET.genesis_header();
    let mut chain = fresh();
    let err = chain
        .append(&[unmined(&genesis)], u64::MAX / 2, HeaderSource::Untrusted)
        .unwrap_err();
    assert_eq!(err.code(), "bad_pow");
    assert!(matches!(reason(err), HeaderError::BadProofOfWork { .. }));
    assert_eq!(chain.tip().height, 0);
}

#[test]
fn target_above_the_network_limit_is_refused() {
    // A regtest-easy header measured against mainnet's limit.
    let h = mined_header(
        BlockHash::all_zeros(),
        TxMerkleNode::all_zeros(),
        1,
        regtest_bits(),
    );
    assert!(matches!(
        check_pow(ChainNetwork::Mainnet.pow_limit(), &h),
        Err(HeaderError::TargetAboveLimit { .. })
    ));
    // Bits that encode no valid target (negative, zero, overflowing).
    for bits in [0x0480_0001u32, 0x0300_0000, 0x2201_0000] {
        let mut bad = h;
        bad.bits = CompactTarget::from_consensus(bits);
        assert!(
            matches!(
                check_pow(NET.pow_limit(), &bad),
                Err(HeaderError::InvalidBits { .. })
            ),
            "{bits:#x}"
        );
    }
}

#[test]
fn header_not_linking_is_refused() {
    let mut chain = fresh();
    let orphan = mined_header(
        BlockHash::from_byte_array([9; 32]),
        TxMerkleNode::all_zeros(),
        NET.genesis_header().time + 600,
        regtest_bits(),
    );
    let err = chain
        .append(&[orphan], u64::MAX / 2, HeaderSource::Untrusted)
        .unwrap_err();
    assert_eq!(err.code(), "header_not_linking");
    assert!(matches!(reason(err), HeaderError::UnknownParent { .. }));
}

#[test]
fn regtest_bits_may_not_change() {
    let genesis = NET.genesis_header();
    // Harder than required, with valid work: still not the fixed target.
    let harder = mined_header(
        genesis.block_hash(),
        TxMerkleNode::all_zeros(),
        genesis.time + 600,
        CompactTarget::from_consensus(0x207f_fffe),
    );
    let err = fresh()
        .append(&[harder], u64::MAX / 2, HeaderSource::Untrusted)
        .unwrap_err();
    assert!(matches!(
        reason(err),
        HeaderError::WrongBits {
            expected: 0x207f_ffff,
            ..
        }
    ));
}

#[test]
fn time_rules() {
    let mut blocks = RegtestChain::new();
    blocks.mine_empty(11, b"t");
    let mut chain = fresh();
    chain
        .append(
            &blocks.headers_after(0),
            blocks.now_us(),
            HeaderSource::Untrusted,
        )
        .unwrap();
    let tip = blocks.tip().header;
    // Median of the last 11 block times (heights 1..=11) is height 6's time.
    let median = blocks.blocks[6].header.time;
    let at_median = mined_header(
        tip.block_hash(),
        TxMerkleNode::all_zeros(),
        median,
        regtest_bits(),
    );
    let err = chain
        .append(&[at_median], blocks.now_us(), HeaderSource::Untrusted)
        .unwrap_err();
    assert!(
        matches!(reason(err), HeaderError::TimeNotAfterMedian { median: m, .. } if m == median)
    );
    let just_after = mined_header(
        tip.block_hash(),
        TxMerkleNode::all_zeros(),
        median + 1,
        regtest_bits(),
    );
    chain
        .append(&[just_after], blocks.now_us(), HeaderSource::Untrusted)
        .unwrap();

    // Two hours ahead of the clock is the limit.
    let now_s = u64::from(tip.time);
    let ahead = |secs: u64| {
        mined_header(
            just_after.block_hash(),
            TxMerkleNode::all_zeros(),
            (now_s + secs) as u32,
            regtest_bits(),
        )
    };
    let err = chain
        .append(&[ahead(7201)], now_s * 1_000_000, HeaderSource::Untrusted)
        .unwrap_err();
    assert!(matches!(reason(err), HeaderError::TimeTooFarAhead { .. }));
    chain
        .append(&[ahead(7200)], now_s * 1_000_000, HeaderSource::Untrusted)
        .unwrap();
}

#[test]
fn forks_are_kept_and_the_most_work_wins() {
    let mut a = RegtestChain::new();
    a.mine_empty(5, b"a");
    let mut b = a.fork_at(2);
    b.mine_empty(3, b"b"); // height 5 too: equal work
    let mut chain = fresh();
    chain
        .append(&a.headers_after(0), a.now_us(), HeaderSource::Untrusted)
        .unwrap();
    let out = chain
        .append(&b.headers_after(2), b.now_us(), HeaderSource::Untrusted)
        .unwrap();
    // A tie keeps the first-seen branch.
    assert!(!out.reorg);
    assert_eq!(chain.tip().hash, a.tip().block_hash());
    let side = chain.block(&b.tip().block_hash()).unwrap();
    assert!(!side.on_best_chain);
    assert_eq!(side.confirmations, 0);
    assert_eq!(side.height, 5);

    // One more block on b: reorg.
    b.mine_empty(1, b"b");
    let out = chain
        .append(&b.headers_after(5), b.now_us(), HeaderSource::Untrusted)
        .unwrap();
    assert!(out.reorg);
    assert_eq!(chain.tip().hash, b.tip().block_hash());
    assert_eq!(chain.tip().height, 6);
    assert_eq!(chain.confirmations(&a.blocks[4].block_hash()), 0);
    assert_eq!(chain.confirmations(&a.blocks[2].block_hash()), 5);
    assert_eq!(chain.confirmations(&b.blocks[3].block_hash()), 4);
    assert_eq!(chain.best_hash_at(3), Some(b.blocks[3].block_hash()));
    assert_eq!(chain.len(), 1 + 5 + 4);
}

#[test]
fn a_batch_is_all_or_nothing() {
    let mut blocks = RegtestChain::new();
    blocks.mine_empty(4, b"x");
    let mut headers = blocks.headers_after(0);
    headers.push(unmined(&blocks.tip().header));
    let mut chain = fresh();
    let err = chain
        .append(&headers, blocks.now_us(), HeaderSource::Untrusted)
        .unwrap_err();
    assert!(
        matches!(err, ChainError::Rejected { index: 4, .. }),
        "{err}"
    );
    assert_eq!(chain.tip().height, 0);
    assert_eq!(chain.len(), 1);
    assert!(!chain.contains(&blocks.blocks[1].block_hash()));
    // The good prefix on its own goes in afterwards.
    chain
        .append(&headers[..4], blocks.now_us(), HeaderSource::Untrusted)
        .unwrap();
    assert_eq!(chain.tip().height, 4);
}

#[test]
fn signet_takes_headers_only_from_the_operator() {
    let net = ChainNetwork::Signet;
    let mut chain = HeaderChain::in_memory(net, Checkpoint::genesis(net)).unwrap();
    let err = chain.append(&[], 0, HeaderSource::Untrusted).unwrap_err();
    assert!(matches!(err, ChainError::SignetNeedsOperatorFeed));
    assert!(chain.append(&[], 0, HeaderSource::Operator).is_ok());
}

#[test]
fn operator_checkpoint_must_match_its_hash() {
    let mut blocks = RegtestChain::new();
    blocks.mine_empty(3, b"c");
    let h = blocks.blocks[3].header;
    assert!(matches!(
        Checkpoint::operator(NET, 3, BlockHash::all_zeros(), h),
        Err(HeaderError::CheckpointHash { .. })
    ));
    let cp = Checkpoint::operator(NET, 3, h.block_hash(), h).unwrap();
    let mut chain = HeaderChain::in_memory(NET, cp).unwrap();
    assert_eq!(chain.tip().height, 3);
    blocks.mine_empty(2, b"c");
    chain
        .append(
            &blocks.headers_after(3),
            blocks.now_us(),
            HeaderSource::Untrusted,
        )
        .unwrap();
    assert_eq!(chain.tip().height, 5);
    assert_eq!(chain.confirmations(&h.block_hash()), 3);
}

#[test]
fn restart_keeps_the_chain_and_its_forks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("headers.dat");
    let mut a = RegtestChain::new();
    a.mine_empty(6, b"a");
    let mut b = a.fork_at(3);
    b.mine_empty(2, b"b");
    {
        let mut chain = HeaderChain::open(&path, NET, Checkpoint::genesis(NET)).unwrap();
        chain
            .append(&a.headers_after(0), a.now_us(), HeaderSource::Untrusted)
            .unwrap();
        chain
            .append(&b.headers_after(3), a.now_us(), HeaderSource::Untrusted)
            .unwrap();
    }
    let mut chain = HeaderChain::open(&path, NET, Checkpoint::genesis(NET)).unwrap();
    assert_eq!(chain.tip().hash, a.tip().block_hash());
    assert_eq!(chain.len(), 1 + 6 + 2);
    assert!(chain.contains(&b.tip().block_hash()));
    // The kept fork can still win after the restart.
    b.mine_empty(2, b"b");
    let out = chain
        .append(&b.headers_after(5), b.now_us(), HeaderSource::Untrusted)
        .unwrap();
    assert!(out.reorg);
    drop(chain);
    let chain = HeaderChain::open(&path, NET, Checkpoint::genesis(NET)).unwrap();
    assert_eq!(chain.tip().hash, b.tip().block_hash());
}

#[test]
fn store_refuses_other_networks_and_cuts_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("headers.dat");
    let mut a = RegtestChain::new();
    a.mine_empty(3, b"a");
    {
        let mut chain = HeaderChain::open(&path, NET, Checkpoint::genesis(NET)).unwrap();
        chain
            .append(&a.headers_after(0), a.now_us(), HeaderSource::Untrusted)
            .unwrap();
    }
    let err = HeaderChain::open(
        &path,
        ChainNetwork::Mainnet,
        Checkpoint::genesis(ChainNetwork::Mainnet),
    )
    .unwrap_err();
    assert!(matches!(err, ChainError::StoreCorrupt { .. }), "{err}");
    let other_cp =
        Checkpoint::operator(NET, 1, a.blocks[1].block_hash(), a.blocks[1].header).unwrap();
    assert!(matches!(
        HeaderChain::open(&path, NET, other_cp),
        Err(ChainError::StoreCorrupt { .. })
    ));

    // Half a record at the end (a crash mid-write) is dropped, the rest kept.
    let len = std::fs::metadata(&path).unwrap().len();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, &[0xab; 50]).unwrap();
    drop(f);
    let mut chain = HeaderChain::open(&path, NET, Checkpoint::genesis(NET)).unwrap();
    assert_eq!(chain.tip().height, 3);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    a.mine_empty(1, b"a");
    chain
        .append(&a.headers_after(3), a.now_us(), HeaderSource::Untrusted)
        .unwrap();
    drop(chain);
    assert_eq!(
        HeaderChain::open(&path, NET, Checkpoint::genesis(NET))
            .unwrap()
            .tip()
            .height,
        4
    );

    // A flipped byte inside a stored hash breaks its child's link: refused, not trusted.
    let mut bytes = std::fs::read(&path).unwrap();
    let record2_hash = 16 + 2 * 136 + 80;
    bytes[record2_hash] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        HeaderChain::open(&path, NET, Checkpoint::genesis(NET)),
        Err(ChainError::StoreCorrupt { .. })
    ));
}

#[test]
fn mining_helper_really_meets_the_target() {
    let h = mine(Header {
        version: bitcoin::block::Version::TWO,
        prev_blockhash: BlockHash::all_zeros(),
        merkle_root: TxMerkleNode::all_zeros(),
        time: 1,
        bits: regtest_bits(),
        nonce: 0,
    });
    assert!(h.target().is_met_by(h.block_hash()));
}
