//! What one local user can do to coinopd and to the other tenants, tried with real coinopd
//! processes, real sockets and real uids (threads of this test whose effective uid is
//! another user's, so SO_PEERCRED sees that user; child processes run as `nobody`):
//!
//! - a second coinopd on the same state dir exits 2 naming the holder's pid, and touches
//!   neither the first one's socket nor its state; SIGTERM removes the socket file;
//! - 300 creates with invalid proofs at once hold no room: a paying create among them gets
//!   its lease (201); a spent payment is 409 even on a full host, and its own retry with its
//!   recovery key still gets the lease back;
//! - 20,000 idle connections from 20 users leave the operator an answer within 1 s, and
//!   coinopd's open fds bounded; the header timeout then closes them all;
//! - a connection that sends nothing, or stalls in its body, is closed by the timeouts;
//! - quotes beyond the rate are 429 with Retry-After, per uid;
//! - another user can read neither the state dir, the ledger nor a console; a non-operator's
//!   body on an operator route is refused (403) before it is parsed.
//!
//! These need root (to act as other uids); elsewhere they say SKIPPED.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
use coinop_cli::client::{Client, Reply};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// `nobody`: the other local user of these tests.
const NOBODY: u32 = 65534;

fn root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: acting as other local users needs root"
    );
    false
}

/// A directory other users may enter (a plain tempdir is 0700, which would hide the state
/// dir behind it and prove nothing about the state dir's own mode).
fn open_home() -> tempfile::TempDir {
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod home");
    home
}

/// A `coinopd` process whose state dir is `state` and whose socket (mode 0666) is in
/// `home`, outside the private state dir, where other users can reach it.
struct Coinopd {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
    client: Client,
}

