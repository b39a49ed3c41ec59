//! virtio-blk: a raw image as a block device (IN, OUT, FLUSH, GET_ID,
//! DISCARD, WRITE_ZEROES). Flush is durable: FLUSH completes only after
//! fdatasync of the image returned. Without a flush nothing is promised.

pub mod disk;
pub mod request;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueState, QueueT};

use crate::memory::GuestMemoryMmap;

use self::disk::{AlignedBuffer, DiskImage, SECTOR_SIZE};
use self::request::{
    handle, handle_merged, plain_request, Completion, Plain, RequestContext, MAX_REQUEST_BYTES, MERGE_BYTES,
    VIRTIO_BLK_ID_BYTES,
};
use super::poll::{thread_cpu_ns, CpuCounter, PollMode, PollWindow};
use super::{
    read_config_bytes, Activation, Interrupt, QueueHandler, Queues, Stopping, VirtioDevice, Worker, WorkerError,
    VIRTIO_F_VERSION_1,
};
use super::{VIRTIO_MMIO_INT_VRING, VIRTIO_RING_F_EVENT_IDX};

/// Virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;
/// Queue size offered to drivers.
pub const QUEUE_SIZE: u16 = 256;
/// Batches a worker round drains before yielding.
const DRAINS_PER_ROUND: usize = 4;
const SEG_MAX: u32 = 128;
/// The disk a block device works on; replaced while the VM runs by
/// `PATCH /drives/{id}` (the worker picks the new one up at its next
/// notification).
#[derive(Debug)]
pub struct DiskSlot {
    disk: Mutex<Arc<DiskImage>>,
    generation: AtomicU64,
}

impl DiskSlot {
    fn current(&self) -> Arc<DiskImage> {
        crate::bus::lock(&self.disk).clone()
    }
}

/// A block device's counters.
#[derive(Debug, Default)]
pub struct BlockCounters {
    /// Requests completed.
    pub requests: AtomicU64,
    /// Requests completed with an error status.
    pub errors: AtomicU64,
    /// Backing files swapped in while running.
    pub swaps: AtomicU64,
    /// Notifications (queue kicks) the worker read from its eventfd.
    pub kicks: AtomicU64,
    /// Used-buffer interrupts raised.
    pub interrupts: AtomicU64,
    /// Requests the worker found while polling (no kick needed).
    pub polled: AtomicU64,
    /// CPU time of the worker thread, in microseconds (counted each time it
    /// goes to sleep).
    pub worker_cpu_us: AtomicU64,
}

/// A virtio-blk device.
pub struct Block {
    slot: Arc<DiskSlot>,
    id: [u8; VIRTIO_BLK_ID_BYTES],
    config: [u8; 60],
    worker: Option<Worker<Queues<BlockHandler>>>,
    name: String,
    counters: Arc<BlockCounters>,
    poll: PollMode,
}

impl Block {
    /// A block device for `disk`; `id` is what GET_ID returns (truncated to 20 bytes).
    pub fn new(disk: DiskImage, id: &str) -> Self {
        let mut ident = [0u8; VIRTIO_BLK_ID_BYTES];
        let n = id.len().min(VIRTIO_BLK_ID_BYTES);
        ident[..n].copy_from_slice(&id.as_bytes()[..n]);
        let config = config_space(disk.size());
        Self {
            slot: Arc::new(DiskSlot {
                disk: Mutex::new(Arc::new(disk)),
                generation: AtomicU64::new(0),
            }),
            id: ident,
            config,
            worker: None,
            name: format!("virtio-blk-{id}"),
            counters: Arc::new(BlockCounters::default()),
            poll: PollMode::Off,
        }
    }

    /// The device with polling mode `poll` (`--disk ...,poll=`), taken up
    /// at the next activation.
    pub fn with_poll(mut self, poll: PollMode) -> Self {
        self.poll = poll;
        self
    }

    /// The polling mode.
    pub fn poll_mode(&self) -> PollMode {
        self.poll
    }

    /// Whether the device is read-only (fixed for its life: the driver
    /// negotiated it).
    pub fn read_only(&self) -> bool {
        self.slot.current().read_only()
    }

    /// Whether the current disk bypasses the host page cache.
    pub fn direct(&self) -> bool {
        self.slot.current().direct()
    }

    /// The current disk's host path.
    pub fn path(&self) -> std::path::PathBuf {
        self.slot.current().path().to_path_buf()
    }

