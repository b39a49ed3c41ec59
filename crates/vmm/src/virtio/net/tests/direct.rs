//! The direct rx path (`handler/direct.rs`): frames read from the backend
//! straight into rx chains through the rx ring, with well-formed and
//! hostile chains, and the copy path taking over mid-batch.

use super::*;

fn direct(r: &Rig) -> u64 {
    r.h.counters().rx_direct.load(Ordering::Relaxed)
}

/// Guest bytes at `at`.
fn guest(r: &Rig, at: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    r.mem.read_slice(&mut b, GuestAddress(at)).expect("r");
    b
}

/// `f` with num_buffers set to `n` (what the guest must see).
fn with_nbuf(f: &[u8], n: u16) -> Vec<u8> {
    let mut f = f.to_vec();
    f[10..12].copy_from_slice(&n.to_le_bytes());
    f
}

#[test]
fn frames_are_read_straight_into_rx_chains_with_num_buffers() {
    let Some(mut r) = Rig::new_with_ring(0, true) else {
        return;
    };
    // Stale bytes where num_buffers goes: the device must overwrite them.
    r.mem.write_slice(&[0xee; 0x4000], GuestAddress(DATA)).expect("w");
    let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(100 + 300 * i, i as u8)).collect();
    let mut frames = frames;
    for f in &mut frames {
        f[10..12].copy_from_slice(&[0xaa, 0xbb]);
    }
    r.push(false, &[(DATA, 2048, F_WRITE)]);
    // A header split over descriptors: num_buffers lies in the second one.
    r.push(false, &[(DATA + 0x1000, 6, F_WRITE), (DATA + 0x1800, 2042, F_WRITE)]);
    // A zero-length descriptor inside a chain is harmless.
    r.push(false, &[(DATA + 0x2000, 0, F_WRITE), (DATA + 0x2800, 2048, F_WRITE)]);
    for f in &frames {
        r.host.send(f).expect("send");
    }
    assert_eq!(r.h.process_rx(), RxState::Drained);
    assert_eq!(direct(&r), 3, "all three without a copy");
    assert_eq!(r.h.rx_waiting(), 0);
    let used = r.used(false);
    assert_eq!(used, vec![(0, 112), (1, 412), (3, 712)]);
    assert_eq!(guest(&r, DATA, 112), with_nbuf(&frames[0], 1));
    let mut split = guest(&r, DATA + 0x1000, 6);
    split.extend(guest(&r, DATA + 0x1800, 412 - 6));
    assert_eq!(split, with_nbuf(&frames[1], 1));
    assert_eq!(guest(&r, DATA + 0x2800, 712), with_nbuf(&frames[2], 1));
    assert_eq!(r.counters()[..3], [3, 900 + 300, 0]);
    assert_eq!(unread(&r), 0);
}

#[test]
fn a_frame_longer_than_its_chain_hands_the_rest_of_the_batch_to_the_copy_path_in_order() {
    let Some(mut r) = Rig::new_with_ring(0, true) else {
        return;
    };
    r.push(false, &[(DATA, 2048, F_WRITE)]);
    r.push(false, &[(DATA + 0x1000, 200, F_WRITE)]);
    r.push(false, &[(DATA + 0x2000, 2048, F_WRITE)]);
    r.push(false, &[(DATA + 0x3000, 2048, F_WRITE)]);
    let frames = [frame(100, 1), frame(1000, 2), frame(150, 3), frame(160, 4)];
    for f in &frames {
        r.host.send(f).expect("send");
    }
    assert_eq!(r.h.process_rx(), RxState::Drained);
    assert_eq!(direct(&r), 1, "only the first went straight in");
    // The second does not fit the 200-byte chain (no mergeable buffers):
    // dropped, the chain kept for the next frame, order kept.
    assert_eq!(r.used(false), vec![(0, 112), (1, 162), (2, 172)]);
    assert_eq!(r.counters()[..3], [3, 100 + 150 + 160, 1]);
    assert_eq!(guest(&r, DATA + 0x1000, 162), with_nbuf(&frames[2], 1));
    assert_eq!(guest(&r, DATA + 0x2000, 172), with_nbuf(&frames[3], 1));
    // The chain left over takes the next frame, straight in again.
    let f = frame(64, 9);
    r.host.send(&f).expect("send");
    assert_eq!(r.h.process_rx(), RxState::Drained);
    assert_eq!(r.used(false)[3], (3, 76));
    assert_eq!(direct(&r), 2);
    assert_eq!(guest(&r, DATA + 0x3000, 76), with_nbuf(&f, 1));
}

