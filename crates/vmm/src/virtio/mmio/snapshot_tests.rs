//! A transport saved while its device runs and restored onto a fresh one:
//! the ring positions come from the worker, and the restored device goes
//! on from there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::test_util::{handshake, read, write};
use super::*;
use crate::memory::GuestMemoryMmap;
use crate::virtio::rng::Rng;

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const BUF: u64 = 0x8000;

fn transport(memory: &GuestMemoryMmap) -> MmioTransport {
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")));
    let events = vec![EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")];
    MmioTransport::new(Box::new(Rng::default()), memory.clone(), irq, events).expect("transport")
}

/// Publishes request number `n` (descriptor 0: 16 writable bytes) and notifies.
fn request(t: &mut MmioTransport, memory: &GuestMemoryMmap, n: u16) {
    memory.write_obj(BUF, GuestAddress(DESC)).expect("desc addr");
    memory.write_obj(16u32, GuestAddress(DESC + 8)).expect("desc len");
    memory
        .write_obj(2u16, GuestAddress(DESC + 12))
        .expect("desc flags: WRITE");
    memory
        .write_obj(0u16, GuestAddress(AVAIL + 4 + 2 * u64::from(n % 64)))
        .expect("ring");
    memory.write_obj(n + 1, GuestAddress(AVAIL + 2)).expect("avail idx");
    write(t, REG_QUEUE_NOTIFY, 0);
}

fn wait_used(memory: &GuestMemoryMmap, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while memory.read_obj::<u16>(GuestAddress(USED + 2)).expect("used idx") != want {
        assert!(Instant::now() < deadline, "used idx never reached {want}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_running_device_is_saved_from_its_worker_and_goes_on_after_restore() {
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory");
    let mut a = transport(&memory);
    handshake_at(&mut a);
    request(&mut a, &memory, 0);
    wait_used(&memory, 1);
    a.device_mut().pause().expect("pause");
    let saved = a.save_state().expect("save");
    assert_eq!(saved.status, 0xf);
    assert_eq!(saved.acked_features, crate::virtio::VIRTIO_F_VERSION_1);
    let q = saved.queues[0];
    assert_eq!(
        (q.size, q.ready, q.desc_table, q.avail_ring, q.used_ring),
        (64, true, DESC, AVAIL, USED)
    );
    assert_eq!((q.next_avail, q.next_used), (1, 1), "ring positions from the worker");
    let json = serde_json::to_string(&saved).expect("encode");
    let back: TransportState = serde_json::from_str(&json).expect("decode");
    assert_eq!(back, saved);
    a.shutdown();

    // A fresh device over the same memory picks up at request 2.
    let mut b = transport(&memory);
    b.restore_state(&back).expect("restore");
    assert_eq!(read(&mut b, REG_STATUS), 0xf);
    assert_eq!(read(&mut b, REG_QUEUE_READY), 1);
    request(&mut b, &memory, 1);
    wait_used(&memory, 2);
    b.device_mut().pause().expect("pause");
    let again = b.save_state().expect("save");
    assert_eq!((again.queues[0].next_avail, again.queues[0].next_used), (2, 2));
    b.shutdown();

    // What does not fit the device is refused, and nothing is activated.
    let refused = |f: &dyn Fn(&mut TransportState)| {
        let mut s = saved.clone();
        f(&mut s);
        let mut t = transport(&memory);
        let e = t.restore_state(&s).unwrap_err();
        assert_eq!(read(&mut t, REG_STATUS), 0, "{e}");
        e
    };
    assert!(refused(&|s| s.device_type = 2).contains("type"));
    assert!(refused(&|s| s.queues.clear()).contains("queues"));
    assert!(refused(&|s| s.queues[0].max_size = 128).contains("max size"));
    assert!(refused(&|s| s.acked_features |= 1 << 40).contains("never offered"));
    assert!(refused(&|s| s.device_features = 0).contains("offers"));
    assert!(refused(&|s| s.queues[0].size = 3).contains("queue 0"));
    assert!(refused(&|s| s.queues[0].used_ring = 1 << 40).contains("not valid"));
    // A broken device comes back broken and is not re-activated.
    let mut s = saved.clone();
    s.broken = true;
    let mut t = transport(&memory);
    t.restore_state(&s).expect("restore a broken device");
    assert_ne!(read(&mut t, REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert!(t.device().queue_states().expect("no worker").is_none());
}

fn handshake_at(t: &mut MmioTransport) {
    handshake(t, DESC, AVAIL, USED);
}
