//! Pausing and kicking vCPU threads.
//!
//! A vCPU thread blocked in KVM_RUN (a halted guest, or one spinning in guest code) only
//! comes back to userspace on an exit. To pause it, the control thread sets the requested
//! state, then sends the thread a real-time signal whose handler sets `immediate_exit` in
//! that vCPU's `kvm_run`. KVM_RUN then returns EINTR whether the signal arrived during
//! the ioctl or just before it, so no kick is lost. The thread sees the request at its next
//! checkpoint and parks on a condition variable until resumed.
//!
//! A snapshot asks the parked threads for their state with a new *save round*: each wakes
//! once per round ([`Checkpoint::Save`]), saves its vCPU and parks again. The round is a
//! counter, so a thread that is slow to wake still answers exactly once.

use kvm_bindings::kvm_run;
use std::cell::Cell;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vmm_protocol::VmState;

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Errors of the kick machinery.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kick signal handler could not be installed.
    #[error("installing the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    /// The vCPUs did not reach their parking point in time.
    #[error("vCPUs did not pause within {0:?}")]
    PauseTimeout(Duration),
}

/// The signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer was registered by this same thread from its own VcpuFd's
        // kvm_run mapping, which lives as long as the thread (vCPU threads never exit).
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler; call once before starting vCPU threads.
pub fn install_kick_handler() -> Result<(), Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick).map_err(Error::Signal)
}

/// Called on a vCPU thread with its `kvm_run` so kicks can reach it.
pub fn register_kvm_run(run: *mut kvm_run) {
    KVM_RUN.with(|cell| cell.set(run));
}

/// What the VMM wants the vCPUs to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requested {
    /// Run the guest.
    Running,
    /// Park until resumed.
    Paused,
    /// Stop for good (the process is about to exit).
    Stopping,
}

/// The control protocol's name for each request (`status`, `pause`, `resume`, `stop`
/// replies).
impl From<Requested> for VmState {
    fn from(requested: Requested) -> VmState {
        match requested {
            Requested::Running => VmState::Running,
            Requested::Paused => VmState::Paused,
            Requested::Stopping => VmState::Stopping,
        }
    }
}

struct Inner {
    requested: Requested,
    parked: usize,
    threads: Vec<libc::pthread_t>,
    save_round: u64,
}

/// Shared between the vCPU threads and whoever pauses them.
pub struct RunState {
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl Default for RunState {
    fn default() -> Self {
        RunState {
            inner: Mutex::new(Inner {
                requested: Requested::Running,
                parked: 0,
                threads: Vec::new(),
                save_round: 0,
            }),
            changed: Condvar::new(),
        }
    }
}

/// What a vCPU thread should do after a checkpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum Checkpoint {
    /// Enter the guest.
    Run,
    /// Stop running the guest.
    Stop,
    /// Save this vCPU's state for a snapshot, then check in again (the VM stays paused).
    Save,
}

