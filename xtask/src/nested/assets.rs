//! Host-side inputs of the lab, fetched once into `${KVMKIT_CACHE:-~/.cache/kvmkit}/nested/`:
//! Debian's generic kernel for L1 with its kvm modules, busybox-static, and a static kvmkit.
//! Packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x`, never installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use kvmkit_images::debian::{find_deb, Apt};

/// The L1 kernel's meta package (resolved to the versioned package with `apt-cache depends`).
const L1_KERNEL_META: &str = "linux-image-amd64";
/// The modules whose dependency chains L1 loads, in order: kvm_amd (irqbypass, kvm, ccp, kvm_amd
/// on Debian 12) and tun (`/dev/net/tun` for the net-* scenarios' taps; a module in Debian's
/// generic kernel). A built-in one has nothing to load.
/// kvm_amd, tun for the net-* scenarios, and virtio-blk + ext4 for the bench rootfs disk.
const L1_TOP_MODULES: &[&str] = &["kvm_amd", "tun", "virtio_mmio", "virtio_blk", "ext4"];

/// The L1 kernel and the modules to insmod in order.
pub struct L1Kernel {
    /// Debian's generic bzImage.
    pub bzimage: PathBuf,
    /// The kernel release, e.g. `6.1.0-56-amd64`.
    pub version: String,
    /// `.ko` files in load order.
    pub modules: Vec<PathBuf>,
}

/// `${KVMKIT_CACHE:-~/.cache/kvmkit}`.
pub fn cache_root() -> Result<PathBuf> {
    match std::env::var_os("KVMKIT_CACHE") {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
        _ => {
            let home = std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .context("neither KVMKIT_CACHE nor HOME is set")?;
            Ok(PathBuf::from(home).join(".cache/kvmkit"))
        }
    }
}

/// Runs `cmd`, returning its stdout; a failure carries the end of its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {line}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{line} failed ({}): {}", out.status, tail.join(" | "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|d| d.join(tool).is_file())
        })
        .unwrap_or(false)
}

/// Makes sure `tool` is on the host, installing Debian package `package` if it is not.
pub fn ensure_tool(tool: &str, package: &str) -> Result<()> {
    if have(tool) {
        return Ok(());
    }
    eprintln!("nested: {tool} is missing; installing {package}");
    let _ = run(Command::new("apt-get").args(["update", "-qq"]));
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", package])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    if !have(tool) {
        bail!("{tool} is still missing after installing {package}");
    }
    Ok(())
}

/// Downloads `package` into `debs` unless a `.deb` of it is there already; returns its path.
fn download(debs: &Path, package: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(debs)?;
    if let Ok(deb) = find_deb(debs, package) {
        return Ok(deb);
    }
    eprintln!("nested: apt-get download {package}");
    Apt::new(&progress).download(debs, &[package])?;
    Ok(find_deb(debs, package)?)
}

/// `linux-image-amd64` -> `linux-image-<version>-amd64`.
fn resolve_kernel_package() -> Result<String> {
    Ok(Apt::new(&progress).resolve_kernel_package(L1_KERNEL_META)?)
}

fn progress(step: &str) {
    eprintln!("nested: {step}");
}

