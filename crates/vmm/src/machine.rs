//! Config in, running VM out: builds the machine (memory, VM, devices,
//! vCPUs, boot), runs it on one thread per vCPU plus this thread's event
//! loop, and returns how it ended.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvmkit_guest_abi::{Report, DEBUG_PORT, NULL_MMIO_ADDR, NULL_MMIO_SIZE, PORT_BASE, PORT_COUNT};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::acpi::setup_acpi_tables;
use crate::arch::x86_64::mptable::{self, setup_mptable};
use crate::boot::{self, BootProtocol, BootSource};
use crate::bus::{lock, Bus, BusDevice};
use crate::console::{
    install_exit_signal_handlers, install_kick_handler, kick_signal, last_exit_signal, TerminalGuard,
};
use crate::control::{ExitReason, VmControl};
use crate::device_manager::VirtioPlacer;
use crate::devices::acpi_pm::{AcpiPm, ACPI_PM_BASE, ACPI_PM_LEN};
use crate::devices::debug_port::DebugPort;
use crate::devices::guest_port::GuestPort;
use crate::devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use crate::devices::null::NullDevice;
use crate::devices::serial::{ConsoleOut, SerialDevice, COM1_BASE, COM1_IRQ, UART_LEN};
use crate::host::kvm::{open_kvm, KvmOpenError};
use crate::memory::{create_guest_memory, MemoryError};
use crate::vcpu::{Buses, Vcpu, VcpuError};
use crate::virtio::block::disk::{DiskError, DiskImage};
use crate::virtio::block::Block;
use crate::virtio::rng::Rng;
use crate::vm::{Vm, VmError};

/// The kernel to boot.
#[derive(Debug)]
pub enum KernelSource {
    /// A file on the host.
    Path(PathBuf),
    /// An image in memory (kvmkit's embedded test guest).
    Embedded {
        /// Name for messages.
        name: String,
        /// The image bytes.
        bytes: &'static [u8],
    },
}

/// Everything needed to build and run one VM.
#[derive(Debug)]
pub struct VmConfig {
    /// Number of vCPUs.
    pub cpus: usize,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Kernel image.
    pub kernel: KernelSource,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Boot protocol.
    pub protocol: BootProtocol,
    /// Forward host stdin to the guest's serial port.
    pub stdin: bool,
    /// End the VM after this long.
    pub timeout: Option<Duration>,
    /// Append `kvmkit.tsc_khz=<host TSC kHz>` to the command line (for
    /// kvmkit's test guest, which converts TSC ticks to nanoseconds).
    pub tsc_hint: bool,
    /// Raw disk images attached as virtio-blk devices, in order.
    pub disks: Vec<DiskConfig>,
    /// Attach a virtio-rng device.
    pub rng: bool,
    /// virtio-net NICs, in order.
    pub nets: Vec<crate::net::NetConfig>,
}

/// One `--disk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The raw image.
    pub path: PathBuf,
    /// Advertise and enforce read-only.
    pub read_only: bool,
    /// GET_ID string (default: disk0, disk1, ...).
    pub id: String,
    /// Bypass the host page cache (O_DIRECT): `cache=none`.
    pub direct: bool,
}

/// How a VM run went.
#[derive(Debug)]
pub struct RunOutcome {
    /// Why it ended.
    pub reason: ExitReason,
    /// Reports the guest sent over the kvmkit port protocol.
    pub reports: Vec<Report>,
    /// Microseconds from start to the guest's first instruction.
    pub entry_us: Option<u64>,
    /// Microseconds from start to the guest's ready milestone.
    pub ready_us: Option<u64>,
    /// Microseconds from start to the first console byte.
    pub first_output_us: Option<u64>,
    /// Microseconds from start to the VM's end.
    pub end_us: Option<u64>,
    /// Port-I/O addresses no device claimed, with access counts.
    pub unclaimed_pio: Vec<(u64, u64)>,
    /// MMIO addresses no device claimed, with access counts.
    pub unclaimed_mmio: Vec<(u64, u64)>,
}

