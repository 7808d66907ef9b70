//! The tenant's side of coinop credit: a small Cashu wallet kept in one JSON file, enough for
//! the CLI to mint credit, pay for leases with it, and collect change when a lease stops.
//!
//! Blinding factors are written to the file *before* the outputs are sent, so a crash or a
//! lost reply never leaves the wallet unable to unblind what the mint signed. Every signature
//! received is checked against the mint's published key with its DLEQ proof (NUT-12) before
//! the note is kept, so a mint that tags notes with a private key is caught.
//!
//! A swap (sending an exact amount, receiving a token, paying exactly) is written down with
//! its inputs and blank outputs before it is sent; the next run sends it again if its reply
//! was lost (the mint answers a repeated swap with the same signatures), so no note is lost
//! between "the mint spent my inputs" and "I have the new notes". Notes that leave the
//! wallet go to its outbox in the same write that removes them.
//!
//! With a NUT-13 seed ([`crate::wallet_seed`]) the blanks are derived from the seed and a
//! per-keyset counter, which is advanced in the same write that records the blanks, before
//! any request uses them: a counter value is never used twice, so a restored wallet's notes
//! never collide with old ones.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
use bitcoin::secp256k1::{PublicKey, SecretKey};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use payment::credit::bdhke::{blind_message, unblind};
use payment::credit::curve::{parse_scalar, parse_secret_key};
use payment::credit::dleq::{verify_with_blinding, Dleq};
use payment::credit::nut_types::{
    BlindSignature, BlindedMessage, KeySet, Proof, ProofDleq, SwapRequest,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::durable;
use crate::wallet_seed::{seed_path, Seed, SeedError, SEED_EXTENSION};

#[derive(Debug, Error)]
pub enum WalletError {
    #[error("wallet file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("wallet file {0} is in use by another coinop; try again when it has finished")]
    Busy(String),
    #[error(
        "wallet file {0}: a wallet cannot be named *.seed, *.lock or *.tmp, the names of the \
         seed, lock and temp files kept beside it; name it e.g. wallet.json"
    )]
    ReservedName(String),
    #[error("wallet file {0} is not a regular file (a FIFO, a device, a directory?)")]
    NotAFile(String),
    #[error(
        "wallet file {path} is not a wallet this coinop can read (damaged, or written by a \
         newer coinop); it is left as it is: {source}"
    )]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
    #[error("no pending outputs named '{0}' in the wallet")]
    UnknownBatch(String),
    #[error("the mint returned {got} signatures for {sent} outputs")]
    TooManySignatures { got: usize, sent: usize },
    /// A swap or mint must have every output signed: its inputs (or payment) are spent.
    #[error("the mint returned {got} signatures for {sent} outputs of a swap or mint, which pays for all of them")]
    TooFewSignatures { got: usize, sent: usize },
    /// The mint signed another amount or keyset than the output asked for.
    #[error("signature {index}: {what} {got}, the output asked for {asked}")]
    NotAsked {
        index: usize,
        what: &'static str,
        got: String,
        asked: String,
    },
    #[error("signature {index}: the mint has no key for amount {amount} in keyset {keyset}")]
    NoKey {
        index: usize,
        amount: u64,
        keyset: String,
    },
    #[error("signature {index}: {what}")]
    BadSignature { index: usize, what: String },
    /// A received token's note fails its DLEQ check (the token is at fault, not the mint's
    /// answer).
    #[error("note {index} of the token: {what}")]
    BadTokenNote { index: usize, what: String },
    #[error("the wallet holds {have} sat, {want} sat asked")]
    NotEnough { have: u64, want: u64 },
    #[error(transparent)]
    Seed(#[from] SeedError),
    #[error(
        "the wallet already has a different seed phrase ({0}); restore into a new wallet file"
    )]
    OtherSeed(String),
    #[error("the wallet already has a seed phrase ({0})")]
    HasSeed(String),
    #[error("the wallet holds no exact {0} sat after the swap (the mint signed other amounts)")]
    NotExact(u64),
    #[error(
        "swap {0} is still waiting for the mint's answer (its blanks are kept); \
         run the command again later"
    )]
    SwapPending(String),
}

/// The batch name prefix of a lease's change blanks (`change-<lease id>`), whose amounts the
/// host picks.
pub const CHANGE_BATCH_PREFIX: &str = "change-";

/// `<wallet>.lock`, the file flocked while a coinop has the wallet open.
const LOCK_EXTENSION: &str = "lock";
/// `<wallet>.tmp`, where a save is written before it is renamed onto the wallet.
const TMP_EXTENSION: &str = "tmp";
/// The extensions of the files kept beside a wallet, which its own name must not have.
const BESIDE_EXTENSIONS: [&str; 3] = [SEED_EXTENSION, LOCK_EXTENSION, TMP_EXTENSION];

/// Why a wallet file's bytes could not be read.
enum Read {
    Io(std::io::Error),
    NotAFile,
}

/// The bytes of the regular file at `path`. Opened without blocking and looked at before
/// it is read: a FIFO there (nothing writing to it) would block the read, and with it the
/// wallet's lock, for ever.
fn read_regular(path: &Path) -> Result<Vec<u8>, Read> {
    use std::io::Read as _;
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(Read::Io)?;
    if !file.metadata().map_err(Read::Io)?.is_file() {
        return Err(Read::NotAFile);
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(Read::Io)?;
    Ok(bytes)
}

/// Outputs sent to the mint and not yet answered, with what is needed to unblind them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingOutput {
    secret: String,
    r: String,
    message: BlindedMessage,
}

