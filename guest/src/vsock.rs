//! vsock workloads on the first virtio-vsock device: `vsock-echo:PORT[:CONNS]`
//! (listen, echo every byte of every connection, report each one),
//! `vsock-tx:PORT[:MIB]` (write MIB MiB of the pattern stream to host port
//! PORT in 64 KiB writes) and `vsock-rx:PORT[:MIB]` (read MIB MiB from host
//! port PORT, hashing it with `kvmkit_workloads::StreamHash`).

use kvmkit_guest_abi::{Report, ReportKind};
use kvmkit_workloads::StreamHash;

use crate::arch::rdtsc;
use crate::exit;
use crate::report;
use crate::smp::Plan;
use crate::tsc::{ticks_per_ms, ticks_to_ns};
use crate::virtio::probe;
use crate::virtio::vsock::{Mode, State, Vsock, ID_VSOCK, MAX_CONNS};

const MIB: u64 = 1 << 20;
/// Seconds without progress before a transfer or a connect counts as stuck.
const STALL_S: u64 = 5;

fn result(name: &str, arg: u64, value: u64, ticks: u64, khz: u64) -> Report {
    let mut r = Report::new(ReportKind::Result, 0);
    r.set_name(name);
    r.arg = arg;
    r.value = value;
    r.ticks = ticks;
    r.ns = ticks_to_ns(ticks, khz);
    r
}

/// `bytes` in `ns` as MiB/s times 1000.
fn mib_per_s_milli(bytes: u64, ns: u64) -> u64 {
    if ns == 0 {
        return 0;
    }
    (u128::from(bytes) * 1_000_000_000 * 1000 / u128::from(ns) / u128::from(MIB)) as u64
}

fn open(who: &str, plan: &Plan) -> Result<Vsock, u32> {
    let (found, n) = probe(&plan.devices, ID_VSOCK, who);
    if n == 0 {
        println!(
            "{who}: no virtio-vsock device found ({} virtio_mmio.device entries on the command line)",
            plan.devices.as_slice().len()
        );
        return Err(exit::DEVICE_ERROR);
    }
    let f = found[0];
    match Vsock::open(&f.dev, plan.mem_base, plan.tsc_khz) {
        Ok(v) => {
            println!("{who}: virtio-vsock cid={} mmio={:#x}", v.cid, f.dev.base);
            Ok(v)
        }
        Err(e) => {
            println!("{who}: mmio={:#x}: device setup failed: {e}", f.dev.base);
            Err(exit::DEVICE_ERROR)
        }
    }
}

/// Polls until `done` holds; `Err` (after printing why) when the device
/// fails or nothing happens for [`STALL_S`] seconds.
fn wait(
    who: &str,
    v: &mut Vsock,
    khz: u64,
    sink: &mut impl FnMut(usize, &[u8]),
    mut done: impl FnMut(&Vsock) -> bool,
) -> Result<(), u32> {
    let ms = ticks_per_ms(khz);
    let mut last = rdtsc();
    let mut next_check = last + 10 * ms;
    while !done(v) {
        match v.poll(sink) {
            Ok(true) => last = rdtsc(),
            Ok(false) => {
                let now = rdtsc();
                if now >= next_check {
                    if v.broken() {
                        println!("{who}: device needs a reset");
                        return Err(exit::DEVICE_ERROR);
                    }
                    if now - last > STALL_S * 1000 * ms {
                        return Err(exit::WORKLOAD_FAILED);
                    }
                    next_check = now + 10 * ms;
                }
                core::hint::spin_loop();
            }
            Err(e) => {
                println!("{who}: device error: {e}");
                return Err(exit::DEVICE_ERROR);
            }
        }
    }
    Ok(())
}

/// Connects to host port `port`; returns the connection and its set-up
/// time in ticks (REQUEST sent -> RESPONSE received). Data that comes in the
/// same batch as the RESPONSE goes to `sink` already.
fn connect(
    who: &str,
    v: &mut Vsock,
    port: u32,
    khz: u64,
    sink: &mut impl FnMut(usize, &[u8]),
) -> Result<(usize, u64), u32> {
    let c = v.connect(port, Mode::Sink).map_err(|e| {
        println!("{who}: {e}");
        exit::DEVICE_ERROR
    })?;
    if wait(who, v, khz, sink, |v| v.conn(c).state != State::Connecting).is_err() {
        println!("{who}: no answer to the connection request to host port {port} within {STALL_S} s");
        return Err(exit::WORKLOAD_FAILED);
    }
    let conn = *v.conn(c);
    if conn.state != State::Established {
        println!("{who}: connection to host port {port} refused (RST): nothing listens there on the host side");
        return Err(exit::WORKLOAD_FAILED);
    }
    Ok((c, conn.established - conn.opened))
}

