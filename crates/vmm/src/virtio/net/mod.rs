//! virtio-net (device id 1): one rx queue (0) and one tx queue (1) over a tap.
//!
//! Frames carry a 12-byte `virtio_net_hdr_v1` on the queues and on the tap
//! (IFF_VNET_HDR, TUNSETVNETHDRSZ 12), so headers pass through unchanged.
//! Checksum/TSOv4 offloads and mergeable rx buffers are offered only when the
//! tap accepted TUNSETOFFLOAD. The device runs on its own worker thread
//! (`worker.rs`), which polls the queues' ioeventfds and the tap, and
//! writes transmitted frames a burst per syscall (`tx_batch.rs`, through
//! [`crate::net::tx_ring`]) and reads received ones a batch per syscall
//! (through [`crate::net::rx_ring`]) where the host has io_uring.

mod backlog;
pub mod handler;
mod tx_batch;
mod worker;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::poll::PollMode;
use super::{read_config_bytes, Activation, Stopping, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::net::rx_ring::RxRing;
use crate::net::tap::{Tap, TUN_F_CSUM, TUN_F_TSO4};
use crate::net::tx_ring::TxRing;

pub use handler::{FrameIo, NetHandler, MAX_FRAME_BYTES};
pub use worker::NetWorker;

/// Virtio device id of a network device.
pub const VIRTIO_ID_NET: u32 = 1;
/// The device handles packets with partial checksum (guest -> host).
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
/// The driver handles packets with partial checksum (host -> guest).
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
/// The device has a MAC in config space.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// The driver can receive TSOv4.
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
/// The device can receive TSOv4.
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
/// The driver can merge receive buffers.
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
/// Config space has a link status.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// The offloads offered when the tap supports them.
pub const OFFLOAD_FEATURES: u64 = VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_MRG_RXBUF;
/// Queue size offered to drivers (rx and tx).
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;

/// Frame and error counts of one NIC (readable while it runs).
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Frames given to the guest.
    pub rx_frames: AtomicU64,
    /// Of those, frames read from the tap straight into the guest's rx
    /// buffers (no copy; `handler/direct.rs`).
    pub rx_direct: AtomicU64,
    /// Bytes (without the virtio header) given to the guest.
    pub rx_bytes: AtomicU64,
    /// Frames from the tap that did not fit the guest's buffers or were malformed.
    pub rx_dropped: AtomicU64,
    /// Frames sent to the tap.
    pub tx_frames: AtomicU64,
    /// Bytes (without the virtio header) sent to the tap.
    pub tx_bytes: AtomicU64,
    /// Syscalls that wrote tx frames to the tap: one per burst through the
    /// tx ring, one per frame without it.
    pub tx_writes: AtomicU64,
    /// Guest frames dropped: oversized, refused by the tap, or after the tap went away.
    pub tx_dropped: AtomicU64,
    /// Malformed descriptor chains (either queue), completed without data.
    pub bad_chains: AtomicU64,
    /// Rx queue notifications (kicks) read from its eventfd: each one a VM exit.
    pub rx_kicks: AtomicU64,
    /// Tx queue notifications (kicks) read from its eventfd.
    pub tx_kicks: AtomicU64,
    /// Used-buffer interrupts raised (either queue).
    pub interrupts: AtomicU64,
    /// Rx rounds that ended with frames waiting for the driver to add rx
    /// buffers (rx notifications go on, frames are read ahead meanwhile).
    pub rx_no_buffers: AtomicU64,
    /// Tx chains and rx frames the worker found while polling
    /// (`--net ...,poll=`): no kick or tap wake-up was needed for them.
    pub polled: AtomicU64,
    /// CPU time of the worker thread, in microseconds (counted when it goes to sleep).
    pub worker_cpu_us: AtomicU64,
}

