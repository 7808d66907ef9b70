//! SPV payment checks against regtest blocks mined in-process: every rule of the proof
//! check, the spend-once guarantee (also from two threads), and a restart.

use std::str::FromStr;
use std::sync::{Arc, Barrier};

use bitcoin::bip32::{Xpriv, Xpub};
use bitcoin::consensus::encode::serialize_hex;
use bitcoin::merkle_tree::PartialMerkleTree;
use bitcoin::{Address, Amount, MerkleBlock, NetworkKind, ScriptBuf, Transaction, Txid};
use payment::onchain::proof::{
    check_payment, parse_proof, parse_tx, verify_and_claim, MAX_PROOF_BYTES,
};
use payment::onchain::regtest_fixtures::{payment_tx, tx_hex, txout_proof_hex, RegtestChain};
use payment::onchain::{
    AddressDeriver, AddressKind, ChainNetwork, Checkpoint, HeaderChain, HeaderSource, PaymentError,
    Quote, QuoteBook,
};
use payment::spent_set::{SpendState, SpentSet, SqliteSpentSet};

const NET: ChainNetwork = ChainNetwork::Regtest;

fn tpub() -> String {
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let master = Xpriv::new_master(NetworkKind::Test, &[42u8; 32]).unwrap();
    Xpub::from_priv(&secp, &master).to_string()
}

struct Host {
    dir: tempfile::TempDir,
    chain: HeaderChain,
    book: QuoteBook,
    spent: SqliteSpentSet,
    blocks: RegtestChain,
}

impl Host {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::open(dir, RegtestChain::new())
    }

    fn open(dir: tempfile::TempDir, blocks: RegtestChain) -> Self {
        let db = dir.path().join("coinop.sqlite");
        let deriver = AddressDeriver::new(&tpub(), AddressKind::P2wpkh, NET).unwrap();
        Host {
            chain: HeaderChain::open(
                &dir.path().join("headers.dat"),
                NET,
                Checkpoint::genesis(NET),
            )
            .unwrap(),
            book: QuoteBook::open(&db, deriver).unwrap(),
            spent: SqliteSpentSet::open(&db).unwrap(),
            blocks,
            dir,
        }
    }

    /// Mines `txs` into a block on the test chain and feeds its header to the host.
    fn mine(&mut self, txs: Vec<Transaction>) -> bitcoin::Block {
        let before = self.blocks.height();
        let block = self.blocks.mine(b"main", txs).clone();
        self.chain
            .append(
                &self.blocks.headers_after(before),
                self.blocks.now_us(),
                HeaderSource::Untrusted,
            )
            .unwrap();
        block
    }

    fn quote(&self, msat: u64) -> Quote {
        // Quotes are made "at" the regtest tip's time and last an hour.
        self.book
            .create(msat, self.blocks.now_us(), 3_600 * 1_000_000)
            .unwrap()
    }
}

fn pays(quote: &Quote, sat: u64, salt: u32) -> Transaction {
    payment_tx(
        &[(quote.script_pubkey.clone(), Amount::from_sat(sat))],
        salt,
    )
}

fn other_script() -> ScriptBuf {
    Address::from_str("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080")
        .unwrap()
        .assume_checked()
        .script_pubkey()
}