/// Errors building or running a VM (all before the guest runs, or fatal).
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// /dev/kvm unusable.
    #[error(transparent)]
    Kvm(#[from] KvmOpenError),
    /// Bad vCPU count.
    #[error("--cpus {requested}: {why}")]
    Cpus {
        /// What was asked for.
        requested: usize,
        /// Why it is refused.
        why: String,
    },
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel file.
    #[error("cannot open kernel {0}: {1}")]
    KernelFile(String, std::io::Error),
    /// Loading the kernel.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// VM creation.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// vCPU creation.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A disk image could not be used.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// Host networking could not be set up.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// Anything else on the host side.
    #[error("{0}")]
    Host(String),
}

fn host_err(what: &str) -> impl Fn(std::io::Error) -> MachineError + '_ {
    move |e| MachineError::Host(format!("{what}: {e}"))
}

/// Opens the kernel as a file (embedded images go through a memfd).
fn open_kernel(source: &KernelSource) -> Result<(File, String), MachineError> {
    match source {
        KernelSource::Path(p) => {
            let name = p.display().to_string();
            if p.is_dir() {
                return Err(MachineError::KernelFile(
                    name,
                    std::io::Error::other("it is a directory"),
                ));
            }
            File::open(p)
                .map(|f| (f, name.clone()))
                .map_err(|e| MachineError::KernelFile(name, e))
        }
        KernelSource::Embedded { name, bytes } => {
            // SAFETY: the name is a valid NUL-terminated string; memfd_create returns a new fd or -1.
            let fd = unsafe { libc::memfd_create(c"kvmkit-guest".as_ptr(), libc::MFD_CLOEXEC) };
            if fd < 0 {
                return Err(MachineError::Host(format!(
                    "memfd_create: {}",
                    std::io::Error::last_os_error()
                )));
            }
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            let mut file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            file.write_all(bytes).map_err(host_err("writing the embedded guest"))?;
            Ok((file, name.clone()))
        }
    }
}

/// Checks the vCPU count against KVM's and kvmkit's limits.
pub fn validate_cpus(requested: usize, kvm_max: usize) -> Result<(), MachineError> {
    let limit = kvm_max.min(usize::from(mptable::MAX_CPUS));
    if requested == 0 {
        return Err(MachineError::Cpus {
            requested,
            why: "a VM needs at least 1 vCPU".into(),
        });
    }
    if requested > limit {
        return Err(MachineError::Cpus {
            requested,
            why: format!(
                "at most {limit} vCPUs are supported here (KVM allows {kvm_max}, kvmkit's MP table {})",
                mptable::MAX_CPUS
            ),
        });
    }
    Ok(())
}

