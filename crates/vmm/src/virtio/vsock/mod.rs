//! virtio-vsock (device id 19): stream sockets between the guest (its CID
//! given by the user) and the host (CID 2), bridged to unix sockets the way
//! Firecracker does it (`docs/vsock.md`).
//!
//! Queues: rx (0, host -> guest), tx (1, guest -> host), event (2: the
//! transport reset a snapshot sends, [`Vsock::reset_transport`]). Config
//! space: the guest CID (le64).
//! [`packet`] parses the 44-byte header, [`connection`] is one
//! connection's state machine and credit, [`muxer`] the connection table
//! and the unix sockets, [`handler`] the worker round.

pub mod connection;
pub mod handler;
pub mod muxer;
pub mod packet;
pub mod unix;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::QueueState;
use vmm_sys_util::epoll::Epoll;

use super::{read_config_bytes, Activation, Stopping, VirtioDevice, Worker, WorkerError, VIRTIO_F_VERSION_1};
use handler::VsockHandler;
use muxer::Muxer;
use unix::Listener;

/// Virtio device id of a socket device.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// Queue size offered to drivers (all three queues).
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue (host -> guest).
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue (guest -> host).
pub const TX_QUEUE: usize = 1;
/// Index of the event queue.
pub const EVENT_QUEUE: usize = 2;
/// The lowest CID a guest may have (0-2 are reserved).
pub const MIN_GUEST_CID: u64 = 3;

/// Packet, byte and connection counts of one vsock device.
#[derive(Debug, Default)]
pub struct VsockCounters {
    /// Packets given to the guest.
    pub rx_packets: AtomicU64,
    /// Payload bytes given to the guest.
    pub rx_bytes: AtomicU64,
    /// Packets read from the guest.
    pub tx_packets: AtomicU64,
    /// Payload bytes from the guest forwarded to host sockets.
    pub tx_bytes: AtomicU64,
    /// Connections opened (both directions).
    pub connections: AtomicU64,
    /// RSTs sent to the guest (refused or torn-down connections).
    pub resets: AtomicU64,
    /// Guest packets dropped: malformed, wrong addresses or type, payload
    /// after the host closed, refused.
    pub dropped: AtomicU64,
    /// Descriptor chains that were not a usable buffer.
    pub bad_chains: AtomicU64,
}

/// Errors making a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The CID is reserved or too large.
    #[error("guest CID {0} is not allowed: use 3 to 4294967295")]
    Cid(u64),
    /// The unix socket could not be made.
    #[error("vsock socket: {0}")]
    Socket(String),
    /// epoll could not be set up.
    #[error("vsock epoll: {0}")]
    Epoll(std::io::Error),
}

/// A virtio-vsock device.
pub struct Vsock {
    cid: u64,
    uds_path: PathBuf,
    listener: Arc<Listener>,
    epoll: Arc<Epoll>,
    counters: Arc<VsockCounters>,
    first_local_port: u32,
    worker: Option<Worker<VsockHandler>>,
}

