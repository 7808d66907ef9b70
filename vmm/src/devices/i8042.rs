//! The i8042 keyboard controller, reduced to what a guest needs to reboot: command 0xFE on
//! port 0x64 pulses the CPU reset line, which ends the VMM. vm-superio does the decoding.

use std::sync::atomic::{AtomicBool, Ordering};
use vm_superio::{I8042Device, Trigger};

/// Set when the guest asks for a CPU reset.
#[derive(Default)]
pub struct ResetLine(AtomicBool);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::Release);
        Ok(())
    }
}

/// The controller.
pub struct ResetController {
    device: I8042Device<ResetLine>,
}

impl Default for ResetController {
    fn default() -> Self {
        ResetController {
            device: I8042Device::new(ResetLine::default()),
        }
    }
}

impl ResetController {
    /// Register read at `offset` from port 0x60 (status 0: no data, ready for commands).
    pub fn read(&mut self, offset: u8) -> u8 {
        self.device.read(offset)
    }

    /// Register write; returns true when the guest requested a reset.
    pub fn write(&mut self, offset: u8, value: u8) -> bool {
        let Ok(()) = self.device.write(offset, value);
        self.device.reset_evt().0.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reset_command_on_command_port_resets() {
        let mut c = ResetController::default();
        assert!(
            !c.write(0, 0xfe),
            "0xFE on the data port is a keyboard byte"
        );
        assert!(!c.write(4, 0xd1));
        assert!(c.write(4, 0xfe));
        assert!(!c.write(4, 0x00));
        assert_eq!(c.read(4), 0);
    }
}
