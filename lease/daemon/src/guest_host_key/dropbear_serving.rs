//! Which host key the guest's dropbear serves, checked against the rootfs's own dropbear
//! (Debian's source, built statically by images/rootfs/dropbear.sh) on loopback.
//!
//! The guest agent starts dropbear before the golden snapshot, with a placeholder key
//! (images/rootfs/host_key.c), and writes the lease's key to the same file after a
//! restore (images/rootfs/PERSONALISE.md). That is right only if (1) each connection's
//! dropbear reads the key file when the connection arrives, not when the listener started
//! (dropbear >= 2022.82 re-executes itself per connection), and (2) a listener that could
//! not re-execute, and so serves the placeholder it loaded, fails every key exchange. Both
//! are dropbear's behaviour, not ours: this test pins them to the build the rootfs uses.

use super::tests::{build_writer, dropbearkey};
use super::GuestHostKey;
use base64::Engine as _;
use bitcoin::hashes::{sha256, Hash as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long dropbear and dbclient may take, generous for a loaded host.
const PATIENCE: Duration = Duration::from_secs(20);

/// Dropbear's server and client from the build `dropbearkey` came from.
fn dropbear_programs(dropbearkey: &Path) -> Result<(PathBuf, PathBuf), String> {
    // images/rootfs/dropbear.sh puts usr/bin/dropbearkey beside usr/bin/dbclient and
    // usr/sbin/dropbear.
    let usr = dropbearkey
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} has no usr/ above it", dropbearkey.display()))?;
    let (server, client) = (usr.join("sbin/dropbear"), usr.join("bin/dbclient"));
    for program in [&server, &client] {
        if !program.is_file() {
            return Err(format!("{} is missing", program.display()));
        }
    }
    Ok((server, client))
}

/// A free loopback port (the OS's pick; released for dropbear to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a loopback port")
        .port()
}

/// A dropbear listener this test started; killed (by its own pid) when dropped.
struct Listener {
    child: Child,
    port: u16,
}

impl Listener {
    /// `dropbear -F -E -r KEY -p 127.0.0.1:PORT`, as the agent starts it (plus -E: its log
    /// to DIR/dropbear.log; the build has no password logins to turn off). `reexec`: argv[0]
    /// is the program's path, which dropbear opens to re-execute itself per connection;
    /// otherwise a bare name it cannot open from its working directory, so it serves
    /// connections from plain forks of the listener (its fallback).
    fn start(program: &Path, key: &Path, dir: &Path, reexec: bool) -> Self {
        let port = free_port();
        let mut command = Command::new(program);
        if !reexec {
            command.arg0("dropbear");
        }
        let child = command
            .args(["-F", "-E", "-r"])
            .arg(key)
            .arg("-P")
            .arg(dir.join("dropbear.pid"))
            .args(["-p", &format!("127.0.0.1:{port}")])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("dropbear.log")).expect("dropbear's log"),
            ))
            .spawn()
            .expect("dropbear starts");
        let listener = Listener { child, port };
        let until = Instant::now() + PATIENCE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "dropbear does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        listener
    }

    /// Whether the listener holds its own program open (what the agent waits for).
    fn holds_own_program(&self, program: &Path) -> bool {
        let program = std::fs::canonicalize(program).expect("dropbear's path");
        let fds = format!("/proc/{}/fd", self.child.id());
        std::fs::read_dir(fds)
            .expect("the listener's fds")
            .filter_map(Result::ok)
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|to| to == program))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one connection showed dbclient: the host key's SHA-256 fingerprint it was
/// offered (if any) and its stderr.
struct Connection {
    fingerprint: Option<String>,
    said: String,
}