impl Vsock {
    /// A device for guest CID `cid`, listening at `uds_path` (bound now,
    /// removed when the device is dropped; see [`Listener::bind`]).
    pub fn new(cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        if !(MIN_GUEST_CID..=u64::from(u32::MAX)).contains(&cid) {
            return Err(VsockError::Cid(cid));
        }
        let listener = Listener::bind(uds_path).map_err(VsockError::Socket)?;
        let epoll = Epoll::new().map_err(VsockError::Epoll)?;
        muxer::register_listener(&epoll, &listener).map_err(VsockError::Epoll)?;
        Ok(Self {
            cid,
            uds_path: uds_path.to_owned(),
            listener: Arc::new(listener),
            epoll: Arc::new(epoll),
            counters: Arc::new(VsockCounters::default()),
            first_local_port: muxer::FIRST_LOCAL_PORT,
            worker: None,
        })
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// The host listener's path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Resets the transport for a snapshot (the VM and the worker paused):
    /// every host connection is closed and the driver is sent
    /// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET ([`VsockHandler::reset_transport`]),
    /// so the event is in the saved guest memory. Does nothing before the
    /// driver has started the device. The worker stays paused.
    pub fn reset_transport(&mut self) -> Result<(), String> {
        let Some(w) = &self.worker else {
            return Ok(());
        };
        let fresh = self.muxer();
        w.inspect_mut(move |h: &mut VsockHandler| h.reset_transport(fresh))
            .map_err(|e| e.to_string())?
    }

    /// Raises the device's interrupt again (a restored VM whose snapshot
    /// holds the transport reset: KVM injects an irqfd's interrupt
    /// asynchronously, so the saved irqchip may have missed it; a driver
    /// reads the interrupt status and finds the event). Nothing before the
    /// driver started the device.
    pub fn signal_used(&self) -> Result<(), String> {
        let Some(w) = &self.worker else {
            return Ok(());
        };
        w.inspect(|h: &VsockHandler| h.interrupt().signal(super::VIRTIO_MMIO_INT_VRING))
            .map_err(|e| e.to_string())
    }

    /// The device's counters (shared with its worker).
    pub fn vsock_counters(&self) -> Arc<VsockCounters> {
        self.counters.clone()
    }

    /// A muxer over this device's sockets (what activation gives the worker).
    pub fn muxer(&self) -> Muxer {
        let mut m = Muxer::new(
            self.cid,
            &self.uds_path,
            self.epoll.clone(),
            self.listener.clone(),
            self.counters.clone(),
        );
        m.set_next_local_port(self.first_local_port);
        m
    }

    /// The host port the next host-initiated connection tries first (saved
    /// in a snapshot).
    pub fn next_local_port(&self) -> Result<u32, String> {
        match &self.worker {
            Some(w) => w
                .inspect(|h: &VsockHandler| h.next_local_port())
                .map_err(|e| e.to_string()),
            None => Ok(self.first_local_port),
        }
    }

    /// Where host ports go on from once the device is activated (a
    /// restore, before the transport activates it).
    pub fn set_next_local_port(&mut self, port: u32) {
        self.first_local_port = port.max(muxer::FIRST_LOCAL_PORT);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, _acked: u64, a: Activation) -> Result<(), String> {
        self.worker = None;
        let handler = VsockHandler::new(a.memory, a.queues, a.interrupt, self.muxer(), self.counters.clone())?;
        let name = format!("virtio-vsock-{}", self.cid);
        self.worker = Some(Worker::spawn(name, a.queue_events, handler).map_err(|e| e.to_string())?);
        Ok(())
    }

    fn reset(&mut self) {
        // Every connection closes with the worker's muxer; the listener stays.
        self.worker = None;
    }

    fn reset_async(&mut self) -> Stopping {
        self.worker.take().map_or_else(Stopping::done, Worker::stop_async)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        vec![
            ("rx_packets", g(&c.rx_packets)),
            ("rx_bytes", g(&c.rx_bytes)),
            ("tx_packets", g(&c.tx_packets)),
            ("tx_bytes", g(&c.tx_bytes)),
            ("connections", g(&c.connections)),
            ("resets", g(&c.resets)),
            ("dropped", g(&c.dropped)),
            ("bad_chains", g(&c.bad_chains)),
        ]
    }

    fn pause(&mut self) -> Result<(), WorkerError> {
        self.worker.as_ref().map_or(Ok(()), Worker::pause)
    }

    fn resume(&mut self) -> Result<(), WorkerError> {
        self.worker.as_ref().map_or(Ok(()), Worker::resume)
    }

    fn queue_states(&self) -> Result<Option<Vec<QueueState>>, WorkerError> {
        match &self.worker {
            Some(w) => w.inspect(|h: &VsockHandler| h.queue_states()).map(Some),
            None => Ok(None),
        }
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests;