/// A swap sent (or about to be) whose signatures are not in yet: the notes it spends.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwapRecord {
    batch: String,
    inputs: Vec<Proof>,
    /// The inputs were this wallet's notes: if the mint refuses the swap, the ones still
    /// unspent come back. A received token's notes do not (they may be invalid).
    ours: bool,
    /// The received token this swap takes in (its digest), marked received with the result.
    token: Option<String>,
}

/// A token that left the wallet: kept until its notes are spent, so a token lost on the
/// way (a closed terminal, a broken pipe) can be received back.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sent {
    pub token: String,
    pub amount_sat: u64,
    pub sent_unix: u64,
}

/// The wallet file. Every struct of it refuses fields it does not know: a newer coinop may
/// keep money in a field this one lacks (as `swaps` and `outbox` were once new), and
/// reading past it here would drop it at the next save.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WalletData {
    proofs: Vec<Proof>,
    /// Batch name → outputs, in the order they were sent.
    pending: Vec<(String, Vec<PendingOutput>)>,
    #[serde(default)]
    swaps: Vec<SwapRecord>,
    /// NUT-13: keyset id → the next counter to derive from (deterministic wallets only).
    #[serde(default)]
    counters: BTreeMap<String, u32>,
    #[serde(default)]
    outbox: Vec<Sent>,
    /// Digest of a received token's secrets → the sat it brought, so receiving it again is
    /// answered instead of failing as "already spent".
    #[serde(default)]
    received: BTreeMap<String, u64>,
}

pub struct Wallet {
    path: PathBuf,
    data: WalletData,
    seed: Option<Seed>,
    /// An exclusive flock on `<wallet>.lock`, held while this wallet is open: two coinop
    /// runs each reading the file, changing it and writing it back would have the later
    /// write undo the earlier one (notes received or swapped gone, spent ones back).
    _lock: Flock<fs::File>,
}

/// One blank derived for a restore: the message and what unblinds its signature.
pub struct RestoreBlank {
    pub counter: u32,
    output: PendingOutput,
}

impl RestoreBlank {
    pub fn message(&self) -> &BlindedMessage {
        &self.output.message
    }
}

