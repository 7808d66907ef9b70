//! virtio-net over a tap: queue 0 receives (tap → guest), queue 1 transmits (guest → tap).
//! Frames keep the 12-byte virtio 1.x header end to end (the tap is opened with
//! IFF_VNET_HDR), no offloads are negotiated, and each direction has its own rate limiter.

use super::persist::DeviceState;
use super::queue_handling::{
    add_used, drain_queue, enable_notification, needs_notification, pop_chain, Completion,
    PASS_CHAINS,
};
use super::rate_limiter::RateLimiter;
use super::tap::Tap;
use super::{feature, DeviceError, ExtraFd, Served, VirtioDevice};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

/// Entries per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Receive queue index.
pub const RX: usize = 0;
/// Transmit queue index.
pub const TX: usize = 1;
/// `struct virtio_net_hdr_v1` (with num_buffers), the header size for VIRTIO_F_VERSION_1.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame plus header that is accepted either way (64 KiB IP packet, Ethernet).
const MAX_FRAME: usize = 65_550 + VNET_HDR_LEN;
const EXTRA_TAP: usize = 0;
const EXTRA_RX_TIMER: usize = 1;
const EXTRA_TX_TIMER: usize = 2;

/// A virtio-net device.
pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
    /// A frame read from the tap that no guest buffer has taken yet.
    rx_pending: Option<usize>,
    rx_frame: Vec<u8>,
    tx_frame: Vec<u8>,
}

impl Net {
    /// A device on `tap` with guest MAC `mac`.
    pub fn new(tap: Tap, mac: [u8; 6], rx_limiter: RateLimiter, tx_limiter: RateLimiter) -> Self {
        Net {
            tap,
            mac,
            rx_limiter,
            tx_limiter,
            rx_pending: None,
            rx_frame: vec![0; MAX_FRAME],
            tx_frame: vec![0; MAX_FRAME],
        }
    }

    fn transmit(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
    ) -> Result<Served, DeviceError> {
        if self.tx_limiter.is_blocked() {
            return Ok(Served::default());
        }
        drain_queue(queue, mem, TX, |chain| self.transmit_chain(mem, chain))
    }

    /// Sends the frame of one TX chain to the tap; a malformed one is dropped. Returns what
    /// was written into the chain (nothing) and the frame's size, or None if the rate
    /// limiter holds it back.
    fn transmit_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Option<Completion> {
        let reader = chain.reader::<()>(mem).ok();
        let len = reader.as_ref().map_or(0, |r| r.available_bytes());
        let well_formed = (VNET_HDR_LEN..=MAX_FRAME).contains(&len);
        // Every chain costs an operation, a malformed one too, charged before it is
        // dropped: the ops limit bounds how many chains the guest makes the device look at.
        let payload = if well_formed { len - VNET_HDR_LEN } else { 0 };
        if !self.tx_limiter.consume(payload as u64) {
            return None;
        }
        let frame_len = match reader {
            Some(mut reader) if well_formed => reader
                .read_exact(&mut self.tx_frame[..len])
                .ok()
                .map(|_| len),
            _ => None,
        };
        let cost = frame_len.unwrap_or(0) as u64;
        if let Some(len) = frame_len {
            // No offload is negotiated, so the guest's header can only say "nothing to do";
            // one that says more (checksum offsets, GSO sizes) would be acted on by the
            // host's tap driver all the same, its segmenting paid outside this VM's cgroup.
            self.tx_frame[..VNET_HDR_LEN].fill(0);
            // A tap that is down or full drops the frame, as a cable would.
            let _ = self.tap.write_frame(&self.tx_frame[..len]);
        }
        Some(Completion { written: 0, cost })
    }