#[test]
fn a_good_payment_verifies_and_is_spent_once() {
    let mut host = Host::new();
    let quote = host.quote(1_500_000); // 1500 sat
                                       // Two outputs to the quote's address plus change elsewhere: both count.
    let tx = payment_tx(
        &[
            (quote.script_pubkey.clone(), Amount::from_sat(1_000)),
            (other_script(), Amount::from_sat(7_000)),
            (quote.script_pubkey.clone(), Amount::from_sat(600)),
        ],
        1,
    );
    let block = host.mine(vec![pays(&quote, 10, 99), tx.clone()]);
    let proof = txout_proof_hex(&block, &[tx.compute_txid()]);
    let ok = verify_and_claim(&host.chain, &quote, &tx_hex(&tx), &proof, 1, &host.spent).unwrap();
    assert_eq!(ok.txid, tx.compute_txid());
    assert_eq!(ok.amount_msat, 1_600_000);
    assert_eq!(
        ok.outpoints.iter().map(|o| o.vout).collect::<Vec<_>>(),
        vec![0, 2]
    );
    assert_eq!((ok.height, ok.confirmations), (1, 1));
    assert_eq!(ok.block_hash, block.block_hash());
    assert!(!ok.late);
    assert_eq!(
        host.spent.states(&ok.spend_keys()).unwrap(),
        vec![Some(SpendState::Spent), Some(SpendState::Spent)]
    );

    let err =
        verify_and_claim(&host.chain, &quote, &tx_hex(&tx), &proof, 1, &host.spent).unwrap_err();
    assert!(
        matches!(err, PaymentError::AlreadySpent { outpoint } if outpoint.txid == tx.compute_txid()),
        "{err}"
    );
    assert_eq!(err.code(), "already_spent");
}

#[test]
fn confirmations_are_counted_on_the_best_chain() {
    let mut host = Host::new();
    let quote = host.quote(1_000_000);
    let tx = pays(&quote, 1_000, 2);
    let block = host.mine(vec![tx.clone()]);
    let proof = txout_proof_hex(&block, &[tx.compute_txid()]);
    let err = check_payment(&host.chain, &quote, &tx_hex(&tx), &proof, 3).unwrap_err();
    assert!(
        matches!(
            err,
            PaymentError::NotEnoughConfirmations {
                have: 1,
                need: 3,
                ..
            }
        ),
        "{err}"
    );
    host.mine(vec![]);
    host.mine(vec![]);
    let ok = check_payment(&host.chain, &quote, &tx_hex(&tx), &proof, 3).unwrap();
    assert_eq!(ok.confirmations, 3);
}

#[test]
fn a_reorg_that_drops_the_paying_block_unconfirms_the_payment() {
    let mut host = Host::new();
    host.mine(vec![]);
    let quote = host.quote(1_000_000);
    let tx = pays(&quote, 1_000, 3);
    let block = host.mine(vec![tx.clone()]);
    let proof = txout_proof_hex(&block, &[tx.compute_txid()]);
    assert!(check_payment(&host.chain, &quote, &tx_hex(&tx), &proof, 1).is_ok());

    // A competing branch from height 1 with more work, without the payment.
    let mut rival = host.blocks.fork_at(1);
    rival.mine_empty(2, b"rival");
    let out = host
        .chain
        .append(
            &rival.headers_after(1),
            rival.now_us(),
            HeaderSource::Untrusted,
        )
        .unwrap();
    assert!(out.reorg);
    let err = check_payment(&host.chain, &quote, &tx_hex(&tx), &proof, 1).unwrap_err();
    assert!(matches!(err, PaymentError::NotOnBestChain { .. }), "{err}");
    assert_eq!(err.code(), "not_confirmed");
}

#[test]
fn a_block_the_host_never_saw_is_not_confirmed() {
    let host = Host::new();
    let quote = host.quote(1_000_000);
    let tx = pays(&quote, 1_000, 4);
    let mut elsewhere = RegtestChain::new();
    let block = elsewhere.mine(b"elsewhere", vec![tx.clone()]).clone();
    let proof = txout_proof_hex(&block, &[tx.compute_txid()]);
    let err = check_payment(&host.chain, &quote, &tx_hex(&tx), &proof, 1).unwrap_err();
    assert!(matches!(err, PaymentError::BlockNotInChain { .. }), "{err}");
}

#[test]
fn insufficient_amount_and_other_address_are_refused() {
    let mut host = Host::new();
    let quote = host.quote(1_000_001); // needs 1000.001 sat → 1001 sat on-chain
    let short = pays(&quote, 1_000, 5);
    let elsewhere = payment_tx(&[(other_script(), Amount::from_sat(50_000))], 6);
    let block = host.mine(vec![short.clone(), elsewhere.clone()]);

    let proof = txout_proof_hex(&block, &[short.compute_txid()]);
    let err = check_payment(&host.chain, &quote, &tx_hex(&short), &proof, 1).unwrap_err();
    assert!(
        matches!(
            err,
            PaymentError::Insufficient {
                paid_msat: 1_000_000,
                required_msat: 1_000_001
            }
        ),
        "{err}"
    );
    assert_eq!(err.code(), "insufficient_payment");

    let proof = txout_proof_hex(&block, &[elsewhere.compute_txid()]);
    let err = check_payment(&host.chain, &quote, &tx_hex(&elsewhere), &proof, 1).unwrap_err();
    assert!(matches!(err, PaymentError::WrongAddress { .. }), "{err}");
}

