//! Resources in, a built (not yet running) [`Machine`] out: guest memory,
//! the KVM VM, every device on its bus, the vCPUs, and the kernel loaded.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvmkit_guest_abi::{DEBUG_PORT, NULL_MMIO_ADDR, NULL_MMIO_SIZE, PORT_BASE, PORT_COUNT};
use vmm_sys_util::eventfd::EventFd;

use super::{Machine, MachineError};
use crate::arch::x86_64::acpi::setup_acpi_tables;
use crate::arch::x86_64::mptable::{self, setup_mptable};
use crate::boot::{self, BootProtocol, BootSource};
use crate::control::VmControl;
use crate::device_manager::{DeviceKind, DeviceManager};
use crate::devices::acpi_pm::{AcpiPm, ACPI_PM_BASE, ACPI_PM_LEN};
use crate::devices::debug_port::DebugPort;
use crate::devices::guest_port::GuestPort;
use crate::devices::i8042::{I8042, I8042_BASE, I8042_KBD_IRQ, I8042_LEN};
use crate::devices::null::NullDevice;
use crate::devices::serial::{ConsoleOut, SerialDevice, COM1_BASE, COM1_IRQ, UART_LEN};
use crate::devices::vmgenid::{VmGenId, VMGENID_GSI};
use crate::host::kvm::{open_kvm, SupportedCpuid};
use crate::lifecycle::VmState;
use crate::memory::create_guest_memory;
use crate::memory::GuestMemoryMmap;
use crate::net::Tap;
use crate::vcpu::Vcpu;
use crate::virtio::block::disk::DiskImage;
use crate::virtio::block::Block;
use crate::virtio::net::Net;
use crate::virtio::rng::Rng;
use crate::virtio::vsock::Vsock;
use crate::vm::Vm;
use crate::vmm_config::VmResources;

/// The kernel to boot, when it is not the boot source's file.
#[derive(Debug, Clone)]
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

/// How to build a machine beyond its resources: what the kvmkit CLI
/// decides and the API cannot express.
pub struct MachineOptions {
    /// Reference time of the boot timeline (normally process start).
    pub start: Instant,
    /// Boot protocol.
    pub protocol: BootProtocol,
    /// Decompress a bzImage's payload on the host (see `boot::BootSource`).
    pub host_decompress: bool,
    /// Append `kvmkit.tsc_khz=<host TSC kHz>` to the command line (for
    /// kvmkit's test guest, which converts TSC ticks to nanoseconds).
    pub tsc_hint: bool,
    /// Boot this instead of `boot-source.kernel_image_path`.
    pub kernel: Option<KernelSource>,
    /// Taps the caller opened (and configured), by interface id; an
    /// interface without one opens its `host_dev_name`.
    pub taps: Vec<(String, Tap)>,
    /// Where the guest's serial output goes (default stdout).
    pub console: Option<Box<dyn Write + Send>>,
    /// Rebuild a snapshotted VM: its RAM and device state instead of a
    /// kernel to load (see [`Machine::restore`]).
    pub restore: Option<RestoreSource>,
}

/// What a VM restored from a snapshot is built with, besides its resources.
pub struct RestoreSource {
    /// Guest RAM, mapped from the memory file.
    pub memory: GuestMemoryMmap,
    /// The serial port's saved state.
    pub serial: vm_superio::serial::SerialState,
}

impl MachineOptions {
    /// Defaults: timeline from `start`, auto boot protocol, bzImages decompressed on
    /// the host, stdout console.
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            protocol: BootProtocol::Auto,
            host_decompress: true,
            tsc_hint: false,
            kernel: None,
            taps: Vec::new(),
            console: None,
            restore: None,
        }
    }
}

impl std::fmt::Debug for MachineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineOptions")
            .field("protocol", &self.protocol)
            .field("host_decompress", &self.host_decompress)
            .field("tsc_hint", &self.tsc_hint)
            .field("kernel", &self.kernel)
            .field("taps", &self.taps.len())
            .finish_non_exhaustive()
    }
}

fn host_err(what: &str) -> impl Fn(std::io::Error) -> MachineError + '_ {
    move |e| MachineError::Host(format!("{what}: {e}"))
}

