//! Client of coinop-vmm's JSON-lines control socket: one request line, one reply line, per
//! connection (the VMM serves clients in turn, so coinopd never holds the socket open).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// A control request never waits longer than this: a wedged VMM must not stall the tick.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);
/// Replies are short JSON objects; anything longer is a broken peer.
const MAX_REPLY: usize = 64 * 1024;

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
    #[error("control socket {path}: no reply within {CONTROL_TIMEOUT:?}")]
    Timeout { path: String },
    #[error("control socket {path}: bad reply {reply:?}")]
    BadReply { path: String, reply: String },
    #[error("control socket {path}: VMM refused {cmd}: {error}")]
    Refused {
        path: String,
        cmd: String,
        error: String,
    },
}

impl ControlError {
    pub fn is_gone(&self) -> bool {
        matches!(self, ControlError::Gone { .. })
    }
}

/// `usage` reply.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub vcpu_total_us: u64,
    pub mem_mib: u64,
    pub uptime_us: u64,
}

/// Sends `{"cmd": cmd, ..extra}` and returns the reply object (with `ok: true`).
pub async fn request(
    path: &Path,
    cmd: &str,
    extra: Option<(&str, &str)>,
) -> Result<Value, ControlError> {
    let shown = path.display().to_string();
    match tokio::time::timeout(CONTROL_TIMEOUT, exchange(path, cmd, extra)).await {
        Ok(r) => r,
        Err(_) => Err(ControlError::Timeout { path: shown }),
    }
}

async fn exchange(
    path: &Path,
    cmd: &str,
    extra: Option<(&str, &str)>,
) -> Result<Value, ControlError> {
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
    let mut msg = json!({ "cmd": cmd });
    if let Some((k, v)) = extra {
        msg[k] = Value::String(v.to_string());
    }
    let mut line = msg.to_string();
    line.push('\n');
    let io = |source| ControlError::Io {
        path: shown(),
        source,
    };
    stream.write_all(line.as_bytes()).await.map_err(io)?;
    let mut reader = BufReader::new(stream).take(MAX_REPLY as u64);
    let mut reply = String::new();
    reader.read_line(&mut reply).await.map_err(io)?;
    let value: Value = serde_json::from_str(reply.trim()).map_err(|_| ControlError::BadReply {
        path: shown(),
        reply: reply.chars().take(200).collect(),
    })?;
    if value.get("ok") != Some(&Value::Bool(true)) {
        return Err(ControlError::Refused {
            path: shown(),
            cmd: cmd.to_string(),
            error: value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .to_string(),
        });
    }
    Ok(value)
}

pub async fn usage(path: &Path) -> Result<Usage, ControlError> {
    let v = request(path, "usage", None).await?;
    serde_json::from_value(v.clone()).map_err(|_| ControlError::BadReply {
        path: path.display().to_string(),
        reply: v.to_string(),
    })
}