#[test]
fn a_proof_for_another_tx_or_with_a_wrong_branch_is_refused_one_covering_several_is_not() {
    let mut host = Host::new();
    let quote = host.quote(1_000_000);
    let paying = pays(&quote, 1_000, 7);
    let other = pays(&quote, 1_000, 8);
    let block = host.mine(vec![paying.clone(), other.clone()]);

    let proof_of_other = txout_proof_hex(&block, &[other.compute_txid()]);
    let err = check_payment(&host.chain, &quote, &tx_hex(&paying), &proof_of_other, 1).unwrap_err();
    assert!(matches!(err, PaymentError::ProofForOtherTx { .. }), "{err}");

    // A proof matching several transactions of the block, the payment among them, is
    // accepted for the payment (and only its outputs count).
    let both = txout_proof_hex(&block, &[other.compute_txid(), paying.compute_txid()]);
    let v = check_payment(&host.chain, &quote, &tx_hex(&paying), &both, 1).unwrap();
    assert_eq!(v.txid, paying.compute_txid());
    assert!(v.outpoints.iter().all(|o| o.txid == paying.compute_txid()));

    // Change one byte of the first branch hash (after header, count and hash-count varint).
    let mut bytes = hex::decode(txout_proof_hex(&block, &[paying.compute_txid()])).unwrap();
    bytes[80 + 4 + 1] ^= 0x80;
    let err = check_payment(
        &host.chain,
        &quote,
        &tx_hex(&paying),
        &hex::encode(bytes),
        1,
    )
    .unwrap_err();
    assert!(matches!(err, PaymentError::BadMerkleProof(_)), "{err}");
    assert_eq!(err.code(), "bad_proof");
}

#[test]
fn duplicated_hashes_cve_2012_2459_are_refused() {
    // Block [coinbase, a, b] has the same merkle root as the forged list [coinbase, a, b, b].
    let mut host = Host::new();
    let quote = host.quote(1_000_000);
    let a = pays(&quote, 1_000, 9);
    let b = pays(&quote, 1_000, 10);
    let block = host.mine(vec![a, b.clone()]);
    let txids: Vec<Txid> = block.txdata.iter().map(|t| t.compute_txid()).collect();
    let mut forged = txids.clone();
    forged.push(b.compute_txid());
    let pmt = PartialMerkleTree::from_txids(&forged, &[false, false, false, true]);
    let proof = MerkleBlock {
        header: block.header,
        txn: pmt,
    };
    let err =
        check_payment(&host.chain, &quote, &tx_hex(&b), &serialize_hex(&proof), 1).unwrap_err();
    assert!(matches!(err, PaymentError::BadMerkleProof(_)), "{err}");
}

#[test]
fn sixty_four_byte_transactions_are_refused() {
    let mut host = Host::new();
    let quote = host.quote(1);
    // 4 version + 1 + 41 input + 1 + (8 + 1 + 4) output + 4 locktime = 64 bytes.
    let mut tx = payment_tx(
        &[(ScriptBuf::from_bytes(vec![0x51; 4]), Amount::from_sat(1))],
        11,
    );
    tx.input[0].witness.clear();
    assert_eq!(bitcoin::consensus::serialize(&tx).len(), 64);
    let block = host.mine(vec![tx.clone()]);
    let proof = txout_proof_hex(&block, &[tx.compute_txid()]);
    let err = check_payment(&host.chain, &quote, &tx_hex(&tx), &proof, 1).unwrap_err();
    assert!(matches!(err, PaymentError::SixtyFourByteTx { .. }), "{err}");
}

