//! `coinop lease create` made safe to repeat. Before the request leaves, the CLI picks a
//! recovery key (256 random bits) and writes it to a file (mode 0600, synced); the key goes
//! with the create. If the reply is lost (coinopd restarted, the connection dropped), the
//! CLI resends the same request a few times, and running the same command again later reads
//! the same key back: coinopd then answers with the lease the payment already made and a
//! fresh token instead of 409. The file is named after the payment by default, so "the same
//! command" needs no extra flag; it is removed once coinopd gave a definitive answer.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
use coinop_proto::requests::{CreateRequest, PaymentBody};

use crate::client::{Client, ClientError, Reply};
use crate::commands::{create_call, outcome, print_reply, View};
use crate::durable;
use crate::exit::{note, Exit};
use coinop_proto::recovery_key::{recovery_hash, KEY_HEX_LEN};

/// Pause between resends of a create whose reply was lost.
const RESEND_PAUSE: Duration = Duration::from_secs(1);

/// `~/.coinop/creates/<first 128 bits of SHA-256 of the payment JSON>.key`.
///
/// The JSON hashed is the payment as a `serde_json::Value` printed (keys sorted), not the
/// request's own encoding: that is the text every coinop so far has hashed, so a create
/// whose reply was lost is found again by a newer coinop too.
pub fn default_key_path(payment: &PaymentBody) -> Result<PathBuf, Exit> {
    let canonical = serde_json::to_value(payment)
        .map_err(|e| Exit::usage(format!("cannot encode the payment: {e}")))?
        .to_string();
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let digest = sha256::Hash::hash(canonical.as_bytes()).to_byte_array();
    Ok(PathBuf::from(home)
        .join(".coinop")
        .join("creates")
        .join(format!("{}.key", hex::encode(&digest[..16]))))
}

fn io_exit(path: &Path, what: &str, e: std::io::Error) -> Exit {
    Exit::usage(format!("{what} {}: {e}", path.display()))
}

fn read_key(path: &Path) -> Result<String, Exit> {
    // Through input, which gives up on a FIFO nobody writes to instead of hanging.
    let text = crate::input::read_path(path)?;
    let key = text.trim().to_string();
    recovery_hash(&key).map_err(|e| Exit::usage(format!("{}: {e}", path.display())))?;
    Ok(key)
}

/// The key kept in `path`, or a fresh one written there (durably) first. Returns whether it
/// was already there, i.e. this is a retry.
pub fn load_or_create(path: &Path) -> Result<(String, bool), Exit> {
    if path.exists() {
        return Ok((read_key(path)?, true));
    }
    let dir = durable::parent_dir(path);
    durable::create_dirs(dir).map_err(|e| io_exit(&e.path, "creating", e.source))?;
    let mut bytes = [0u8; KEY_HEX_LEN / 2];
    OsRng.fill_bytes(&mut bytes);
    let key = hex::encode(bytes);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    let mut file = match file {
        Ok(f) => f,
        // Another coinop with the same payment got there first: use its key.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Ok((read_key(path)?, true))
        }
        Err(e) => return Err(io_exit(path, "creating", e)),
    };
    writeln!(file, "{key}")
        .and_then(|()| file.sync_all())
        .map_err(|e| io_exit(path, "writing", e))?;
    // The file's name must survive a crash too, or the key is lost with it.
    durable::sync_parent(path).map_err(|e| io_exit(&e.path, "syncing", e.source))?;
    Ok((key, false))
}

/// Where the payment of the create whose key is kept at `key` is kept: beside it.
pub fn payment_path(key: &Path) -> PathBuf {
    key.with_extension("payment.json")
}

/// Writes `payment` (the request's JSON payment object, which `--payment FILE` reads back)
/// to `path`, mode 0600 (until the create commits it is bearer money), synced with its
/// directory, unless a run before this one kept it there already.
fn keep_payment(path: &Path, payment: &PaymentBody) -> Result<(), Exit> {
    if path.exists() {
        return Ok(());
    }
    let json = serde_json::to_vec(payment)
        .map_err(|e| Exit::usage(format!("cannot encode the payment: {e}")))?;
    let tmp = path.with_extension("tmp");
    durable::replace(path, &tmp, &json).map_err(|e| io_exit(&e.path, "writing", e.source))
}

