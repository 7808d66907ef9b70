//! `--mint-seed-file`: the fleet's mint seed, a secret every host of the fleet holds (the
//! operator distributes it like the xpub, but privately). Every keyset's keys are derived
//! from it, so the fleet store keeps only the keyset list and never a private key. The
//! file is refused if anyone but its owner may read it, as ssh refuses a readable key.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Longest file read: a seed line, a newline, perhaps a comment; never a large file.
const MAX_SEED_FILE_BYTES: u64 = 4096;

#[derive(Debug, Error)]
pub enum MintSeedError {
    #[error("--mint-seed-file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "--mint-seed-file {path}: mode {mode:o} lets others read the mint seed; \
         chmod 600 it (readable by coinopd's user only)"
    )]
    Readable { path: PathBuf, mode: u32 },
    #[error("--mint-seed-file {path}: {size} bytes; a seed file is one line of 64 hex characters")]
    TooLarge { path: PathBuf, size: u64 },
    #[error(
        "--mint-seed-file {path}: the first line is not 64 hex characters (32 bytes); \
         make one with `openssl rand -hex 32`"
    )]
    Malformed { path: PathBuf },
}

/// Reads the 32-byte seed: the first line of `path`, 64 hex characters, from a file of
/// mode 0600 (or stricter).
pub fn read_seed_file(path: &Path) -> Result<[u8; 32], MintSeedError> {
    let read_err = |source| MintSeedError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(MintSeedError::Readable {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() > MAX_SEED_FILE_BYTES {
        return Err(MintSeedError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    let line = text.lines().next().unwrap_or_default().trim();
    let mut seed = [0u8; 32];
    hex::decode_to_slice(line, &mut seed).map_err(|_| MintSeedError::Malformed {
        path: path.to_path_buf(),
    })?;
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    use super::*;

    fn seed_file(dir: &Path, mode: u32, text: &str) -> PathBuf {
        let path = dir.join(format!("seed-{mode:o}-{}", text.len()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
        // The umask may have narrowed the mode given at creation.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_private_hex_seed_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let hex = "11".repeat(32);
        let path = seed_file(dir.path(), 0o600, &format!("{hex}\n"));
        assert_eq!(read_seed_file(&path).unwrap(), [0x11; 32]);
        let path = seed_file(dir.path(), 0o400, &hex);
        assert_eq!(read_seed_file(&path).unwrap(), [0x11; 32]);
    }

    #[test]
    fn a_group_or_world_readable_seed_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let hex = "22".repeat(32);
        for mode in [0o640, 0o604, 0o644] {
            let path = seed_file(dir.path(), mode, &format!("{hex}\n{mode}"));
            let e = read_seed_file(&path).unwrap_err();
            assert!(
                matches!(e, MintSeedError::Readable { mode: m, .. } if m == mode),
                "{e}"
            );
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
    }

    #[test]
    fn a_seed_file_that_is_not_64_hex_characters_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["", "abcd", &"zz".repeat(32), &"33".repeat(33)] {
            let path = seed_file(dir.path(), 0o600, text);
            assert!(
                matches!(read_seed_file(&path), Err(MintSeedError::Malformed { .. })),
                "{text:?}"
            );
        }
        let e = read_seed_file(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(e, MintSeedError::Read { .. }), "{e}");
    }
}
