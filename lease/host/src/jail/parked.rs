//! A jailed child started ahead of a lease and parked before exec, so the costly steps of a
//! jailed spawn happen off the request path: the clone of coinopd, the new namespaces (a
//! network namespace takes ~1 ms), joining the lease cgroup (on cgroup v1 the first write to
//! `cgroup.procs` waits for an RCU grace period: 4-16 ms on a loaded host), and the
//! pivot_root with its unmount of the old root (another grace period).
//!
//! Parking: clone into the namespaces, new session, join the cgroup, close every inherited
//! fd but the launch socket, bind the VMM and its libraries read-only into the root, pivot
//! into it, then report "parked" and block on the socket. Launching: coinopd sends one
//! message with the VMM's arguments and, as SCM_RIGHTS, the fds it gets (0, 1, 2, ...) and
//! detached mounts made with `open_tree(2)` of the image files: the kernel (and initrd, and
//! root filesystem), which become read-only, and the lease's copy-on-write overlay, which
//! stays writable; the child attaches those at /kernel, /initrd, /rootfs and /overlay with
//! `move_mount(2)`, places the fds, drops to the lease's uid and execs. The message's second
//! byte says which of the four come, in that order (bit i for [`MOUNT_POINTS`]\[i\]). As with [`super::spawn`], a failing step sends (step,
//! errno) back and a successful exec closes the socket with nothing sent; the child makes
//! only system calls on buffers allocated before the clone.
//!
//! A parked child whose socket closes (coinopd dropped the slot, or died) exits.