    /// The current disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.slot.current().size()
    }

    /// Replaces the backing disk; returns the new capacity in bytes. The
    /// caller then tells the driver (configuration-change interrupt).
    pub fn swap_disk(&mut self, disk: DiskImage) -> u64 {
        let size = disk.size();
        *crate::bus::lock(&self.slot.disk) = Arc::new(disk);
        self.slot.generation.fetch_add(1, Ordering::SeqCst);
        self.counters.swaps.fetch_add(1, Ordering::Relaxed);
        self.config[0..8].copy_from_slice(&(size / SECTOR_SIZE).to_le_bytes());
        size
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // Stop the worker first, so its last counts are in.
        self.worker = None;
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        tracing::debug!(
            "{} ends: {} requests, {} kicks, {} interrupts, {} polled, {} us worker CPU (poll={})",
            self.name,
            n(&c.requests),
            n(&c.kicks),
            n(&c.interrupts),
            n(&c.polled),
            n(&c.worker_cpu_us),
            self.poll
        );
    }
}

/// The virtio_blk_config layout: capacity, seg_max, blk_size, discard and
/// write-zeroes limits.
fn config_space(size: u64) -> [u8; 60] {
    let mut c = [0u8; 60];
    c[0..8].copy_from_slice(&(size / SECTOR_SIZE).to_le_bytes());
    c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
    c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
    let max_sectors = (MAX_REQUEST_BYTES as u64 / SECTOR_SIZE) as u32;
    c[36..40].copy_from_slice(&max_sectors.to_le_bytes()); // max_discard_sectors
    c[40..44].copy_from_slice(&1u32.to_le_bytes()); // max_discard_seg
    c[44..48].copy_from_slice(&1u32.to_le_bytes()); // discard_sector_alignment
    c[48..52].copy_from_slice(&max_sectors.to_le_bytes()); // max_write_zeroes_sectors
    c[52..56].copy_from_slice(&1u32.to_le_bytes()); // max_write_zeroes_seg
    c[56] = 1; // write_zeroes_may_unmap
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_FLUSH;
        if self.read_only() {
            f |= VIRTIO_BLK_F_RO;
        } else {
            f |= VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, acked: u64, mut a: Activation) -> Result<(), String> {
        let mut queue = a.queues.pop().ok_or("no queue")?;
        queue.set_event_idx(acked & VIRTIO_RING_F_EVENT_IDX != 0);
        let mut handler = BlockHandler::new(a.memory, queue, a.interrupt, self.slot.current(), self.id);
        handler.set_poll(self.poll);
        handler.slot = Some((self.slot.clone(), self.slot.generation.load(Ordering::SeqCst)));
        handler.counters = Some(self.counters.clone());
        self.worker =
            Some(Worker::spawn(self.name.clone(), a.queue_events, Queues::new(handler, 1)).map_err(|e| e.to_string())?);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }

    fn reset_async(&mut self) -> Stopping {
        self.worker.take().map_or_else(Stopping::done, Worker::stop_async)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        vec![
            ("requests", c.requests.load(Ordering::Relaxed)),
            ("errors", c.errors.load(Ordering::Relaxed)),
            ("swaps", c.swaps.load(Ordering::Relaxed)),
            ("kicks", c.kicks.load(Ordering::Relaxed)),
            ("interrupts", c.interrupts.load(Ordering::Relaxed)),
            ("polled", c.polled.load(Ordering::Relaxed)),
            ("worker_cpu_us", c.worker_cpu_us.load(Ordering::Relaxed)),
            ("host_io_errors", self.slot.current().host_errors()),
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
            Some(w) => w
                .inspect(|q: &Queues<BlockHandler>| vec![q.handler().queue.state()])
                .map(Some),
            None => Ok(None),
        }
    }

    fn flush(&self) -> std::io::Result<()> {
        let disk = self.slot.current();
        if disk.read_only() {
            Ok(())
        } else {
            disk.flush()
        }
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// The worker side: owns the queue while the device runs.
pub struct BlockHandler {
    memory: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<Interrupt>,
    disk: Arc<DiskImage>,
    id: [u8; VIRTIO_BLK_ID_BYTES],
    scratch: AlignedBuffer,
    slot: Option<(Arc<DiskSlot>, u64)>,
    counters: Option<Arc<BlockCounters>>,
    poll: PollWindow,
    /// Whether the worker suppressed the driver's notifications (polling).
    notify_off: bool,
    /// The worker thread's CPU time, for the `worker_cpu_us` counter.
    cpu: CpuCounter,
    /// When the current polling stretch began, and the thread's CPU time then.
    stretch: Option<(Instant, u64)>,
}

impl BlockHandler {
    /// A handler for `queue` (already configured and validated, as the
    /// transport hands it over at activation) over `disk`; `id` is what
    /// GET_ID returns. Lets benches and fuzz targets call [`Self::drain`]
    /// directly, without a transport or worker thread.
    pub fn new(
        memory: GuestMemoryMmap,
        queue: Queue,
        interrupt: Arc<Interrupt>,
        disk: Arc<DiskImage>,
        id: [u8; VIRTIO_BLK_ID_BYTES],
    ) -> Self {
        Self {
            memory,
            queue,
            interrupt,
            disk,
            id,
            scratch: AlignedBuffer::new(MERGE_BYTES),
            slot: None,
            counters: None,
            poll: PollWindow::new(PollMode::Off),
            notify_off: false,
            cpu: CpuCounter::default(),
            stretch: None,
        }
    }

    /// Sets how the worker polls the queue after a request.
    pub fn set_poll(&mut self, mode: PollMode) {
        self.poll = PollWindow::new(mode);
    }

    /// The queue (its state, for tests and snapshots).
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Raises the used-buffer interrupt unless the driver asked not to get
    /// one: used_event with EVENT_IDX, else VIRTQ_AVAIL_F_NO_INTERRUPT (a
    /// hint; kvmkit's guest sets it and polls the used ring).
    fn notify_driver(&mut self) {
        if !super::driver_wants_interrupt(&mut self.queue, &self.memory) {
            return;
        }
        if let Some(c) = &self.counters {
            c.interrupts.fetch_add(1, Ordering::Relaxed);
        }
        self.interrupt.signal(VIRTIO_MMIO_INT_VRING);
    }

    /// Adds the worker thread's CPU time since the last call to the counters.
    fn count_cpu(&mut self) {
        if let Some(c) = &self.counters {
            c.worker_cpu_us.fetch_add(self.cpu.elapsed_us(), Ordering::Relaxed);
        }
    }

    /// Completes the available requests (at most a ring's worth, [`QUEUE_SIZE`]); returns how many.
    ///
    /// Reads (or writes) that follow each other on the disk, taken one after the other from
    /// the ring, are merged into one disk access of up to [`MERGE_BYTES`] (16 sequential
    /// 128 KiB requests become one 2 MiB `pwrite`, as in QEMU): on a `cache=none` disk each
    /// access waits for the device, so this is most of the cost. Completions keep the
    /// driver's order.
    pub fn drain(&mut self) -> usize {
        // A queue whose avail index is bogus is broken until the driver
        // resets the device (popping would fail, and log, on every try).
        if self.interrupt.is_broken() {
            return 0;
        }
        if self.queue.iter(&self.memory).is_err() {
            self.interrupt
                .mark_broken("virtio-blk: the avail index is more than the queue size ahead");
            return 0;
        }
        let Self {
            memory,
            queue,
            disk,
            id,
            scratch,
            ..
        } = self;
        let ctx = RequestContext {
            disk,
            read_only: disk.read_only(),
            id,
        };
        let mut done: Vec<(u16, Completion)> = Vec::new();
        let mut run: Vec<(_, Plain)> = Vec::new();
        // Data bytes of `run`.
        let mut run_bytes = 0;
        // At most one ring's worth per drain: a guest that keeps
        // republishing cannot keep the worker here forever.
        for _ in 0..QUEUE_SIZE {
            let Some(chain) = queue.pop_descriptor_chain(&*memory) else {
                break;
            };
            let plain = plain_request(memory, &chain, &ctx);
            if let (Some(p), Some((_, last))) = (plain, run.last()) {
                if p.write == last.write
                    && last.offset + last.len as u64 == p.offset
                    && run_bytes + p.len <= MERGE_BYTES
                {
                    run_bytes += p.len;
                    run.push((chain, p));
                    continue;
                }
            }
            execute_run(memory, std::mem::take(&mut run), &ctx, scratch, &mut done);
            run_bytes = plain.map_or(0, |p| p.len);
            match plain {
                Some(p) => run.push((chain, p)),
                None => {
                    let head = chain.head_index();
                    done.push((head, handle(memory, chain, &ctx, scratch)));
                }
            }
        }
        execute_run(memory, run, &ctx, scratch, &mut done);
        let mut used = 0;
        if let Some(c) = &self.counters {
            let errors = done.iter().filter(|(_, d)| d.status.is_some_and(|s| s != 0)).count();
            c.requests.fetch_add(done.len() as u64, Ordering::Relaxed);
            c.errors.fetch_add(errors as u64, Ordering::Relaxed);
        }
        for (head, completion) in done {
            if completion.status.is_none() {
                tracing::debug!("virtio-blk: malformed request (no status byte) completed empty");
            }
            match queue.add_used(&*memory, head, completion.used_len) {
                Ok(()) => used += 1,
                // A bad head index: the chain was consumed, the ones behind it still run.
                Err(e) => tracing::debug!("virtio-blk: cannot complete request {head}: {e:?}"),
            }
        }
        used
    }
}

/// Executes a run of mergeable requests: alone through [`handle`], together through
/// [`handle_merged`]; appends `(head, completion)` to `done` in order.
fn execute_run(
    memory: &GuestMemoryMmap,
    run: Vec<(DescriptorChain<&GuestMemoryMmap>, Plain)>,
    ctx: &RequestContext<'_>,
    scratch: &mut AlignedBuffer,
    done: &mut Vec<(u16, Completion)>,
) {
    match run.len() {
        0 => {}
        1 => {
            for (chain, _) in run {
                let head = chain.head_index();
                done.push((head, handle(memory, chain, ctx, scratch)));
            }
        }
        _ => {
            let heads: Vec<u16> = run.iter().map(|(c, _)| c.head_index()).collect();
            done.extend(heads.into_iter().zip(handle_merged(memory, run, ctx, scratch)));
        }
    }
}

impl QueueHandler for BlockHandler {
    fn interrupt(&self) -> Option<Arc<Interrupt>> {
        Some(self.interrupt.clone())
    }

    fn process_queue(&mut self, _index: usize) -> bool {
        if let Some((slot, seen)) = &mut self.slot {
            let now = slot.generation.load(Ordering::SeqCst);
            if now != *seen {
                *seen = now;
                self.disk = slot.current();
            }
        }
        let started = Instant::now();
        let was_polling = self.poll.polling();
        // Re-check after completing a batch: the driver may add more
        // meanwhile. A few batches per round, then other work gets a turn.
        let mut completed = 0;
        let mut batches = 0;
        while batches < DRAINS_PER_ROUND {
            let n = self.drain();
            if n == 0 {
                break;
            }
            completed += n;
            batches += 1;
            self.notify_driver();
        }
        if self.interrupt.is_broken() {
            return false;
        }
        if was_polling && completed > 0 {
            if let Some(c) = &self.counters {
                c.polled.fetch_add(completed as u64, Ordering::Relaxed);
            }
        }
        let now = if self.poll.mode() == PollMode::Off {
            started
        } else {
            Instant::now()
        };
        if self.poll.after_round(completed, started, now) {
            // Inside the window: the driver need not notify; the worker
            // comes back without sleeping.
            if !self.notify_off {
                let _ = self.queue.disable_notification(&self.memory);
                self.notify_off = true;
                self.stretch = thread_cpu_ns().map(|cpu| (started, cpu));
            }
            if completed == 0 {
                // Give the core away between looks: on a host with fewer
                // cores than busy threads the vCPU that is to submit the
                // next request may be waiting for this one.
                std::thread::yield_now();
            }
            return true;
        }
        if batches == DRAINS_PER_ROUND {
            return true;
        }
        if let Some((began, cpu0)) = self.stretch.take() {
            if let Some(cpu1) = thread_cpu_ns() {
                let cpu = std::time::Duration::from_nanos(cpu1.saturating_sub(cpu0));
                self.poll.stretch_ended(cpu, now.saturating_duration_since(began), now);
            }
        }
        // About to sleep: re-arm notifications (NO_NOTIFY cleared, or
        // avail_event set to where the worker stopped), then look once
        // more, or a request added meanwhile would wait for a kick that
        // never comes.
        self.notify_off = false;
        self.count_cpu();
        match self.queue.enable_notification(&self.memory) {
            Ok(true) => {
                self.poll.rearmed();
                true
            }
            Ok(false) | Err(_) => false,
        }
    }

    fn kicked(&mut self, _index: usize, count: u64) {
        if let Some(c) = &self.counters {
            c.kicks.fetch_add(count, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
