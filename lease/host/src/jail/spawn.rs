//! Starting a process inside the jail: `clone(2)` straight into new mount, PID, IPC, UTS
//! (and optionally network) namespaces, so the VMM itself is PID 1 of its own namespace and
//! the direct child of coinopd. Everything the child needs is prepared before the clone;
//! between clone and exec the child only makes system calls (no allocation, no locks),
//! because coinopd is multi-threaded: nix's plain wrappers, and the raw ones of
//! [`super::syscalls::ClonedChild`]. The clone itself, with the failure report, is
//! [`start_child`], which [`super::parked`] uses too.
//!
//! Child steps, in order: passed fds to 0..n, new session, join the lease cgroup (write "0"
//! to each `cgroup.procs`), private mount propagation, bind the jail root onto itself and the
//! read-only files into it, pivot_root into it and drop the old root, remount the root
//! read-only, hostname, rlimits, drop supplementary groups, gid and uid to the lease's,
//! no-new-privileges, close every other fd, execve. A failing step reports (step, errno) on
//! a close-on-exec pipe, so the parent learns exactly what went wrong; a successful exec
//! closes that pipe with nothing written.

use super::syscalls::{self, ClonedChild};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::socket::MsgFlags;
use nix::unistd::Pid;
use std::convert::Infallible;
use std::ffi::{c_char, CStr, CString};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Passed fds are first copied to at least this number, so placing them at 0..n in the
/// child never overwrites one not yet placed.
pub(super) const HIGH_FD: RawFd = 64;
/// Most fds the VMM may hold: KVM, VM, 32 vCPUs, eventfds, disks, taps, clients.
pub(super) const MAX_FDS: u64 = 256;

/// The child's steps, reported on failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    /// dup2 of a passed fd.
    PlaceFds = 1,
    /// setsid.
    Session,
    /// Writing to cgroup.procs.
    JoinCgroup,
    /// Making mounts private.
    PrivateMounts,
    /// A bind mount.
    Bind,
    /// A read-only remount.
    Remount,
    /// chdir/pivot_root/umount of the old root.
    PivotRoot,
    /// sethostname.
    Hostname,
    /// setrlimit.
    Rlimit,
    /// setgroups/setresgid/setresuid.
    DropPrivileges,
    /// PR_SET_NO_NEW_PRIVS.
    NoNewPrivs,
    /// close_range.
    CloseFds,
    /// execve.
    Exec,
    /// A parked child waiting for, or reading, its launch message.
    Receive,
    /// Attaching the kernel or initrd mount a parked child was sent.
    Attach,
}

impl Step {
    pub(super) fn from_byte(byte: u8) -> Option<Step> {
        use Step::*;
        [
            PlaceFds,
            Session,
            JoinCgroup,
            PrivateMounts,
            Bind,
            Remount,
            PivotRoot,
            Hostname,
            Rlimit,
            DropPrivileges,
            NoNewPrivs,
            CloseFds,
            Exec,
            Receive,
            Attach,
        ]
        .into_iter()
        .find(|s| *s as u8 == byte)
    }
}

/// Errors starting a jailed process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path or argument with an interior NUL.
    #[error("jail spawn: '{0}' contains a NUL byte")]
    Nul(String),
    /// Parent-side preparation (pipe, fd copies, clone) failed.
    #[error("jail spawn: {what}: {source}")]
    Parent {
        /// The call.
        what: &'static str,
        /// Why.
        source: nix::Error,
    },
    /// A parked child ended before its launch (killed, or it could not read the launch).
    #[error("the parked jailed child is gone")]
    ParkedGone,
    /// A launch message beyond what a parked child can take.
    #[error(
        "launch of a parked child too big: {bytes} bytes of arguments, {args} arguments, {fds} fds"
    )]
    LaunchTooBig {
        /// Message bytes.
        bytes: usize,
        /// Arguments.
        args: usize,
        /// Fds including the image mounts.
        fds: usize,
    },
    /// The child failed before exec.
    #[error("jailed child failed at {step:?}: {source}")]
    Child {
        /// The step.
        step: Step,
        /// errno.
        source: nix::Error,
    },
}

pub(super) fn cstring(text: impl AsRef<std::ffi::OsStr>) -> Result<CString, Error> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = text.as_ref().as_bytes();
    CString::new(bytes).map_err(|_| Error::Nul(String::from_utf8_lossy(bytes).into_owned()))
}

/// Maps the error of the parent-side call `what`.
pub(super) fn parent(what: &'static str) -> impl FnOnce(nix::Error) -> Error {
    move |source| Error::Parent { what, source }
}

