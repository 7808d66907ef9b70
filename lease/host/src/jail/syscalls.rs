//! The jail's raw system calls, each behind one safe (or, for `clone`, one documented
//! unsafe) wrapper that states once why the call is sound. The rest of the jail calls these
//! and nix's safe functions and has no `unsafe` of its own, except where it vouches for the
//! code it runs in a cloned child ([`clone_jailed`]).
//!
//! Two sides:
//! - coinopd's side (any thread): [`dup_above`], [`open_tree_clone`], [`pidfd_open`], which
//!   return the new fd owned, and [`clone_jailed`].
//! - the cloned child's side, between clone and exec: the methods of [`ClonedChild`], a
//!   proof that the caller runs in such a child. coinopd is multi-threaded and the child is a
//!   copy of it with one thread, so these never allocate or lock (they are plain system
//!   calls on memory prepared before the clone); that is also why some are here rather than
//!   nix's equivalents (nix's `recvmsg` collects fds into a `Vec`, glibc's `setresuid`
//!   signals the threads the child does not have).

use nix::sched::CloneFlags;
use nix::unistd::Pid;
use std::convert::Infallible;
use std::ffi::{c_char, CStr};
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Stack for a cloned child until it execs. It has no guard page: the child's frames must
/// stay well inside it (theirs are a few KiB).
const CHILD_STACK_BYTES: usize = 256 * 1024;

/// `open_tree(2)` flags (linux/mount.h): a detached copy of the mount, close-on-exec.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
/// `move_mount(2)` flag: the source is the fd itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// A copy of `fd`, close-on-exec, at the lowest free number not below `min`.
pub(super) fn dup_above(fd: BorrowedFd<'_>, min: RawFd) -> nix::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg};
    let copy = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(min))?;
    // SAFETY: F_DUPFD_CLOEXEC succeeded, so `copy` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// A detached bind mount of the file at `path` (`open_tree(2)` with `OPEN_TREE_CLONE`),
/// attachable in another mount namespace with [`ClonedChild::move_mount`].
pub(super) fn open_tree_clone(path: &CStr) -> nix::Result<OwnedFd> {
    // SAFETY: `path` is a NUL-terminated string borrowed for the call; the other arguments
    // are integers. On success the result is a new descriptor nothing else owns.
    unsafe {
        let fd = libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC,
        );
        if fd < 0 {
            return Err(nix::Error::last());
        }
        Ok(OwnedFd::from_raw_fd(fd as RawFd))
    }
}

/// A pidfd for `pid` (`pidfd_open(2)`): readable once the process ends.
pub(super) fn pidfd_open(pid: Pid) -> nix::Result<OwnedFd> {
    // SAFETY: integer arguments only. On success the result is a new descriptor nothing
    // else owns.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0);
        if fd < 0 {
            return Err(nix::Error::last());
        }
        Ok(OwnedFd::from_raw_fd(fd as RawFd))
    }
}