/// Opens the kernel as a file (embedded images go through a memfd).
fn open_kernel(source: &KernelSource) -> Result<(File, String), MachineError> {
    match source {
        KernelSource::Path(p) => {
            let name = p.display().to_string();
            crate::files::check_input_file(p).map_err(|e| MachineError::KernelFile(name.clone(), e))?;
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

impl Machine {
    /// Builds the VM `resources` describe. Everything that can fail (files,
    /// taps, KVM) fails here, before any guest code runs; nothing is left
    /// behind on error.
    pub fn build(resources: &VmResources, opts: &mut MachineOptions) -> Result<Self, MachineError> {
        let start = opts.start;
        tracing::debug!("building the VM, {} us after start", start.elapsed().as_micros());
        let restore = opts.restore.take();
        if restore.is_none() {
            resources
                .check_bootable()
                .map_err(|e| MachineError::Config(e.to_string()))?;
        }
        resources
            .machine_config
            .validate()
            .map_err(|e| MachineError::Config(e.to_string()))?;
        let boot_cfg = resources.boot_source.clone().unwrap_or_default();
        let cpus = usize::from(resources.machine_config.vcpu_count);
        let kvm = open_kvm()?;
        let cpuid = SupportedCpuid::fetch();
        validate_cpus(cpus, kvm.get_max_vcpus())?;
        crate::snapshot::vcpu::prime_msr_index_list(&kvm);
        let memory_mib = resources.machine_config.mem_size_mib;
        let kernel_source = opts
            .kernel
            .clone()
            .unwrap_or_else(|| KernelSource::Path(PathBuf::from(&boot_cfg.kernel_image_path)));
        let kernel = match restore {
            None => Some(open_kernel(&kernel_source)?),
            Some(_) => None,
        };
        let disks = resources
            .drives
            .iter()
            .map(|d| {
                DiskImage::open_with(std::path::Path::new(&d.path_on_host), d.is_read_only, d.direct)
                    .map(|img| (img, d.drive_id.clone(), d.poll))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut nics = Vec::new();
        for n in &resources.network_interfaces {
            let tap = match opts.taps.iter().position(|(id, _)| *id == n.iface_id) {
                Some(i) => opts.taps.swap_remove(i).1,
                None => Tap::open(&n.host_dev_name)?,
            };
            nics.push((n.iface_id.clone(), tap, n.mac(), n.poll));
        }
        // The vsock socket is bound now, so a bad path fails before the VM exists.
        let vsock = match &resources.vsock {
            Some(v) => {
                Some(Vsock::new(u64::from(v.guest_cid), &v.uds_path).map_err(|e| MachineError::Config(e.to_string()))?)
            }
            None => None,
        };
        let (memory, serial_state) = match restore {
            Some(r) => (r.memory, Some(r.serial)),
            None => (create_guest_memory(memory_mib)?, None),
        };
        let control = Arc::new(VmControl::new(start).map_err(host_err("eventfd"))?);
        let vm = Vm::new(&kvm, &memory, resources.machine_config.track_dirty_pages)?;
        tracing::debug!("VM created");

        // Legacy devices. Their interrupt lines are connected as the vCPUs
        // start (`Machine::start`), off the way to the guest's first
        // instruction: each KVM_IRQFD takes 30-120 us here.
        let mut legacy_irqfds = Vec::new();
        let mut irqfd = |gsi: u32| -> Result<EventFd, MachineError> {
            let e = EventFd::new(libc::EFD_NONBLOCK).map_err(host_err("eventfd"))?;
            legacy_irqfds.push((e.try_clone().map_err(host_err("eventfd"))?, gsi));
            Ok(e)
        };
        let console = opts.console.take().unwrap_or_else(|| Box::new(std::io::stdout()));
        let out = ConsoleOut::new(console, control.clone());
        let serial = match serial_state {
            Some(st) => SerialDevice::from_state(irqfd(COM1_IRQ)?, out, &st).map_err(MachineError::Host)?,
            None => SerialDevice::new(irqfd(COM1_IRQ)?, out),
        };
        let serial = Arc::new(Mutex::new(serial));
        let i8042 = Arc::new(Mutex::new(
            I8042::new(control.clone()).with_kbd_irq(irqfd(I8042_KBD_IRQ)?),
        ));
        let vmgenid = VmGenId::new(irqfd(VMGENID_GSI)?);
        let mut dm = DeviceManager::new();
        dm.add_pio("serial0", DeviceKind::Serial, serial.clone(), COM1_BASE, UART_LEN)?;
        dm.add_pio("i8042", DeviceKind::I8042, i8042.clone(), I8042_BASE, I8042_LEN)?;
        let debug = Arc::new(Mutex::new(DebugPort::new(control.clone())));
        dm.add_pio("debug-port", DeviceKind::DebugPort, debug, u64::from(DEBUG_PORT), 1)?;
        let pm = Arc::new(Mutex::new(AcpiPm::new(control.clone())));
        dm.add_pio("acpi-pm", DeviceKind::AcpiPm, pm, ACPI_PM_BASE, ACPI_PM_LEN)?;
        let gp = Arc::new(Mutex::new(GuestPort::new(control.clone(), memory.clone())));
        dm.add_pio(
            "guest-port",
            DeviceKind::GuestPort,
            gp,
            u64::from(PORT_BASE),
            u64::from(PORT_COUNT),
        )?;
        let null = Arc::new(Mutex::new(NullDevice::new(0)));
        dm.add_mmio("null-mmio", DeviceKind::NullMmio, null, NULL_MMIO_ADDR, NULL_MMIO_SIZE)?;

        // Virtio devices: drives, then the rng, then NICs, then vsock (kvmkit's order
        // since the first release: guests find disks at the same windows).
        for (image, id, poll) in disks {
            let dev = Box::new(Block::new(image, &id).with_poll(poll));
            dm.add_virtio(vm.fd(), &memory, &id, DeviceKind::VirtioBlock, dev)?;
        }
        if resources.entropy.is_some() {
            dm.add_virtio(
                vm.fd(),
                &memory,
                "rng0",
                DeviceKind::VirtioRng,
                Box::new(Rng::default()),
            )?;
        }
        for (id, tap, mac, poll) in nics {
            let dev = Box::new(Net::new(Arc::new(tap), mac).with_poll(poll));
            dm.add_virtio(vm.fd(), &memory, &id, DeviceKind::VirtioNet, dev)?;
        }
        if let Some(dev) = vsock {
            dm.add_virtio(vm.fd(), &memory, "vsock0", DeviceKind::VirtioVsock, Box::new(dev))?;
        }
        let buses = dm.take_buses();

        // vCPUs: created in order, the BSP put at the entry point.
        let supported = cpuid
            .get(&kvm)
            .map_err(|e| MachineError::Host(format!("KVM_GET_SUPPORTED_CPUID: {e}")))?;
        let mut vcpus = Vec::with_capacity(cpus);
        for i in 0..cpus {
            vcpus.push(Vcpu::new(&vm, i, cpus, &supported, buses.clone(), control.clone())?);
        }
        if let Some((kernel, kernel_name)) = kernel {
            load_kernel(LoadKernel {
                resources,
                opts,
                boot_cfg: &boot_cfg,
                dm: &dm,
                memory: &memory,
                vcpus: &vcpus,
                kernel,
                kernel_name,
            })?;
            vmgenid.regenerate(&memory).map_err(MachineError::Host)?;
        }
        crate::vcpu::kick::install_kick_handler().map_err(host_err("vCPU kick signal"))?;

        Ok(Machine {
            state: VmState::NotStarted,
            resources: resources.clone(),
            control,
            _vm: vm,
            _memory: memory,
            devices: dm,
            buses,
            serial,
            i8042,
            vmgenid,
            vcpu_metrics: vcpus.iter().map(Vcpu::metrics).collect(),
            unstarted: vcpus,
            vcpus: Vec::new(),
            legacy_irqfds,
        })
    }
}

/// What loading the kernel needs from [`Machine::build`].
struct LoadKernel<'a> {
    resources: &'a VmResources,
    opts: &'a MachineOptions,
    boot_cfg: &'a crate::vmm_config::BootSourceConfig,
    dm: &'a DeviceManager,
    memory: &'a GuestMemoryMmap,
    vcpus: &'a [Vcpu],
    kernel: File,
    kernel_name: String,
}

/// Writes the boot tables (MP table, ACPI), loads the kernel and puts the
/// BSP at its entry point (a fresh boot; a restore skips this).
fn load_kernel(k: LoadKernel<'_>) -> Result<(), MachineError> {
    let LoadKernel {
        resources,
        opts,
        boot_cfg,
        dm,
        memory,
        vcpus,
        kernel,
        kernel_name,
    } = k;
    let memory_mib = resources.machine_config.mem_size_mib;
    let cpus = vcpus.len();
    let mut cmdline = boot_cfg.boot_args_or_default().to_owned();
    let virtio_words = dm.cmdline_words();
    if !virtio_words.is_empty() {
        cmdline = format!("{cmdline} {virtio_words}");
    }
    if opts.tsc_hint {
        if let Some(khz) = vcpus[0].tsc_khz() {
            cmdline.push_str(&format!(" {}={khz}", kvmkit_guest_abi::CMDLINE_TSC_KHZ));
        }
    }
    // The topology goes to Linux both ways: ACPI MADT (what modern kernels
    // read; Debian's cloud kernel has no MP-table parser) and an MP table.
    setup_mptable(memory, cpus as u8).map_err(|e| MachineError::Host(format!("MP table: {e}")))?;
    let rsdp = setup_acpi_tables(memory, cpus as u8, dm.acpi_devices())
        .map_err(|e| MachineError::Host(format!("ACPI tables: {e}")))?;
    let mut source = BootSource {
        kernel,
        kernel_name,
        initrd: boot_cfg.initrd_path.as_ref().map(PathBuf::from),
        cmdline,
        protocol: opts.protocol,
        rsdp: Some(rsdp),
        host_decompress: opts.host_decompress,
    };
    let entry = boot::boot(memory, memory_mib << 20, &mut source)?;
    vcpus[0].configure_boot(memory, entry)?;
    tracing::debug!("kernel loaded, vCPUs configured: {entry:x?}");
    Ok(())
}
