//! Drives the block device with descriptor chains laid out in guest memory,
//! well-formed and hostile.

use std::path::PathBuf;

use vm_memory::{Bytes, GuestAddress};

use super::request::*;
use super::*;
use crate::virtio::test_rig::{Desc, TestQueue, F_WRITE};

const QUEUE: u64 = 0x1000;
const DATA: u64 = 0x10000;
const QSIZE: u16 = 16;
const F_INDIRECT: u16 = 4;

struct Rig {
    mem: GuestMemoryMmap,
    handler: BlockHandler,
    path: PathBuf,
    q: TestQueue,
}

impl Rig {
    fn new(tag: &str, size: u64, read_only: bool) -> Self {
        Self::with_cache(tag, size, read_only, false)
    }

    /// With `direct`, the image is opened O_DIRECT (`cache=none`) where the file system allows.
    fn with_cache(tag: &str, size: u64, read_only: bool, direct: bool) -> Self {
        let path = std::env::temp_dir().join(format!("kvmkit-blk-{tag}-{}", std::process::id()));
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(size))
            .expect("image");
        let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mem");
        let q = TestQueue::new(QUEUE, QSIZE);
        let queue = q.queue();
        let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let disk = DiskImage::open_with(&path, read_only, direct).expect("disk");
        let handler = BlockHandler::new(
            mem.clone(),
            queue,
            Arc::new(Interrupt::new(irq)),
            Arc::new(disk),
            *b"kvmkit-test-disk\0\0\0\0",
        );
        Self { mem, handler, path, q }
    }

    fn write_desc(&self, table: u64, i: u16, d: Desc, next: Option<u16>) {
        TestQueue::write_desc(&self.mem, table, i, d, next);
    }

    /// Publishes a chain; returns its head index.
    fn push(&mut self, descs: &[Desc]) -> u16 {
        self.q.push(&self.mem, descs)
    }

    fn publish(&mut self, head: u16) {
        self.q.publish(&self.mem, head);
    }

    fn header(&self, at: u64, t: u32, sector: u64) -> Desc {
        let h = RequestHeader {
            request_type: t,
            reserved: 0,
            sector,
        };
        self.mem.write_obj(h, GuestAddress(at)).expect("header");
        (at, 16, 0)
    }

    fn status(&self, at: u64) -> u8 {
        self.mem.read_obj(GuestAddress(at)).expect("status")
    }

    /// (head, len) of used entry `n`.
    fn used(&self, n: u16) -> (u32, u32) {
        self.q.used_entry(&self.mem, n)
    }

    fn used_idx(&self) -> u16 {
        self.q.used_idx(&self.mem)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn write_flush_read_round_trip() {
    let mut r = Rig::new("rw", 64 * 1024, false);
    r.mem.write_slice(&[0xab; 1024], GuestAddress(DATA)).expect("data");
    let h = r.header(0x8000, VIRTIO_BLK_T_OUT, 4);
    r.push(&[h, (DATA, 1024, 0), (0x8100, 1, F_WRITE)]);
    let h = r.header(0x8200, VIRTIO_BLK_T_FLUSH, 0);
    r.push(&[h, (0x8300, 1, F_WRITE)]);
    let h = r.header(0x8400, VIRTIO_BLK_T_IN, 4);
    r.push(&[
        h,
        (DATA + 0x1000, 512, F_WRITE),
        (DATA + 0x2000, 512, F_WRITE),
        (0x8500, 1, F_WRITE),
    ]);
    assert_eq!(r.handler.drain(), 3);
    assert_eq!([r.status(0x8100), r.status(0x8300), r.status(0x8500)], [0, 0, 0]);
    let mut back = [0u8; 512];
    r.mem.read_slice(&mut back, GuestAddress(DATA + 0x2000)).expect("read");
    assert_eq!(back, [0xab; 512]);
    assert_eq!(r.used(2).1, 1025, "IN reports data + status bytes");
    let mut on_disk = vec![0u8; 1024];
    r.handler.disk.read_at(&mut on_disk, 4 * 512).expect("disk");
    assert!(on_disk.iter().all(|&b| b == 0xab));
}

/// Sequential writes, then a FLUSH, then sequential reads, on an O_DIRECT disk: the writes
/// become one disk access, the reads another, and completions reach the used ring in
/// request order with the right data and statuses. (Each request uses two descriptors,
/// header and data sharing one, to fit 8 requests in the 16-entry table.)
#[test]
fn sequential_requests_merge_and_complete_in_order() {
    let mut r = Rig::with_cache("direct", 1 << 20, false, true);
    // (Where the temp directory has no O_DIRECT the disk falls back to cached I/O: merging
    // works the same.)
    // Four 4 KiB writes of distinct bytes, a FLUSH, then three reads of the first three.
    let mut heads = Vec::new();
    for k in 0..4u64 {
        let at = DATA + k * 0x2000;
        r.header(at, VIRTIO_BLK_T_OUT, k * 8);
        r.mem
            .write_slice(&[0x10 + k as u8; 4096], GuestAddress(at + 16))
            .expect("data");
        heads.push(r.push(&[(at, 16 + 4096, 0), (0x8020 + k * 0x40, 1, F_WRITE)]));
    }
    let h = r.header(0x8400, VIRTIO_BLK_T_FLUSH, 0);
    heads.push(r.push(&[h, (0x8420, 1, F_WRITE)]));
    for k in 0..3u64 {
        let h = r.header(0x8800 + k * 0x40, VIRTIO_BLK_T_IN, k * 8);
        heads.push(r.push(&[h, (DATA + 0x10000 + k * 0x2000, 4096 + 1, F_WRITE)]));
    }
    assert_eq!(r.handler.drain(), 8);
    assert_eq!(r.used_idx(), 8);
    for (n, &head) in heads.iter().enumerate() {
        assert_eq!(r.used(n as u16).0, u32::from(head), "used entry {n} is request {n}");
    }
    assert_eq!(r.status(0x8420), VIRTIO_BLK_S_OK, "flush");
    for k in 0..4u64 {
        assert_eq!(r.status(0x8020 + k * 0x40), VIRTIO_BLK_S_OK, "write {k}");
    }
    for k in 0..3u64 {
        let at = DATA + 0x10000 + k * 0x2000;
        assert_eq!(r.status(at + 4096), VIRTIO_BLK_S_OK, "read {k}");
        let mut back = vec![0u8; 4096];
        r.mem.read_slice(&mut back, GuestAddress(at)).expect("read");
        assert!(back.iter().all(|&b| b == 0x10 + k as u8), "read {k} got the wrong data");
        assert_eq!(r.used(5 + k as u16).1, 4096 + 1, "IN reports data + status bytes");
    }
    assert_eq!(r.used(0).1, 1, "OUT reports its status byte");
}

/// A run of reads whose last request runs past the disk: the run is not merged with it, the
/// in-range ones succeed, the bad one gets IOERR; a gap in the sectors splits a run.
#[test]
fn merging_keeps_per_request_checks() {
    let mut r = Rig::new("merge-edge", 16 * 1024, false);
    r.mem
        .write_slice(&[0x5a; 16 * 1024], GuestAddress(0x40000))
        .expect("pattern");
    let h = r.header(0x8000, VIRTIO_BLK_T_OUT, 0);
    r.push(&[h, (0x40000, 16 * 1024, 0), (0x8020, 1, F_WRITE)]);
    assert_eq!(r.handler.drain(), 1);
    // Reads of sectors 0-7, 8-15, 24-31 (a gap), and 28-35 (past the 32-sector disk).
    for (k, sector) in [0u64, 8, 24, 28].into_iter().enumerate() {
        let k = k as u64;
        let h = r.header(0x8100 + k * 0x40, VIRTIO_BLK_T_IN, sector);
        r.push(&[h, (DATA + k * 0x2000, 4096 + 1, F_WRITE)]);
    }
    assert_eq!(r.handler.drain(), 4);
    let statuses: Vec<u8> = (0..4u64).map(|k| r.status(DATA + k * 0x2000 + 4096)).collect();
    assert_eq!(statuses, [0, 0, 0, VIRTIO_BLK_S_IOERR]);
    for k in 0..3u64 {
        let mut back = vec![0u8; 4096];
        r.mem
            .read_slice(&mut back, GuestAddress(DATA + k * 0x2000))
            .expect("read");
        assert!(back.iter().all(|&b| b == 0x5a), "read {k}");
    }
}

#[test]
fn get_id_and_unknown_types() {
    let mut r = Rig::new("id", 4096, false);
    let h = r.header(0x8000, VIRTIO_BLK_T_GET_ID, 0);
    r.push(&[h, (DATA, 20, F_WRITE), (0x8100, 1, F_WRITE)]);
    let h = r.header(0x8200, 0x77, 0);
    r.push(&[h, (0x8300, 1, F_WRITE)]);
    assert_eq!(r.handler.drain(), 2);
    let mut id = [0u8; 16];
    r.mem.read_slice(&mut id, GuestAddress(DATA)).expect("id");
    assert_eq!(&id, b"kvmkit-test-disk");
    assert_eq!(r.status(0x8100), VIRTIO_BLK_S_OK);
    assert_eq!(r.status(0x8300), VIRTIO_BLK_S_UNSUPP);
}

#[test]
fn read_only_disks_refuse_writes_and_stay_untouched() {
    let mut r = Rig::new("ro", 4096, true);
    r.mem.write_slice(&[0x55; 512], GuestAddress(DATA)).expect("data");
    let h = r.header(0x8000, VIRTIO_BLK_T_OUT, 0);
    r.push(&[h, (DATA, 512, 0), (0x8100, 1, F_WRITE)]);
    let h = r.header(0x8200, VIRTIO_BLK_T_DISCARD, 0);
    r.push(&[h, (0x8300, 1, F_WRITE)]);
    r.handler.drain();
    assert_eq!(r.status(0x8100), VIRTIO_BLK_S_IOERR);
    assert_eq!(r.status(0x8300), VIRTIO_BLK_S_IOERR);
    let mut on_disk = [1u8; 512];
    r.handler.disk.read_at(&mut on_disk, 0).expect("disk");
    assert_eq!(on_disk, [0u8; 512]);
}

#[test]
fn out_of_range_and_unaligned_requests_fail() {
    let mut r = Rig::new("range", 4096, false);
    let h = r.header(0x8000, VIRTIO_BLK_T_IN, 8);
    r.push(&[h, (DATA, 512, F_WRITE), (0x8100, 1, F_WRITE)]);
    let h = r.header(0x8200, VIRTIO_BLK_T_OUT, 7);
    r.push(&[h, (DATA, 1024, 0), (0x8300, 1, F_WRITE)]);
    let h = r.header(0x8400, VIRTIO_BLK_T_OUT, 0);
    r.push(&[h, (DATA, 100, 0), (0x8500, 1, F_WRITE)]);
    let h = r.header(0x8600, VIRTIO_BLK_T_IN, u64::MAX);
    r.push(&[h, (DATA, 512, F_WRITE), (0x8700, 1, F_WRITE)]);
    assert_eq!(r.handler.drain(), 4);
    for s in [0x8100, 0x8300, 0x8500, 0x8700] {
        assert_eq!(r.status(s), VIRTIO_BLK_S_IOERR, "status at {s:#x}");
    }
}

#[test]
fn malformed_chains_complete_without_harm() {
    let mut r = Rig::new("hostile", 4096, false);
    // Header in a device-writable buffer: no readable header -> IOERR.
    r.push(&[(0x8000, 16, F_WRITE), (0x8100, 1, F_WRITE)]);
    // No writable byte at all: nowhere to put a status.
    let h = r.header(0x8200, VIRTIO_BLK_T_FLUSH, 0);
    r.push(&[h]);
    // Data outside guest RAM.
    let h = r.header(0x8400, VIRTIO_BLK_T_IN, 0);
    r.push(&[h, (0xffff_0000_0000, 512, F_WRITE), (0x8500, 1, F_WRITE)]);
    // Short header.
    r.push(&[(0x8600, 4, 0), (0x8700, 1, F_WRITE)]);
    assert_eq!(r.handler.drain(), 4);
    assert_eq!(r.status(0x8100), VIRTIO_BLK_S_IOERR);
    assert_eq!(r.used(1).1, 0, "a chain without a status byte completes empty");
    assert_eq!(r.used(2).1, 0, "a chain outside RAM completes empty");
    assert_eq!(r.status(0x8700), VIRTIO_BLK_S_IOERR);
    assert_eq!(r.used_idx(), 4);
}

#[test]
fn descriptor_loops_and_nested_indirect_tables_do_not_hang() {
    let mut r = Rig::new("loop", 4096, false);
    // Descriptor 0 -> 1 -> 0 -> ...: a loop.
    r.header(0x8000, VIRTIO_BLK_T_IN, 0);
    r.write_desc(r.q.desc_table(), 0, (0x8000, 16, 0), Some(1));
    r.write_desc(r.q.desc_table(), 1, (0x8100, 1, F_WRITE), Some(0));
    r.q.set_next_desc(2);
    r.publish(0);
    // An indirect table whose entry is itself indirect.
    const TABLE: u64 = 0x9000;
    r.write_desc(TABLE, 0, (0x9800, 16, F_INDIRECT), None);
    r.write_desc(r.q.desc_table(), 2, (TABLE, 16, F_INDIRECT), None);
    r.q.set_next_desc(3);
    r.publish(2);
    // A descriptor index beyond the queue.
    r.write_desc(r.q.desc_table(), 3, (0x8000, 16, 0), Some(QSIZE + 5));
    r.publish(3);
    let done = r.handler.drain();
    assert!(done <= 3, "each hostile chain completes at most once");
}

#[test]
fn avail_index_far_ahead_is_refused_not_looped() {
    let mut r = Rig::new("avail", 4096, false);
    r.mem.write_obj(1000u16, GuestAddress(r.q.avail() + 2)).expect("idx");
    assert_eq!(r.handler.drain(), 0);
    // The queue is broken (DEVICE_NEEDS_RESET) and not retried, even once
    // the index looks sane again, until the driver resets the device.
    assert!(r.handler.interrupt.is_broken());
    assert_ne!(r.handler.interrupt.status() & crate::virtio::VIRTIO_MMIO_INT_CONFIG, 0);
    r.mem.write_obj(0u16, GuestAddress(r.q.avail() + 2)).expect("idx");
    let h = r.header(0x8000, VIRTIO_BLK_T_FLUSH, 0);
    r.push(&[h, (0x8100, 1, F_WRITE)]);
    assert_eq!(r.handler.drain(), 0, "a broken queue is left alone");
    r.handler.interrupt.clear_broken();
    assert_eq!(r.handler.drain(), 1);
}

#[test]
fn discard_and_write_zeroes_clear_sectors() {
    let mut r = Rig::new("discard", 8192, false);
    r.handler.disk.write_at(&[9u8; 2048], 0).expect("fill");
    let seg = DiscardSegment {
        sector: 1,
        num_sectors: 2,
        flags: 0,
    };
    r.mem.write_obj(seg, GuestAddress(DATA)).expect("seg");
    let h = r.header(0x8000, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    r.push(&[h, (DATA, 16, 0), (0x8100, 1, F_WRITE)]);
    let bad = DiscardSegment {
        sector: 100,
        num_sectors: 1,
        flags: 0,
    };
    r.mem.write_obj(bad, GuestAddress(DATA + 64)).expect("seg");
    let h = r.header(0x8200, VIRTIO_BLK_T_DISCARD, 0);
    r.push(&[h, (DATA + 64, 16, 0), (0x8300, 1, F_WRITE)]);
    r.handler.drain();
    assert_eq!(r.status(0x8100), VIRTIO_BLK_S_OK);
    assert_eq!(r.status(0x8300), VIRTIO_BLK_S_IOERR);
    let mut b = vec![0u8; 2048];
    r.handler.disk.read_at(&mut b, 0).expect("read");
    assert!(
        b[..512].iter().all(|&x| x == 9) && b[512..1536].iter().all(|&x| x == 0) && b[1536..].iter().all(|&x| x == 9)
    );
}

#[test]
fn config_space_reports_capacity_in_sectors() {
    let path = std::env::temp_dir().join(format!("kvmkit-blk-cfg-{}", std::process::id()));
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(1 << 20))
        .expect("image");
    let dev = Block::new(DiskImage::open(&path, true).expect("disk"), "d0");
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 2048);
    assert_ne!(dev.features() & VIRTIO_BLK_F_RO, 0);
    assert_eq!(dev.features() & VIRTIO_BLK_F_DISCARD, 0);
    let _ = std::fs::remove_file(path);
}

