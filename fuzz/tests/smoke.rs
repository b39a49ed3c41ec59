//! Stable smoke test: replays a few hundred pseudo-random inputs (and any
//! stored seeds, saved corpus or crash inputs under fuzz/seeds/<target>/,
//! fuzz/corpus/<target>/ and fuzz/artifacts/<target>/) through the same
//! functions the libFuzzer targets run, so CI exercises them without
//! nightly or libFuzzer.
//!
//! Run: `cd fuzz && cargo test`.

use std::path::Path;

use kvmkit_fuzz::{
    agent_frames, api_request, guest_report, pio_devices, pseudo_random_inputs, snapshot_state, virtio_blk_request,
    virtio_mmio_transport, virtio_net_chains, virtio_vsock_packets,
};

fn saved_inputs(target: &str) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    ["seeds", "corpus", "artifacts"]
        .iter()
        .filter_map(|d| std::fs::read_dir(root.join(d).join(target)).ok())
        .flatten()
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .collect()
}

fn inputs(target: &str, seed: u64) -> Vec<Vec<u8>> {
    let mut inputs = vec![
        vec![],
        vec![0],
        vec![0xff; 64],
        vec![0; 200],
        (0..=255u8).collect(),
        (0..=255u8).rev().cycle().take(1000).collect(),
    ];
    inputs.extend(pseudo_random_inputs(seed, 400, 600));
    let saved = saved_inputs(target);
    eprintln!("{target}: {} generated inputs, {} saved", inputs.len(), saved.len());
    inputs.extend(saved);
    inputs
}

#[test]
fn pio_devices_smoke() {
    let (mut reports, mut exits, mut unclaimed) = (0, 0, 0);
    for input in inputs("pio_devices", 0x6b76_6d6b_6974_0001) {
        let o = pio_devices::run(&input);
        reports += o.reports;
        exits += usize::from(o.exited);
        unclaimed += o.unclaimed;
    }
    eprintln!("pio_devices: {reports} reports, {exits} exits, {unclaimed} unclaimed accesses");
    // The generated inputs alone must reach the interesting paths.
    assert!(reports > 0 && exits > 0 && unclaimed > 0);
}

#[test]
fn kernel_loader_smoke() {
    let (mut loaded, mut pvh, mut unpacked) = (0, 0, 0);
    for input in inputs("kernel_loader", 0x6b76_6d6b_6974_000a) {
        let o = kvmkit_fuzz::kernel_loader::run(&input);
        loaded += usize::from(o.loaded);
        pvh += usize::from(o.pvh);
        unpacked += usize::from(o.unpacked);
    }
    eprintln!("kernel_loader: {loaded} images loaded, {pvh} through PVH, {unpacked} bzImages unpacked on the host");
    // The generated inputs alone must reach a loaded image; the seeds, bzImages
    // decompressed on the host.
    assert!(loaded > 0 && unpacked > 0);
}

#[test]
fn virtio_rng_smoke() {
    let (mut completed, mut bytes, mut broken) = (0, 0, 0);
    for input in inputs("virtio_rng", 0x6b76_6d6b_6974_000b) {
        let o = kvmkit_fuzz::virtio_rng::run(&input);
        completed += o.completed;
        bytes += o.bytes;
        broken += usize::from(o.broken);
    }
    eprintln!("virtio_rng: {completed} chains completed, {bytes} bytes, {broken} broken queues");
    assert!(completed > 0 && bytes > 0 && broken > 0);
}

#[test]
fn guest_report_smoke() {
    let reports: usize = inputs("guest_report", 0x6b76_6d6b_6974_0002)
        .iter()
        .map(|i| guest_report::run(i))
        .sum();
    eprintln!("guest_report: {reports} reports collected");
    assert!(reports > 0);
}

#[test]
fn virtio_blk_request_smoke() {
    let (mut completed, mut checked, mut read_only) = (0, 0, 0);
    for input in inputs("virtio_blk_request", 0x6b76_6d6b_6974_0003) {
        let o = virtio_blk_request::run(&input);
        completed += o.completed;
        checked += o.checked_drains;
        read_only += usize::from(o.read_only && o.completed > 0);
    }
    eprintln!(
        "virtio_blk_request: {completed} requests completed, {checked} drains checked, {read_only} read-only runs"
    );
    assert!(completed > 0 && checked > 0 && read_only > 0);
}

#[test]
fn virtio_mmio_transport_smoke() {
    let (mut activations, mut needs_reset, mut resets) = (0, 0, 0);
    for input in inputs("virtio_mmio_transport", 0x6b76_6d6b_6974_0004) {
        let o = virtio_mmio_transport::run(&input);
        activations += o.activations;
        needs_reset += o.needs_reset;
        resets += o.resets;
    }
    eprintln!("virtio_mmio_transport: {activations} activations, {needs_reset} refused, {resets} resets");
    assert!(activations > 0 && needs_reset > 0 && resets > 0);
}

