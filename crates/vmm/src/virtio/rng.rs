//! virtio-rng: entropy for the guest from the host's getrandom(2).

use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT};
use vm_memory::Bytes;

use crate::host::random::host_random;
use crate::memory::GuestMemoryMmap;

use super::{
    Activation, Interrupt, QueueHandler, Queues, Stopping, VirtioDevice, Worker, WorkerError, VIRTIO_F_VERSION_1,
    VIRTIO_MMIO_INT_VRING,
};

/// Virtio device id of an entropy device.
pub const VIRTIO_ID_RNG: u32 = 4;
/// Most bytes produced for one request.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;
/// Most requests completed per worker round (then other work gets a turn).
const REQUESTS_PER_ROUND: usize = 64;

/// The entropy device.
#[derive(Default)]
pub struct Rng {
    worker: Option<Worker<Queues<RngHandler>>>,
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[64]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, _acked: u64, mut a: Activation) -> Result<(), String> {
        let queue = a.queues.pop().ok_or("no queue")?;
        let handler = RngHandler {
            memory: a.memory,
            queue,
            interrupt: a.interrupt,
        };
        self.worker = Some(
            Worker::spawn("virtio-rng".into(), a.queue_events, Queues::new(handler, 1)).map_err(|e| e.to_string())?,
        );
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }

    fn reset_async(&mut self) -> Stopping {
        self.worker.take().map_or_else(Stopping::done, Worker::stop_async)
    }

    fn pause(&mut self) -> Result<(), WorkerError> {
        self.worker.as_ref().map_or(Ok(()), Worker::pause)
    }

    fn resume(&mut self) -> Result<(), WorkerError> {
        self.worker.as_ref().map_or(Ok(()), Worker::resume)
    }

    fn queue_states(&self) -> Result<Option<Vec<QueueState>>, WorkerError> {
        match &self.worker {
            Some(w) => w
                .inspect(|q: &Queues<RngHandler>| vec![q.handler().queue.state()])
                .map(Some),
            None => Ok(None),
        }
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// The rng's queue handler on its own (no worker thread), for the fuzz
/// target and tests that drive the queue directly.
#[cfg(any(test, feature = "test-rig"))]
pub fn queue_handler(memory: GuestMemoryMmap, queue: Queue, interrupt: Arc<Interrupt>) -> impl QueueHandler {
    RngHandler {
        memory,
        queue,
        interrupt,
    }
}

struct RngHandler {
    memory: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<Interrupt>,
}

impl QueueHandler for RngHandler {
    fn interrupt(&self) -> Option<Arc<Interrupt>> {
        Some(self.interrupt.clone())
    }

    fn process_queue(&mut self, _index: usize) -> bool {
        if self.interrupt.is_broken() {
            return false;
        }
        if self.queue.iter(&self.memory).is_err() {
            self.interrupt
                .mark_broken("virtio-rng: the avail index is more than the queue size ahead");
            return false;
        }
        let mut any = false;
        let mut buf = vec![0u8; MAX_BYTES_PER_REQUEST];
        let mut done = 0;
        let mut more = false;
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.memory) {
            let head = chain.head_index();
            let mut written = 0usize;
            for desc in chain.writable() {
                let want = (desc.len() as usize).min(MAX_BYTES_PER_REQUEST - written);
                if want == 0 || host_random(&mut buf[..want]).is_err() {
                    break;
                }
                if self.memory.write_slice(&buf[..want], desc.addr()).is_err() {
                    break;
                }
                written += want;
            }
            if self.queue.add_used(&self.memory, head, written as u32).is_err() {
                break;
            }
            any = true;
            done += 1;
            if done == REQUESTS_PER_ROUND {
                more = true;
                break;
            }
        }
        if any && self.queue.needs_notification(&self.memory).unwrap_or(true) {
            self.interrupt.signal(VIRTIO_MMIO_INT_VRING);
        }
        more
    }
}
