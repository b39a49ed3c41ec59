//! What reading received frames from a tap costs per frame, apart from any
//! VM, on a thread under the device worker's seccomp filter, each frame
//! ending in a 2 KiB "guest" buffer (plain host memory here):
//!
//! * `read(2)`: one `read` per frame into a buffer, copied to the
//!   guest's (the NIC without an rx ring);
//! * `read(2) direct`: one `read` per frame straight into the guest's
//!   buffer (what a NIC without a ring could do);
//! * `ring+2 copies`: batches through [`kvmkit_vmm::net::rx_ring::RxRing`]
//!   into the ring's buffers, copied to a backlog, then to the guest's
//!   (the NIC's read-ahead, and all its reads before direct reads);
//! * `ring ahead`: batches of vectored reads straight into a backlog arena
//!   1536 bytes apart, each with its ring slot behind for longer frames,
//!   then copied to the guest's (tried for the read-ahead, not kept: the
//!   vectored read costs about what the copy saves);
//! * `ring direct`: batches of vectored reads straight into the guest's
//!   buffers, the ring slot behind (the NIC's direct reads into chains of
//!   several pieces or with mergeable rx buffers);
//! * `ring direct cut`: batches of plain reads straight into the guest's
//!   buffers (the NIC's direct reads into one-piece chains).
//!
//! The tap's queue is filled with UDP datagrams (64 B and 1500 B frames)
//! and drained; thread CPU time per frame, medians of interleaved rounds.
//! Needs root; run it in a scratch network namespace (it makes a tap and
//! routes to it):
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
/// The guest's rx buffers (2 KiB each), used round-robin.
const GUEST_BUFS: usize = 256;
/// The ways frames are read and delivered (see the top).
const MODES: [&str; 6] = [
    "read(2)",
    "ring+2 copies",
    "ring ahead",
    "ring direct",
    "ring direct cut",
    "read(2) direct",
];

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
    let (go_tx, go_rx) = mpsc::channel::<usize>();
    let (done_tx, done_rx) = mpsc::channel::<(u64, usize)>();
    let reader = std::thread::spawn(move || {
        seccompiler::apply_filter(default_program(Role::Worker)).expect("worker filter");
        let mut buf = vec![0u8; ROOM];
        let mut backlog = vec![0u8; 512 << 10];
        let mut guest = vec![0u8; GUEST_BUFS * 2048];
        while let Ok(mode) = go_rx.recv() {
            let t = thread_cpu_ns();
            let mut frames = 0;
            loop {
                let got = match mode {
                    0 => {
                        // SAFETY: reads at most ROOM bytes into `buf`.
                        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), ROOM) };
                        if n > 0 {
                            let at = frames % GUEST_BUFS * 2048;
                            guest[at..at + n as usize].copy_from_slice(&buf[..n as usize]);
                        }
                        usize::from(n > 0)
                    }
                    5 => {
                        let at = frames % GUEST_BUFS * 2048;
                        // SAFETY: reads at most 2048 bytes into the guest buffer at `at`.
                        let n = unsafe { libc::read(fd, guest[at..].as_mut_ptr().cast(), 2048) };
                        usize::from(n > 0)
                    }
                    1 => {
                        ring.read_batch(32).expect("ring");
                        let mut got = 0;
                        while let Some(r) = ring.next_result() {
                            if let Ok(f) = r {
                                let b = (frames + got) % 256 * 2048;
                                backlog[b..b + f.len()].copy_from_slice(f);
                                let at = (frames + got) % GUEST_BUFS * 2048;
                                guest[at..at + f.len()].copy_from_slice(&backlog[b..b + f.len()]);
                                got += 1;
                            }
                        }
                        got
                    }
                    _ => {
                        let into_guest = mode == 3 || mode == 4;
                        ring.begin_direct();
                        for i in 0..32 {
                            let p = if into_guest {
                                guest[(frames + i) % GUEST_BUFS * 2048..].as_mut_ptr()
                            } else {
                                backlog[i * 1536..].as_mut_ptr()
                            };
                            let len = if into_guest { 2048 } else { 1536 };
                            // SAFETY: the buffers outlive read_direct, untouched meanwhile.
                            unsafe {
                                if mode == 4 {
                                    ring.add_direct_cut(p, len)
                                } else {
                                    ring.add_direct([(p, len)])
                                }
                            };
                        }
                        ring.read_direct().expect("ring");
                        let mut got = 0;
                        while let Some(n) = ring.result(got).filter(|&r| r > 0) {
                            if !into_guest {
                                let (n, b) = (n as usize, got * 1536);
                                let at = (frames + got) % GUEST_BUFS * 2048;
                                guest[at..at + n].copy_from_slice(&backlog[b..b + n]);
                            }
                            got += 1;
                        }
                        got
                    }
                };
                frames += got;
                if got == 0 {
                    break;
                }
            }
            done_tx.send((thread_cpu_ns() - t, frames)).expect("send");
        }
    });
    let sock = UdpSocket::bind("10.99.0.1:0").expect("udp");
    let mut res: Vec<(usize, usize, Vec<f64>)> = Vec::new();
    for size in [64usize, 1500] {
        // Ethernet 14 + IP 20 + UDP 8 headers.
        let payload = vec![0x5au8; size - 42];
        for mode in 0..MODES.len() {
            res.push((size, mode, Vec::new()));
        }
        for r in 0..rounds {
            for k in 0..MODES.len() {
                // Each round in another order.
                let mode = (k + r) % MODES.len();
                for _ in 0..QUEUE {
                    let _ = sock.send_to(&payload, "10.99.0.2:9");
                }
                go_tx.send(mode).expect("go");
                let (ns, frames) = done_rx.recv().expect("done");
                if frames > QUEUE / 2 {
                    let e = res.iter_mut().find(|e| e.0 == size && e.1 == mode).expect("row");
                    e.2.push(ns as f64 / frames as f64);
                }
            }
        }
    }
    drop(go_tx);
    reader.join().expect("reader");
    println!("ns/frame, medians of {rounds} rounds of {QUEUE} frames; ratio to read(2) in ()");
    println!("frame | {}", MODES.join(" | "));
    for size in [64usize, 1500] {
        let mut m = [0f64; MODES.len()];
        for e in res.iter_mut().filter(|e| e.0 == size) {
            m[e.1] = median(&mut e.2);
        }
        let cells: Vec<String> = m.iter().map(|x| format!("{x:.0} ({:.3})", x / m[0])).collect();
        println!("{size:5} | {}", cells.join(" | "));
    }
}