/// (host file, in-jail path) pairs as (host file, host path under `root`) C strings, ready
/// for the child's bind mounts.
pub(super) fn bind_pairs(
    root: &Path,
    list: &[(PathBuf, PathBuf)],
) -> Result<Vec<(CString, CString)>, Error> {
    list.iter()
        .map(|(host, in_jail)| {
            let target = super::root_dir::host_path(root, in_jail)
                .map_err(|_| Error::Nul(in_jail.display().to_string()))?;
            Ok((cstring(host)?, cstring(target)?))
        })
        .collect()
}

/// What to start and how to confine it; see [`super::Jail::spawn`].
pub struct Plan {
    /// The jail root on the host.
    pub root: PathBuf,
    /// (host file, in-jail path) pairs bind-mounted read-only.
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// (host file, in-jail path) pairs bind-mounted writable (nosuid, nodev).
    pub writable_binds: Vec<(PathBuf, PathBuf)>,
    /// Program path inside the jail.
    pub program: PathBuf,
    /// argv\[1..\].
    pub args: Vec<std::ffi::OsString>,
    /// Fds placed at 0, 1, 2, 3... in the child.
    pub fds: Vec<OwnedFd>,
    /// Open cgroup.procs files to join.
    pub cgroup_procs: Vec<OwnedFd>,
    /// uid = gid of the jailed process.
    pub uid: u32,
    /// Also unshare the network namespace.
    pub new_net_ns: bool,
    /// RLIMIT_FSIZE ([`super::NO_FILE_SIZE_LIMIT`] for none).
    pub max_file_bytes: u64,
}

/// Everything the child touches, in final form.
struct Prepared {
    fds: Vec<OwnedFd>,
    cgroup_procs: Vec<OwnedFd>,
    root: CString,
    binds: Vec<(CString, CString)>,
    writable_binds: Vec<(CString, CString)>,
    program: CString,
    /// argv\[1..\].
    args: Vec<CString>,
    /// Room for the child to build argv in (program, args, null).
    argv: Vec<*const c_char>,
    who: Confinement,
    report: RawFd,
}

/// Who the exec'd program runs as and what it may grow.
#[derive(Debug, Clone, Copy)]
pub(super) struct Confinement {
    /// uid = gid.
    pub uid: u32,
    /// RLIMIT_FSIZE.
    pub max_file_bytes: u64,
}

/// A close-on-exec copy of `fd` at [`HIGH_FD`] or above.
fn high_copy(fd: &OwnedFd) -> Result<OwnedFd, Error> {
    syscalls::dup_above(fd.as_fd(), HIGH_FD).map_err(parent("F_DUPFD_CLOEXEC"))
}

fn prepare(plan: &Plan, report: RawFd) -> Result<Prepared, Error> {
    let fds = plan
        .fds
        .iter()
        .map(high_copy)
        .collect::<Result<Vec<_>, _>>()?;
    let cgroup_procs = plan
        .cgroup_procs
        .iter()
        .map(high_copy)
        .collect::<Result<Vec<_>, _>>()?;
    let args = plan
        .args
        .iter()
        .map(cstring)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Prepared {
        fds,
        cgroup_procs,
        root: cstring(&plan.root)?,
        binds: bind_pairs(&plan.root, &plan.binds)?,
        writable_binds: bind_pairs(&plan.root, &plan.writable_binds)?,
        program: cstring(&plan.program)?,
        argv: vec![std::ptr::null(); args.len() + 2],
        args,
        who: Confinement {
            uid: plan.uid,
            max_file_bytes: plan.max_file_bytes,
        },
        report,
    })
}

/// Starts `plan`; returns the child's pid (in coinopd's PID namespace) once it has exec'd.
pub fn spawn(plan: &Plan) -> Result<Pid, Error> {
    let (report_rx, report_tx) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(parent("pipe2"))?;
    // High like the passed fds, so placing those at 0..n cannot overwrite it.
    let report_tx = {
        let high = high_copy(&report_tx)?;
        drop(report_tx);
        high
    };
    let mut prepared = prepare(plan, report_tx.as_raw_fd())?;
    let report = ReportTo::Pipe(prepared.report);
    // SAFETY: `run_child` makes only system calls, on `prepared` (built above), and its
    // frames are small.
    let pid = unsafe {
        start_child(plan.new_net_ns, report, |child| {
            run_child(child, &mut prepared)
        })
    }?;
    drop(report_tx);
    let mut reply = Vec::new();
    let _ = std::fs::File::from(report_rx).read_to_end(&mut reply);
    if let Some(failure) = child_failure(&reply) {
        // Reap the failed child so it does not linger as a zombie.
        let _ = nix::sys::wait::waitpid(pid, None);
        return Err(failure);
    }
    Ok(pid)
}

/// Where a cloned child sends the step it failed at.
#[derive(Clone, Copy)]
pub(super) enum ReportTo {
    /// The write end of a pipe ([`spawn`]).
    Pipe(RawFd),
    /// A connected socket ([`super::parked`]), written without SIGPIPE.
    Socket(RawFd),
}