/// libFuzzer's first find: a handshake that never sets the ring addresses
/// left the avail ring at 0, which virtio-queue never iterates; the
/// transport activated a dead device instead of DEVICE_NEEDS_RESET.
#[test]
fn virtio_mmio_avail_ring_at_zero_is_refused() {
    let o = virtio_mmio_transport::run(&[10, 10, 187]);
    assert_eq!((o.activations, o.needs_reset), (0, 1));
}

/// A WRITE_ZEROES chain with 128 KiB of segment data (8192 zero-length
/// segments, though max_write_zeroes_seg is 1) cost 8192 fallocate calls and,
/// where ZERO_RANGE is unsupported (tmpfs), 8192 zeroed 1 MiB buffers: ~0.5 s
/// per request, unbounded with bigger chains. 64 of them now fail at once.
#[test]
fn virtio_blk_write_zeroes_segment_count_is_bounded() {
    let segment = [[0, 0, 0, 3, 0x00, 0x80].as_slice(), &[0; 20]].concat();
    let chain = [[0, 5, 0, 0, 4, 0].as_slice(), &segment.repeat(4), &[6]].concat();
    let input = [[0x10, 64].as_slice(), &chain.repeat(64)].concat();
    let start = std::time::Instant::now();
    let o = virtio_blk_request::run(&input);
    assert_eq!(o.completed, 64);
    let took = start.elapsed();
    assert!(
        took < std::time::Duration::from_secs(5),
        "64 write-zeroes requests took {took:?}"
    );
}

#[test]
fn virtio_net_chains_smoke() {
    let mut total = virtio_net_chains::Outcome::default();
    for input in inputs("virtio_net_chains", 0x6b76_6d6b_6974_0005) {
        let start = std::time::Instant::now();
        let o = virtio_net_chains::run(&input);
        let took = start.elapsed();
        assert!(took < std::time::Duration::from_secs(5), "one input took {took:?}");
        total.rx_frames += o.rx_frames;
        total.rx_dropped += o.rx_dropped;
        total.tx_frames += o.tx_frames;
        total.tx_dropped += o.tx_dropped;
        total.bad_chains += o.bad_chains;
        total.merged_frames += o.merged_frames;
        total.rx_direct += o.rx_direct;
        total.checked_calls += o.checked_calls;
    }
    eprintln!("virtio_net_chains: {total:?}");
    // The generated inputs alone must reach delivery, drops and bad chains both ways.
    assert!(total.rx_frames > 0 && total.rx_dropped > 0, "{total:?}");
    assert!(total.tx_frames > 0 && total.tx_dropped > 0, "{total:?}");
    assert!(total.bad_chains > 0 && total.checked_calls > 0, "{total:?}");
    // Where the host has io_uring, inputs with an rx ring read frames
    // straight into rx chains.
    let ring = kvmkit_vmm::net::rx_ring::RxRing::new(0, 64).is_ok();
    assert!(!ring || total.rx_direct > 0, "{total:?}");
}

/// The fuzzer's first find in virtio-net: a tx avail index set more than the
/// queue size ahead made `process_tx` spin forever (enable_notification saw
/// "more", pop saw nothing), so the worker never stopped and kvmkit hung at
/// exit joining it. The same index on rx made the worker busy-poll.
#[test]
fn virtio_net_avail_index_far_ahead_does_not_spin() {
    // Sizes 1; set the tx avail index to 0x8000; process_tx; same on rx
    // with a frame waiting; process_rx.
    let input = [0, 0, 58, 0, 0x80, 7, 34, 0, 0x80, 4, 2, 0, 5];
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let o = virtio_net_chains::run(&input);
        let _ = tx.send(o);
    });
    let o = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("virtio-net spun on a bogus avail index");
    assert_eq!(o.rx_frames, 0);
}