/// Publishes a FLUSH request (header at `at`, status byte at `at + 0x20`).
fn push_flush(r: &mut Rig, at: u64) {
    let h = r.header(at, VIRTIO_BLK_T_FLUSH, 0);
    r.push(&[h, (at + 0x20, 1, F_WRITE)]);
}

fn used_flags(r: &Rig) -> u16 {
    r.mem
        .read_obj(GuestAddress(r.handler.queue.used_ring()))
        .expect("used flags")
}

fn avail_event(r: &Rig) -> u16 {
    let at = r.handler.queue.used_ring() + 4 + 8 * u64::from(QSIZE);
    r.mem.read_obj(GuestAddress(at)).expect("avail_event")
}

#[test]
fn polling_suppresses_notifications_until_the_window_ends_then_rearms() {
    let mut r = Rig::new("poll", 64 * 1024, false);
    r.handler.set_poll(PollMode::Fixed(10_000));
    push_flush(&mut r, 0x8000);
    assert!(r.handler.process_queue(0), "a busy round opens the window");
    assert_eq!(r.used_idx(), 1);
    assert_eq!(used_flags(&r), 1, "VIRTQ_USED_F_NO_NOTIFY while polling");
    push_flush(&mut r, 0x8100);
    assert!(r.handler.process_queue(0), "found by polling, still polling");
    assert_eq!(r.used_idx(), 2);
    assert_eq!(used_flags(&r), 1);

    // A window that has ended: the worker re-arms and sleeps.
    r.handler.set_poll(PollMode::Fixed(1));
    push_flush(&mut r, 0x8200);
    assert!(r.handler.process_queue(0));
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert!(
        !r.handler.process_queue(0),
        "an idle queue is not polled past its window"
    );
    assert_eq!(used_flags(&r), 0, "notifications re-armed before sleeping");
    assert_eq!(r.used_idx(), 3);
}

