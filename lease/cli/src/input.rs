//! Reading what the CLI sends from files or stdin (`-`): payment JSON, Cashu proofs and
//! tokens, hex, and block headers. Every failure is a usage error naming the file and what was wrong.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use coinop_proto::requests::CreditPayment;
use payment::credit::nut_types::Proof;
use payment::credit::token::Token;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::exit::Exit;

/// Largest input file read (a payment, proofs, or a header batch).
const MAX_INPUT: u64 = 64 << 20;

/// The text of FILE, or of stdin for `-`.
pub fn read_text(name: &str) -> Result<String, Exit> {
    let mut bytes = Vec::new();
    // One byte past the limit tells a file that is too large from one that fills it
    // exactly. Cut at the limit, a larger file would be read as a shorter one: refused with
    // a parse error that points at the cut, or, cut between two lines of headers, taken
    // as a shorter list.
    if name != "-" {
        return read_path(Path::new(name));
    }
    std::io::stdin()
        .take(MAX_INPUT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Exit::usage(format!("reading {name}: {e}")))?;
    text_of(name, bytes)
}

/// How long a FIFO or device given as a file may keep coinop waiting for its next bytes.
/// A FIFO nobody writes to would block its reader forever; this is far longer than a
/// writer such as `<(coinop wallet pay ...)` takes, yet ends the run.
const PIPE_IDLE: Duration = Duration::from_secs(60);

/// The text of the file at `path`; a FIFO (a named pipe, `<(...)`) or device is read as
/// its writer sends, for as long as bytes keep coming within [`PIPE_IDLE`].
pub fn read_path(path: &Path) -> Result<String, Exit> {
    read_path_waiting(path, PIPE_IDLE)
}

fn read_path_waiting(path: &Path, idle: Duration) -> Result<String, Exit> {
    let name = path.display();
    let reading = |e: std::io::Error| Exit::usage(format!("reading {name}: {e}"));
    // Non-blocking, so that opening a FIFO does not wait for a writer; a regular file or
    // directory reads as ever (O_NONBLOCK means nothing to them).
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(reading)?;
    let kind = file.metadata().map_err(reading)?.file_type();
    let mut bytes = Vec::new();
    if kind.is_file() || kind.is_dir() {
        (&mut file)
            .take(MAX_INPUT + 1)
            .read_to_end(&mut bytes)
            .map_err(reading)?;
        return text_of(&name.to_string(), bytes);
    }
    let timeout = PollTimeout::try_from(idle)
        .map_err(|_| Exit::usage(format!("reading {name}: wait of {idle:?} too long")))?;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        // Polled before every read: a FIFO that never had a writer reads as end-of-file
        // at once, but is not readable to poll until a writer has written or left.
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => {
                return Err(Exit::usage(format!(
                    "reading {name}: nothing came in {} s (a FIFO with no writer?)",
                    idle.as_secs_f64()
                )))
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(reading(e.into())),
        }
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                bytes.extend_from_slice(&chunk[..n]);
                if bytes.len() as u64 > MAX_INPUT {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(reading(e)),
        }
    }
    text_of(&name.to_string(), bytes)
}

/// The bytes read from `name` as text, refused when they are more than [`MAX_INPUT`].
fn text_of(name: &str, bytes: Vec<u8>) -> Result<String, Exit> {
    if bytes.len() as u64 > MAX_INPUT {
        return Err(Exit::usage(format!(
            "{name} is larger than {} MiB, the most coinop reads as a payment, token, \
             seed phrase or header file",
            MAX_INPUT >> 20
        )));
    }
    String::from_utf8(bytes)
        .map_err(|e| Exit::usage(format!("reading {name}: not UTF-8 text ({e})")))
}

/// FILE's JSON as `T`; `what` names it in the error (e.g. "a payment object").
pub fn read_json<T: DeserializeOwned>(name: &str, what: &str) -> Result<T, Exit> {
    serde_json::from_str(&read_text(name)?)
        .map_err(|e| Exit::usage(format!("{name} is not {what}: {e}")))
}

/// The shapes a file of Cashu proofs may have.
#[derive(Deserialize)]
#[serde(untagged)]
enum ProofsFile {
    Bare(Vec<Proof>),
    Listed { proofs: Vec<Proof> },
    Payment { credit: CreditPayment },
}

/// Whether `text` looks like a Cashu token rather than JSON.
fn is_token(text: &str) -> bool {
    let t = text.trim();
    ["cashuA", "cashuB", "cashu:"]
        .iter()
        .any(|p| t.starts_with(p))
}

/// Whether a command-line argument is a token itself (and not the name of a file).
fn is_token_arg(arg: &str) -> bool {
    is_token(arg) && !std::path::Path::new(arg).exists()
}