/// Shuts `c` down and waits (at most [`STALL_S`] s) for the peer's RST;
/// resets it ourselves if none comes. Returns whether the peer closed it.
fn close(who: &str, v: &mut Vsock, c: usize, khz: u64) -> bool {
    v.shutdown_conn(c);
    let peer = wait(who, v, khz, &mut |_, _| {}, |v| v.conn(c).state == State::Closed).is_ok();
    if !peer {
        v.close(c);
        let _ = v.poll(&mut |_, _| {});
    }
    peer
}

/// Prints the driver's error counters when any is non-zero.
fn counters(who: &str, v: &Vsock) {
    if v.device_errors + v.bad_packets + v.rst_dropped + v.resets != 0 {
        println!(
            "{who}: device_errors={} bad_packets={} rst_dropped={} transport_resets={}",
            v.device_errors, v.bad_packets, v.rst_dropped, v.resets
        );
    }
}

/// A closed echo connection, waiting to be printed.
#[derive(Clone, Copy, Default)]
struct Served {
    n: u64,
    peer_port: u32,
    rx: u64,
    tx: u64,
    ns: u64,
    by_host: bool,
    violation: bool,
}

/// Closed connections kept before their lines must be printed.
const SERVED_LINES: usize = 32;

/// Prints the lines of `done` (console output exits to the VMM for every
/// byte: slow, so it waits until nobody is connected and the guest is idle).
fn print_served(port: u32, done: &[Served]) {
    for d in done {
        println!(
            "vsock-echo: conn={} port={port} peer_port={} bytes={} echoed={} time_ns={} closed_by={}{}",
            d.n,
            d.peer_port,
            d.rx,
            d.tx,
            d.ns,
            if d.by_host { "host" } else { "guest" },
            if d.violation { " violation=yes" } else { "" }
        );
    }
}

/// `vsock-echo:PORT[:CONNS]`: serves connections to PORT, echoing every byte,
/// until CONNS have closed (forever when 0). One report per connection at
/// once, and one console line, printed when the guest is idle (no
/// connection open, 100 ms without traffic), the backlog is full, or at the end.
pub fn echo(plan: &Plan, port: u32, conns: u64) -> u32 {
    const WHO: &str = "vsock-echo";
    let khz = plan.tsc_khz;
    let mut v = match open(WHO, plan) {
        Ok(v) => v,
        Err(status) => return status,
    };
    v.listen(port);
    println!("{WHO}: listening on port {port}, up to {MAX_CONNS} connections at once");
    let ms = ticks_per_ms(khz);
    let mut served = 0u64;
    let mut lines = [Served::default(); SERVED_LINES];
    let mut nlines = 0;
    let mut last = rdtsc();
    let mut next_check = last + 100 * ms;
    let mut status = exit::OK;
    while conns == 0 || served < conns {
        match v.poll(&mut |_, _| {}) {
            Ok(true) => last = rdtsc(),
            Ok(false) => {}
            Err(e) => {
                println!("{WHO}: device error: {e}");
                status = exit::DEVICE_ERROR;
                break;
            }
        }
        let mut open = false;
        for c in 0..MAX_CONNS {
            let conn = *v.conn(c);
            match conn.state {
                State::Closed => {}
                State::Free => continue,
                _ => {
                    open = true;
                    continue;
                }
            }
            v.release(c);
            served += 1;
            let ticks = rdtsc() - conn.opened;
            report::send(&result(WHO, u64::from(port), conn.tx_bytes, ticks, khz));
            if conn.violation {
                status = exit::WORKLOAD_FAILED;
            }
            if nlines == SERVED_LINES {
                print_served(port, &lines[..nlines]);
                nlines = 0;
            }
            lines[nlines] = Served {
                n: served,
                peer_port: conn.peer_port,
                rx: conn.rx_bytes,
                tx: conn.tx_bytes,
                ns: ticks_to_ns(ticks, khz),
                by_host: conn.reset_by_peer,
                violation: conn.violation,
            };
            nlines += 1;
        }
        let now = rdtsc();
        if now >= next_check {
            if v.broken() {
                println!("{WHO}: device needs a reset");
                status = exit::DEVICE_ERROR;
                break;
            }
            if !open && nlines > 0 && now - last >= 100 * ms {
                print_served(port, &lines[..nlines]);
                nlines = 0;
            }
            next_check = now + 10 * ms;
        }
    }
    print_served(port, &lines[..nlines]);
    counters(WHO, &v);
    println!("{WHO}: served={served} port={port}");
    v.shutdown();
    status
}

