//! The device thread: waits on the queues' ioeventfds (and the device's own fds) with epoll
//! and hands each readiness to the device; plus the queue helpers devices share, down to a
//! drain of a queue whose chains are served one at a time ([`drain_queue`]).
//!
//! A pass over a queue is bounded ([`PASS_CHAINS`], [`PASS_BYTES`]): the guest decides how
//! many chains a ring holds and, with a buffer over its own ring or descriptors used many
//! times, can make it look never empty. A pass that ends on its budget leaves the queue
//! marked unfinished and the thread goes back to epoll, without blocking, before serving it
//! again: a stop request (reset, snapshot) is seen between passes, and the rest of the ring
//! is served without a new notification.

use super::interrupt::Interrupt;
use super::persist::DeviceState;
use super::{DeviceError, Served, VirtioDevice};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Device threads need little stack: requests are copied through heap buffers.
const DEVICE_STACK_BYTES: usize = 256 * 1024;
const STOP_TOKEN: u64 = u64::MAX;
/// Extra fds are numbered from here; queues from 0.
const EXTRA_TOKEN_BASE: u64 = 1 << 32;
/// Chains one pass over a queue serves at most: a quarter of a 256-entry ring, so a full
/// ring of small requests is answered in a few passes, each with its interrupt.
pub const PASS_CHAINS: u32 = 64;
/// Bytes one pass moves at most (the pass ends after the chain that reaches it): two of
/// the largest block requests, some milliseconds of copying.
pub const PASS_BYTES: u64 = 16 << 20;

/// What a device thread is started with; it lives as long as the VMM.
pub struct WorkerSetup {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// One ioeventfd per queue, in queue order.
    pub queue_events: Vec<EventFd>,
    /// The device's interrupt line.
    pub interrupt: Arc<Interrupt>,
}

/// A device's queues after DRIVER_OK, validated by the transport.
pub struct Activation {
    /// The queues.
    pub queues: Vec<Queue>,
    /// Negotiated features.
    pub acked_features: u64,
    /// `--restore`: the device's state from the snapshot, loaded before serving.
    pub restore: Option<DeviceState>,
}

/// What a session leaves when it ends: the queues (with their ring positions) and the
/// device's own state, or why it has none to give (a disk that would not flush).
pub type Session = (Vec<Queue>, Result<DeviceState, String>);

/// The transport's handle on its device thread.
///
/// The thread is started with the VM, not at DRIVER_OK: the guest's DRIVER_OK arrives on
/// a vCPU thread, which (under seccomp) may not create threads, dup fds or set up epoll.
/// Activation and reset are then only a channel message and an eventfd write.
pub struct Worker {
    activate: Sender<Activation>,
    stop: EventFd,
    stopped: Receiver<Session>,
    active: bool,
}

impl Worker {
    /// Starts the thread `name` for `device`; it idles until [`Worker::activate`].
    pub fn spawn(
        name: String,
        device: Box<dyn VirtioDevice>,
        setup: WorkerSetup,
    ) -> std::io::Result<Worker> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let stop_for_thread = stop.try_clone()?;
        let epoll = Epoll::new()?;
        let add = |fd, events, token| {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
        };
        add(stop.as_raw_fd(), EventSet::IN, STOP_TOKEN)?;
        for (i, evt) in setup.queue_events.iter().enumerate() {
            add(evt.as_raw_fd(), EventSet::IN, i as u64)?;
        }
        for (i, extra) in device.extra_fds().into_iter().enumerate() {
            add(extra.fd, extra.events, EXTRA_TOKEN_BASE + i as u64)?;
        }
        let (activate, activations) = mpsc::channel();
        let (stopped_tx, stopped) = mpsc::channel();
        let thread = DeviceThread {
            device,
            setup,
            epoll,
            stop: stop_for_thread,
        };
        std::thread::Builder::new()
            .name(name)
            .stack_size(DEVICE_STACK_BYTES)
            .spawn(move || thread.run(&activations, &stopped_tx))?;
        Ok(Worker {
            activate,
            stop,
            stopped,
            active: false,
        })
    }

    /// Hands the queues to the thread; false if the thread is gone.
    pub fn activate(&mut self, activation: Activation) -> bool {
        self.active = self.activate.send(activation).is_ok();
        self.active
    }

    /// Stops serving (a device reset, or a snapshot) and waits until the thread no longer
    /// touches the queues; returns them and the device's state (None if not serving).
    pub fn stop(&mut self) -> Option<Session> {
        if !self.active {
            return None;
        }
        // A failed write means the counter is saturated, which also wakes the thread.
        let _ = self.stop.write(1);
        let session = self.stopped.recv().ok();
        self.active = false;
        session
    }

    /// Whether the thread is serving queues.
    pub fn is_active(&self) -> bool {
        self.active
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // The thread ends when its activation channel closes, after leaving any session.
        let _ = self.stop.write(1);
    }
}

