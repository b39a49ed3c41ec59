//! Host-side bzImage decompression, end to end: kvmkit's own guest (a PVH
//! ELF, from `kvmkit image guest`) wrapped in a synthetic bzImage whose
//! payload is compressed as Linux's build does it (gzip, xz, zstd, LZ4 legacy,
//! each with the uncompressed size appended), booted with `kvmkit run
//! --kernel` and run to its workload's result. A payload kvmkit does not
//! decode falls back to the bzImage's own decompressor with one warning, and
//! `--no-host-decompress` leaves every payload to it.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::run;

/// What kvmkit prints when it boots a bzImage as it is.
const FALLBACK_WARNING: &str = "the bzImage boots with its own decompressor";
const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 kvmkit.workload=primes:100000";
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];

/// A compressor as the kernel build runs it (the uncompressed size appended).
type Encoder = fn(&[u8]) -> Vec<u8>;

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kvmkit-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// kvmkit's own guest as an ELF file.
fn guest_elf(dir: &Path) -> Vec<u8> {
    let elf = dir.join("guest.elf");
    let out = run(
        &["image", "guest", "--out", &elf.to_string_lossy()],
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    std::fs::read(&elf).expect("read the guest ELF")
}

fn with_size(mut payload: Vec<u8>, len: usize) -> Vec<u8> {
    payload.extend_from_slice(&(len as u32).to_le_bytes());
    payload
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).expect("gzip");
    with_size(e.finish().expect("gzip"), data.len())
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
    e.write_all(data).expect("xz");
    with_size(e.finish().expect("xz"), data.len())
}

fn zstd(data: &[u8]) -> Vec<u8> {
    with_size(zstd::stream::encode_all(data, 19).expect("zstd"), data.len())
}

fn lz4_legacy(data: &[u8]) -> Vec<u8> {
    let mut out = LZ4_LEGACY_MAGIC.to_vec();
    for chunk in data.chunks(8 << 20) {
        let block = lz4_flex::block::compress(chunk);
        out.extend_from_slice(&(block.len() as u32).to_le_bytes());
        out.extend_from_slice(&block);
    }
    with_size(out, data.len())
}

/// A bzImage as Linux lays it out (boot protocol 2.15): a boot sector and
/// 3 setup sectors holding the setup header, then the protected-mode part
/// with the payload 0x100 bytes in.
fn bzimage(payload: &[u8]) -> Vec<u8> {
    let setup_sects = 3usize;
    let payload_offset = 0x100usize;
    let pm_len = payload_offset + payload.len();
    let mut img = vec![0u8; (setup_sects + 1) * 512 + pm_len];
    img[0x1f1] = setup_sects as u8;
    img[0x1f4..0x1f8].copy_from_slice(&(pm_len.div_ceil(16) as u32).to_le_bytes()); // syssize
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x211] = 0x01; // loadflags: LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    img[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
    img[0x248..0x24c].copy_from_slice(&(payload_offset as u32).to_le_bytes());
    img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let start = (setup_sects + 1) * 512 + payload_offset;
    img[start..].copy_from_slice(payload);
    // Pad to what syssize says.
    img.resize((setup_sects + 1) * 512 + pm_len.div_ceil(16) * 16, 0);
    img
}

fn boot(kernel: &Path, extra: &[&str], timeout: &str) -> common::Output {
    let kernel = kernel.to_string_lossy();
    let mut args = vec![
        "run",
        "--kernel",
        &kernel,
        "--cmdline",
        CMDLINE,
        "--no-stdin",
        "--timeout",
        timeout,
    ];
    args.extend_from_slice(extra);
    run(&args, Duration::from_secs(90))
}

#[test]
fn each_payload_format_is_decompressed_on_the_host_and_boots() {
    let dir = scratch_dir("bzimage-host");
    let elf = guest_elf(&dir);
    let formats: [(&str, Encoder); 4] = [("gzip", gzip), ("xz", xz), ("zstd", zstd), ("lz4", lz4_legacy)];
    for (name, compress) in formats {
        let path = dir.join(format!("bzImage.{name}"));
        std::fs::write(&path, bzimage(&compress(&elf))).expect("write bzImage");
        let out = boot(&path, &["-v"], "30");
        assert_eq!(
            out.code,
            Some(0),
            "{name}: stdout:\n{}\nstderr:\n{}",
            out.stdout,
            out.stderr
        );
        assert!(out.stdout.contains("count=9592"), "{name}: no result:\n{}", out.stdout);
        assert!(
            out.stderr.contains(&format!("{name} payload decompressed on the host")),
            "{name}: stderr:\n{}",
            out.stderr
        );
        assert!(!out.stderr.contains(FALLBACK_WARNING), "{name}: {}", out.stderr);
    }
    // PVH, asked for by name, works for a bzImage decompressed on the host.
    let path = dir.join("bzImage.gzip");
    let out = boot(&path, &["--boot", "pvh"], "30");
    assert_eq!(out.code, Some(0), "--boot pvh: stderr:\n{}", out.stderr);
    assert!(out.stdout.contains("count=9592"), "--boot pvh:\n{}", out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_payload_kvmkit_cannot_decode_or_is_told_not_to_is_left_to_the_guest() {
    let dir = scratch_dir("bzimage-fallback");
    let elf = guest_elf(&dir);
    // A bzip2 payload (its magic; the guest's decompressor would read the rest).
    let mut bzip2 = b"BZh91AY&SY".to_vec();
    bzip2.extend_from_slice(&elf[..4096]);
    let path = dir.join("bzImage.bzip2");
    std::fs::write(&path, bzimage(&bzip2)).expect("write bzImage");
    let out = boot(&path, &[], "2");
    assert!(
        out.stderr.contains(FALLBACK_WARNING) && out.stderr.contains("bzip2"),
        "stderr:\n{}",
        out.stderr
    );
    assert_eq!(out.stderr.matches(FALLBACK_WARNING).count(), 1, "{}", out.stderr);
    assert!(!out.stdout.contains("count=9592"), "{}", out.stdout);

    // A gzip payload with --no-host-decompress: the bzImage boots as it is
    // (here its "decompressor" is the synthetic image's zero bytes, so the
    // guest never reaches its workload), and nothing is said about it.
    let path = dir.join("bzImage.gzip");
    std::fs::write(&path, bzimage(&gzip(&elf))).expect("write bzImage");
    let out = boot(&path, &["--no-host-decompress", "-v"], "2");
    assert!(!out.stdout.contains("count=9592"), "{}", out.stdout);
    assert!(!out.stderr.contains("decompressed on the host"), "{}", out.stderr);
    assert!(!out.stderr.contains(FALLBACK_WARNING), "{}", out.stderr);
    // PVH needs the host path.
    let out = boot(&path, &["--no-host-decompress", "--boot", "pvh"], "2");
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("not decompressed on the host"), "{}", out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}
