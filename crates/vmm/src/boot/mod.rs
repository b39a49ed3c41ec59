//! Loading a guest kernel into memory and preparing its boot protocol.
//!
//! Two image formats (bzImage, ELF) and two entry protocols (the Linux 64-bit
//! boot protocol and PVH) share one path, [`boot`]: the image's headers are
//! checked, the image goes into guest memory, the protocol's structures
//! (zero page or `hvm_start_info`, memory map, command line, initrd) are
//! written, and the returned [`EntryPoint`] tells the vCPU where to start.
//!
//! A bzImage whose payload kvmkit can decompress (gzip, xz, zstd, LZ4) is
//! unpacked on the host (`unpack.rs`), its vmlinux streamed straight into
//! guest memory (`elf_stream.rs`, never held whole), and it boots like an
//! ELF kernel, with the bzImage's setup header in the zero page.

mod bzimage;
mod decompress;
mod elf_check;
mod elf_note;
mod elf_stream;
mod image;
mod linux;
mod lz4_legacy;
mod pvh;
pub mod unpack;

use std::fs::File;
use std::io::Seek;
use std::path::PathBuf;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{load_cmdline, KernelLoaderResult};
use vm_memory::{Address, Bytes, GuestAddress};

pub use image::{detect_format, KernelFormat};

use crate::arch::x86_64::e820::memory_map;
use crate::arch::x86_64::layout::{low_ram_end, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use crate::arch::x86_64::regs::EntryPoint;
use crate::memory::GuestMemoryMmap;

/// Which entry protocol to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BootProtocol {
    /// PVH when the ELF carries a PVH note, else the Linux boot protocol.
    #[default]
    Auto,
    /// Linux 64-bit boot protocol (bzImage or ELF vmlinux).
    Linux,
    /// PVH (ELF with XEN_ELFNOTE_PHYS32_ENTRY).
    Pvh,
}

/// What to boot.
#[derive(Debug)]
pub struct BootSource {
    /// The kernel image, already opened (a file or an in-memory image).
    pub kernel: File,
    /// Where the kernel came from, for messages.
    pub kernel_name: String,
    /// Optional initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Requested entry protocol.
    pub protocol: BootProtocol,
    /// Guest-physical address of the ACPI RSDP, if the VMM wrote ACPI tables.
    pub rsdp: Option<u64>,
    /// Decompress a bzImage's payload on the host and boot the vmlinux in it
    /// (falling back to the bzImage's own decompressor when it cannot).
    pub host_decompress: bool,
}

use crate::files::check_input_file;

/// Errors loading a kernel or writing boot structures.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The image is neither an ELF nor a bzImage.
    #[error("{0} is neither a Linux bzImage nor an ELF kernel")]
    UnknownFormat(String),
    /// Reading the image failed.
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    /// linux-loader rejected the image.
    #[error("cannot load kernel {0}: {1}")]
    Load(String, linux_loader::loader::Error),
    /// PVH was requested but the ELF has no PVH entry note.
    #[error("{0} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); use --boot linux")]
    NoPvhNote(String),
    /// PVH was requested for a bzImage that was not decompressed on the host.
    #[error("{0} is a bzImage that was not decompressed on the host; PVH needs an ELF kernel with a PVH note")]
    PvhNeedsElf(String),
    /// The ELF image's headers are wrong (a precise reason).
    #[error("kernel {0} {1}")]
    Elf(String, elf_check::ElfFault),
    /// The bzImage is shorter than its setup header says.
    #[error("kernel {0} is truncated: its setup header says {1} bytes but the file has {2} (copy the image again)")]
    BzImageTruncated(String, u64, u64),
    /// The entry point (ELF entry or PVH note) lies outside guest RAM.
    #[error(
        "kernel {0} has its entry point at {1:#x}, outside the guest's {2} MiB of RAM: the image is corrupt or not \
         an x86_64 kernel"
    )]
    EntryOutsideRam(String, u64, u64),
    /// The kernel does not fit in guest memory.
    #[error("kernel {0} does not fit in {1} MiB of guest memory; give the VM more --memory")]
    KernelTooBig(String, u64),
    /// The initrd does not fit below the kernel's limit.
    #[error("initrd {0} ({1} bytes) does not fit in guest memory; give the VM more --memory")]
    InitrdTooBig(String, u64),
    /// The command line is too long or malformed.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// Writing a boot structure to guest memory failed.
    #[error("cannot write {0} to guest memory")]
    Write(&'static str),
}