struct DeviceThread {
    device: Box<dyn VirtioDevice>,
    setup: WorkerSetup,
    epoll: Epoll,
    stop: EventFd,
}

impl DeviceThread {
    fn run(mut self, activations: &Receiver<Activation>, stopped: &Sender<Session>) {
        // Before touching any queue: a guest-controlled request is parsed only under it.
        crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Device);
        while let Ok(activation) = activations.recv() {
            self.device.set_acked_features(activation.acked_features);
            if let Some(state) = &activation.restore {
                self.device.restore_state(state);
            }
            let mut queues = activation.queues;
            if let Err(e) = self.serve(&mut queues) {
                crate::devices::device_log::say(format_args!(
                    "virtio device {}: {e}; device needs reset",
                    self.device.device_type()
                ));
                let _ = self.setup.interrupt.signal_needs_reset();
                self.wait_for_stop();
            }
            // Clear the stop request so the next session does not end at once.
            let _ = self.stop.read();
            let state = self.device.save_state();
            let _ = stopped.send((queues, state));
        }
    }

    fn wait_for_stop(&self) {
        let mut events = [EpollEvent::default(); 8];
        loop {
            match self.epoll.wait(-1, &mut events) {
                Ok(n) if events[..n].iter().any(|e| e.data() == STOP_TOKEN) => return,
                // Queue kicks while broken are drained and ignored.
                Ok(_) => self.drain_queue_events(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn drain_queue_events(&self) {
        for evt in &self.setup.queue_events {
            let _ = evt.read();
        }
    }

    fn serve(&mut self, queues: &mut [Queue]) -> Result<(), DeviceError> {
        let mem = &self.setup.mem;
        let interrupt = &self.setup.interrupt;
        // Queues whose last pass ended on its budget, to serve again on the next turn, and
        // those of them being served this turn (each at most once, after the turn's events).
        let mut unfinished = vec![false; queues.len()];
        let mut due = vec![false; queues.len()];
        // Notifications that came before DRIVER_OK are already counted in the eventfds;
        // serve every queue once anyway so nothing waits for a second kick. This also picks
        // up what a session stopped while unfinished left on the ring.
        for i in 0..queues.len() {
            let served = self.device.process_queue(mem, queues, i)?;
            note(served, &mut unfinished, interrupt)?;
        }
        let mut events = [EpollEvent::default(); 8];
        loop {
            // With work left, only look at the fds: a stop request or a notification is
            // taken before the next pass, and the guest's other queues get their turn.
            let timeout = if unfinished.contains(&true) { 0 } else { -1 };
            due.copy_from_slice(&unfinished);
            unfinished.fill(false);
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(DeviceError::Host(format!("epoll_wait: {e}"))),
            };
            for event in &events[..n] {
                let token = event.data();
                let served = if token == STOP_TOKEN {
                    return Ok(());
                } else if token >= EXTRA_TOKEN_BASE {
                    let index = (token - EXTRA_TOKEN_BASE) as usize;
                    self.device.process_extra(mem, queues, index)?
                } else {
                    let index = token as usize;
                    // A failed read means the counter was already drained: nothing is lost.
                    let _ = self.setup.queue_events[index].read();
                    // This pass serves the queue; it is not due again this turn.
                    if let Some(due) = due.get_mut(index) {
                        *due = false;
                    }
                    self.device.process_queue(mem, queues, index)?
                };
                note(served, &mut unfinished, interrupt)?;
            }
            for (index, _) in due.iter().enumerate().filter(|(_, due)| **due) {
                let served = self.device.process_queue(mem, queues, index)?;
                note(served, &mut unfinished, interrupt)?;
            }
        }
    }
}

/// Interrupts the guest if `served` asks for it, and remembers a queue it left unfinished.
fn note(served: Served, unfinished: &mut [bool], interrupt: &Interrupt) -> Result<(), DeviceError> {
    if let Some(flag) = served.unfinished.and_then(|i| unfinished.get_mut(i)) {
        *flag = true;
    }
    if served.notify {
        interrupt
            .signal_used_queue()
            .map_err(|e| DeviceError::Host(format!("irqfd write: {e}")))?;
    }
    Ok(())
}

/// A chain a device is done with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    /// Bytes written into the chain: its used length.
    pub written: u32,
    /// Bytes the device moved for it (or the work a refused chain stands for), counted
    /// against the pass's [`PASS_BYTES`].
    pub cost: u64,
}

/// Serves the chains the guest made available on queue `index`, in order, in one pass of at
/// most [`PASS_CHAINS`] chains and [`PASS_BYTES`] bytes: `serve` handles one chain and says
/// what it wrote into it and cost, which marks the chain used, or returns None when a rate
/// limiter holds the chain back. A held-back chain is put back, to be served first when the
/// limiter's timer runs the queue again, and the pass stops there. Notifications are off
/// while draining and re-checked after they are back on, so a chain added meanwhile is not
/// left waiting for a kick; a pass that ends on its budget leaves them off and says the
/// queue is unfinished, for the device thread to serve it again.
pub fn drain_queue<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    index: usize,
    mut serve: impl FnMut(DescriptorChain<&'m GuestMemoryMmap>) -> Option<Completion>,
) -> Result<Served, DeviceError> {
    let mut used_any = false;
    let mut chains = 0;
    let mut bytes = 0u64;
    loop {
        disable_notification(queue, mem, index)?;
        while let Some(chain) = pop_chain(queue, mem, index)? {
            let head = chain.head_index();
            let Some(done) = serve(chain) else {
                queue.go_to_previous_position();
                return served(queue, mem, index, used_any, None);
            };
            add_used(queue, mem, index, head, done.written)?;
            used_any = true;
            chains += 1;
            bytes = bytes.saturating_add(done.cost);
            if chains >= PASS_CHAINS || bytes >= PASS_BYTES {
                return served(queue, mem, index, used_any, Some(index));
            }
        }
        if !enable_notification(queue, mem, index)? {
            break;
        }
    }
    served(queue, mem, index, used_any, None)
}

/// What a pass that used chains (or not) tells the device thread.
fn served(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    index: usize,
    used_any: bool,
    unfinished: Option<usize>,
) -> Result<Served, DeviceError> {
    Ok(Served {
        notify: used_any && needs_notification(queue, mem, index)?,
        unfinished,
    })
}

/// The next available chain of queue `index`, or None when the ring is empty. A ring the
/// guest corrupted (avail index running ahead by more than the queue size) is an error.
pub fn pop_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    index: usize,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, DeviceError> {
    let mut iter = queue.iter(mem).map_err(|source| DeviceError::Queue {
        queue: index,
        source,
    })?;
    Ok(iter.next())
}

/// Marks `head` used with `len` bytes written.
pub fn add_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    index: usize,
    head: u16,
    len: u32,
) -> Result<(), DeviceError> {
    queue
        .add_used(mem, head, len)
        .map_err(|source| DeviceError::Queue {
            queue: index,
            source,
        })
}

/// Re-enables notifications; true if the guest added chains meanwhile (serve again).
pub fn enable_notification(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    index: usize,
) -> Result<bool, DeviceError> {
    queue
        .enable_notification(mem)
        .map_err(|source| DeviceError::Queue {
            queue: index,
            source,
        })
}

/// Suppresses notifications while the device drains the queue.
pub fn disable_notification(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    index: usize,
) -> Result<(), DeviceError> {
    queue
        .disable_notification(mem)
        .map_err(|source| DeviceError::Queue {
            queue: index,
            source,
        })
}

/// Whether the guest wants an interrupt for what was added to the used ring.
pub fn needs_notification(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    index: usize,
) -> Result<bool, DeviceError> {
    queue
        .needs_notification(mem)
        .map_err(|source| DeviceError::Queue {
            queue: index,
            source,
        })
}
