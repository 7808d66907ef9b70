//! Exit codes scripts can rely on, and the one-line message that goes with each.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the daemon answered with an HTTP error; `coinop: HTTP <status> <code>: <message>` |
//! | 2 | usage: a bad flag or argument, or an input file that cannot be read or parsed |
//! | 3 | the daemon cannot be reached (no socket, refused, connection lost) |

use std::io::Write;

use coinop_proto::ErrorBody;

use crate::client::{ClientError, Reply};
use crate::regtest_pay::PayError;

pub const OK: u8 = 0;
pub const DAEMON_ERROR: u8 = 1;
pub const USAGE: u8 = 2;
pub const UNREACHABLE: u8 = 3;

/// The exit-code table as `--help` shows it.
pub const HELP: &str = "\
Exit codes:
  0  success
  1  the daemon answered with an HTTP error (stderr: `coinop: HTTP <status> <code>: <message>`;
     with --json the daemon's error body is also printed on stdout)
  2  usage: bad flag or argument, unreadable or malformed input file
  3  cannot reach the daemon (no socket, connection refused or lost)";

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
            Ok(b) => (b.error.code, b.error.message),
            // Not coinop's error shape (e.g. a route this daemon does not have): its text.
            Err(_) => ("unknown_error".to_string(), one_line(&r.text())),
        };
        Exit {
            code: DAEMON_ERROR,
            message: format!("HTTP {} {code}: {msg}", r.status),
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

fn one_line(text: &str) -> String {
    let t = text.trim();
    let first = t.lines().next().unwrap_or("");
    if first.is_empty() {
        "(empty body)".to_string()
    } else {
        first.chars().take(300).collect()
    }
}

/// Writes the body exactly as the daemon sent it, with a final newline for terminals.
pub fn print_raw(body: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(body);
    if !body.ends_with(b"\n") {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}