impl Wallet {
    /// Opens the wallet at `path`, or starts an empty one there (written on first save).
    /// Fails with [`WalletError::Busy`] while another process has it open.
    pub fn open(path: &Path) -> Result<Wallet, WalletError> {
        // The files beside the wallet are named by swapping its extension: a wallet named
        // `w.seed` would be its own seed file, and `wallet init --seed` would write the
        // phrase there only for the next save to replace it with the notes (the phrase
        // lost, the wallet unreadable as its own seed); `w.lock` would be its lock, `w.tmp`
        // truncated by every save before it is written.
        if path
            .extension()
            .is_some_and(|e| BESIDE_EXTENSIONS.iter().any(|b| e == *b))
        {
            return Err(WalletError::ReservedName(path.display().to_string()));
        }
        let lock_path = path.with_extension(LOCK_EXTENSION);
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, e))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(WalletError::Busy(path.display().to_string()))
            }
            Err((_, e)) => return Err(io_err(&lock_path, e.into())),
        };
        let data = match read_regular(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| WalletError::Corrupt {
                path: path.display().to_string(),
                source: e,
            })?,
            Err(Read::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => WalletData::default(),
            Err(Read::Io(e)) => return Err(io_err(path, e)),
            Err(Read::NotAFile) => return Err(WalletError::NotAFile(path.display().to_string())),
        };
        let mut data: WalletData = data;
        // A note held twice (written by a coinop that kept the same change twice) would be
        // picked twice for a payment, which the mint refuses whole: one copy is the note.
        let mut seen = std::collections::HashSet::new();
        data.proofs.retain(|p| seen.insert(p.secret.clone()));
        let seed = Seed::load(&seed_path(path))?;
        Ok(Wallet {
            path: path.to_path_buf(),
            data,
            seed,
            _lock: lock,
        })
    }

    pub fn is_deterministic(&self) -> bool {
        self.seed.is_some()
    }

    /// Makes the wallet deterministic with `seed` (kept in `<wallet>.seed`, 0600). The same
    /// phrase again is fine (a restore run twice); another one is refused, as the counters
    /// and notes belong to the first.
    pub fn set_seed(&mut self, seed: Seed) -> Result<(), WalletError> {
        let file = seed_path(&self.path);
        if let Some(have) = &self.seed {
            if have.phrase() == seed.phrase() {
                return Ok(());
            }
            return Err(WalletError::OtherSeed(file.display().to_string()));
        }
        seed.save(&file)?;
        self.seed = Some(seed);
        Ok(())
    }

    /// `wallet init --seed`: a new random phrase for a wallet that has none; returned so
    /// it can be shown once.
    pub fn init_seed(&mut self) -> Result<String, WalletError> {
        if self.seed.is_some() {
            return Err(WalletError::HasSeed(
                seed_path(&self.path).display().to_string(),
            ));
        }
        let seed = Seed::generate();
        let phrase = seed.phrase();
        self.set_seed(seed)?;
        Ok(phrase)
    }

    /// One blank for `keyset_id`: derived from the seed at the keyset's next counter (the
    /// counter advanced in memory; the caller saves before using the blank), or random.
    fn next_blank(&mut self, keyset_id: &str, amount: u64) -> Result<PendingOutput, WalletError> {
        let Some(seed) = &self.seed else {
            return Ok(blank(keyset_id, amount));
        };
        let counter = self.data.counters.entry(keyset_id.to_string()).or_insert(0);
        let d = seed.derive(keyset_id, *counter)?;
        *counter += 1;
        Ok(blank_from(d.secret, d.r, keyset_id, amount))
    }

    /// The blanks of counters `start..start + n` of `keyset_id`, for a restore (nothing is
    /// saved: the mint only looks these up).
    pub fn restore_blanks(
        &self,
        keyset_id: &str,
        start: u32,
        n: u32,
    ) -> Result<Vec<RestoreBlank>, WalletError> {
        let seed = self
            .seed
            .as_ref()
            .ok_or(WalletError::Seed(SeedError::Corrupt(
                "(no seed: restore sets one first)".into(),
            )))?;
        (start..start + n)
            .map(|counter| {
                let d = seed.derive(keyset_id, counter)?;
                Ok(RestoreBlank {
                    counter,
                    output: blank_from(d.secret, d.r, keyset_id, 1),
                })
            })
            .collect()
    }

    /// Unblinds restored signatures (`sig` answers `blank`), DLEQ-checked like any other.
    pub fn restored_proof(
        blank: &RestoreBlank,
        sig: &BlindSignature,
        keys: &[KeySet],
    ) -> Result<Proof, WalletError> {
        to_proof(blank.counter as usize, sig, &blank.output, keys)
    }

    /// Every secret the wallet knows of (held, in a pending swap, or in the outbox).
    pub fn known_secrets(&self) -> std::collections::HashSet<String> {
        let sent = self.data.outbox.iter().filter_map(|s| {
            payment::credit::token::Token::decode(&s.token)
                .ok()
                .map(|t| t.proofs)
        });
        self.data
            .proofs
            .iter()
            .chain(self.data.swaps.iter().flat_map(|s| &s.inputs))
            .cloned()
            .chain(sent.flatten())
            .map(|p| p.secret)
            .collect()
    }

    /// Keeps restored notes (those not already known) and moves `keyset_id`'s counter past
    /// the highest one found. Returns the sat added.
    pub fn add_restored(
        &mut self,
        keyset_id: &str,
        next_counter: u32,
        proofs: Vec<Proof>,
    ) -> Result<u64, WalletError> {
        let known = self.known_secrets();
        let new: Vec<Proof> = proofs
            .into_iter()
            .filter(|p| !known.contains(&p.secret))
            .collect();
        let added = self.hold(new);
        let c = self.data.counters.entry(keyset_id.to_string()).or_insert(0);
        *c = (*c).max(next_counter);
        self.save()?;
        Ok(added)
    }

    /// Keeps `proofs` but those whose secret the wallet holds already (a seeded wallet's
    /// `wallet restore` may have found a note before the reply that brings it, and an
    /// answer may repeat one): a note counted twice is money that is not there. Returns the
    /// sat added.
    fn hold(&mut self, proofs: Vec<Proof>) -> u64 {
        let mut held: std::collections::HashSet<String> =
            self.data.proofs.iter().map(|p| p.secret.clone()).collect();
        let mut added = 0u64;
        for p in proofs {
            if held.insert(p.secret.clone()) {
                added = added.saturating_add(p.amount);
                self.data.proofs.push(p);
            }
        }
        added
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
            .map(|&amount| self.next_blank(keyset_id, amount))
            .collect::<Result<_, _>>()?;
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
        // A lease's change (`change-…` blanks, NUT-08-like) gets as many signatures as its
        // refund needs, of the amounts the host picks. Anything else paid for exactly these
        // outputs: each is signed, for the amount and keyset it names.
        if !batch.starts_with(CHANGE_BATCH_PREFIX) {
            if signatures.len() < outputs.len() {
                return Err(WalletError::TooFewSignatures {
                    got: signatures.len(),
                    sent: outputs.len(),
                });
            }
            for (index, (sig, out)) in signatures.iter().zip(outputs).enumerate() {
                as_asked(index, sig, out)?;
            }
        }
        let proofs = signatures
            .iter()
            .zip(outputs)
            .enumerate()
            .map(|(i, (sig, out))| to_proof(i, sig, out, keys))
            .collect::<Result<Vec<_>, _>>()?;
        let received = self.hold(proofs);
        self.data.pending.remove(at);
        // A swap's inputs are spent now; a received token is marked in the same write.
        if let Some(i) = self.data.swaps.iter().position(|s| s.batch == batch) {
            let swap = self.data.swaps.remove(i);
            if let Some(digest) = swap.token {
                self.data.received.insert(digest, received);
            }
        }
        self.save()?;
        Ok(received)
    }

    /// Unblinds signatures a NUT-09 restore found on blanks of `batch` (each pair: the
    /// output as the mint echoes it, matched to a blank by `B_`, and its signature), checks
    /// each against `keys`, and keeps the notes. Their blanks leave the batch; once none is
    /// left, the batch (and its swap) is settled as [`Wallet::receive`] settles it. Returns
    /// the sat received.
    pub fn receive_restored(
        &mut self,
        batch: &str,
        found: &[(BlindedMessage, BlindSignature)],
        keys: &[KeySet],
    ) -> Result<u64, WalletError> {
        let at = self
            .data
            .pending
            .iter()
            .position(|(name, _)| name == batch)
            .ok_or_else(|| WalletError::UnknownBatch(batch.to_string()))?;
        let mut left = self.data.pending[at].1.clone();
        let mut proofs = Vec::new();
        for (i, (out, sig)) in found.iter().enumerate() {
            // An output this batch does not hold (or no longer: kept already) adds nothing.
            let Some(k) = left.iter().position(|b| b.message.b_ == out.b_) else {
                continue;
            };
            // As in `receive`: a restore's answer must not sign a swap's or mint's blank
            // for less than it asked.
            if !batch.starts_with(CHANGE_BATCH_PREFIX) {
                as_asked(i, sig, &left[k])?;
            }
            let blank = left.remove(k);
            proofs.push(to_proof(i, sig, &blank, keys)?);
        }
        let received = self.hold(proofs);
        if left.is_empty() {
            self.data.pending.remove(at);
            if let Some(i) = self.data.swaps.iter().position(|s| s.batch == batch) {
                let swap = self.data.swaps.remove(i);
                if let Some(digest) = swap.token {
                    self.data.received.insert(digest, received);
                }
            }
        } else {
            self.data.pending[at].1 = left;
        }
        self.save()?;
        Ok(received)
    }

    /// Records a swap of `inputs` into new blanks of `amounts` for `keyset_id` (the inputs
    /// leave the notes, the blanks and counters are kept, all in one write) and returns the
    /// request to send. `token` is the digest of a received token (see [`Wallet::receive`]).
    pub fn begin_swap(
        &mut self,
        batch: &str,
        inputs: Vec<Proof>,
        ours: bool,
        token: Option<String>,
        keyset_id: &str,
        amounts: &[u64],
    ) -> Result<SwapRequest, WalletError> {
        // A swap of this name still recorded holds the only blanks that can take what its
        // request made: replacing them would lose it.
        if self.data.swaps.iter().any(|s| s.batch == batch) {
            return Err(WalletError::SwapPending(batch.to_string()));
        }
        let spent: std::collections::HashSet<&str> =
            inputs.iter().map(|p| p.secret.as_str()).collect();
        self.data
            .proofs
            .retain(|p| !spent.contains(p.secret.as_str()));
        self.data.swaps.push(SwapRecord {
            batch: batch.to_string(),
            inputs: inputs.clone(),
            ours,
            token,
        });
        // new_outputs saves: the inputs' removal, the record and the blanks in one write.
        let outputs = self.new_outputs(batch, keyset_id, amounts)?;
        Ok(SwapRequest { inputs, outputs })
    }

    /// The swaps recorded and not answered yet: batch name and the request to send again.
    pub fn pending_swaps(&self) -> Vec<(String, SwapRequest)> {
        self.data
            .swaps
            .iter()
            .filter_map(|s| {
                let (_, outs) = self.data.pending.iter().find(|(b, _)| *b == s.batch)?;
                Some((
                    s.batch.clone(),
                    SwapRequest {
                        inputs: s.inputs.clone(),
                        outputs: outs.iter().map(|o| o.message.clone()).collect(),
                    },
                ))
            })
            .collect()
    }

    /// Moves the blanks of `batch` to `parked` (added to any there), where `pending_outputs`
    /// of `batch` no longer finds them but a NUT-09 restore of `parked` still can.
    pub fn park_outputs(&mut self, batch: &str, parked: &str) -> Result<(), WalletError> {
        let Some(at) = self.data.pending.iter().position(|(b, _)| b == batch) else {
            return Ok(());
        };
        let (_, blanks) = self.data.pending.remove(at);
        match self.data.pending.iter_mut().find(|(b, _)| b == parked) {
            Some((_, held)) => held.extend(blanks),
            None => self.data.pending.push((parked.to_string(), blanks)),
        }
        self.save()
    }

    /// Forgets the blanks of `batch` that no signature will ever come for (a lease's change
    /// outputs its host refused, after a NUT-09 restore kept any it had signed).
    pub fn forget_outputs(&mut self, batch: &str) -> Result<(), WalletError> {
        self.data.pending.retain(|(b, _)| b != batch);
        self.save()
    }

    /// Whether the swap `batch` spent this wallet's own notes (see [`SwapRecord::ours`]).
    pub fn swap_is_ours(&self, batch: &str) -> bool {
        self.data.swaps.iter().any(|s| s.batch == batch && s.ours)
    }

    /// The mint refused swap `batch` for good, and signed none of its blanks: forgets it,
    /// and keeps `unspent` (those of its inputs the mint says are unspent, when they were
    /// this wallet's). The caller makes sure of "none signed": see
    /// `wallet_commands::settle_swap`.
    pub fn abort_swap(&mut self, batch: &str, unspent: Vec<Proof>) -> Result<(), WalletError> {
        self.data.swaps.retain(|s| s.batch != batch);
        self.data.pending.retain(|(b, _)| b != batch);
        self.data.proofs.extend(unspent);
        self.save()
    }

    /// The sat a token with this digest brought in, if it was received before.
    pub fn received_before(&self, digest: &str) -> Option<u64> {
        self.data.received.get(digest).copied()
    }

    /// Notes adding up to exactly `amount_sat`, if the wallet holds such a set (left in the
    /// wallet). Largest first, a note taken whenever it still fits: with power-of-two
    /// amounts, each dividing the next, this finds an exact set whenever one exists.
    pub fn exact(&self, amount_sat: u64) -> Option<Vec<Proof>> {
        let mut notes = self.data.proofs.clone();
        notes.sort_by_key(|p| std::cmp::Reverse(p.amount));
        let mut left = amount_sat;
        let mut chosen = Vec::new();
        for p in notes {
            if p.amount <= left {
                left -= p.amount;
                chosen.push(p);
            }
        }
        (left == 0).then_some(chosen)
    }

    /// Notes worth at least `amount_sat` to swap (left in the wallet): the smallest notes
    /// first, so large notes are broken only when needed.
    pub fn cover(&self, amount_sat: u64) -> Result<Vec<Proof>, WalletError> {
        let have = self.balance_sat();
        if have < amount_sat {
            return Err(WalletError::NotEnough {
                have,
                want: amount_sat,
            });
        }
        let mut notes = self.data.proofs.clone();
        notes.sort_by_key(|p| p.amount);
        // The largest note alone, if one covers it; else smallest-first until covered.
        if let Some(one) = notes.iter().find(|p| p.amount >= amount_sat) {
            return Ok(vec![one.clone()]);
        }
        let mut sum = 0;
        let mut chosen = Vec::new();
        for p in notes.into_iter().rev() {
            if sum >= amount_sat {
                break;
            }
            sum += p.amount;
            chosen.push(p);
        }
        Ok(chosen)
    }

    /// Moves `proofs` out of the wallet into its outbox as `token`.
    ///
    /// Both happen in one atomic write of the wallet file, so at every moment the notes are
    /// either still held or written down as sent: a crash, a full disk or a closed stdout
    /// after this cannot lose them (the token can be read back with `wallet outbox` and
    /// received again). Writing the outbox *after* removing the notes would open a window
    /// where they are in neither.
    pub fn send_out(
        &mut self,
        proofs: &[Proof],
        token: String,
        sent_unix: u64,
    ) -> Result<(), WalletError> {
        let gone: std::collections::HashSet<&str> =
            proofs.iter().map(|p| p.secret.as_str()).collect();
        self.data
            .proofs
            .retain(|p| !gone.contains(p.secret.as_str()));
        self.data.outbox.push(Sent {
            token,
            amount_sat: proofs.iter().map(|p| p.amount).sum(),
            sent_unix,
        });
        self.save()
    }

    pub fn outbox(&self) -> &[Sent] {
        &self.data.outbox
    }

    /// Forgets outbox entries whose notes the mint says are all spent.
    pub fn drop_sent(&mut self, claimed: &[String]) -> Result<(), WalletError> {
        self.data.outbox.retain(|s| !claimed.contains(&s.token));
        self.save()
    }

    /// The notes held (copies).
    pub fn proofs(&self) -> &[Proof] {
        &self.data.proofs
    }

    /// Forgets held notes the mint says are spent.
    pub fn drop_spent(&mut self, spent: &[String]) -> Result<(), WalletError> {
        self.data.proofs.retain(|p| !spent.contains(&p.secret));
        self.save()
    }

    /// Writes the wallet file now (`wallet init`: the file exists from then on).
    pub fn save_now(&self) -> Result<(), WalletError> {
        self.save()
    }

    /// Writes the wallet atomically and durably (see [`durable::replace`]), readable by its
    /// owner only: the notes in it are bearer money.
    fn save(&self) -> Result<(), WalletError> {
        let json = serde_json::to_vec_pretty(&self.data)
            .expect("wallet data is plain strings and numbers, always serialisable");
        durable::replace(&self.path, &self.path.with_extension(TMP_EXTENSION), &json)
            .map_err(|e| io_err(&e.path, e.source))
    }
}

