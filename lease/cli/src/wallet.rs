//! The tenant's side of coinop credit: a small Cashu wallet kept in one JSON file, enough for
//! the CLI to mint credit, pay for leases with it, and collect change when a lease stops.
//!
//! Blinding factors are written to the file *before* the outputs are sent, so a crash or a
//! lost reply never leaves the wallet unable to unblind what the mint signed. Every signature
//! received is checked against the mint's published key with its DLEQ proof (NUT-12) before
//! the note is kept, so a mint that tags notes with a private key is caught.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
use bitcoin::secp256k1::{PublicKey, SecretKey};
use payment::credit::bdhke::{blind_message, unblind};
use payment::credit::curve::{parse_scalar, parse_secret_key};
use payment::credit::dleq::{verify_with_blinding, Dleq};
use payment::credit::nut_types::{BlindSignature, BlindedMessage, KeySet, Proof, ProofDleq};
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum WalletError {
    #[error("wallet file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("wallet file {path} is not a coinop wallet: {source}")]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
    #[error("no pending outputs named '{0}' in the wallet")]
    UnknownBatch(String),
    #[error("the mint returned {got} signatures for {sent} outputs")]
    TooManySignatures { got: usize, sent: usize },
    #[error("signature {index}: the mint has no key for amount {amount} in keyset {keyset}")]
    NoKey {
        index: usize,
        amount: u64,
        keyset: String,
    },
    #[error("signature {index}: {what}")]
    BadSignature { index: usize, what: String },
    #[error("the wallet holds {have} sat, {want} sat asked")]
    NotEnough { have: u64, want: u64 },
}

/// Outputs sent to the mint and not yet answered, with what is needed to unblind them.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PendingOutput {
    secret: String,
    r: String,
    message: BlindedMessage,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct WalletData {
    proofs: Vec<Proof>,
    /// Batch name → outputs, in the order they were sent.
    pending: Vec<(String, Vec<PendingOutput>)>,
}

pub struct Wallet {
    path: PathBuf,
    data: WalletData,
}

impl Wallet {
    /// Opens the wallet at `path`, or starts an empty one there (written on first save).
    pub fn open(path: &Path) -> Result<Wallet, WalletError> {
        let data = match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| WalletError::Corrupt {
                path: path.display().to_string(),
                source: e,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => WalletData::default(),
            Err(e) => return Err(io_err(path, e)),
        };
        Ok(Wallet {
            path: path.to_path_buf(),
            data,
        })
    }

    pub fn balance_sat(&self) -> u64 {
        self.data.proofs.iter().map(|p| p.amount).sum()
    }

    /// New blinded outputs of the given amounts for `keyset_id`, remembered as `batch` and
    /// saved before they are returned.
    pub fn new_outputs(
        &mut self,
        batch: &str,
        keyset_id: &str,
        amounts: &[u64],
    ) -> Result<Vec<BlindedMessage>, WalletError> {
        let outputs: Vec<PendingOutput> = amounts
            .iter()
            .map(|&amount| blank(keyset_id, amount))
            .collect();
        let messages = outputs.iter().map(|o| o.message.clone()).collect();
        self.data.pending.retain(|(name, _)| name != batch);
        self.data.pending.push((batch.to_string(), outputs));
        self.save()?;
        Ok(messages)
    }

    /// The outputs of `batch` if they were made before and not answered yet: a request
    /// whose reply was lost, to be sent again with the very same outputs (an idempotent
    /// route then gives the same signatures, which these blanks unblind).
    pub fn pending_outputs(&self, batch: &str) -> Option<Vec<BlindedMessage>> {
        self.data
            .pending
            .iter()
            .find(|(name, _)| name == batch)
            .map(|(_, outputs)| outputs.iter().map(|o| o.message.clone()).collect())
    }

    /// Unblinds the mint's signatures on `batch` (signature i answers output i; outputs the
    /// mint left unsigned are dropped), checks each against `keys`, and keeps the notes.
    /// Returns the sat received.
    pub fn receive(
        &mut self,
        batch: &str,
        keys: &[KeySet],
        signatures: &[BlindSignature],
    ) -> Result<u64, WalletError> {
        let at = self
            .data
            .pending
            .iter()
            .position(|(name, _)| name == batch)
            .ok_or_else(|| WalletError::UnknownBatch(batch.to_string()))?;
        let outputs = &self.data.pending[at].1;
        if signatures.len() > outputs.len() {
            return Err(WalletError::TooManySignatures {
                got: signatures.len(),
                sent: outputs.len(),
            });
        }
        let proofs = signatures
            .iter()
            .zip(outputs)
            .enumerate()
            .map(|(i, (sig, out))| to_proof(i, sig, out, keys))
            .collect::<Result<Vec<_>, _>>()?;
        let received = proofs.iter().map(|p| p.amount).sum();
        self.data.proofs.extend(proofs);
        self.data.pending.remove(at);
        self.save()?;
        Ok(received)
    }