/// Sends the create with its recovery key, resending up to `retries` times while coinopd
/// cannot be reached, and shows the answer.
pub async fn run(
    c: &Client,
    mut req: CreateRequest,
    key_file: Option<PathBuf>,
    retries: u32,
    json_mode: bool,
) -> Result<(), Exit> {
    let path = match key_file {
        Some(p) => p,
        None => default_key_path(&req.payment)?,
    };
    let (key, retry) = load_or_create(&path)?;
    if retry {
        note(&format!(
            "resending an earlier create with its recovery key ({})",
            path.display()
        ));
    }
    // The payment beside the key: a payment piped in (`coinop wallet pay | coinop lease
    // create --payment -`) is not there for "the same command again", which would pay anew.
    let kept_payment = payment_path(&path);
    keep_payment(&kept_payment, &req.payment)?;
    req.recovery_key = Some(key);
    let call = create_call(&req)?;
    let mut attempt = 0;
    let lost = |e: ClientError| {
        Exit::unreachable(format!(
            "{e}; the payment may already be spent on a lease: run the same command again \
             to get it back (its recovery key is kept in {}; the payment in {}: give \
             `--payment {}` instead if it came from a pipe)",
            path.display(),
            kept_payment.display(),
            kept_payment.display()
        ))
    };
    let reply = loop {
        match c
            .call(
                call.method,
                &call.path,
                call.token.as_deref(),
                call.body.clone(),
            )
            .await
        {
            Ok(r) => break r,
            // A daemon that did not answer in time is still working on it, or stuck:
            // sending it the same create again would only wait as long once more.
            Err(e @ ClientError::Timeout { .. }) => return Err(lost(e)),
            // Not coinopd's answer, or a broken one: whatever the create did, its
            // recovery key is kept for the same command run again.
            Err(e @ (ClientError::ReplyTooLarge { .. } | ClientError::Body(_))) => {
                return Err(lost(e))
            }
            Err(e @ (ClientError::Connect { .. } | ClientError::Http(_))) => {
                if attempt >= retries {
                    return Err(lost(e));
                }
                attempt += 1;
                tokio::time::sleep(RESEND_PAUSE).await;
            }
            Err(e) => return Err(Exit::from_client(e)),
        }
    };
    finish(&reply, &path, print_reply(&reply, View::Created, json_mode))
}

/// Settles a create whose answer `written` tells whether it reached stdout: the recovery key
/// in `path` is dropped only once a definitive answer was shown. A lease whose token did
/// not reach the tenant (a full disk, a closed pipe) is theirs only through the key: it is
/// kept, and the exit says to run the same command again, which gets the lease back.
fn finish(reply: &Reply, path: &Path, written: std::io::Result<()>) -> Result<(), Exit> {
    match written {
        Ok(()) => {
            // Below 500 the answer is definitive: the lease and token were shown, or the
            // payment made no lease with this key. 5xx (host full, boot failed) may be worth
            // a rerun. Except 409 `already_spent`: on a fleet it is also the answer to a
            // copy of a create still being made (its payment `Pending`), whose lease this
            // key is then the only way back to once it commits.
            if reply.status < 500 {
                if !maybe_in_flight(reply) {
                    if let Err(e) = std::fs::remove_file(path) {
                        // Harmless (a rerun gets the same lease with a new token), but said.
                        note(&format!("note: cannot remove {}: {e}", path.display()));
                    }
                    // Spent on the lease shown, or refused for good: no longer needed.
                    let _ = std::fs::remove_file(payment_path(path));
                } else if reply.text().contains("Pending") {
                    // Said only when the daemon's message names the state (its text is not
                    // a contract; the key is kept on any such 409 all the same).
                    note(&format!(
                        "note: the recovery key is kept in {}: if a create with this payment \
                         is still being made (a reply lost), run the same command again to \
                         get its lease",
                        path.display()
                    ));
                }
            }
            outcome(reply)
        }
        // A refusal is told on stderr with its own exit; the key is kept all the same (a
        // rerun is answered the same way and drops it then).
        Err(_) if !(200..300).contains(&reply.status) => outcome(reply),
        Err(e) => Err(Exit::output(
            &e,
            &format!(
                "the lease was made but its token is not shown; its recovery key is kept in \
                 {}: run the same command again to get the lease and a token back",
                path.display()
            ),
        )),
    }
}

