//! Starting a process inside the jail: `clone(2)` straight into new mount, PID, IPC, UTS
//! (and optionally network) namespaces, so the VMM itself is PID 1 of its own namespace and
//! the direct child of coinopd. Everything the child needs is prepared before the clone;
//! between clone and exec the child only makes system calls (no allocation, no locks),
//! because coinopd is multi-threaded.
//!
//! Child steps, in order: passed fds to 0..n, new session, join the lease cgroup (write "0"
//! to each `cgroup.procs`), private mount propagation, bind the jail root onto itself and the
//! read-only files into it, pivot_root into it and drop the old root, remount the root
//! read-only, hostname, rlimits, drop supplementary groups, gid and uid to the lease's,
//! no-new-privileges, close every other fd, execve. A failing step reports (step, errno) on
//! a close-on-exec pipe, so the parent learns exactly what went wrong; a successful exec
//! closes that pipe with nothing written.

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::resource::{setrlimit, Resource};
use std::ffi::{c_char, CString};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Passed fds are first copied to at least this number, so placing them at 0..n in the
/// child never overwrites one not yet placed.
pub(super) const HIGH_FD: RawFd = 64;
/// Stack for the cloned child until it execs.
pub(super) const CHILD_STACK_BYTES: usize = 256 * 1024;
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

/// What to start and how to confine it; see [`super::Jail::spawn`].
pub struct Plan {
    /// The jail root on the host.
    pub root: std::path::PathBuf,
    /// (host file, in-jail path) pairs bind-mounted read-only.
    pub binds: Vec<(std::path::PathBuf, std::path::PathBuf)>,
    /// (host file, in-jail path) pairs bind-mounted writable (nosuid, nodev).
    pub writable_binds: Vec<(std::path::PathBuf, std::path::PathBuf)>,
    /// Program path inside the jail.
    pub program: std::path::PathBuf,
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
}

/// Everything the child touches, in final form.
struct Prepared {
    fds: Vec<OwnedFd>,
    cgroup_procs: Vec<OwnedFd>,
    root: CString,
    binds: Vec<(CString, CString)>,
    writable_binds: Vec<(CString, CString)>,
    program: CString,
    /// Owns the strings `argv_ptrs` points into.
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    uid: u32,
    report: RawFd,
}

pub(super) fn high_copy(fd: &OwnedFd) -> Result<OwnedFd, Error> {
    // SAFETY: F_DUPFD_CLOEXEC on a live fd returns a new fd we then own.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, HIGH_FD) };
    if copy < 0 {
        return Err(Error::Parent {
            what: "F_DUPFD_CLOEXEC",
            source: nix::Error::last(),
        });
    }
    // SAFETY: `copy` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
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
    let bind_pairs = |list: &[(std::path::PathBuf, std::path::PathBuf)]| {
        list.iter()
            .map(|(host, in_jail)| {
                let target = super::root_dir::host_path(&plan.root, in_jail)
                    .map_err(|_| Error::Nul(in_jail.display().to_string()))?;
                Ok((cstring(host)?, cstring(target)?))
            })
            .collect::<Result<Vec<_>, Error>>()
    };
    let binds = bind_pairs(&plan.binds)?;
    let writable_binds = bind_pairs(&plan.writable_binds)?;
    let program = cstring(&plan.program)?;
    let mut argv = vec![program.clone()];
    for arg in &plan.args {
        argv.push(cstring(arg)?);
    }
    let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    Ok(Prepared {
        fds,
        cgroup_procs,
        root: cstring(&plan.root)?,
        binds,
        writable_binds,
        program,
        _argv: argv,
        argv_ptrs,
        envp: vec![std::ptr::null()],
        uid: plan.uid,
        report,
    })
}

