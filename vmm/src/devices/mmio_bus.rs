//! The MMIO bus: routes guest loads and stores in the device windows to the virtio
//! transports. Addresses no device claims read as all ones and ignore writes.

use crate::devices::virtio::mmio_transport::MmioTransport;
use std::sync::Mutex;

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