#[test]
fn without_polling_notifications_stay_on() {
    let mut r = Rig::new("nopoll", 64 * 1024, false);
    // A snapshot taken while polling leaves NO_NOTIFY in guest memory: the
    // restored worker clears it before it sleeps.
    let used = r.handler.queue.used_ring();
    r.mem.write_obj(1u16, GuestAddress(used)).expect("flags");
    push_flush(&mut r, 0x8000);
    assert!(!r.handler.process_queue(0));
    assert_eq!(r.used_idx(), 1);
    assert_eq!(used_flags(&r), 0);
}

#[test]
fn event_idx_sets_avail_event_before_sleeping() {
    let mut r = Rig::new("eventidx", 64 * 1024, false);
    r.handler.queue.set_event_idx(true);
    for k in 0..3 {
        push_flush(&mut r, 0x8000 + k * 0x100);
    }
    assert!(!r.handler.process_queue(0));
    assert_eq!(r.used_idx(), 3);
    assert_eq!(avail_event(&r), 3, "the driver kicks for the next request");
    assert_eq!(used_flags(&r), 0, "EVENT_IDX does not use the flags");
    // Polling with EVENT_IDX: avail_event is left behind (the driver does
    // not kick again) until the window ends.
    r.handler.set_poll(PollMode::Fixed(10_000));
    push_flush(&mut r, 0x8400);
    assert!(r.handler.process_queue(0));
    push_flush(&mut r, 0x8500);
    assert!(r.handler.process_queue(0));
    assert_eq!(r.used_idx(), 5);
    assert_eq!(avail_event(&r), 3, "no kick asked for while polling");
}