/// An initrd placed in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest-physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Loads the kernel and its boot information; returns where the BSP starts.
pub fn boot(mem: &GuestMemoryMmap, mem_size: u64, source: &mut BootSource) -> Result<EntryPoint, BootError> {
    let name = source.kernel_name.clone();
    let format = detect_format(&mut source.kernel).map_err(|e| BootError::Read(name.clone(), e))?;
    let format = format.ok_or_else(|| BootError::UnknownFormat(name.clone()))?;
    let unpacked = match format {
        KernelFormat::Elf => {
            elf_check::check(&mut source.kernel, mem_size).map_err(|f| BootError::Elf(name.clone(), f))?;
            None
        }
        KernelFormat::BzImage => {
            if let Some((want, have)) = image::bzimage_truncated(&mut source.kernel) {
                return Err(BootError::BzImageTruncated(name, want, have));
            }
            if source.host_decompress {
                host_unpack(mem, &mut source.kernel, &name, mem_size)?
            } else {
                None
            }
        }
    };
    // The unpacked vmlinux boots as an ELF kernel with the bzImage's setup header.
    let (loaded, format, header) = match unpacked {
        Some((loaded, header)) => (loaded, KernelFormat::Elf, Some(header)),
        None => {
            let loaded = image::load(mem, &mut source.kernel, format).map_err(load_error(&name, mem_size))?;
            let header = loaded.setup_header;
            (loaded, format, header)
        }
    };
    let pvh_entry = image::pvh_entry(&loaded);
    let use_pvh = match (source.protocol, format, pvh_entry) {
        (BootProtocol::Pvh, KernelFormat::BzImage, _) => return Err(BootError::PvhNeedsElf(name)),
        (BootProtocol::Pvh, _, None) => return Err(BootError::NoPvhNote(name)),
        (BootProtocol::Pvh, _, Some(_)) => true,
        (BootProtocol::Auto, _, Some(_)) => true,
        _ => false,
    };
    let entry = match (use_pvh, pvh_entry) {
        (true, Some(rip)) => rip,
        _ => image::linux64_entry(&loaded, format),
    };
    if entry >= low_ram_end(mem_size) {
        return Err(BootError::EntryOutsideRam(name, entry, mem_size >> 20));
    }
    let cmdline = build_cmdline(&source.cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline).map_err(|_| BootError::Write("command line"))?;
    let kernel_end = loaded.kernel_end;
    let initrd = match &source.initrd {
        Some(path) => Some(load_initrd(
            mem,
            mem_size,
            path,
            kernel_end,
            header.map(|h| h.initrd_addr_max),
        )?),
        None => None,
    };
    let map = memory_map(mem_size);
    let cmdline_len = source.cmdline.len() as u32 + 1;
    match (use_pvh, pvh_entry) {
        (true, Some(rip)) => {
            pvh::write_start_info(mem, &map, initrd, source.rsdp).map(|start_info| EntryPoint::Pvh { rip, start_info })
        }
        _ => linux::write_zero_page(mem, &map, header, cmdline_len, initrd, source.rsdp).map(|boot_params| {
            EntryPoint::Linux64 {
                rip: image::linux64_entry(&loaded, format),
                boot_params,
            }
        }),
    }
}

/// Decompresses a bzImage's payload on the host straight into guest memory
/// (the vmlinux it holds, loaded as an ELF kernel); `None` (after one log
/// line with the reason) when the bzImage must boot as it is.
fn host_unpack(
    mem: &GuestMemoryMmap,
    kernel: &mut File,
    name: &str,
    mem_size: u64,
) -> Result<Option<(LoadedKernel, linux_loader::loader::bootparam::setup_header)>, BootError> {
    let read_error = |e| BootError::Read(name.to_owned(), e);
    let len = kernel.metadata().map_err(read_error)?.len();
    let started = std::time::Instant::now();
    let cap = unpack::cap(mem_size);
    // The payload's reader borrows the file until the kernel is loaded.
    let streamed = match unpack::open_payload(kernel, len, cap).map_err(read_error)? {
        unpack::Opened::Payload(p) => Ok((
            elf_stream::load(mem, mem_size, p.decoded, p.compression, cap),
            p.header,
            p.compression,
        )),
        unpack::Opened::Fallback(why) => Err(why),
    };
    let (streamed, header, compression) = match streamed {
        Ok(s) => s,
        Err(why) => return fallback(kernel, name, &why),
    };
    let elf_name = format!("{name} (its decompressed {} payload)", compression.name());
    match streamed {
        elf_stream::Streamed::Loaded { result, len } => {
            tracing::info!(
                "{name}: {} payload decompressed on the host, {} KiB in {} ms",
                compression.name(),
                len >> 10,
                started.elapsed().as_millis()
            );
            Ok(Some((result, header)))
        }
        elf_stream::Streamed::Undecodable(e) => fallback(kernel, name, &unpack::undecodable(compression, &e)),
        elf_stream::Streamed::NotElf => fallback(kernel, name, &unpack::not_elf(compression)),
        elf_stream::Streamed::Fault(f) => Err(BootError::Elf(elf_name, f)),
        elf_stream::Streamed::Load(e) => Err(load_error(&elf_name, mem_size)(e)),
    }
}