use super::spawn::{
    at, check, confine_and_exec, cstring, enter_root, join_cgroup, remount_read_only,
    remount_writable, Error, Failure, Step, CHILD_STACK_BYTES, HIGH_FD,
};
use super::RootDisk;
use nix::sched::CloneFlags;
use nix::sys::socket::{ControlMessage, MsgFlags};
use nix::unistd::Pid;
use std::ffi::{c_char, CStr, CString, OsString};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Largest launch message (the VMM's arguments; a guest cmdline is at most 2 KiB).
const MAX_MESSAGE: usize = 16 * 1024;
/// Most VMM arguments a launch may carry.
const MAX_ARGS: usize = 64;
/// Most fds one launch passes: the VMM's and the image mounts.
const MAX_PASSED_FDS: usize = 16;
/// Where the parked child keeps its socket: above the VMM's fds and their [`HIGH_FD`]
/// copies, below the VMM's fd limit.
const PARKED_SOCK_FD: RawFd = 200;
/// Where the image mounts go inside the jail, in the order they are passed, and whether
/// each stays writable (only the lease's overlay).
const MOUNT_POINTS: [(&CStr, bool); 4] = [
    (c"/kernel", false),
    (c"/initrd", false),
    (c"/rootfs", false),
    (c"/overlay", true),
];
/// The kernel's bit in the mount mask: every launch passes one.
const KERNEL_MOUNT: u8 = 1;
/// `open_tree(2)` flags (linux/mount.h): a detached copy of the mount, close-on-exec.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
/// `move_mount(2)` flag: the source is the fd itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// What a parked child is built from.
pub(super) struct ParkPlan {
    /// The jail root on the host (mount points for the image files already in it).
    pub root: PathBuf,
    /// (host file, in-jail path) pairs bound read-only at park time: the VMM and libraries.
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// The VMM's path inside the jail.
    pub program: PathBuf,
    /// Open `cgroup.procs` files to join.
    pub cgroup_procs: Vec<OwnedFd>,
    /// uid = gid of the VMM.
    pub uid: u32,
    /// Also unshare the network namespace.
    pub new_net_ns: bool,
}

/// A parked child: coinopd's direct child, blocked on its launch socket.
#[derive(Debug)]
pub(super) struct Parked {
    pid: Pid,
    socket: Option<OwnedFd>,
}

/// Everything the child touches, allocated before the clone.
struct ChildState {
    socket: RawFd,
    cgroup_procs: Vec<OwnedFd>,
    root: CString,
    binds: Vec<(CString, CString)>,
    program: CString,
    uid: u32,
    message: Vec<u8>,
    control: Vec<u8>,
    received: [RawFd; MAX_PASSED_FDS],
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
}

fn parent(what: &'static str) -> impl FnOnce(nix::Error) -> Error {
    move |source| Error::Parent { what, source }
}

/// Starts a parked child for `plan`; returns once it reported "parked" (or failed).
pub(super) fn park(plan: ParkPlan) -> Result<Parked, Error> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(parent("socketpair"))?;
    let binds = plan
        .binds
        .iter()
        .map(|(host, in_jail)| {
            let target = super::root_dir::host_path(&plan.root, in_jail)
                .map_err(|_| Error::Nul(in_jail.display().to_string()))?;
            Ok((cstring(host)?, cstring(target)?))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let space = nix::cmsg_space!([RawFd; MAX_PASSED_FDS]);
    let mut state = ChildState {
        socket: theirs.as_raw_fd(),
        cgroup_procs: plan.cgroup_procs,
        root: cstring(&plan.root)?,
        binds,
        program: cstring(&plan.program)?,
        uid: plan.uid,
        message: vec![0; MAX_MESSAGE],
        control: vec![0; space.capacity().max(space.len())],
        received: [-1; MAX_PASSED_FDS],
        argv: vec![std::ptr::null(); MAX_ARGS + 2],
        envp: vec![std::ptr::null()],
    };
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if plan.new_net_ns {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let mut stack = vec![0u8; CHILD_STACK_BYTES];
    let child = Box::new(move || -> isize {
        let (step, errno) = match run_parked(&mut state) {
            Err(failure) => failure,
            Ok(never) => match never {},
        };
        report(PARKED_SOCK_FD, step, errno);
        // SAFETY: ends the child without unwinding or running the parent's destructors.
        unsafe { libc::_exit(127) }
    });
    // SAFETY: the child runs `run_parked` on its own stack and makes only system calls on
    // memory allocated before the clone (no allocation or locking) until execve or _exit,
    // as required after forking a multi-threaded process.
    let pid = unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(parent("clone"))?;
    drop(theirs);
    let parked = Parked {
        pid,
        socket: Some(ours),
    };
    match parked.reply()? {
        Reply::Message(m) if m == [0] => Ok(parked),
        Reply::Message(m) => Err(parked.failed(&m)),
        Reply::Closed => Err(parked.failed(&[])),
    }
}

/// One reply from the child.
enum Reply {
    Message(Vec<u8>),
    Closed,
}

impl Parked {
    fn socket(&self) -> RawFd {
        self.socket.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    fn reply(&self) -> Result<Reply, Error> {
        let mut buf = [0u8; 8];
        loop {
            match nix::sys::socket::recv(self.socket(), &mut buf, MsgFlags::empty()) {
                Ok(0) => return Ok(Reply::Closed),
                Ok(n) => return Ok(Reply::Message(buf[..n].to_vec())),
                Err(nix::Error::EINTR) => continue,
                Err(source) => {
                    return Err(Error::Parent {
                        what: "recv from the parked child",
                        source,
                    })
                }
            }
        }
    }

    /// Reaps the child after a failure report (`msg`, or nothing when it just died).
    fn failed(mut self, msg: &[u8]) -> Error {
        self.socket = None;
        let _ = nix::sys::wait::waitpid(self.pid, None);
        self.pid = Pid::from_raw(0);
        match msg {
            [step, lo, hi] => Error::Child {
                step: Step::from_byte(*step).unwrap_or(Step::Exec),
                source: nix::Error::from_raw(i32::from(*lo) | (i32::from(*hi) << 8)),
            },
            _ => Error::ParkedGone,
        }
    }

    /// The child's pid.
    pub(super) fn pid(&self) -> Pid {
        self.pid
    }

    /// Sends the launch: `args` for the VMM (after its path), `fds` to become its 0, 1, 2...,
    /// and the image files bound read-only at /kernel, /initrd and /rootfs and the overlay
    /// bound writable at /overlay. Returns once the VMM has exec'd.
    pub(super) fn launch(
        mut self,
        kernel: &Path,
        initrd: Option<&Path>,
        disk: Option<&RootDisk>,
        args: &[OsString],
        fds: Vec<OwnedFd>,
    ) -> Result<Pid, Error> {
        use std::os::unix::ffi::OsStrExt;
        let files = [
            Some(kernel),
            initrd,
            disk.map(|d| d.base.as_path()),
            disk.map(|d| d.overlay.as_path()),
        ];
        let mask = files
            .iter()
            .enumerate()
            .filter(|(_, f)| f.is_some())
            .fold(0u8, |mask, (i, _)| mask | (1 << i));
        let mounts = files
            .into_iter()
            .flatten()
            .map(detached_mount)
            .collect::<Result<Vec<_>, _>>()?;
        let mut message = vec![fds.len() as u8, mask];
        for arg in args {
            let bytes = arg.as_bytes();
            if bytes.contains(&0) {
                return Err(Error::Nul(arg.to_string_lossy().into_owned()));
            }
            message.extend_from_slice(bytes);
            message.push(0);
        }
        let raws: Vec<RawFd> = fds.iter().chain(&mounts).map(AsRawFd::as_raw_fd).collect();
        if message.len() > MAX_MESSAGE || args.len() > MAX_ARGS || raws.len() > MAX_PASSED_FDS {
            return Err(Error::LaunchTooBig {
                bytes: message.len(),
                args: args.len(),
                fds: raws.len(),
            });
        }
        let sent = nix::sys::socket::sendmsg::<()>(
            self.socket(),
            &[IoSlice::new(&message)],
            &[ControlMessage::ScmRights(&raws)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
        drop((fds, mounts));
        if sent.is_err() {
            return Err(self.failed(&[]));
        }
        match self.reply()? {
            Reply::Closed => {
                let pid = self.pid;
                // Exec'd: the pid is the VMM's now; it is reaped through its JailedChild.
                self.socket = None;
                self.pid = Pid::from_raw(0);
                Ok(pid)
            }
            Reply::Message(m) => Err(self.failed(&m)),
        }
    }
}

impl Drop for Parked {
    /// A parked child nobody launched is killed and reaped.
    fn drop(&mut self) {
        if self.pid.as_raw() > 0 {
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(self.pid, None);
        }
    }
}

/// A detached bind mount of `file`, attachable in another mount namespace.
fn detached_mount(file: &Path) -> Result<OwnedFd, Error> {
    let path = cstring(file)?;
    // SAFETY: open_tree with a NUL-terminated path and flags; returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Error::Parent {
            what: "open_tree of an image file",
            source: nix::Error::last(),
        });
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends (step, errno) to the parent; best effort, the child exits right after.
fn report(socket: RawFd, step: Step, errno: nix::Error) {
    let msg = [
        step as u8,
        (errno as i32 as u32 & 0xff) as u8,
        (errno as i32 >> 8) as u8,
    ];
    // SAFETY: a send of a stack buffer on our own socket.
    unsafe { libc::send(socket, msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL) };
}

/// The parked child. Only system calls: see the module doc.
fn run_parked(s: &mut ChildState) -> Result<std::convert::Infallible, Failure> {
    at(Step::Session, nix::unistd::setsid())?;
    join_cgroup(&s.cgroup_procs)?;
    if s.socket != PARKED_SOCK_FD {
        // SAFETY: dup3 of our open socket onto a fixed number, keeping close-on-exec.
        check(Step::CloseFds, unsafe {
            libc::dup3(s.socket, PARKED_SOCK_FD, libc::O_CLOEXEC)
        })?;
    }
    close_all_but(PARKED_SOCK_FD)?;
    enter_root(&s.root, &s.binds, &[])?;
    // SAFETY: a 1-byte send from a static buffer on our socket: "parked".
    let n = unsafe { libc::send(PARKED_SOCK_FD, [0u8].as_ptr().cast(), 1, libc::MSG_NOSIGNAL) };
    check(Step::Receive, n as libc::c_int)?;
    let (vmm_fds, len) = receive(s)?;
    place_received(&mut s.received[..vmm_fds])?;
    let argc = split_args(&s.message[2..len], &s.program, &mut s.argv)?;
    confine_and_exec(
        vmm_fds,
        PARKED_SOCK_FD,
        s.uid,
        &s.program,
        &s.argv[..argc + 1],
        &s.envp,
    )
}

/// Closes every fd but `keep`.
fn close_all_but(keep: RawFd) -> Result<(), Failure> {
    // SAFETY: close_range on our own descriptor table, around `keep`.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 0, (keep - 1) as libc::c_uint, 0) };
    check(Step::CloseFds, rc as libc::c_int)?;
    // SAFETY: as above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            (keep + 1) as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    };
    check(Step::CloseFds, rc as libc::c_int)
}

/// Waits for the launch message, attaches the image mounts and returns (how many VMM fds
/// are in `received`, message length). A closed socket (the slot was dropped) ends the child.
fn receive(s: &mut ChildState) -> Result<(usize, usize), Failure> {
    let mut iov = libc::iovec {
        iov_base: s.message.as_mut_ptr().cast(),
        iov_len: s.message.len(),
    };
    // SAFETY: msghdr is plain data; every field used is set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = s.control.as_mut_ptr().cast();
    msg.msg_controllen = s.control.len() as _;
    let n = loop {
        // SAFETY: recvmsg into buffers allocated before the clone and owned by `s`.
        let n = unsafe { libc::recvmsg(PARKED_SOCK_FD, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 && nix::Error::last() == nix::Error::EINTR {
            continue;
        }
        break n;
    };
    if n == 0 {
        // SAFETY: the slot was dropped: end quietly without unwinding.
        unsafe { libc::_exit(0) };
    }
    check(Step::Receive, n as libc::c_int)?;
    let n = n as usize;
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 || n < 2 {
        return Err((Step::Receive, nix::Error::EMSGSIZE));
    }
    let count = received_fds(&msg, &mut s.received);
    let (vmm_fds, mask) = (usize::from(s.message[0]), s.message[1]);
    let mounts = mask.count_ones() as usize;
    if mask & KERNEL_MOUNT == 0 || mask >> MOUNT_POINTS.len() != 0 || vmm_fds + mounts != count {
        return Err((Step::Receive, nix::Error::EBADMSG));
    }
    let points = MOUNT_POINTS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, point)| point);
    for (fd, (point, writable)) in s.received[vmm_fds..count].iter().zip(points) {
        // SAFETY: move_mount of a detached mount fd onto a path in our mount namespace.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                *fd,
                c"".as_ptr(),
                libc::AT_FDCWD,
                point.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        check(Step::Attach, rc as libc::c_int)?;
        if *writable {
            remount_writable(point)?;
        } else {
            remount_read_only(point)?;
        }
        // SAFETY: closing a descriptor we received and no longer need.
        unsafe { libc::close(*fd) };
    }
    Ok((vmm_fds, n))
}

/// Copies the SCM_RIGHTS fds of `msg` into `out`; returns how many.
fn received_fds(msg: &libc::msghdr, out: &mut [RawFd; MAX_PASSED_FDS]) -> usize {
    let mut count = 0;
    // SAFETY: walking the control buffer the kernel just filled, with the libc macros.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    if count < out.len() {
                        out[count] = data.add(i).read_unaligned();
                        count += 1;
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    count
}

/// Moves the received fds to `i` = 0, 1, 2... (through copies above [`HIGH_FD`], so no
/// placement overwrites one not yet placed).
fn place_received(fds: &mut [RawFd]) -> Result<(), Failure> {
    for fd in fds.iter_mut() {
        // SAFETY: F_DUPFD_CLOEXEC of a received fd, then closing the original.
        let high = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, HIGH_FD) };
        check(Step::PlaceFds, high)?;
        // SAFETY: as above.
        unsafe { libc::close(*fd) };
        *fd = high;
    }
    for (target, fd) in fds.iter().enumerate() {
        // SAFETY: dup2 onto a small fd number we own (dup2 clears close-on-exec there).
        check(Step::PlaceFds, unsafe { libc::dup2(*fd, target as RawFd) })?;
    }
    Ok(())
}

/// Fills `argv` with `program` and the NUL-terminated strings of `args`, then a null;
/// returns argc.
fn split_args(
    args: &[u8],
    program: &CString,
    argv: &mut [*const c_char],
) -> Result<usize, Failure> {
    if args.last().is_some_and(|b| *b != 0) {
        return Err((Step::Receive, nix::Error::EBADMSG));
    }
    argv[0] = program.as_ptr();
    let mut argc = 1;
    let mut start = 0;
    for (i, byte) in args.iter().enumerate() {
        if *byte == 0 {
            if argc >= argv.len() - 1 {
                return Err((Step::Receive, nix::Error::E2BIG));
            }
            argv[argc] = args[start..].as_ptr().cast();
            argc += 1;
            start = i + 1;
        }
    }
    argv[argc] = std::ptr::null();
    Ok(argc)
}
