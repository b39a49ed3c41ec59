//! Networking workloads on virtio-net: `net-echo:SECONDS` (answers ARP and
//! ICMP echo for the guest's address) and `net-tx:FRAMES:SIZE` (sends UDP
//! frames to the host side and times them). Addresses come from the
//! `kvmkit.net=MAC,GUEST-IP,HOST-IP,PREFIX` words of the command line,
//! matched to NICs by MAC (else by order).

use core::cell::UnsafeCell;

use kvmkit_guest_abi::{net_params, NetParams, Report, ReportKind};

use crate::arch::rdtsc;
use crate::exit;
use crate::report;
use crate::smp::Plan;
use crate::tsc::{ticks_per_ms, ticks_to_ns};
use crate::virtio::net::{Net, ID_NET, MAX_FRAME, MAX_NICS};
use crate::virtio::{probe, DeviceList};

const ETH_ARP: u16 = 0x0806;
const ETH_IPV4: u16 = 0x0800;
const IP_ICMP: u8 = 1;
const IP_UDP: u8 = 17;
/// Smallest frame `net-tx` sends: Ethernet, IPv4 and UDP headers.
pub const MIN_TX_FRAME: u64 = 42;
/// UDP ports of `net-tx` frames (to the discard port).
const UDP_SRC: u16 = 40000;
const UDP_DST: u16 = 9;

struct ParamCell(UnsafeCell<([Option<NetParams>; MAX_NICS], usize)>);

// SAFETY: written once by the BSP while parsing the command line, before any
// other CPU runs; only read afterwards.
unsafe impl Sync for ParamCell {}

static PARAMS: ParamCell = ParamCell(UnsafeCell::new(([None; MAX_NICS], 0)));

/// Keeps the `kvmkit.net=` entries of `cmdline` (called once by the BSP while parsing it).
pub fn remember_cmdline(cmdline: &str) {
    // SAFETY: see ParamCell: single writer, before any reader.
    let cell = unsafe { &mut *PARAMS.0.get() };
    for p in net_params(cmdline) {
        if cell.1 < MAX_NICS {
            cell.0[cell.1] = Some(p);
            cell.1 += 1;
        }
    }
}

/// The `kvmkit.net=` entry for NIC `k` with MAC `mac`.
fn params_for(k: usize, mac: &[u8; 6]) -> Option<NetParams> {
    // SAFETY: see ParamCell: only read once written.
    let cell = unsafe { &*PARAMS.0.get() };
    let list = &cell.0[..cell.1];
    list.iter()
        .flatten()
        .find(|p| p.mac == *mac)
        .or_else(|| list.get(k).and_then(|p| p.as_ref()))
        .copied()
}

struct Mac<'a>(&'a [u8; 6]);

impl core::fmt::Display for Mac<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

struct Ip([u8; 4]);

impl core::fmt::Display for Ip {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}.{}.{}", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What [`answer`] made of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An ARP reply for our address, `len` bytes in `out`.
    Arp(usize),
    /// An ICMP echo reply, `len` bytes in `out`.
    Icmp(usize),
    /// Nothing to answer.
    None,
}

