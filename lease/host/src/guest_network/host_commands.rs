//! The host's own network tools, run as child processes: `ip` (iproute2) for addresses,
//! links and neighbours, `nft` for the NAT and filter rules (applied as one atomic script),
//! `conntrack` (conntrack-tools) to delete a stopped guest's tracked connections.
//! All three are what an operator would use to inspect the result, and `nft -f` applies a
//! whole script (the coinop table at start-up, one lease's set elements after) in one
//! kernel transaction, which a netlink crate would have to reimplement (nftables' netlink
//! batches have no maintained Rust crate). Deleting by address is likewise a ctnetlink
//! conversation (a filtered dump, then one delete per entry) that `conntrack -D` holds and
//! that would otherwise be hand-written here, with the message parsing that goes with it,
//! for a step that runs once per stopped lease. A lease's `ip` part runs beside its VMM's
//! start, off the create's path, so iproute2's process start costs it nothing there.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started (not installed?).
    #[error("{program}: cannot run it: {source} (install iproute2, nftables and conntrack)")]
    Start {
        program: String,
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Runs `program args`, feeding `input` on stdin; returns stdout.
pub fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, CommandError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CommandError::Start {
            program: program.to_string(),
            source,
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // A write error shows up as the command's own failure below.
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| CommandError::Start {
            program: program.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(CommandError::Failed {
            command: format!("{program} {}", args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS`.
pub fn ip(args: &[&str]) -> Result<String, CommandError> {
    run("ip", args, None)
}

/// `nft -f -` with `script`.
pub fn nft_apply(script: &str) -> Result<(), CommandError> {
    run("nft", &["-f", "-"], Some(script)).map(drop)
}

/// Names of the links whose name starts with `prefix`.
pub fn links_named(prefix: &str) -> Result<Vec<String>, CommandError> {
    let text = ip(&["-j", "link", "show"])?;
    let links: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
    Ok(links
        .iter()
        .filter_map(|l| l.get("ifname")?.as_str())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_string)
        .collect())
}

/// Whether `conntrack` runs here.
pub fn conntrack_available() -> bool {
    run("conntrack", &["--version"], None).is_ok()
}

/// Deletes every connection conntrack tracks that `ip` is an end of, before or after NAT:
/// as the original direction's source or destination, or the reply's (a connection
/// DNATed to a guest has it as the reply's source only). One `conntrack -D` per field,
/// since the tool ANDs the filters it is given. Returns how many were deleted; none is no
/// error (`conntrack -D` itself exits 1 then).
pub fn forget_connections(ip: Ipv4Addr) -> Result<usize, CommandError> {
    let ip = ip.to_string();
    let mut deleted = 0;
    for field in ["--orig-src", "--orig-dst", "--reply-src", "--reply-dst"] {
        match run("conntrack", &["-D", field, &ip], None) {
            // One line on stdout per deleted entry.
            Ok(listing) => deleted += listing.lines().count(),
            Err(CommandError::Failed { stderr, .. })
                if stderr.ends_with(" 0 flow entries have been deleted.") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}
