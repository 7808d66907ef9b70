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
//! `move_mount(2)`, places the fds, sets the VMM's file size limit, drops to the lease's uid
//! and execs. The message's second byte says which of the six come, in that order (bit i
//! for [`MOUNT_POINTS`]\[i\]), its next eight the file size limit ([`HEADER`]). As with
//! [`super::spawn`], a failing step sends (step,
//! errno) back and a successful exec closes the socket with nothing sent; the child makes
//! only system calls on buffers allocated before the clone.
//!
//! A parked child whose socket closes (coinopd dropped the slot, or died) exits.

use super::spawn::{
    at, bind_pairs, child_failure, close_from_but, confine_and_exec, cstring, enter_root,
    join_cgroup, parent, place_fds, remount_read_only, remount_writable, start_child, Confinement,
    Error, Failure, ReportTo, Step, HIGH_FD,
};
use super::syscalls::{self, ClonedChild, FdControl};
use super::RootDisk;
use nix::sys::socket::{ControlMessage, MsgFlags};
use nix::unistd::Pid;
use std::convert::Infallible;
use std::ffi::{c_char, CStr, CString, OsString};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
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
const MOUNT_POINTS: [(&CStr, bool); 6] = [
    (c"/kernel", false),
    (c"/initrd", false),
    (c"/rootfs", false),
    (c"/overlay", true),
    // A golden snapshot's files, for a lease restored from it (see super::SNAPSHOT_PATH).
    (c"/snapshot/state", false),
    (c"/snapshot/memory", false),
];
/// A launch message's fixed start: the VMM fd count, the mount mask, RLIMIT_FSIZE (u64,
/// little-endian); the arguments follow.
const HEADER: usize = 10;
/// The kernel's bit in the mount mask: every launch passes one.
const KERNEL_MOUNT: u8 = 1;

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

/// The files a launch mounts in the jail (see [`Parked::launch`]).
pub(super) struct LaunchImages<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub disk: Option<&'a RootDisk>,
    /// A golden snapshot's directory, for a restore.
    pub snapshot: Option<&'a Path>,
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
    control: FdControl,
    received: [RawFd; MAX_PASSED_FDS],
    /// Room for the VMM's argv (program, arguments, null).
    argv: Vec<*const c_char>,
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
    let mut state = ChildState {
        socket: theirs.as_raw_fd(),
        cgroup_procs: plan.cgroup_procs,
        root: cstring(&plan.root)?,
        binds: bind_pairs(&plan.root, &plan.binds)?,
        program: cstring(&plan.program)?,
        uid: plan.uid,
        message: vec![0; MAX_MESSAGE],
        control: FdControl::new::<MAX_PASSED_FDS>(),
        received: [-1; MAX_PASSED_FDS],
        argv: vec![std::ptr::null(); MAX_ARGS + 2],
    };
    // SAFETY: `run_parked` makes only system calls, on `state` (allocated above), and its
    // frames are small.
    let pid = unsafe {
        start_child(
            plan.new_net_ns,
            ReportTo::Socket(PARKED_SOCK_FD),
            move |child| run_parked(child, &mut state),
        )
    }?;
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
        child_failure(msg).unwrap_or(Error::ParkedGone)
    }

    /// The child's pid.
    pub(super) fn pid(&self) -> Pid {
        self.pid
    }

    /// Sends the launch: `args` for the VMM (after its path), `fds` to become its 0, 1, 2...,
    /// and the image files bound read-only at /kernel, /initrd and /rootfs, the overlay
    /// bound writable at /overlay and a golden snapshot's `state` and `memory` (from the
    /// directory `snapshot`) read-only under /snapshot. Returns once the VMM has exec'd.
    pub(super) fn launch(
        mut self,
        images: LaunchImages<'_>,
        max_file_bytes: u64,
        args: &[OsString],
        fds: Vec<OwnedFd>,
    ) -> Result<Pid, Error> {
        use std::os::unix::ffi::OsStrExt;
        let LaunchImages {
            kernel,
            initrd,
            disk,
            snapshot,
        } = images;
        let state = snapshot.map(|d| d.join("state"));
        let memory = snapshot.map(|d| d.join("memory"));
        let files = [
            Some(kernel),
            initrd,
            disk.map(|d| d.base.as_path()),
            disk.map(|d| d.overlay.as_path()),
            state.as_deref(),
            memory.as_deref(),
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
        message.extend_from_slice(&max_file_bytes.to_le_bytes());
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
    syscalls::open_tree_clone(&cstring(file)?).map_err(parent("open_tree of an image file"))
}

/// The parked child. Only system calls: see the module doc.
fn run_parked(child: &ClonedChild, s: &mut ChildState) -> Result<Infallible, Failure> {
    // The socket goes to its fixed number first: failures are reported there, so one in
    // any later step (a cgroup join refused, say) reaches coinopd with its step and errno.
    if s.socket != PARKED_SOCK_FD {
        at(Step::CloseFds, child.dup3_cloexec(s.socket, PARKED_SOCK_FD))?;
    }
    at(Step::Session, nix::unistd::setsid())?;
    join_cgroup(child, &s.cgroup_procs)?;
    close_from_but(child, 0, PARKED_SOCK_FD)?;
    enter_root(&s.root, &s.binds, &[])?;
    // "parked".
    let sent = nix::sys::socket::send(PARKED_SOCK_FD, &[0], MsgFlags::MSG_NOSIGNAL);
    at(Step::Receive, sent)?;
    let (vmm_fds, len) = receive(child, s)?;
    place_received(child, &mut s.received[..vmm_fds])?;
    let mut limit = [0u8; 8];
    limit.copy_from_slice(&s.message[2..HEADER]);
    let who = Confinement {
        uid: s.uid,
        max_file_bytes: u64::from_le_bytes(limit),
    };
    let args = split_args(&s.message[HEADER..len])?;
    confine_and_exec(
        child,
        vmm_fds,
        PARKED_SOCK_FD,
        who,
        &s.program,
        args,
        &mut s.argv,
    )
}

/// Waits for the launch message, attaches the image mounts and returns (how many VMM fds
/// are in `received`, message length). A closed socket (the slot was dropped) ends the child.
fn receive(child: &ClonedChild, s: &mut ChildState) -> Result<(usize, usize), Failure> {
    let got = loop {
        match child.recv_with_fds(
            PARKED_SOCK_FD,
            &mut s.message,
            &mut s.control,
            &mut s.received,
        ) {
            Err(nix::Error::EINTR) => continue,
            got => break at(Step::Receive, got)?,
        }
    };
    if got.bytes == 0 {
        // The slot was dropped: end quietly.
        child.exit(0);
    }
    if got.truncated || got.bytes < HEADER {
        return Err((Step::Receive, nix::Error::EMSGSIZE));
    }
    let count = got.fds;
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
        at(Step::Attach, child.move_mount(*fd, point))?;
        if *writable {
            remount_writable(point)?;
        } else {
            remount_read_only(point)?;
        }
        // Attached: the mount no longer needs the fd.
        let _ = child.close(*fd);
    }
    Ok((vmm_fds, got.bytes))
}