/// Builds the reply to `frame` (ARP request for `ip`, or ICMP echo request
/// to `ip`) into `out`.
pub fn answer(frame: &[u8], mac: &[u8; 6], ip: [u8; 4], out: &mut [u8]) -> Answer {
    if frame.len() < 14 || out.len() < frame.len().max(42) {
        return Answer::None;
    }
    match be16(frame, 12) {
        ETH_ARP if frame.len() >= 42 => {
            let a = &frame[14..];
            let is_request = be16(a, 0) == 1 && be16(a, 2) == ETH_IPV4 && a[4] == 6 && a[5] == 4 && be16(a, 6) == 1;
            if !is_request || a[24..28] != ip {
                return Answer::None;
            }
            out[0..6].copy_from_slice(&a[8..14]);
            out[6..12].copy_from_slice(mac);
            put16(out, 12, ETH_ARP);
            let r = &mut out[14..42];
            r[0..6].copy_from_slice(&a[0..6]);
            put16(r, 6, 2);
            r[8..14].copy_from_slice(mac);
            r[14..18].copy_from_slice(&ip);
            r[18..28].copy_from_slice(&a[8..18]);
            Answer::Arp(42)
        }
        ETH_IPV4 => {
            let p = &frame[14..];
            if p.len() < 20 || p[0] >> 4 != 4 {
                return Answer::None;
            }
            let ihl = usize::from(p[0] & 0xf) * 4;
            let total = usize::from(be16(p, 2));
            let fragmented = be16(p, 6) & 0x3fff != 0;
            if ihl < 20 || total < ihl + 8 || total > p.len() || p[9] != IP_ICMP || p[16..20] != ip || fragmented {
                return Answer::None;
            }
            if p[ihl] != 8 || checksum(&p[..ihl]) != 0 {
                return Answer::None;
            }
            let len = 14 + total;
            out[..len].copy_from_slice(&frame[..len]);
            out[0..6].copy_from_slice(&frame[6..12]);
            out[6..12].copy_from_slice(mac);
            let q = &mut out[14..len];
            let (src, dst) = (p[12..16].try_into().unwrap_or([0; 4]), ip);
            q[12..16].copy_from_slice(&dst);
            q[16..20].copy_from_slice(&src);
            q[8] = 64;
            put16(q, 10, 0);
            let c = checksum(&q[..ihl]);
            put16(q, 10, c);
            q[ihl] = 0;
            put16(q, ihl + 2, 0);
            let c = checksum(&q[ihl..total]);
            put16(q, ihl + 2, c);
            Answer::Icmp(len)
        }
        _ => Answer::None,
    }
}

/// An ARP request from `mac`/`ip` for `target`, into `out` (42 bytes).
fn arp_request(mac: &[u8; 6], ip: [u8; 4], target: [u8; 4], out: &mut [u8]) -> usize {
    out[0..6].copy_from_slice(&[0xff; 6]);
    out[6..12].copy_from_slice(mac);
    put16(out, 12, ETH_ARP);
    let r = &mut out[14..42];
    put16(r, 0, 1);
    put16(r, 2, ETH_IPV4);
    r[4] = 6;
    r[5] = 4;
    put16(r, 6, 1);
    r[8..14].copy_from_slice(mac);
    r[14..18].copy_from_slice(&ip);
    r[18..24].copy_from_slice(&[0; 6]);
    r[24..28].copy_from_slice(&target);
    42
}

/// The sender MAC of an ARP reply from `ip` in `frame`.
fn arp_reply_from(frame: &[u8], ip: [u8; 4]) -> Option<[u8; 6]> {
    if frame.len() < 42 || be16(frame, 12) != ETH_ARP || be16(frame, 20) != 2 || frame[28..32] != ip {
        return None;
    }
    frame[22..28].try_into().ok()
}

/// A UDP frame of `size` bytes from (`mac`, `src`) to (`dst_mac`, `dst`) in `out`.
pub fn udp_frame(size: usize, mac: &[u8; 6], src: [u8; 4], dst_mac: &[u8; 6], dst: [u8; 4], out: &mut [u8]) {
    out[0..6].copy_from_slice(dst_mac);
    out[6..12].copy_from_slice(mac);
    put16(out, 12, ETH_IPV4);
    let ip = &mut out[14..size];
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip, 2, (size - 14) as u16);
    put16(ip, 4, 0);
    put16(ip, 6, 0x4000);
    ip[8] = 64;
    ip[9] = IP_UDP;
    put16(ip, 10, 0);
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = checksum(&ip[..20]);
    put16(ip, 10, c);
    put16(ip, 20, UDP_SRC);
    put16(ip, 22, UDP_DST);
    put16(ip, 24, (size - 34) as u16);
    put16(ip, 26, 0);
    for (i, b) in ip[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
}

struct Nic {
    net: Net,
    ip: [u8; 4],
    host: [u8; 4],
}

/// Opens every virtio-net device (at most [`MAX_NICS`]) and prints a line per NIC.
/// Says which NIC's device needs a reset, if any (checked every 100 ms).
fn broken_nic(who: &str, nics: &[Option<Nic>]) -> bool {
    match nics.iter().flatten().find(|n| n.net.broken()) {
        Some(n) => {
            println!("{who}: device at {:#x} needs a reset", n.net.base());
            true
        }
        None => false,
    }
}

