//! What can stop the harness, each naming the run or file it concerns.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("could not start {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("waiting for {what}: {source}")]
    Wait {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {detail}")]
    Run { what: String, detail: String },
    /// A boot whose guest never printed the ready line.
    #[error("{engine}: the guest never printed '{ready_line}' ({run})")]
    NeverReady {
        engine: String,
        ready_line: String,
        run: String,
    },
    /// coinop-vmm ran until the guest ended the VM, yet wrote no `guest_ready`.
    #[error(
        "{engine}: no guest_ready event though the VM ran until the guest ended it: does the \
         guest write 123 to port 0x3f0? (--no-boot-timer for guests that don't) ({run})"
    )]
    NoBootTimer { engine: String, run: String },
    /// Every coinop run was killed at the ready line before its guest wrote the boot timer.
    #[error(
        "{engine}: all {runs} measured runs were killed at the ready line '{ready_line}' \
         before guest_ready: the guest prints it before it writes 123 to port 0x3f0; pick a \
         line it prints after that write, or pass --no-boot-timer"
    )]
    KilledBeforeGuestReady {
        engine: String,
        runs: usize,
        ready_line: String,
    },
    /// The driver (Firecracker's API calls) failed, and not because the guest had ended
    /// the VM after its ready line.
    #[error("{engine}: {error} ({run})")]
    Driver {
        engine: String,
        error: String,
        run: String,
    },
    /// A VMM that should have ended with its guest's reset was killed or failed.
    #[error(
        "{engine}: expected exit 0 after the guest's reset, got {status} (killed: {killed}; {run})"
    )]
    UnexpectedExit {
        engine: String,
        status: std::process::ExitStatus,
        killed: bool,
        run: String,
    },
    /// The restore scenario's snapshot source did not end after its snapshot.
    #[error("snapshot source (pid {pid}) acknowledged the snapshot but had not exited after {waited_ms} ms; killed")]
    SnapshotSourceStuck { pid: u32, waited_ms: u128 },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}
