//! The personalisation port: a second 16550A UART (COM2, port 0x2f8, IRQ 3) through which
//! per-lease data reaches a guest after a cold boot or a snapshot restore, before it
//! announces itself ready. The channel is specified in `images/rootfs/PERSONALISE.md`
//! (v1) and summarised in the crate docs; this device is its VMM side:
//!
//! - the guest writes 124 to the boot-timer port once it listens on the port and holds no
//!   per-lease state ([`PersonalisationPort::guest_awaits`]): the VMM emits
//!   `awaiting_personalisation` once and from then on may deliver;
//! - the control command `personalise` hands over one printable-ASCII line
//!   ([`PersonalisationPort::personalise`]), accepted once; `LINE` + `\n` waits in
//!   `pending` until the guest has written 124, then moves into the 64-byte receive FIFO
//!   as the guest drains it;
//! - once the guest has read the last byte out of the FIFO the VMM emits `personalised`.
//!
//! The guest's output on the port is not a console: it goes to [`std::io::Sink`], so it is
//! neither stored nor able to grow anything. The whole state (UART registers and FIFO, the
//! pending bytes, whether 124 was seen and where the line is) is part of a snapshot
//! ([`super::persist::PersonalisationState`]).
//!
//! The line is refused whole (nothing is queued) when it holds a byte outside 0x20-0x7e,
//! when it is longer than [`Request::PERSONALISE_LINE_MAX`] bytes, or when this guest
//! already has its line: from this VMM, or from before the snapshot it was restored from.
//! The protocol says "once per VMM process"; a restored guest that had been handed a line
//! before its snapshot already holds that lease's data, so a second line (appended behind
//! what is left of the first) could only mix two leases' data, and it is refused too.

use super::persist::{ConsoleState, PersonalisationState};
use super::serial::IrqLine;
use crate::events::EventSink;
use std::collections::VecDeque;
use std::sync::Arc;
use vm_superio::{serial::NoEvents, Serial};
use vmm_protocol::{Event, Request};

/// Where the line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LineProgress {
    /// No `personalise` accepted yet.
    None,
    /// Accepted; bytes still pending or in the FIFO.
    Delivering,
    /// The guest has read every byte (`personalised` is out).
    Read,
}

/// Why a `personalise` line was refused; the text is the control reply's `error`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A byte outside printable ASCII (a newline, a control byte, UTF-8 beyond ASCII).
    #[error("personalise: line byte {at} is {byte:#04x}, not printable ASCII (0x20-0x7e); nothing delivered")]
    NotPrintable {
        /// Offset of the first bad byte.
        at: usize,
        /// The byte.
        byte: u8,
    },
    /// Longer than the protocol allows.
    #[error("personalise: line is {len} bytes, more than {max}; nothing delivered", max = Request::PERSONALISE_LINE_MAX)]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The guest already has a line.
    #[error("personalise: this guest already has its line (accepted once per guest, also across a snapshot); nothing delivered")]
    AlreadyGiven,
}

/// A saved personalisation-port state vm-superio refuses.
#[derive(Debug, thiserror::Error)]
#[error("the snapshot's personalisation port (COM2) state is unusable: {0}")]
pub struct RestoreError(String);

/// COM2 with the pending line and the channel's progress.
pub struct PersonalisationPort {
    uart: Serial<IrqLine, NoEvents, std::io::Sink>,
    /// Line bytes not yet in the FIFO.
    pending: VecDeque<u8>,
    /// The guest has written 124: delivery may start.
    seen_124: bool,
    line: LineProgress,
    /// Restored from a guest that was awaiting its line: `awaiting_personalisation` is
    /// emitted again once the vCPUs start.
    announce_on_start: bool,
    /// The vCPUs have started (always, for a cold boot: the guest cannot write 124
    /// before). A restored port feeds its FIFO only from then on, so that a line that
    /// arrives early cannot be read by an AP, and reported `personalised`, before
    /// `vcpus_started` and `awaiting_personalisation` are out.
    vcpus_running: bool,
    events: Arc<EventSink>,
}