#[test]
fn a_payment_mined_after_expiry_is_credited_but_flagged_late() {
    let mut host = Host::new();
    // Expires at the current tip's time; the next block is 600 s later.
    let quote = host
        .book
        .create(1_000_000, host.blocks.now_us(), 1)
        .unwrap();
    let tx = pays(&quote, 1_000, 12);
    let block = host.mine(vec![tx.clone()]);
    let proof = txout_proof_hex(&block, &[tx.compute_txid()]);
    let ok = check_payment(&host.chain, &quote, &tx_hex(&tx), &proof, 1).unwrap();
    assert!(ok.late);
}

#[test]
fn a_coinbase_pays_only_once_mature() {
    let mut host = Host::new();
    let quote = host.quote(1_000_000);
    // A miner pays the quote straight from its block reward.
    let before = host.blocks.height();
    let block = host
        .blocks
        .mine_paying_coinbase(
            b"miner",
            &[(quote.script_pubkey.clone(), Amount::from_sat(1_000))],
        )
        .clone();
    host.chain
        .append(
            &host.blocks.headers_after(before),
            host.blocks.now_us(),
            HeaderSource::Untrusted,
        )
        .unwrap();
    let cb = block.txdata[0].clone();
    assert!(cb.is_coinbase());
    let proof = txout_proof_hex(&block, &[cb.compute_txid()]);
    let maturity = NET.coinbase_maturity();
    assert_eq!(maturity, 100);
    // 1 confirmation: enough for the host's min_conf, not for a coinbase.
    let err = check_payment(&host.chain, &quote, &tx_hex(&cb), &proof, 1).unwrap_err();
    assert!(
        matches!(
            err,
            PaymentError::CoinbaseImmature {
                have: 1,
                need: 100,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.code(), "coinbase_immature");
    // 99 confirmations: still one short.
    for _ in 0..98 {
        host.mine(vec![]);
    }
    let err = check_payment(&host.chain, &quote, &tx_hex(&cb), &proof, 1).unwrap_err();
    assert!(
        matches!(err, PaymentError::CoinbaseImmature { have: 99, .. }),
        "{err}"
    );
    host.mine(vec![]);
    let ok = verify_and_claim(&host.chain, &quote, &tx_hex(&cb), &proof, 1, &host.spent).unwrap();
    assert_eq!((ok.confirmations, ok.amount_msat), (100, 1_000_000));
}

#[test]
fn a_reused_address_splits_its_payments_by_height() {
    let mut host = Host::new();
    host.mine(vec![]);
    let book = &host.book;
    // Quote A expires unpaid; with no grace, B takes its index over at tip height 1.
    let book_now = host.blocks.now_us();
    let a = book.create_at_tip(1_000_000, book_now, 1, 1).unwrap();
    let policy = payment::onchain::IndexPolicy {
        reuse_after_us: 0,
        max_open: 10,
    };
    let Host {
        dir,
        blocks,
        chain,
        spent,
        ..
    } = host;
    let db = dir.path().join("coinop.sqlite");
    let deriver = AddressDeriver::new(&tpub(), AddressKind::P2wpkh, NET).unwrap();
    let book = QuoteBook::open(&db, deriver).unwrap().with_policy(policy);
    let b = book
        .create_at_tip(1_000_000, book_now + 10, 3_600_000_000, 1)
        .unwrap();
    assert_eq!(
        (b.derivation_index, b.address.clone()),
        (a.derivation_index, a.address.clone())
    );
    let a = book.get(&a.quote_id).unwrap().unwrap();
    assert_eq!(a.retired_at_height, Some(1));
    let mut host = Host {
        dir,
        blocks,
        chain,
        spent,
        book,
    };
    // A payment mined above height 1 is B's, not A's.
    let tx = pays(&b, 1_000, 21);
    let block = host.mine(vec![tx.clone()]);
    let proof = txout_proof_hex(&block, &[tx.compute_txid()]);
    let err = check_payment(&host.chain, &a, &tx_hex(&tx), &proof, 1).unwrap_err();
    assert!(
        matches!(
            err,
            PaymentError::QuoteRetired {
                height: 2,
                retired_at: 1
            }
        ),
        "{err}"
    );
    let ok = check_payment(&host.chain, &b, &tx_hex(&tx), &proof, 1).unwrap();
    assert!(!ok.late);
}

#[test]
fn a_payment_below_a_reused_quotes_start_is_not_its_own() {
    let mut host = Host::new();
    let a = host.quote(1_000_000);
    // A's tenant paid at height 1 ...
    let tx = pays(&a, 1_000, 22);
    let block = host.mine(vec![tx.clone()]);
    let proof = txout_proof_hex(&block, &[tx.compute_txid()]);
    // ... and a quote that starts above height 1 on the same address cannot take it.
    let b = Quote {
        paid_above_height: Some(1),
        ..a.clone()
    };
    let err = check_payment(&host.chain, &b, &tx_hex(&tx), &proof, 1).unwrap_err();
    assert!(
        matches!(
            err,
            PaymentError::PaysEarlierQuote {
                height: 1,
                above: 1
            }
        ),
        "{err}"
    );
    assert!(check_payment(&host.chain, &a, &tx_hex(&tx), &proof, 1).is_ok());
}

#[test]
fn two_threads_claiming_one_payment_exactly_one_wins() {
    let mut host = Host::new();
    let quote = host.quote(1_000_000);
    let tx = pays(&quote, 1_000, 13);
    let block = host.mine(vec![tx.clone()]);
    let proof = txout_proof_hex(&block, &[tx.compute_txid()]);
    let host = Arc::new(host);
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (host, barrier, quote, proof, txh) = (
                host.clone(),
                barrier.clone(),
                quote.clone(),
                proof.clone(),
                tx_hex(&tx),
            );
            std::thread::spawn(move || {
                barrier.wait();
                verify_and_claim(&host.chain, &quote, &txh, &proof, 1, &host.spent)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(PaymentError::AlreadySpent { .. }))));
}

#[test]
fn restart_keeps_chain_quote_index_and_spent_set() {
    let mut host = Host::new();
    let quote = host.quote(1_000_000);
    let tx = pays(&quote, 1_000, 14);
    let block = host.mine(vec![tx.clone()]);
    let proof = txout_proof_hex(&block, &[tx.compute_txid()]);
    verify_and_claim(&host.chain, &quote, &tx_hex(&tx), &proof, 1, &host.spent).unwrap();
    let tip = host.chain.tip();
    let Host { dir, blocks, .. } = host;

    let host = Host::open(dir, blocks);
    assert_eq!(host.chain.tip(), tip);
    assert_eq!(
        host.book.get(&quote.quote_id).unwrap().as_ref(),
        Some(&quote)
    );
    let next = host.quote(5);
    assert_eq!(next.derivation_index, quote.derivation_index + 1);
    assert_ne!(next.address, quote.address);
    let err =
        verify_and_claim(&host.chain, &quote, &tx_hex(&tx), &proof, 1, &host.spent).unwrap_err();
    assert!(matches!(err, PaymentError::AlreadySpent { .. }), "{err}");
    drop(host.dir);
}

#[test]
fn hostile_input_gets_typed_errors() {
    let too_long = "00".repeat(MAX_PROOF_BYTES + 1);
    assert!(matches!(
        parse_proof(&too_long),
        Err(PaymentError::TooLong {
            field: "proof_hex",
            ..
        })
    ));
    assert!(matches!(
        parse_tx("zz"),
        Err(PaymentError::NotHex {
            field: "tx_hex",
            ..
        })
    ));
    assert!(matches!(parse_tx("abc"), Err(PaymentError::NotHex { .. })));
    assert!(matches!(parse_tx(""), Err(PaymentError::MalformedTx(_))));
    assert!(matches!(
        parse_tx("0200000001"),
        Err(PaymentError::MalformedTx(_))
    ));
    // A proof whose hash count claims far more than the bytes present.
    let mut p = vec![0u8; 84];
    p.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0x0f]);
    assert!(matches!(
        parse_proof(&hex::encode(&p)),
        Err(PaymentError::MalformedProof(_))
    ));
    // A flag-byte count larger than what follows.
    let mut p = vec![0u8; 84];
    p.extend_from_slice(&[0x00, 0xfd, 0xff, 0xff]);
    assert!(matches!(
        parse_proof(&hex::encode(&p)),
        Err(PaymentError::MalformedProof(_))
    ));
    assert!(matches!(
        parse_proof(&"00".repeat(10)),
        Err(PaymentError::MalformedProof(_))
    ));
    // Trailing bytes after a valid tx.
    let tx = payment_tx(&[(other_script(), Amount::from_sat(1))], 15);
    assert!(parse_tx(&tx_hex(&tx)).is_ok());
    assert!(matches!(
        parse_tx(&format!("{}00", tx_hex(&tx))),
        Err(PaymentError::MalformedTx(_))
    ));
}

