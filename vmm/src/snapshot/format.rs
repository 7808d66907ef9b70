//! The `state` file of a snapshot directory: a fixed prefix, a header, then the machine
//! state, all little-endian.
//!
//! ```text
//! 0   8  magic "COINOPSN"
//! 8   4  format version (u32)
//! 12  4  header length H (u32)
//! 16  H  header, postcard: coinop-vmm version, host fingerprint, state length and CRC-32,
//!        memory file length
//! 16+H   machine state, postcard (vCPUs, VM, devices)
//! ```
//!
//! What is covered: the machine state by its CRC-32 (any flipped bit or cut is refused);
//! every header field by an equality check (version, host fingerprint, both lengths). The
//! memory file is covered by its length only: hashing it would read every page at each
//! restore, which is exactly the cost a copy-on-write restore exists to avoid.

use serde::{Deserialize, Serialize};

/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"COINOPSN";
/// Bumped whenever the layout or the state's types change. 2: the devices' state gained
/// the personalisation port (COM2).
pub const FORMAT_VERSION: u32 = 2;
/// The coinop-vmm version that writes and reads snapshots; another refuses them.
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");
const PREFIX_LEN: usize = 16;

/// Why a state file cannot be used. Every variant is bad input (exit code 2).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Too short to hold even the prefix and header.
    #[error("snapshot state file is truncated: {0} bytes, too short for its header")]
    TruncatedHeader(usize),
    /// Not a coinop snapshot at all.
    #[error("not a coinop-vmm snapshot state file (bad magic)")]
    BadMagic,
    /// A layout this build does not read.
    #[error("snapshot format version {found}; this coinop-vmm reads only version {FORMAT_VERSION} (take the snapshot again with this coinop-vmm)")]
    FormatVersion {
        /// The file's.
        found: u32,
    },
    /// The header does not decode.
    #[error("snapshot header is corrupt: {0}")]
    CorruptHeader(String),
    /// Written by another coinop-vmm.
    #[error("snapshot was taken by coinop-vmm {found}; this is coinop-vmm {VMM_VERSION}, which restores only its own snapshots")]
    ForeignVersion {
        /// The writer's version.
        found: String,
    },
    /// The state is shorter than the header says.
    #[error("snapshot state is truncated: {found} of {expected} bytes")]
    Truncated {
        /// Bytes present.
        found: usize,
        /// Bytes the header announces.
        expected: u64,
    },
    /// The state is longer than the header says.
    #[error("snapshot state has {extra} bytes after its end: the file is corrupt")]
    Trailing {
        /// Extra bytes.
        extra: usize,
    },
    /// The checksum does not match.
    #[error("snapshot state is corrupt: CRC-32 {found:#010x}, header says {expected:#010x}")]
    Checksum {
        /// Computed.
        found: u32,
        /// Recorded.
        expected: u32,
    },
}

/// What the header records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The writer's coinop-vmm version.
    pub vmm_version: String,
    /// [`crate::snapshot::host::fingerprint`] of the host that took the snapshot.
    pub host_fingerprint: u32,
    /// Length of the machine state after the header.
    pub state_len: u64,
    /// CRC-32 of the machine state.
    pub state_crc32: u32,
    /// Length of the memory file.
    pub memory_len: u64,
}

/// The state file's bytes for `state` (already encoded) and the header fields.
pub fn encode(state: &[u8], host_fingerprint: u32, memory_len: u64) -> Vec<u8> {
    let header = Header {
        vmm_version: VMM_VERSION.to_string(),
        host_fingerprint,
        state_len: state.len() as u64,
        state_crc32: crc32fast::hash(state),
        memory_len,
    };
    let header = postcard::to_stdvec(&header)
        .expect("postcard encodes a struct of integers and a string into a Vec");
    let mut out = Vec::with_capacity(PREFIX_LEN + header.len() + state.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(state);
    out
}

/// Checks a state file and returns its header and the verified machine-state bytes.
pub fn decode(file: &[u8]) -> Result<(Header, &[u8]), Error> {
    if file.len() >= MAGIC.len() && file[..MAGIC.len()] != MAGIC {
        return Err(Error::BadMagic);
    }
    if file.len() < PREFIX_LEN {
        return Err(Error::TruncatedHeader(file.len()));
    }
    let word = |at: usize| u32::from_le_bytes([file[at], file[at + 1], file[at + 2], file[at + 3]]);
    let found = word(8);
    if found != FORMAT_VERSION {
        return Err(Error::FormatVersion { found });
    }
    let header_len = word(12) as usize;
    let Some(header_bytes) = file.get(PREFIX_LEN..PREFIX_LEN.saturating_add(header_len)) else {
        return Err(Error::TruncatedHeader(file.len()));
    };
    let header: Header =
        postcard::from_bytes(header_bytes).map_err(|e| Error::CorruptHeader(e.to_string()))?;
    if header.vmm_version != VMM_VERSION {
        return Err(Error::ForeignVersion {
            found: header.vmm_version,
        });
    }
    let state = &file[PREFIX_LEN + header_len..];
    if (state.len() as u64) < header.state_len {
        return Err(Error::Truncated {
            found: state.len(),
            expected: header.state_len,
        });
    }
    if state.len() as u64 > header.state_len {
        return Err(Error::Trailing {
            extra: state.len() - header.state_len as usize,
        });
    }
    let crc = crc32fast::hash(state);
    if crc != header.state_crc32 {
        return Err(Error::Checksum {
            found: crc,
            expected: header.state_crc32,
        });
    }
    Ok((header, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        encode(b"machine state bytes", 0xabcd, 4096)
    }

    #[test]
    fn round_trips() {
        let file = sample();
        let (header, state) = decode(&file).expect("valid");
        assert_eq!(state, b"machine state bytes");
        assert_eq!(header.host_fingerprint, 0xabcd);
        assert_eq!(header.memory_len, 4096);
        assert_eq!(header.vmm_version, VMM_VERSION);
    }

    #[test]
    fn every_cut_is_refused() {
        let file = sample();
        for len in 0..file.len() {
            assert!(decode(&file[..len]).is_err(), "cut at {len} accepted");
        }
        assert!(matches!(
            decode(&file[..file.len() - 3]),
            Err(Error::Truncated { .. })
        ));
    }

    #[test]
    fn every_flipped_state_bit_is_refused() {
        let file = sample();
        let state_start = file.len() - b"machine state bytes".len();
        for at in state_start..file.len() {
            for bit in 0..8 {
                let mut bad = file.clone();
                bad[at] ^= 1 << bit;
                assert!(
                    matches!(decode(&bad), Err(Error::Checksum { .. })),
                    "flip at {at} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn foreign_files_are_named() {
        let mut file = sample();
        file[0] = b'X';
        assert_eq!(decode(&file), Err(Error::BadMagic));
        let mut file = sample();
        file[8] = 9;
        assert_eq!(decode(&file), Err(Error::FormatVersion { found: 9 }));
        let mut other = sample();
        other.push(0);
        assert_eq!(decode(&other), Err(Error::Trailing { extra: 1 }));
    }
}