#[test]
fn interrupts_honour_used_event_and_no_interrupt() {
    let mut r = Rig::new("noint", 64 * 1024, false);
    let vring = crate::virtio::VIRTIO_MMIO_INT_VRING;
    // VIRTQ_AVAIL_F_NO_INTERRUPT: kvmkit's guest polls the used ring.
    r.mem.write_obj(1u16, GuestAddress(r.q.avail())).expect("flags");
    push_flush(&mut r, 0x8000);
    assert!(!r.handler.process_queue(0));
    assert_eq!(r.handler.interrupt.status() & vring, 0, "no interrupt asked for");
    r.mem.write_obj(0u16, GuestAddress(r.q.avail())).expect("flags");
    push_flush(&mut r, 0x8100);
    assert!(!r.handler.process_queue(0));
    assert_ne!(r.handler.interrupt.status() & vring, 0);
    r.handler.interrupt.ack(vring);
    // EVENT_IDX: used_event (after the avail ring) says when to interrupt.
    r.handler.queue.set_event_idx(true);
    let used_event = r.q.avail() + 4 + 2 * u64::from(QSIZE);
    r.mem.write_obj(5u16, GuestAddress(used_event)).expect("used_event");
    push_flush(&mut r, 0x8200);
    assert!(!r.handler.process_queue(0));
    assert_eq!(r.handler.interrupt.status() & vring, 0, "used_event 5 not reached");
    for k in 0..3 {
        push_flush(&mut r, 0x8300 + k * 0x100);
    }
    assert!(!r.handler.process_queue(0));
    assert_ne!(r.handler.interrupt.status() & vring, 0, "used_event 5 passed");
}