/// Starts `plan`; returns the child's pid (in coinopd's PID namespace) once it has exec'd.
pub fn spawn(plan: &Plan) -> Result<nix::unistd::Pid, Error> {
    let (report_rx, report_tx) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|source| Error::Parent {
            what: "pipe2",
            source,
        })?;
    // High like the passed fds, so placing those at 0..n cannot overwrite it.
    let report_tx = {
        let high = high_copy(&report_tx)?;
        drop(report_tx);
        high
    };
    let prepared = prepare(plan, report_tx.as_raw_fd())?;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if plan.new_net_ns {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let mut stack = vec![0u8; CHILD_STACK_BYTES];
    let child = Box::new(|| -> isize {
        let (step, errno) = match run_child(&prepared) {
            Err(failure) => failure,
            Ok(never) => match never {},
        };
        let msg = [
            step as u8,
            (errno as i32 as u32 & 0xff) as u8,
            (errno as i32 >> 8) as u8,
        ];
        // SAFETY: writing a stack buffer to our report pipe, then ending without unwinding.
        unsafe {
            libc::write(prepared.report, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    });
    // SAFETY: the child runs `run_child` on its own 256 KiB stack, which makes only system
    // calls (no allocation or locking) before execve or _exit, as required after forking a
    // multi-threaded process.
    let pid = unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }.map_err(
        |source| Error::Parent {
            what: "clone",
            source,
        },
    )?;
    drop(report_tx);
    let mut reply = Vec::new();
    let _ = std::fs::File::from(report_rx).read_to_end(&mut reply);
    if let [step, lo, hi] = reply[..] {
        // Reap the failed child so it does not linger as a zombie.
        let _ = nix::sys::wait::waitpid(pid, None);
        let errno = i32::from(lo) | (i32::from(hi) << 8);
        return Err(Error::Child {
            step: Step::from_byte(step).unwrap_or(Step::Exec),
            source: nix::Error::from_raw(errno),
        });
    }
    Ok(pid)
}

pub(super) type Failure = (Step, nix::Error);

pub(super) fn at<T>(step: Step, result: nix::Result<T>) -> Result<T, Failure> {
    result.map_err(|e| (step, e))
}

pub(super) fn check(step: Step, rc: libc::c_int) -> Result<(), Failure> {
    if rc < 0 {
        Err((step, nix::Error::last()))
    } else {
        Ok(())
    }
}

/// The child between clone and exec. Only system calls: see the module doc.
fn run_child(p: &Prepared) -> Result<std::convert::Infallible, Failure> {
    place_fds(&p.fds)?;
    at(Step::Session, nix::unistd::setsid())?;
    join_cgroup(&p.cgroup_procs)?;
    enter_root(&p.root, &p.binds, &p.writable_binds)?;
    confine_and_exec(
        p.fds.len(),
        p.report,
        p.uid,
        &p.program,
        &p.argv_ptrs,
        &p.envp,
    )
}

/// Places `fds[i]` at fd `i`. Each source must be above `fds.len()` (see [`HIGH_FD`]).
pub(super) fn place_fds(fds: &[OwnedFd]) -> Result<(), Failure> {
    for (target, fd) in fds.iter().enumerate() {
        // SAFETY: dup2 onto a small fd number; the source is open, and the target's previous
        // occupant (if any) is ours to replace.
        check(Step::PlaceFds, unsafe {
            libc::dup2(fd.as_raw_fd(), target as RawFd)
        })?;
    }
    Ok(())
}

/// Moves the calling process into the cgroup of each open `cgroup.procs` file.
pub(super) fn join_cgroup(procs: &[OwnedFd]) -> Result<(), Failure> {
    for procs in procs {
        // SAFETY: a 1-byte write from a static buffer to an open cgroup.procs file;
        // "0" means the writing process.
        let n = unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) };
        check(Step::JoinCgroup, n as libc::c_int)?;
    }
    Ok(())
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
    const HOSTNAME: &[u8] = b"coinop-guest";
    // SAFETY: a static byte string and its length; sethostname copies it.
    check(Step::Hostname, unsafe {
        libc::sethostname(HOSTNAME.as_ptr().cast(), HOSTNAME.len())
    })
}

/// rlimits, the lease's uid and gid, no-new-privileges, every fd closed but `0..kept` and
/// `report` (close-on-exec), then execve.
pub(super) fn confine_and_exec(
    kept: usize,
    report: RawFd,
    uid: u32,
    program: &CString,
    argv: &[*const c_char],
    envp: &[*const c_char],
) -> Result<std::convert::Infallible, Failure> {
    at(
        Step::Rlimit,
        setrlimit(Resource::RLIMIT_NOFILE, MAX_FDS, MAX_FDS),
    )?;
    at(Step::Rlimit, setrlimit(Resource::RLIMIT_CORE, 0, 0))?;
    at(Step::Rlimit, setrlimit(Resource::RLIMIT_MEMLOCK, 0, 0))?;
    // Raw system calls, not libc's wrappers: glibc's setgroups/setresgid/setresuid make
    // every thread of the process change ids (signalling them and waiting on a futex under
    // its thread-list lock), and this copy of a multi-threaded coinopd inherits that list
    // and possibly a held lock but none of the threads: it would wait forever.
    let id = uid as libc::c_ulong;
    // SAFETY: setgroups with an empty list (size 0, null pointer) for this thread only.
    check(Step::DropPrivileges, unsafe {
        libc::syscall(
            libc::SYS_setgroups,
            0 as libc::c_ulong,
            std::ptr::null::<libc::gid_t>(),
        ) as libc::c_int
    })?;
    // SAFETY: integer arguments only; changes this (the only) thread's gids.
    check(Step::DropPrivileges, unsafe {
        libc::syscall(libc::SYS_setresgid, id, id, id) as libc::c_int
    })?;
    // SAFETY: integer arguments only; changes this (the only) thread's uids.
    check(Step::DropPrivileges, unsafe {
        libc::syscall(libc::SYS_setresuid, id, id, id) as libc::c_int
    })?;
    // SAFETY: prctl with integer arguments only.
    check(Step::NoNewPrivs, unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    })?;
    // Everything but the passed fds and the report channel (close-on-exec) goes.
    // SAFETY: close_range on our own descriptor table; the report fd is re-checked below.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            kept as libc::c_uint,
            (report - 1) as libc::c_uint,
            0,
        )
    };
    check(Step::CloseFds, rc as libc::c_int)?;
    // SAFETY: as above, for the fds above the report fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            (report + 1) as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    };
    check(Step::CloseFds, rc as libc::c_int)?;
    // SAFETY: program, argv and envp are NUL-terminated arrays of C strings built before the
    // clone and alive in this copy of the address space.
    unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err((Step::Exec, nix::Error::last()))
}