/// Logs why the bzImage boots as it is, and rewinds it for that.
fn fallback<T>(kernel: &mut File, name: &str, why: &str) -> Result<Option<T>, BootError> {
    tracing::warn!("kernel {name}: {why}; the bzImage boots with its own decompressor (slower)");
    kernel
        .seek(std::io::SeekFrom::Start(0))
        .map_err(|e| BootError::Read(name.to_owned(), e))?;
    Ok(None)
}

/// Maps linux-loader's errors: a short read means the image does not fit in RAM.
fn load_error(name: &str, mem_size: u64) -> impl Fn(linux_loader::loader::Error) -> BootError + '_ {
    move |e| match e {
        linux_loader::loader::Error::Elf(linux_loader::loader::elf::Error::ReadKernelImage)
        | linux_loader::loader::Error::Bzimage(linux_loader::loader::bzimage::Error::ReadBzImageCompressedKernel) => {
            BootError::KernelTooBig(name.to_owned(), mem_size >> 20)
        }
        e => BootError::Load(name.to_owned(), e),
    }
}

fn build_cmdline(text: &str) -> Result<Cmdline, BootError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    if !text.trim().is_empty() {
        cmdline
            .insert_str(text.trim())
            .map_err(|e| BootError::Cmdline(e.to_string()))?;
    }
    Ok(cmdline)
}

/// Loads the initrd as high as allowed in low RAM, page aligned, above the kernel.
fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    path: &std::path::Path,
    kernel_end: u64,
    addr_max: Option<u32>,
) -> Result<InitrdPlacement, BootError> {
    let name = path.display().to_string();
    check_input_file(path).map_err(|e| BootError::Read(name.clone(), e))?;
    let mut file = File::open(path).map_err(|e| BootError::Read(name.clone(), e))?;
    let size = file.metadata().map_err(|e| BootError::Read(name.clone(), e))?.len();
    // Linux places no initrd above initrd_addr_max; ELF kernels get the 2 GiB default of modern kernels.
    let limit = addr_max.map_or(0x7fff_ffff, |m| if m == 0 { 0x37ff_ffff } else { u64::from(m) });
    let top = low_ram_end(mem_size).min(limit + 1);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= kernel_end.max(HIMEM_START));
    let addr = addr.ok_or_else(|| BootError::InitrdTooBig(name.clone(), size))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|_| BootError::InitrdTooBig(name, size))?;
    debug_assert!(GuestAddress(addr).checked_add(size).is_some());
    Ok(InitrdPlacement { addr, size })
}

/// Result of loading, re-exported for tests.
pub type LoadedKernel = KernelLoaderResult;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_rejects_overlong_text() {
        let long = "a".repeat(CMDLINE_MAX_SIZE + 10);
        assert!(build_cmdline(&long).is_err());
        assert!(build_cmdline("console=ttyS0 reboot=k").is_ok());
        assert!(build_cmdline("").is_ok());
    }

    /// Runs `f` on a thread; fails (instead of hanging) if it blocks.
    fn within_a_second<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(1))
            .expect("opening a FIFO must not block")
    }

    #[test]
    fn fifos_and_other_non_files_are_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("kvmkit-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().expect("utf8")).expect("cstr");
        // SAFETY: mkfifo on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = check_input_file(&fifo).expect_err("a FIFO");
        assert!(e.to_string().contains("FIFO"), "{e}");
        assert!(check_input_file(std::path::Path::new("/dev/zero"))
            .expect_err("a character device")
            .to_string()
            .contains("character device"));
        assert!(check_input_file(&dir)
            .expect_err("a directory")
            .to_string()
            .contains("directory"));
        let file = dir.join("file");
        std::fs::write(&file, b"x").expect("file");
        check_input_file(&file).expect("a regular file");

        let f = fifo.clone();
        let initrd = within_a_second(move || {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("mem");
            load_initrd(&mem, 16 << 20, &f, HIMEM_START, None).map(|_| ())
        });
        let e = initrd.expect_err("a FIFO initrd").to_string();
        assert!(e.contains("FIFO") && !e.contains("does not fit"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