impl PersonalisationPort {
    /// A fresh port raising `irq`, reporting to `events`.
    pub fn new(irq: IrqLine, events: Arc<EventSink>) -> Self {
        PersonalisationPort {
            uart: Serial::new(irq, std::io::sink()),
            pending: VecDeque::new(),
            seen_124: false,
            line: LineProgress::None,
            announce_on_start: false,
            vcpus_running: true,
            events,
        }
    }

    /// The port as a snapshot recorded it. A guest that had written 124 but not yet been
    /// given its line announces itself again when its vCPUs start (see
    /// [`PersonalisationPort::vcpus_started`]); from then on pending bytes (from before the
    /// snapshot, or a line given since) move into its FIFO as it drains it.
    pub fn restore(
        irq: IrqLine,
        events: Arc<EventSink>,
        state: &PersonalisationState,
        guest_was_ready: bool,
    ) -> Result<Self, RestoreError> {
        let uart = Serial::from_state(&state.port.uart(), irq, NoEvents, std::io::sink())
            .map_err(|e| RestoreError(format!("{e:?}")))?;
        Ok(PersonalisationPort {
            uart,
            pending: state.port.backlog.iter().copied().collect(),
            seen_124: state.seen_124,
            line: state.line,
            announce_on_start: state.seen_124
                && state.line == LineProgress::None
                && !guest_was_ready,
            vcpus_running: false,
            events,
        })
    }

    /// The state a snapshot records.
    pub fn state(&self) -> PersonalisationState {
        PersonalisationState {
            port: ConsoleState::new(self.uart.state(), self.pending.iter().copied().collect()),
            seen_124: self.seen_124,
            line: self.line,
        }
    }

    /// Guest read of register `offset`: more of the line moves into the FIFO as it drains,
    /// and the read that empties it reports `personalised`.
    pub fn read(&mut self, offset: u8) -> u8 {
        let value = self.uart.read(offset);
        self.refill();
        if self.line == LineProgress::Delivering
            && self.pending.is_empty()
            && self.uart.fifo_capacity() == FIFO_BYTES
        {
            self.line = LineProgress::Read;
            self.events.emit(|t_us| Event::Personalised { t_us });
        }
        value
    }

    /// Guest write of register `offset`; transmitted bytes are discarded.
    pub fn write(&mut self, offset: u8, value: u8) {
        // Writing to a sink cannot fail; a trigger failure (eventfd full) would only lose
        // an interrupt the guest's next poll finds anyway.
        let _ = self.uart.write(offset, value);
    }

    /// The guest wrote 124 to the boot timer: it listens and may be given its line.
    /// `awaiting_personalisation` goes out on the first such write only.
    pub fn guest_awaits(&mut self) {
        if self.seen_124 {
            return;
        }
        self.seen_124 = true;
        self.events
            .emit(|t_us| Event::AwaitingPersonalisation { t_us });
        self.refill();
    }

    /// Called once `vcpus_started` is out: a guest restored while awaiting its line
    /// announces that it still waits, so its restore's events carry the same timing fields
    /// as a cold boot.
    pub fn vcpus_started(&mut self) {
        self.vcpus_running = true;
        if std::mem::take(&mut self.announce_on_start) {
            self.events
                .emit(|t_us| Event::AwaitingPersonalisation { t_us });
        }
        self.refill();
    }

    /// Accepts `line` (see the module docs for what is refused) and queues it with its
    /// newline; it reaches the FIFO at once if the guest awaits it.
    pub fn personalise(&mut self, line: &str) -> Result<(), Error> {
        if self.line != LineProgress::None {
            return Err(Error::AlreadyGiven);
        }
        if line.len() > Request::PERSONALISE_LINE_MAX {
            return Err(Error::TooLong { len: line.len() });
        }
        if let Some((at, &byte)) = line
            .as_bytes()
            .iter()
            .enumerate()
            .find(|(_, b)| !(0x20..=0x7e).contains(*b))
        {
            return Err(Error::NotPrintable { at, byte });
        }
        self.pending.extend(line.as_bytes());
        self.pending.push_back(b'\n');
        self.line = LineProgress::Delivering;
        self.refill();
        Ok(())
    }

