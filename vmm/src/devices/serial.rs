//! COM1: a 16550A UART from vm-superio, its output sent to stdout, a file or nowhere, its
//! input fed from stdin or the control socket. Input that does not fit the UART's 64-byte
//! FIFO waits in a bounded backlog and is moved in whenever the guest reads the UART.

use std::collections::VecDeque;
use std::io::Write;
use vm_superio::{serial::NoEvents, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Most input bytes held for the guest before `console_input` is refused.
pub const INPUT_BACKLOG_LIMIT: usize = 1 << 20;

/// Errors of the console.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The guest is not reading its input.
    #[error("console input backlog is full ({INPUT_BACKLOG_LIMIT} bytes): the guest is not reading COM1")]
    BacklogFull,
}

/// A saved COM1 state vm-superio refuses.
#[derive(Debug, thiserror::Error)]
#[error("the snapshot's COM1 state is unusable: {0}")]
pub struct RestoreError(String);

/// The UART's interrupt line: an eventfd registered with KVM as an irqfd for GSI 4.
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// Where guest console output goes.
pub type ConsoleOut = Box<dyn Write + Send>;

/// COM1 with its input backlog.
pub struct Console {
    uart: Serial<IrqLine, NoEvents, ConsoleOut>,
    backlog: VecDeque<u8>,
}

impl Console {
    /// A console raising `irq` and writing to `out`.
    pub fn new(irq: IrqLine, out: ConsoleOut) -> Self {
        Console {
            uart: Serial::new(irq, out),
            backlog: VecDeque::new(),
        }
    }

    /// Guest read of register `offset`.
    pub fn read(&mut self, offset: u8) -> u8 {
        let value = self.uart.read(offset);
        self.refill();
        value
    }

    /// Guest write of register `offset`. Output errors (a closed stdout) lose the byte but
    /// must not stop the guest, like a UART with nothing attached.
    pub fn write(&mut self, offset: u8, value: u8) {
        let _ = self.uart.write(offset, value);
    }

    /// Queues input for the guest.
    pub fn input(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.backlog.len() + bytes.len() > INPUT_BACKLOG_LIMIT {
            return Err(Error::BacklogFull);
        }
        self.backlog.extend(bytes);
        self.refill();
        Ok(())
    }

    /// A console in the state a snapshot recorded; fails when the saved FIFO holds more
    /// than a UART can (a corrupt snapshot).
    pub fn restore(
        irq: IrqLine,
        out: ConsoleOut,
        state: &super::persist::ConsoleState,
    ) -> Result<Self, RestoreError> {
        let uart = Serial::from_state(&state.uart(), irq, NoEvents, out)
            .map_err(|e| RestoreError(format!("{e:?}")))?;
        Ok(Console {
            uart,
            backlog: state.backlog.iter().copied().collect(),
        })
    }

    /// The state a snapshot records.
    pub fn state(&self) -> super::persist::ConsoleState {
        super::persist::ConsoleState::new(self.uart.state(), self.backlog.iter().copied().collect())
    }

    /// Bytes of input not yet in the UART FIFO.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Flushes console output.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }

    /// Moves backlog into the FIFO. Only what the UART accepted leaves the backlog: in
    /// loopback mode (Linux's 8250 driver probing the port) it accepts none, and the
    /// tenant's input waits rather than being lost.
    fn refill(&mut self) {
        feed_fifo(&mut self.uart, &mut self.backlog);
    }
}

