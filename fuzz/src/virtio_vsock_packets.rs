//! Fuzz target body: guest-sent virtio-vsock packets and rx buffers laid
//! out in guest memory by the input, handled by `VsockHandler` (the
//! device's worker round) with real unix sockets on the host side: host
//! clients that connect to the device's socket and send `CONNECT` lines
//! (good and bad), write, half-close and close; a listener at
//! `<uds>_7` for guest-initiated connections (port 8 has none).
//!
//! Guest memory is [`crate::guest_memory`]. Rings (16 entries, kvmkit's
//! shared `virtio::test_rig`: descriptors, avail at +0x100, used at +0x128):
//! rx at 0x1000, tx at 0x2000, the event queue at 0x3000. Buffers from
//! 0x4000 to 0x10000.
//!
//! Input: byte 0 chooses the guest CID (3 or a large one), then operations,
//! each an op byte `b`:
//!
//! | `b % 10` | operation |
//! |----------|-----------|
//! | 0, 1 | publish a tx packet: op code (0-8, unknown ones included), type, source and destination CIDs (right or wrong), ports (the listener's, a port nobody listens on, one of a host-initiated connection the guest saw a REQUEST for), `len` (true, 0, one more, 64 KiB + 1, `u32::MAX`), SHUTDOWN flags, credit (`buf_alloc` 0 to `u32::MAX`, any `fwd_cnt`), 0-300 payload bytes; laid out in one descriptor, header and payload apart, the header itself split, a writable descriptor, a buffer outside RAM |
//! | 2 | publish an rx buffer: 0 to 4096 bytes, one or two descriptors, read-only or outside RAM sometimes |
//! | 3 | `process_tx` |
//! | 4 | `process_rx` |
//! | 5 | a host client connects and sends a line (`CONNECT 5000`, `CONNECT 7`, garbage, nothing) |
//! | 6 | a host socket (client or accepted) writes up to 2000 bytes |
//! | 7 | a host socket shuts its write side, or closes |
//! | 8 | the worker's epoll round (`work` with the epoll descriptor ready), accepting at `<uds>_7` |
//! | 9 | the guest's deadlines pass (`expire` 3 s ahead) |
//!
//! Checks beyond "no panic" and the fuzzer's timeout for "no hang": every
//! tx chain is completed unless guest tx is held back (too many RSTs
//! waiting); every rx used length fits the buffer it names and, when not
//! 0, starts with a header from CID 2 to the guest's CID whose `len` is the
//! rest of the used length, at most 64 KiB; the connection count stays
//! within the limit.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmkit_vmm::memory::GuestMemoryMmap;
use kvmkit_vmm::virtio::test_rig::{Desc, TestQueue, F_WRITE};
use kvmkit_vmm::virtio::vsock::handler::VsockHandler;
use kvmkit_vmm::virtio::vsock::muxer::MAX_CONNECTIONS;
use kvmkit_vmm::virtio::vsock::packet::{Header, Op, HDR_LEN, MAX_PKT_DATA};
use kvmkit_vmm::virtio::vsock::{unix::port_path, Vsock};
use kvmkit_vmm::virtio::{Interrupt, WorkerHandler};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::{guest_memory, Input};

const QSIZE: u16 = 16;
const BUF_START: u64 = 0x4000;
const BUF_END: u64 = 0x10000;

/// What one input did (the smoke test checks the paths are reached).
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// Packets delivered to the guest.
    pub delivered: usize,
    /// Connections the device opened.
    pub connections: u64,
    /// RSTs it sent.
    pub resets: u64,
    /// Bytes host sockets received from the guest.
    pub host_bytes: usize,
}

/// One queue (kvmkit's shared test rig) and the descriptors of each head
/// published, for the used-length check.
struct Ring {
    q: TestQueue,
    used_seen: u16,
    chains: Vec<Vec<Desc>>,
}

impl Ring {
    fn new(base: u64) -> Self {
        Self {
            q: TestQueue::new(base, QSIZE),
            used_seen: 0,
            chains: vec![Vec::new(); QSIZE as usize],
        }
    }