    /// Whether the guest has written 124.
    pub fn seen_124(&self) -> bool {
        self.seen_124
    }

    /// Where the line is.
    pub fn line_progress(&self) -> LineProgress {
        self.line
    }

    /// Moves pending bytes into the FIFO, as many as it takes. Only what the UART accepted
    /// leaves `pending`: in loopback mode (a driver probing the UART) it accepts none.
    fn refill(&mut self) {
        if !self.seen_124 || !self.vcpus_running || self.pending.is_empty() {
            return;
        }
        let room = self.uart.fifo_capacity().min(self.pending.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending.iter().take(room).copied().collect();
        if let Ok(taken) = self.uart.enqueue_raw_bytes(&chunk) {
            self.pending.drain(..taken);
        }
    }
}

/// The 16550A's receive FIFO, as vm-superio models it.
const FIFO_BYTES: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Clock;
    use vmm_sys_util::eventfd::EventFd;

    const LSR: u8 = 5;
    const DATA: u8 = 0;

    fn port() -> (PersonalisationPort, std::fs::File) {
        let file = tempfile::tempfile().expect("temp file");
        let events = Arc::new(EventSink::from_file(
            file.try_clone().expect("dup"),
            Clock::starting_now(),
        ));
        let irq = IrqLine(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        (PersonalisationPort::new(irq, events), file)
    }

    fn events(file: &std::fs::File) -> String {
        std::fs::read_to_string(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(file)
        ))
        .expect("read back")
    }

    /// What a polling guest reads: bytes until the newline.
    fn read_line(port: &mut PersonalisationPort) -> Vec<u8> {
        let mut got = Vec::new();
        for _ in 0..100_000 {
            if port.read(LSR) & 1 == 0 {
                continue;
            }
            let b = port.read(DATA);
            got.push(b);
            if b == b'\n' {
                break;
            }
        }
        got
    }

    #[test]
    fn a_line_given_before_124_waits_for_it_then_drains_whole() {
        let (mut p, file) = port();
        let line = "coinop-personalise/1 ".to_string() + &"x".repeat(300);
        p.personalise(&line).expect("valid line");
        assert_eq!(p.read(LSR) & 1, 0, "nothing delivered before 124");
        assert!(!events(&file).contains("awaiting"));
        p.guest_awaits();
        p.guest_awaits();
        assert_eq!(events(&file).matches("awaiting_personalisation").count(), 1);
        let got = read_line(&mut p);
        assert_eq!(got, format!("{line}\n").into_bytes());
        assert_eq!(p.line_progress(), LineProgress::Read);
        assert_eq!(events(&file).matches("\"personalised\"").count(), 1);
        assert_eq!(p.read(LSR) & 1, 0, "nothing after the newline");
    }

    #[test]
    fn a_line_given_after_124_reaches_the_fifo_at_once() {
        let (mut p, file) = port();
        p.guest_awaits();
        p.personalise("hello").expect("valid");
        assert_eq!(read_line(&mut p), b"hello\n");
        let text = events(&file);
        let awaiting = text.find("awaiting_personalisation").expect("awaiting");
        let done = text.find("\"personalised\"").expect("personalised");
        assert!(awaiting < done, "{text}");
    }

    #[test]
    fn the_data_register_alone_reads_the_line_and_0_when_empty() {
        // images/rootfs/portline.c polls only the data register: 0 must mean "no byte yet"
        // (the line never holds one), before the line, across FIFO refills, and after it.
        let (mut p, file) = port();
        p.guest_awaits();
        assert_eq!(p.read(DATA), 0, "nothing given yet");
        let line = "k".repeat(3 * FIFO_BYTES + 5);
        p.personalise(&line).expect("valid");
        let mut got = Vec::new();
        for _ in 0..10_000 {
            match p.read(DATA) {
                0 => panic!("a 0 within the line, after {} bytes", got.len()),
                b'\n' => break,
                b => got.push(b),
            }
        }
        assert_eq!(got, line.as_bytes());
        assert_eq!(p.read(DATA), 0, "the line is over");
        assert!(events(&file).contains("\"personalised\""));
    }