impl RunState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a thread panicked while holding it; the data (a state enum
        // and counters) is still meaningful, so keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the calling thread as a vCPU thread to kick.
    pub fn register_current_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.lock().threads.push(me);
    }

    /// The current request.
    pub fn requested(&self) -> Requested {
        self.lock().requested
    }

    /// vCPU side: parks while paused; tells the caller whether to run, stop or save.
    /// `seen_round` is the thread's own record of the last save round it answered (start
    /// it at 0).
    pub fn checkpoint(&self, seen_round: &mut u64) -> Checkpoint {
        let mut inner = self.lock();
        if inner.requested == Requested::Paused {
            inner.parked += 1;
            self.changed.notify_all();
            while inner.requested == Requested::Paused && inner.save_round == *seen_round {
                inner = self.changed.wait(inner).unwrap_or_else(|p| p.into_inner());
            }
            inner.parked -= 1;
            if inner.requested == Requested::Paused {
                *seen_round = inner.save_round;
                return Checkpoint::Save;
            }
        }
        match inner.requested {
            Requested::Stopping => Checkpoint::Stop,
            _ => Checkpoint::Run,
        }
    }

    /// Asks every parked vCPU thread to save its state once (see [`Checkpoint::Save`]).
    /// Call while paused.
    pub fn request_save(&self) {
        let mut inner = self.lock();
        inner.save_round += 1;
        self.changed.notify_all();
    }

    /// Requests a pause and waits until all `vcpus` threads are parked.
    pub fn pause(&self, vcpus: usize, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        if inner.requested == Requested::Stopping {
            return Ok(());
        }
        inner.requested = Requested::Paused;
        while inner.parked < vcpus {
            kick_all(&inner.threads);
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::PauseTimeout(timeout));
            }
            // Re-kick periodically: a thread still starting up registers itself later.
            let wait = (deadline - now).min(Duration::from_millis(10));
            inner = self
                .changed
                .wait_timeout(inner, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        let mut inner = self.lock();
        if inner.requested == Requested::Paused {
            inner.requested = Requested::Running;
            self.changed.notify_all();
        }
    }

    /// Marks the VM as stopping and wakes parked threads so they can see it.
    pub fn stop(&self) {
        let mut inner = self.lock();
        inner.requested = Requested::Stopping;
        self.changed.notify_all();
    }
}

fn kick_all(threads: &[libc::pthread_t]) {
    for &thread in threads {
        // SAFETY: vCPU threads never exit before the process does, so the handle is live;
        // the signal has a handler installed by `install_kick_handler`.
        unsafe { libc::pthread_kill(thread, kick_signal()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn pause_freezes_the_worker_and_resume_releases_it() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let state = Arc::new(RunState::default());
        let rounds = Arc::new(AtomicU32::new(0));
        let worker = {
            let (state, rounds) = (Arc::clone(&state), Arc::clone(&rounds));
            std::thread::spawn(move || {
                let mut round = 0;
                while state.checkpoint(&mut round) == Checkpoint::Run {
                    rounds.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        state
            .pause(1, Duration::from_secs(5))
            .expect("worker parks");
        assert_eq!(state.requested(), Requested::Paused);
        let frozen = rounds.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            rounds.load(Ordering::SeqCst),
            frozen,
            "no progress while paused"
        );
        state.resume();
        let deadline = Instant::now() + Duration::from_secs(5);
        while rounds.load(Ordering::SeqCst) == frozen && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            rounds.load(Ordering::SeqCst) > frozen,
            "progress after resume"
        );
        state.stop();
        worker.join().expect("worker exits cleanly");
    }

    #[test]
    fn each_save_round_wakes_a_parked_thread_once() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let state = Arc::new(RunState::default());
        let saves = Arc::new(AtomicU32::new(0));
        let worker = {
            let (state, saves) = (Arc::clone(&state), Arc::clone(&saves));
            std::thread::spawn(move || {
                let mut round = 0;
                loop {
                    match state.checkpoint(&mut round) {
                        Checkpoint::Run => std::thread::sleep(Duration::from_millis(1)),
                        Checkpoint::Save => {
                            saves.fetch_add(1, Ordering::SeqCst);
                        }
                        Checkpoint::Stop => return,
                    }
                }
            })
        };
        state.pause(1, Duration::from_secs(5)).expect("parks");
        for want in 1..=2 {
            state.request_save();
            let deadline = Instant::now() + Duration::from_secs(5);
            while saves.load(Ordering::SeqCst) < want && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            // Give a second, wrong wake-up the chance to show.
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(saves.load(Ordering::SeqCst), want, "one save per round");
            assert_eq!(state.requested(), Requested::Paused);
        }
        state.stop();
        worker.join().expect("worker exits cleanly");
    }

    #[test]
    fn pause_times_out_when_nobody_parks() {
        let state = RunState::default();
        let err = state.pause(1, Duration::from_millis(30));
        assert!(matches!(err, Err(Error::PauseTimeout(_))));
    }
}