/// Builds the VM from `config` and runs it to the end. `start` is the time
/// the boot timeline counts from (normally process start).
pub fn run_vm(config: VmConfig, start: Instant) -> Result<RunOutcome, MachineError> {
    tracing::debug!("building the VM, {} us after start", start.elapsed().as_micros());
    let kvm = open_kvm()?;
    validate_cpus(config.cpus, kvm.get_max_vcpus())?;
    let mem_size = config.memory_mib << 20;
    let (kernel, kernel_name) = open_kernel(&config.kernel)?;
    let disks = config
        .disks
        .iter()
        .map(|d| DiskImage::open_with(&d.path, d.read_only, d.direct).map(|img| (img, d.id.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    // Taps are set up before boot so errors come first; `net_plans` owns
    // what kvmkit created and removes it when run_vm returns.
    let mut net_plans = Vec::new();
    let mut nics = Vec::new();
    for (i, n) in config.nets.iter().enumerate() {
        let (tap, plan) = crate::net::setup_net(n, i)?;
        nics.push((tap, plan.mac));
        net_plans.push(plan);
    }
    let memory = create_guest_memory(config.memory_mib)?;
    let control = Arc::new(VmControl::new(start).map_err(host_err("eventfd"))?);
    let vm = Vm::new(&kvm, &memory)?;
    tracing::debug!("VM created");

    // Devices.
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(host_err("eventfd"))?;
    vm.fd()
        .register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(|e| MachineError::Host(format!("KVM_IRQFD: {e}")))?;
    let out = ConsoleOut::new(Box::new(std::io::stdout()), control.clone());
    let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, out)));
    let mut pio = Bus::new("pio");
    let mut mmio = Bus::new("mmio");
    let dev = |d: Arc<Mutex<dyn BusDevice>>| d;
    let insert = |bus: &mut Bus, d, base, len| bus.insert(d, base, len).map_err(|e| MachineError::Host(e.to_string()));
    insert(&mut pio, dev(serial.clone()), COM1_BASE, UART_LEN)?;
    insert(
        &mut pio,
        dev(Arc::new(Mutex::new(I8042::new(control.clone())))),
        I8042_BASE,
        I8042_LEN,
    )?;
    insert(
        &mut pio,
        dev(Arc::new(Mutex::new(DebugPort::new(control.clone())))),
        u64::from(DEBUG_PORT),
        1,
    )?;
    insert(
        &mut pio,
        dev(Arc::new(Mutex::new(AcpiPm::new(control.clone())))),
        ACPI_PM_BASE,
        ACPI_PM_LEN,
    )?;
    let guest_port = GuestPort::new(control.clone(), memory.clone());
    insert(
        &mut pio,
        dev(Arc::new(Mutex::new(guest_port))),
        u64::from(PORT_BASE),
        u64::from(PORT_COUNT),
    )?;
    insert(
        &mut mmio,
        dev(Arc::new(Mutex::new(NullDevice::new(0)))),
        NULL_MMIO_ADDR,
        NULL_MMIO_SIZE,
    )?;
    let mut placer = VirtioPlacer::new(vm.fd(), &memory);
    for (image, id) in disks {
        placer
            .attach(&mut mmio, Box::new(Block::new(image, &id)))
            .map_err(MachineError::Host)?;
    }
    if config.rng {
        placer
            .attach(&mut mmio, Box::new(Rng::default()))
            .map_err(MachineError::Host)?;
    }
    for (tap, mac) in nics {
        let nic = crate::virtio::net::Net::new(Arc::new(tap), mac);
        placer.attach(&mut mmio, Box::new(nic)).map_err(MachineError::Host)?;
    }
    let buses = Buses {
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
    };

    // vCPUs: created in order, the BSP put at the entry point.
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| MachineError::Host(format!("KVM_GET_SUPPORTED_CPUID: {e}")))?;
    let mut vcpus = Vec::with_capacity(config.cpus);
    for i in 0..config.cpus {
        vcpus.push(Vcpu::new(
            &vm,
            i,
            config.cpus,
            &supported,
            buses.clone(),
            control.clone(),
        )?);
    }
    let mut cmdline = config.cmdline.clone();
    let virtio_words = placer.cmdline_words();
    if !virtio_words.is_empty() {
        cmdline = format!("{cmdline} {virtio_words}");
    }
    let net_words = crate::net::cmdline_words(&net_plans);
    if !net_words.is_empty() {
        cmdline = format!("{cmdline} {net_words}");
    }
    if config.tsc_hint {
        if let Some(khz) = vcpus[0].tsc_khz() {
            cmdline.push_str(&format!(" {}={khz}", kvmkit_guest_abi::CMDLINE_TSC_KHZ));
        }
    }
    // The topology goes to Linux both ways: ACPI MADT (what modern kernels
    // read; Debian's cloud kernel has no MP-table parser) and an MP table.
    setup_mptable(&memory, config.cpus as u8).map_err(|e| MachineError::Host(format!("MP table: {e}")))?;
    let rsdp = setup_acpi_tables(&memory, config.cpus as u8, placer.acpi_devices())
        .map_err(|e| MachineError::Host(format!("ACPI tables: {e}")))?;
    let mut source = BootSource {
        kernel,
        kernel_name,
        initrd: config.initrd.clone(),
        cmdline,
        protocol: config.protocol,
        rsdp: Some(rsdp),
    };
    let entry = boot::boot(&memory, mem_size, &mut source)?;
    vcpus[0].configure_boot(&memory, entry)?;
    tracing::debug!("kernel loaded, vCPUs configured: {entry:x?}");

    install_kick_handler().map_err(host_err("vCPU kick signal"))?;
    let signal_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(host_err("eventfd"))?;
    install_exit_signal_handlers(signal_evt.as_raw_fd()).map_err(host_err("signal handlers"))?;
    let _terminal = if config.stdin {
        TerminalGuard::new(libc::STDIN_FILENO)
    } else {
        None
    };

    let mut threads = Vec::with_capacity(vcpus.len());
    for (i, vcpu) in vcpus.into_iter().enumerate() {
        let t = std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || vcpu.run())
            .map_err(host_err("spawning a vCPU thread"));
        match t {
            Ok(t) => threads.push(t),
            Err(e) => {
                control.request_exit(ExitReason::VmmError(e.to_string()));
                break;
            }
        }
    }
    tracing::debug!("vCPU threads started, {} us after start", start.elapsed().as_micros());
    event_loop(
        &control,
        &signal_evt,
        &serial,
        config.stdin,
        config.timeout.map(|t| start + t),
    );
    stop_vcpus(threads);

    let reason = control
        .reason()
        .unwrap_or(ExitReason::VmmError("VM ended without a reason".into()));
    let t = &control.timeline;
    Ok(RunOutcome {
        reason,
        reports: control.reports(),
        entry_us: t.micros(&t.entry),
        ready_us: t.micros(&t.ready),
        first_output_us: t.micros(&t.first_output),
        end_us: t.micros(&t.end),
        unclaimed_pio: buses.pio.unclaimed_accesses(),
        unclaimed_mmio: buses.mmio.unclaimed_accesses(),
    })
}