/// `vsock-tx:PORT[:MIB]`: connects to host port PORT, writes MIB MiB of the
/// pattern stream in 64 KiB writes, shuts down; reports MiB/s and the set-up time.
pub fn tx(plan: &Plan, port: u32, mib: u64) -> u32 {
    const WHO: &str = "vsock-tx";
    let khz = plan.tsc_khz;
    let mut v = match open(WHO, plan) {
        Ok(v) => v,
        Err(status) => return status,
    };
    let (c, connect_ticks) = match connect(WHO, &mut v, port, khz, &mut |_, _| {}) {
        Ok(x) => x,
        Err(status) => {
            v.shutdown();
            return status;
        }
    };
    let total = mib.saturating_mul(MIB);
    let ms = ticks_per_ms(khz);
    let mut sent = 0u64;
    let t0 = rdtsc();
    let mut last = t0;
    // 64 KiB writes: a packet never crosses a PATTERN_PERIOD boundary. Queue
    // what credit and descriptors allow, poll (kick, credit updates), repeat.
    while sent < total && v.conn(c).state == State::Established {
        let mut queued = false;
        while sent < total {
            let n = v.send_pattern(c, sent, total - sent);
            if n == 0 {
                break;
            }
            sent += n;
            queued = true;
        }
        match v.poll(&mut |_, _| {}) {
            Ok(progress) if progress || queued => last = rdtsc(),
            Ok(_) if rdtsc() - last > STALL_S * 1000 * ms => {
                println!("{WHO}: no credit or tx progress for {STALL_S} s after {sent} bytes");
                break;
            }
            Ok(_) => core::hint::spin_loop(),
            Err(e) => {
                println!("{WHO}: device error: {e}");
                break;
            }
        }
    }
    let drained = wait(WHO, &mut v, khz, &mut |_, _| {}, |v| !v.tx_in_flight());
    let t1 = rdtsc();
    let state = v.conn(c).state;
    let peer_closed = if state == State::Established {
        close(WHO, &mut v, c, khz)
    } else {
        false
    };
    let t2 = rdtsc();
    let credit_requests = v.conn(c).credit_requests;
    counters(WHO, &v);
    v.shutdown();
    let ns = ticks_to_ns(t1 - t0, khz);
    let rate = mib_per_s_milli(sent, ns);
    let connect_ns = ticks_to_ns(connect_ticks, khz);
    println!(
        "{WHO}: port={port} bytes={sent} time_ns={ns} MiBps={}.{:03} connect_us={}.{:03} close_ns={} peer_closed={} \
         credit_requests={credit_requests}",
        rate / 1000,
        rate % 1000,
        connect_ns / 1000,
        connect_ns % 1000,
        ticks_to_ns(t2 - t1, khz),
        if peer_closed { "yes" } else { "no" }
    );
    report::send(&result(WHO, mib, sent, t1 - t0, khz));
    report::send(&result(
        "vsock-connect",
        u64::from(port),
        connect_ns,
        connect_ticks,
        khz,
    ));
    if sent < total || state != State::Established || drained.is_err() {
        println!("{WHO}: FAILED: wrote {sent} of {total} bytes (connection {state:?})");
        return exit::WORKLOAD_FAILED;
    }
    exit::OK
}

/// `vsock-rx:PORT[:MIB]`: connects to host port PORT and reads MIB MiB;
/// reports MiB/s and the stream hash.
pub fn rx(plan: &Plan, port: u32, mib: u64) -> u32 {
    const WHO: &str = "vsock-rx";
    let khz = plan.tsc_khz;
    let mut v = match open(WHO, plan) {
        Ok(v) => v,
        Err(status) => return status,
    };
    let mut hash = StreamHash::new();
    let (c, connect_ticks) = match connect(WHO, &mut v, port, khz, &mut |_, data| hash.update(data)) {
        Ok(x) => x,
        Err(status) => {
            v.shutdown();
            return status;
        }
    };
    let total = mib.saturating_mul(MIB);
    let got = wait(WHO, &mut v, khz, &mut |_, data| hash.update(data), |v| {
        let conn = v.conn(c);
        conn.rx_bytes >= total || conn.state != State::Established
    });
    let conn = *v.conn(c);
    let peer_closed = conn.state == State::Closed || close(WHO, &mut v, c, khz);
    counters(WHO, &v);
    v.shutdown();
    let ticks = conn.last_rx.saturating_sub(conn.established);
    let ns = ticks_to_ns(ticks, khz);
    let rate = mib_per_s_milli(conn.rx_bytes, ns);
    let connect_ns = ticks_to_ns(connect_ticks, khz);
    let digest = hash.finish();
    println!(
        "{WHO}: port={port} bytes={} time_ns={ns} MiBps={}.{:03} fnv64w={digest:#018x} connect_us={}.{:03} peer_closed={} \
         packets={}",
        conn.rx_bytes,
        rate / 1000,
        rate % 1000,
        connect_ns / 1000,
        connect_ns % 1000,
        if peer_closed { "yes" } else { "no" },
        conn.rx_packets
    );
    report::send(&result(WHO, mib, conn.rx_bytes, ticks, khz));
    report::send(&result("vsock-rx-hash", mib, digest, ticks, khz));
    report::send(&result(
        "vsock-connect",
        u64::from(port),
        connect_ns,
        connect_ticks,
        khz,
    ));
    if got.is_err() || conn.rx_bytes < total {
        println!("{WHO}: FAILED: read {} of {total} bytes", conn.rx_bytes);
        return exit::WORKLOAD_FAILED;
    }
    exit::OK
}
