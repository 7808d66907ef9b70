//! A throwaway PostgreSQL cluster for tests (feature `test-cluster`): `initdb` in a temp
//! dir the test owns, the server listening only on a Unix socket in that dir (no TCP),
//! stopped with `pg_ctl stop -m immediate` when dropped. As root it runs the server as
//! `nobody` (PostgreSQL refuses to run as root), so its dir is made in `/tmp`, which
//! `nobody` can reach, rather than under a TMPDIR that may be private to root.
//!
//! The binaries come from `$COINOP_PG_BINDIR` or the newest `/usr/lib/postgresql/*/bin`;
//! if there are none, `scripts/lib/postgres.sh` installs PostgreSQL (as `scripts/test.sh`
//! does), and if that fails too, [`TestCluster::start`] prints a `SKIPPED:` line and gives
//! `None`.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix::unistd::{chown, Uid, User};
use thiserror::Error;

/// The database user the cluster is made with (trust authentication on its socket).
pub const USER: &str = "coinop";
/// The port number; it only names the socket file, since there is no TCP listener.
const PORT: u16 = 5432;

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}): {output}")]
    Command {
        what: String,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("looking up user nobody: {0}")]
    NoUser(String),
}

/// A running (or stopped, between [`TestCluster::stop`] and [`TestCluster::start_again`])
/// PostgreSQL cluster in a temp dir.
pub struct TestCluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    /// The user the server runs as, when the test runs as root.
    run_as: Option<User>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

fn newest_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("COINOP_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").exists().then_some(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// Runs `scripts/lib/postgres.sh`'s installer, as `scripts/test.sh` does.
fn install_postgres() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = Command::new("bash")
        .arg("-c")
        .arg("source scripts/lib/setup.sh && source scripts/lib/postgres.sh && coinop_ensure_postgres")
        .current_dir(&root)
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("installing PostgreSQL with scripts/lib/postgres.sh failed: {status:?}");
    }
}

fn run(what: &str, cmd: &mut Command) -> Result<Output, ClusterError> {
    let out = cmd.output().map_err(|source| ClusterError::Io {
        what: what.to_owned(),
        source,
    })?;
    if !out.status.success() {
        return Err(ClusterError::Command {
            what: what.to_owned(),
            status: out.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(out)
}

impl TestCluster {
    /// Creates and starts a cluster, or prints `SKIPPED: <test>: ...` and returns `None`
    /// when PostgreSQL is not installed and cannot be.
    pub fn start(test: &str) -> Result<Option<Self>, ClusterError> {
        let bindir = match newest_bindir() {
            Some(b) => b,
            None => {
                install_postgres();
                match newest_bindir() {
                    Some(b) => b,
                    None => {
                        println!("SKIPPED: {test}: PostgreSQL (initdb) is not installed");
                        return Ok(None);
                    }
                }
            }
        };
        let run_as = if Uid::effective().is_root() {
            Some(
                User::from_name("nobody")
                    .map_err(|e| ClusterError::NoUser(e.to_string()))?
                    .ok_or_else(|| ClusterError::NoUser("no such user".into()))?,
            )
        } else {
            None
        };
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| ClusterError::Io { what, source }
        };
        let dir = if run_as.is_some() {
            tempfile::Builder::new()
                .prefix("coinop-pg-")
                .tempdir_in("/tmp")
        } else {
            tempfile::Builder::new().prefix("coinop-pg-").tempdir()
        }
        .map_err(io("creating the cluster dir"))?;
        if let Some(user) = &run_as {
            chown(dir.path(), Some(user.uid), Some(user.gid))
                .map_err(|e| io("chown of the cluster dir")(e.into()))?;
        }
        let cluster = TestCluster {
            dir,
            bindir,
            run_as,
        };
        run(
            "initdb",
            cluster
                .command("initdb")
                .arg("-D")
                .arg(cluster.data_dir())
                .args(["-U", USER, "-A", "trust", "-E", "UTF8"])
                .args(["--no-sync", "--no-instructions"]),
        )?;
        cluster.start_again()?;
        Ok(Some(cluster))
    }

    /// A command for one of the server binaries, run as the cluster's user.
    fn command(&self, binary: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(binary));
        if let Some(user) = &self.run_as {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        // The server and its tools write nothing outside the cluster dir.
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The dir holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A libpq-style connection string for `dbname`.
    pub fn conninfo(&self, dbname: &str) -> String {
        format!(
            "host={} port={PORT} user={USER} dbname={dbname}",
            self.socket_dir().display()
        )
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn start_again(&self) -> Result<(), ClusterError> {
        let options = format!(
            "-c listen_addresses='' -k {} -p {PORT} -c max_connections=300",
            self.socket_dir().display()
        );
        run(
            "pg_ctl start",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"]),
        )?;
        Ok(())
    }

    /// Stops the server at once, as a crash or a lost database host would.
    pub fn stop(&self) -> Result<(), ClusterError> {
        run(
            "pg_ctl stop",
            self.command("pg_ctl").arg("-D").arg(self.data_dir()).args([
                "-m",
                "immediate",
                "-w",
                "stop",
            ]),
        )?;
        Ok(())
    }

    /// Creates database `name` (a fresh one per test keeps tests apart).
    pub fn create_database(&self, name: &str) -> Result<(), ClusterError> {
        run(
            "createdb",
            self.command("createdb")
                .arg("-h")
                .arg(self.socket_dir())
                .args(["-p", &PORT.to_string(), "-U", USER, name]),
        )?;
        Ok(())
    }

    /// Runs SQL through `psql` on database `dbname` and returns what it printed.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, ClusterError> {
        let out = run(
            "psql",
            self.command("psql")
                .arg("-h")
                .arg(self.socket_dir())
                .args(["-p", &PORT.to_string(), "-U", USER, "-d", dbname])
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Only this cluster's server, by its data dir; an already stopped one is fine.
        if self.data_dir().join("postmaster.pid").exists() {
            if let Err(e) = self.stop() {
                eprintln!("stopping the test PostgreSQL: {e}");
            }
        }
    }
}