    /// Takes notes worth at least `amount_sat` out of the wallet (largest first), saving the
    /// wallet without them. The caller spends them; a note spent elsewhere is the mint's
    /// business to refuse.
    pub fn take(&mut self, amount_sat: u64) -> Result<Vec<Proof>, WalletError> {
        let have = self.balance_sat();
        if have < amount_sat {
            return Err(WalletError::NotEnough {
                have,
                want: amount_sat,
            });
        }
        self.data
            .proofs
            .sort_by_key(|p| std::cmp::Reverse(p.amount));
        let mut taken = Vec::new();
        let mut sum = 0;
        while sum < amount_sat {
            let p = self.data.proofs.remove(0);
            sum += p.amount;
            taken.push(p);
        }
        self.save()?;
        Ok(taken)
    }

    /// Writes the wallet atomically (temp file + rename), readable by its owner only: the
    /// notes in it are bearer money.
    fn save(&self) -> Result<(), WalletError> {
        let tmp = self.path.with_extension("tmp");
        let json = serde_json::to_vec_pretty(&self.data)
            .expect("wallet data is plain strings and numbers, always serialisable");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_err(&tmp, e))?;
        f.write_all(&json)
            .and_then(|_| f.sync_all())
            .map_err(|e| io_err(&tmp, e))?;
        fs::rename(&tmp, &self.path).map_err(|e| io_err(&self.path, e))
    }
}

fn blank(keyset_id: &str, amount: u64) -> PendingOutput {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let secret = hex::encode(bytes);
    let r = SecretKey::new(&mut OsRng);
    let b_ = blind_message(secret.as_bytes(), &r)
        .expect("a random secret hashes to a point and r*G is never its negation in practice");
    PendingOutput {
        secret,
        r: hex::encode(r.secret_bytes()),
        message: BlindedMessage {
            amount,
            id: keyset_id.to_string(),
            b_: b_.to_string(),
        },
    }
}

fn to_proof(
    index: usize,
    sig: &BlindSignature,
    out: &PendingOutput,
    keys: &[KeySet],
) -> Result<Proof, WalletError> {
    let bad = |what: &str| WalletError::BadSignature {
        index,
        what: what.to_string(),
    };
    let key_hex = keys
        .iter()
        .find(|k| k.id == sig.id)
        .and_then(|k| k.keys.get(&sig.amount))
        .ok_or_else(|| WalletError::NoKey {
            index,
            amount: sig.amount,
            keyset: sig.id.clone(),
        })?;
    let mint_key: PublicKey = key_hex
        .parse()
        .map_err(|_| bad("mint key is not a point"))?;
    let c_: PublicKey = sig.c_.parse().map_err(|_| bad("C_ is not a point"))?;
    let r_bytes = hex::decode(&out.r).map_err(|_| bad("stored r is not hex"))?;
    let r = SecretKey::from_slice(&r_bytes).map_err(|_| bad("stored r is not a scalar"))?;
    let c = unblind(&c_, &r, &mint_key).map_err(|e| bad(&e.to_string()))?;
    let dleq = sig.dleq.as_ref().ok_or_else(|| bad("no DLEQ proof"))?;
    let parsed = Dleq {
        e: parse_scalar("dleq.e", &dleq.e).map_err(|e| bad(&e.to_string()))?,
        s: parse_secret_key("dleq.s", &dleq.s).map_err(|e| bad(&e.to_string()))?,
    };
    if !verify_with_blinding(&parsed, &mint_key, out.secret.as_bytes(), &c, &r) {
        return Err(bad(
            "DLEQ proof does not verify against the mint's published key",
        ));
    }
    Ok(Proof {
        amount: sig.amount,
        id: sig.id.clone(),
        secret: out.secret.clone(),
        c: c.to_string(),
        witness: None,
        dleq: Some(ProofDleq {
            e: dleq.e.clone(),
            s: dleq.s.clone(),
            r: out.r.clone(),
        }),
    })
}