impl NetCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "rx {} frames ({} direct) {} bytes {} dropped, tx {} frames {} bytes {} dropped, {} bad chains, \
             {} rx kicks, {} tx kicks, {} interrupts, {} rx waits for buffers, {} polled, {} us worker CPU",
            g(&self.rx_frames),
            g(&self.rx_direct),
            g(&self.rx_bytes),
            g(&self.rx_dropped),
            g(&self.tx_frames),
            g(&self.tx_bytes),
            g(&self.tx_dropped),
            g(&self.bad_chains),
            g(&self.rx_kicks),
            g(&self.tx_kicks),
            g(&self.interrupts),
            g(&self.rx_no_buffers),
            g(&self.polled),
            g(&self.worker_cpu_us)
        )
    }
}

/// How the device reaches the host network: a tap, or a stand-in in tests.
pub trait Backend: FrameIo + AsRawFd + Send + Sync + 'static {
    /// Sets the offloads (TUN_F_*) the backend may use towards us.
    fn set_offload(&self, flags: u32) -> std::io::Result<()>;
    /// Whether checksum and TSOv4 offloads can be turned on.
    fn offloads_supported(&self) -> bool;
    /// A name for log lines.
    fn name(&self) -> String;
    /// The fd transmitted frames may be written to through a [`TxRing`]
    /// (one frame per write, as a tap takes them); `None` (the default):
    /// only through [`FrameIo::write_frame`].
    fn ring_fd(&self) -> Option<RawFd> {
        None
    }
}

impl Backend for Tap {
    fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        Tap::set_offload(self, flags)
    }

    fn offloads_supported(&self) -> bool {
        Tap::offloads_supported(self)
    }

    fn name(&self) -> String {
        format!("tap {}", Tap::name(self))
    }

    fn ring_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }
}

/// A virtio-net device.
pub struct Net {
    backend: Arc<dyn Backend>,
    config: [u8; 8],
    counters: Arc<NetCounters>,
    worker: Option<NetWorker>,
    /// The ring transmitted frames are written through (shared by the
    /// workers of successive activations), if the host has io_uring.
    tx_ring: Option<Arc<Mutex<TxRing>>>,
    /// The ring received frames are read through, a batch per syscall
    /// (shared the same way), if the host has io_uring.
    rx_ring: Option<Arc<Mutex<RxRing>>>,
    /// How the worker polls after a round (`--net ...,poll=`).
    poll: PollMode,
}

impl Net {
    /// A NIC with MAC `mac` whose frames go to and come from `backend`
    /// (normally a [`Tap`]). Call it before the thread's seccomp filter is
    /// on: it makes the tx ring (io_uring_setup, io_uring_register).
    pub fn new(backend: Arc<dyn Backend>, mac: [u8; 6]) -> Self {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        config[6] = 1; // VIRTIO_NET_S_LINK_UP
        let tx_ring = backend.ring_fd().and_then(|fd| match TxRing::new(fd) {
            Ok(r) => Some(Arc::new(Mutex::new(r))),
            Err(e) => {
                tracing::info!(
                    "virtio-net ({}): no io_uring here ({e}); one write per transmitted frame",
                    backend.name()
                );
                None
            }
        });
        let rx_ring =
            tx_ring
                .as_ref()
                .and_then(|_| backend.ring_fd())
                .and_then(|fd| match RxRing::new(fd, handler::READ_ROOM) {
                    Ok(r) => Some(Arc::new(Mutex::new(r))),
                    Err(e) => {
                        tracing::info!(
                            "virtio-net ({}): no io_uring rx ring here ({e}); one read per received frame",
                            backend.name()
                        );
                        None
                    }
                });
        Self {
            backend,
            config,
            counters: Arc::new(NetCounters::default()),
            worker: None,
            tx_ring,
            rx_ring,
            poll: PollMode::Off,
        }
    }

    /// The device with polling mode `poll` (`--net ...,poll=`): after a
    /// round that moved frames the worker keeps looking at the tx queue
    /// (its notifications off) and the tap for a window.
    pub fn with_poll(mut self, poll: PollMode) -> Self {
        self.poll = poll;
        self
    }