impl Coinopd {
    /// The arguments of a coinopd on `state` with its socket at `socket`; `extra` may set
    /// the capacity (the default here is 8 vCPUs and 2 GiB).
    fn args(state: &Path, socket: &Path, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--state-dir".into(),
            state.display().to_string(),
            "--socket".into(),
            socket.display().to_string(),
            "--tick-ms".into(),
            "50".into(),
        ];
        if !extra.contains(&"--capacity-vcpus") {
            args.extend(["--capacity-vcpus".into(), "8".into()]);
        }
        if !extra.contains(&"--capacity-mib") {
            args.extend(["--capacity-mib".into(), "2048".into()]);
        }
        if let Some((vmm, guest)) = common::vmm_and_guest() {
            args.extend([
                "--vmm-bin".into(),
                vmm.display().to_string(),
                "--testguest".into(),
                guest.display().to_string(),
            ]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    async fn start(home: &Path, state: &Path, extra: &[&str]) -> Coinopd {
        let socket = home.join("coinop.sock");
        let log = home.join("coinopd.log");
        let _ = std::fs::remove_file(&socket);
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("daemon log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_coinopd"))
            .args(Self::args(state, &socket, extra))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start coinopd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if let Some(status) = child.try_wait().expect("wait coinopd") {
                panic!(
                    "coinopd exited ({status}) before binding: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "coinopd did not bind its socket");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // It appears under its name only once listening, with its mode.
        let mode = std::fs::metadata(&socket)
            .expect("stat the socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o666, "the socket's mode");
        Coinopd {
            client: Client::new(&socket),
            child: Some(child),
            socket,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Open fds of the coinopd process.
    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        self.client
            .call(
                method,
                path,
                token,
                body.map(|b| serde_json::to_vec(&b).expect("json")),
            )
            .await
            .expect("coinopd answers")
    }

    /// SIGTERM, and the exit status.
    async fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM coinopd");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait coinopd") {
                return status;
            }
            assert!(Instant::now() < deadline, "coinopd ignored SIGTERM");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Coinopd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `f` on a thread of its own whose effective uid and gid are `uid`. The raw
/// `setresuid`/`setresgid` system calls change only the calling thread (libc's wrappers
/// would change every thread of this test process); the saved ids stay 0 and the thread
/// ends with `f`, so nothing else runs as `uid`.
fn as_uid<T: Send>(uid: u32, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let keep = libc::uid_t::MAX; // -1: leave that id as it is
                                             // SAFETY: setresgid/setresuid take three integers and change only this
                                             // thread's credentials; gid first, while the thread may still change it.
                let rc = unsafe { libc::syscall(libc::SYS_setresgid, keep, uid, keep) };
                assert_eq!(rc, 0, "setresgid: {}", std::io::Error::last_os_error());
                // SAFETY: as above.
                let rc = unsafe { libc::syscall(libc::SYS_setresuid, keep, uid, keep) };
                assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread acting as another uid")
    })
}

/// A connection to `socket` made as `uid` (SO_PEERCRED records the connecting thread's
/// credentials).
fn connect_as(uid: u32, socket: &Path) -> StdUnixStream {
    as_uid(uid, || StdUnixStream::connect(socket)).expect("connect as another uid")
}

/// One request on `stream`: status, `Retry-After`, body.
async fn request_on(
    stream: StdUnixStream,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> (u16, Option<String>, String) {
    stream.set_nonblocking(true).expect("nonblocking");
    let stream = tokio::net::UnixStream::from_std(stream).expect("tokio stream");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_vec())))
        .expect("request");
    let resp = sender.send_request(req).await.expect("an answer");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        retry_after,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Whether the peer has closed `stream` (EOF, or reset); a byte received means it was
/// answered (a refusal's 503) and counts as not held either.
fn closed_or_answered(stream: &StdUnixStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut byte = [0u8; 1];
    let mut reader = stream;
    match reader.read(&mut byte) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Child processes, each acting as one uid and holding connections open until killed:
/// this host's open-file limit (which root cannot raise here) keeps one process well under
/// 20,000 fds, so the connections are spread over processes as over users.
struct Holders(Vec<nix::unistd::Pid>);

impl Holders {
    /// A child acting as `uid` that connects `n` times to `socket` and keeps them; returns
    /// once it has, with how many connects succeeded.
    fn spawn(&mut self, uid: u32, socket: &Path, n: u32) -> u32 {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: sockaddr_un is plain data; all zeroes is a valid (empty) address.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let path = socket.as_os_str().as_bytes();
        assert!(path.len() < addr.sun_path.len(), "socket path too long");
        for (to, from) in addr.sun_path.iter_mut().zip(path) {
            *to = *from as libc::c_char;
        }
        let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
        let write_fd = std::os::fd::AsRawFd::as_raw_fd(&write_end);
        // SAFETY: the child makes only raw system calls (async-signal-safe) on memory made
        // before the fork, and never returns: it pauses until the parent kills it.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                // SAFETY: as above; every pointer is to `addr` or `ok`, alive throughout.
                unsafe {
                    let keep = libc::uid_t::MAX;
                    if libc::syscall(libc::SYS_setresgid, keep, uid, keep) != 0
                        || libc::syscall(libc::SYS_setresuid, keep, uid, keep) != 0
                    {
                        libc::_exit(1);
                    }
                    let mut ok: u32 = 0;
                    for _ in 0..n {
                        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                        if fd < 0 {
                            break;
                        }
                        let rc = libc::connect(
                            fd,
                            (&raw const addr).cast::<libc::sockaddr>(),
                            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                        );
                        if rc == 0 {
                            ok += 1;
                        } else {
                            libc::close(fd);
                        }
                    }
                    libc::write(write_fd, (&raw const ok).cast::<libc::c_void>(), 4);
                    loop {
                        libc::pause();
                    }
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                self.0.push(child);
                drop(write_end);
                let mut count = [0u8; 4];
                std::fs::File::from(read_end)
                    .read_exact(&mut count)
                    .expect("the holder reports its connections");
                u32::from_ne_bytes(count)
            }
        }
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(*pid, None);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coinopd_on_the_same_state_dir_exits_2_and_sigterm_removes_the_socket() {
    if !root_or_skip() {
        return;
    }
    let state = common::StateDir::new();
    let home = open_home();
    let first = Coinopd::start(home.path(), state.path(), &["--jail-pool", "0"]).await;
    assert_eq!(first.call("GET", "/v1/host", None, None).await.status, 200);
    let lock = std::fs::read_to_string(state.path().join("coinopd.lock")).expect("lock file");
    assert_eq!(
        lock.trim(),
        first.pid().to_string(),
        "the holder's pid is in the lock"
    );

    // The second one, on another socket path, with a full set of flags.
    let second_socket = home.path().join("second.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_coinopd"))
        .args(Coinopd::args(state.path(), &second_socket, &[]))
        .stdin(Stdio::null())
        .output()
        .expect("run a second coinopd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.pid())),
        "names the holder: {stderr}"
    );
    assert!(
        stderr.contains(&state.path().display().to_string()),
        "names the state dir: {stderr}"
    );
    assert!(!second_socket.exists(), "the second one bound nothing");
    assert_eq!(
        first.call("GET", "/v1/host", None, None).await.status,
        200,
        "the first one still answers"
    );

    let socket = first.socket.clone();
    let status = first.terminate().await;
    assert!(status.success(), "SIGTERM is a clean exit: {status}");
    assert!(!socket.exists(), "the socket file is gone after SIGTERM");

    // The lock went with the process: a new coinopd takes the dir.
    let again = Coinopd::start(home.path(), state.path(), &["--jail-pool", "0"]).await;
    assert_eq!(again.call("GET", "/v1/host", None, None).await.status, 200);
}

/// A credit payment of `n` proofs that look right (a real keyset, points on the curve)
/// but carry no valid signature: refused by the mint's check, after real work.
async fn invalid_credit_payment(d: &Coinopd, n: usize) -> Value {
    let keys = d.call("GET", "/v1/keys", None, None).await.json();
    let keyset = &keys["keysets"][0];
    let id = keyset["id"].as_str().expect("keyset id");
    let point = keyset["keys"]["1"].as_str().expect("key for 1 sat");
    let proofs: Vec<Value> = (0..n)
        .map(|_| {
            let mut secret = [0u8; 32];
            OsRng.fill_bytes(&mut secret);
            json!({"amount": 1, "id": id, "secret": hex::encode(secret), "C": point})
        })
        .collect();
    json!({"credit": {"proofs": proofs}})
}

async fn onchain_payment(d: &Coinopd, seconds: u64) -> Value {
    let q = d
        .call(
            "POST",
            "/v1/quotes",
            None,
            Some(json!({"vcpus": 1, "mem_mib": 64, "seconds": seconds})),
        )
        .await;
    assert_eq!(q.status, 200, "{}", q.text());
    let id = q.json()["quote_id"].as_str().expect("quote_id").to_string();
    coinop_cli::regtest_pay::pay_quote(&d.client, &id)
        .await
        .expect("regtest payment")
}

fn create_body(payment: Value, recovery_key: Option<&str>) -> Value {
    let mut body = json!({"vcpus": 1, "mem_mib": 64, "image": "testguest",
                          "cmdline": "mode=echo", "payment": payment});
    if let Some(k) = recovery_key {
        body["recovery_key"] = json!(k);
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_payments_hold_no_room_and_a_spent_one_is_409_even_when_full() {
    if !root_or_skip() || !common::kvm_or_skip() {
        return;
    }
    let state = common::StateDir::new();
    let home = open_home();
    // Room for one lease: a single create holding room while its payment is checked is
    // enough to turn the paying create away.
    let d = std::sync::Arc::new(
        Coinopd::start(home.path(), state.path(), &["--capacity-vcpus", "1"]).await,
    );
    let good = onchain_payment(&d, 600).await;
    // 64 proofs each: checked on the blocking pool, a few ms per create.
    let bad = invalid_credit_payment(&d, 64).await;
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let d = d.clone();
        let body = create_body(bad.clone(), None);
        flood.spawn(async move { d.call("POST", "/v1/leases", None, Some(body)).await.status });
    }
    // The paying create, while the flood is being checked.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let key = hex::encode({
        let mut k = [0u8; 32];
        OsRng.fill_bytes(&mut k);
        k
    });
    let r = d
        .call(
            "POST",
            "/v1/leases",
            None,
            Some(create_body(good.clone(), Some(&key))),
        )
        .await;
    assert_eq!(
        r.status,
        201,
        "the paying create among 300 invalid ones: {}",
        r.text()
    );
    let lease = r.json();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    while let Some(s) = flood.join_next().await {
        *statuses.entry(s.expect("flood task")).or_default() += 1;
    }
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        vec![422],
        "every invalid create is refused for its payment, none for room: {statuses:?}"
    );

    // The host is full now. A spent payment is 409, not 503 ...
    let again = d
        .call(
            "POST",
            "/v1/leases",
            None,
            Some(create_body(good.clone(), None)),
        )
        .await;
    assert_eq!(
        (again.status, again.json()["error"]["code"].clone()),
        (409, json!("already_spent")),
        "{}",
        again.text()
    );
    // ... its own retry (same payment, its recovery key) still gets the lease back ...
    let retry = d
        .call(
            "POST",
            "/v1/leases",
            None,
            Some(create_body(good, Some(&key))),
        )
        .await;
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.json()["lease_id"], lease["lease_id"]);
    assert_eq!(retry.json()["recovered"], true);
    // ... and a fresh payment finds no room.
    let fresh = onchain_payment(&d, 600).await;
    let full = d
        .call("POST", "/v1/leases", None, Some(create_body(fresh, None)))
        .await;
    assert_eq!(full.status, 503, "{}", full.text());
    assert_eq!(full.json()["error"]["code"], "host_full");
    let token = retry.json()["token"].as_str().expect("token").to_string();
    let id = lease["lease_id"].as_str().expect("lease_id").to_string();
    let stop = d
        .call("POST", &format!("/v1/leases/{id}/stop"), Some(&token), None)
        .await;
    assert_eq!(stop.status, 200, "{}", stop.text());
    // A graceful exit finishes the accepted stop: no guest is left to the teardown.
    let d = std::sync::Arc::try_unwrap(d).unwrap_or_else(|_| panic!("the flood is over"));
    assert!(d.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_idle_connections_leave_the_operator_an_answer() {
    if !root_or_skip() {
        return;
    }
    const USERS: u32 = 20;
    const PER_USER: u32 = 1000;
    let state = common::StateDir::new();
    let home = open_home();
    // The defaults: 1024 connections for all non-operators, 64 per uid, 64 kept for the
    // operator, a 10 s header timeout.
    let d = Coinopd::start(home.path(), state.path(), &["--jail-pool", "0"]).await;
    let fds_before = d.open_fds();
    let started = Instant::now();
    let socket = d.socket.clone();
    let flood = tokio::task::spawn_blocking(move || {
        let mut holders = Holders(Vec::new());
        let opened: u32 = (0..USERS)
            .map(|u| holders.spawn(NOBODY - u, &socket, PER_USER))
            .sum();
        (holders, opened)
    });
    // The operator asks while the flood is coming in. The socket's listen queue (4096, the
    // kernel's most) may be full for a moment: a client that does not wait in `connect`
    // (this one is non-blocking) gets EAGAIN and tries again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during = Instant::now();
    let mut queue_full = 0;
    let r = loop {
        match d.client.call("GET", "/v1/host", None, None).await {
            Ok(r) => break r,
            Err(coinop_cli::client::ClientError::Connect { source, .. })
                if source.kind() == std::io::ErrorKind::WouldBlock =>
            {
                queue_full += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("GET /v1/host during the flood: {e}"),
        }
    };
    let during = during.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    let (holders, opened) = flood.await.expect("flood");
    let opened_in = started.elapsed();
    assert_eq!(opened, USERS * PER_USER, "every connect went through");
    // ... and once all 20,000 are open.
    let after = Instant::now();
    let r = d.call("GET", "/v1/host", None, None).await;
    let after = after.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        after < Duration::from_secs(1),
        "GET /v1/host took {after:?}"
    );
    let fds_flood = d.open_fds();
    // Refusals are over within 2 s; what is left open is what coinopd holds.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let held = d.open_fds().saturating_sub(fds_before);
    let _ = writeln!(
        std::io::stderr(),
        "FIGURES: {opened} connections opened by {USERS} uids in {opened_in:?}; coinopd holds \
         {held} of them ({fds_before} fds before, {fds_flood} right after the flood); \
         GET /v1/host as root took {during:?} during the flood ({queue_full} connects \
         found the listen queue full), {after:?} after"
    );
    assert!(held <= 1024, "no more than --max-connections held: {held}");
    assert!(held >= 900, "the users get in up to the caps: {held}");
    // The header timeout (10 s) closes every idle one.
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.open_fds() > fds_before + 8 {
        assert!(
            Instant::now() < deadline,
            "{} fds still open after the header timeout",
            d.open_fds()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(holders);
    assert_eq!(d.call("GET", "/v1/host", None, None).await.status, 200);
    assert!(
        d.log().contains("connections refused"),
        "refusals are logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_nothing_or_stall_their_body_are_closed() {
    if !root_or_skip() {
        return;
    }
    let state = common::StateDir::new();
    let home = open_home();
    let d = Coinopd::start(
        home.path(),
        state.path(),
        &[
            "--jail-pool",
            "0",
            "--header-timeout-ms",
            "1000",
            "--idle-timeout-ms",
            "1000",
            "--max-connections-per-uid",
            "2",
        ],
    )
    .await;
    let wait_closed = |s: StdUnixStream, what: &'static str| async move {
        let start = Instant::now();
        while !closed_or_answered(&s) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{what} stayed open"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        start.elapsed()
    };
    // Nothing sent at all.
    let silent = connect_as(NOBODY, &d.socket);
    // A head, then 10 of the 100 body bytes it announces.
    let mut stalled = connect_as(NOBODY, &d.socket);
    stalled
        .write_all(
            b"POST /v1/quotes HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"vcpus\":1",
        )
        .expect("send a partial request");
    // Both of the uid's two connections are taken: a third is answered 503.
    let (status, retry_after, body) =
        request_on(connect_as(NOBODY, &d.socket), "GET", "/v1/host", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(body.contains("too_many_connections"), "{body}");
    let (silent_for, stalled_for) = tokio::join!(
        wait_closed(silent, "a silent connection"),
        wait_closed(stalled, "a stalled body")
    );
    // A body trickled a byte every 300 ms is never idle for the 1 s idle timeout, and is
    // closed all the same, 1 s after its head, rather than after its 100 bytes (30 s).
    let mut trickled = connect_as(NOBODY, &d.socket);
    trickled
        .write_all(
            b"POST /v1/quotes HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n",
        )
        .expect("send a head");
    let started = Instant::now();
    let trickle = {
        let mut t = trickled.try_clone().expect("clone");
        std::thread::spawn(move || {
            for _ in 0..100 {
                std::thread::sleep(Duration::from_millis(300));
                if t.write_all(b" ").is_err() {
                    return;
                }
            }
        })
    };
    let trickled_for = wait_closed(trickled, "a trickled body").await;
    let _ = trickle.join();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the trickled body is cut off at the deadline: {:?}",
        started.elapsed()
    );
    let _ = writeln!(
        std::io::stderr(),
        "FIGURES: silent connection closed after {silent_for:?}, stalled body after \
         {stalled_for:?}, trickled body after {trickled_for:?}"
    );
    // The uid's room is back.
    let (status, _, body) =
        request_on(connect_as(NOBODY, &d.socket), "GET", "/v1/host", None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_beyond_the_rate_are_429_for_that_uid_only() {
    if !root_or_skip() {
        return;
    }
    let state = common::StateDir::new();
    let home = open_home();
    let d = Coinopd::start(home.path(), state.path(), &["--jail-pool", "0"]).await;
    let body = br#"{"vcpus": 1, "mem_mib": 64, "seconds": 60}"#;
    let quote_as = |uid: u32| {
        let socket = d.socket.clone();
        async move { request_on(connect_as(uid, &socket), "POST", "/v1/quotes", Some(body)).await }
    };
    // The default: 30 a minute, in bursts of 30.
    for i in 0..30 {
        let (status, _, text) = quote_as(NOBODY).await;
        assert_eq!(status, 200, "quote {i}: {text}");
    }
    let (status, retry_after, text) = quote_as(NOBODY).await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("too_many_quotes"), "{text}");
    let wait: u64 = retry_after
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!(
        (1..=2).contains(&wait),
        "one quote comes back every 2 s: {wait}"
    );
    // Mint quotes take from the same bucket: they hand out addresses too. The route speaks
    // Cashu: NUT-00's body (no NUT code names a rate limit), still 429 with Retry-After.
    let (status, retry_after, text) = request_on(
        connect_as(NOBODY, &d.socket),
        "POST",
        "/v1/mint/quote/onchain",
        Some(br#"{"amount": 1000, "unit": "sat"}"#),
    )
    .await;
    assert_eq!(status, 429, "{text}");
    assert!(retry_after.is_some(), "{text}");
    let cashu: Value = serde_json::from_str(&text).expect("a JSON body");
    assert_eq!(cashu["code"], 0, "{text}");
    assert!(
        cashu["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{text}"
    );
    // Another uid has its own bucket; the operator has none.
    let (status, _, text) = quote_as(NOBODY - 1).await;
    assert_eq!(status, 200, "{text}");
    for _ in 0..40 {
        let r = d
            .call(
                "POST",
                "/v1/quotes",
                None,
                Some(json!({"vcpus": 1, "mem_mib": 64, "seconds": 60})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The bucket refills: after the advertised wait the uid gets one again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let (status, _, text) = quote_as(NOBODY).await;
    assert_eq!(status, 200, "{text}");
}

/// Each unpaid quote holds an address for a day; one uid holds at most
/// `--max-open-quotes-per-uid` of them, so it cannot take every address of the host's cap
/// and keep every other tenant from paying. A quote the route refused holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uid_holds_no_more_than_its_share_of_quote_addresses() {
    if !root_or_skip() {
        return;
    }
    let state = common::StateDir::new();
    let home = open_home();
    let d = Coinopd::start(
        home.path(),
        state.path(),
        &["--jail-pool", "0", "--max-open-quotes-per-uid", "3"],
    )
    .await;
    let body: &[u8] = br#"{"vcpus": 1, "mem_mib": 64, "seconds": 60}"#;
    let quote_as = |uid: u32, body: &'static [u8]| {
        let socket = d.socket.clone();
        async move { request_on(connect_as(uid, &socket), "POST", "/v1/quotes", Some(body)).await }
    };
    for _ in 0..5 {
        let (status, _, text) = quote_as(NOBODY, br#"{"vcpus": 0}"#).await;
        assert_eq!(status, 400, "a malformed quote: {text}");
    }
    for i in 0..3 {
        let (status, _, text) = quote_as(NOBODY, body).await;
        assert_eq!(status, 200, "quote {i}, after five refused ones: {text}");
    }
    let (status, retry_after, text) = quote_as(NOBODY, body).await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("too_many_open_quotes"), "{text}");
    let wait: u64 = retry_after
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!(
        wait > 3600,
        "the first quote's address is held for its hour and the reuse delay: {wait}"
    );
    // The mint-quote route hands out addresses too: the same share.
    let (status, _, text) = request_on(
        connect_as(NOBODY, &d.socket),
        "POST",
        "/v1/mint/quote/onchain",
        Some(br#"{"amount": 1000, "unit": "sat"}"#),
    )
    .await;
    assert_eq!(status, 429, "{text}");
    // Another uid has its own share; the operator has none.
    let (status, _, text) = quote_as(NOBODY - 1, body).await;
    assert_eq!(status, 200, "{text}");
    for _ in 0..5 {
        let r = d
            .call(
                "POST",
                "/v1/quotes",
                None,
                Some(json!({"vcpus": 1, "mem_mib": 64, "seconds": 60})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_hundred_quotes_in_a_minute_keep_the_address_gap_bounded() {
    if !root_or_skip() {
        return;
    }
    let state = common::StateDir::new();
    let home = open_home();
    const MAX_OPEN: usize = 20;
    let d = Coinopd::start(
        home.path(),
        state.path(),
        &[
            "--jail-pool",
            "0",
            "--quotes-per-min",
            "300",
            "--quote-ttl-s",
            "1",
            "--quote-reuse-after-s",
            "0",
            "--max-open-quotes",
            "20",
            // One uid against the host-wide cap: its own share (below) is not under test.
            "--max-open-quotes-per-uid",
            "0",
        ],
    )
    .await;
    let body = br#"{"vcpus": 1, "mem_mib": 64, "seconds": 60}"#;
    let started = Instant::now();
    let mut addresses = std::collections::HashSet::new();
    let (mut served, mut limited, mut full) = (0, 0, 0);
    for i in 0..800 {
        let (status, retry_after, text) = request_on(
            connect_as(NOBODY, &d.socket),
            "POST",
            "/v1/quotes",
            Some(body),
        )
        .await;
        match status {
            200 => {
                served += 1;
                let q: Value = serde_json::from_str(&text).expect("quote JSON");
                addresses.insert(q["address"].as_str().expect("address").to_string());
            }
            429 | 503 => {
                let code = if status == 429 {
                    limited += 1;
                    "too_many_quotes"
                } else {
                    full += 1;
                    "no_free_quote_address"
                };
                assert!(text.contains(code), "{status}: {text}");
                let wait: u64 = retry_after
                    .expect("Retry-After")
                    .parse()
                    .expect("whole seconds");
                assert!(wait >= 1, "{wait}");
            }
            other => panic!("quote {i}: {other} {text}"),
        }
        // Every 100 requests, a pause in which the served quotes expire (1 s).
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    // The rate limit (300 a minute) and the cap on unpaid quotes (20) both answered...
    assert!(limited > 0 && full > 0, "429: {limited}, 503: {full}");
    // ... and every served quote got one of at most 20 addresses: the expired ones' indexes
    // were handed out again rather than new ones derived.
    assert!(addresses.len() <= MAX_OPEN, "{} addresses", addresses.len());
    assert!(
        served > 2 * MAX_OPEN,
        "{served} quotes served on {} addresses",
        addresses.len()
    );
}

/// Whether `nobody` can read `path` (`cat` for a file, `ls` for a directory).
fn nobody_reads(path: &Path) -> bool {
    let program = if path.is_dir() { "ls" } else { "cat" };
    Command::new(program)
        .arg(path)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run a command as nobody")
        .success()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_users_read_neither_the_state_nor_consoles_and_operator_bodies_wait_for_the_check() {
    if !root_or_skip() || !common::kvm_or_skip() {
        return;
    }
    let state = common::StateDir::new();
    let home = open_home();
    // A state dir left open by an earlier coinopd is closed at start.
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod state");
    let d = Coinopd::start(home.path(), state.path(), &[]).await;
    let payment = onchain_payment(&d, 600).await;
    let r = d
        .call("POST", "/v1/leases", None, Some(create_body(payment, None)))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["lease_id"].as_str().expect("lease_id").to_string();
    let token = r.json()["token"].as_str().expect("token").to_string();
    let console_path = state.path().join("run").join(format!("{id}.console"));
    common::wait_for(
        async || std::fs::metadata(&console_path).is_ok_and(|m| m.len() > 0),
        "the guest's console output",
    )
    .await;

    // A control: nobody can read a world-readable file here, so a refusal below is the
    // state dir's doing.
    let control = home.path().join("readable");
    std::fs::write(&control, "x").expect("control file");
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert!(
        nobody_reads(&control),
        "the control file is readable by nobody"
    );

    let ledger = state.path().join("ledger.db");
    let keys = state.path().join("credit-keysets.json");
    let vmm_log = state.path().join("run").join(format!("{id}.vmm.log"));
    assert_eq!(mode(state.path()), 0o700);
    assert_eq!(mode(&state.path().join("run")), 0o700);
    for file in [&ledger, &keys, &console_path, &vmm_log] {
        assert_eq!(mode(file), 0o600, "{}", file.display());
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(file).expect("stat"));
        assert_eq!(owner, 0, "{} belongs to root", file.display());
    }
    for path in [state.path(), &ledger, &console_path, &keys] {
        assert!(!nobody_reads(path), "nobody read {}", path.display());
    }
    // Even with the state dir's mode back to 0755 (an operator's slip), the files are 0600.
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod state");
    std::fs::set_permissions(
        state.path().join("run"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod run");
    for path in [&ledger, &console_path, &keys] {
        assert!(!nobody_reads(path), "nobody read {}", path.display());
    }
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod state");

    // The console through the API: with the lease's token only.
    let console = d
        .call(
            "GET",
            &format!("/v1/leases/{id}/console"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(console.status, 200);
    assert!(!console.text().is_empty());
    let (status, _, _) = request_on(
        connect_as(NOBODY, &d.socket),
        "GET",
        &format!("/v1/leases/{id}/console"),
        None,
    )
    .await;
    assert_eq!(status, 401);

    // An operator route with a body that is not even JSON: a non-operator gets 403 (the
    // body is never parsed), the operator the 400 for the body.
    let (status, _, text) = request_on(
        connect_as(NOBODY, &d.socket),
        "POST",
        "/v1/chain/headers",
        Some(b"not json"),
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("not_operator"), "{text}");
    let r = d
        .client
        .call(
            "POST",
            "/v1/chain/headers",
            None,
            Some(b"not json".to_vec()),
        )
        .await;
    assert_eq!(r.expect("answer").status, 400);
    let (status, _, _) = request_on(connect_as(NOBODY, &d.socket), "GET", "/v1/leases", None).await;
    assert_eq!(status, 403);

    let stop = d
        .call("POST", &format!("/v1/leases/{id}/stop"), Some(&token), None)
        .await;
    assert_eq!(stop.status, 200, "{}", stop.text());
    // A graceful exit finishes the accepted stop: no guest is left to the teardown.
    assert!(d.terminate().await.success());
}

/// A guest that prints without end cannot fill the host's disk: its console file keeps the
/// first `--console-max-bytes` of its output, then the VMM's one marker line, and nothing
/// of what follows; the guest runs on and the tenant reads the capped console through the
/// API. Both spawn paths (jailed, where coinopd hands the VMM the console file as stdout,
/// and `--no-jail`, where the VMM opens it by path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_printing_without_end_is_capped_at_the_console_limit() {
    if !common::kvm_or_skip() {
        return;
    }
    const CAP: u64 = 64 << 10;
    const MARKER: &str = "[coinop-vmm: console output capped; the rest is dropped]\n";
    for jail in [&[][..], &["--no-jail"][..]] {
        let dir = common::StateDir::new();
        let cap = CAP.to_string();
        let mut extra = vec!["--console-max-bytes", cap.as_str()];
        extra.extend_from_slice(jail);
        let d = common::Daemon::spawn(dir.path(), &extra, &[]).await;
        let proofs = d.mint_credit(50).await;
        // 2 MiB of output, 32 times the cap.
        let lease = d
            .create_lease(common::leases::testguest_body(
                "mode=flood:2048",
                common::leases::credit_payment(&proofs),
            ))
            .await;
        let console = dir.path().join("run").join(format!("{}.console", lease.id));
        common::wait_for(
            async || std::fs::read_to_string(&console).is_ok_and(|t| t.ends_with(MARKER)),
            "the marker at the console's end",
        )
        .await;
        let text = std::fs::read_to_string(&console).expect("console");
        // What the guest printed (see images/testguest), cut at the cap, then the marker
        // on a line of its own.
        let mut printed = String::from("coinop-testguest ready\n");
        for line in 0.. {
            if printed.len() as u64 >= CAP {
                break;
            }
            let number = line.to_string();
            printed += &format!("flood {number} {}\n", ".".repeat(56 - number.len()));
        }
        let mut expected = printed[..CAP as usize].to_string();
        if !expected.ends_with('\n') {
            expected.push('\n');
        }
        expected += MARKER;
        assert!(
            text == expected,
            "{jail:?}: the console is not the capped output"
        );
        assert!(
            !text.contains("flood done"),
            "{jail:?}: the rest is dropped"
        );
        // The guest printed on (a 2 MiB flood takes a while): the file does not grow.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            std::fs::metadata(&console).expect("console").len(),
            text.len() as u64,
            "{jail:?}"
        );
        let r = d
            .call(
                "GET",
                &format!("/v1/leases/{}/console", lease.id),
                Some(&lease.token),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), text, "{jail:?}: the API shows the capped console");
        let v = d
            .call(
                "GET",
                &format!("/v1/leases/{}", lease.id),
                Some(&lease.token),
                None,
            )
            .await
            .json();
        assert_eq!(v["state"], "running", "{jail:?}: the guest runs on: {v}");
        d.stop_lease(&lease.id, &lease.token).await;
        d.shutdown().await;
    }
}