/// Waits for the VM to end while forwarding stdin to the serial port and
/// watching for signals and the time limit.
fn event_loop(
    control: &VmControl,
    signal_evt: &EventFd,
    serial: &Mutex<SerialDevice>,
    mut stdin: bool,
    deadline: Option<Instant>,
) {
    let mut pending: Vec<u8> = Vec::new();
    while !control.stopping() {
        let mut fds = vec![
            libc::pollfd {
                fd: control.wake_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signal_evt.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if stdin && pending.is_empty() {
            fds.push(libc::pollfd {
                fd: libc::STDIN_FILENO,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let mut wait_ms: i32 = if pending.is_empty() { 1000 } else { 5 };
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                control.request_exit(ExitReason::Timeout(d.duration_since(control.timeline.start)));
                break;
            }
            wait_ms = wait_ms.min(left.as_millis().min(1000) as i32 + 1);
        }
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            continue; // EINTR: a signal arrived; the loop re-checks everything.
        }
        if fds[1].revents & libc::POLLIN != 0 {
            let _ = signal_evt.read();
            control.request_exit(ExitReason::Signal(last_exit_signal().unwrap_or(libc::SIGTERM)));
        }
        if let Some(f) = fds.get(2) {
            if f.revents & (libc::POLLIN | libc::POLLHUP) != 0 {
                let mut buf = [0u8; 64];
                // SAFETY: reading into a local buffer of the given size.
                let k = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
                if k <= 0 {
                    stdin = false; // EOF or error: stop reading input, the VM runs on.
                } else {
                    pending.extend_from_slice(&buf[..k as usize]);
                }
            }
        }
        if !pending.is_empty() {
            let n = lock(serial).enqueue_input(&pending);
            pending.drain(..n);
        }
    }
}

/// Kicks every vCPU out of KVM_RUN until all threads have finished.
fn stop_vcpus(threads: Vec<JoinHandle<()>>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for t in &threads {
        while !t.is_finished() && Instant::now() < deadline {
            // SAFETY: the thread handle is alive (not joined), so its pthread_t is valid.
            unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    for t in threads {
        if t.is_finished() {
            let _ = t.join();
        } else {
            tracing::warn!("a vCPU thread did not stop within 5 s; leaving it behind");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_counts_are_validated() {
        assert!(validate_cpus(0, 288).is_err());
        assert!(validate_cpus(1, 288).is_ok());
        assert!(validate_cpus(usize::from(mptable::MAX_CPUS), 288).is_ok());
        assert!(validate_cpus(usize::from(mptable::MAX_CPUS) + 1, 288).is_err());
        assert!(validate_cpus(5, 4).is_err());
    }
}