    /// Moves frames from the tap into RX buffers, at most [`PASS_CHAINS`] of them (some
    /// 4 MiB) in one pass: a ring the guest keeps full, or that looks full because frames
    /// land on it, must not keep the thread from a stop request.
    fn receive(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> Result<Served, DeviceError> {
        let mut used = 0;
        while !self.rx_limiter.is_blocked() {
            if used == PASS_CHAINS {
                // The tap's edge is spent: the device thread comes back for the rest.
                return Ok(Served {
                    notify: needs_notification(queue, mem, RX)?,
                    unfinished: Some(RX),
                });
            }
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.tap.read_frame(&mut self.rx_frame) {
                    Ok(len) => len,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(DeviceError::Host(format!("reading the tap: {e}"))),
                },
            };
            self.rx_pending = Some(len);
            let Some(chain) = pop_chain(queue, mem, RX)? else {
                // No buffer: keep the frame; the driver's next RX notification resumes.
                if enable_notification(queue, mem, RX)? {
                    continue;
                }
                break;
            };
            if !self
                .rx_limiter
                .consume(len.saturating_sub(VNET_HDR_LEN) as u64)
            {
                queue.go_to_previous_position();
                break;
            }
            let head = chain.head_index();
            // Without MRG_RXBUF the header's num_buffers must say 1.
            if len >= VNET_HDR_LEN {
                self.rx_frame[10..12].copy_from_slice(&1u16.to_le_bytes());
            }
            let written = match chain.writer::<()>(mem) {
                Ok(mut w) if w.available_bytes() >= len && len >= VNET_HDR_LEN => {
                    w.write_all(&self.rx_frame[..len]).map_or(0, |_| len)
                }
                // A buffer too small for the frame (or outside memory): the frame is dropped.
                _ => 0,
            };
            self.rx_pending = None;
            add_used(queue, mem, RX, head, written as u32)?;
            used += 1;
        }
        Ok(Served {
            notify: used > 0 && needs_notification(queue, mem, RX)?,
            unfinished: None,
        })
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_RING_F_EVENT_IDX) | feature(VIRTIO_NET_F_MAC)
    }

    fn config_space(&self) -> Vec<u8> {
        // struct virtio_net_config starts with the MAC; nothing else is offered.
        self.mac.to_vec()
    }

    fn extra_fds(&self) -> Vec<ExtraFd> {
        // Edge-triggered: the device reads the tap until EAGAIN or until the guest has no
        // buffer, and resumes on the guest's RX notification, so it never spins on a
        // readable tap it cannot drain.
        vec![
            ExtraFd {
                fd: self.tap.as_raw_fd(),
                events: EventSet::IN | EventSet::EDGE_TRIGGERED,
            },
            // Edge-triggered too: an expired timer wakes the thread once. Level-triggered,
            // a device the guest broke (which waits for its reset and serves nothing, so
            // reads no timer) would be woken by it without end, a host CPU spinning.
            ExtraFd {
                fd: self.rx_limiter.timer_fd(),
                events: EventSet::IN | EventSet::EDGE_TRIGGERED,
            },
            ExtraFd {
                fd: self.tx_limiter.timer_fd(),
                events: EventSet::IN | EventSet::EDGE_TRIGGERED,
            },
        ]
    }

    fn process_queue(
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &mut [Queue],
        index: usize,
    ) -> Result<Served, DeviceError> {
        let Some(queue) = queues.get_mut(index) else {
            return Ok(Served::default());
        };
        match index {
            RX => self.receive(mem, queue),
            TX => self.transmit(mem, queue),
            _ => Ok(Served::default()),
        }
    }

    fn process_extra(
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &mut [Queue],
        index: usize,
    ) -> Result<Served, DeviceError> {
        match index {
            EXTRA_RX_TIMER => self.rx_limiter.on_timer(),
            EXTRA_TX_TIMER => {
                self.tx_limiter.on_timer();
                return self.process_queue(mem, queues, TX);
            }
            EXTRA_TAP => {}
            _ => return Ok(Served::default()),
        }
        self.process_queue(mem, queues, RX)
    }

    fn save_state(&mut self) -> Result<DeviceState, String> {
        Ok(DeviceState {
            limiters: vec![self.rx_limiter.state(), self.tx_limiter.state()],
            pending_frame: self
                .rx_pending
                .map(|len| self.rx_frame[..len.min(MAX_FRAME)].to_vec()),
        })
    }

    fn restore_state(&mut self, state: &DeviceState) {
        if let [rx, tx] = state.limiters.as_slice() {
            self.rx_limiter.restore(rx);
            self.tx_limiter.restore(tx);
        }
        self.rx_pending = state.pending_frame.as_ref().map(|frame| {
            let len = frame.len().min(MAX_FRAME);
            self.rx_frame[..len].copy_from_slice(&frame[..len]);
            len
        });
    }
}

