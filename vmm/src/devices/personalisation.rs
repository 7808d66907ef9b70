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
//! - once the guest has read the last byte out of the FIFO the VMM emits `personalised`,
//!   with how many data-register reads (VM exits) it took;
//! - the control command `ring` ([`PersonalisationPort::ring`]) sets the ring indicator in
//!   the modem status register until a line is accepted: coinopd rings a guest restored
//!   ahead of its lease, which may then spend its wait on its first connection's costs.
//!
//! - the doorbell: a guest that writes [`DOORBELL_ON`] to the scratch register may sleep
//!   until it has news instead of polling. Line bytes then stay out of the FIFO (no driver
//!   on the port can take them; the data register still hands them over), and the port
//!   raises a modem-status interrupt (MSR's TERI, as a ring indicator's trailing edge) when
//!   a line can be read, when it is rung, and again whenever the guest enables that
//!   interrupt (IER bit 3) while either is still unheeded, which is what Linux's 8250
//!   driver does at every `TIOCMIWAIT`: so a wait that starts just after the news still
//!   ends at once. A ring is heeded when the guest writes [`DOORBELL_RING_SEEN`]; a line,
//!   when it is read.
//!
//! Two departures from vm-superio's UART, both for reading the line fast and whole:
//! - a read of the data register may be many bytes at once (a `rep insb`, which KVM's
//!   emulator hands over as one exit of up to 1 KiB): [`PersonalisationPort::read_data`]
//!   fills it with the next line bytes, then 0s;
//! - IIR says "received data" for as long as data waits and that interrupt is enabled
//!   (a 16550's level semantics), and a data read that leaves data behind raises the IRQ
//!   again once per IIR read, so Linux's interrupt-driven 8250 driver, which reads 256
//!   bytes per pass, gets the whole line (`read_iir`).
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
use vm_superio::{serial::NoEvents, Serial, Trigger};
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
    /// `ring` for a guest that already has its line: it waits for nothing.
    #[error("ring: this guest already has its line; nothing to wait for")]
    RingAfterLine,
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
    /// The port has raised its IRQ since the guest last read IIR (see
    /// [`PersonalisationPort::read_data`]). Not in a snapshot: a restored port at worst
    /// raises one interrupt more.
    raised_since_iir: bool,
    /// Data-register reads (VM exits) that returned line bytes, for `personalised`.
    data_reads: u64,
    /// CRC-32 of the line accepted by this process (status `line_crc32`). Not in a
    /// snapshot: a golden snapshot is taken before any line.
    line_crc32: Option<u32>,
    /// `ring` was asked and no line accepted since: MSR shows RI. Not in a snapshot: a
    /// golden snapshot is never rung, and a restored guest is rung by its own VMM.
    ringing: bool,
    /// A ring the guest has not yet said it saw (doorbell mode: [`DOORBELL_RING_SEEN`]):
    /// when it was rung, on the events' time base (status `ring_unheeded_us`).
    ring_unheeded_since_us: Option<u64>,
    /// MSR's TERI: news since the guest last read MSR (doorbell mode only). Not in a
    /// snapshot: a golden guest has had none, and a restored one rings again on enable.
    news_delta: bool,
    /// A doorbell has been rung for the line now pending (so a refill rings it once).
    line_announced: bool,
    events: Arc<EventSink>,
}