/// Moves as much of `pending` into `uart`'s receive FIFO as it takes; only what it
/// accepted leaves `pending` (in loopback mode it accepts none). COM1's backlog and the
/// personalisation port's line both go in this way.
pub(crate) fn feed_fifo<W: Write>(
    uart: &mut Serial<IrqLine, NoEvents, W>,
    pending: &mut VecDeque<u8>,
) {
    let room = uart.fifo_capacity().min(pending.len());
    if room == 0 {
        return;
    }
    let chunk: Vec<u8> = pending.iter().take(room).copied().collect();
    if let Ok(taken) = uart.enqueue_raw_bytes(&chunk) {
        pending.drain(..taken);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("test lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn console() -> (Console, Shared) {
        let out = Shared::default();
        let irq = IrqLine(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        (Console::new(irq, Box::new(out.clone())), out)
    }

    #[test]
    fn output_reaches_the_writer() {
        let (mut c, out) = console();
        for b in b"hi" {
            c.write(0, *b);
        }
        assert_eq!(&*out.0.lock().expect("test lock"), b"hi");
    }

    #[test]
    fn long_input_drains_through_the_fifo_in_order() {
        let (mut c, _) = console();
        let input: Vec<u8> = (0..200u32).map(|i| (i % 251) as u8).collect();
        c.input(&input).expect("fits the backlog");
        assert!(
            c.backlog_len() > 0,
            "more than the FIFO holds waits in the backlog"
        );
        let mut got = Vec::new();
        while got.len() < input.len() {
            let lsr = c.read(5);
            assert_ne!(lsr & 1, 0, "data ready while input remains");
            got.push(c.read(0));
        }
        assert_eq!(got, input);
    }

    #[test]
    fn input_during_loopback_waits_for_its_end() {
        const MCR: u8 = 4;
        const MCR_LOOP: u8 = 0x10;
        let (mut c, _) = console();
        // A driver probing the UART: loopback on, the tenant types meanwhile.
        c.write(MCR, MCR_LOOP);
        c.input(b"typed").expect("fits the backlog");
        c.write(MCR, 0);
        // A register read refills the FIFO from the backlog after it reads.
        c.read(LSR);
        let mut got = Vec::new();
        while c.read(LSR) & 1 != 0 {
            got.push(c.read(0));
        }
        assert_eq!(got, b"typed", "input kept through loopback");
    }

    /// Linux's 8250 driver's transmit side (drivers/tty/serial/8250/8250_port.c and
    /// 8250_core.c, 6.1) as far as it touches the UART: `start_tx` sets IER.THRI if it is
    /// clear and otherwise waits for the THRE interrupt; the interrupt handler reads IIR,
    /// then LSR, writes up to 16 bytes (`tx_loadsz` of a 16550A) while THRI is set and
    /// clears THRI once the buffer is empty, and runs again until IIR says "no interrupt";
    /// `printk`'s console write saves IER, masks it, writes polled and restores it.
    struct Linux8250 {
        ier: u8,
        xmit: VecDeque<u8>,
    }

    const IER: u8 = 1;
    const IIR: u8 = 2;
    const LSR: u8 = 5;
    const IER_RDI: u8 = 0x01;
    const IER_THRI: u8 = 0x02;
    const IIR_NO_INT: u8 = 0x01;
    const LSR_THRE: u8 = 0x20;

    impl Linux8250 {
        /// After `serial8250_startup`: receive interrupts on, transmitter idle.
        fn started(uart: &mut Console) -> Self {
            uart.write(IER, IER_RDI);
            Linux8250 {
                ier: IER_RDI,
                xmit: VecDeque::new(),
            }
        }

        /// `uart_write` + `serial8250_start_tx`.
        fn write(&mut self, uart: &mut Console, bytes: &[u8]) {
            self.xmit.extend(bytes);
            if self.ier & IER_THRI == 0 {
                self.ier |= IER_THRI;
                uart.write(IER, self.ier);
            }
        }

        /// One pass of `serial8250_default_handle_irq`; false when IIR said no interrupt.
        fn handle_irq(&mut self, uart: &mut Console) -> bool {
            if uart.read(IIR) & IIR_NO_INT != 0 {
                return false;
            }
            if uart.read(LSR) & LSR_THRE != 0 && self.ier & IER_THRI != 0 {
                self.tx_chars(uart);
            }
            true
        }

        /// `serial8250_tx_chars`, then `__stop_tx` once the buffer is empty.
        fn tx_chars(&mut self, uart: &mut Console) {
            for _ in 0..16 {
                match self.xmit.pop_front() {
                    Some(byte) => uart.write(0, byte),
                    None => break,
                }
            }
            if self.xmit.is_empty() {
                self.ier &= !IER_THRI;
                uart.write(IER, self.ier);
            }
        }

        /// `serial8250_interrupt` for IRQ 4: passes until IIR says no interrupt.
        fn interrupt(&mut self, uart: &mut Console) {
            while self.handle_irq(uart) {}
        }

        /// `serial8250_console_write`.
        fn console_write(&mut self, uart: &mut Console, text: &[u8]) {
            let saved = uart.read(IER);
            uart.write(IER, 0);
            for byte in text {
                assert_ne!(uart.read(LSR) & LSR_THRE, 0, "polled THRE");
                uart.write(0, *byte);
            }
            uart.write(IER, saved);
        }
    }

    /// Whether the UART raised its IRQ since the last call (edges through the irqfd are
    /// counted by the eventfd; reading it consumes them, as KVM's irqfd does).
    fn irq_raised(uart: &Console) -> bool {
        uart.uart.interrupt_evt().0.read().is_ok()
    }

    /// Delivers the IRQ to the model until the UART stops raising it.
    fn deliver(linux: &mut Linux8250, uart: &mut Console) {
        while irq_raised(uart) {
            linux.interrupt(uart);
        }
    }

    #[test]
    fn linux_8250_transmit_path_never_waits_for_a_lost_thre_interrupt() {
        let (mut c, out) = console();
        let mut linux = Linux8250::started(&mut c);
        deliver(&mut linux, &mut c);
        let mut want = Vec::new();
        for round in 0..50u32 {
            let text = format!("line {round}: {}\n", "x".repeat((round as usize * 7) % 90));
            linux.write(&mut c, text.as_bytes());
            // printk lines land between start_tx and the handler (THRI set, the text
            // waiting in the driver): polled, they go out first.
            if round % 3 == 0 {
                let message = format!("[kernel {round}]\n");
                linux.console_write(&mut c, message.as_bytes());
                want.extend_from_slice(message.as_bytes());
            }
            want.extend_from_slice(text.as_bytes());
            deliver(&mut linux, &mut c);
            assert!(
                linux.xmit.is_empty(),
                "round {round}: {} bytes stuck in the driver, IER {:#x}",
                linux.xmit.len(),
                linux.ier
            );
        }
        assert_eq!(*out.0.lock().expect("test lock"), want);
    }

    #[test]
    fn a_console_restored_from_a_snapshot_taken_inside_the_handler_still_transmits() {
        // Park the guest at every point of its handler's last pass (after each register
        // access) and restore it there: the rest of the pass and the next write must
        // still get their interrupts.
        for park_after in 0..8 {
            let (mut c, out) = console();
            let mut linux = Linux8250::started(&mut c);
            deliver(&mut linux, &mut c);
            linux.write(&mut c, b"0123456789abcdefXYZ");
            assert!(irq_raised(&c), "start_tx raised THRE");
            // The pass that sends the first 16 bytes, then the last pass (3 bytes, then
            // __stop_tx), stepped register by register.
            assert!(linux.handle_irq(&mut c));
            let mut c = {
                let mut steps = 0;
                let mut snapshot = None;
                // IIR, LSR, three THR writes, the IER write of __stop_tx, the next IIR.
                let iir = c.read(IIR);
                steps += 1;
                assert_eq!(iir & IIR_NO_INT, 0);
                if steps == park_after {
                    snapshot = Some(c.state());
                }
                let lsr = c.read(LSR);
                steps += 1;
                assert_ne!(lsr & LSR_THRE, 0);
                if steps == park_after {
                    snapshot = Some(c.state());
                }
                for byte in linux.xmit.drain(..).collect::<Vec<_>>() {
                    c.write(0, byte);
                    steps += 1;
                    if steps == park_after {
                        snapshot = Some(c.state());
                    }
                }
                linux.ier &= !IER_THRI;
                c.write(IER, linux.ier);
                steps += 1;
                if steps == park_after {
                    snapshot = Some(c.state());
                }
                match snapshot {
                    // Parked before the pass (0) or after it (7): the state as it is now.
                    None => c,
                    Some(state) => {
                        let irq = IrqLine(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
                        Console::restore(irq, Box::new(out.clone()), &state).expect("restores")
                    }
                }
            };
            // The restored guest finishes its handler, then writes more.
            linux.interrupt(&mut c);
            deliver(&mut linux, &mut c);
            linux.write(&mut c, b" and after the restore\n");
            deliver(&mut linux, &mut c);
            assert!(
                linux.xmit.is_empty(),
                "parked after step {park_after}: {} bytes stuck, IER {:#x}",
                linux.xmit.len(),
                linux.ier
            );
            let text = out.0.lock().expect("test lock").clone();
            assert!(
                text.ends_with(b"XYZ and after the restore\n"),
                "parked after step {park_after}: {:?}",
                String::from_utf8_lossy(&text)
            );
        }
    }

    #[test]
    fn backlog_is_bounded() {
        let (mut c, _) = console();
        let big = vec![b'x'; INPUT_BACKLOG_LIMIT + 1];
        assert!(matches!(c.input(&big), Err(Error::BacklogFull)));
    }
}