#[test]
fn mergeable_buffers_take_long_frames_through_the_copy_path_and_short_ones_straight() {
    let Some(mut r) = Rig::new_with_ring(OFFLOAD_FEATURES, true) else {
        return;
    };
    for k in 0..8u64 {
        r.push(false, &[(DATA + k * 0x1000, 4096, F_WRITE)]);
    }
    let frames = [frame(100, 1), frame(10000, 2), frame(200, 3)];
    for f in &frames {
        r.host.send(f).expect("send");
    }
    assert_eq!(r.h.process_rx(), RxState::Drained);
    assert_eq!(direct(&r), 1);
    let used = r.used(false);
    // 10012 bytes over three 4 KiB buffers, then the third frame.
    assert_eq!(used, vec![(0, 112), (1, 4096), (2, 4096), (3, 10012 - 8192), (4, 212)]);
    assert_eq!(guest(&r, DATA, 112), with_nbuf(&frames[0], 1));
    let mut long = guest(&r, DATA + 0x1000, 4096 * 2);
    long.extend(guest(&r, DATA + 0x3000, 10012 - 8192));
    assert_eq!(long, with_nbuf(&frames[1], 3), "whole, in order, num_buffers 3");
    assert_eq!(guest(&r, DATA + 0x4000, 212), with_nbuf(&frames[2], 1));
    // Frames longer than the chains rest direct reads for a while (the
    // copy path splits them anyway); then short frames go straight in again.
    let mut rounds = 0;
    while direct(&r) == 1 {
        rounds += 1;
        assert!(rounds < 200, "direct reads come back");
        r.push(false, &[(DATA + 0x5000, 4096, F_WRITE)]);
        r.host.send(&frame(600, 7)).expect("send");
        assert_eq!(r.h.process_rx(), RxState::Drained);
    }
    assert!(rounds > 1, "not at once");
    assert_eq!(r.counters()[..3], [3 + rounds, 100 + 10000 + 200 + 600 * rounds, 0]);
}

#[test]
fn a_frame_filling_a_cut_read_is_dropped_once_and_then_read_with_room_behind() {
    let Some(mut r) = Rig::new_with_ring(0, true) else {
        return;
    };
    // One 2 KiB piece, beyond the longest frame so far: a plain read cut at
    // its end. A frame that fills it may have been cut: dropped, counted.
    let exact = frame(2048 - VNET_HDR_LEN, 3);
    r.push(false, &[(DATA, 2048, F_WRITE)]);
    r.host.send(&exact).expect("send");
    assert_eq!(r.h.process_rx(), RxState::Drained);
    assert_eq!(r.used(false), vec![], "the chain stays");
    assert_eq!(r.counters()[..3], [0, 0, 1]);
    // From now on such a chain gets room behind (a vectored read): the
    // same frame fits exactly and is delivered, straight in.
    r.host.send(&exact).expect("send");
    assert_eq!(r.h.process_rx(), RxState::Drained);
    assert_eq!(r.used(false), vec![(0, 2048)]);
    assert_eq!(guest(&r, DATA, 2048), with_nbuf(&exact, 1));
    assert_eq!(direct(&r), 1);
    // Longer ones are dropped whole, never cut.
    r.push(false, &[(DATA + 0x1000, 2048, F_WRITE)]);
    r.host.send(&frame(3000, 4)).expect("send");
    r.host.send(&frame(100, 5)).expect("send");
    assert_eq!(r.h.process_rx(), RxState::Drained);
    assert_eq!(r.used(false)[1], (1, 112));
    assert_eq!(r.counters()[..3], [2, 2036 + 100, 2]);
}

