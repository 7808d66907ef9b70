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

    fn refill(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        let room = self.uart.fifo_capacity().min(self.backlog.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = self.backlog.drain(..room).collect();
        let _ = self.uart.enqueue_raw_bytes(&chunk);
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
    fn backlog_is_bounded() {
        let (mut c, _) = console();
        let big = vec![b'x'; INPUT_BACKLOG_LIMIT + 1];
        assert!(matches!(c.input(&big), Err(Error::BacklogFull)));
    }
}