/// Moves the received fds to `i` = 0, 1, 2... (through copies above [`HIGH_FD`], so no
/// placement overwrites one not yet placed).
fn place_received(child: &ClonedChild, fds: &mut [RawFd]) -> Result<(), Failure> {
    for fd in fds.iter_mut() {
        let high = at(Step::PlaceFds, child.dup_above(*fd, HIGH_FD))?;
        let _ = child.close(*fd);
        *fd = high;
    }
    place_fds(child, fds.iter().copied())
}

/// The NUL-terminated strings of `args`: the VMM's arguments after its path.
fn split_args(args: &[u8]) -> Result<impl Iterator<Item = &CStr>, Failure> {
    if args.last().is_some_and(|b| *b != 0) {
        return Err((Step::Receive, nix::Error::EBADMSG));
    }
    if args.iter().filter(|b| **b == 0).count() > MAX_ARGS {
        return Err((Step::Receive, nix::Error::E2BIG));
    }
    // Each piece ends with its only NUL, so none is dropped.
    Ok(args
        .split_inclusive(|b| *b == 0)
        .filter_map(|arg| CStr::from_bytes_with_nul(arg).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(args: &[u8]) -> Result<Vec<&[u8]>, Failure> {
        Ok(split_args(args)?.map(CStr::to_bytes).collect())
    }

    #[test]
    fn launch_arguments_split_at_each_nul() {
        assert_eq!(split(b"").unwrap(), Vec::<&[u8]>::new());
        assert_eq!(
            split(b"--kernel\0\0/kernel\0").unwrap(),
            [&b"--kernel"[..], b"", b"/kernel"]
        );
        assert_eq!(
            split(b"--kernel").unwrap_err(),
            (Step::Receive, nix::Error::EBADMSG)
        );
        let most = b"x\0".repeat(MAX_ARGS);
        assert_eq!(split(&most).unwrap().len(), MAX_ARGS);
        let too_many = b"x\0".repeat(MAX_ARGS + 1);
        assert_eq!(
            split(&too_many).unwrap_err(),
            (Step::Receive, nix::Error::E2BIG)
        );
    }
}