/// A token given as itself, in a FILE, or on stdin (`-`).
pub fn read_token(arg: &str) -> Result<String, Exit> {
    if is_token_arg(arg) {
        return Ok(arg.trim().to_string());
    }
    let text = read_text(arg)?;
    if !is_token(&text) {
        return Err(Exit::usage(format!(
            "{arg}: expected a Cashu token (cashuA... or cashuB...)"
        )));
    }
    Ok(text.trim().to_string())
}

/// Cashu proofs from a token (given as itself or in FILE), or from FILE's JSON: an array
/// of proofs, `{"proofs": [...]}`, or a whole `{"credit": {"proofs": [...]}}` payment.
pub fn read_proofs(name: &str) -> Result<Vec<Proof>, Exit> {
    let text = if is_token_arg(name) {
        name.to_string()
    } else {
        read_text(name)?
    };
    if is_token(&text) {
        return Token::decode(&text)
            .map(|t| t.proofs)
            .map_err(|e| Exit::usage(format!("--credit: {e}")));
    }
    let proofs = match serde_json::from_str(&text) {
        Ok(ProofsFile::Bare(p) | ProofsFile::Listed { proofs: p }) => p,
        Ok(ProofsFile::Payment { credit }) => credit.proofs,
        // An untagged enum's error only says that no shape matched; the message below
        // names the shapes instead.
        Err(_) => Vec::new(),
    };
    if proofs.is_empty() {
        return Err(Exit::usage(format!(
            "{name}: expected a Cashu token, or a non-empty JSON array of Cashu proofs (or {{\"proofs\": [...]}})"
        )));
    }
    Ok(proofs)
}

/// A hex argument, given inline or as `@FILE` (`@-` for stdin).
pub fn read_hex(flag: &str, value: &str) -> Result<String, Exit> {
    let text = match value.strip_prefix('@') {
        Some(file) => read_text(file)?,
        None => value.to_string(),
    };
    let hex = text.trim().to_string();
    if hex.is_empty() || hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Exit::usage(format!(
            "{flag}: expected hex (an even number of 0-9a-f digits), or @FILE"
        )));
    }
    Ok(hex)
}

/// Block headers from FILE: hex, one per line, or a JSON array of hex strings.
pub fn read_headers(name: &str) -> Result<Vec<String>, Exit> {
    let text = read_text(name)?;
    if let Ok(h) = serde_json::from_str::<Vec<String>>(&text) {
        return Ok(h);
    }
    let headers: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if let Some((i, bad)) = headers
        .iter()
        .enumerate()
        .find(|(_, h)| h.len() != 160 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(Exit::usage(format!(
            "{name}: line {}: expected an 80-byte header as 160 hex digits, got {} characters",
            i + 1,
            bad.len()
        )));
    }
    if headers.is_empty() {
        return Err(Exit::usage(format!("{name}: no headers")));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `len` zero bytes, sparse: it takes no room on disk.
    fn sparse(dir: &std::path::Path, len: u64) -> String {
        let path = dir.join(format!("{len}.bin"));
        let f = std::fs::File::create(&path).expect("create");
        f.set_len(len).expect("set_len");
        path.to_str().expect("a UTF-8 temp path").to_string()
    }

    #[test]
    fn a_file_over_the_limit_is_refused_as_too_large_not_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let at_limit = read_text(&sparse(dir.path(), MAX_INPUT)).expect("the limit itself");
        assert_eq!(at_limit.len() as u64, MAX_INPUT);
        let over = sparse(dir.path(), MAX_INPUT + 1);
        let err = read_text(&over).expect_err("over the limit");
        assert_eq!(err.code, crate::exit::USAGE);
        assert!(
            err.message.contains(&over) && err.message.contains("larger than 64 MiB"),
            "{}",
            err.message
        );
    }

    fn fifo(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        path
    }

    /// A FIFO nobody writes to is given up with an error naming it, instead of blocking
    /// coinop forever (as opening it for reading would).
    #[test]
    fn a_fifo_without_a_writer_is_given_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fifo(dir.path());
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        // On a thread: before the fix the read never returns, and the test must fail, not
        // hang with it.
        std::thread::spawn(move || {
            let _ = tx.send(read_path_waiting(&p, Duration::from_millis(200)));
        });
        let err = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the read ends by itself")
            .expect_err("nothing to read");
        assert_eq!(err.code, crate::exit::USAGE);
        assert!(
            err.message.contains(&path.display().to_string())
                && err.message.contains("nothing came"),
            "{}",
            err.message
        );
    }

    /// A FIFO with a writer (what `<(coinop wallet pay ...)` gives) is read to its end,
    /// though the writer comes late and writes in pieces.
    #[test]
    fn a_fifo_is_read_as_its_writer_sends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fifo(dir.path());
        let p = path.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .expect("open for writing");
            use std::io::Write;
            w.write_all(b"cashuB").expect("write");
            w.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(100));
            w.write_all(b"xyz\n").expect("write");
        });
        let text = read_path_waiting(&path, Duration::from_secs(20)).expect("read");
        assert_eq!(text, "cashuBxyz\n");
        writer.join().expect("writer");
    }
}
