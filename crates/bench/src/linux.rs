//! `kvmkit bench --guest linux`: the paper's own programs (python3 prime script, memtester,
//! dd, POV-Ray, `openssl speed`, `7z b`, PostMark) from kvmkit's Debian rootfs
//! (`kvmkit image rootfs`).
//!
//! - host: the rootfs tree in a chroot, in a private mount namespace (proc, /dev, a tmpfs on
//!   /tmp, the run's scratch directory on /data);
//! - kvmkit / QEMU: Debian's cloud kernel and kvmkit's busybox initramfs; the rootfs image is
//!   a read-only virtio-blk disk (serial `kvmkit-rootfs`), a fresh ext4 scratch image the
//!   second (serial `kvmkit-data`); `/init` mounts them the same way and chroots.
//!
//! Either way `/kvmkit/bench.py NAME:ARG` runs one program and prints
//! `kvmkit-linux: NAME arg=ARG time_ns=NS result=R` lines, parsed by [`parse`].

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use kvmkit_images::{RootfsAssets, EXIT_STATUS_MARKER};

use crate::environment::Env;
use crate::kind::Kind;
use crate::measured::{Measured, NO_DIRECT_IO};
use crate::process::{last_lines, run_with_timeout, ChildOutput};
use crate::rows::Workload;

/// Serial (virtio-blk GET_ID) of the read-only root disk.
const ROOT_SERIAL: &str = "kvmkit-rootfs";
/// Serial of the scratch disk mounted on /data.
const DATA_SERIAL: &str = "kvmkit-data";
/// PATH for the harness, host and guest alike.
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Where and how big one run is.
#[derive(Clone, Copy)]
pub(super) struct Machine<'a> {
    /// kvmkit or QEMU (unused on the host).
    pub vmm: &'a Path,
    /// Directory for scratch directories and images.
    pub scratch: &'a Path,
    /// vCPUs.
    pub cpus: usize,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
}

/// What the Linux guests boot, and the rootfs both sides run.
pub struct LinuxGuest {
    /// The kernel (the cached Debian vmlinux, or `--kernel`).
    pub kernel: PathBuf,
    /// kvmkit's busybox initramfs.
    pub initramfs: PathBuf,
    /// Kernel release of the cached kernel (for the report).
    pub kernel_version: String,
    /// The rootfs tree and image.
    pub rootfs: RootfsAssets,
}

impl LinuxGuest {
    /// Builds (or finds in the cache) the kernel, initramfs and rootfs.
    pub fn prepare(kernel: Option<PathBuf>, assets: crate::LinuxAssetsFn<'_>) -> anyhow::Result<Self> {
        let (assets, rootfs) = assets()?;
        if let Some(k) = &kernel {
            if !k.is_file() {
                bail!(
                    "--kernel {}: no such file (give a kernel image that boots on this host)",
                    k.display()
                );
            }
        }
        Ok(Self {
            kernel: kernel.unwrap_or(assets.kernel),
            initramfs: assets.initramfs,
            kernel_version: assets.kernel_version,
            rootfs,
        })
    }

    /// Runs `w` once in `env` (run number `run`) and returns what it measured.
    pub(super) fn run(
        &self,
        env: Env,
        w: &Workload,
        run: usize,
        on: &Machine<'_>,
        timeout: Duration,
    ) -> anyhow::Result<Measured> {
        let Machine {
            vmm,
            scratch,
            cpus,
            memory_mib,
        } = *on;
        let name = format!("{}-{}-{run}", env.name(), w.spec.replace(':', "-"));
        // Whether a guest's scratch disk is cache=none (its reads cold).
        let mut cold = false;
        let out = match env {
            Env::Host => {
                let dir = scratch.join(name);
                std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
                let out = self.host(w, &dir, timeout);
                let _ = std::fs::remove_dir_all(&dir);
                let out = out?;
                if out.code != Some(0) {
                    bail!(
                        "the harness exited with {:?} on the host: {}",
                        out.code,
                        last_lines(&out.stderr, &out.stdout)
                    );
                }
                out
            }
            Env::Kvmkit | Env::Qemu => {
                let data = match w.kind.disk_mib(w.arg) {
                    Some(mib) => {
                        let img = scratch.join(format!("{name}.img"));
                        make_ext4(&img, mib)?;
                        Some(img)
                    }
                    None => None,
                };
                cold = !w.kind.cache_option(data.as_deref()).is_empty();
                let mem = memory_mib.to_string();
                let cmd = if env == Env::Kvmkit {
                    self.kvmkit_command(vmm, w, cpus, &mem, data.as_deref(), timeout)
                } else {
                    self.qemu_command(vmm, w, cpus, &mem, data.as_deref())
                };
                let out = run_with_timeout(cmd, timeout + Duration::from_secs(10));
                if let Some(img) = &data {
                    let _ = std::fs::remove_file(img);
                }
                let out = out?;
                match guest_status(&out.stdout) {
                    Some(0) => out,
                    Some(s) => bail!(
                        "the guest's harness exited with {s} under {}: {}",
                        env.name(),
                        last_lines("", &out.stdout)
                    ),
                    None => bail!(
                        "{} ended ({:?}) before the guest reported an exit status: {}",
                        env.name(),
                        out.code,
                        last_lines(&out.stderr, &out.stdout)
                    ),
                }
            }
        };
        let mut kinds = Vec::new();
        for k in w.kind.siblings() {
            let (ns, result) =
                parse(&out.stdout, k).with_context(|| format!("no `kvmkit-linux: {}` line in the output", k.name()))?;
            kinds.push((k, vec![(ns, result)]));
        }
        let note = if env.is_guest() && w.kind.uncached_disk() && !cold {
            Some(NO_DIRECT_IO.to_owned())
        } else {
            out.stdout
                .lines()
                .find(|l| l.contains("kvmkit-linux: dd-read") && l.contains("direct=0"))
                .map(|_| "the file system refused O_DIRECT: the read followed a page-cache drop".to_owned())
        };
        Ok(Measured { kinds, note, io: None })
    }

