//! Emulated devices and the port-I/O bus that routes guest `in`/`out` to them.

pub mod boot_timer;
pub mod console_cap;
pub mod device_log;
pub mod i8042;
pub mod mmio_bus;
pub mod persist;
pub mod personalisation;
pub mod serial;
pub mod virtio;

use crate::exit::VmExit;
use boot_timer::{BootTimer, AWAITING_PERSONALISATION_MAGIC};
use i8042::ResetController;
use personalisation::PersonalisationPort;
use serial::Console;
use std::sync::{Mutex, MutexGuard};

/// COM1 base port.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 IRQ line (GSI).
pub const COM1_IRQ: u32 = 4;
const COM1_PORT_COUNT: u16 = 8;
/// COM2 base port: the personalisation port.
pub const COM2_PORT: u16 = 0x2f8;
/// COM2 IRQ line (GSI), the ISA default, routed like COM1's in the MP table.
pub const COM2_IRQ: u32 = 3;
const COM2_PORT_COUNT: u16 = 8;
/// i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 status/command port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// Boot-timer port.
pub const BOOT_TIMER_PORT: u16 = 0x3f0;

/// All port-I/O devices of a guest.
pub struct PioBus {
    console: Mutex<Console>,
    personalisation: Mutex<PersonalisationPort>,
    reset: Mutex<ResetController>,
    boot_timer: BootTimer,
}

impl PioBus {
    /// A bus with the given devices.
    pub fn new(
        console: Console,
        personalisation: PersonalisationPort,
        reset: ResetController,
        boot_timer: BootTimer,
    ) -> Self {
        PioBus {
            console: Mutex::new(console),
            personalisation: Mutex::new(personalisation),
            reset: Mutex::new(reset),
            boot_timer,
        }
    }

    /// The console, for input and flushing.
    pub fn console(&self) -> MutexGuard<'_, Console> {
        // A panic while holding the console lock cannot leave it inconsistent enough to
        // matter more than losing the console, so keep going.
        self.console.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The personalisation port, for the `personalise` command.
    pub fn personalisation(&self) -> MutexGuard<'_, PersonalisationPort> {
        // As for the console: its state stays consistent between register accesses.
        self.personalisation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The vCPUs have started: restored devices announce the state they were saved in
    /// (`awaiting_personalisation`, then `guest_ready`), in that order.
    pub fn vcpus_started(&self) {
        self.personalisation().vcpus_started();
        self.boot_timer.vcpus_started();
    }

    /// The boot timer.
    pub fn boot_timer(&self) -> &BootTimer {
        &self.boot_timer
    }

    /// The devices' state for a snapshot (the vCPUs are parked, so nothing changes it).
    pub fn state(&self) -> persist::PioState {
        persist::PioState {
            console: self.console().state(),
            personalisation: self.personalisation().state(),
            guest_was_ready: self.boot_timer.was_ready(),
        }
    }

    /// Guest `in`: fills `data`; ports nobody claims read as all ones (no device).
    ///
    /// `data` holds one byte for an `inb`, and more for a wider `in` or a `rep ins` that
    /// KVM's emulator batched into one exit (kvm-ioctls does not say which). Only COM2's
    /// data register takes such a read, as that many reads of it in a row (the
    /// personalisation line in bulk); every other multi-byte read stays all ones.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match port {
            COM2_PORT if !data.is_empty() => {
                self.personalisation().read_data(data);
            }
            p if (COM1_PORT..COM1_PORT + COM1_PORT_COUNT).contains(&p) && data.len() == 1 => {
                data[0] = self.console().read((p - COM1_PORT) as u8);
            }
            p if (COM2_PORT..COM2_PORT + COM2_PORT_COUNT).contains(&p) && data.len() == 1 => {
                data[0] = self.personalisation().read((p - COM2_PORT) as u8);
            }
            I8042_DATA_PORT | I8042_COMMAND_PORT if data.len() == 1 => {
                let mut reset = self.reset.lock().unwrap_or_else(|p| p.into_inner());
                data[0] = reset.read((port - I8042_DATA_PORT) as u8);
            }
            _ => data.fill(0xff),
        }
    }

    /// Guest `out`: returns how the VM ends if the write ends it.
    pub fn write(&self, port: u16, data: &[u8]) -> Option<VmExit> {
        match (port, data) {
            (p, [value]) if (COM1_PORT..COM1_PORT + COM1_PORT_COUNT).contains(&p) => {
                self.console().write((p - COM1_PORT) as u8, *value);
                None
            }
            (p, [value]) if (COM2_PORT..COM2_PORT + COM2_PORT_COUNT).contains(&p) => {
                self.personalisation().write((p - COM2_PORT) as u8, *value);
                None
            }
            (I8042_DATA_PORT | I8042_COMMAND_PORT, [value]) => {
                let mut reset = self.reset.lock().unwrap_or_else(|p| p.into_inner());
                reset
                    .write((port - I8042_DATA_PORT) as u8, *value)
                    .then_some(VmExit::GuestReset)
            }
            (BOOT_TIMER_PORT, [AWAITING_PERSONALISATION_MAGIC]) => {
                self.personalisation().guest_awaits();
                None
            }
            (BOOT_TIMER_PORT, [value]) => {
                self.boot_timer.write(*value);
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Clock, EventSink};
    use serial::IrqLine;
    use std::sync::Arc;
    use vmm_sys_util::eventfd::EventFd;

    fn bus() -> PioBus {
        let events = Arc::new(EventSink::from_file(
            tempfile::tempfile().expect("temp file"),
            Clock::starting_now(),
        ));
        let irq = || IrqLine(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        PioBus::new(
            Console::new(irq(), Box::new(std::io::sink())),
            PersonalisationPort::new(irq(), Arc::clone(&events)),
            ResetController::default(),
            BootTimer::new(events),
        )
    }

    #[test]
    fn a_batched_read_of_com2_data_gets_the_line_and_other_wide_reads_stay_all_ones() {
        let bus = bus();
        assert_eq!(
            bus.write(BOOT_TIMER_PORT, &[AWAITING_PERSONALISATION_MAGIC]),
            None
        );
        bus.personalisation().personalise("bulk").expect("valid");
        bus.console().input(b"typed").expect("room");
        let mut wide = [0_u8; 4];
        for port in [COM1_PORT, COM2_PORT + 5, I8042_DATA_PORT, 0x80] {
            bus.read(port, &mut wide);
            assert_eq!(wide, [0xff; 4], "port {port:#x}");
        }
        let mut batch = [0xaa_u8; 8];
        bus.read(COM2_PORT, &mut batch);
        assert_eq!(&batch, b"bulk\n\0\0\0");
        let mut one = [0_u8];
        bus.read(COM1_PORT, &mut one);
        assert_eq!(one, [b't'], "COM1 kept its input through the wide read");
    }
}
