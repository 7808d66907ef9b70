//! The mint's seed and keyset list, kept in one file in the host's state dir, mode 0600.
//!
//! Rotation adds a keyset that becomes the only one that signs; older keysets stay
//! redeemable (inputs to swap/redeem) until the operator retires them. The file is replaced
//! atomically (write to a temporary file, fsync, rename, fsync the directory), so a crash
//! leaves either the old or the new list, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bitcoin::secp256k1::rand::{thread_rng, RngCore};
use serde::{Deserialize, Serialize};

use super::error::CreditError;

/// File name of the store inside the state dir.
pub const STORE_FILE: &str = "credit-keysets.json";

/// Largest store file we read: a seed plus thousands of keyset records fit easily.
const MAX_STORE_BYTES: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeysetState {
    /// Signs outputs and accepts inputs. Exactly one keyset is active.
    Active,
    /// Accepts inputs only.
    Inactive,
    /// Accepts nothing.
    Retired,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysetRecord {
    pub counter: u32,
    pub state: KeysetState,
}

#[derive(Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    seed: String,
    keysets: Vec<KeysetRecord>,
}

pub struct KeysetStore {
    path: PathBuf,
    seed: [u8; 32],
    records: Vec<KeysetRecord>,
}

impl KeysetStore {
    /// Opens the store in `state_dir`, creating it with a fresh random seed and one active
    /// keyset if it does not exist.
    pub fn open(state_dir: &Path) -> Result<Self, CreditError> {
        let path = state_dir.join(STORE_FILE);
        if path.exists() {
            Self::load(path)
        } else {
            let mut seed = [0u8; 32];
            thread_rng().fill_bytes(&mut seed);
            let store = KeysetStore {
                path,
                seed,
                records: vec![KeysetRecord {
                    counter: 0,
                    state: KeysetState::Active,
                }],
            };
            store.persist()?;
            Ok(store)
        }
    }

    fn err(&self, reason: impl Into<String>) -> CreditError {
        store_err(&self.path, reason)
    }

    fn load(path: PathBuf) -> Result<Self, CreditError> {
        let meta = fs::metadata(&path).map_err(|e| store_err(&path, e.to_string()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(store_err(
                &path,
                format!("mode {mode:o} lets others read the seed; expected 600"),
            ));
        }
        if meta.len() > MAX_STORE_BYTES {
            return Err(store_err(
                &path,
                format!("{} bytes is too large", meta.len()),
            ));
        }
        let text = fs::read_to_string(&path).map_err(|e| store_err(&path, e.to_string()))?;
        let file: StoreFile =
            serde_json::from_str(&text).map_err(|e| store_err(&path, format!("parse: {e}")))?;
        if file.version != 1 {
            return Err(store_err(
                &path,
                format!("unknown version {}", file.version),
            ));
        }
        let mut seed = [0u8; 32];
        hex::decode_to_slice(&file.seed, &mut seed)
            .map_err(|_| store_err(&path, "seed is not 64 hex characters"))?;
        let store = KeysetStore {
            path,
            seed,
            records: file.keysets,
        };
        store.check_invariants()?;
        Ok(store)
    }

    fn check_invariants(&self) -> Result<(), CreditError> {
        let active = self
            .records
            .iter()
            .filter(|r| r.state == KeysetState::Active)
            .count();
        if active != 1 {
            return Err(self.err(format!("{active} active keysets, expected exactly 1")));
        }
        let ordered = self.records.windows(2).all(|w| w[0].counter < w[1].counter);
        if !ordered {
            return Err(self.err("keyset counters not strictly increasing"));
        }
        Ok(())
    }

    fn persist(&self) -> Result<(), CreditError> {
        let file = StoreFile {
            version: 1,
            seed: hex::encode(self.seed),
            keysets: self.records.clone(),
        };
        let text =
            serde_json::to_string_pretty(&file).map_err(|e| self.err(format!("serialize: {e}")))?;
        let tmp = self.path.with_extension("json.tmp");
        let io = |e: std::io::Error| self.err(e.to_string());
        let _ = fs::remove_file(&tmp);
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        out.write_all(text.as_bytes()).map_err(io)?;
        out.sync_all().map_err(io)?;
        drop(out);
        fs::rename(&tmp, &self.path).map_err(io)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    pub fn records(&self) -> &[KeysetRecord] {
        &self.records
    }

    /// Makes a new keyset the active one; the previous active keyset becomes inactive.
    /// Returns the new keyset's counter.
    pub fn rotate(&mut self) -> Result<u32, CreditError> {
        let next = self
            .records
            .last()
            .map(|r| r.counter.checked_add(1))
            .unwrap_or(Some(0))
            .ok_or_else(|| self.err("keyset counter exhausted"))?;
        let before = self.records.clone();
        for r in &mut self.records {
            if r.state == KeysetState::Active {
                r.state = KeysetState::Inactive;
            }
        }
        self.records.push(KeysetRecord {
            counter: next,
            state: KeysetState::Active,
        });
        self.persist().inspect_err(|_| self.records = before)?;
        Ok(next)
    }

    /// Stops accepting notes of an inactive keyset. The active keyset cannot be retired
    /// (rotate first).
    pub fn retire(&mut self, counter: u32) -> Result<(), CreditError> {
        let idx = self
            .records
            .iter()
            .position(|r| r.counter == counter)
            .ok_or_else(|| self.err(format!("no keyset with counter {counter}")))?;
        if self.records[idx].state == KeysetState::Active {
            return Err(self.err(format!(
                "keyset {counter} is active; rotate before retiring"
            )));
        }
        let before = self.records[idx].state;
        self.records[idx].state = KeysetState::Retired;
        if let Err(e) = self.persist() {
            self.records[idx].state = before;
            return Err(e);
        }
        Ok(())
    }
}

fn store_err(path: &Path, reason: impl Into<String>) -> CreditError {
    CreditError::Store {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}
