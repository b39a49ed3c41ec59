//! A real fetch of Debian's cloud kernel and busybox-static into a temporary cache.
//! Skips (with a printed reason) where `apt-get` or `dpkg-deb` is missing.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use kvmkit_images::{cached_linux_assets, fetch_linux_assets, list, Cache};

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn fetch_builds_validated_assets() {
    for tool in ["apt-get", "apt-cache", "dpkg-deb"] {
        if !have(tool) {
            eprintln!("skipping the real fetch: {tool} is not installed");
            return;
        }
    }
    let root = std::env::temp_dir().join(format!("kvmkit-images-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let cache = Cache::new(&root);
    assert_eq!(cached_linux_assets(&cache).unwrap(), None);

    let start = Instant::now();
    let assets = fetch_linux_assets(&cache, &|m| eprintln!("fetch: {m}")).unwrap();
    eprintln!("first fetch took {:?}", start.elapsed());
    let kernel = std::fs::read(&assets.kernel).unwrap();
    assert!(kernel.starts_with(b"\x7fELF\x02"), "vmlinux is an ELF64");
    assert!(
        assets.kernel_version.ends_with("-cloud-amd64"),
        "{}",
        assets.kernel_version
    );
    assert!(!assets.busybox_version.is_empty());
    let bz = std::fs::read(&assets.bzimage).unwrap();
    assert_eq!(&bz[0x202..0x206], b"HdrS");

    let initramfs = std::fs::read(&assets.initramfs).unwrap();
    assert!(initramfs.starts_with(b"070701"));
    assert_eq!(initramfs.len() % 4, 0);
    let find = |needle: &[u8]| initramfs.windows(needle.len()).any(|w| w == needle);
    assert!(find(b"TRAILER!!!\0"));
    assert!(find(b"kvmkit_outb 1536 $status"));
    assert!(
        find(b"virtio_mmio.ko"),
        "virtio_mmio is a module in Debian's cloud kernel"
    );
    assert!(find(b"# built into the kernel: ext4"));
    if have("cpio") {
        let out = Command::new("cpio")
            .args(["-t", "--quiet", "-F"])
            .arg(&assets.initramfs)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        for name in ["init", "bin/busybox", "bin/sh", "dev/console", "bin/kvmkit-outb"] {
            assert!(listing.lines().any(|l| l == name), "{name} missing from\n{listing}");
        }
    }

    // Idempotent: the second call reuses the cache.
    let start = Instant::now();
    assert_eq!(
        fetch_linux_assets(&cache, &|m| panic!("unexpected work: {m}")).unwrap(),
        assets
    );
    eprintln!("cached fetch took {:?}", start.elapsed());
    let items = list(&cache).unwrap();
    assert_eq!(items.len(), 4);
    assert!(items
        .iter()
        .any(|i| i.name == "linux-kernel" && i.bytes == kernel.len() as u64));

    // Nothing left behind but the asset directory.
    let leftovers: Vec<PathBuf> = std::fs::read_dir(&root).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(leftovers, [cache.linux_dir()]);
    std::fs::remove_dir_all(&root).unwrap();
}
