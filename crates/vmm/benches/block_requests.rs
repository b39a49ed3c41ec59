//! virtio-blk request throughput through `BlockHandler::drain`, no guest and
//! no worker thread: the bench plays the driver, laying out `BATCH` chains
//! (16-byte header, one data buffer, 1-byte status) in guest memory,
//! publishing them all, then timing one `drain` that completes the batch.
//!
//! * `read_4k`: 4 KiB IN requests, sectors spread over a 64 MiB image that
//!   was written once before (so it sits in the page cache).
//! * `write_4k`: 4 KiB OUT requests over the same image (page cache only,
//!   no flush).
//! * `read_64k`: 64 KiB IN requests.
//!
//! Criterion reports time per batch and, as throughput, requests per second
//! (one "element" per request).
//!
//! Run: `cargo bench -p kvmkit-vmm --bench block_requests`.

use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kvmkit_vmm::memory::GuestMemoryMmap;
use kvmkit_vmm::virtio::block::disk::DiskImage;
use kvmkit_vmm::virtio::block::request::{RequestHeader, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use kvmkit_vmm::virtio::block::{BlockHandler, QUEUE_SIZE};
use kvmkit_vmm::virtio::Interrupt;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const IMAGE_SIZE: u64 = 64 << 20;
const BATCH: u16 = 64;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const HEADERS: u64 = 0x4000;
const STATUS: u64 = 0x5000;
const DATA: u64 = 0x10_0000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// The 64 MiB image, removed on drop.
struct Image(PathBuf);

impl Image {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("kvmkit-bench-blk-{}.img", std::process::id()));
        let f = std::fs::File::create(&path).expect("create image");
        // Written, not just truncated: real pages in the page cache.
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        for off in (0..IMAGE_SIZE).step_by(chunk.len()) {
            f.write_all_at(&chunk, off).expect("fill image");
        }
        Self(path)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Guest memory, a handler over the image, and where the driver is.
struct Rig {
    mem: GuestMemoryMmap,
    handler: BlockHandler,
    avail_idx: u16,
}

impl Rig {
    fn new(image: &Image, data_len: u32) -> Self {
        let mem_size = DATA as usize + usize::from(BATCH) * data_len as usize;
        let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size)]).expect("memory");
        let mut queue = Queue::new(QUEUE_SIZE).expect("queue");
        queue.set_size(QUEUE_SIZE);
        queue.set_desc_table_address(Some(DESC as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        queue.set_used_ring_address(Some(USED as u32), Some(0));
        queue.set_ready(true);
        assert!(queue.is_valid(&mem));
        let disk = DiskImage::open(&image.0, false).expect("open image");
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let handler = BlockHandler::new(
            mem.clone(),
            queue,
            Arc::new(Interrupt::new(irq)),
            Arc::new(disk),
            *b"kvmkit-bench-disk\0\0\0",
        );
        Self {
            mem,
            handler,
            avail_idx: 0,
        }
    }

    fn desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC + 16 * u64::from(index);
        self.mem.write_obj(addr, GuestAddress(at)).expect("desc");
        self.mem.write_obj(len, GuestAddress(at + 8)).expect("desc");
        self.mem.write_obj(flags, GuestAddress(at + 12)).expect("desc");
        self.mem.write_obj(next, GuestAddress(at + 14)).expect("desc");
    }

    /// Writes `BATCH` chains (descriptors 3k, 3k+1, 3k+2) once; requests
    /// differ only in their header's sector, rewritten per batch.
    fn layout(&self, request_type: u32, data_len: u32) {
        let data_flags = if request_type == VIRTIO_BLK_T_IN { F_WRITE } else { 0 };
        for k in 0..BATCH {
            let d = 3 * k;
            let header = HEADERS + 16 * u64::from(k);
            self.mem
                .write_obj(
                    RequestHeader {
                        request_type,
                        reserved: 0,
                        sector: 0,
                    },
                    GuestAddress(header),
                )
                .expect("header");
            self.desc(d, header, 16, F_NEXT, d + 1);
            let data = DATA + u64::from(k) * u64::from(data_len);
            self.desc(d + 1, data, data_len, data_flags | F_NEXT, d + 2);
            self.desc(d + 2, STATUS + u64::from(k), 1, F_WRITE, 0);
        }
    }

    /// Points the batch at new sectors and publishes it.
    fn publish(&mut self, batch_no: u64, data_len: u32) {
        let sectors_per_request = u64::from(data_len) / 512;
        let slots = IMAGE_SIZE / u64::from(data_len);
        for k in 0..BATCH {
            // A stride that visits the whole image, not one hot page.
            let slot = (batch_no * u64::from(BATCH) + u64::from(k)).wrapping_mul(7919) % slots;
            let sector_at = HEADERS + 16 * u64::from(k) + 8;
            self.mem
                .write_obj(slot * sectors_per_request, GuestAddress(sector_at))
                .expect("sector");
            let ring = AVAIL + 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE);
            self.mem.write_obj(3 * k, GuestAddress(ring)).expect("ring");
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .expect("avail idx");
    }
}

fn bench_requests(c: &mut Criterion, name: &str, request_type: u32, data_len: u32, image: &Image) {
    let mut rig = Rig::new(image, data_len);
    rig.layout(request_type, data_len);
    // One checked batch before timing: every request completes with OK.
    rig.publish(0, data_len);
    assert_eq!(rig.handler.drain(), usize::from(BATCH));
    let mut status = [1u8; BATCH as usize];
    rig.mem.read_slice(&mut status, GuestAddress(STATUS)).expect("status");
    assert!(status.iter().all(|&s| s == 0), "{name}: requests failed: {status:?}");

    let mut group = c.benchmark_group("block_requests");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(u64::from(BATCH)));
    let mut batch_no = 1u64;
    group.bench_function(format!("{name}_x{BATCH}"), |b| {
        b.iter(|| {
            rig.publish(batch_no, data_len);
            batch_no += 1;
            black_box(rig.handler.drain())
        })
    });
    group.finish();
}

fn block_requests(c: &mut Criterion) {
    let image = Image::new();
    bench_requests(c, "read_4k", VIRTIO_BLK_T_IN, 4096, &image);
    bench_requests(c, "write_4k", VIRTIO_BLK_T_OUT, 4096, &image);
    bench_requests(c, "read_64k", VIRTIO_BLK_T_IN, 64 << 10, &image);
}

criterion_group!(benches, block_requests);
criterion_main!(benches);