    fn queue(&self) -> Queue {
        self.q.queue()
    }

    fn push(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) {
        let head = self.q.push(mem, descs);
        self.chains[usize::from(head)] = descs.to_vec();
    }

    /// Room for another chain of `n` descriptors without overwriting one
    /// the device has not completed (chains complete in order here).
    fn room(&self, mem: &GuestMemoryMmap, n: usize) -> bool {
        let outstanding = self.q.published().wrapping_sub(self.q.used_idx(mem));
        usize::from(outstanding) * 2 + n <= usize::from(QSIZE) && n <= 2
    }

    fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        self.q.used_idx(mem)
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    rx: Ring,
    tx: Ring,
    h: VsockHandler,
    _dev: Vsock,
    uds: PathBuf,
    listener: UnixListener,
    hosts: Vec<UnixStream>,
    requests: Vec<(u32, u32)>,
    cid: u64,
    next_buf: u64,
    out: Outcome,
    counters: Arc<kvmkit_vmm::virtio::vsock::VsockCounters>,
}

static RUNS: AtomicU64 = AtomicU64::new(0);

impl Rig {
    fn new(cid: u64) -> Option<Self> {
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let uds = std::env::temp_dir().join(format!("kvmkit-fz-vsock-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&uds);
        let lpath = port_path(&uds, 7);
        let _ = std::fs::remove_file(&lpath);
        let listener = UnixListener::bind(&lpath).ok()?;
        listener.set_nonblocking(true).ok()?;
        let dev = Vsock::new(cid, &uds).ok()?;
        let mem = guest_memory();
        let rx = Ring::new(0x1000);
        let tx = Ring::new(0x2000);
        let ev = Ring::new(0x3000);
        let mut muxer = dev.muxer();
        muxer.start();
        let irq = EventFd::new(libc::EFD_NONBLOCK).ok()?;
        let counters = dev.vsock_counters();
        let h = VsockHandler::new(
            mem.clone(),
            vec![rx.queue(), tx.queue(), ev.queue()],
            Arc::new(Interrupt::new(irq)),
            muxer,
            counters.clone(),
        )
        .ok()?;
        Some(Self {
            mem,
            rx,
            tx,
            h,
            _dev: dev,
            uds,
            listener,
            hosts: Vec::new(),
            requests: Vec::new(),
            cid,
            next_buf: BUF_START,
            out: Outcome::default(),
            counters,
        })
    }

    fn buf(&mut self, len: u64) -> u64 {
        if self.next_buf + len > BUF_END {
            self.next_buf = BUF_START;
        }
        let a = self.next_buf;
        self.next_buf = (self.next_buf + len.max(1) + 15) & !15;
        a
    }

    fn address(&mut self, inp: &mut Input, len: u64) -> u64 {
        match inp.u8() % 16 {
            0 => 0xffff_0000,
            1 => 0x1_0000 - 8,
            2 => 0x1_1000 + 8,
            _ => self.buf(len),
        }
    }

    fn tx_packet(&mut self, inp: &mut Input) {
        let op = u16::from(inp.u8() % 9);
        let sel = inp.u8();
        let (src_port, dst_port) = match sel % 4 {
            0 => (1000 + u32::from(sel >> 4), 7),
            1 => (1000 + u32::from(sel >> 4), 8),
            _ if !self.requests.is_empty() => {
                let (local, peer) = self.requests[usize::from(sel >> 2) % self.requests.len()];
                (peer, local)
            }
            _ => (inp.u32(), inp.u32()),
        };
        let data_len = usize::from(inp.u16() % 301);
        let data: Vec<u8> = inp.bytes(data_len).to_vec();
        let c = inp.u8();
        let h = Header {
            src_cid: if c & 1 == 0 { self.cid } else { u64::from(inp.u8()) },
            dst_cid: if c & 2 == 0 { 2 } else { inp.u64() },
            src_port,
            dst_port,
            len: match (c >> 2) % 8 {
                0 => 0,
                1 => data.len() as u32 + 1,
                2 => MAX_PKT_DATA + 1,
                3 => u32::MAX,
                _ => data.len() as u32,
            },
            type_: if c & 0x20 == 0 { 1 } else { u16::from(inp.u8()) },
            op,
            flags: u32::from(inp.u8() % 4),
            buf_alloc: [0, 100, 64 * 1024, 256 * 1024, u32::MAX][usize::from(inp.u8() % 5)],
            fwd_cnt: if c & 0x40 == 0 { 0 } else { inp.u32() },
        };
        let bytes = [h.to_bytes().as_slice(), &data].concat();
        let layout = inp.u8();
        let descs: Vec<Desc> = match layout % 4 {
            0 if !data.is_empty() => {
                let a = self.address(inp, HDR_LEN as u64);
                let b = self.address(inp, data.len() as u64);
                let _ = self.mem.write_slice(&bytes[..HDR_LEN], GuestAddress(a));
                let _ = self.mem.write_slice(&bytes[HDR_LEN..], GuestAddress(b));
                vec![(a, HDR_LEN as u32, 0), (b, data.len() as u32, 0)]
            }
            1 => {
                let cut = usize::from(inp.u8()) % bytes.len();
                let a = self.address(inp, cut as u64);
                let b = self.address(inp, (bytes.len() - cut) as u64);
                let _ = self.mem.write_slice(&bytes[..cut], GuestAddress(a));
                let _ = self.mem.write_slice(&bytes[cut..], GuestAddress(b));
                vec![(a, cut as u32, 0), (b, (bytes.len() - cut) as u32, 0)]
            }
            _ => {
                let a = self.address(inp, bytes.len() as u64);
                let _ = self.mem.write_slice(&bytes, GuestAddress(a));
                let flags = if layout & 0x10 != 0 { F_WRITE } else { 0 };
                vec![(a, bytes.len() as u32, flags)]
            }
        };
        if self.tx.room(&self.mem, descs.len()) {
            self.tx.push(&self.mem, &descs);
        }
    }

    fn rx_buffer(&mut self, inp: &mut Input) {
        let len = [0u32, 10, 44, 45, 64, 300, 4096][usize::from(inp.u8() % 7)];
        let f = inp.u8();
        let flags = if f & 7 == 0 { 0 } else { F_WRITE };
        let descs = if f & 8 != 0 && len > 44 {
            let a = self.address(inp, 44);
            let b = self.address(inp, u64::from(len - 44));
            vec![(a, 44, flags), (b, len - 44, F_WRITE)]
        } else {
            let a = self.address(inp, u64::from(len));
            vec![(a, len, flags)]
        };
        if self.rx.room(&self.mem, descs.len()) {
            self.rx.push(&self.mem, &descs);
        }
    }

    fn process_tx(&mut self) {
        self.h.process_tx();
        if !self.h.muxer().tx_blocked() {
            assert_eq!(
                self.tx.used_idx(&self.mem),
                self.tx.q.published(),
                "a tx chain was left uncompleted"
            );
        }
    }

    fn process_rx(&mut self) {
        self.h.process_rx();
        self.check_rx();
    }

    /// New rx used entries: lengths fit their buffers, packets are well-formed.
    fn check_rx(&mut self) {
        let used = self.rx.used_idx(&self.mem);
        while self.rx.used_seen != used {
            let (head, len) = self.rx.q.used_entry(&self.mem, self.rx.used_seen);
            self.rx.used_seen = self.rx.used_seen.wrapping_add(1);
            assert!(head < u32::from(QSIZE), "used head {head}");
            let chain = &self.rx.chains[head as usize];
            let writable: u64 = chain
                .iter()
                .filter(|d| d.2 & F_WRITE != 0)
                .map(|d| u64::from(d.1))
                .sum();
            assert!(u64::from(len) <= writable, "used {len} > writable {writable}");
            if len == 0 {
                continue;
            }
            let mut bytes = Vec::new();
            for d in chain.iter().filter(|d| d.2 & F_WRITE != 0) {
                let mut b = vec![0u8; d.1 as usize];
                if self.mem.read_slice(&mut b, GuestAddress(d.0)).is_err() {
                    continue; // the buffer straddles a hole: not checked
                }
                bytes.extend(b);
            }
            let mut raw = [0u8; HDR_LEN];
            raw.copy_from_slice(&bytes[..HDR_LEN]);
            let h = Header::from_bytes(&raw);
            assert_eq!((h.src_cid, h.dst_cid, h.type_), (2, self.cid, 1), "{h:?}");
            assert_eq!(h.len as usize, len as usize - HDR_LEN, "{h:?}");
            assert!(h.len <= MAX_PKT_DATA);
            assert!(Op::from_code(h.op).is_some(), "{h:?}");
            if h.op == Op::Request.code() {
                self.requests.push((h.src_port, h.dst_port));
                self.requests.truncate(16);
            }
            self.out.delivered += 1;
        }
    }

    fn host_connect(&mut self, inp: &mut Input) {
        if self.hosts.len() >= 16 {
            return;
        }
        let Ok(mut s) = UnixStream::connect(&self.uds) else {
            return;
        };
        let _ = s.set_nonblocking(true);
        let line: &[u8] = match inp.u8() % 5 {
            0 | 1 => b"CONNECT 5000\n",
            2 => b"CONNECT 7\n",
            3 => b"GET / HTTP/1.0\r\n",
            _ => b"",
        };
        let _ = s.write_all(line);
        self.hosts.push(s);
    }

    fn host_write(&mut self, inp: &mut Input) {
        if self.hosts.is_empty() {
            return;
        }
        let i = usize::from(inp.u8()) % self.hosts.len();
        let n = usize::from(inp.u16() % 2001);
        let data = vec![inp.u8(); n];
        let _ = self.hosts[i].write(&data);
    }

    fn host_close(&mut self, inp: &mut Input) {
        if self.hosts.is_empty() {
            return;
        }
        let i = usize::from(inp.u8()) % self.hosts.len();
        if inp.u8() & 1 == 0 {
            let _ = self.hosts[i].shutdown(std::net::Shutdown::Write);
        } else {
            self.drain_host(i);
            self.hosts.swap_remove(i);
        }
    }

    fn drain_host(&mut self, i: usize) {
        let mut b = [0u8; 4096];
        while let Ok(n) = self.hosts[i].read(&mut b) {
            if n == 0 {
                break;
            }
            self.out.host_bytes += n;
        }
    }

    fn events(&mut self) {
        self.h.work(&[false, false, false], &[libc::POLLIN]);
        self.check_rx();
        while self.hosts.len() < 16 {
            match self.listener.accept() {
                Ok((s, _)) => {
                    let _ = s.set_nonblocking(true);
                    self.hosts.push(s);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
        for i in 0..self.hosts.len() {
            self.drain_host(i);
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(port_path(&self.uds, 7));
    }
}

/// Runs one input.
pub fn run(data: &[u8]) -> Outcome {
    let mut inp = Input::new(data);
    let cid = if inp.u8() & 1 == 0 { 3 } else { 0xffff_fff0 };
    let Some(mut r) = Rig::new(cid) else {
        return Outcome::default();
    };
    let mut ops = 0;
    while !inp.is_empty() && ops < 256 {
        ops += 1;
        match inp.u8() % 10 {
            0 | 1 => r.tx_packet(&mut inp),
            2 => r.rx_buffer(&mut inp),
            3 => r.process_tx(),
            4 => r.process_rx(),
            5 => r.host_connect(&mut inp),
            6 => r.host_write(&mut inp),
            7 => r.host_close(&mut inp),
            8 => r.events(),
            _ => r.h.muxer().expire(Instant::now() + Duration::from_secs(3)),
        }
        assert!(r.h.muxer().connection_count() <= MAX_CONNECTIONS);
    }
    r.process_tx();
    r.events();
    r.process_rx();
    r.out.connections = r.counters.connections.load(Ordering::Relaxed);
    r.out.resets = r.counters.resets.load(Ordering::Relaxed);
    r.out
}
