//! An async client of the control socket (feature `client`): one request line, one reply
//! line, per connection (the VMM serves clients in turn, so a caller never holds the socket
//! open). coinopd meters and stops guests with it; the benchmark harness reads usage.

use std::path::Path;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::{Reply, Request, Status, Usage, VmState};

/// A control request never waits longer than this: a wedged VMM must not stall its caller.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);
/// Replies are short JSON objects; anything longer is a broken peer.
const MAX_REPLY: u64 = 64 * 1024;

#[derive(Debug, Error)]
pub enum ControlError {
    /// Nothing listens at the socket: the VMM has exited.
    #[error("control socket {path}: VMM gone ({source})")]
    Gone {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket {path}: no reply within {waited:?}")]
    Timeout { path: String, waited: Duration },
    #[error("control socket {path}: bad reply {reply:?}")]
    BadReply { path: String, reply: String },
    #[error("control socket {path}: VMM refused {cmd}: {error}")]
    Refused {
        path: String,
        cmd: &'static str,
        error: String,
    },
}

impl ControlError {
    /// The VMM is not there any more (as opposed to there but failing).
    pub fn is_gone(&self) -> bool {
        matches!(self, ControlError::Gone { .. })
    }
}

/// Sends `req` and returns the VMM's answer; a refusal is [`ControlError::Refused`].
pub async fn request(path: &Path, req: &Request) -> Result<Reply, ControlError> {
    request_within(path, req, CONTROL_TIMEOUT).await
}

/// [`request`] for a command whose work the VMM does before it replies and which grows
/// with the guest (a `snapshot` writes all of guest memory): `wait` instead of the usual
/// short bound.
pub async fn request_within(
    path: &Path,
    req: &Request,
    wait: Duration,
) -> Result<Reply, ControlError> {
    let shown = path.display().to_string();
    match tokio::time::timeout(wait, exchange(path, req)).await {
        Ok(r) => r,
        Err(_) => Err(ControlError::Timeout {
            path: shown,
            waited: wait,
        }),
    }
}

async fn exchange(path: &Path, req: &Request) -> Result<Reply, ControlError> {
    let shown = || path.display().to_string();
    let mut stream = UnixStream::connect(path).await.map_err(|source| {
        if matches!(
            source.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        ) {
            ControlError::Gone {
                path: shown(),
                source,
            }
        } else {
            ControlError::Io {
                path: shown(),
                source,
            }
        }
    })?;
    let io = |source| ControlError::Io {
        path: shown(),
        source,
    };
    stream
        .write_all(req.to_line().as_bytes())
        .await
        .map_err(io)?;
    let mut reader = BufReader::new(stream).take(MAX_REPLY);
    let mut line = String::new();
    reader.read_line(&mut line).await.map_err(io)?;
    let bad = || ControlError::BadReply {
        path: shown(),
        reply: line.chars().take(200).collect(),
    };
    match Reply::from_line(&line).map_err(|_| bad())? {
        Reply::Error(error) => Err(ControlError::Refused {
            path: shown(),
            cmd: req.cmd(),
            error,
        }),
        reply => Ok(reply),
    }
}

/// `usage`: what metering bills.
pub async fn usage(path: &Path) -> Result<Usage, ControlError> {
    match request(path, &Request::Usage).await? {
        Reply::Usage(u) => Ok(u),
        other => Err(unexpected(path, &other)),
    }
}

/// `status`.
pub async fn status(path: &Path) -> Result<Status, ControlError> {
    match request(path, &Request::Status).await? {
        Reply::Status(s) => Ok(s),
        other => Err(unexpected(path, &other)),
    }
}

/// `pause`, `resume` or `stop`: the state the guest is now asked to be in.
pub async fn set_state(path: &Path, req: Request) -> Result<VmState, ControlError> {
    match request(path, &req).await? {
        Reply::State(s) => Ok(s),
        other => Err(unexpected(path, &other)),
    }
}

/// `personalise`: hands the guest its per-lease line; `Ok` once the VMM has queued it (it
/// reaches the guest once the guest awaits it: event `awaiting_personalisation`). A bad or
/// second line is [`ControlError::Refused`].
pub async fn personalise(path: &Path, line: &str) -> Result<(), ControlError> {
    let req = Request::Personalise {
        line: line.to_string(),
    };
    match request(path, &req).await? {
        Reply::Done => Ok(()),
        other => Err(unexpected(path, &other)),
    }
}

/// `ring`: the guest, still waiting for its line, is told it has time to spare (see
/// [`Request::Ring`]). A guest that already has its line is [`ControlError::Refused`].
pub async fn ring(path: &Path) -> Result<(), ControlError> {
    match request(path, &Request::Ring).await? {
        Reply::Done => Ok(()),
        other => Err(unexpected(path, &other)),
    }
}

fn unexpected(path: &Path, reply: &Reply) -> ControlError {
    ControlError::BadReply {
        path: path.display().to_string(),
        reply: reply.to_line().trim_end().to_string(),
    }
}
