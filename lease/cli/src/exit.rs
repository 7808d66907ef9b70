//! Exit codes scripts can rely on, and the one-line message that goes with each.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the daemon answered with an HTTP error; `coinop: HTTP <status> <code>: <message>` |
//! | 2 | usage: a bad flag or argument, or an input file that cannot be read or parsed |
//! | 3 | the daemon cannot be reached (no socket, refused, connection lost, no answer within `--timeout`) |
//! | 4 | the answer could not be written to stdout (a closed pipe, a full disk) |

use std::io::Write;

use coinop_proto::ErrorBody;
// A daemon's strings keep their lines but cannot carry escape sequences to the terminal.
use payment::text::printable_lines;

use crate::client::{ClientError, Reply};
use crate::regtest_pay::PayError;

pub const OK: u8 = 0;
pub const DAEMON_ERROR: u8 = 1;
pub const USAGE: u8 = 2;
pub const UNREACHABLE: u8 = 3;
/// The daemon answered but its answer could not be written out. A code of its own: a
/// script must not take it for "the daemon refused" (1) and act on that.
pub const OUTPUT: u8 = 4;

/// The exit-code table as `--help` shows it.
pub const HELP: &str = "\
Exit codes:
  0  success
  1  the daemon answered with an HTTP error (stderr: `coinop: HTTP <status> <code>: <message>`;
     with --json the daemon's error body is also printed on stdout)
  2  usage: bad flag or argument, unreadable or malformed input file
  3  cannot reach the daemon (no socket, connection refused or lost, no answer within
     --timeout)
  4  the answer could not be written to stdout (closed pipe, full disk); stderr says
     how to get it again";

/// A failed run: its exit code and one line for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    pub fn usage(message: impl Into<String>) -> Exit {
        Exit {
            code: USAGE,
            message: message.into(),
        }
    }

    pub fn unreachable(message: impl Into<String>) -> Exit {
        Exit {
            code: UNREACHABLE,
            message: message.into(),
        }
    }

    /// A non-2xx answer: `HTTP <status> <code>: <message>` from the daemon's error body.
    pub fn daemon(r: &Reply) -> Exit {
        let (code, msg) = match r.parse::<ErrorBody>() {
            Ok(b) => (
                printable_lines(&b.error.code),
                printable_lines(
                    &b.error
                        .message
                        .chars()
                        .take(MESSAGE_CHARS)
                        .collect::<String>(),
                ),
            ),
            // Not coinop's error shape (e.g. a route this daemon does not have): its text.
            Err(_) => ("unknown_error".to_string(), one_line(&r.text())),
        };
        Exit {
            code: DAEMON_ERROR,
            message: format!("HTTP {} {code}: {msg}", r.status),
        }
    }

    /// Stdout refused the answer. `again` says how the tenant gets it back (what was kept
    /// and which command shows it): the answer may be money (a token, a lease's key).
    pub fn output(e: &std::io::Error, again: &str) -> Exit {
        Exit {
            code: OUTPUT,
            message: format!("cannot write the answer to stdout: {e}; {again}"),
        }
    }

    pub fn from_client(e: ClientError) -> Exit {
        match e {
            ClientError::Request(e) => Exit::usage(format!("bad request: {e}")),
            other => Exit::unreachable(other.to_string()),
        }
    }

    pub fn from_pay(e: PayError) -> Exit {
        match e {
            PayError::Client(c) => Exit::from_client(c),
            other => Exit {
                code: DAEMON_ERROR,
                message: other.to_string(),
            },
        }
    }
}

/// Most characters of a daemon's error message shown.
const MESSAGE_CHARS: usize = 2000;

fn one_line(text: &str) -> String {
    let t = text.trim();
    let first = t.lines().next().unwrap_or("");
    if first.is_empty() {
        "(empty body)".to_string()
    } else {
        printable_lines(&first.chars().take(300).collect::<String>())
    }
}

/// Writes the body exactly as the daemon sent it, with a final newline for terminals, and
/// flushes it: only a body that reached stdout counts as shown (a caller may drop the only
/// other copy of what it holds once it has).
pub fn print_raw(body: &[u8]) -> std::io::Result<()> {
    write_raw(&mut std::io::stdout().lock(), body)
}

/// [`print_raw`] onto any writer (the tests' failing ones too).
pub fn write_raw(out: &mut impl Write, body: &[u8]) -> std::io::Result<()> {
    out.write_all(body)?;
    if !body.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// One line of text on stdout, flushed; unlike `println!`, a closed or full stdout is an
/// error to handle, not a panic.
pub fn print_line(text: &str) -> std::io::Result<()> {
    print_raw(text.as_bytes())
}

/// A note for the user on stderr. Its failure is ignored: stderr is where errors would be
/// told, so there is nowhere left to say it, and a note is never the answer itself
/// (`eprintln!` would panic instead).
pub fn note(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "coinop: {}", printable_lines(text));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemons_escape_sequences_do_not_reach_the_terminal() {
        let r = Reply {
            status: 409,
            body: "{\"error\":{\"code\":\"x\",\"message\":\"\\u001b]0;owned\\u0007hi\"}}"
                .as_bytes()
                .into(),
        };
        let e = Exit::daemon(&r);
        assert!(!e.message.contains('\u{1b}'), "{:?}", e.message);
        assert!(
            e.message.contains("\\u{1b}]0;owned\\u{7}hi"),
            "{:?}",
            e.message
        );
        assert_eq!(printable_lines("a\nb\tc"), "a\nb\tc");
    }

    /// A stdout that takes nothing, like /dev/full or a pipe whose reader has gone.
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(
                nix::errno::Errno::ENOSPC as i32,
            ))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A writer that buffers and fails only when flushed: the error must still come out.
    struct FailsOnFlush(Vec<u8>);

    impl Write for FailsOnFlush {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
    }

    #[test]
    fn a_body_that_cannot_be_written_is_an_error() {
        assert!(write_raw(&mut Full, b"{}").is_err());
        assert!(write_raw(&mut FailsOnFlush(Vec::new()), b"{}").is_err());
        let mut ok = Vec::new();
        write_raw(&mut ok, b"{}").expect("a Vec takes it");
        assert_eq!(ok, b"{}\n");
    }
}
