//! Serving the API on the Unix socket with what `axum::serve` has no knobs for: each
//! connection is admitted against [`ConnLimits`] by its peer's uid (SO_PEERCRED) before any
//! byte of it is read, a request's head must arrive within the header timeout (which also
//! bounds an idle keep-alive connection), and a connection on which nothing moves while no
//! request of it is being worked on is closed after the idle timeout, as is one whose
//! request body is not all in within the idle timeout of its head (a body trickled a byte
//! at a time moves often enough never to be idle, and would hold the connection, and its
//! uid's room, for days). HTTP is hyper's
//! (through hyper-util's connection builder); this module only accepts, counts and times.
//!
//! A connection beyond the caps is answered 503 `too_many_connections` with
//! `Retry-After` by a short-lived task (at most [`REFUSING_AT_ONCE`] at a time, each with a
//! one-second header timeout), and closed at accept when those are all busy: the fds a
//! flood can make coinopd hold stay bounded, so `accept` never runs out of them and the
//! operator's room is always there.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::error::ApiError;
use super::limits::{Admission, ConnLimits, Refusal, RefusalSlot, REFUSING_AT_ONCE};
use super::peer::{OperatorPolicy, PeerCred};

/// How long a refused connection may take to send the request it is answered 503 to.
const REFUSAL_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// The most a refusal holds its fd, whatever the peer does.
const REFUSAL_LIMIT: Duration = Duration::from_secs(2);
/// How long a graceful shutdown waits for connections to finish their requests.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// Refusals and accept errors are logged at most this often (with how many there were).
const LOG_EVERY: Duration = Duration::from_secs(5);
/// The pause after `accept` fails for want of a resource (fds, memory), so that a full fd
/// table does not make the loop spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The limits and timeouts a server runs with.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub limits: Arc<ConnLimits>,
    pub operator: OperatorPolicy,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open connections finish
/// their requests (bounded) and returns.
pub async fn serve(
    listener: UnixListener,
    app: Router,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let service = TowerToHyperService::new(app);
    // Every connection task holds a receiver of `closing`: a shutdown sends on it, and the
    // sender's `closed()` resolves once every task has ended.
    let (closing, closing_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut refusals = Tally::new("connections refused: over the connection caps");
    let mut accept_errors = Tally::new("accept failed");
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                accept_errors.note(&e.to_string());
                if !is_peer_error(&e) {
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        let peer = PeerCred::of(&stream);
        let operator = settings.operator.allows(&peer);
        match settings.limits.admit(peer.uid, operator) {
            Admission::Serve(slot) => {
                let conn = Conn {
                    service: service.clone(),
                    peer,
                    header_timeout: settings.header_timeout,
                    idle_timeout: settings.idle_timeout,
                    closing: closing_rx.clone(),
                };
                tokio::spawn(async move {
                    conn.run(stream).await;
                    drop(slot);
                });
            }
            Admission::Refuse(slot, why) => {
                refusals.note(why_label(why, peer.uid).as_str());
                tokio::spawn(refuse(stream, why, slot));
            }
            Admission::Drop(why) => {
                refusals.note(&format!(
                    "{} (closed at accept: {REFUSING_AT_ONCE} refusals already being answered)",
                    why_label(why, peer.uid)
                ));
                drop(stream);
            }
        }
    }
    drop(listener);
    let open = settings.limits.open();
    if open > 0 {
        tracing::info!(
            open,
            "waiting for open connections to finish their requests"
        );
    }
    let _ = closing.send(true);
    drop(closing_rx);
    if tokio::time::timeout(DRAIN_LIMIT, closing.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            open = settings.limits.open(),
            "connections still open {DRAIN_LIMIT:?} after the shutdown; leaving them"
        );
    }
}

fn why_label(why: Refusal, uid: Option<u32>) -> String {
    let uid = uid.map_or_else(|| "unknown".to_string(), |u| u.to_string());
    match why {
        Refusal::Total => format!("--max-connections reached (latest peer uid {uid})"),
        Refusal::PerUid => format!("--max-connections-per-uid reached by uid {uid}"),
    }
}