    /// The harness in a chroot of the rootfs tree, in a private mount namespace.
    fn host(&self, w: &Workload, data: &Path, timeout: Duration) -> anyhow::Result<ChildOutput> {
        let cmd = chroot_command(&self.rootfs.tree, data, &w.spec)?;
        run_with_timeout(cmd, timeout)
    }

    /// The guest's command line: the assets' defaults plus the command `/init` runs.
    fn cmdline(&self, w: &Workload) -> String {
        format!(
            "{} kvmkit.cmd=b64:{}",
            kvmkit_images::LINUX_ASSETS_CMDLINE,
            base64(guest_script(&w.spec).as_bytes())
        )
    }

    fn kvmkit_command(
        &self,
        exe: &Path,
        w: &Workload,
        cpus: usize,
        mem: &str,
        data: Option<&Path>,
        timeout: Duration,
    ) -> Command {
        let mut cmd = Command::new(exe);
        cmd.args(["run", "--no-stdin", "--kernel"])
            .arg(&self.kernel)
            .arg("--initrd")
            .arg(&self.initramfs)
            .args(["--cmdline", &self.cmdline(w)])
            .args(["--cpus", &cpus.to_string(), "--memory", mem])
            .args(["--timeout", &format!("{:.0}", timeout.as_secs_f64())])
            .arg("--disk")
            .arg(format!("path={},ro=on,id={ROOT_SERIAL}", self.rootfs.image.display()));
        if let Some(img) = data {
            cmd.arg("--disk").arg(format!(
                "path={},id={DATA_SERIAL}{}",
                img.display(),
                w.kind.cache_option(Some(img))
            ));
        }
        cmd
    }

    fn qemu_command(&self, qemu: &Path, w: &Workload, cpus: usize, mem: &str, data: Option<&Path>) -> Command {
        let mut cmd = Command::new(qemu);
        cmd.args([
            "-M",
            "microvm",
            "-accel",
            "kvm",
            "-cpu",
            "host,-arch-capabilities,+invtsc",
        ])
        .args(["-m", mem, "-smp", &cpus.to_string(), "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&self.kernel)
        .arg("-initrd")
        .arg(&self.initramfs)
        .args(["-append", &self.cmdline(w)])
        .args(["-global", "virtio-mmio.force-legacy=false"])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=none,id=root,readonly=on",
            self.rootfs.image.display()
        ))
        .args(["-device", &format!("virtio-blk-device,drive=root,serial={ROOT_SERIAL}")]);
        if let Some(img) = data {
            cmd.arg("-drive")
                .arg(format!(
                    "file={},format=raw,if=none,id=data{}",
                    img.display(),
                    w.kind.cache_option(Some(img))
                ))
                .args(["-device", &format!("virtio-blk-device,drive=data,serial={DATA_SERIAL}")]);
        }
        cmd
    }
}

/// The shell script `/init` runs in the guest: find the disks by serial, mount the rootfs
/// read-only (and the scratch disk on /data), chroot into it and run the harness.
pub fn guest_script(spec: &str) -> String {
    format!(
        "r=;d=;for b in /sys/block/vd*;do case $(cat $b/serial 2>/dev/null) in \
         {ROOT_SERIAL}) r=/dev/${{b##*/}};; {DATA_SERIAL}) d=/dev/${{b##*/}};; esac;done;\
         [ -n \"$r\" ]||{{ echo 'kvmkit-linux: no {ROOT_SERIAL} disk';exit 90;}};\
         mkdir -p /mnt;mount -t ext4 -o ro,noload $r /mnt||exit 91;\
         [ -z \"$d\" ]||mount -t ext4 $d /mnt/data||exit 92;\
         mount -t proc p /mnt/proc;mount -t sysfs s /mnt/sys;mount -t devtmpfs d /mnt/dev;mount -t tmpfs t /mnt/tmp;\
         env -i PATH={PATH} LC_ALL=C HOME=/root chroot /mnt /usr/bin/python3 /kvmkit/bench.py {spec};s=$?;\
         [ -z \"$d\" ]||umount /mnt/data;exit $s"
    )
}

