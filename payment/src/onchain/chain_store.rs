//! The header chain on disk: one append-only file of fixed-size records, fsynced after every
//! batch, read back in a single streaming pass.
//!
//! Layout: a 16-byte file header (`COINOPHC`, format version u32 LE, network code, 3 zero
//! bytes), then one 136-byte record per block in the order the chain accepted them:
//! the 80-byte header, the 32-byte block hash, the parent's record index (u32 LE,
//! `u32::MAX` for the checkpoint), the height (u32 LE) and the chainwork (u128 LE).
//! Record 0 is the checkpoint. Hash and chainwork are stored, not recomputed, so loading is a
//! read and a few comparisons per block; each record's parent index, height and the parent
//! hash inside its 80-byte header are still cross-checked, so a damaged file is refused
//! rather than trusted. A torn last record (crash during a write) is cut off.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use bitcoin::block::Header;
use bitcoin::consensus::encode::serialize;
use bitcoin::hashes::Hash;

use super::error::ChainError;
use super::header_chain::{Checkpoint, Entry};
use super::network::ChainNetwork;

const MAGIC: &[u8; 8] = b"COINOPHC";
const FORMAT_VERSION: u32 = 1;
const FILE_HEADER_LEN: usize = 16;
/// Bytes per block on disk.
pub const RECORD_LEN: usize = 80 + 32 + 4 + 4 + 16;

/// The open chain file.
#[derive(Debug)]
pub struct ChainStore {
    file: File,
    path: PathBuf,
    /// Bytes of whole records written so far: where a failed write is cut back to.
    len: u64,
}

fn io_err(path: &Path, e: std::io::Error) -> ChainError {
    ChainError::Store {
        path: path.display().to_string(),
        source: e,
    }
}

fn corrupt(path: &Path, what: String) -> ChainError {
    ChainError::StoreCorrupt {
        path: path.display().to_string(),
        what,
    }
}

fn encode_record(entry: &Entry, header: &Header) -> [u8; RECORD_LEN] {
    let mut rec = [0u8; RECORD_LEN];
    rec[..80].copy_from_slice(&serialize(header));
    rec[80..112].copy_from_slice(&entry.hash);
    rec[112..116].copy_from_slice(&entry.prev.to_le_bytes());
    rec[116..120].copy_from_slice(&entry.height.to_le_bytes());
    rec[120..136].copy_from_slice(&entry.chainwork.to_le_bytes());
    rec
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn decode_record(rec: &[u8; RECORD_LEN]) -> (Entry, [u8; 32]) {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&rec[80..112]);
    let mut prev_hash = [0u8; 32];
    prev_hash.copy_from_slice(&rec[4..36]);
    let mut work = [0u8; 16];
    work.copy_from_slice(&rec[120..136]);
    let entry = Entry {
        hash,
        chainwork: u128::from_le_bytes(work),
        time: le_u32(&rec[68..72]),
        bits: le_u32(&rec[72..76]),
        prev: le_u32(&rec[112..116]),
        height: le_u32(&rec[116..120]),
    };
    (entry, prev_hash)
}

/// The checkpoint's entry as `HeaderChain` builds it from the checkpoint's header.
fn checkpoint_entry(cp: &Checkpoint, header: &Header, work: u128) -> Entry {
    Entry {
        hash: cp.hash.to_byte_array(),
        chainwork: work,
        time: header.time,
        bits: header.bits.to_consensus(),
        prev: Entry::NO_PREV,
        height: cp.height,
    }
}

fn sync_dir(path: &Path) -> Result<(), ChainError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

impl ChainStore {
    /// Whether a chain file with something in it is at `path`.
    pub(crate) fn exists(path: &Path) -> bool {
        path.metadata().map(|m| m.len() > 0).unwrap_or(false)
    }