fn io_err(path: &Path, source: std::io::Error) -> WalletError {
    WalletError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use payment::credit::{Mint, MintLimits};
    use payment::spent_set::SqliteSpentSet;

    use super::*;

    fn mint(dir: &Path) -> Mint {
        let spent = SqliteSpentSet::open(&dir.join("spent.db")).expect("spent set");
        Mint::open(dir, Arc::new(spent), MintLimits::default()).expect("mint")
    }

    /// Mints `amounts` into the wallet at `path` through a real mint.
    fn fund(mint: &Mint, path: &Path, amounts: &[u64]) -> Wallet {
        let mut w = Wallet::open(path).expect("open");
        let outputs = w
            .new_outputs("mint-1", &mint.active_keyset_id(), amounts)
            .expect("outputs");
        let sigs = mint.mint(amounts.iter().sum(), &outputs).expect("mint");
        let got = w
            .receive("mint-1", &mint.keys().keysets, &sigs)
            .expect("receive");
        assert_eq!(got, amounts.iter().sum::<u64>());
        w
    }

    #[test]
    fn minted_notes_are_kept_and_redeemable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = mint(dir.path());
        let path = dir.path().join("wallet.json");
        let mut w = fund(&m, &path, &[1, 4, 16]);
        assert_eq!(w.balance_sat(), 21);
        let taken = w.take(5).expect("enough");
        assert_eq!(taken.iter().map(|p| p.amount).sum::<u64>(), 16);
        assert_eq!(Wallet::open(&path).expect("reopen").balance_sat(), 5);
        assert_eq!(m.redeem(&taken, "test").expect("redeem"), 16_000);
    }

    #[test]
    fn blinding_factors_survive_a_restart_before_the_reply() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = mint(dir.path());
        let path = dir.path().join("wallet.json");
        let outputs = Wallet::open(&path)
            .expect("open")
            .new_outputs("b", &m.active_keyset_id(), &[2, 8])
            .expect("outputs");
        let sigs = m.mint(10, &outputs).expect("mint");
        // A new process (the CLI run again) can still unblind the reply.
        let mut w = Wallet::open(&path).expect("reopen");
        assert_eq!(
            w.receive("b", &m.keys().keysets, &sigs).expect("receive"),
            10
        );
        assert!(matches!(
            w.receive("b", &m.keys().keysets, &sigs),
            Err(WalletError::UnknownBatch(_))
        ));
    }

    #[test]
    fn pending_outputs_are_kept_until_answered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = mint(dir.path());
        let path = dir.path().join("wallet.json");
        let mut w = Wallet::open(&path).expect("open");
        assert!(w.pending_outputs("b").is_none());
        let outputs = w
            .new_outputs("b", &m.active_keyset_id(), &[1, 1])
            .expect("outputs");
        // Another process (the command run again) finds the same outputs.
        let mut again = Wallet::open(&path).expect("reopen");
        assert_eq!(again.pending_outputs("b"), Some(outputs.clone()));
        let sigs = m.mint(2, &outputs).expect("mint");
        again
            .receive("b", &m.keys().keysets, &sigs)
            .expect("receive");
        assert!(again.pending_outputs("b").is_none(), "gone once answered");
        assert!(Wallet::open(&path)
            .expect("reopen")
            .pending_outputs("b")
            .is_none());
    }

    #[test]
    fn a_signature_not_on_its_own_output_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = mint(dir.path());
        let mut w = Wallet::open(&dir.path().join("wallet.json")).expect("open");
        let outputs = w
            .new_outputs("b", &m.active_keyset_id(), &[4, 4])
            .expect("outputs");
        let mut sigs = m.mint(8, &outputs).expect("mint");
        // A valid signature, but on the other output: unblinding gives a point whose DLEQ
        // can't verify, as with a mint that signs with a key it didn't publish.
        let first = sigs[0].c_.clone();
        sigs[0].c_ = sigs[1].c_.clone();
        sigs[1].c_ = first;
        let err = w.receive("b", &m.keys().keysets, &sigs).unwrap_err();
        assert!(
            matches!(err, WalletError::BadSignature { index: 0, .. }),
            "{err}"
        );
        assert_eq!(w.balance_sat(), 0, "nothing kept from a bad reply");
    }

    #[test]
    fn taking_more_than_held_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = mint(dir.path());
        let path = dir.path().join("wallet.json");
        let mut w = fund(&m, &path, &[2]);
        assert!(matches!(
            w.take(3),
            Err(WalletError::NotEnough { have: 2, want: 3 })
        ));
        assert_eq!(w.balance_sat(), 2);
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_wallet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wallet.json");
        fs::write(&path, b"{not json").expect("write");
        assert!(matches!(
            Wallet::open(&path),
            Err(WalletError::Corrupt { .. })
        ));
    }
}