/// Clones a child into the jail's new namespaces ([`syscalls::clone_jailed`]) that runs
/// `steps`, which end in exec. If a step fails, the child sends (step, errno low byte,
/// errno high byte) to `report` (see [`child_failure`]) and exits with 127. Returns the
/// child's pid.
///
/// # Safety
///
/// As for [`syscalls::clone_jailed`]: `steps` runs in a single-threaded copy of coinopd,
/// so it must make only system calls on memory prepared before the clone (no allocation,
/// no locks, no panics) and fit in the child's stack.
pub(super) unsafe fn start_child(
    new_net_ns: bool,
    report: ReportTo,
    mut steps: impl FnMut(&ClonedChild) -> Result<Infallible, Failure>,
) -> Result<Pid, Error> {
    let child = move |child: &ClonedChild| -> Infallible {
        let (step, errno) = match steps(child) {
            Err(failure) => failure,
            Ok(never) => match never {},
        };
        let msg = failure_message(step, errno);
        // Best effort: the child ends right after either way.
        let _ = match report {
            ReportTo::Pipe(fd) => child.write(fd, &msg),
            ReportTo::Socket(fd) => nix::sys::socket::send(fd, &msg, MsgFlags::MSG_NOSIGNAL),
        };
        child.exit(127)
    };
    // SAFETY: besides the caller's `steps` (see # Safety), the child only fills a stack
    // array, writes or sends it (nix's `send` is the bare system call) and calls _exit.
    unsafe { syscalls::clone_jailed(new_net_ns, child) }.map_err(parent("clone"))
}

/// What a child of [`start_child`] sends when `step` failed with `errno`.
fn failure_message(step: Step, errno: nix::Error) -> [u8; 3] {
    [
        step as u8,
        (errno as i32 as u32 & 0xff) as u8,
        (errno as i32 >> 8) as u8,
    ]
}

/// The failure a child reported from [`start_child`], if `msg` is such a report.
pub(super) fn child_failure(msg: &[u8]) -> Option<Error> {
    match *msg {
        [step, lo, hi] => Some(Error::Child {
            step: Step::from_byte(step).unwrap_or(Step::Exec),
            source: nix::Error::from_raw(i32::from(lo) | (i32::from(hi) << 8)),
        }),
        _ => None,
    }
}

pub(super) type Failure = (Step, nix::Error);

pub(super) fn at<T>(step: Step, result: nix::Result<T>) -> Result<T, Failure> {
    result.map_err(|e| (step, e))
}

/// The child between clone and exec. Only system calls: see the module doc.
fn run_child(child: &ClonedChild, p: &mut Prepared) -> Result<Infallible, Failure> {
    place_fds(child, p.fds.iter().map(AsRawFd::as_raw_fd))?;
    at(Step::Session, nix::unistd::setsid())?;
    join_cgroup(child, &p.cgroup_procs)?;
    enter_root(&p.root, &p.binds, &p.writable_binds)?;
    confine_and_exec(
        child,
        p.fds.len(),
        p.report,
        p.who,
        &p.program,
        p.args.iter().map(CString::as_c_str),
        &mut p.argv,
    )
}

/// Places the `i`th of `fds` at fd `i`. Each must be above the number of fds (see
/// [`HIGH_FD`]), so no placement overwrites one not yet placed.
pub(super) fn place_fds(
    child: &ClonedChild,
    fds: impl IntoIterator<Item = RawFd>,
) -> Result<(), Failure> {
    for (target, fd) in fds.into_iter().enumerate() {
        at(Step::PlaceFds, child.dup2(fd, target as RawFd))?;
    }
    Ok(())
}

/// Moves the calling process into the cgroup of each open `cgroup.procs` file.
pub(super) fn join_cgroup(child: &ClonedChild, procs: &[OwnedFd]) -> Result<(), Failure> {
    for procs in procs {
        // "0" means the writing process.
        at(Step::JoinCgroup, child.write(procs.as_raw_fd(), b"0"))?;
    }
    Ok(())
}

/// Closes every fd from `from` up but `keep`.
pub(super) fn close_from_but(child: &ClonedChild, from: RawFd, keep: RawFd) -> Result<(), Failure> {
    let below = child.close_range(from as libc::c_uint, (keep - 1) as libc::c_uint);
    at(Step::CloseFds, below)?;
    let above = child.close_range((keep + 1) as libc::c_uint, libc::c_uint::MAX);
    at(Step::CloseFds, above)
}

/// Bind-mounts `file` read-only (and without setuid or device nodes) onto `target`.
pub(super) fn bind_read_only(
    file: &std::ffi::CStr,
    target: &std::ffi::CStr,
) -> Result<(), Failure> {
    let none: Option<&str> = None;
    at(
        Step::Bind,
        nix::mount::mount(Some(file), target, none, MsFlags::MS_BIND, none),
    )?;
    remount_read_only(target)
}

