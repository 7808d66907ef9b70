//! A small HTTP/1.1 client over the daemon's Unix socket, on hyper's connection API (no
//! hand-written HTTP). One connection per request: the CLI makes a handful of calls.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::net::UnixStream;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source} (is coinopd running? try --socket)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("building request: {0}")]
    Request(#[from] hyper::http::Error),
    /// Connected, but the whole answer did not come in time: a daemon that is stuck, or
    /// something else listening on the socket that never answers.
    #[error(
        "no answer from {} within {} s (is coinopd stuck? --timeout waits longer)",
        path.display(),
        after.as_secs_f64()
    )]
    Timeout { path: PathBuf, after: Duration },
    /// The answer's body is larger than any the API gives: something else is listening on
    /// the socket, or the daemon is broken. Read no further rather than fill memory.
    #[error("the answer from {} is larger than {} MiB; refused", path.display(), MAX_REPLY_BYTES >> 20)]
    ReplyTooLarge { path: PathBuf },
    /// The answer's body could not be read, for a cause other than the connection.
    #[error("reading the answer: {0}")]
    Body(String),
}

/// The largest answer body read. The API's largest (a NUT-09 restore of a whole wallet,
/// a long lease list) are a few MiB.
pub const MAX_REPLY_BYTES: usize = 64 << 20;

/// A reply: status and body bytes.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Reply {
    /// The body as one of the API's types (`coinop_proto`, or the Cashu NUT types).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The body as untyped JSON (`null` when it is not JSON). The CLI and the benchmark
    /// harness read replies with [`Reply::parse`]; this stays for coinopd's own tests,
    /// which still pick replies apart by field name.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

/// How long a call waits for its whole answer unless told otherwise: far longer than any
/// answer of a working coinopd takes (a create waits for its guest's boot, 10 s by
/// default), yet finite, so a stuck daemon or a socket that accepts and never answers
/// ends the run with an error instead of hanging a script forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a connect refused for a full listen queue is retried: a Unix socket answers a
/// full backlog with EAGAIN at once (TCP would wait), which says "busy", not "not running",
/// so the CLI waits a little as a TCP client would.
const BUSY_CONNECT_RETRY: std::time::Duration = std::time::Duration::from_secs(3);

impl Client {
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_path_buf(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client, waiting at most `timeout` for each call's whole answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects to the daemon, retrying for a while when its listen queue is full.
    async fn connect(&self) -> Result<UnixStream, ClientError> {
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(5);
        loop {
            match UnixStream::connect(&self.socket).await {
                Ok(stream) => return Ok(stream),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        && started.elapsed() < BUSY_CONNECT_RETRY =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(200));
                }
                Err(source) => {
                    return Err(ClientError::Connect {
                        path: self.socket.clone(),
                        source,
                    })
                }
            }
        }
    }

    /// Sends one request; `body` is sent as JSON when present. The connect, the request
    /// and the whole answer must be done within the client's timeout.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        tokio::time::timeout(self.timeout, self.call_once(method, path, token, body))
            .await
            .map_err(|_| ClientError::Timeout {
                path: self.socket.clone(),
                after: self.timeout,
            })?
    }

    async fn call_once(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        let stream = self.connect().await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                // A connection that broke mid-answer: as it was before the limit.
                Ok(broken) => ClientError::Http(*broken),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    ClientError::ReplyTooLarge {
                        path: self.socket.clone(),
                    }
                }
                Err(other) => ClientError::Body(other.to_string()),
            })?
            .to_bytes();
        Ok(Reply { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    /// A socket that takes the request and never answers (a stuck daemon) ends the call
    /// with a timeout error instead of waiting forever.
    #[tokio::test]
    async fn a_daemon_that_never_answers_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("silent.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        // Accepts and holds every connection, reading nothing and writing nothing.
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                conns.push(s);
            }
        });
        let client = Client::new(&path).with_timeout(Duration::from_millis(300));
        // The outer limit only keeps this test from hanging where the call would.
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            client.call("GET", "/v1/host", None, None),
        )
        .await
        .expect("the call ends by itself");
        match r {
            Err(ClientError::Timeout { path: p, after }) => {
                assert_eq!(p, path);
                assert_eq!(after, Duration::from_millis(300));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        held.abort();
    }

    /// A daemon whose listen queue is full is busy, not gone: the call waits for room (as a
    /// TCP client would) instead of failing with EAGAIN.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_listen_queue_is_waited_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("busy.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        // Fill the queue: non-blocking connects are refused with EAGAIN once it is full.
        let mut queued = Vec::new();
        loop {
            match UnixStream::connect(&path).await {
                Ok(s) => queued.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("connect: {e}"),
            }
            assert!(queued.len() < 100_000, "the queue never filled");
        }
        let client = Client::new(&path);
        let call = tokio::spawn(async move { client.call("GET", "/v1/host", None, None).await });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            !call.is_finished(),
            "the call waits while the queue is full"
        );
        // Make room and answer whoever sends a request (the queued ones send nothing).
        drop(queued);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut first = String::new();
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                if reader.read_line(&mut first).unwrap_or(0) == 0 {
                    continue;
                }
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 2 {
                    line.clear();
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
                return;
            }
        });
        let reply = call
            .await
            .expect("task")
            .expect("answered once there was room");
        assert_eq!(reply.status, 200);
    }

    /// Something on the socket that answers with an endless body (no length, chunked):
    /// the call ends with a clear error once the limit is passed, not with memory full.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_endless_answer_is_refused_past_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("endless.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        std::thread::spawn(move || {
            let Some(Ok(mut stream)) = listener.incoming().next() else {
                return;
            };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                line.clear();
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
            let chunk = vec![b'x'; 1 << 20];
            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
            framed.extend_from_slice(&chunk);
            framed.extend_from_slice(b"\r\n");
            // Until the client hangs up.
            while stream.write_all(&framed).is_ok() {}
        });
        let client = Client::new(&path).with_timeout(Duration::from_secs(60));
        match client.call("GET", "/v1/host", None, None).await {
            Err(ClientError::ReplyTooLarge { path: p }) => assert_eq!(p, path),
            other => panic!("expected ReplyTooLarge, got {other:?}"),
        }
    }
}