/// The L1 kernel and its kvm modules, from the cache or fetched into `<nested>/l1`.
pub fn l1_kernel(nested: &Path) -> Result<L1Kernel> {
    let dir = nested.join("l1");
    if let Some(k) = read_l1(&dir)? {
        return Ok(k);
    }
    ensure_tool("depmod", "kmod")?;
    ensure_tool("modprobe", "kmod")?;
    let package = resolve_kernel_package()?;
    let deb = download(&nested.join("debs"), &package)?;
    let tmp = nested.join("l1.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let root = tmp.join("root");
    std::fs::create_dir_all(&root)?;
    eprintln!("nested: unpacking {}", deb.display());
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let vmlinuz = std::fs::read_dir(root.join("boot"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("the kernel package has no /boot/vmlinuz-*")?;
    let version = vmlinuz
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    // The package ships no modules.dep: build one, then ask modprobe for the load order.
    run(Command::new("depmod").arg("-b").arg(&root).arg(&version))?;
    let out = tmp.join("out");
    std::fs::create_dir_all(out.join("modules"))?;
    let mut order: Vec<String> = Vec::new();
    let mut shown = String::new();
    for top in L1_TOP_MODULES {
        let show = run(Command::new("modprobe")
            .arg("-d")
            .arg(&root)
            .args(["-S", &version, "--show-depends", top]))?;
        for line in show.lines() {
            let Some(rest) = line.strip_prefix("insmod ") else {
                continue;
            };
            let path = PathBuf::from(rest.split_whitespace().next().unwrap_or_default());
            let name = path
                .file_name()
                .context("bad modprobe line")?
                .to_string_lossy()
                .into_owned();
            if order.contains(&name) {
                continue;
            }
            std::fs::copy(&path, out.join("modules").join(&name))
                .with_context(|| format!("copying {}", path.display()))?;
            order.push(name);
        }
        shown.push_str(&show);
    }
    if !order
        .iter()
        .any(|n| n.starts_with("kvm-amd") || n.starts_with("kvm_amd"))
    {
        bail!("modprobe --show-depends kvm_amd named no kvm-amd module:\n{shown}");
    }
    std::fs::copy(&vmlinuz, out.join("bzImage"))?;
    std::fs::write(out.join("modules.order"), order.join("\n") + "\n")?;
    std::fs::write(out.join("version"), format!("{version}\n"))?;
    std::fs::write(out.join("tops"), L1_TOP_MODULES.join(" ") + "\n")?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&out, &dir)?;
    std::fs::remove_dir_all(&tmp)?;
    read_l1(&dir)?.context("the L1 kernel cache is incomplete right after building it")
}

fn read_l1(dir: &Path) -> Result<Option<L1Kernel>> {
    let (Ok(version), Ok(order), Ok(tops)) = (
        std::fs::read_to_string(dir.join("version")),
        std::fs::read_to_string(dir.join("modules.order")),
        std::fs::read_to_string(dir.join("tops")),
    ) else {
        return Ok(None);
    };
    // A cache made for other top modules (before tun was added) is rebuilt from the cached .deb.
    if tops.trim() != L1_TOP_MODULES.join(" ") {
        return Ok(None);
    }
    let modules: Vec<PathBuf> = order
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| dir.join("modules").join(l))
        .collect();
    if !dir.join("bzImage").is_file() || modules.is_empty() || modules.iter().any(|m| !m.is_file()) {
        return Ok(None);
    }
    Ok(Some(L1Kernel {
        bzimage: dir.join("bzImage"),
        version: version.trim().to_string(),
        modules,
    }))
}

/// busybox-static's binary, from the cache or fetched into `<nested>/busybox`.
pub fn busybox(nested: &Path) -> Result<PathBuf> {
    let path = nested.join("busybox");
    if path.is_file() {
        return Ok(path);
    }
    let deb = download(&nested.join("debs"), "busybox-static")?;
    let tmp = nested.join("busybox.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    let bin = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| tmp.join(p))
        .find(|p| p.is_file())
        .context("busybox-static has no bin/busybox")?;
    std::fs::copy(&bin, nested.join("busybox.part"))?;
    std::fs::rename(nested.join("busybox.part"), &path)?;
    std::fs::remove_dir_all(&tmp)?;
    Ok(path)
}

/// The busybox applets as paths without the leading slash (`bin/sh`, `usr/bin/timeout`, ...).
pub fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = run(Command::new(busybox).arg("--list-full"))?;
    Ok(out
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// Builds kvmkit as a static binary (`--target` keeps build scripts dynamic) and returns it;
/// with `build` false, returns the one built last.
pub fn static_kvmkit(workspace: &Path, build: bool) -> Result<PathBuf> {
    let target = "x86_64-unknown-linux-gnu";
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let bin = target_dir.join(target).join("release/kvmkit");
    if build {
        build_static(workspace, target)?;
    } else if !bin.is_file() {
        bail!("--no-build: there is no {} yet", bin.display());
    }
    if has_interpreter(&bin)? {
        bail!(
            "{} is dynamically linked (PT_INTERP present); L1 has no shared libraries",
            bin.display()
        );
    }
    Ok(bin)
}

fn build_static(workspace: &Path, target: &str) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("nested: building a static kvmkit (cargo build --release --target {target} -p kvmkit)");
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", target, "-p", "kvmkit"])
        .current_dir(workspace)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .stdin(Stdio::null())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building the static kvmkit failed ({status})");
    }
    Ok(())
}

/// Whether the ELF at `path` asks for a dynamic loader (has a PT_INTERP program header).
fn has_interpreter(path: &Path) -> Result<bool> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    if data.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        bail!("{} is not a 64-bit ELF", path.display());
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        bail!("truncated ELF")
    };
    Ok((0..phnum).any(|i| data.get(phoff + i * phentsize..phoff + i * phentsize + 4) == Some(&3u32.to_le_bytes()[..])))
}

/// The L2 guest assets (`kvmkit image fetch`'s `linux/` directory) and their kernel version.
pub struct L2Assets {
    /// The directory to copy into L1 as `$KVMKIT_CACHE/linux`.
    pub dir: PathBuf,
    /// The L2 kernel release recorded in the manifest.
    pub kernel_version: String,
}

