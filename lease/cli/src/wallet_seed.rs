//! NUT-13 deterministic secrets: a BIP39 mnemonic gives every note's `secret` and blinding
//! factor `r`, per keyset and counter, so the mint's NUT-09 restore can give a lost wallet
//! its notes back. coinop's keysets are version `00`, whose derivation is BIP32 at
//! `m/129372'/0'/{keyset_id_int}'/{counter}'/{0 = secret, 1 = r}` (the mnemonic's seed with
//! an empty passphrase, as the NUT's test vectors use); other keyset versions are refused
//! rather than guessed.
//!
//! The phrase is kept next to the wallet file, `<wallet>.seed`, mode 0600 (written through a
//! temp file and a rename, so a crash leaves the old seed or the new one, never half).

use std::path::{Path, PathBuf};

use bip39::{Language, Mnemonic};
use bitcoin::bip32::{ChildNumber, Xpriv};
use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::NetworkKind;
use thiserror::Error;

use crate::durable;

/// NUT-13's BIP32 purpose, `129372'` (the UTF-8 of 🥜 read as a number).
const PURPOSE: u32 = 129_372;

#[derive(Debug, Error)]
pub enum SeedError {
    #[error("not a BIP39 seed phrase: {0}")]
    Phrase(#[from] bip39::Error),
    #[error("keyset id {0:?} is not hex")]
    KeysetHex(String),
    #[error("keyset {0}: deterministic secrets are implemented for version 00 keysets only")]
    KeysetVersion(String),
    #[error("BIP32 derivation: {0}")]
    Bip32(#[from] bitcoin::bip32::Error),
    #[error("counter {0} is past BIP32's hardened range")]
    Counter(u32),
    #[error("seed file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("seed file {0} holds no valid phrase")]
    Corrupt(String),
}

/// A wallet's NUT-13 seed: the mnemonic and its BIP32 master key.
pub struct Seed {
    mnemonic: Mnemonic,
    master: Xpriv,
}

/// One output's deterministic values.
pub struct Derived {
    /// The note's secret: the hex of the derived private key, as NUT-13 wallets write it.
    pub secret: String,
    pub r: SecretKey,
}

/// The extension of a wallet's seed file.
pub const SEED_EXTENSION: &str = "seed";

/// `<wallet>.seed`, beside the wallet file.
pub fn seed_path(wallet: &Path) -> PathBuf {
    wallet.with_extension(SEED_EXTENSION)
}

/// NUT-13's keyset-id-to-integer rule: the id's bytes (a version-01 id shortened to its
/// first 8) as a big-endian number, modulo 2^31 - 1.
pub fn keyset_id_int(keyset_id: &str) -> Result<u32, SeedError> {
    let bytes = hex::decode(keyset_id).map_err(|_| SeedError::KeysetHex(keyset_id.into()))?;
    let bytes = if bytes.first() == Some(&1) {
        &bytes[..bytes.len().min(8)]
    } else {
        &bytes[..]
    };
    const MODULUS: u64 = (1 << 31) - 1;
    // Horner's rule modulo 2^31 - 1: the id may be longer than 8 bytes.
    let rest = bytes
        .iter()
        .fold(0u64, |acc, &b| (acc * 256 + u64::from(b)) % MODULUS);
    Ok(u32::try_from(rest).expect("a number modulo 2^31 - 1 fits in u32"))
}

fn hardened(index: u32) -> Result<ChildNumber, SeedError> {
    ChildNumber::from_hardened_idx(index).map_err(|_| SeedError::Counter(index))
}

impl Seed {
    /// A new random 12-word phrase (128 bits from the OS).
    pub fn generate() -> Seed {
        let mut entropy = [0u8; 16];
        OsRng.fill_bytes(&mut entropy);
        let mnemonic = Mnemonic::from_entropy_in(Language::English, &entropy)
            .expect("16 bytes is a valid BIP39 entropy length");
        Seed::from_mnemonic(mnemonic)
    }

    /// The seed of `phrase` (English words, any spacing and case).
    pub fn from_phrase(phrase: &str) -> Result<Seed, SeedError> {
        let words: Vec<String> = phrase.split_whitespace().map(str::to_lowercase).collect();
        let mnemonic = Mnemonic::parse_in_normalized(Language::English, &words.join(" "))?;
        Ok(Seed::from_mnemonic(mnemonic))
    }

    fn from_mnemonic(mnemonic: Mnemonic) -> Seed {
        let master = Xpriv::new_master(NetworkKind::Main, &mnemonic.to_seed(""))
            .expect("a 64-byte BIP39 seed is a valid BIP32 seed but with probability 2^-127");
        Seed { mnemonic, master }
    }

    pub fn phrase(&self) -> String {
        self.mnemonic.to_string()
    }

    /// The secret and `r` of output number `counter` of `keyset_id`.
    pub fn derive(&self, keyset_id: &str, counter: u32) -> Result<Derived, SeedError> {
        if !keyset_id.starts_with("00") {
            return Err(SeedError::KeysetVersion(keyset_id.into()));
        }
        let secp = Secp256k1::signing_only();
        let base = [
            hardened(PURPOSE)?,
            hardened(0)?,
            hardened(keyset_id_int(keyset_id)?)?,
            hardened(counter)?,
        ];
        let at = |last: u32| -> Result<SecretKey, SeedError> {
            let mut path = base.to_vec();
            path.push(ChildNumber::from_normal_idx(last)?);
            Ok(self.master.derive_priv(&secp, &path)?.private_key)
        };
        Ok(Derived {
            secret: hex::encode(at(0)?.secret_bytes()),
            r: at(1)?,
        })
    }

    /// The seed kept at `path`, if there is one.
    pub fn load(path: &Path) -> Result<Option<Seed>, SeedError> {
        match read_regular_text(path) {
            Ok(text) => Seed::from_phrase(&text)
                .map(Some)
                .map_err(|_| SeedError::Corrupt(path.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SeedError::Io {
                path: path.display().to_string(),
                source: e,
            }),
        }
    }

    /// Writes the phrase to `path`, mode 0600, durably.
    pub fn save(&self, path: &Path) -> Result<(), SeedError> {
        let phrase = format!("{}\n", self.phrase());
        durable::replace(path, &path.with_extension("seed.tmp"), phrase.as_bytes()).map_err(|e| {
            SeedError::Io {
                path: e.path.display().to_string(),
                source: e.source,
            }
        })
    }
}

/// The text of the regular file at `path`. Opened without blocking and refused unless it is
/// a regular file: a FIFO at the seed's name would otherwise hang the command (with the
/// wallet's lock held) until someone writes to it.
fn read_regular_text(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    //! Values of cashubtc/nuts `tests/13-tests.md` (commit
    //! 06e2522094b549e2bcbb05b28946a2bfb1600b12).

    use super::*;

    #[test]
    fn a_fifo_at_the_seeds_name_is_refused_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.seed");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        let started = std::time::Instant::now();
        assert!(matches!(Seed::load(&path), Err(SeedError::Io { .. })));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn keyset_id_integers_match_the_vectors() {
        assert_eq!(keyset_id_int("009a1f293253e41e").expect("hex"), 864_559_728);
        assert_eq!(
            keyset_id_int("01adc013fa9d85171586660abab27579888611659d357bc86bc09cb26eee8bc035")
                .expect("hex"),
            2_113_471_806
        );
        assert!(matches!(keyset_id_int("zz"), Err(SeedError::KeysetHex(_))));
    }

    #[test]
    fn secrets_and_blinding_factors_match_the_vectors() {
        let seed = Seed::from_phrase(
            "half depart obvious quality work element tank gorilla view sugar picture humble",
        )
        .expect("valid phrase");
        let secrets = [
            "485875df74771877439ac06339e284c3acfcd9be7abf3bc20b516faeadfe77ae",
            "8f2b39e8e594a4056eb1e6dbb4b0c38ef13b1b2c751f64f810ec04ee35b77270",
            "bc628c79accd2364fd31511216a0fab62afd4a18ff77a20deded7b858c9860c8",
            "59284fd1650ea9fa17db2b3acf59ecd0f2d52ec3261dd4152785813ff27a33bf",
            "576c23393a8b31cc8da6688d9c9a96394ec74b40fdaf1f693a6bb84284334ea0",
        ];
        let rs = [
            "ad00d431add9c673e843d4c2bf9a778a5f402b985b8da2d5550bf39cda41d679",
            "967d5232515e10b81ff226ecf5a9e2e2aff92d66ebc3edf0987eb56357fd6248",
            "b20f47bb6ae083659f3aa986bfa0435c55c6d93f687d51a01f26862d9b9a4899",
            "fb5fca398eb0b1deb955a2988b5ac77d32956155f1c002a373535211a2dfdc29",
            "5f09bfbfe27c439a597719321e061e2e40aad4a36768bb2bcc3de547c9644bf9",
        ];
        for (counter, (secret, r)) in secrets.iter().zip(rs).enumerate() {
            let d = seed
                .derive("009a1f293253e41e", counter as u32)
                .expect("derive");
            assert_eq!(d.secret, *secret, "secret_{counter}");
            assert_eq!(hex::encode(d.r.secret_bytes()), r, "r_{counter}");
        }
    }

    #[test]
    fn phrases_round_trip_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.seed");
        let s = Seed::generate();
        assert_eq!(s.phrase().split(' ').count(), 12);
        s.save(&path).expect("save");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = Seed::load(&path).expect("load").expect("present");
        assert_eq!(back.phrase(), s.phrase());
        assert!(Seed::load(&dir.path().join("none")).expect("ok").is_none());
        // The vectors' phrase with its last word changed fails the BIP39 checksum.
        assert!(Seed::from_phrase(
            "half depart obvious quality work element tank gorilla view sugar picture human"
        )
        .is_err());
        assert!(Seed::from_phrase("not a seed phrase").is_err());
        assert!(matches!(
            s.derive("01ab", 0),
            Err(SeedError::KeysetVersion(_))
        ));
    }
}