/// Bind-mounts `file` writable (but without setuid or device nodes) onto `target`.
pub(super) fn bind_writable(file: &std::ffi::CStr, target: &std::ffi::CStr) -> Result<(), Failure> {
    let none: Option<&str> = None;
    at(
        Step::Bind,
        nix::mount::mount(Some(file), target, none, MsFlags::MS_BIND, none),
    )?;
    remount_writable(target)
}

/// Makes the bind mount at `target` nosuid and nodev, leaving it writable.
pub(super) fn remount_writable(target: &std::ffi::CStr) -> Result<(), Failure> {
    let none: Option<&str> = None;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    at(
        Step::Remount,
        nix::mount::mount(none, target, none, flags, none),
    )
}

/// Makes the bind mount at `target` read-only, nosuid and nodev.
pub(super) fn remount_read_only(target: &std::ffi::CStr) -> Result<(), Failure> {
    let none: Option<&str> = None;
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    at(
        Step::Remount,
        nix::mount::mount(none, target, none, flags, none),
    )
}

/// In a new mount namespace: binds `root` onto itself, `binds` (host, target) read-only
/// and `writable_binds` writable into it, pivots into it, drops the old root, remounts the root read-only and sets the
/// hostname.
pub(super) fn enter_root(
    root: &CString,
    binds: &[(CString, CString)],
    writable_binds: &[(CString, CString)],
) -> Result<(), Failure> {
    let none: Option<&str> = None;
    at(
        Step::PrivateMounts,
        nix::mount::mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none),
    )?;
    at(
        Step::Bind,
        nix::mount::mount(
            Some(root.as_c_str()),
            root.as_c_str(),
            none,
            MsFlags::MS_BIND,
            none,
        ),
    )?;
    for (host, target) in writable_binds {
        bind_writable(host, target)?;
    }
    for (host, target) in binds {
        bind_read_only(host, target)?;
    }
    at(Step::PivotRoot, nix::unistd::chdir(root.as_c_str()))?;
    at(Step::PivotRoot, nix::unistd::pivot_root(".", "."))?;
    at(
        Step::PivotRoot,
        nix::mount::umount2(".", MntFlags::MNT_DETACH),
    )?;
    at(Step::PivotRoot, nix::unistd::chdir("/"))?;
    // The root keeps device nodes (/dev/kvm) but nothing in it is writable or setuid.
    let read_only =
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID;
    at(
        Step::Remount,
        nix::mount::mount(none, "/", none, read_only, none),
    )?;
    at(Step::Hostname, nix::unistd::sethostname("coinop-guest"))
}

/// rlimits (`who`'s file size among them), `who`'s uid and gid, no-new-privileges, every
/// fd closed but `0..kept` and `report` (close-on-exec), then execve of `program` with
/// `args`; `argv` is room for the pointer array (`args` + 2).
pub(super) fn confine_and_exec<'a>(
    child: &ClonedChild,
    kept: usize,
    report: RawFd,
    who: Confinement,
    program: &'a CStr,
    args: impl IntoIterator<Item = &'a CStr>,
    argv: &mut [*const c_char],
) -> Result<Infallible, Failure> {
    at(
        Step::Rlimit,
        setrlimit(Resource::RLIMIT_NOFILE, MAX_FDS, MAX_FDS),
    )?;
    at(Step::Rlimit, setrlimit(Resource::RLIMIT_CORE, 0, 0))?;
    at(Step::Rlimit, setrlimit(Resource::RLIMIT_MEMLOCK, 0, 0))?;
    at(
        Step::Rlimit,
        setrlimit(
            Resource::RLIMIT_FSIZE,
            who.max_file_bytes,
            who.max_file_bytes,
        ),
    )?;
    at(Step::DropPrivileges, child.set_ids(who.uid))?;
    at(Step::NoNewPrivs, nix::sys::prctl::set_no_new_privs())?;
    // Everything but the passed fds and the report channel (close-on-exec) goes.
    close_from_but(child, kept as RawFd, report)?;
    Err((Step::Exec, child.execve(program, args, argv)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_message_reads_back_as_its_step_and_errno() {
        for (step, errno) in [
            (Step::Bind, nix::Error::ENOENT),
            (Step::Attach, nix::Error::EHWPOISON),
        ] {
            match child_failure(&failure_message(step, errno)) {
                Some(Error::Child { step: got, source }) => {
                    assert_eq!((got, source), (step, errno))
                }
                other => panic!("{other:?}"),
            }
        }
        // Nothing (an exec'd child) or anything but three bytes is no failure.
        assert!(child_failure(&[]).is_none());
        assert!(child_failure(&[1, 2]).is_none());
    }
}