/// Whether this kvmkit offers `run --linux`.
pub fn kvmkit_has_linux(kvmkit: &Path) -> bool {
    Command::new(kvmkit)
        .args(["run", "--help"])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--linux"))
        .unwrap_or(false)
}

/// Runs `kvmkit image fetch` (idempotent, cached) and returns the assets it built; `Ok(None)`
/// with a printed reason when kvmkit has no `--linux` yet or the assets cannot be built.
pub fn l2_assets(kvmkit: &Path, cache: &Path) -> Result<Option<L2Assets>> {
    if !kvmkit_has_linux(kvmkit) {
        eprintln!("nested: kvmkit has no `run --linux` yet; the linux-* scenarios will fail");
        return Ok(None);
    }
    eprintln!("nested: kvmkit image fetch");
    let status = Command::new(kvmkit)
        .args(["image", "fetch"])
        .env("KVMKIT_CACHE", cache)
        .stdin(Stdio::null())
        .status()
        .context("running kvmkit image fetch")?;
    if !status.success() {
        eprintln!("nested: `kvmkit image fetch` failed ({status}); the linux-* scenarios will fail");
        return Ok(None);
    }
    let dir = cache.join("linux");
    let manifest = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    let kernel_version = json
        .get("kernel_version")
        .and_then(|v| v.as_str())
        .with_context(|| format!("{} has no kernel_version", manifest.display()))?
        .to_string();
    Ok(Some(L2Assets { dir, kernel_version }))
}

/// Runs `kvmkit image rootfs` (idempotent, cached) and returns the image to attach to L1 as
/// its read-only virtio disk and the manifest to put beside it; `Ok(None)` with a printed
/// reason when it cannot be built (the bench-linux scenario then fails).
pub fn rootfs(kvmkit: &Path, cache: &Path) -> Result<Option<(PathBuf, PathBuf)>> {
    eprintln!("nested: kvmkit image rootfs");
    let status = Command::new(kvmkit)
        .args(["image", "rootfs"])
        .env("KVMKIT_CACHE", cache)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .context("running kvmkit image rootfs")?;
    let dir = cache.join("rootfs");
    let (image, manifest) = (dir.join("rootfs.ext4"), dir.join("manifest.json"));
    if !status.success() || !image.is_file() || !manifest.is_file() {
        eprintln!("nested: `kvmkit image rootfs` failed ({status}); the bench-linux scenario will fail");
        return Ok(None);
    }
    Ok(Some((image, manifest)))
}

/// The line in `/hello.txt` of the lab's ext4 image (also `/lab/hello.txt` in L1, to compare).
pub const EXT4_HELLO: &str = "kvmkit nested lab: hello from an ext4 image made on the host";

/// Makes the blk-* scenarios' disk: a 16 MiB ext4 image holding `/hello.txt`, written with
/// `mkfs.ext4 -d` (no mount), at `<out_dir>/blk/ext4.img`.
pub fn ext4_image(out_dir: &Path) -> Result<PathBuf> {
    ensure_tool("mkfs.ext4", "e2fsprogs")?;
    let dir = out_dir.join("blk");
    let src = dir.join("src");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    std::fs::write(src.join("hello.txt"), format!("{EXT4_HELLO}\n"))?;
    let img = dir.join("ext4.img");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&src)
        .arg(&img)
        .arg("16M"))?;
    Ok(img)
}

/// A dynamically linked host program and what it loads: `(path in L1, host file)` for the
/// program itself (at `l1_path`), each library `ldd` names (at its host path) and the dynamic
/// loader, so it runs in L1 as on the host.
pub fn program_with_libs(tool: &str, package: &str, l1_path: &str) -> Result<Vec<(String, PathBuf)>> {
    ensure_tool(tool, package)?;
    let host = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .with_context(|| format!("{tool} not found on the host"))?;
    binary_with_libs(&host, l1_path)
}

/// The host binary `host` at `l1_path` in L1, and, when it is dynamically linked, each library
/// `ldd` names (at its host path) and the dynamic loader; a static binary comes alone.
pub fn binary_with_libs(host: &Path, l1_path: &str) -> Result<Vec<(String, PathBuf)>> {
    let mut files = vec![(l1_path.trim_start_matches('/').to_string(), host.to_path_buf())];
    if !has_interpreter(host)? {
        return Ok(files);
    }
    ensure_tool("ldd", "libc-bin")?;
    let out = run(Command::new("ldd").arg(host))?;
    for line in out.lines() {
        // "libx.so.1 => /lib/x86_64-linux-gnu/libx.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)";
        // linux-vdso has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        files.push((path.trim_start_matches('/').to_string(), PathBuf::from(path)));
    }
    if !files.iter().any(|(p, _)| p.contains("ld-linux")) {
        bail!("ldd {} named no dynamic loader:\n{out}", host.display());
    }
    Ok(files)
}