    /// Opens or creates the chain file; returns the entries in it (checkpoint first).
    /// `checkpoint_work` is the checkpoint's own work, as the chain computes it. Creating
    /// needs the checkpoint's header; an existing file started from a checkpoint known by
    /// hash only is matched on height and hash (its header was checked when it was written).
    pub(crate) fn open(
        path: &Path,
        network: ChainNetwork,
        checkpoint: &Checkpoint,
        checkpoint_work: u128,
    ) -> Result<(Self, Vec<Entry>), ChainError> {
        if !Self::exists(path) {
            let header = checkpoint.header.as_ref().ok_or_else(|| {
                corrupt(
                    path,
                    "cannot be created before the checkpoint's header is known".into(),
                )
            })?;
            return Self::create(path, network, checkpoint, header, checkpoint_work);
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        let entries = Self::load(&file, path, network)?;
        let first = &entries[0];
        let same = match &checkpoint.header {
            Some(header) => *first == checkpoint_entry(checkpoint, header, checkpoint_work),
            None => {
                first.hash == checkpoint.hash.to_byte_array()
                    && first.height == checkpoint.height
                    && checkpoint.chainwork.is_none_or(|w| w == first.chainwork)
            }
        };
        if !same {
            return Err(corrupt(
                path,
                format!(
                    "starts at height {} block {}, not the configured checkpoint (height {} block {})",
                    entries[0].height,
                    bitcoin::BlockHash::from_byte_array(entries[0].hash),
                    checkpoint.height,
                    checkpoint.hash
                ),
            ));
        }
        let len = FILE_HEADER_LEN as u64 + entries.len() as u64 * RECORD_LEN as u64;
        Ok((
            ChainStore {
                file,
                path: path.to_owned(),
                len,
            },
            entries,
        ))
    }

    fn create(
        path: &Path,
        network: ChainNetwork,
        checkpoint: &Checkpoint,
        header: &Header,
        checkpoint_work: u128,
    ) -> Result<(Self, Vec<Entry>), ChainError> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        let entry = checkpoint_entry(checkpoint, header, checkpoint_work);
        let mut buf = Vec::with_capacity(FILE_HEADER_LEN + RECORD_LEN);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        buf.extend_from_slice(&[network.code(), 0, 0, 0]);
        buf.extend_from_slice(&encode_record(&entry, header));
        file.write_all(&buf).map_err(|e| io_err(path, e))?;
        file.sync_all().map_err(|e| io_err(path, e))?;
        sync_dir(path)?;
        Ok((
            ChainStore {
                file,
                path: path.to_owned(),
                len: buf.len() as u64,
            },
            vec![entry],
        ))
    }

    fn load(file: &File, path: &Path, network: ChainNetwork) -> Result<Vec<Entry>, ChainError> {
        let len = file.metadata().map_err(|e| io_err(path, e))?.len();
        let body = len.saturating_sub(FILE_HEADER_LEN as u64);
        let whole = body / RECORD_LEN as u64;
        let count = usize::try_from(whole)
            .ok()
            .filter(|&n| n <= u32::MAX as usize)
            .ok_or_else(|| {
                corrupt(
                    path,
                    format!("{whole} records is more than an index can name"),
                )
            })?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut head = [0u8; FILE_HEADER_LEN];
        reader
            .read_exact(&mut head)
            .map_err(|_| corrupt(path, "shorter than its 16-byte file header".into()))?;
        if &head[..8] != MAGIC {
            return Err(corrupt(
                path,
                "not a coinop header-chain file (magic)".into(),
            ));
        }
        let version = le_u32(&head[8..12]);
        if version != FORMAT_VERSION {
            return Err(corrupt(
                path,
                format!("format version {version}, expected {FORMAT_VERSION}"),
            ));
        }
        if head[12] != network.code() {
            let other = ChainNetwork::from_code(head[12]).map_or("unknown", |n| n.name());
            return Err(corrupt(
                path,
                format!("holds {other} headers, not {}", network.name()),
            ));
        }
        if count == 0 {
            return Err(corrupt(path, "has no checkpoint record".into()));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(count);
        let mut rec = [0u8; RECORD_LEN];
        for i in 0..count {
            reader.read_exact(&mut rec).map_err(|e| io_err(path, e))?;
            let (entry, prev_hash) = decode_record(&rec);
            Self::check_record(&entries, i, &entry, &prev_hash)
                .map_err(|what| corrupt(path, format!("record {i}: {what}")))?;
            entries.push(entry);
        }
        if body % RECORD_LEN as u64 != 0 {
            // A crash cut the last write short: that batch was never reported accepted.
            file.set_len(FILE_HEADER_LEN as u64 + whole * RECORD_LEN as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| io_err(path, e))?;
        }
        Ok(entries)
    }

    fn check_record(
        entries: &[Entry],
        i: usize,
        entry: &Entry,
        prev_hash: &[u8; 32],
    ) -> Result<(), String> {
        if i == 0 {
            return if entry.prev == Entry::NO_PREV {
                Ok(())
            } else {
                Err("checkpoint record has a parent".into())
            };
        }
        let parent = entries
            .get(entry.prev as usize)
            .filter(|_| (entry.prev as usize) < i)
            .ok_or_else(|| format!("parent index {} is not an earlier record", entry.prev))?;
        if parent.height.checked_add(1) != Some(entry.height) {
            return Err(format!(
                "height {} does not follow parent height {}",
                entry.height, parent.height
            ));
        }
        if &parent.hash != prev_hash {
            return Err("header's previous-block hash is not its parent's hash".into());
        }
        if entry.chainwork <= parent.chainwork {
            return Err("chainwork does not grow".into());
        }
        Ok(())
    }

    /// Appends the records of new entries (with their headers, same order) and fsyncs.
    pub(crate) fn append(
        &mut self,
        entries: &[Entry],
        headers: &[&Header],
    ) -> Result<(), ChainError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(entries.len() * RECORD_LEN);
        for (e, h) in entries.iter().zip(headers) {
            buf.extend_from_slice(&encode_record(e, h));
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Leave no partial records behind: the next batch must start on a boundary.
            let _ = self.file.set_len(self.len);
            return Err(io_err(&self.path, e));
        }
        self.len += buf.len() as u64;
        Ok(())
    }
}