/// Parses `AA:BB:CC:DD:EE:FF`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_driver::{Buf, DriverQueue};
    use std::net::UdpSocket;
    use std::process::Command;
    use std::time::{Duration, Instant};
    use vm_memory::{Bytes, GuestAddress};

    const TAP: &str = "cvnet0";
    const HOST_MAC: [u8; 6] = [2, 0, 0, 0x77, 0, 1];
    const GUEST_MAC: [u8; 6] = [2, 0, 0, 0x77, 0, 2];
    const HOST_IP: [u8; 4] = [10, 77, 0, 1];
    const GUEST_IP: [u8; 4] = [10, 77, 0, 2];

    fn skip(why: &str) {
        let _ = writeln!(std::io::stderr(), "SKIPPED net tap test: {why}");
    }

    fn ip(args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("ip: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn checksum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// vnet header + Ethernet + IPv4 + UDP (no UDP checksum) from the guest to the host.
    fn guest_udp_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend_from_slice(&HOST_MAC);
        f.extend_from_slice(&GUEST_MAC);
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 8 + payload.len()) as u16;
        let mut iph = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
        iph[2..4].copy_from_slice(&total.to_be_bytes());
        iph.extend_from_slice(&GUEST_IP);
        iph.extend_from_slice(&HOST_IP);
        let csum = checksum(&iph);
        iph[10..12].copy_from_slice(&csum.to_be_bytes());
        f.extend_from_slice(&iph);
        f.extend_from_slice(&4000u16.to_be_bytes());
        f.extend_from_slice(&5000u16.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn wait_readable(fd: std::os::fd::RawFd) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 200) == 1 }
    }

    /// Runs inside a fresh network namespace, so the tap, its address and the neighbour
    /// entry exist only there.
    fn tx_and_rx() -> Result<(), String> {
        // SAFETY: unshare only changes this thread's namespace membership.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            skip(&format!(
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            ));
            return Ok(());
        }
        let tap = match Tap::open(TAP, VNET_HDR_LEN as i32) {
            Ok(t) => t,
            Err(e) => {
                skip(&e.to_string());
                return Ok(());
            }
        };
        let mac = "02:00:00:77:00:01";
        ip(&["link", "set", TAP, "address", mac])?;
        ip(&["addr", "add", "10.77.0.1/24", "dev", TAP])?;
        ip(&["link", "set", TAP, "up"])?;
        ip(&[
            "neigh",
            "add",
            "10.77.0.2",
            "lladdr",
            "02:00:00:77:00:02",
            "dev",
            TAP,
        ])?;

        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).expect("8 MiB");
        let mut rx = DriverQueue::new(0, 16);
        let mut tx = DriverQueue::new(0x1_0000, 16);
        let mut queues = [rx.queue(&mem), tx.queue(&mem)];
        let limit = || RateLimiter::new(None, None).expect("timerfd");
        let mut net = Net::new(tap, GUEST_MAC, limit(), limit());
        assert_eq!(net.config_space(), GUEST_MAC.to_vec());

        // Guest → host.
        let sock = UdpSocket::bind("10.77.0.1:5000").map_err(|e| format!("bind: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let frame = guest_udp_frame(b"hello from the guest");
        mem.write_slice(&frame, GuestAddress(0x20_0000))
            .expect("frame");
        tx.add_chain(
            &mem,
            &[
                Buf::read(0x20_0000, 12),
                Buf::read(0x20_000c, frame.len() as u32 - 12),
            ],
        );
        net.process_queue(&mem, &mut queues, TX).expect("tx");
        assert_eq!(tx.used_idx(&mem), 1, "the TX chain is returned");
        let mut got = [0u8; 64];
        let (n, from) = sock
            .recv_from(&mut got)
            .map_err(|e| format!("host recv: {e}"))?;
        assert_eq!(&got[..n], b"hello from the guest");
        assert_eq!(from.to_string(), "10.77.0.2:4000");

        // A header claiming TCP segmentation (GSO_TCPV4, 1,000-byte segments) that no
        // negotiated feature allows: the host gets the plain frame all the same. Passed on
        // as written, the tap driver would refuse it (a UDP frame is no TCP segment).
        let mut forged = guest_udp_frame(b"a forged vnet header");
        forged[1] = 1; // gso_type: VIRTIO_NET_HDR_GSO_TCPV4
        forged[4..6].copy_from_slice(&1000u16.to_le_bytes()); // gso_size
        mem.write_slice(&forged, GuestAddress(0x20_0000))
            .expect("frame");
        tx.add_chain(&mem, &[Buf::read(0x20_0000, forged.len() as u32)]);
        net.process_queue(&mem, &mut queues, TX).expect("tx");
        assert_eq!(tx.used_idx(&mem), 2, "the forged chain is returned");
        let (n, _) = sock
            .recv_from(&mut got)
            .map_err(|e| format!("host recv of the forged frame: {e}"))?;
        assert_eq!(&got[..n], b"a forged vnet header");

        // Host → guest.
        for i in 0..8u64 {
            rx.add_chain(&mem, &[Buf::write(0x40_0000 + i * 0x1000, 1526)]);
        }
        sock.send_to(b"hello guest", "10.77.0.2:6000")
            .map_err(|e| format!("host send: {e}"))?;
        let tap_fd = net.extra_fds()[EXTRA_TAP].fd;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            wait_readable(tap_fd);
            net.process_extra(&mem, &mut queues, EXTRA_TAP).expect("rx");
            for i in 0..rx.used_idx(&mem) {
                let (head, len) = rx.used_elem(&mem, i);
                let mut buf = vec![0u8; len as usize];
                mem.read_slice(&mut buf, GuestAddress(0x40_0000 + u64::from(head) * 0x1000))
                    .expect("rx buffer");
                if buf.ends_with(b"hello guest") {
                    assert_eq!(&buf[10..12], &[1, 0], "num_buffers is 1");
                    assert_eq!(&buf[12..18], &GUEST_MAC, "addressed to the guest");
                    assert_eq!(&buf[18..24], &HOST_MAC);
                    return Ok(());
                }
            }
        }
        Err("the host's UDP datagram never reached a guest RX buffer".into())
    }

    #[test]
    fn tx_and_rx_through_a_real_tap_in_a_private_netns() {
        if !std::path::Path::new("/dev/net/tun").exists() {
            skip("/dev/net/tun missing");
            return;
        }
        let result = std::thread::spawn(tx_and_rx).join().expect("test thread");
        result.expect("tap round trip");
    }

    /// TX chains too short to hold a vnet header are dropped, but each costs an operation
    /// first: a 3 ops/s TX bucket lets 3 of 5 through. Needs only a tap, in a private netns.
    fn malformed_tx_chains() -> Result<(), String> {
        // SAFETY: unshare only changes this thread's namespace membership.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            skip(&format!(
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            ));
            return Ok(());
        }
        let tap = match Tap::open("cvnet1", VNET_HDR_LEN as i32) {
            Ok(t) => t,
            Err(e) => {
                skip(&e.to_string());
                return Ok(());
            }
        };
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).expect("8 MiB");
        let rx = DriverQueue::new(0, 16);
        let mut tx = DriverQueue::new(0x1_0000, 16);
        let mut queues = [rx.queue(&mem), tx.queue(&mem)];
        let unlimited = RateLimiter::new(None, None).expect("timerfd");
        let three_ops = RateLimiter::new(None, Some(3)).expect("timerfd");
        let mut net = Net::new(tap, GUEST_MAC, unlimited, three_ops);
        for _ in 0..5 {
            tx.add_chain(&mem, &[Buf::read(0x20_0000, 4)]);
        }
        net.process_queue(&mem, &mut queues, TX)
            .map_err(|e| format!("tx: {e}"))?;
        assert_eq!(tx.used_idx(&mem), 3, "3 ops/s admit 3 chains");
        assert!(net.tx_limiter.is_blocked());
        Ok(())
    }

    #[test]
    fn malformed_tx_chains_are_charged_an_operation() {
        if !std::path::Path::new("/dev/net/tun").exists() {
            skip("/dev/net/tun missing");
            return;
        }
        let result = std::thread::spawn(malformed_tx_chains)
            .join()
            .expect("test thread");
        result.expect("malformed TX chains");
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:00:00:aa:BB:0c"),
            Some([2, 0, 0, 0xaa, 0xbb, 0x0c])
        );
        for bad in [
            "",
            "02:00:00:aa:bb",
            "02:00:00:aa:bb:cc:dd",
            "2:00:00:aa:bb:cc",
            "g2:00:00:aa:bb:cc",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