#[test]
fn api_request_smoke() {
    use std::collections::BTreeMap;

    let mut inputs = inputs("api_request", 0x6b76_6d6b_6974_0006);
    // Mutants of the stored seeds (cut short, bytes changed, bodies swapped)
    // reach deeper than random bytes, which rarely form a request line.
    let seeds = saved_inputs("api_request");
    assert!(seeds.len() >= 40, "{} stored seeds", seeds.len());
    let mut state = 0x6b76_6d6b_6974_0007u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 16) as usize
    };
    for (i, seed) in seeds.iter().enumerate() {
        for _ in 0..20 {
            let mut m = seed.clone();
            match next() % 4 {
                0 => m.truncate(next() % (m.len() + 1)),
                1 => {
                    for _ in 0..1 + next() % 4 {
                        if !m.is_empty() {
                            let at = next() % m.len();
                            m[at] = next() as u8;
                        }
                    }
                }
                2 => {
                    let other = &seeds[(i + 1 + next()) % seeds.len()];
                    let body = other.iter().position(|&b| b == b'\n').map_or(&[][..], |p| &other[p..]);
                    let line_end = m.iter().position(|&b| b == b'\n').unwrap_or(m.len());
                    m.truncate(line_end);
                    m.extend_from_slice(body);
                }
                _ => {
                    let at = next() % (m.len() + 1);
                    m.insert(at, b"/%? {\"\0"[next() % 7]);
                }
            }
            inputs.push(m);
        }
    }
    let mut verdicts: BTreeMap<String, usize> = BTreeMap::new();
    for input in &inputs {
        let key = match api_request::run(input) {
            api_request::Verdict::Accepted(name) => format!("ok {name}"),
            api_request::Verdict::Refused(kind) => format!("refused {kind}"),
        };
        *verdicts.entry(key).or_default() += 1;
    }
    eprintln!("api_request: {} inputs: {verdicts:?}", inputs.len());
    // Every route is reached, and every kind of refusal.
    for key in [
        "ok get_instance_info",
        "ok get_version",
        "ok get_vm_config",
        "ok get_machine_config",
        "ok get_metrics",
        "ok put_machine_config",
        "ok patch_machine_config",
        "ok put_boot_source",
        "ok put_drive",
        "ok patch_drive",
        "ok put_network_interface",
        "ok put_entropy",
        "ok put_logger",
        "ok put_metrics",
        "ok instance_start",
        "ok send_ctrl_alt_del",
        "ok flush_metrics",
        "ok pause",
        "ok resume",
        "ok stop",
        "refused InvalidPathMethod",
        "refused BadPath",
        "refused Unsupported",
        "refused MissingBody",
        "refused UnexpectedBody",
        "refused InvalidJson",
        "refused InvalidBody",
        "refused MissingId",
        "refused InvalidId",
        "refused IdMismatch",
    ] {
        assert!(verdicts.contains_key(key), "no input reached {key}: {verdicts:?}");
    }
}

#[test]
fn snapshot_state_smoke() {
    let mut decoded = 0;
    let mut all = inputs("snapshot_state", 0x6b76_6d6b_6974_0007);
    // Valid files untouched, and with a fixed-up header only.
    all.extend([vec![1], vec![3], vec![1, 0x80, 0, 0, 0]]);
    // The same with a drive, a NIC and an rng (virtio transport state).
    all.extend([vec![5], vec![7], vec![5, 0x80, 0, 0, 0]]);
    for input in &all {
        decoded += usize::from(snapshot_state::run(input).decoded);
    }
    eprintln!("snapshot_state: {decoded} of {} inputs decoded", all.len());
    assert!(decoded >= 4, "the untouched sample files must decode");
}

#[test]
fn virtio_vsock_packets_smoke() {
    let (mut delivered, mut connections, mut resets, mut host_bytes) = (0, 0, 0, 0);
    for input in inputs("virtio_vsock_packets", 0x6b76_6d6b_6974_0019) {
        let o = virtio_vsock_packets::run(&input);
        delivered += o.delivered;
        connections += o.connections;
        resets += o.resets;
        host_bytes += o.host_bytes;
    }
    eprintln!(
        "virtio_vsock_packets: {delivered} packets delivered, {connections} connections, {resets} resets, {host_bytes} bytes to host sockets"
    );
    assert!(delivered > 0 && connections > 0 && resets > 0);
}

/// The stored seeds reach what they were written for: a host-initiated
/// connection carrying data both ways ("OK <port>\n" and "hello" reach the
/// host client), a guest-initiated one.
#[test]
fn virtio_vsock_seeds_reach_established_connections() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/virtio_vsock_packets");
    let host = virtio_vsock_packets::run(&std::fs::read(root.join("host-initiated-echo")).expect("seed"));
    assert!(
        host.host_bytes >= "OK 1073741824\nhello".len() && host.delivered >= 3,
        "{host:?}"
    );
    let guest = virtio_vsock_packets::run(&std::fs::read(root.join("guest-initiated")).expect("seed"));
    assert!(guest.connections == 1 && guest.host_bytes >= 3, "{guest:?}");
}

#[test]
fn agent_frames_smoke() {
    let (mut frames, mut requests, mut refused) = (0, 0, 0);
    for input in inputs("agent_frames", 0x6b76_6d6b_6974_0021) {
        let o = agent_frames::run(&input);
        frames += o.frames;
        requests += o.requests;
        refused += o.refused;
    }
    eprintln!("agent_frames: {frames} frames, {requests} requests built, {refused} refused");
    // The stored seeds reach complete requests and refusals.
    assert!(frames > 0 && requests > 0 && refused > 0);
}