#[test]
fn small_frames_take_the_copy_path_where_a_chain_needs_a_vectored_read() {
    let Some(mut r) = Rig::new_with_ring(OFFLOAD_FEATURES, true) else {
        return;
    };
    // Mergeable buffers: every direct read is vectored. A run of small
    // frames brings the mean down and the copy path takes over; long
    // frames bring direct reads back.
    let mut sent = 0u64;
    for round in 0..40u64 {
        r.push(false, &[(DATA + (round % 8) * 0x1000, 4096, F_WRITE)]);
        r.host.send(&frame(60, round as u8)).expect("send");
        assert_eq!(r.h.process_rx(), RxState::Drained);
        sent += 1;
    }
    let small = direct(&r);
    assert!(small > 0 && small < 20, "direct at first, then not ({small})");
    for round in 0..40u64 {
        r.push(false, &[(DATA + (round % 8) * 0x1000, 4096, F_WRITE)]);
        r.host.send(&frame(1400, round as u8)).expect("send");
        assert_eq!(r.h.process_rx(), RxState::Drained);
        sent += 1;
    }
    assert!(direct(&r) > small + 20, "back to direct reads ({})", direct(&r));
    assert_eq!(r.counters()[0], sent, "every frame delivered either way");
    assert_eq!(r.used(false).len() as u64, sent);
}

#[test]
fn hostile_chains_on_the_direct_path_are_completed_empty_and_counted() {
    let Some(mut r) = Rig::new_with_ring(OFFLOAD_FEATURES, true) else {
        return;
    };
    let end = 4u64 << 20;
    // Outside guest memory, straddling its end, read-only, zero length,
    // too short for the header (mergeable buffers), then a good one.
    r.push(false, &[(0xffff_0000_0000, 2048, F_WRITE)]);
    r.push(false, &[(end - 100, 2048, F_WRITE)]);
    r.push(false, &[(DATA, 2048, 0)]);
    r.push(false, &[(DATA, 0, F_WRITE)]);
    r.push(false, &[(DATA, 8, F_WRITE)]);
    r.push(false, &[(DATA + 0x1000, 2048, F_WRITE)]);
    let f = frame(100, 5);
    r.host.send(&f).expect("send");
    assert_eq!(r.h.process_rx(), RxState::Drained);
    let used = r.used(false);
    assert_eq!(used, vec![(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (5, 112)]);
    assert_eq!(r.counters()[6], 5, "five bad chains");
    assert_eq!(direct(&r), 1);
    assert_eq!(guest(&r, DATA + 0x1000, 112), with_nbuf(&f, 1));
    assert_eq!(
        guest(&r, end - 100, 100),
        vec![0; 100],
        "nothing written at the end of RAM"
    );
    // A bad chain after good ones waits for the next batch (a chain
    // completed empty could not be given back past it), and frames keep
    // their order around it.
    r.push(false, &[(DATA + 0x2000, 2048, F_WRITE)]);
    r.push(false, &[(0xffff_0000_0000, 2048, F_WRITE)]);
    r.push(false, &[(DATA + 0x3000, 2048, F_WRITE)]);
    let g = [frame(60, 6), frame(61, 7)];
    for x in &g {
        r.host.send(x).expect("send");
    }
    assert_eq!(r.h.process_rx(), RxState::Drained);
    let used = r.used(false);
    assert_eq!(used[6..], [(6, 72), (7, 0), (8, 73)]);
    assert_eq!(r.counters()[6], 6);
    assert_eq!(guest(&r, DATA + 0x3000, 73), with_nbuf(&g[1], 1));
    // Runts and oversized frames are dropped, the chain kept.
    r.push(false, &[(DATA + 0x4000, 0x2_0000, F_WRITE)]);
    r.host.send(&[1u8; 5]).expect("send");
    r.host.send(&vec![2u8; MAX_BUFFER_BYTES + 10]).expect("send");
    let h = frame(80, 8);
    r.host.send(&h).expect("send");
    assert_eq!(r.h.process_rx(), RxState::Drained);
    assert_eq!(r.used(false)[9..], [(9, 92)]);
    assert_eq!(guest(&r, DATA + 0x4000, 92), with_nbuf(&h, 1));
    assert_eq!(r.counters()[2], 2, "the runt and the oversized frame");
}

#[test]
fn direct_writes_mark_guest_pages_dirty() {
    use vm_memory::bitmap::Bitmap;
    use vm_memory::GuestMemoryBackend;
    let Some(mut r) = Rig::new_with_ring(0, true) else {
        return;
    };
    r.push(false, &[(DATA + 0x8000, 2048, F_WRITE)]);
    let region = std::ops::Deref::deref(r.mem.find_region(GuestAddress(0)).expect("region"));
    region.bitmap().dirty().reset();
    assert!(!region.bitmap().dirty_at(DATA as usize + 0x8000));
    r.host.send(&frame(100, 1)).expect("send");
    assert_eq!(r.h.process_rx(), RxState::Drained);
    assert_eq!(direct(&r), 1);
    assert!(region.bitmap().dirty_at(DATA as usize + 0x8000), "the frame's page");
    assert!(!region.bitmap().dirty_at(DATA as usize + 0x9000), "not the next one");
}

/// A terminal's master side: its reads refuse `RWF_NOWAIT` (EOPNOTSUPP),
/// as Linux 6.1's tun did; `None` when this kernel lets them through.
fn fd_refusing_nowait_reads() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: open of a fixed path; the fd is owned from here on.
    let fd = unsafe { libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_NOCTTY) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is ours and open.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut b = [0u8; 8];
    let iov = libc::iovec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: b.len(),
    };
    // SAFETY: one iovec over a local buffer.
    let rc = unsafe { libc::preadv2(fd, &iov, 1, -1, libc::RWF_NOWAIT) };
    let refused = rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EOPNOTSUPP);
    refused.then_some(owned)
}