/// Connects dbclient (accepting any host key, -y, no key of its own to log in with) and
/// reads the host key it was offered.
fn connect(client: &Path, port: u16, dir: &Path) -> Connection {
    let mut child = Command::new(client)
        .args(["-y", "-p", &port.to_string(), "-i"])
        .arg(dir.join("no-such-identity"))
        .args(["root@127.0.0.1", "true"])
        .env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dbclient starts");
    let until = Instant::now() + PATIENCE;
    while child.try_wait().expect("dbclient's status").is_none() {
        if Instant::now() > until {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("dbclient's output");
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    // "(ssh-ed25519 fingerprint SHA256:BASE64)"
    let fingerprint = said
        .split("ssh-ed25519 fingerprint ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .map(str::to_string);
    Connection { fingerprint, said }
}

/// OpenSSH's and dropbear's fingerprint of an `ssh-ed25519 BASE64` key.
fn fingerprint(openssh: &str) -> String {
    let b64 = openssh
        .strip_prefix("ssh-ed25519 ")
        .expect("an ssh-ed25519 key");
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    let digest = sha256::Hash::hash(&blob);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest.as_byte_array())
    )
}

/// The placeholder's public half as dropbear offers it: seed and "public key" from
/// host_key.c (the bytes of y = 2, no curve point).
fn placeholder_fingerprint() -> String {
    let mut blob = Vec::new();
    blob.extend_from_slice(&11u32.to_be_bytes());
    blob.extend_from_slice(b"ssh-ed25519");
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.push(2);
    blob.extend_from_slice(&[0; 31]);
    fingerprint(&format!(
        "ssh-ed25519 {}",
        base64::engine::general_purpose::STANDARD.encode(blob)
    ))
}

fn write_key(writer: &Path, what: &str, file: &Path) {
    let wrote = Command::new(writer)
        .arg(what)
        .arg(file)
        .output()
        .expect("runs the writer");
    assert!(
        wrote.status.success(),
        "{}",
        String::from_utf8_lossy(&wrote.stderr)
    );
}

#[test]
fn each_connection_gets_the_key_file_of_its_time_and_the_placeholder_serves_no_session() {
    let dir = tempfile::tempdir().expect("temp dir");
    let writer = match build_writer(dir.path()) {
        Ok(w) => w,
        Err(why) => {
            println!("SKIPPED: no C compiler for images/rootfs/host_key.c: {why}");
            return;
        }
    };
    let (server, client) = match dropbearkey().and_then(|k| dropbear_programs(&k)) {
        Ok(programs) => programs,
        Err(why) => {
            println!("SKIPPED: no dropbear server and client: {why}");
            return;
        }
    };
    let file = dir.path().join("dropbear_ed25519_host_key");

    // Without a key (and without -R) dropbear does not start: why the agent gives its
    // listener the placeholder.
    let alone = Command::new(&server)
        .args(["-F", "-E", "-r"])
        .arg(&file)
        .args(["-p", &format!("127.0.0.1:{}", free_port())])
        .arg("-P")
        .arg(dir.path().join("alone.pid"))
        .output()
        .expect("dropbear runs");
    assert!(!alone.status.success());
    assert!(
        String::from_utf8_lossy(&alone.stderr).contains("No hostkeys available"),
        "{}",
        String::from_utf8_lossy(&alone.stderr)
    );

    // As the agent: the placeholder in the file, dropbear listening and able to re-exec
    // itself, the placeholder gone.
    write_key(&writer, "placeholder", &file);
    let listener = Listener::start(&server, &file, dir.path(), true);
    let until = Instant::now() + PATIENCE;
    while !listener.holds_own_program(&server) {
        assert!(
            Instant::now() < until,
            "dropbear never holds its program open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_file(&file).expect("placeholder removed");

    // No key file yet (a connection before the lease's files: a guest without an address
    // gets none): no key offered, no session.
    let early = connect(&client, listener.port, dir.path());
    assert_eq!(early.fingerprint, None, "{}", early.said);

    // The lease's key, written after the listener started: that is the key offered, and
    // its signature verifies (dbclient goes on to ask for a login).
    let lease = GuestHostKey::generate();
    write_key(&writer, &lease.line_value(), &file);
    let served = connect(&client, listener.port, dir.path());
    assert_eq!(
        served.fingerprint.as_deref(),
        Some(fingerprint(&lease.openssh()).as_str()),
        "{}",
        served.said
    );
    assert!(
        !served.said.contains("Bad hostkey signature"),
        "{}",
        served.said
    );

    // Read per connection: another key in the file is the next connection's key.
    let next = GuestHostKey::generate();
    write_key(&writer, &next.line_value(), &file);
    let again = connect(&client, listener.port, dir.path());
    assert_eq!(
        again.fingerprint.as_deref(),
        Some(fingerprint(&next.openssh()).as_str()),
        "{}",
        again.said
    );
    drop(listener);

    // A listener that cannot re-exec serves what it loaded at its start, the placeholder,
    // whatever the file holds now, and no client accepts its signature.
    std::fs::remove_file(&file).expect("lease key removed");
    write_key(&writer, "placeholder", &file);
    let forking = Listener::start(&server, &file, dir.path(), false);
    assert!(!forking.holds_own_program(&server));
    write_key(&writer, &lease.line_value(), &file);
    let fallback = connect(&client, forking.port, dir.path());
    assert_eq!(
        fallback.fingerprint.as_deref(),
        Some(placeholder_fingerprint().as_str()),
        "{}",
        fallback.said
    );
    assert!(
        fallback.said.contains("Bad hostkey signature"),
        "{}",
        fallback.said
    );
}