/// Written to the scratch register by a guest that sleeps until the port has news (the
/// doorbell; see the module docs). The mode lasts while the register holds this or
/// [`DOORBELL_RING_SEEN`], so it is part of every snapshot through the UART's own state.
pub const DOORBELL_ON: u8 = 0xdb;
/// Written to the scratch register in doorbell mode once the guest has seen the ring: no
/// further interrupt for it.
pub const DOORBELL_RING_SEEN: u8 = 0xda;

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
            raised_since_iir: false,
            data_reads: 0,
            line_crc32: None,
            ringing: false,
            ring_unheeded_since_us: None,
            news_delta: false,
            line_announced: false,
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
            raised_since_iir: false,
            data_reads: 0,
            line_crc32: None,
            ringing: false,
            ring_unheeded_since_us: None,
            news_delta: false,
            line_announced: false,
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

    /// Guest read of register `offset` (one byte). The data register goes through
    /// [`PersonalisationPort::read_data`]; IIR reports a received-data interrupt for as
    /// long as data waits (`read_iir`).
    pub fn read(&mut self, offset: u8) -> u8 {
        match offset {
            DATA if !self.dlab() => {
                let mut byte = [0];
                self.read_data(&mut byte);
                byte[0]
            }
            IIR => {
                self.refill();
                self.read_iir()
            }
            MSR => {
                self.refill();
                // In loopback MSR mirrors MCR's outputs (a driver's probe): no ring there.
                let ring = self.ringing && self.uart.read(MCR) & MCR_LOOP == 0;
                // Reading MSR clears its delta bits, as on a 16550.
                let news = std::mem::take(&mut self.news_delta);
                self.uart.read(MSR)
                    | if ring { MSR_RING } else { 0 }
                    | if news { MSR_TERI } else { 0 }
            }
            _ => {
                // Line bytes the UART could not take before (in loopback) go in first, so
                // a guest polling LSR sees them.
                self.refill();
                self.uart.read(offset)
            }
        }
    }

    /// A guest read of the data register of `buf.len()` bytes: one `inb`, or a whole
    /// `rep insb` (KVM's emulator hands the VMM up to 1 KiB of one in a single exit). Fills
    /// `buf` with the next bytes of the line in order, then 0 for each byte once nothing is
    /// waiting (the line holds no 0 byte). Bytes behind the FIFO's are taken straight from
    /// the pending line, so a bulk read costs one exit however long the line; the FIFO is
    /// refilled once at the end. The read that takes the line's last byte reports
    /// `personalised`.
    pub fn read_data(&mut self, buf: &mut [u8]) {
        if self.dlab() {
            // Offset 0 is the divisor latch while DLAB is set; no data is read.
            for byte in buf.iter_mut() {
                *byte = self.uart.read(DATA);
            }
            return;
        }
        let mut filled = 0;
        while filled < buf.len() && self.uart.read(LSR) & LSR_DATA_READY != 0 {
            buf[filled] = self.uart.read(DATA);
            filled += 1;
        }
        if self.delivering_to_guest() {
            let direct = (buf.len() - filled).min(self.pending.len());
            for (slot, byte) in buf[filled..].iter_mut().zip(self.pending.drain(..direct)) {
                *slot = byte;
            }
            filled += direct;
        }
        if filled < buf.len() {
            // What an empty UART reads, with its side effects (a stale RDA is cleared).
            self.uart.read(DATA);
            buf[filled..].fill(0);
        }
        self.refill();
        if filled > 0 && self.line == LineProgress::Delivering {
            self.data_reads += 1;
            if self.pending.is_empty() && self.uart.fifo_capacity() == FIFO_BYTES {
                self.line = LineProgress::Read;
                let data_reads = self.data_reads;
                self.events
                    .emit(|t_us| Event::Personalised { t_us, data_reads });
            }
        }
        self.reraise_if_data_waits();
    }

    /// IIR with a 16550's level semantics for received data: it names the received-data
    /// interrupt for as long as the FIFO holds data and that interrupt is enabled.
    /// vm-superio clears it on every data read, even with more bytes in the FIFO; Linux's
    /// 8250 driver reads at most 256 bytes per pass and then asks IIR whether to go on, so
    /// with vm-superio's IIR it stopped with the rest of the line in the port, and its IRQ
    /// (an edge through an irqfd) never came again.
    fn read_iir(&mut self) -> u8 {
        let iir = self.uart.read(IIR);
        // Reading IIR acknowledges: a further edge is needed if data outlasts this pass.
        self.raised_since_iir = false;
        if self.rx_interrupt_asserted() && iir & IIR_NO_INTERRUPT != 0 {
            (iir & !IIR_NO_INTERRUPT) | IIR_RECEIVED_DATA
        } else if iir & IIR_NO_INTERRUPT != 0 && self.modem_interrupt_asserted() {
            // Modem status: the lowest priority, ID 0 (the FIFO bits kept).
            iir & !(IIR_NO_INTERRUPT | IIR_ID_MASK)
        } else {
            iir
        }
    }

    /// Whether the guest asked to be woken by the doorbell (see the module docs).
    fn doorbell_mode(&mut self) -> bool {
        matches!(self.uart.read(SCR), DOORBELL_ON | DOORBELL_RING_SEEN)
    }

    /// A modem-status interrupt is pending: news not yet read from MSR, and enabled.
    fn modem_interrupt_asserted(&mut self) -> bool {
        self.news_delta && self.uart.read(IER) & IER_MODEM_STATUS != 0
    }

    /// Doorbell mode: news for the guest (TERI), and an interrupt if it is enabled.
    fn ring_doorbell(&mut self) {
        self.news_delta = true;
        if self.uart.read(IER) & IER_MODEM_STATUS != 0 {
            // An eventfd full to its limit already holds a pending interrupt.
            let _ = self.uart.interrupt_evt().trigger();
        }
    }

    /// Doorbell mode: whether a line can be read now (it waits, the guest may take it).
    fn line_waits(&mut self) -> bool {
        !self.pending.is_empty() && self.delivering_to_guest()
    }

    /// After a data read that leaves data in the port: one new edge on the IRQ line per
    /// IIR acknowledge, so a handler that reads a budget of bytes and returns without
    /// asking IIR again is interrupted once more (a level-triggered line would still be
    /// asserted; an edge through the irqfd is lost once delivered).
    fn reraise_if_data_waits(&mut self) {
        if self.raised_since_iir || !self.rx_interrupt_asserted() {
            return;
        }
        self.raised_since_iir = true;
        // An eventfd full to its limit already holds a pending interrupt.
        let _ = self.uart.interrupt_evt().trigger();
    }

    /// What a 16550's interrupt output would say about received data: enabled and waiting.
    fn rx_interrupt_asserted(&mut self) -> bool {
        self.uart.read(IER) & IER_RECEIVED_DATA != 0 && self.uart.read(LSR) & LSR_DATA_READY != 0
    }

    /// Whether the divisor latch is mapped over the data register.
    fn dlab(&mut self) -> bool {
        self.uart.read(LCR) & LCR_DLAB != 0
    }

    /// Whether line bytes may reach the guest now: it has written 124, its vCPUs run and
    /// the UART is not in loopback (a driver probing it).
    fn delivering_to_guest(&mut self) -> bool {
        self.seen_124 && self.vcpus_running && self.uart.read(MCR) & MCR_LOOP == 0
    }

    /// Guest write of register `offset`; transmitted bytes are discarded.
    pub fn write(&mut self, offset: u8, value: u8) {
        // Writing to a sink cannot fail; a trigger failure (eventfd full) would only lose
        // an interrupt the guest's next poll finds anyway.
        let _ = self.uart.write(offset, value);
        if offset == SCR && value == DOORBELL_RING_SEEN {
            self.ring_unheeded_since_us = None;
        }
        // Leaving loopback lets the line in.
        self.refill();
        // Enabling the modem-status interrupt (Linux: every TIOCMIWAIT) while news is
        // unheeded rings again, so a wait that began just after it still ends.
        if offset == IER
            && value & IER_MODEM_STATUS != 0
            && !self.dlab()
            && self.doorbell_mode()
            && (self.ring_unheeded_since_us.is_some() || self.line_waits())
        {
            self.ring_doorbell();
        }
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
        // The call is answered: a guest that looks again sees its line, not the ring.
        self.ringing = false;
        self.ring_unheeded_since_us = None;
        self.line_announced = false;
        self.line_crc32 = Some(crc32fast::hash(line.as_bytes()));
        self.refill();
        Ok(())
    }

    /// Sets the ring indicator until a line is accepted: the guest may use its wait (see
    /// the module docs). Refused once the guest has its line.
    pub fn ring(&mut self) -> Result<(), Error> {
        if self.line != LineProgress::None {
            return Err(Error::RingAfterLine);
        }
        self.ringing = true;
        if self.doorbell_mode() && self.uart.read(MCR) & MCR_LOOP == 0 {
            // A second ring while one waits leaves the first's time: the guest has not
            // answered since then.
            if self.ring_unheeded_since_us.is_none() {
                self.ring_unheeded_since_us = Some(self.events.clock().elapsed_us());
            }
            self.ring_doorbell();
        }
        Ok(())
    }

    /// How long (µs) a ring has waited for the guest to heed it, while one does (doorbell
    /// mode only: a guest that never turned the doorbell on is not asked to answer).
    pub fn ring_unheeded_us(&self) -> Option<u64> {
        self.ring_unheeded_since_us
            .map(|since| self.events.clock().elapsed_us().saturating_sub(since))
    }

    /// The CRC-32 (IEEE) of the line this process accepted, newline excluded.
    pub fn line_crc32(&self) -> Option<u32> {
        self.line_crc32
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
    /// In doorbell mode the bytes stay pending (the data register reads them from there)
    /// and the first time they can be read the doorbell rings.
    fn refill(&mut self) {
        if !self.seen_124 || !self.vcpus_running || self.pending.is_empty() {
            return;
        }
        if self.doorbell_mode() {
            if !self.line_announced && self.line_waits() {
                self.line_announced = true;
                self.ring_doorbell();
            }
            return;
        }
        super::serial::feed_fifo(&mut self.uart, &mut self.pending);
    }
}