#[test]
fn a_backend_refusing_ring_reads_falls_back_to_one_read_per_frame_with_buffers_posted() {
    let Some(fd) = fd_refusing_nowait_reads() else {
        eprintln!("skipped: no fd here refuses RWF_NOWAIT reads");
        return;
    };
    let mut r = Rig::new(0);
    // The ring reads an fd that refuses its reads; the backend's own reads
    // (the fallback) get the frames.
    let ring = match crate::net::rx_ring::RxRing::new(fd.as_raw_fd(), handler::READ_ROOM) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("skipped: io_uring is not available here ({e})");
            return;
        }
    };
    let h = std::mem::replace(&mut r.h, Rig::new(0).h);
    r.h = h.with_rx_ring(Some(Arc::new(std::sync::Mutex::new(ring))));
    for k in 0..4u64 {
        r.push(false, &[(DATA + k * 0x1000, 2048, F_WRITE)]);
    }
    let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(100 + i, i as u8)).collect();
    for f in &frames {
        r.host.send(f).expect("send");
    }
    assert_eq!(r.h.process_rx(), RxState::Drained);
    assert_eq!(direct(&r), 0);
    assert_eq!(
        r.used(false),
        vec![(0, 112), (1, 113), (2, 114)],
        "no frame lost, none reordered"
    );
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(guest(&r, DATA + i as u64 * 0x1000, f.len()), with_nbuf(f, 1));
    }
    // From now on without the ring.
    r.host.send(&frame(50, 9)).expect("send");
    assert_eq!(r.h.process_rx(), RxState::Drained);
    assert_eq!(r.used(false)[3], (3, 62));
    drop(fd);
}