/// A payment whose block a reorg took away, mined again in a block of the new best chain:
/// the tenant's proof of it there gives the outputs a scan of that block would have filed
/// (at any depth, for any amount), and the watch then finds them in that block. A proof in
/// the block the reorg took away is refused.
#[test]
fn a_payment_mined_again_after_a_reorg_is_proven_into_the_watch() {
    use payment::onchain::{proven_outputs, PaymentWatch};
    let mut host = Host::new();
    let quote = host.quote(1_500_000);
    let tx = payment_tx(
        &[
            (quote.script_pubkey.clone(), Amount::from_sat(1_000)),
            (other_script(), Amount::from_sat(7_000)),
            (quote.script_pubkey.clone(), Amount::from_sat(600)),
        ],
        7,
    );
    let fork_height = host.blocks.height();
    let first = host.mine(vec![tx.clone()]);
    let first_proof = txout_proof_hex(&first, &[tx.compute_txid()]);
    let seen = proven_outputs(&host.chain, &quote, &tx_hex(&tx), &first_proof).unwrap();
    assert_eq!(seen.len(), 2);

    // A longer branch without it; then the same transaction in its next block.
    let mut branch = host.blocks.fork_at(fork_height);
    branch.mine_empty(2, b"branch");
    let again = branch.mine(b"branch", vec![tx.clone()]).clone();
    host.chain
        .append(
            &branch.headers_after(fork_height),
            branch.now_us(),
            HeaderSource::Untrusted,
        )
        .unwrap();
    assert!(!host.chain.block(&first.block_hash()).unwrap().on_best_chain);
    assert!(matches!(
        proven_outputs(&host.chain, &quote, &tx_hex(&tx), &first_proof),
        Err(PaymentError::NotOnBestChain { .. })
    ));
    // Not to this quote: refused, nothing to file.
    let other = host.quote(1_500_000);
    let proof = txout_proof_hex(&again, &[tx.compute_txid()]);
    assert!(matches!(
        proven_outputs(&host.chain, &other, &tx_hex(&tx), &proof),
        Err(PaymentError::WrongAddress { .. })
    ));

    let seen = proven_outputs(&host.chain, &quote, &tx_hex(&tx), &proof).unwrap();
    let mut amounts: Vec<(u32, u64)> = seen
        .iter()
        .map(|s| (s.outpoint.vout, s.amount_sat))
        .collect();
    amounts.sort();
    assert_eq!(amounts, [(0, 1_000), (2, 600)]);
    assert!(seen.iter().all(|s| s.block_hash == again.block_hash()
        && s.height == fork_height + 3
        && s.block_time == again.header.time
        && !s.coinbase
        && s.quote_id == quote.quote_id));

    let watch = PaymentWatch::open(&host.dir.path().join("coinop.sqlite")).unwrap();
    watch.record_proven(&seen).unwrap();
    // Twice is once.
    watch.record_proven(&seen).unwrap();
    assert_eq!(
        watch.blocks_with(&seen[0].outpoint).unwrap(),
        [again.block_hash()]
    );
    assert_eq!(watch.seen_for(&quote.quote_id).unwrap().len(), 2);
    // The block is not marked scanned: a host with peers still scans the rest of it.
    assert!(watch
        .scanned(fork_height + 3, fork_height + 3)
        .unwrap()
        .is_empty());
}
