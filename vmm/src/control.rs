//! The control socket: a Unix stream listener served by one small thread, speaking the
//! JSON-lines protocol documented at the crate root. Clients are served one at a time.

use crate::cli::ControlSocket;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

/// Longest request line accepted; a longer one ends the connection.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// Errors setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the path failed.
    #[error("--control {path}: {source}")]
    Bind {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Starting the thread failed.
    #[error("starting the control thread: {0}")]
    Thread(std::io::Error),
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// State, vCPUs, memory, uptime.
    Status,
    /// Pause all vCPUs.
    Pause,
    /// Resume them.
    Resume,
    /// CPU time per vCPU.
    Usage,
    /// Text for COM1.
    ConsoleInput(String),
    /// End the VM.
    Stop,
}

/// Parses one request line; the error is the reply's `error` text.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| format!("request is not JSON: {e}"))?;
    let cmd = value
        .get("cmd")
        .and_then(Value::as_str)
        .ok_or_else(|| "request needs a string field 'cmd'".to_string())?;
    match cmd {
        "status" => Ok(Request::Status),
        "pause" => Ok(Request::Pause),
        "resume" => Ok(Request::Resume),
        "usage" => Ok(Request::Usage),
        "stop" => Ok(Request::Stop),
        "console_input" => value
            .get("data")
            .and_then(Value::as_str)
            .map(|d| Request::ConsoleInput(d.to_string()))
            .ok_or_else(|| "console_input needs a string field 'data'".to_string()),
        other => Err(format!("unknown command '{other}'")),
    }
}

/// What the control thread acts on: the running VM.
pub trait ControlTarget: Send + Sync {
    /// Reply to `status`.
    fn status(&self) -> Value;
    /// Pause; reply.
    fn pause(&self) -> Value;
    /// Resume; reply.
    fn resume(&self) -> Value;
    /// Reply to `usage`.
    fn usage(&self) -> Value;
    /// Queue console input; reply.
    fn console_input(&self, data: &str) -> Value;
    /// End the VM (called after the `stop` reply is sent).
    fn stop(&self);
}

/// Opens the listener: binds a fresh socket at a path (replacing a stale socket file), or
/// adopts an inherited one.
pub fn listen(spec: &ControlSocket) -> Result<UnixListener, Error> {
    match spec {
        ControlSocket::Fd(fd) => {
            // SAFETY: the fd was checked to be open at argument validation and is handed to
            // us by the caller to own.
            Ok(unsafe { UnixListener::from_raw_fd(*fd) })
        }
        ControlSocket::Path(path) => {
            remove_stale_socket(path);
            UnixListener::bind(path).map_err(|source| Error::Bind {
                path: path.display().to_string(),
                source,
            })
        }
    }
}

fn remove_stale_socket(path: &Path) {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Serves clients on a new thread, forever.
pub fn spawn(listener: UnixListener, target: Arc<dyn ControlTarget>) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Control);
            for stream in listener.incoming().flatten() {
                serve_client(stream, target.as_ref());
            }
        })
        .map(|_| ())
        .map_err(Error::Thread)
}

/// Answers requests from one client until it hangs up.
pub fn serve_client(stream: UnixStream, target: &dyn ControlTarget) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_REQUEST_BYTES)
            .read_until(b'\n', &mut line);
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) if !line.ends_with(b"\n") && line.len() as u64 >= MAX_REQUEST_BYTES => {
                let reply = json!({"ok": false, "error": "request line too long"});
                let _ = writeln!(writer, "{reply}");
                return;
            }
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let request = parse_request(text);
        let reply = match &request {
            Ok(Request::Status) => target.status(),
            Ok(Request::Pause) => target.pause(),
            Ok(Request::Resume) => target.resume(),
            Ok(Request::Usage) => target.usage(),
            Ok(Request::ConsoleInput(data)) => target.console_input(data),
            Ok(Request::Stop) => json!({"ok": true, "state": "stopping"}),
            Err(error) => json!({"ok": false, "error": error}),
        };
        let sent = writeln!(writer, "{reply}").and_then(|_| writer.flush());
        if request == Ok(Request::Stop) {
            target.stop();
            return;
        }
        if sent.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn parses_every_command() {
        assert_eq!(parse_request(r#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(parse_request(r#"{"cmd":"pause"}"#), Ok(Request::Pause));
        assert_eq!(parse_request(r#"{"cmd":"resume"}"#), Ok(Request::Resume));
        assert_eq!(parse_request(r#"{"cmd":"usage"}"#), Ok(Request::Usage));
        assert_eq!(parse_request(r#"{"cmd":"stop"}"#), Ok(Request::Stop));
        assert_eq!(
            parse_request(r#"{"cmd":"console_input","data":"hi\n"}"#),
            Ok(Request::ConsoleInput("hi\n".into()))
        );
    }

    #[test]
    fn reports_bad_requests() {
        assert_eq!(
            parse_request(r#"{"cmd":"bogus"}"#),
            Err("unknown command 'bogus'".into())
        );
        assert!(parse_request("not json").is_err());
        assert!(parse_request(r#"{"cmd":7}"#).is_err());
        assert!(parse_request(r#"{"cmd":"console_input"}"#).is_err());
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl ControlTarget for Recorder {
        fn status(&self) -> Value {
            json!({"ok": true, "state": "running"})
        }
        fn pause(&self) -> Value {
            self.0.lock().expect("test lock").push("pause".into());
            json!({"ok": true, "state": "paused"})
        }
        fn resume(&self) -> Value {
            json!({"ok": true, "state": "running"})
        }
        fn usage(&self) -> Value {
            json!({"ok": true})
        }
        fn console_input(&self, data: &str) -> Value {
            self.0.lock().expect("test lock").push(data.into());
            json!({"ok": true})
        }
        fn stop(&self) {
            self.0.lock().expect("test lock").push("stop".into());
        }
    }

    #[test]
    fn serves_a_session_in_order_and_stops_after_replying() {
        let (client, server) = UnixStream::pair().expect("socketpair");
        let target = Recorder::default();
        let mut c = client.try_clone().expect("dup");
        c.write_all(b"{\"cmd\":\"pause\"}\n\n{\"cmd\":\"console_input\",\"data\":\"x\"}\n{\"cmd\":\"nope\"}\n{\"cmd\":\"stop\"}\n")
            .expect("write");
        serve_client(server, &target);
        let replies: Vec<Value> = BufReader::new(client)
            .lines()
            .map(|l| serde_json::from_str(&l.expect("line")).expect("JSON reply"))
            .collect();
        assert_eq!(replies.len(), 4);
        assert_eq!(replies[0]["state"], "paused");
        assert_eq!(replies[2]["ok"], false);
        assert_eq!(replies[3]["state"], "stopping");
        assert_eq!(
            *target.0.lock().expect("test lock"),
            vec!["pause", "x", "stop"]
        );
    }
}