/// `/usr/bin/python3 /kvmkit/bench.py SPEC` chrooted into `tree`, in a new mount namespace
/// with proc, the host's /dev, a tmpfs on /tmp and `data` bound on /data. Needs root.
fn chroot_command(tree: &Path, data: &Path, spec: &str) -> anyhow::Result<Command> {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).context("a path contains a NUL byte");
    let (root, proc_at, dev_at, tmp_at, data_at, data_src) = (
        c(tree)?,
        c(&tree.join("proc"))?,
        c(&tree.join("dev"))?,
        c(&tree.join("tmp"))?,
        c(&tree.join("data"))?,
        c(data)?,
    );
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["/kvmkit/bench.py", spec])
        .env_clear()
        .env("PATH", PATH)
        .env("LC_ALL", "C")
        .env("HOME", "/root");
    let hook = move || -> std::io::Result<()> {
        let ok = |r: libc::c_int| {
            if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        let none = std::ptr::null::<libc::c_char>();
        // SAFETY: plain syscalls on NUL-terminated strings owned by this closure, made
        // between fork and exec; none allocates.
        unsafe {
            ok(libc::unshare(libc::CLONE_NEWNS))?;
            ok(libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            ok(libc::mount(
                c"proc".as_ptr(),
                proc_at.as_ptr(),
                c"proc".as_ptr(),
                0,
                std::ptr::null(),
            ))?;
            ok(libc::mount(
                c"/dev".as_ptr(),
                dev_at.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
            ok(libc::mount(
                c"tmpfs".as_ptr(),
                tmp_at.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            ))?;
            ok(libc::mount(
                data_src.as_ptr(),
                data_at.as_ptr(),
                none,
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
            ok(libc::chroot(root.as_ptr()))?;
            ok(libc::chdir(c"/".as_ptr()))
        }
    };
    // SAFETY: the hook only makes async-signal-safe syscalls (see above).
    unsafe { cmd.pre_exec(hook) };
    Ok(cmd)
}

/// A fresh ext4 image of `mib` MiB at `path` (inode tables and journal written now, so the
/// guest starts no lazy-init writes during a measurement).
fn make_ext4(path: &Path, mib: u64) -> anyhow::Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.set_len(mib << 20)
        .with_context(|| format!("cannot size {}", path.display()))?;
    drop(f);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(path)
        .output()
        .context("cannot run mkfs.ext4 (apt-get install e2fsprogs)")?;
    if !out.status.success() {
        bail!(
            "mkfs.ext4 {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The status `/init` printed (`KVMKIT-EXIT-STATUS=N`), if it got that far.
fn guest_status(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').split(EXIT_STATUS_MARKER).nth(1))
        .find_map(|s| s.trim().parse().ok())
}

/// `(time_ns, result)` of `kind`'s `kvmkit-linux:` line in the harness's output.
pub fn parse(text: &str, kind: Kind) -> Option<(u64, u64)> {
    let prefix = format!("kvmkit-linux: {} ", kind.name());
    text.lines().find_map(|line| {
        let rest = line.trim_end_matches('\r').split(&prefix).nth(1)?;
        let field = |k: &str| {
            rest.split_ascii_whitespace()
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some((field("time_ns")?, field("result")?))
    })
}

/// Standard base64 (RFC 4648, with padding), for `kvmkit.cmd=b64:`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harness_lines_parse() {
        let out = "boot noise\r\nkvmkit-linux: dd-write arg=10 time_ns=14140090 result=10\r\n\
                   kvmkit-linux: dd-read arg=10 time_ns=26171587 result=10 direct=1 dropped=1\r\n\
                   KVMKIT-EXIT-STATUS=0\r\n";
        assert_eq!(parse(out, Kind::DdWrite), Some((14_140_090, 10)));
        assert_eq!(parse(out, Kind::DdRead), Some((26_171_587, 10)));
        assert_eq!(parse(out, Kind::PovRay), None);
        assert_eq!(guest_status(out), Some(0));
        assert_eq!(guest_status("[ 1.0] x\nKVMKIT-EXIT-STATUS=91\n"), Some(91));
        assert_eq!(guest_status("no marker"), None);
        let o = "kvmkit-linux: openssl arg=1 time_ns=588235294 result=170 raw=170.0sign/s\n";
        assert_eq!(parse(o, Kind::OpenSsl), Some((588_235_294, 170)));
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn the_guest_script_fits_the_kernel_command_line() {
        let s = guest_script("postmark:20000");
        assert!(s.contains("/kvmkit/bench.py postmark:20000"));
        // x86's COMMAND_LINE_SIZE is 2048, with the assets' defaults in front.
        assert!(base64(s.as_bytes()).len() + 200 < 2048, "{}", s.len());
    }
}