/// The 16550A's receive FIFO, as vm-superio models it.
const FIFO_BYTES: usize = 64;

// 16550A register offsets and bits (vm-superio keeps its own private).
/// Receive buffer (read) / divisor latch low byte while DLAB is set.
const DATA: u8 = 0;
/// Interrupt enable register.
const IER: u8 = 1;
/// Interrupt identification register.
const IIR: u8 = 2;
/// Line control register.
const LCR: u8 = 3;
/// Modem control register.
const MCR: u8 = 4;
/// Line status register.
const LSR: u8 = 5;
/// Modem status register.
const MSR: u8 = 6;
/// Scratch register.
const SCR: u8 = 7;
const IER_RECEIVED_DATA: u8 = 0x01;
const IER_MODEM_STATUS: u8 = 0x08;
const IIR_NO_INTERRUPT: u8 = 0x01;
/// IIR's interrupt ID bits (with the "no interrupt" bit).
const IIR_ID_MASK: u8 = 0x0e;
const IIR_RECEIVED_DATA: u8 = 0x04;
const LCR_DLAB: u8 = 0x80;
const MCR_LOOP: u8 = 0x10;
const LSR_DATA_READY: u8 = 0x01;
/// MSR's ring indicator.
const MSR_RING: u8 = 0x40;
/// MSR's trailing edge of the ring indicator (a delta bit): the doorbell's news.
const MSR_TERI: u8 = 0x04;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Clock;
    use vmm_sys_util::eventfd::EventFd;

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
    fn a_ring_shows_in_msr_until_the_line_is_accepted_and_not_in_loopback() {
        let (mut p, _file) = port();
        p.guest_awaits();
        let quiet = p.read(MSR);
        assert_eq!(quiet & MSR_RING, 0, "no ring before one is asked");
        p.ring().expect("a guest without its line is rung");
        assert_eq!(
            p.read(MSR),
            quiet | MSR_RING,
            "RI set, every other bit as before"
        );
        assert_eq!(p.read(DATA), 0, "a ring is no line byte");
        // A driver's loopback probe sees MSR mirror its own MCR outputs, no ring in them.
        p.write(MCR, MCR_LOOP);
        assert_eq!(p.read(MSR) & MSR_RING, 0);
        p.write(MCR, 0);
        assert_ne!(p.read(MSR) & MSR_RING, 0, "rung again once out of loopback");
        p.personalise("abc").expect("valid");
        assert_eq!(p.read(MSR) & MSR_RING, 0, "answered by the line");
        assert_eq!(p.ring(), Err(Error::RingAfterLine));
        assert_eq!(p.read(MSR) & MSR_RING, 0);
        assert_eq!(
            read_line(&mut p),
            b"abc\n",
            "the line unchanged by the ring"
        );
    }

    #[test]
    fn a_restored_port_is_not_rung_and_can_be() {
        let (mut p, _file) = port();
        p.guest_awaits();
        p.ring().expect("rung");
        let state = p.state();
        let (_, file) = port();
        let events = Arc::new(EventSink::from_file(
            file,
            crate::events::Clock::starting_now(),
        ));
        let irq = IrqLine(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        let mut restored =
            PersonalisationPort::restore(irq, events, &state, false).expect("restore");
        restored.vcpus_started();
        assert_eq!(
            restored.read(MSR) & MSR_RING,
            0,
            "a snapshot carries no ring"
        );
        restored.ring().expect("rung by its own VMM");
        assert_ne!(restored.read(MSR) & MSR_RING, 0);
    }

    #[test]
    fn the_accepted_lines_crc_is_told_and_a_refused_line_leaves_it() {
        let (mut p, _file) = port();
        assert_eq!(p.line_crc32(), None, "no line yet");
        assert!(p.personalise("bad\tline").is_err());
        assert_eq!(p.line_crc32(), None, "a refused line is not held");
        p.personalise("coinop-personalise/1 hostname=a")
            .expect("valid");
        // CRC-32/IEEE of the bytes, computed independently of crc32fast's one-shot call.
        let mut h = crc32fast::Hasher::new();
        for b in "coinop-personalise/1 hostname=a".bytes() {
            h.update(&[b]);
        }
        let told = p.line_crc32().expect("the accepted line's CRC");
        assert_eq!(told, h.finalize());
        assert_eq!(
            p.personalise("coinop-personalise/1 hostname=b"),
            Err(Error::AlreadyGiven)
        );
        assert_eq!(p.line_crc32(), Some(told), "a second line changes nothing");
        // The check value of CRC-32/IEEE ("123456789" -> 0xCBF43926) pins the variant
        // coinopd must compute too.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
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

    /// A port whose IRQ eventfd the test holds, with the received-data interrupt enabled
    /// as Linux's 8250 driver sets it once ttyS1 is open, and the guest awaiting its line.
    fn irq_driven_port() -> (PersonalisationPort, EventFd, std::fs::File) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let file = tempfile::tempfile().expect("temp file");
        let events = Arc::new(EventSink::from_file(
            file.try_clone().expect("dup"),
            Clock::starting_now(),
        ));
        let mut p = PersonalisationPort::new(IrqLine(irq.try_clone().expect("dup")), events);
        p.write(IER, IER_RECEIVED_DATA);
        p.guest_awaits();
        let _ = irq.read();
        (p, irq, file)
    }

    /// The `data_reads` of the one `personalised` event.
    fn personalised_data_reads(file: &std::fs::File) -> u64 {
        let text = events(file);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("\"personalised\""))
            .collect();
        assert_eq!(lines.len(), 1, "personalised exactly once: {text}");
        match Event::from_line(lines[0]).expect("an event") {
            Event::Personalised { data_reads, .. } => data_reads,
            other => panic!("not personalised: {other:?}"),
        }
    }

    #[test]
    fn one_bulk_read_takes_the_whole_line_then_zeros() {
        // A `rep insb` of 1 KiB, as KVM's emulator hands it over in one exit.
        let (mut p, file) = port();
        p.guest_awaits();
        let line = "coinop-personalise/1 ".to_string() + &"b".repeat(400);
        p.personalise(&line).expect("valid");
        let mut buf = [0xaa_u8; 1024];
        p.read_data(&mut buf);
        let want = format!("{line}\n");
        assert_eq!(&buf[..want.len()], want.as_bytes());
        assert!(
            buf[want.len()..].iter().all(|&b| b == 0),
            "0 behind the line"
        );
        assert_eq!(p.line_progress(), LineProgress::Read);
        assert_eq!(personalised_data_reads(&file), 1);
        assert_eq!(p.read(LSR) & LSR_DATA_READY, 0, "the port is empty");
        let mut again = [0xaa_u8; 16];
        p.read_data(&mut again);
        assert_eq!(again, [0; 16], "nothing after the line");
        assert_eq!(personalised_data_reads(&file), 1, "still exactly once");
    }

    #[test]
    fn bulk_reads_of_any_count_keep_the_order_across_fifo_and_pending() {
        let line: String = (0..Request::PERSONALISE_LINE_MAX)
            .map(|i| char::from(b'!' + (i % 94) as u8))
            .collect();
        let want = format!("{line}\n").into_bytes();
        for chunk in [1, 2, 7, 63, 64, 65, 100, 1000, 1024] {
            let (mut p, file) = port();
            p.personalise(&line).expect("valid");
            p.guest_awaits();
            let mut got = Vec::new();
            let mut reads = 0;
            while !got.ends_with(b"\n") {
                let mut buf = vec![0xaa_u8; chunk];
                p.read_data(&mut buf);
                reads += 1;
                // The guest's side of the contract: 0 is "no byte", dropped.
                got.extend(buf.iter().copied().filter(|&b| b != 0));
                assert!(reads <= want.len(), "chunk {chunk}: the line never ended");
            }
            assert_eq!(got, want, "chunk {chunk}");
            assert_eq!(reads, want.len().div_ceil(chunk), "chunk {chunk}");
            assert_eq!(
                personalised_data_reads(&file),
                reads as u64,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn bulk_and_byte_reads_mix_and_a_snapshot_mid_line_keeps_the_rest() {
        let (mut p, _file) = port();
        p.guest_awaits();
        let line: String = (0..300)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        p.personalise(&line).expect("valid");
        let mut first = [0_u8; 100];
        p.read_data(&mut first);
        let second = p.read(DATA);
        let state = p.state();
        assert_eq!(state.line, LineProgress::Delivering);
        let (irq, sink) = (
            IrqLine(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")),
            Arc::new(EventSink::from_file(
                tempfile::tempfile().expect("temp file"),
                Clock::starting_now(),
            )),
        );
        let mut back = PersonalisationPort::restore(irq, sink, &state, false).expect("valid");
        back.vcpus_started();
        let mut rest = [0_u8; 512];
        back.read_data(&mut rest);
        let mut got = first.to_vec();
        got.push(second);
        got.extend(rest.iter().copied().filter(|&b| b != 0));
        assert_eq!(got, format!("{line}\n").into_bytes());
        assert_eq!(back.line_progress(), LineProgress::Read);
    }

    #[test]
    fn bulk_reads_deliver_nothing_before_124_or_in_loopback() {
        let (mut p, _file) = port();
        p.personalise("early").expect("valid");
        let mut buf = [0xaa_u8; 8];
        p.read_data(&mut buf);
        assert_eq!(buf, [0; 8], "nothing before 124");
        p.write(MCR, MCR_LOOP);
        p.guest_awaits();
        // A probing driver's own byte comes back; the line stays behind.
        p.write(DATA, 0x55);
        p.read_data(&mut buf);
        assert_eq!(buf, [0x55, 0, 0, 0, 0, 0, 0, 0]);
        p.write(MCR, 0);
        p.read_data(&mut buf);
        assert_eq!(&buf[..6], b"early\n");
        assert_eq!(p.line_progress(), LineProgress::Read);
    }

    #[test]
    fn a_bulk_read_with_dlab_set_reads_the_divisor_not_the_line() {
        let (mut p, _file) = port();
        p.guest_awaits();
        p.personalise("data").expect("valid");
        p.write(LCR, LCR_DLAB | 0x03);
        p.write(DATA, 0x01);
        let mut buf = [0_u8; 4];
        p.read_data(&mut buf);
        assert_eq!(buf, [0x01; 4]);
        p.write(LCR, 0x03);
        assert_eq!(read_line(&mut p), b"data\n");
    }

    #[test]
    fn iir_names_received_data_while_any_waits() {
        let (mut p, _irq, _file) = irq_driven_port();
        p.personalise("ab").expect("valid");
        assert_eq!(p.read(IIR) & 0x0f, IIR_RECEIVED_DATA);
        assert_eq!(p.read(DATA), b'a');
        // vm-superio alone would say "no interrupt" here, with 'b' still in the FIFO.
        assert_eq!(p.read(IIR) & 0x0f, IIR_RECEIVED_DATA);
        assert_eq!(
            p.read(IIR) & 0x0f,
            IIR_RECEIVED_DATA,
            "still, until it is read"
        );
        p.write(IER, 0);
        assert_eq!(p.read(IIR) & 0x0f, IIR_NO_INTERRUPT, "not when disabled");
        p.write(IER, IER_RECEIVED_DATA);
        assert_eq!(p.read(DATA), b'b');
        assert_eq!(p.read(DATA), b'\n');
        assert_eq!(p.read(IIR) & 0x0f, IIR_NO_INTERRUPT, "nothing waits");
    }

    /// Linux's 8250 receive path as the lab's guest ran it on ttyS1: each interrupt
    /// (edge-triggered, IRQ 3 through the irqfd) runs `serial8250_interrupt`, which calls
    /// the port's handler pass after pass until IIR says "no interrupt"
    /// (`full_handler`); each pass reads at most 256 bytes while LSR.DR
    /// (`serial8250_rx_chars`). With `full_handler` false the handler makes one pass
    /// only: then only a further interrupt brings the rest. An edge that arrives while
    /// the vector is pending coalesces with it (so the eventfd is drained when an
    /// interrupt is taken); one during the handler is delivered after it.
    fn linux_8250_receives(line_len: usize, full_handler: bool) -> (Vec<u8>, Vec<u8>, usize) {
        let (mut p, irq, file) = irq_driven_port();
        let line: String = (0..line_len)
            .map(|i| char::from(b'0' + (i % 10) as u8))
            .collect();
        p.personalise(&line).expect("valid");
        let mut got = Vec::new();
        let mut interrupts = 0;
        while irq.read().is_ok() {
            interrupts += 1;
            assert!(interrupts < 1000, "interrupt storm");
            loop {
                let iir = p.read(IIR);
                if iir & IIR_NO_INTERRUPT != 0 {
                    break;
                }
                let mut budget = 256;
                while p.read(LSR) & LSR_DATA_READY != 0 && budget > 0 {
                    got.push(p.read(DATA));
                    budget -= 1;
                }
                if !full_handler {
                    break;
                }
            }
        }
        assert_eq!(p.read(LSR) & LSR_DATA_READY, 0, "data left in the port");
        assert!(events(&file).contains("\"personalised\""));
        (got, format!("{line}\n").into_bytes(), interrupts)
    }

    #[test]
    fn linux_8250_interrupt_driven_reads_get_lines_longer_than_its_256_byte_budget() {
        // 300: the lab's stall (the tail outlasts the FIFO refills of the first pass);
        // 1000 and the longest line: several budgets.
        for len in [10, 255, 256, 300, 1000, Request::PERSONALISE_LINE_MAX] {
            let (got, want, interrupts) = linux_8250_receives(len, true);
            assert_eq!(got, want, "line of {len}");
            assert!(interrupts >= 1, "line of {len}");
        }
    }

    #[test]
    fn a_one_pass_handler_is_interrupted_again_while_data_remains() {
        for len in [300, 1000, Request::PERSONALISE_LINE_MAX] {
            let (got, want, interrupts) = linux_8250_receives(len, false);
            assert_eq!(got, want, "line of {len}");
            assert!(
                interrupts > (len + 1) / 256,
                "line of {len}: {interrupts} interrupts for passes of 256"
            );
        }
    }

    /// A port in doorbell mode whose IRQ eventfd the test holds: the guest has opened
    /// ttyS1 (Linux's 8250 driver enables the received-data interrupt), written
    /// DOORBELL_ON and 124, and waits in TIOCMIWAIT (the modem-status interrupt enabled).
    fn doorbell_port() -> (PersonalisationPort, EventFd, std::fs::File) {
        let (mut p, irq, file) = irq_driven_port();
        p.write(SCR, DOORBELL_ON);
        p.write(IER, IER_RECEIVED_DATA | IER_MODEM_STATUS);
        assert!(irq.read().is_err(), "no news, no interrupt");
        (p, irq, file)
    }

    /// What Linux's 8250 interrupt handler does for one interrupt: IIR, then LSR (taking
    /// any received byte), then MSR. Returns (whether the port claimed it, the MSR read,
    /// the bytes taken).
    fn linux_8250_handler(p: &mut PersonalisationPort) -> (bool, u8, Vec<u8>) {
        let iir = p.read(IIR);
        if iir & IIR_NO_INTERRUPT != 0 {
            return (false, 0, Vec::new());
        }
        let mut taken = Vec::new();
        while p.read(LSR) & LSR_DATA_READY != 0 {
            taken.push(p.read(DATA));
        }
        (true, p.read(MSR), taken)
    }

    #[test]
    fn in_doorbell_mode_a_line_rings_once_and_only_a_data_read_takes_it() {
        let (mut p, irq, file) = doorbell_port();
        let line = "coinop-personalise/1 ".to_string() + &"y".repeat(500);
        p.personalise(&line).expect("valid");
        assert_eq!(irq.read().expect("the doorbell rang"), 1);
        let (claimed, msr, taken) = linux_8250_handler(&mut p);
        assert!(claimed, "IIR names the modem-status interrupt");
        assert_ne!(msr & MSR_TERI, 0, "the news is TERI");
        assert!(taken.is_empty(), "no line byte reaches a driver: {taken:?}");
        assert_eq!(p.read(MSR) & MSR_TERI, 0, "reading MSR cleared the delta");
        assert_eq!(
            p.read(IIR) & IIR_NO_INTERRUPT,
            IIR_NO_INTERRUPT,
            "nothing more pending"
        );
        assert!(irq.read().is_err(), "one interrupt for one line");
        let mut chunk = [0xffu8; 1024];
        p.read_data(&mut chunk);
        let want = format!("{line}\n").into_bytes();
        assert_eq!(
            &chunk[..want.len()],
            &want[..],
            "the line whole, in one bulk read"
        );
        assert!(chunk[want.len()..].iter().all(|&b| b == 0));
        assert_eq!(personalised_data_reads(&file), 1);
        p.write(IER, IER_RECEIVED_DATA | IER_MODEM_STATUS);
        assert!(irq.read().is_err(), "a read line rings no more");
    }

    #[test]
    fn in_doorbell_mode_a_wait_begun_after_the_news_ends_at_once() {
        // The line comes while the modem-status interrupt is off (the guest between two
        // waits): the doorbell has no interrupt to raise, and the next TIOCMIWAIT's enable
        // raises it, for as long as the line is unread.
        let (mut p, irq, _file) = doorbell_port();
        p.write(IER, IER_RECEIVED_DATA);
        p.personalise("hello").expect("valid");
        assert!(irq.read().is_err(), "interrupt disabled");
        for _ in 0..2 {
            p.write(IER, IER_RECEIVED_DATA | IER_MODEM_STATUS);
            assert_eq!(irq.read().expect("rung on enable"), 1);
            let (claimed, msr, _) = linux_8250_handler(&mut p);
            assert!(claimed);
            assert_ne!(msr & MSR_TERI, 0);
        }
        let mut chunk = [0u8; 1024];
        p.read_data(&mut chunk);
        assert_eq!(&chunk[..6], b"hello\n");
        p.write(IER, IER_RECEIVED_DATA | IER_MODEM_STATUS);
        assert!(irq.read().is_err());
    }

    #[test]
    fn in_doorbell_mode_a_ring_rings_until_the_guest_says_it_saw_it() {
        let (mut p, irq, _file) = doorbell_port();
        p.ring().expect("rung");
        assert_eq!(irq.read().expect("the ring's interrupt"), 1);
        let (claimed, msr, _) = linux_8250_handler(&mut p);
        assert!(claimed);
        assert_eq!(msr & (MSR_TERI | MSR_RING), MSR_TERI | MSR_RING);
        // A wait begun before the guest looked ends at once.
        p.write(IER, IER_RECEIVED_DATA | IER_MODEM_STATUS);
        assert_eq!(irq.read().expect("rung again on enable"), 1);
        linux_8250_handler(&mut p);
        assert!(p.ring_unheeded_us().is_some(), "looked at, not yet heeded");
        p.write(SCR, DOORBELL_RING_SEEN);
        assert_eq!(p.ring_unheeded_us(), None, "heeded");
        p.write(IER, IER_RECEIVED_DATA | IER_MODEM_STATUS);
        assert!(irq.read().is_err(), "a seen ring rings no more");
        assert_ne!(p.read(MSR) & MSR_RING, 0, "RI stays until the line");
        // Still in doorbell mode: the line rings, and stays out of the FIFO.
        p.personalise("abc").expect("valid");
        assert_eq!(irq.read().expect("the line's interrupt"), 1);
        let (_, msr, taken) = linux_8250_handler(&mut p);
        assert!(taken.is_empty());
        assert_eq!(msr & (MSR_TERI | MSR_RING), MSR_TERI, "the ring answered");
    }

    #[test]
    fn an_unheeded_ring_tells_how_long_it_has_waited_until_heeded_or_answered() {
        let (mut p, _irq, _file) = doorbell_port();
        assert_eq!(p.ring_unheeded_us(), None, "not rung");
        p.ring().expect("rung");
        let first = p.ring_unheeded_us().expect("waiting");
        std::thread::sleep(std::time::Duration::from_millis(20));
        // A second ring keeps the first one's time: the guest has owed an answer since.
        p.ring().expect("rung again");
        let later = p.ring_unheeded_us().expect("still waiting");
        assert!(later >= first + 20_000, "{first} then {later}");
        // A line answers the call whether or not the ring was heeded.
        p.personalise("abc").expect("valid");
        assert_eq!(p.ring_unheeded_us(), None);
    }

    #[test]
    fn without_the_doorbell_nothing_rings_and_the_fifo_takes_the_line() {
        let (mut p, irq, _file) = irq_driven_port();
        p.write(IER, IER_RECEIVED_DATA | IER_MODEM_STATUS);
        p.ring().expect("rung");
        assert_eq!(p.read(MSR) & MSR_TERI, 0, "no TERI for a polling guest");
        assert_eq!(p.ring_unheeded_us(), None, "a polling guest owes no answer");
        p.personalise("abc").expect("valid");
        let _ = irq.read();
        assert_eq!(p.read(LSR) & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(read_line(&mut p), b"abc\n");
    }

    #[test]
    fn a_doorbell_guest_snapshotted_while_waiting_is_rung_by_its_restored_port() {
        let (p, _irq, _file) = doorbell_port();
        let state = p.state();
        let (_, file) = port();
        let events = Arc::new(EventSink::from_file(
            file,
            crate::events::Clock::starting_now(),
        ));
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut restored = PersonalisationPort::restore(
            IrqLine(irq.try_clone().expect("dup")),
            events,
            &state,
            false,
        )
        .expect("restore");
        // A line given before the vCPUs start rings once they do.
        restored.personalise("late").expect("valid");
        assert!(irq.read().is_err(), "not before the vCPUs run");
        restored.vcpus_started();
        assert_eq!(irq.read().expect("rung at start"), 1);
        let (claimed, msr, taken) = linux_8250_handler(&mut restored);
        assert!(claimed && msr & MSR_TERI != 0 && taken.is_empty());
        let mut chunk = [0u8; 16];
        restored.read_data(&mut chunk);
        assert_eq!(&chunk[..5], b"late\n");
    }
}
