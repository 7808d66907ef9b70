//! A guest's SSH host key, made by coinopd: one fresh Ed25519 key pair per boot of an
//! `agent` image's guest (images/rootfs/PERSONALISE.md, line key `host_key`).
//!
//! Why the host makes it: a guest made its own with `dropbearkey` after its RNG was
//! reseeded, which cost ~220 ms of every restored lease's way to SSH in the nested lab.
//! The host is the guest's trust root anyway (it can read the guest's memory), the key is
//! fresh per boot (so a tenant reading its own guest's memory learns only its own key),
//! and the tenant now learns the public key in the create reply (`network.ssh.host_key`),
//! so it can pin it instead of trusting the first connection.
//!
//! The private half lives only in coinopd's memory (zeroed on drop) and in the line sent
//! through the VMM's control socket: never on disk, in a log, or on a command line.
//! [`GuestHostKey`]'s `Debug` shows the public key only.

use base64::Engine as _;
use bitcoin::secp256k1::rand::rngs::OsRng;
use ed25519_dalek::SigningKey;

/// The SSH name of the key type (RFC 8709).
const KEY_TYPE: &str = "ssh-ed25519";

/// One guest's Ed25519 SSH host key pair.
#[derive(Clone)]
pub struct GuestHostKey {
    key: SigningKey,
}

impl GuestHostKey {
    /// A fresh key pair from the OS's RNG.
    pub fn generate() -> Self {
        GuestHostKey {
            key: SigningKey::generate(&mut OsRng),
        }
    }

    /// The key pair of a 32-byte Ed25519 seed (RFC 8032's private key).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        GuestHostKey {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The line's `host_key` value: 128 lowercase hex digits, the 32-byte seed then the
    /// 32-byte public key, which is the layout of dropbear's own key file body (the guest
    /// has no Ed25519 arithmetic to derive the public half itself).
    pub fn line_value(&self) -> String {
        let mut hex = hex::encode(self.key.as_bytes());
        hex.push_str(&hex::encode(self.key.verifying_key().as_bytes()));
        hex
    }