/// A random blank: 32 random bytes as the hex secret (NUT-00's recommendation), random `r`.
fn blank(keyset_id: &str, amount: u64) -> PendingOutput {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    blank_from(
        hex::encode(bytes),
        SecretKey::new(&mut OsRng),
        keyset_id,
        amount,
    )
}

fn blank_from(secret: String, r: SecretKey, keyset_id: &str, amount: u64) -> PendingOutput {
    let b_ = blind_message(secret.as_bytes(), &r)
        .expect("a secret hashes to a point and r*G is its negation with probability 2^-256");
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

/// Signature `index` is for the amount and keyset its output `out` asked for.
fn as_asked(index: usize, sig: &BlindSignature, out: &PendingOutput) -> Result<(), WalletError> {
    if sig.amount != out.message.amount {
        return Err(WalletError::NotAsked {
            index,
            what: "amount",
            got: sig.amount.to_string(),
            asked: out.message.amount.to_string(),
        });
    }
    if sig.id != out.message.id {
        return Err(WalletError::NotAsked {
            index,
            what: "keyset",
            got: sig.id.clone(),
            asked: out.message.id.clone(),
        });
    }
    Ok(())
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

/// A received proof's NUT-12 DLEQ, when it carries one, checked against the mint's key for
/// its keyset and amount: a token whose notes a mint tagged with an unpublished key is
/// refused before it is swapped.
pub fn check_proof_dleq(index: usize, p: &Proof, keys: &[KeySet]) -> Result<(), WalletError> {
    let Some(dleq) = &p.dleq else {
        return Ok(());
    };
    let bad = |what: String| WalletError::BadTokenNote { index, what };
    let key_hex = keys
        .iter()
        .find(|k| k.id == p.id)
        .and_then(|k| k.keys.get(&p.amount))
        .ok_or_else(|| {
            bad(format!(
                "the mint has no key for amount {} in keyset {}",
                p.amount, p.id
            ))
        })?;
    let mint_key: PublicKey = key_hex
        .parse()
        .map_err(|_| bad("mint key is not a point".into()))?;
    let c: PublicKey = p.c.parse().map_err(|_| bad("C is not a point".into()))?;
    let parsed = Dleq {
        e: parse_scalar("dleq.e", &dleq.e).map_err(|e| bad(e.to_string()))?,
        s: parse_secret_key("dleq.s", &dleq.s).map_err(|e| bad(e.to_string()))?,
    };
    let r = parse_secret_key("dleq.r", &dleq.r).map_err(|e| bad(e.to_string()))?;
    if verify_with_blinding(&parsed, &mint_key, p.secret.as_bytes(), &c, &r) {
        Ok(())
    } else {
        Err(bad(
            "the token's DLEQ proof does not verify against the mint's published key".into(),
        ))
    }
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
        let sent = w.exact(5).expect("4 + 1");
        assert_eq!(sent.iter().map(|p| p.amount).sum::<u64>(), 5);
        w.send_out(&sent, "cashuBtest".into(), 0).expect("send");
        drop(w);
        let back = Wallet::open(&path).expect("reopen");
        assert_eq!(back.balance_sat(), 16);
        assert_eq!(back.outbox()[0].amount_sat, 5);
        assert_eq!(m.redeem(&sent, "test").expect("redeem"), 5_000);
    }

    #[test]
    fn exact_finds_a_set_whenever_one_exists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = mint(dir.path());
        let w = fund(&m, &dir.path().join("w.json"), &[4, 1, 1, 1, 1, 8]);
        for want in 0..=16 {
            let got = w.exact(want);
            let sums: Vec<u64> = got.iter().flatten().map(|p| p.amount).collect();
            assert_eq!(got.is_some(), want <= 16, "{want}");
            if got.is_some() {
                assert_eq!(sums.iter().sum::<u64>(), want);
            }
        }
        assert!(w.exact(17).is_none());
        let w2 = fund(&m, &dir.path().join("w2.json"), &[4, 8]);
        assert!(w2.exact(3).is_none());
        assert_eq!(w2.cover(3).expect("covered").len(), 1);
    }

    #[test]
    fn a_swap_whose_reply_was_lost_is_sent_again_and_answered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = mint(dir.path());
        let path = dir.path().join("wallet.json");
        let mut w = fund(&m, &path, &[8]);
        let inputs = w.cover(3).expect("cover");
        let req = w
            .begin_swap(
                "send-1",
                inputs,
                true,
                None,
                &m.active_keyset_id(),
                &[1, 2, 1, 4],
            )
            .expect("begin");
        assert_eq!(w.balance_sat(), 0, "the inputs left the notes");
        m.swap(&req).expect("the mint swaps; its reply is lost");
        drop(w);
        // The next run finds the swap and sends the same request; the mint answers again.
        let mut w = Wallet::open(&path).expect("reopen");
        let pending = w.pending_swaps();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].1, req);
        let again = m.swap(&pending[0].1).expect("answered again");
        let got = w
            .receive("send-1", &m.keys().keysets, &again.signatures)
            .expect("receive");
        assert_eq!(got, 8);
        assert!(w.pending_swaps().is_empty());
        assert_eq!(w.exact(3).expect("2 + 1").len(), 2);
    }

    /// The blanks of a swap that committed, paired with the mint's NUT-09 answer for them.
    fn restored_pairs(m: &Mint, req: &SwapRequest) -> Vec<(BlindedMessage, BlindSignature)> {
        let r = m
            .restore(&payment::credit::nut_types::RestoreRequest {
                outputs: req.outputs.clone(),
            })
            .expect("restore");
        r.outputs.into_iter().zip(r.signatures).collect()
    }

    #[test]
    fn a_committed_swap_is_settled_from_the_mints_restore() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = mint(dir.path());
        let path = dir.path().join("wallet.json");
        let mut w = fund(&m, &path, &[8]);
        let inputs = w.cover(3).expect("cover");
        let req = w
            .begin_swap(
                "s",
                inputs,
                true,
                None,
                &m.active_keyset_id(),
                &[1, 2, 1, 4],
            )
            .expect("begin");
        m.swap(&req).expect("committed; the reply is lost");
        let found = restored_pairs(&m, &req);
        assert_eq!(found.len(), 4);
        // Part of the answer: those notes are kept, the other blanks stay for later.
        let keys = m.keys().keysets;
        assert_eq!(
            w.receive_restored("s", &found[..1], &keys).expect("part"),
            1
        );
        assert_eq!(w.pending_swaps().len(), 1, "not settled yet");
        assert_eq!(w.pending_outputs("s").expect("kept").len(), 3);
        // The rest, with the first again: counted once, and the swap is settled.
        assert_eq!(w.receive_restored("s", &found, &keys).expect("rest"), 7);
        assert_eq!(w.balance_sat(), 8);
        assert!(w.pending_swaps().is_empty());
        assert!(w.pending_outputs("s").is_none());
        // The notes are real: the mint takes them.
        let notes = w.proofs().to_vec();
        assert_eq!(m.redeem(&notes, "test").expect("redeem"), 8_000);
    }

    #[test]
    fn a_recorded_swap_is_never_replaced_by_new_blanks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = mint(dir.path());
        let path = dir.path().join("wallet.json");
        let mut w = fund(&m, &path, &[8, 4]);
        let id = m.active_keyset_id();
        let first = w
            .begin_swap("r", vec![w.proofs()[0].clone()], true, None, &id, &[8])
            .expect("begin");
        let other = vec![w.proofs()[0].clone()];
        assert!(matches!(
            w.begin_swap("r", other, true, None, &id, &[4]),
            Err(WalletError::SwapPending(_))
        ));
        assert_eq!(w.pending_swaps()[0].1, first, "the first blanks are kept");
        assert_eq!(w.balance_sat(), 4, "the refused swap took nothing");
    }

    #[test]
    fn a_seeded_wallet_derives_its_blanks_and_never_reuses_a_counter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = mint(dir.path());
        let phrase = Seed::generate().phrase();
        let path = dir.path().join("a.json");
        let mut a = Wallet::open(&path).expect("open");
        a.set_seed(Seed::from_phrase(&phrase).expect("phrase"))
            .expect("seed");
        let id = m.active_keyset_id();
        let first = a.new_outputs("b1", &id, &[1, 2]).expect("outputs");
        // Reopened, the counter continues where it was: new blanks differ.
        drop(a);
        let mut a = Wallet::open(&path).expect("reopen");
        assert!(a.is_deterministic());
        let second = a.new_outputs("b2", &id, &[1]).expect("outputs");
        assert!(first.iter().all(|o| o.b_ != second[0].b_));
        // Another wallet of the same phrase derives the same messages, counters 0, 1, 2.
        let mut b = Wallet::open(&dir.path().join("b.json")).expect("open");
        b.set_seed(Seed::from_phrase(&phrase).expect("phrase"))
            .expect("seed");
        let restored = b.restore_blanks(&id, 0, 3).expect("blanks");
        assert_eq!(restored[0].message().b_, first[0].b_);
        assert_eq!(restored[1].message().b_, first[1].b_);
        assert_eq!(restored[2].message().b_, second[0].b_);
        // A different phrase on a seeded wallet is refused.
        assert!(matches!(
            a.set_seed(Seed::generate()),
            Err(WalletError::OtherSeed(_))
        ));
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
        // Another process (the command run again, after this one ended and let go of the
        // wallet's lock) finds the same outputs.
        drop(w);
        let mut again = Wallet::open(&path).expect("reopen");
        assert_eq!(again.pending_outputs("b"), Some(outputs.clone()));
        let sigs = m.mint(2, &outputs).expect("mint");
        again
            .receive("b", &m.keys().keysets, &sigs)
            .expect("receive");
        assert!(again.pending_outputs("b").is_none(), "gone once answered");
        drop(again);
        assert!(Wallet::open(&path)
            .expect("reopen")
            .pending_outputs("b")
            .is_none());
    }

    #[test]
    fn a_swap_or_mint_signed_for_another_amount_or_partly_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = mint(dir.path());
        let mut w = Wallet::open(&dir.path().join("wallet.json")).expect("open");
        let outputs = w
            .new_outputs("b", &m.active_keyset_id(), &[4, 4])
            .expect("outputs");
        // The mint signs the first blank as worth 2 (a valid signature, DLEQ and all, on
        // the blank's own B_): the note would be worth less than asked.
        let mut cheaper = outputs.clone();
        cheaper[0].amount = 2;
        let sigs = m.mint(6, &cheaper).expect("mint");
        assert!(
            matches!(
                w.receive("b", &m.keys().keysets, &sigs),
                Err(WalletError::NotAsked {
                    index: 0,
                    what: "amount",
                    ..
                })
            ),
            "a note of another amount than asked"
        );
        // Only one of the two signed: the swap or mint paid for both.
        let sigs = m.mint(8, &outputs).expect("mint");
        assert!(matches!(
            w.receive("b", &m.keys().keysets, &sigs[..1]),
            Err(WalletError::TooFewSignatures { got: 1, sent: 2 })
        ));
        assert_eq!(w.balance_sat(), 0);
        assert_eq!(w.receive("b", &m.keys().keysets, &sigs).expect("all"), 8);
    }

    #[test]
    fn a_restores_signature_for_another_amount_is_refused_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = mint(dir.path());
        let mut w = Wallet::open(&dir.path().join("wallet.json")).expect("open");
        let outputs = w
            .new_outputs("swap-1", &m.active_keyset_id(), &[4])
            .expect("outputs");
        let mut cheaper = outputs.clone();
        cheaper[0].amount = 2;
        let sigs = m.mint(2, &cheaper).expect("mint");
        let found = vec![(cheaper[0].clone(), sigs[0].clone())];
        assert!(matches!(
            w.receive_restored("swap-1", &found, &m.keys().keysets),
            Err(WalletError::NotAsked { what: "amount", .. })
        ));
        assert_eq!(w.balance_sat(), 0);
    }

    #[test]
    fn change_a_restore_found_first_is_not_counted_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = mint(dir.path());
        let path = dir.path().join("wallet.json");
        let mut w = Wallet::open(&path).expect("open");
        w.set_seed(Seed::generate()).expect("seed");
        let keyset = m.active_keyset_id();
        // A stop --change whose reply was lost: its blanks wait; the host signed them.
        let outputs = w
            .new_outputs("change-l1", &keyset, &[1, 1])
            .expect("outputs");
        let sigs = m.mint(2, &outputs).expect("mint");
        // `wallet restore` finds them first ...
        let keys = m.keys().keysets;
        let found: Vec<Proof> = w
            .restore_blanks(&keyset, 0, 2)
            .expect("blanks")
            .iter()
            .zip(&sigs)
            .map(|(b, sig)| Wallet::restored_proof(b, sig, &keys).expect("restored"))
            .collect();
        assert_eq!(w.add_restored(&keyset, 2, found).expect("restore"), 2);
        // ... then the stop run again brings the same signatures.
        assert_eq!(w.receive("change-l1", &keys, &sigs).expect("receive"), 0);
        assert_eq!(w.balance_sat(), 2, "each note once");
        drop(w);

        // A wallet file that holds a note twice (an earlier coinop's) holds it once.
        let mut data: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        let first = data["proofs"][0].clone();
        data["proofs"].as_array_mut().expect("proofs").push(first);
        std::fs::write(&path, serde_json::to_vec(&data).expect("json")).expect("write");
        assert_eq!(Wallet::open(&path).expect("reopen").balance_sat(), 2);
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
        let w = fund(&m, &path, &[2]);
        assert!(matches!(
            w.cover(3),
            Err(WalletError::NotEnough { have: 2, want: 3 })
        ));
        assert_eq!(w.balance_sat(), 2);
    }

    #[test]
    fn one_process_at_a_time_has_a_wallet_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wallet.json");
        let first = Wallet::open(&path).expect("open");
        assert!(matches!(Wallet::open(&path), Err(WalletError::Busy(_))));
        drop(first);
        Wallet::open(&path).expect("free again");
    }

    /// A wallet named like one of the files kept beside it is refused before anything is
    /// written: as `w.seed`, `wallet init --seed` lost the phrase it had just written.
    #[test]
    fn a_wallet_named_like_its_own_seed_lock_or_temp_file_is_refused() {
        for name in ["w.seed", "w.lock", "w.tmp"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join(name);
            let err = Wallet::open(&path).err().expect("refused");
            let text = err.to_string();
            assert!(text.contains(name) && text.contains("*.seed"), "{text}");
            let left: Vec<_> = fs::read_dir(dir.path()).expect("dir").collect();
            assert!(left.is_empty(), "{name}: nothing written: {left:?}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        Wallet::open(&dir.path().join("wallet")).expect("no extension is fine");
    }

    /// A FIFO named as the wallet is refused at once: read, it would block for ever (nothing
    /// writes to it) with the wallet's lock held.
    #[test]
    fn a_fifo_as_the_wallet_is_refused_not_waited_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wallet.json");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let (tx, rx) = std::sync::mpsc::channel();
        let opener = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(Wallet::open(&opener).map(|_| ()));
        });
        let opened = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("an answer, not a wait");
        assert!(
            matches!(opened, Err(WalletError::NotAFile(_))),
            "{opened:?}"
        );
    }

    /// A wallet with a field this coinop does not know (a newer coinop's) is refused and
    /// left untouched: read past, the field would be gone after the next save.
    #[test]
    fn a_wallet_with_fields_this_coinop_does_not_know_is_refused_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wallet.json");
        let sent = r#"{"token": "cashuBx", "amount_sat": 2, "sent_unix": 1}"#;
        let newer_sent = r#"{"token": "cashuBx", "amount_sat": 2, "sent_unix": 1, "memo": "m"}"#;
        for text in [
            r#"{"proofs": [], "pending": [], "escrow": [{"amount": 4}]}"#.to_string(),
            format!(r#"{{"proofs": [], "pending": [], "outbox": [{newer_sent}]}}"#),
        ] {
            fs::write(&path, &text).expect("write");
            let err = Wallet::open(&path).err().expect("refused");
            assert!(matches!(err, WalletError::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains("unknown field"), "{err}");
            assert_eq!(fs::read_to_string(&path).expect("read"), text);
        }
        // The fields it knows, as an older wallet leaves out the later ones, still open.
        fs::write(
            &path,
            format!(r#"{{"proofs": [], "pending": [], "outbox": [{sent}]}}"#),
        )
        .expect("write");
        assert_eq!(Wallet::open(&path).expect("open").outbox().len(), 1);
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