fn open_all(who: &str, plan: &Plan, nics: &mut [Option<Nic>; MAX_NICS]) -> usize {
    let (found, n) = probe(&plan.devices, ID_NET, who);
    let mut opened = 0;
    for (k, f) in found[..n.min(MAX_NICS)].iter().enumerate() {
        let net = match Net::open(&f.dev, k, plan.mem_base, plan.tsc_khz) {
            Ok(net) => net,
            Err(e) => {
                println!("{who}: dev={k} mmio={:#x}: device setup failed: {e}", f.dev.base);
                continue;
            }
        };
        let p = params_for(k, &net.mac);
        let ip = p.map_or([0; 4], |p| p.guest_ip);
        let host = p.map_or([0; 4], |p| p.host_ip);
        println!(
            "{who}: guest {} mac {} host {} dev={k} mmio={:#x}",
            Ip(ip),
            Mac(&net.mac),
            Ip(host),
            net.base()
        );
        nics[k] = Some(Nic { net, ip, host });
        opened += 1;
    }
    opened
}

fn no_device(who: &str, list: &DeviceList) -> u32 {
    println!(
        "{who}: no virtio-net device found ({} virtio_mmio.device entries on the command line)",
        list.as_slice().len()
    );
    exit::DEVICE_ERROR
}

fn result(name: &str, arg: u64, value: u64, ticks: u64, khz: u64) -> Report {
    let mut r = Report::new(ReportKind::Result, 0);
    r.set_name(name);
    r.arg = arg;
    r.value = value;
    r.ticks = ticks;
    r.ns = ticks_to_ns(ticks, khz);
    r
}

/// `net-echo:SECONDS`: answers ARP and ICMP echo on every NIC for SECONDS.
pub fn echo(plan: &Plan, seconds: u64) -> u32 {
    const WHO: &str = "net-echo";
    let mut nics: [Option<Nic>; MAX_NICS] = [const { None }; MAX_NICS];
    if open_all(WHO, plan, &mut nics) == 0 {
        return no_device(WHO, &plan.devices);
    }
    if nics.iter().flatten().all(|n| n.ip == [0; 4]) {
        println!("{WHO}: no guest address given (kvmkit.net=MAC,GUEST-IP,HOST-IP); ARP and ICMP stay unanswered");
    }
    let khz = ticks_per_ms(plan.tsc_khz);
    let t0 = rdtsc();
    let deadline = t0 + seconds.saturating_mul(1000).saturating_mul(khz);
    let (mut frames, mut arp, mut icmp, mut other, mut tx_full) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut frame = [0u8; MAX_FRAME];
    let mut reply = [0u8; MAX_FRAME];
    let mut next_check = t0;
    let mut status = exit::OK;
    'outer: loop {
        let now = rdtsc();
        if now >= deadline {
            break;
        }
        if now >= next_check {
            next_check = now + 100 * khz;
            if broken_nic(WHO, &nics) {
                status = exit::DEVICE_ERROR;
                break 'outer;
            }
        }
        for n in nics.iter_mut().flatten() {
            n.net.reclaim();
            while let Some(len) = n.net.recv(&mut frame) {
                frames += 1;
                let mac = n.net.mac;
                match answer(&frame[..len], &mac, n.ip, &mut reply) {
                    Answer::Arp(l) | Answer::Icmp(l) => {
                        if !n.net.send(&reply[..l]) {
                            tx_full += 1;
                        } else if l == 42 && frame[12] == 0x08 && frame[13] == 0x06 {
                            arp += 1;
                        } else {
                            icmp += 1;
                        }
                    }
                    Answer::None => other += 1,
                }
            }
        }
        core::hint::spin_loop();
    }
    let ticks = rdtsc() - t0;
    for n in nics.iter().flatten() {
        n.net.shutdown();
    }
    println!(
        "{WHO}: seconds={seconds} frames={frames} arp_replies={arp} icmp_replies={icmp} ignored={other} \
         tx_full={tx_full}"
    );
    report::send(&result(WHO, seconds, icmp, ticks, plan.tsc_khz));
    status
}

/// Resolves `host`'s MAC with ARP on `n` (answering ARP for us meanwhile).
fn resolve(n: &mut Nic, khz: u64) -> Option<[u8; 6]> {
    let mut frame = [0u8; MAX_FRAME];
    let mut reply = [0u8; MAX_FRAME];
    let mac = n.net.mac;
    for _ in 0..5 {
        let l = arp_request(&mac, n.ip, n.host, &mut reply);
        n.net.send(&reply[..l]);
        let until = rdtsc() + 300 * khz;
        while rdtsc() < until {
            n.net.reclaim();
            while let Some(len) = n.net.recv(&mut frame) {
                if let Some(m) = arp_reply_from(&frame[..len], n.host) {
                    return Some(m);
                }
                if let Answer::Arp(l) = answer(&frame[..len], &mac, n.ip, &mut reply) {
                    n.net.send(&reply[..l]);
                }
            }
            core::hint::spin_loop();
        }
    }
    None
}