    /// The public key as an OpenSSH public key line, `ssh-ed25519 BASE64`: the base64 of
    /// the SSH wire encoding (RFC 4253 section 6.6, RFC 8709 section 4), the string
    /// "ssh-ed25519" then the string of the 32-byte key, each with its 4-byte length.
    pub fn openssh(&self) -> String {
        let mut blob = Vec::with_capacity(4 + KEY_TYPE.len() + 4 + 32);
        for part in [KEY_TYPE.as_bytes(), self.key.verifying_key().as_bytes()] {
            let len = u32::try_from(part.len()).expect("a key type name or 32-byte key");
            blob.extend_from_slice(&len.to_be_bytes());
            blob.extend_from_slice(part);
        }
        format!(
            "{KEY_TYPE} {}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }
}

impl std::fmt::Debug for GuestHostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestHostKey")
            .field("public", &self.openssh())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod dropbear_serving;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    #[test]
    fn the_line_value_is_the_seed_then_its_public_key() {
        // RFC 8032 section 7.1, TEST 1: a known seed and the public key it derives.
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .expect("hex")
                .try_into()
                .expect("32 bytes");
        let key = GuestHostKey::from_seed(&seed);
        assert_eq!(
            key.line_value(),
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\
             d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        // The OpenSSH line carries that public key in the SSH wire encoding.
        let line = key.openssh();
        let b64 = line.strip_prefix("ssh-ed25519 ").expect("type first");
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        assert_eq!(&blob[..15], b"\0\0\0\x0bssh-ed25519");
        assert_eq!(&blob[15..19], &[0, 0, 0, 32]);
        assert_eq!(
            hex::encode(&blob[19..]),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
    }

    /// The rootfs's own `dropbearkey`, built (or found cached) by images/rootfs/dropbear.sh
    /// beside its dropbear and dbclient; `Err` with why when it cannot be had.
    pub(super) fn dropbearkey() -> Result<PathBuf, String> {
        let script = repo().join("images/rootfs/dropbear.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(Path::new(&dir).join("usr/bin/dropbearkey"))
    }

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// The guest agent's own writer (images/rootfs/host_key.c) with a driver of this test:
    /// `write HEX PATH`, or `write placeholder PATH` for the placeholder key.
    pub(super) fn build_writer(dir: &Path) -> Result<PathBuf, String> {
        let rootfs = repo().join("images/rootfs");
        let driver = dir.join("driver.c");
        std::fs::write(
            &driver,
            "#include <stdio.h>\n#include <string.h>\n#include \"agent.h\"\n\
             int main(int argc, char **argv)\n{\n\
             \tconst char *why;\n\
             \tif (argc != 3)\n\t\treturn 2;\n\
             \twhy = strcmp(argv[1], \"placeholder\") == 0\n\
             \t\t? host_key_write_placeholder(argv[2])\n\
             \t\t: host_key_write(argv[1], argv[2]);\n\
             \tif (why) {\n\t\tfprintf(stderr, \"%s\\n\", why);\n\t\treturn 1;\n\t}\n\
             \treturn 0;\n}\n",
        )
        .map_err(|e| e.to_string())?;
        let writer = dir.join("write");
        let out = Command::new("gcc")
            .args(["-O2", "-Wall", "-Wextra", "-Werror", "-I"])
            .arg(&rootfs)
            .arg("-o")
            .arg(&writer)
            .arg(&driver)
            .arg(rootfs.join("host_key.c"))
            .output()
            .map_err(|e| format!("gcc: {e}"))?;
        assert!(
            out.status.success(),
            "host_key.c does not build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(writer)
    }

    #[test]
    fn dropbear_reads_the_agents_key_file_as_the_key_the_tenant_is_told() {
        use std::os::unix::fs::PermissionsExt as _;

        let dir = tempfile::tempdir().expect("temp dir");
        let writer = match build_writer(dir.path()) {
            Ok(w) => w,
            Err(why) => {
                println!("SKIPPED: no C compiler for images/rootfs/host_key.c: {why}");
                return;
            }
        };
        let dropbearkey = match dropbearkey() {
            Ok(d) => d,
            Err(why) => {
                println!("SKIPPED: no dropbearkey: {why}");
                return;
            }
        };
        let key = GuestHostKey::generate();
        let file = dir.path().join("dropbear_ed25519_host_key");
        let wrote = Command::new(&writer)
            .arg(key.line_value())
            .arg(&file)
            .output()
            .expect("runs the writer");
        assert!(
            wrote.status.success(),
            "{}",
            String::from_utf8_lossy(&wrote.stderr)
        );
        let mode = std::fs::metadata(&file)
            .expect("the key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let read = Command::new(&dropbearkey)
            .args(["-y", "-f"])
            .arg(&file)
            .output()
            .expect("runs dropbearkey");
        let said = String::from_utf8_lossy(&read.stdout);
        assert!(
            read.status.success(),
            "dropbearkey refused the file: {said} {}",
            String::from_utf8_lossy(&read.stderr)
        );
        // "ssh-ed25519 BASE64 COMMENT": the key, whatever comment dropbear adds.
        let public = said
            .lines()
            .find(|l| l.starts_with("ssh-ed25519 "))
            .unwrap_or_else(|| panic!("no public key line from dropbearkey: {said}"));
        let public: Vec<&str> = public.split(' ').take(2).collect();
        assert_eq!(public.join(" "), key.openssh());

        // A value that is not 128 hex digits is refused, and says so.
        let short = &key.line_value()[..127];
        let refused = Command::new(&writer)
            .arg(short)
            .arg(dir.path().join("other"))
            .output()
            .expect("runs the writer");
        assert_eq!(refused.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&refused.stderr).contains("128 lowercase hex digits"));
        assert!(!dir.path().join("other").exists());
    }

    #[test]
    fn keys_are_fresh_and_debug_shows_no_private_part() {
        let (a, b) = (GuestHostKey::generate(), GuestHostKey::generate());
        assert_ne!(a.openssh(), b.openssh());
        let seed_hex = &a.line_value()[..64];
        let shown = format!("{a:?}");
        assert!(!shown.contains(seed_hex), "{shown}");
        assert!(shown.contains(&a.openssh()), "{shown}");
    }
}