/// Whether `reply` may be the answer to a copy of a create still in flight: 409
/// `already_spent` (the daemon names the payment's state in the message, which is text, not
/// a contract, so any such 409 counts).
fn maybe_in_flight(reply: &Reply) -> bool {
    reply.status == 409
        && reply
            .parse::<coinop_proto::replies::ErrorBody>()
            .is_ok_and(|b| b.error.code == "already_spent")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_written_before_use_and_read_back_on_a_retry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("creates").join("x.key");
        let (key, retry) = load_or_create(&path).expect("new key");
        assert!(!retry);
        assert_eq!(key.len(), KEY_HEX_LEN);
        let mode = std::fs::metadata(&path).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(&path).expect("again"), (key, true));
        std::fs::write(&path, "not a key\n").expect("spoil");
        assert_eq!(load_or_create(&path).expect_err("bad key").code, 2);
    }

    fn reply(status: u16) -> Reply {
        Reply {
            status,
            body: br#"{"lease_id":"l1","token":"t1"}"#.as_slice().into(),
        }
    }

    /// Shows `r` on /dev/full, a real device that refuses every write (ENOSPC), as a
    /// full disk or a closed pipe on stdout would, and settles the create with the result.
    fn finish_on_dev_full(r: &Reply, key: &Path) -> Result<(), Exit> {
        let mut full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        finish(r, key, crate::exit::write_raw(&mut full, &r.body))
    }

    #[test]
    fn the_key_is_kept_when_the_lease_could_not_be_shown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("x.key");
        load_or_create(&key).expect("key");
        for status in [200, 201] {
            let err = finish_on_dev_full(&reply(status), &key).expect_err("not shown");
            assert_eq!(err.code, crate::exit::OUTPUT, "{}", err.message);
            assert!(key.exists(), "the only way back to the lease is kept");
            assert!(
                err.message.contains(&key.display().to_string())
                    && err.message.contains("run the same command again"),
                "{}",
                err.message
            );
        }
        // A refusal not shown is still exit 1; the key stays for the rerun to drop.
        let err = finish_on_dev_full(&reply(409), &key).expect_err("refused");
        assert_eq!(err.code, crate::exit::DAEMON_ERROR);
        assert!(key.exists());
        // A 409 `already_spent` may answer a copy of a create still in flight (a fleet's
        // `Pending`): the key is kept for the rerun that gets that lease.
        let pending = Reply {
            status: 409,
            body:
                br#"{"error":{"code":"already_spent","message":"Outpoint 00 is already Pending"}}"#
                    .as_slice()
                    .into(),
        };
        let mut out = Vec::new();
        let written = crate::exit::write_raw(&mut out, &pending.body);
        let err = finish(&pending, &key, written).expect_err("refused");
        assert_eq!(err.code, crate::exit::DAEMON_ERROR);
        assert!(key.exists(), "kept after a 409 already_spent");
        // Another refusal (here a bad spec) is definitive: dropped.
        let bad = Reply {
            status: 400,
            body: br#"{"error":{"code":"invalid_spec","message":"no"}}"#
                .as_slice()
                .into(),
        };
        let written = crate::exit::write_raw(&mut out, &bad.body);
        finish(&bad, &key, written).expect_err("refused");
        assert!(!key.exists(), "dropped after a definitive refusal");
        load_or_create(&key).expect("key again");
        // Shown (written and flushed): a definitive answer drops the key.
        let mut out = Vec::new();
        let written = crate::exit::write_raw(&mut out, &reply(201).body);
        finish(&reply(201), &key, written).expect("shown");
        assert!(!key.exists(), "dropped once the lease was shown");
    }

    fn credit(secret: &str) -> PaymentBody {
        PaymentBody::Credit(coinop_proto::requests::CreditPayment {
            proofs: vec![payment::credit::nut_types::Proof {
                amount: 4,
                id: "00ffd48b8f5ecf80".into(),
                secret: secret.into(),
                c: "02aa".into(),
                witness: None,
                dleq: None,
            }],
        })
    }

    #[test]
    fn the_payment_is_kept_beside_the_key_until_a_definitive_answer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("creates").join("x.key");
        load_or_create(&key).expect("key");
        let kept = payment_path(&key);
        assert_eq!(kept, dir.path().join("creates").join("x.payment.json"));
        keep_payment(&kept, &credit("s1")).expect("kept");
        // What `--payment FILE` reads back is the same payment.
        let back: PaymentBody =
            serde_json::from_slice(&std::fs::read(&kept).expect("read")).expect("a payment");
        assert_eq!(back, credit("s1"));
        let mode = std::fs::metadata(&kept).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A rerun keeps the first run's file as it is.
        keep_payment(&kept, &credit("s2")).expect("kept before");
        let back: PaymentBody =
            serde_json::from_slice(&std::fs::read(&kept).expect("read")).expect("a payment");
        assert_eq!(back, credit("s1"));
        let mut out = Vec::new();
        let written = crate::exit::write_raw(&mut out, &reply(201).body);
        finish(&reply(201), &key, written).expect("shown");
        assert!(!key.exists() && !kept.exists(), "both dropped once shown");
    }

    #[test]
    fn the_default_file_is_named_after_the_payment() {
        let a = default_key_path(&credit("s1")).expect("path");
        let b = default_key_path(&credit("s2")).expect("path");
        assert_ne!(a, b);
        assert_eq!(a, default_key_path(&credit("s1")).expect("path"));
    }

    #[test]
    fn the_file_name_hashes_the_same_text_as_earlier_coinops() {
        // Earlier coinops built the payment with json! and hashed its printed form; a
        // create they left behind must be found under the same name.
        let earlier = serde_json::json!({"credit": {"proofs": [{"amount": 4,
            "id": "00ffd48b8f5ecf80", "secret": "s1", "C": "02aa"}]}})
        .to_string();
        let digest = sha256::Hash::hash(earlier.as_bytes()).to_byte_array();
        let name = format!("{}.key", hex::encode(&digest[..16]));
        let path = default_key_path(&credit("s1")).expect("path");
        assert_eq!(path.file_name(), Some(std::ffi::OsStr::new(&name)));
    }
}