    #[test]
    fn bad_lines_and_a_second_line_are_refused_and_deliver_nothing() {
        let (mut p, _file) = port();
        p.guest_awaits();
        assert_eq!(
            p.personalise("a\nb"),
            Err(Error::NotPrintable { at: 1, byte: b'\n' })
        );
        assert_eq!(
            p.personalise("caf\u{e9}"),
            Err(Error::NotPrintable { at: 3, byte: 0xc3 })
        );
        assert_eq!(
            p.personalise(&"y".repeat(Request::PERSONALISE_LINE_MAX + 1)),
            Err(Error::TooLong {
                len: Request::PERSONALISE_LINE_MAX + 1
            })
        );
        assert_eq!(p.read(LSR) & 1, 0, "refused lines deliver nothing");
        let max = "z".repeat(Request::PERSONALISE_LINE_MAX);
        p.personalise(&max).expect("the longest line is accepted");
        assert_eq!(p.personalise("again"), Err(Error::AlreadyGiven));
        assert_eq!(read_line(&mut p), format!("{max}\n").into_bytes());
        assert_eq!(p.personalise("again"), Err(Error::AlreadyGiven));
    }

    #[test]
    fn a_driver_that_enabled_the_rx_interrupt_gets_it_for_the_line() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let file = tempfile::tempfile().expect("temp file");
        let events = Arc::new(EventSink::from_file(file, Clock::starting_now()));
        let mut p = PersonalisationPort::new(IrqLine(irq.try_clone().expect("dup")), events);
        // IER: received-data interrupt only, as an 8250 driver sets it once ttyS1 is open.
        p.write(1, 0x01);
        let _ = irq.read();
        p.personalise("irq").expect("valid");
        assert!(irq.read().is_err(), "no interrupt before 124 (EAGAIN)");
        p.guest_awaits();
        assert!(
            irq.read().expect("the line raised IRQ 3's eventfd") > 0,
            "interrupt on data"
        );
        assert_eq!(read_line(&mut p), b"irq\n");
    }

    #[test]
    fn loopback_probing_loses_no_line_byte() {
        let (mut p, _file) = port();
        p.guest_awaits();
        // MCR loop bit, as Linux's 8250 probe sets it.
        p.write(4, 0x10);
        p.personalise("abc").expect("valid");
        assert_eq!(p.read(LSR) & 1, 0, "loopback: the FIFO takes no input");
        p.write(4, 0x00);
        assert_eq!(read_line(&mut p), b"abc\n");
    }

    #[test]
    fn state_round_trips_mid_line_and_a_restored_waiting_guest_is_announced() {
        let (mut p, _file) = port();
        p.guest_awaits();
        p.personalise(&"q".repeat(200)).expect("valid");
        for _ in 0..10 {
            p.read(DATA);
        }
        let state = p.state();
        assert!(state.seen_124);
        assert_eq!(state.line, LineProgress::Delivering);
        let file = tempfile::tempfile().expect("temp file");
        let sink = Arc::new(EventSink::from_file(
            file.try_clone().expect("dup"),
            Clock::starting_now(),
        ));
        let irq = IrqLine(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        let mut back =
            PersonalisationPort::restore(irq, Arc::clone(&sink), &state, false).expect("valid");
        back.vcpus_started();
        assert!(
            !events(&file).contains("awaiting"),
            "a guest that has its line is not announced again"
        );
        assert_eq!(back.personalise("x"), Err(Error::AlreadyGiven));
        let rest = read_line(&mut back);
        assert_eq!(rest.len(), 191, "the other 190 q's and the newline");

        let (mut waiting, _f) = port();
        waiting.guest_awaits();
        let irq = IrqLine(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        let mut back =
            PersonalisationPort::restore(irq, sink, &waiting.state(), false).expect("valid");
        back.personalise("mine")
            .expect("a restored waiting guest takes its line");
        assert_eq!(back.read(LSR) & 1, 0, "not before its vCPUs run");
        back.vcpus_started();
        back.vcpus_started();
        assert_eq!(events(&file).matches("awaiting_personalisation").count(), 1);
        assert_eq!(read_line(&mut back), b"mine\n");
    }
}