/// `net-tx:FRAMES:SIZE`: sends FRAMES UDP frames of SIZE bytes to the host side of the first NIC.
pub fn tx(plan: &Plan, frames: u64, size: u64) -> u32 {
    const WHO: &str = "net-tx";
    if !(MIN_TX_FRAME..=MAX_FRAME as u64).contains(&size) {
        println!("{WHO}: frame size {size} out of range ({MIN_TX_FRAME}..={MAX_FRAME} bytes)");
        return exit::BAD_CMDLINE;
    }
    let mut nics: [Option<Nic>; MAX_NICS] = [const { None }; MAX_NICS];
    if open_all(WHO, plan, &mut nics) == 0 {
        return no_device(WHO, &plan.devices);
    }
    let Some(n) = nics.iter_mut().flatten().next() else {
        return exit::DEVICE_ERROR;
    };
    let khz = ticks_per_ms(plan.tsc_khz);
    let (dst_mac, dst) = if n.host == [0; 4] || n.ip == [0; 4] {
        println!("{WHO}: no host address known; sending to the broadcast address");
        ([0xff; 6], [255; 4])
    } else {
        match resolve(n, khz) {
            Some(m) => (m, n.host),
            None => {
                println!(
                    "{WHO}: host {} did not answer ARP; sending to the broadcast MAC",
                    Ip(n.host)
                );
                ([0xff; 6], n.host)
            }
        }
    };
    let size = size as usize;
    let mac = n.net.mac;
    let ip = n.ip;
    // Every tx buffer carries the same frame; sending is queueing only.
    let slots = n.net.tx_slots();
    let mut ready = [0u16; 128];
    let mut nready = 0;
    n.net.reclaim();
    while let Some(s) = n.net.tx_slot() {
        udp_frame(size, &mac, ip, &dst_mac, dst, n.net.tx_frame(s));
        ready[nready] = s;
        nready += 1;
        if nready == usize::from(slots).min(128) {
            break;
        }
    }
    // Give the slots back: they are prefilled and reused as they free up.
    let mut frame = [0u8; MAX_FRAME];
    let mut reply = [0u8; MAX_FRAME];
    let done0 = n.net.tx_done;
    let t0 = rdtsc();
    let mut sent = 0u64;
    let mut last_progress = t0;
    let mut last_done = 0;
    let mut status = exit::OK;
    let mut arp_sent = 0u64;
    // The device's status is read (an exit) at most every 100 ms, as in `rx`:
    // read on every turn without progress, it cost an exit per few frames.
    let mut next_check = t0;
    loop {
        let mut pushed = false;
        while sent < frames && nready > 0 {
            nready -= 1;
            n.net.tx_push(ready[nready], size);
            sent += 1;
            pushed = true;
        }
        if pushed {
            n.net.tx_kick();
        }
        // Reclaim into `ready` (the buffers still hold the frame).
        while let Some(s) = n.net.tx_slot() {
            ready[nready] = s;
            nready += 1;
        }
        let done = n.net.tx_done - done0 - arp_sent.min(n.net.tx_done - done0);
        if done >= frames {
            break;
        }
        // Keep rx flowing (ICMP errors, ARP from the host) and answer ARP.
        while let Some(len) = n.net.recv(&mut frame) {
            if let Answer::Arp(l) = answer(&frame[..len], &mac, ip, &mut reply) {
                // Borrow a ready slot for the reply; it is refilled afterwards.
                if nready > 0 {
                    let s = ready[nready - 1];
                    n.net.tx_frame(s)[..l].copy_from_slice(&reply[..l]);
                    n.net.tx_push(s, l);
                    n.net.tx_kick();
                    nready -= 1;
                    arp_sent += 1;
                    // Wait for it, then restore the UDP frame in that slot.
                    let until = rdtsc() + 1000 * khz;
                    let mut back = None;
                    while back.is_none() && rdtsc() < until {
                        back = n.net.tx_slot();
                    }
                    if let Some(b) = back {
                        udp_frame(size, &mac, ip, &dst_mac, dst, n.net.tx_frame(b));
                        ready[nready] = b;
                        nready += 1;
                    }
                }
            }
        }
        let now = rdtsc();
        if done != last_done {
            last_done = done;
            last_progress = now;
        } else if now - last_progress > 5000 * khz || (now >= next_check && n.net.broken()) {
            println!("{WHO}: device stopped taking frames after {done} of {frames}");
            status = exit::DEVICE_ERROR;
            break;
        }
        if now >= next_check {
            next_check = now + 100 * khz;
        }
        core::hint::spin_loop();
    }
    let ticks = rdtsc() - t0;
    let done = (n.net.tx_done - done0).saturating_sub(arp_sent).min(frames);
    for m in nics.iter().flatten() {
        m.net.shutdown();
    }
    let ns = ticks_to_ns(ticks, plan.tsc_khz).max(1);
    let fps = u128::from(done) * 1_000_000_000 / u128::from(ns);
    let kbit = u128::from(done) * size as u128 * 8 * 1_000_000 / u128::from(ns);
    println!(
        "{WHO}: frames={done} size={size} time_ns={ns} frames_per_s={fps} mbit_per_s={}.{:03} dst={} arp_replies={arp_sent}",
        kbit / 1000,
        kbit % 1000,
        Ip(dst)
    );
    report::send(&result(WHO, size as u64, done, ticks, plan.tsc_khz));
    status
}