    /// The polling mode.
    pub fn poll_mode(&self) -> PollMode {
        self.poll
    }

    /// Whether transmitted frames are written a burst per syscall.
    pub fn tx_batched(&self) -> bool {
        self.tx_ring.is_some()
    }

    /// Whether received frames are read a batch per syscall.
    pub fn rx_batched(&self) -> bool {
        self.rx_ring.is_some()
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.config[..6]);
        mac
    }

    /// The device's counters (shared with its worker).
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Stop the worker first, so its last counts are in.
        self.worker = None;
        tracing::debug!(
            "virtio-net ({}, poll={}) ends: {}",
            self.backend.name(),
            self.poll,
            self.counters.summary()
        );
    }
}

impl Net {
    /// The features the device offers: with `offloads`, the checksum and
    /// TSO offloads and mergeable rx buffers too.
    pub(crate) fn features_offered(offloads: bool) -> u64 {
        let mut f = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS;
        if offloads {
            f |= OFFLOAD_FEATURES;
        }
        f
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        Self::features_offered(self.backend.offloads_supported())
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, acked: u64, a: Activation) -> Result<(), String> {
        self.worker = None;
        let mut offload = 0;
        if acked & VIRTIO_NET_F_GUEST_CSUM != 0 {
            offload |= TUN_F_CSUM;
            if acked & VIRTIO_NET_F_GUEST_TSO4 != 0 {
                offload |= TUN_F_TSO4;
            }
        }
        if self.backend.offloads_supported() || offload != 0 {
            self.backend
                .set_offload(offload)
                .map_err(|e| format!("{}: TUNSETOFFLOAD {offload:#x}: {e}", self.backend.name()))?;
        }
        let mut queues = a.queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err("virtio-net needs two queues".into());
        };
        let handler = NetHandler::new(
            a.memory,
            rx,
            tx,
            a.interrupt,
            self.backend.clone(),
            self.counters.clone(),
            acked,
        )
        .with_tx_ring(self.tx_ring.clone())
        .with_rx_ring(self.rx_ring.clone());
        let name = format!("virtio-net-{}", self.backend.name().replace(' ', "-"));
        self.worker = Some(NetWorker::spawn(name, a.queue_events, handler, self.poll).map_err(|e| e.to_string())?);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }

    fn reset_async(&mut self) -> Stopping {
        self.worker.take().map_or_else(Stopping::done, NetWorker::stop_async)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let g = |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
        vec![
            ("rx_frames", g(&c.rx_frames)),
            ("rx_direct", g(&c.rx_direct)),
            ("rx_bytes", g(&c.rx_bytes)),
            ("rx_dropped", g(&c.rx_dropped)),
            ("tx_frames", g(&c.tx_frames)),
            ("tx_bytes", g(&c.tx_bytes)),
            ("tx_dropped", g(&c.tx_dropped)),
            ("tx_writes", g(&c.tx_writes)),
            ("bad_chains", g(&c.bad_chains)),
            ("rx_kicks", g(&c.rx_kicks)),
            ("tx_kicks", g(&c.tx_kicks)),
            ("interrupts", g(&c.interrupts)),
            ("rx_no_buffers", g(&c.rx_no_buffers)),
            ("polled", g(&c.polled)),
            ("worker_cpu_us", g(&c.worker_cpu_us)),
        ]
    }

    fn pause(&mut self) -> Result<(), super::WorkerError> {
        self.worker.as_ref().map_or(Ok(()), NetWorker::pause)
    }

    fn resume(&mut self) -> Result<(), super::WorkerError> {
        self.worker.as_ref().map_or(Ok(()), NetWorker::resume)
    }

    fn queue_states(&self) -> Result<Option<Vec<virtio_queue::QueueState>>, super::WorkerError> {
        self.worker.as_ref().map(NetWorker::queue_states).transpose()
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests;