/// Errors of one connection that accept reports (the peer gave up before it was accepted):
/// the next accept may succeed at once.
fn is_peer_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EPROTO | libc::EINTR)
    )
}

/// One served connection.
struct Conn {
    service: TowerToHyperService<Router>,
    peer: PeerCred,
    header_timeout: Duration,
    idle_timeout: Duration,
    closing: watch::Receiver<bool>,
}

impl Conn {
    async fn run(mut self, stream: UnixStream) {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: Arc::clone(&activity),
        });
        let service = ConnService {
            inner: self.service.clone(),
            peer: self.peer,
            activity: Arc::clone(&activity),
        };
        // HTTP/1 only, said up front: left to detect the version, the builder would wait
        // for a first byte with no timeout at all.
        let mut builder = Builder::new(TokioExecutor::new()).http1_only();
        builder
            .http1()
            // A client that sends its request and closes at once still has it carried
            // out: without half_close, hyper drops a request whose connection hit EOF
            // before the handler ran, and the work is all or nothing either way.
            .half_close(true)
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout);
        let conn = builder.serve_connection(io, service);
        let mut conn = std::pin::pin!(conn);
        let mut shutting_down = false;
        loop {
            let idle_at = activity.idle_deadline(self.idle_timeout);
            let wake_at = activity
                .body_deadline(self.idle_timeout)
                .map_or(idle_at, |body_at| body_at.min(idle_at));
            tokio::select! {
                _ = conn.as_mut() => break,
                changed = self.closing.changed(), if !shutting_down => {
                    shutting_down = true;
                    // Finish the request in progress, if any, then close (an idle
                    // connection closes at once). A closed channel means the same.
                    let _ = changed;
                    conn.as_mut().graceful_shutdown();
                }
                () = tokio::time::sleep_until(wake_at.into()) => {
                    if activity.body_overdue(self.idle_timeout) {
                        tracing::debug!(uid = ?self.peer.uid,
                                        "closing a connection whose request body is late");
                        // Its handler, if it started, is still reading the body: nothing
                        // was done for it yet.
                        break;
                    }
                    if activity.is_idle(self.idle_timeout) {
                        tracing::debug!(uid = ?self.peer.uid, "closing an idle connection");
                        // Dropping the connection closes it; no handler is running (a
                        // request being worked on keeps the connection busy), so nothing
                        // is cut short but a body that stalled or a reply not read.
                        break;
                    }
                }
            }
        }
    }
}

/// When a connection last moved a byte, and how many of its requests are being worked on
/// (their bodies all in, their handlers not done).
struct Activity {
    epoch: Instant,
    /// ms since `epoch` of the last byte read or written.
    last_io_ms: AtomicU64,
    working: AtomicUsize,
    /// ms since `epoch` of the head of the request whose body is still coming in, or
    /// [`Activity::NO_BODY`]. One slot: HTTP/1 takes a connection's requests one by one.
    body_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            working: AtomicUsize::new(0),
            body_since_ms: AtomicU64::new(Self::NO_BODY),
        }
    }

    const NO_BODY: u64 = u64::MAX;

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// A request's head is in and its body is coming.
    fn body_started(&self) {
        self.body_since_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The body is all in, or the handler is done without it.
    fn body_ended(&self) {
        self.body_since_ms.store(Self::NO_BODY, Ordering::Relaxed);
    }

    /// When the body still coming in must be all in.
    fn body_deadline(&self, timeout: Duration) -> Option<Instant> {
        match self.body_since_ms.load(Ordering::Relaxed) {
            Self::NO_BODY => None,
            since => Some(self.epoch + Duration::from_millis(since) + timeout),
        }
    }

    fn body_overdue(&self, timeout: Duration) -> bool {
        self.body_deadline(timeout)
            .is_some_and(|at| Instant::now() >= at)
    }

    fn touch(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn last_io(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_io_ms.load(Ordering::Relaxed))
    }

    /// When the connection will have been idle for `timeout` if nothing moves meanwhile.
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        let from_io = self.last_io() + timeout;
        // Busy: look again a whole timeout later.
        if self.working.load(Ordering::Relaxed) > 0 {
            from_io.max(Instant::now() + timeout)
        } else {
            from_io
        }
    }

    fn is_idle(&self, timeout: Duration) -> bool {
        self.working.load(Ordering::Relaxed) == 0 && self.last_io().elapsed() >= timeout
    }
}

