//! What reading received frames from a tap costs per frame, apart from any
//! VM: one `read` per frame (the NIC without an rx ring) against batches
//! through [`kvmkit_vmm::net::rx_ring::RxRing`] (frames copied out of the
//! ring's buffers, as the NIC does), both on a thread under the device
//! worker's seccomp filter. The tap's queue is filled with UDP datagrams
//! (64 B and 1500 B frames) and drained; thread CPU time per frame,
//! medians of interleaved rounds. Needs root; run it in a scratch network
//! namespace (it makes a tap and routes to it):
//!
//!     unshare -n cargo run --release -p kvmkit-vmm --example rx_ring_cost [ROUNDS]

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::mpsc;

use kvmkit_vmm::net::rx_ring::RxRing;
use kvmkit_vmm::net::Tap;
use kvmkit_vmm::seccomp::{default_program, Role};

/// Frames queued per drain (the tap's txqueuelen).
const QUEUE: usize = 1000;
/// Room per read, as the NIC gives it.
const ROOM: usize = 65626;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn sh(args: &[&str]) {
    let ok = Command::new(args[0]).args(&args[1..]).status().map(|s| s.success());
    assert!(matches!(ok, Ok(true)), "{args:?} failed");
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(15);
    let tap = Tap::open("rxcost%d").expect("tap (root, in a scratch netns)");
    let name = tap.name().to_string();
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&["ip", "addr", "add", "10.99.0.1/24", "dev", &name]);
    sh(&["ip", "link", "set", &name, "txqueuelen", &QUEUE.to_string(), "up"]);
    sh(&[
        "ip",
        "neigh",
        "add",
        "10.99.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        &name,
    ]);
    let fd = tap.as_raw_fd();
    let mut ring = RxRing::new(fd, ROOM).expect("io_uring");
    let (go_tx, go_rx) = mpsc::channel::<bool>();
    let (done_tx, done_rx) = mpsc::channel::<(u64, usize)>();
    let reader = std::thread::spawn(move || {
        seccompiler::apply_filter(default_program(Role::Worker)).expect("worker filter");
        let mut buf = vec![0u8; ROOM];
        let mut backlog = vec![0u8; ROOM];
        while let Ok(use_ring) = go_rx.recv() {
            let t = thread_cpu_ns();
            let mut frames = 0;
            if use_ring {
                'drain: loop {
                    ring.read_batch(32).expect("ring");
                    let mut got = 0;
                    while let Some(r) = ring.next_result() {
                        if let Ok(f) = r {
                            backlog[..f.len()].copy_from_slice(f);
                            got += 1;
                        }
                    }
                    frames += got;
                    if got == 0 {
                        break 'drain;
                    }
                }
            } else {
                // SAFETY: reads at most ROOM bytes into `buf`.
                while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), ROOM) } > 0 {
                    frames += 1;
                }
            }
            done_tx.send((thread_cpu_ns() - t, frames)).expect("send");
        }
    });
    let sock = UdpSocket::bind("10.99.0.1:0").expect("udp");
    let mut res: Vec<(usize, bool, Vec<f64>)> = Vec::new();
    for size in [64usize, 1500] {
        // Ethernet 14 + IP 20 + UDP 8 headers.
        let payload = vec![0x5au8; size - 42];
        for use_ring in [false, true] {
            res.push((size, use_ring, Vec::new()));
        }
        for r in 0..rounds {
            for use_ring in if r % 2 == 0 { [false, true] } else { [true, false] } {
                for _ in 0..QUEUE {
                    let _ = sock.send_to(&payload, "10.99.0.2:9");
                }
                go_tx.send(use_ring).expect("go");
                let (ns, frames) = done_rx.recv().expect("done");
                if frames > QUEUE / 2 {
                    let e = res.iter_mut().find(|e| e.0 == size && e.1 == use_ring).expect("row");
                    e.2.push(ns as f64 / frames as f64);
                }
            }
        }
    }
    drop(go_tx);
    reader.join().expect("reader");
    println!("frame | read(2) ns/frame | rx ring ns/frame | ring/read (medians of {rounds}, {QUEUE} frames each)");
    for size in [64usize, 1500] {
        let mut m = [0f64; 2];
        for e in res.iter_mut().filter(|e| e.0 == size) {
            m[usize::from(e.1)] = median(&mut e.2);
        }
        println!("{size:5} | {:16.0} | {:16.0} | {:.3}", m[0], m[1], m[1] / m[0]);
    }
}
