//! The control socket: a Unix stream listener served by one small thread, speaking the
//! JSON-lines protocol documented at the crate root. Clients are served one at a time.

use crate::cli::ControlSocket;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use vmm_protocol::{Reply, Request, Status, Usage, VmState};

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

/// What the control thread acts on: the running VM. Failures are the text of the reply's
/// `error`.
pub trait ControlTarget: Send + Sync {
    /// Answer to `status`.
    fn status(&self) -> Status;
    /// Pauses; the state now requested.
    fn pause(&self) -> Result<VmState, String>;
    /// Resumes; the state now requested.
    fn resume(&self) -> VmState;
    /// Answer to `usage`.
    fn usage(&self) -> Usage;
    /// Queues console input.
    fn console_input(&self, data: &str) -> Result<(), String>;
    /// Writes a snapshot into `dir`; with `exit` the VM is then left parked for
    /// [`ControlTarget::stop`], else it runs again unless it was paused. The state now
    /// requested.
    fn snapshot(&self, dir: &str, exit: bool) -> Result<VmState, String>;
    /// Hands the guest its personalisation line (validated, accepted once).
    fn personalise(&self, line: &str) -> Result<(), String>;
    /// Rings the personalisation port (refused once the guest has its line).
    fn ring(&self) -> Result<(), String>;
    /// Ends the VM (called after the `stop` reply is sent).
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
                let reply = Reply::Error("request line too long".into());
                let _ = writer.write_all(reply.to_line().as_bytes());
                return;
            }
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let request = Request::from_line(text);
        let reply = match &request {
            Ok(Request::Status) => Reply::Status(target.status()),
            Ok(Request::Pause) => target.pause().map_or_else(Reply::Error, Reply::State),
            Ok(Request::Resume) => Reply::State(target.resume()),
            Ok(Request::Usage) => Reply::Usage(target.usage()),
            Ok(Request::ConsoleInput { data }) => target
                .console_input(data)
                .map_or_else(Reply::Error, |()| Reply::Done),
            Ok(Request::Stop) => Reply::State(VmState::Stopping),
            Ok(Request::Snapshot { dir, exit }) => target
                .snapshot(dir, *exit)
                .map_or_else(Reply::Error, Reply::State),
            Ok(Request::Personalise { line }) => target
                .personalise(line)
                .map_or_else(Reply::Error, |()| Reply::Done),
            Ok(Request::Ring) => target.ring().map_or_else(Reply::Error, |()| Reply::Done),
            Err(error) => Reply::Error(error.to_string()),
        };
        let stops = match (&request, &reply) {
            (Ok(Request::Stop), _) => true,
            (Ok(Request::Snapshot { exit, .. }), Reply::State(_)) => *exit,
            _ => false,
        };
        let sent = writer
            .write_all(reply.to_line().as_bytes())
            .and_then(|_| writer.flush());
        if stops {
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

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl ControlTarget for Recorder {
        fn status(&self) -> Status {
            Status {
                state: VmState::Running,
                vcpus: 1,
                mem_mib: 64,
                uptime_us: 5,
                line_crc32: None,
                ring_unheeded_us: None,
            }
        }
        fn pause(&self) -> Result<VmState, String> {
            self.0.lock().expect("test lock").push("pause".into());
            Ok(VmState::Paused)
        }
        fn resume(&self) -> VmState {
            VmState::Running
        }
        fn usage(&self) -> Usage {
            Usage {
                vcpu_us: vec![3],
                vcpu_total_us: 3,
                mem_mib: 64,
                uptime_us: 5,
                state: Some(VmState::Running),
            }
        }
        fn console_input(&self, data: &str) -> Result<(), String> {
            self.0.lock().expect("test lock").push(data.into());
            if data == "full" {
                return Err("console input buffer full".into());
            }
            Ok(())
        }
        fn snapshot(&self, dir: &str, exit: bool) -> Result<VmState, String> {
            self.0
                .lock()
                .expect("test lock")
                .push(format!("snapshot {dir}"));
            if dir.is_empty() {
                return Err("no directory".into());
            }
            Ok(if exit {
                VmState::Stopping
            } else {
                VmState::Running
            })
        }
        fn personalise(&self, line: &str) -> Result<(), String> {
            self.0
                .lock()
                .expect("test lock")
                .push(format!("personalise {line}"));
            if line == "bad" {
                return Err("personalise: refused".into());
            }
            Ok(())
        }
        fn ring(&self) -> Result<(), String> {
            self.0.lock().expect("test lock").push("ring".into());
            Ok(())
        }
        fn stop(&self) {
            self.0.lock().expect("test lock").push("stop".into());
        }
    }

    /// Writes `requests` on a socket pair, serves them, and returns the reply lines. A server
    /// that hangs up on unread requests resets the connection after its replies, so reading
    /// stops at the first error.
    fn session(target: &Recorder, requests: &[u8]) -> Vec<String> {
        let (client, server) = UnixStream::pair().expect("socketpair");
        let mut c = client.try_clone().expect("dup");
        c.write_all(requests).expect("write");
        drop(c);
        client
            .shutdown(std::net::Shutdown::Write)
            .expect("half-close");
        serve_client(server, target);
        BufReader::new(client)
            .lines()
            .map_while(Result::ok)
            .collect()
    }

    #[test]
    fn serves_a_session_in_order_and_stops_after_replying() {
        let target = Recorder::default();
        let replies = session(
            &target,
            b"{\"cmd\":\"pause\"}\n\n{\"cmd\":\"console_input\",\"data\":\"x\"}\n{\"cmd\":\"nope\"}\n{\"cmd\":\"stop\"}\n{\"cmd\":\"status\"}\n",
        );
        assert_eq!(
            replies,
            [
                r#"{"ok":true,"state":"paused"}"#,
                r#"{"ok":true}"#,
                r#"{"error":"unknown command 'nope'","ok":false}"#,
                r#"{"ok":true,"state":"stopping"}"#,
            ]
        );
        assert_eq!(
            *target.0.lock().expect("test lock"),
            vec!["pause", "x", "stop"]
        );
    }

    #[test]
    fn replies_carry_the_targets_answers() {
        let target = Recorder::default();
        let replies = session(
            &target,
            b"{\"cmd\":\"status\"}\n{\"cmd\":\"usage\"}\n{\"cmd\":\"resume\"}\n{\"cmd\":\"console_input\",\"data\":\"full\"}\n{\"cmd\":\"console_input\"}\nnot json\n",
        );
        assert_eq!(
            replies,
            [
                r#"{"mem_mib":64,"ok":true,"state":"running","uptime_us":5,"vcpus":1}"#,
                r#"{"mem_mib":64,"ok":true,"state":"running","uptime_us":5,"vcpu_total_us":3,"vcpu_us":[3]}"#,
                r#"{"ok":true,"state":"running"}"#,
                r#"{"error":"console input buffer full","ok":false}"#,
                r#"{"error":"bad arguments to 'console_input': missing field `data`","ok":false}"#,
                r#"{"error":"request is not JSON: expected ident at line 1 column 2","ok":false}"#,
            ]
        );
    }

    #[test]
    fn a_snapshot_with_exit_stops_after_replying_and_a_failed_one_does_not() {
        let target = Recorder::default();
        let replies = session(
            &target,
            b"{\"cmd\":\"snapshot\",\"dir\":\"\",\"exit\":true}\n{\"cmd\":\"snapshot\",\"dir\":\"/s\"}\n{\"cmd\":\"snapshot\",\"dir\":\"/t\",\"exit\":true}\n{\"cmd\":\"status\"}\n",
        );
        assert_eq!(
            replies,
            [
                r#"{"error":"no directory","ok":false}"#,
                r#"{"ok":true,"state":"running"}"#,
                r#"{"ok":true,"state":"stopping"}"#,
            ]
        );
        assert_eq!(
            *target.0.lock().expect("test lock"),
            vec!["snapshot ", "snapshot /s", "snapshot /t", "stop"]
        );
    }

    #[test]
    fn personalise_replies_done_or_the_targets_refusal() {
        let target = Recorder::default();
        let replies = session(
            &target,
            b"{\"cmd\":\"personalise\",\"line\":\"a b\"}\n{\"cmd\":\"personalise\",\"line\":\"bad\"}\n{\"cmd\":\"personalise\"}\n",
        );
        assert_eq!(
            replies,
            [
                r#"{"ok":true}"#,
                r#"{"error":"personalise: refused","ok":false}"#,
                r#"{"error":"bad arguments to 'personalise': missing field `line`","ok":false}"#,
            ]
        );
        assert_eq!(
            *target.0.lock().expect("test lock"),
            vec!["personalise a b", "personalise bad"]
        );
    }

    #[test]
    fn a_too_long_line_is_refused_and_ends_the_connection() {
        let target = Recorder::default();
        let mut requests = vec![b' '; MAX_REQUEST_BYTES as usize + 10];
        requests.extend_from_slice(b"{\"cmd\":\"pause\"}\n");
        let replies = session(&target, &requests);
        assert_eq!(replies, [r#"{"error":"request line too long","ok":false}"#]);
        assert!(target.0.lock().expect("test lock").is_empty());
    }
}
