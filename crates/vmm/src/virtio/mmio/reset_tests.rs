//! A driver reset while the device's worker is stuck in host I/O: the vCPU
//! is not held, the device stays in reset (status not 0, writes ignored, no
//! snapshot) until the worker ends, then it is configured again as usual.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::test_util::{handshake, read, write};
use super::*;

/// A device whose worker blocks until the test releases it.
struct Stuck {
    release: Arc<Mutex<Receiver<()>>>,
    worker: Option<JoinHandle<()>>,
    activations: u32,
}

impl VirtioDevice for Stuck {
    fn device_type(&self) -> u32 {
        4
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
    fn activate(&mut self, _acked: u64, _a: Activation) -> Result<(), String> {
        self.activations += 1;
        let release = self.release.clone();
        self.worker = Some(std::thread::spawn(move || {
            let _ = release.lock().map(|r| r.recv());
        }));
        Ok(())
    }
    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
    fn reset_async(&mut self) -> Stopping {
        self.worker.take().map_or_else(Stopping::done, Stopping::of_thread)
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

fn transport(memory: &GuestMemoryMmap) -> (MmioTransport, Sender<()>) {
    let (tx, rx) = channel();
    let device = Stuck {
        release: Arc::new(Mutex::new(rx)),
        worker: None,
        activations: 0,
    };
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")));
    let events = vec![EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")];
    let t = MmioTransport::new(Box::new(device), memory.clone(), irq, events).expect("transport");
    (t, tx)
}

fn activations(t: &mut MmioTransport) -> u32 {
    t.device_mut()
        .as_any_mut()
        .downcast_mut::<Stuck>()
        .expect("the stuck device")
        .activations
}

#[test]
fn a_reset_does_not_wait_for_a_stuck_worker_and_completes_when_it_ends() {
    let memory: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory");
    let (mut t, release) = transport(&memory);
    handshake_at(&mut t);
    assert_eq!(read(&mut t, REG_STATUS), 0xf);
    assert_eq!(activations(&mut t), 1);

    // The reset returns although the worker cannot end.
    write(&mut t, REG_STATUS, 0);
    assert_eq!(read(&mut t, REG_STATUS), 0xf, "not reset until the worker ends");
    write(&mut t, REG_STATUS, status::ACKNOWLEDGE);
    assert_eq!(read(&mut t, REG_STATUS), 0xf, "writes are ignored meanwhile");
    let e = t.save_state().unwrap_err();
    assert!(e.contains("reset is still in progress"), "{e}");

    // The worker ends: the reset completes and the driver starts over.
    release.send(()).expect("release");
    let deadline = Instant::now() + Duration::from_secs(10);
    while read(&mut t, REG_STATUS) != 0 {
        assert!(Instant::now() < deadline, "the reset never completed");
    }
    assert_eq!(read(&mut t, REG_QUEUE_READY), 0, "queues reset");
    handshake_at(&mut t);
    assert_eq!(read(&mut t, REG_STATUS), 0xf);
    assert_eq!(activations(&mut t), 2);
    release.send(()).expect("release the second worker");
    t.shutdown();
}

fn handshake_at(t: &mut MmioTransport) {
    handshake(t, 0x1000, 0x2000, 0x3000);
}
