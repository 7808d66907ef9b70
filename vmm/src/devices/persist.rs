//! The port-I/O devices' state in a snapshot: COM1's UART registers, its receive FIFO and
//! the input backlog behind it; the personalisation port's (COM2's) the same way, with the
//! line bytes still pending and the channel's progress; whether the guest had announced
//! itself on the boot timer.
//! The i8042 has no state (it only turns 0xFE into a reset), so it has no entry.

use super::personalisation::LineProgress;
use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;

/// A 16550A's registers as vm-superio reports them, and the bytes queued for the guest that
/// do not fit its FIFO yet: COM1 (console input backlog) and COM2 (the personalisation
/// line's pending bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleState {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// The receive FIFO.
    pub fifo: Vec<u8>,
    /// Input not yet in the FIFO.
    pub backlog: Vec<u8>,
}

impl ConsoleState {
    /// From the UART's state and the backlog.
    pub fn new(uart: SerialState, backlog: Vec<u8>) -> Self {
        ConsoleState {
            baud_divisor_low: uart.baud_divisor_low,
            baud_divisor_high: uart.baud_divisor_high,
            interrupt_enable: uart.interrupt_enable,
            interrupt_identification: uart.interrupt_identification,
            line_control: uart.line_control,
            line_status: uart.line_status,
            modem_control: uart.modem_control,
            modem_status: uart.modem_status,
            scratch: uart.scratch,
            fifo: uart.in_buffer,
            backlog,
        }
    }

    /// The UART part, as vm-superio takes it back.
    pub fn uart(&self) -> SerialState {
        SerialState {
            baud_divisor_low: self.baud_divisor_low,
            baud_divisor_high: self.baud_divisor_high,
            interrupt_enable: self.interrupt_enable,
            interrupt_identification: self.interrupt_identification,
            line_control: self.line_control,
            line_status: self.line_status,
            modem_control: self.modem_control,
            modem_status: self.modem_status,
            scratch: self.scratch,
            in_buffer: self.fifo.clone(),
        }
    }
}

/// The personalisation port (see [`super::personalisation`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonalisationState {
    /// COM2's UART and the line bytes not yet in its FIFO.
    pub port: ConsoleState,
    /// Whether the guest had written 124 to the boot timer ("seen 124").
    pub seen_124: bool,
    /// Where the `personalise` line was.
    pub line: LineProgress,
}

/// Every port-I/O device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PioState {
    /// COM1.
    pub console: ConsoleState,
    /// COM2, the personalisation port.
    pub personalisation: PersonalisationState,
    /// Whether the guest had written 123 to the boot timer.
    pub guest_was_ready: bool,
}