/// `net-rx:SECONDS`: counts the frames and bytes received on every NIC for
/// SECONDS, answering ARP for the guest's address (so a host-side sender can
/// resolve it) and ICMP echo. Reports frames (arg = seconds).
pub fn rx(plan: &Plan, seconds: u64) -> u32 {
    const WHO: &str = "net-rx";
    let mut nics: [Option<Nic>; MAX_NICS] = [const { None }; MAX_NICS];
    if open_all(WHO, plan, &mut nics) == 0 {
        return no_device(WHO, &plan.devices);
    }
    if nics.iter().flatten().all(|n| n.ip == [0; 4]) {
        println!("{WHO}: no guest address given (kvmkit.net=MAC,GUEST-IP,HOST-IP); ARP stays unanswered");
    }
    let khz = ticks_per_ms(plan.tsc_khz);
    let t0 = rdtsc();
    let deadline = t0 + seconds.saturating_mul(1000).saturating_mul(khz);
    let (mut frames, mut bytes, mut replies, mut tx_full) = (0u64, 0u64, 0u64, 0u64);
    // Only the first bytes of a frame are looked at (ARP and ICMP requests
    // worth answering are short); counting needs no copy of the payload.
    let mut head = [0u8; 128];
    let mut reply = [0u8; MAX_FRAME];
    let mut next_check = t0;
    let mut status = exit::OK;
    'outer: loop {
        let now = rdtsc();
        if now >= deadline {
            break;
        }
        if now >= next_check {
            next_check = now + 100 * khz;
            if broken_nic(WHO, &nics) {
                status = exit::DEVICE_ERROR;
                break 'outer;
            }
        }
        for n in nics.iter_mut().flatten() {
            n.net.reclaim();
            let mut budget = 256;
            while let Some(len) = n.net.recv_head(&mut head) {
                frames += 1;
                bytes += len as u64;
                // ARP requests are 42 bytes (60 padded); ICMP echo of any
                // size gets an answer only when it fits the peek buffer.
                if len <= head.len() {
                    let mac = n.net.mac;
                    match answer(&head[..len], &mac, n.ip, &mut reply) {
                        Answer::Arp(l) | Answer::Icmp(l) => {
                            if n.net.send(&reply[..l]) {
                                replies += 1;
                            } else {
                                tx_full += 1;
                            }
                        }
                        Answer::None => {}
                    }
                }
                budget -= 1;
                if budget == 0 {
                    break;
                }
            }
        }
        core::hint::spin_loop();
    }
    let ticks = rdtsc() - t0;
    for n in nics.iter().flatten() {
        n.net.shutdown();
    }
    println!("{WHO}: frames={frames} bytes={bytes} seconds={seconds} replies={replies} tx_full={tx_full}");
    report::send(&result(WHO, seconds, frames, ticks, plan.tsc_khz));
    status
}