/// The socket, noting when a byte moves.
struct Watched {
    inner: UnixStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router for one connection: each request carries the peer's credentials (for the
/// operator check) and counts as being worked on from when its body is all in until its
/// handler is done.
#[derive(Clone)]
struct ConnService {
    inner: TowerToHyperService<Router>,
    peer: PeerCred,
    activity: Arc<Activity>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let work = Arc::new(Work {
            state: AtomicU8::new(Work::WAITING_FOR_BODY),
            activity: Arc::clone(&self.activity),
        });
        if req.body().is_end_stream() {
            work.body_done();
        } else {
            self.activity.body_started();
        }
        let mut req = req.map(|body| {
            Body::new(TrackedBody {
                inner: body,
                work: Arc::clone(&work),
            })
        });
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let handled = hyper::service::Service::call(&self.inner, req);
        let done = HandlerDone(work);
        Box::pin(async move {
            let response = handled.await;
            drop(done);
            response
        })
    }
}

/// One request's part in [`Activity::working`].
struct Work {
    state: AtomicU8,
    activity: Arc<Activity>,
}

impl Work {
    const WAITING_FOR_BODY: u8 = 0;
    const WORKING: u8 = 1;
    const DONE: u8 = 2;

    /// The body is all in: the request counts as being worked on (unless its handler is
    /// done already, having answered without reading it).
    fn body_done(&self) {
        if self
            .state
            .compare_exchange(
                Self::WAITING_FOR_BODY,
                Self::WORKING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.activity.body_ended();
            self.activity.working.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Held by the handler's future: dropping it (the handler is done, or was dropped) ends the
/// request's part in keeping the connection busy, wherever its body is.
struct HandlerDone(Arc<Work>);

impl Drop for HandlerDone {
    fn drop(&mut self) {
        let work = &self.0;
        match work.state.swap(Work::DONE, Ordering::AcqRel) {
            Work::WORKING => {
                work.activity.working.fetch_sub(1, Ordering::AcqRel);
            }
            // Answered without reading its body: hyper discards the rest, which the idle
            // timeout bounds as it bounds a reply not read.
            Work::WAITING_FOR_BODY => work.activity.body_ended(),
            _ => {}
        }
    }
}

/// A request body that says when it is all in.
struct TrackedBody {
    inner: Incoming,
    work: Arc<Work>,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.work.body_done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Answers a connection beyond the caps 503 (to its first request) and closes it.
async fn refuse(stream: UnixStream, why: Refusal, slot: RefusalSlot) {
    let service = hyper::service::service_fn(move |_req: hyper::Request<Incoming>| async move {
        Ok::<_, Infallible>(ApiError::too_many_connections(why.message()).into_response())
    });
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_HEADER_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(REFUSAL_LIMIT, conn).await;
    drop(slot);
}

/// Counts recurring events and logs them at most every [`LOG_EVERY`].
struct Tally {
    what: &'static str,
    since_log: u64,
    last_log: Option<Instant>,
}

impl Tally {
    fn new(what: &'static str) -> Self {
        Tally {
            what,
            since_log: 0,
            last_log: None,
        }
    }

    fn note(&mut self, latest: &str) {
        self.since_log += 1;
        if self.last_log.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return;
        }
        tracing::warn!(
            count = self.since_log,
            latest,
            "{} (count: since the last such line)",
            self.what
        );
        self.since_log = 0;
        self.last_log = Some(Instant::now());
    }
}
