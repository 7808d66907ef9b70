//! The MMIO bus: routes guest loads and stores in the device windows to the virtio
//! transports. Addresses no device claims read as all ones and ignore writes.

use crate::devices::virtio::mmio_transport::{MmioTransport, RestoreError};
use crate::devices::virtio::persist::TransportState;
use std::sync::{Mutex, MutexGuard};

/// Devices by window.
#[derive(Default)]
pub struct MmioBus {
    windows: Vec<(u64, u64, Mutex<MmioTransport>)>,
}

impl MmioBus {
    /// Adds `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: MmioTransport) {
        self.windows.push((base, len, Mutex::new(device)));
    }

    fn transports(&self) -> impl Iterator<Item = MutexGuard<'_, MmioTransport>> {
        self.windows
            .iter()
            .map(|(_, _, dev)| dev.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether the bus has no device.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Stops every device and returns their state, in window order (see
    /// [`MmioTransport::save`]), or the first device's reason for having none. Every
    /// device is stopped either way.
    pub fn save_all(&self) -> Result<Vec<TransportState>, String> {
        let saved: Vec<_> = self.transports().map(|mut t| t.save()).collect();
        saved.into_iter().collect()
    }

    /// Lets every device serve again after [`MmioBus::save_all`].
    pub fn resume_all(&self) {
        self.transports()
            .for_each(|mut t| t.resume_after_snapshot());
    }

    /// Restores every device from `saved`, in window order; the caller checked the count.
    pub fn restore_all(&self, saved: &[TransportState]) -> Result<(), RestoreError> {
        for (mut t, state) in self.transports().zip(saved) {
            t.restore(state)?;
        }
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Mutex<MmioTransport>)> {
        self.windows
            .iter()
            .find(|(base, len, _)| addr >= *base && addr - base < *len)
            .map(|(base, _, dev)| (addr - base, dev))
    }

    /// Guest load.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            // A panic while holding a transport lock leaves registers, not memory, suspect;
            // keep serving.
            Some((offset, dev)) => dev
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Guest store.
    pub fn write(&self, addr: u64, data: &[u8]) {
        if let Some((offset, dev)) = self.find(addr) {
            dev.lock()
                .unwrap_or_else(|p| p.into_inner())
                .write(offset, data);
        }
    }
}