/// Clones coinopd into new mount, PID, IPC and UTS namespaces (and a new network namespace
/// when `new_net_ns`) and runs `child` in the copy on a stack of its own; SIGCHLD tells of
/// its end. The copy shares neither memory nor the fd table with coinopd. Returns its pid.
///
/// `child` cannot return: it ends the copy by exec or [`ClonedChild::exit`].
///
/// # Safety
///
/// `child` runs in a copy of a multi-threaded process that has only the cloning thread, so
/// it must be async-signal-safe: no allocation, no locks, no panics (each may wait forever
/// on a lock another thread held at the moment of the clone), only system calls on memory
/// prepared before. And its frames must fit in the 256 KiB stack, which has no guard page.
pub(super) unsafe fn clone_jailed(
    new_net_ns: bool,
    mut child: impl FnMut(&ClonedChild) -> Infallible,
) -> nix::Result<Pid> {
    // Deliberately no CLONE_VM, CLONE_FILES or CLONE_THREAD: ClonedChild's methods rely on
    // the copy having its own memory and fd table.
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if new_net_ns {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let mut stack = vec![0u8; CHILD_STACK_BYTES];
    let run = Box::new(move || -> isize { match child(&ClonedChild { _only_here: () }) {} });
    // SAFETY: the caller vouches that `child` is async-signal-safe and fits in `stack`
    // (see # Safety); `stack` outlives the call, and the child runs on its own copy of it.
    unsafe { nix::sched::clone(run, &mut stack, flags, Some(libc::SIGCHLD)) }
}

/// Proof that the code holding it runs in a child made by [`clone_jailed`], before exec:
/// a process with one thread and its own copies of coinopd's memory and fd table, which
/// ends by execve or `_exit` and so never runs a destructor. Hence its methods may close or
/// overwrite any fd number (no `OwnedFd` in the copy will close it again), and they make
/// only plain system calls (async-signal-safe: no allocation, no locks).
pub(super) struct ClonedChild {
    /// Made only by [`clone_jailed`].
    _only_here: (),
}

/// What one [`ClonedChild::recv_with_fds`] brought.
pub(super) struct Received {
    /// Data bytes (0: the peer closed the socket).
    pub bytes: usize,
    /// The data or the fds did not all fit.
    pub truncated: bool,
    /// How many fds were stored at the start of the given slice.
    pub fds: usize,
}

/// Room for a control message carrying fds, aligned for `cmsghdr` (a `Vec<u8>` might not
/// be). Allocated in coinopd before the clone.
pub(super) struct FdControl(Vec<usize>);

impl FdControl {
    /// Room for up to `N` fds.
    pub(super) fn new<const N: usize>() -> Self {
        let bytes = nix::cmsg_space!([RawFd; N]).len();
        FdControl(vec![0; bytes.div_ceil(std::mem::size_of::<usize>())])
    }
}

impl ClonedChild {
    /// `write(2)` of `bytes` to `fd`.
    pub(super) fn write(&self, fd: RawFd, bytes: &[u8]) -> nix::Result<usize> {
        // SAFETY: `bytes` is a live slice for the call and its length is passed with it;
        // `fd` is a number in this child's own table (see the type).
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        nix::Error::result(n).map(|n| n as usize)
    }

    /// `dup2(2)`: `from` also at `to`, replacing what was there (close-on-exec cleared).
    pub(super) fn dup2(&self, from: RawFd, to: RawFd) -> nix::Result<()> {
        // SAFETY: integer arguments only; overwriting `to` is sound here (see the type).
        let rc = unsafe { libc::dup2(from, to) };
        nix::Error::result(rc).map(drop)
    }

    /// `dup3(2)` with `O_CLOEXEC`: `from` also at `to`, replacing what was there.
    pub(super) fn dup3_cloexec(&self, from: RawFd, to: RawFd) -> nix::Result<()> {
        // SAFETY: integer arguments only; overwriting `to` is sound here (see the type).
        let rc = unsafe { libc::dup3(from, to, libc::O_CLOEXEC) };
        nix::Error::result(rc).map(drop)
    }

    /// A close-on-exec copy of `fd` at the lowest free number not below `min`.
    pub(super) fn dup_above(&self, fd: RawFd, min: RawFd) -> nix::Result<RawFd> {
        // SAFETY: integer arguments only; the copy is a new number in this child's table.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
        nix::Error::result(copy)
    }

    /// `close(2)`.
    pub(super) fn close(&self, fd: RawFd) -> nix::Result<()> {
        // SAFETY: an integer argument; closing any number is sound here (see the type).
        let rc = unsafe { libc::close(fd) };
        nix::Error::result(rc).map(drop)
    }

    /// `close_range(2)`: closes every fd from `first` to `last`, both included.
    pub(super) fn close_range(&self, first: libc::c_uint, last: libc::c_uint) -> nix::Result<()> {
        // SAFETY: integer arguments only; closing any number is sound here (see the type).
        let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0 as libc::c_uint) };
        nix::Error::result(rc).map(drop)
    }

    /// `move_mount(2)` of the detached mount `mount` (from [`open_tree_clone`]) onto `point`.
    pub(super) fn move_mount(&self, mount: RawFd, point: &CStr) -> nix::Result<()> {
        // SAFETY: `point` and the empty source path are NUL-terminated strings alive for the
        // call; the rest are integers.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mount,
                c"".as_ptr(),
                libc::AT_FDCWD,
                point.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        nix::Error::result(rc).map(drop)
    }

    /// One `recvmsg(2)` on `socket` (fds received close-on-exec) into `data`; the fds of its
    /// SCM_RIGHTS messages go to the start of `fds`, as many as fit.
    pub(super) fn recv_with_fds(
        &self,
        socket: RawFd,
        data: &mut [u8],
        control: &mut FdControl,
        fds: &mut [RawFd],
    ) -> nix::Result<Received> {
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        let mut count = 0;
        // SAFETY: an all-zero msghdr is valid plain data; it points at `iov`, `data` and
        // `control`, all exclusively borrowed for the call. `control` is aligned for cmsghdr
        // (see FdControl), and after recvmsg the CMSG_* functions walk only the
        // msg_controllen bytes the kernel filled; fd numbers are read unaligned.
        let (n, flags) = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = (control.0.len() * std::mem::size_of::<usize>()) as _;
            let n = libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n < 0 {
                return Err(nix::Error::last());
            }
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let passed = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    for i in 0..bytes / std::mem::size_of::<RawFd>() {
                        if count < fds.len() {
                            fds[count] = passed.add(i).read_unaligned();
                            count += 1;
                        }
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
            (n as usize, msg.msg_flags)
        };
        Ok(Received {
            bytes: n,
            truncated: flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0,
            fds: count,
        })
    }

    /// No supplementary groups, and real, effective and saved gid and uid all `id`.
    ///
    /// Raw system calls, not libc's wrappers: glibc's setgroups/setresgid/setresuid make
    /// every thread of the process change ids (signalling them and waiting on a futex under
    /// its thread-list lock), and this copy of a multi-threaded coinopd inherits that list
    /// and possibly a held lock but none of the threads: it would wait forever.
    pub(super) fn set_ids(&self, id: u32) -> nix::Result<()> {
        let id = id as libc::c_ulong;
        // SAFETY: setgroups with an empty list (size 0, null pointer), then integer
        // arguments only; each changes this (the only) thread's credentials.
        unsafe {
            let no_groups = std::ptr::null::<libc::gid_t>();
            nix::Error::result(libc::syscall(
                libc::SYS_setgroups,
                0 as libc::c_ulong,
                no_groups,
            ))?;
            nix::Error::result(libc::syscall(libc::SYS_setresgid, id, id, id))?;
            nix::Error::result(libc::syscall(libc::SYS_setresuid, id, id, id))?;
        }
        Ok(())
    }

    /// `execve(2)` of `program` with argv = `program`, then `args`, and an empty
    /// environment. `argv` is room for the pointer array (at least `args` + 2), allocated
    /// before the clone. Returns only on failure (E2BIG when `argv` is too small).
    pub(super) fn execve<'a>(
        &self,
        program: &'a CStr,
        args: impl IntoIterator<Item = &'a CStr>,
        argv: &mut [*const c_char],
    ) -> nix::Error {
        let mut argc = 0;
        for arg in std::iter::once(program).chain(args) {
            // The last slot is kept for the null, so `argv[argc]` below is in bounds.
            if argc + 1 >= argv.len() {
                return nix::Error::E2BIG;
            }
            argv[argc] = arg.as_ptr();
            argc += 1;
        }
        argv[argc] = std::ptr::null();
        let envp: [*const c_char; 1] = [std::ptr::null()];
        // SAFETY: argv's first `argc` pointers come from `program` and `args`, C strings
        // borrowed for this call, and a null follows them; envp is an empty null-terminated
        // array.
        unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        nix::Error::last()
    }

    /// Ends the child at once with `code`: no destructors, no atexit handlers, no stdio
    /// flush (all of which belong to coinopd).
    pub(super) fn exit(&self, code: i32) -> ! {
        // SAFETY: `_exit` takes an integer and ends the process; skipping destructors only
        // leaks this copy's memory.
        unsafe { libc::_exit(code) }
    }
}
