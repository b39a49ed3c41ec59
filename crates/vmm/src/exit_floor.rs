//! The raw KVM floor of a VM exit: a minimal VMM's round trip.
//!
//! A VM built with kvm-ioctls directly (one 1 MiB memory slot, no irqchip, no device
//! model) spins in a two-instruction loop that exits on every iteration; one
//! [`FloorVm::run_exit`] is one `KVM_RUN` that returns that exit. Whatever kvmkit adds
//! to an exit (its vCPU loop, the bus, the device) is what its own exit figure has
//! above this one. `kvmkit bench` measures it beside the exit table
//! (docs/bench.md), and the `exit_latency` criterion bench uses it too.
//!
//! The guest starts directly in 64-bit mode, by default at CPL3 (CS 0x1b, SS/DS 0x23),
//! the way kvmkit's test guest runs its exit loops: under kvm_pvm CPL3 code runs
//! natively and a CPL3 `out` exits as `KVM_EXIT_IO` through KVM's default TSS, which is
//! why TR is left as KVM sets it. The first 2 MiB are identity-mapped by one huge page
//! with the User bit at every level; only the first 1 MiB is backed by a memory slot,
//! so a write above it (still mapped by the guest's page tables) exits as
//! `KVM_EXIT_MMIO`.

use std::time::Instant;

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use kvmkit_guest_abi::NULL_PORT;

/// Bytes of guest RAM (the one memory slot, from guest-physical 0).
const MEM_SIZE: usize = 1 << 20;
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const CODE: u64 = 0x4000;
const STACK_TOP: u64 = 0x8000;

/// Present | writable | user.
const PT_PRW_USER: u64 = 0x7;
/// 2 MiB page.
const PT_HUGE: u64 = 0x80;

/// `out %al, (%dx)` then `jmp` back to it.
const PIO_LOOP: [u8; 3] = [0xee, 0xeb, 0xfd];
/// `mov %al, (%rdx)` then `jmp` back to it.
const MMIO_LOOP: [u8; 4] = [0x88, 0x02, 0xeb, 0xfc];

/// The guest-physical address the MMIO loop writes to: inside the guest's 2 MiB huge
/// page, above the 1 MiB memory slot, so no memory answers it.
pub const MMIO_ADDR: u64 = 0x1f_f000;

/// Exits of the untimed warm-up before [`measure_ns`] starts its clock.
pub const WARM_UP_EXITS: u32 = 200;

/// Which exit the minimal VM makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloorKind {
    /// `out %al, (%dx)` to kvmkit's null port: `KVM_EXIT_IO`.
    Pio,
    /// `mov %al, (%rdx)` to [`MMIO_ADDR`]: `KVM_EXIT_MMIO`.
    Mmio,
}

impl FloorKind {
    /// Both kinds, PIO first.
    pub const ALL: [FloorKind; 2] = [FloorKind::Pio, FloorKind::Mmio];

    /// `pio` or `mmio`.
    pub fn name(self) -> &'static str {
        match self {
            FloorKind::Pio => "pio",
            FloorKind::Mmio => "mmio",
        }
    }

    fn code(self) -> &'static [u8] {
        match self {
            FloorKind::Pio => &PIO_LOOP,
            FloorKind::Mmio => &MMIO_LOOP,
        }
    }

    /// What RDX holds: the port or the address the loop writes to.
    fn target(self) -> u64 {
        match self {
            FloorKind::Pio => u64::from(NULL_PORT),
            FloorKind::Mmio => MMIO_ADDR,
        }
    }

    /// Whether `exit` is the one this loop makes.
    fn expects(self, exit: Exit) -> bool {
        match (self, exit) {
            (FloorKind::Pio, Exit::Pio { port, .. }) => port == NULL_PORT,
            (FloorKind::Mmio, Exit::Mmio { addr, .. }) => addr == MMIO_ADDR,
            _ => false,
        }
    }
}

/// One exit of the minimal VM, copied out of the vCPU's run structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `KVM_EXIT_IO` out: the port and the first byte written.
    Pio {
        /// The port.
        port: u16,
        /// The byte written (AL).
        data: u8,
    },
    /// `KVM_EXIT_MMIO` write: the address and the first byte written.
    Mmio {
        /// The guest-physical address.
        addr: u64,
        /// The byte written (AL).
        data: u8,
    },
    /// Any other exit, by its kvm-ioctls name.
    Other(&'static str),
}

impl Exit {
    fn of(exit: &VcpuExit<'_>) -> Self {
        match exit {
            VcpuExit::IoOut(port, data) => Exit::Pio {
                port: *port,
                data: data.first().copied().unwrap_or(0),
            },
            VcpuExit::MmioWrite(addr, data) => Exit::Mmio {
                addr: *addr,
                data: data.first().copied().unwrap_or(0),
            },
            VcpuExit::IoIn(..) => Exit::Other("IoIn"),
            VcpuExit::MmioRead(..) => Exit::Other("MmioRead"),
            VcpuExit::Hlt => Exit::Other("Hlt"),
            VcpuExit::Shutdown => Exit::Other("Shutdown"),
            VcpuExit::FailEntry(..) => Exit::Other("FailEntry"),
            VcpuExit::InternalError => Exit::Other("InternalError"),
            VcpuExit::Exception => Exit::Other("Exception"),
            VcpuExit::SystemEvent(..) => Exit::Other("SystemEvent"),
            VcpuExit::Unknown => Exit::Other("Unknown"),
            _ => Exit::Other("other"),
        }
    }
}

/// Why the minimal VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// A KVM ioctl (or opening /dev/kvm) failed.
    #[error("{what}: {source}")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest RAM could not be mapped.
    #[error("mmap of guest RAM: {0}")]
    Mmap(#[source] std::io::Error),
    /// The vCPU exited for another reason than the loop's exit.
    #[error("{kind} loop: exit {got:?} at RIP {rip:#x}, not the loop's exit")]
    UnexpectedExit {
        /// The loop.
        kind: &'static str,
        /// The exit seen.
        got: Exit,
        /// The guest's RIP after it (0 where it could not be read).
        rip: u64,
    },
    /// `measure_ns` was asked for no exits.
    #[error("no exits to time")]
    NoExits,
}

impl FloorError {
    /// Whether this host has no usable KVM at all (no /dev/kvm, or it refuses a VM), as
    /// opposed to a VM that was built and then misbehaved.
    pub fn no_kvm(&self) -> bool {
        matches!(
            self,
            FloorError::Kvm {
                what: "open /dev/kvm" | "KVM_CREATE_VM",
                ..
            }
        )
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> FloorError {
    move |source| FloorError::Kvm { what, source }
}

/// A 1 MiB anonymous mapping used as guest RAM.
struct GuestRam {
    ptr: *mut u8,
}

impl GuestRam {
    fn new() -> Result<Self, FloorError> {
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(FloorError::Mmap(std::io::Error::last_os_error()));
        }
        Ok(Self { ptr: ptr.cast() })
    }

    /// Copies `bytes` to guest-physical `gpa` (a constant of this module, inside RAM).
    fn write(&mut self, gpa: u64, bytes: &[u8]) {
        let start = gpa as usize;
        // Only this module's constants come here; a wrong one is a bug, caught in tests.
        assert!(start + bytes.len() <= MEM_SIZE, "guest write outside RAM");
        // SAFETY: the range is inside the mapping (asserted above) and we hold it exclusively.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(start), bytes.len()) };
    }

    fn write_u64(&mut self, gpa: u64, v: u64) {
        self.write(gpa, &v.to_le_bytes());
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; the VM using it is dropped first
        // (field order of FloorVm).
        unsafe { libc::munmap(self.ptr.cast(), MEM_SIZE) };
    }
}

/// A flat 4 GiB segment; `code64` makes it a 64-bit code segment.
fn seg(selector: u16, type_: u8, dpl: u8, code64: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl,
        db: u8::from(!code64),
        s: 1,
        l: u8::from(code64),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// A one-vCPU VM spinning on one exit (see the module's documentation).
pub struct FloorVm {
    // Field order is drop order: vCPU, then VM, then the memory behind it.
    vcpu: VcpuFd,
    _vm: VmFd,
    _ram: GuestRam,
    kind: FloorKind,
}

impl FloorVm {
    /// Builds the VM for `kind` (at CPL0 where `cpl0`, else CPL3) and runs it to its
    /// first exit, which must be the loop's.
    pub fn new(kind: FloorKind, cpl0: bool) -> Result<Self, FloorError> {
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let mut ram = GuestRam::new()?;

        // Identity-map the first 2 MiB with one huge page, User set at every level.
        ram.write_u64(PML4, PDPT | PT_PRW_USER);
        ram.write_u64(PDPT, PD | PT_PRW_USER);
        ram.write_u64(PD, PT_PRW_USER | PT_HUGE);
        ram.write(CODE, kind.code());

        // The memory slot goes in before anything else (no irqchip at all here).
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: ram.ptr as u64,
        };
        // SAFETY: `ram` is a live 1 MiB mapping that outlives the VM (field order of FloorVm).
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;

        let vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        // Long mode needs CPUID.LM in the guest's CPUID, or KVM refuses EFER.LME.
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;

        let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        let (cs, ds) = if cpl0 {
            (seg(0x08, 0xb, 0, true), seg(0x10, 0x3, 0, false))
        } else {
            (seg(0x1b, 0xb, 3, true), seg(0x23, 0x3, 3, false))
        };
        sregs.cs = cs;
        sregs.ss = ds;
        sregs.ds = ds;
        sregs.es = ds;
        sregs.fs = ds;
        sregs.gs = ds;
        // TR stays KVM's default: a CPL3 `out` then exits as KVM_EXIT_IO under PVM.
        sregs.efer = 0x500; // LME | LMA
        sregs.cr0 = 0x8005_0033; // PG | AM | WP | NE | ET | MP | PE
        sregs.cr4 = 0x20; // PAE
        sregs.cr3 = PML4;
        vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;

        let mut regs = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
        regs.rip = CODE;
        regs.rsp = STACK_TOP;
        regs.rflags = 0x2;
        regs.rdx = kind.target();
        regs.rax = 0;
        vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;

        let mut me = Self {
            vcpu,
            _vm: vm,
            _ram: ram,
            kind,
        };
        // The first exit must be the loop's, or the setup is wrong.
        me.run_expected()?;
        Ok(me)
    }

    /// The loop this VM runs.
    pub fn kind(&self) -> FloorKind {
        self.kind
    }

    /// One `KVM_RUN`: the exit it returned, whatever it was.
    pub fn run_exit(&mut self) -> Result<Exit, FloorError> {
        match self.vcpu.run() {
            Ok(exit) => Ok(Exit::of(&exit)),
            Err(e) => Err(FloorError::Kvm {
                what: "KVM_RUN",
                source: e,
            }),
        }
    }

    /// One `KVM_RUN` that must return the loop's exit.
    pub fn run_expected(&mut self) -> Result<Exit, FloorError> {
        let exit = self.run_exit()?;
        if self.kind.expects(exit) {
            return Ok(exit);
        }
        let rip = self.vcpu.get_regs().map_or(0, |r| r.rip);
        Err(FloorError::UnexpectedExit {
            kind: self.kind.name(),
            got: exit,
            rip,
        })
    }

    /// Times `exits` round trips (after nothing else: no warm-up) and returns the mean
    /// nanoseconds per exit; every exit is checked to be the loop's.
    pub fn time_ns(&mut self, exits: u32) -> Result<f64, FloorError> {
        if exits == 0 {
            return Err(FloorError::NoExits);
        }
        let t = Instant::now();
        for _ in 0..exits {
            self.run_expected()?;
        }
        Ok(t.elapsed().as_nanos() as f64 / f64::from(exits))
    }
}

/// Builds a CPL3 VM for `kind`, runs [`WARM_UP_EXITS`] untimed exits, then times
/// `exits` `KVM_RUN` round trips on the calling thread (pin it first to pin the vCPU)
/// and returns the mean nanoseconds per exit.
pub fn measure_ns(kind: FloorKind, exits: u32) -> Result<f64, FloorError> {
    if exits == 0 {
        return Err(FloorError::NoExits);
    }
    let mut vm = FloorVm::new(kind, false)?;
    for _ in 0..WARM_UP_EXITS {
        vm.run_expected()?;
    }
    vm.time_ns(exits)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The VM of `kind`, or None (with a note) where this host has no usable KVM.
    fn vm_or_skip(kind: FloorKind) -> Option<FloorVm> {
        match FloorVm::new(kind, false) {
            Ok(vm) => Some(vm),
            Err(e) if e.no_kvm() => {
                eprintln!("exit_floor: skipped, no usable /dev/kvm: {e}");
                None
            }
            Err(e) => panic!("{} floor VM: {e}", kind.name()),
        }
    }

    #[test]
    fn exit_floor_loops_exit_where_they_should() {
        let Some(mut pio) = vm_or_skip(FloorKind::Pio) else {
            return;
        };
        for _ in 0..100 {
            let exit = pio.run_exit().expect("KVM_RUN");
            assert_eq!(
                exit,
                Exit::Pio {
                    port: NULL_PORT,
                    data: 0
                }
            );
        }
        let mut mmio = vm_or_skip(FloorKind::Mmio).expect("KVM worked for the PIO VM");
        assert_eq!(mmio.kind(), FloorKind::Mmio);
        for _ in 0..100 {
            let exit = mmio.run_exit().expect("KVM_RUN");
            assert_eq!(
                exit,
                Exit::Mmio {
                    addr: MMIO_ADDR,
                    data: 0
                }
            );
        }
        // The timed path checks every exit too, and reports a positive mean.
        let ns = measure_ns(FloorKind::Mmio, 100).expect("measure");
        assert!(ns > 0.0, "{ns}");
        assert!(matches!(measure_ns(FloorKind::Pio, 0), Err(FloorError::NoExits)));
    }

    #[test]
    fn exit_floor_kinds_expect_their_own_exit() {
        let pio = Exit::Pio {
            port: NULL_PORT,
            data: 0,
        };
        let mmio = Exit::Mmio {
            addr: MMIO_ADDR,
            data: 0,
        };
        assert!(FloorKind::Pio.expects(pio) && !FloorKind::Pio.expects(mmio));
        assert!(FloorKind::Mmio.expects(mmio) && !FloorKind::Mmio.expects(pio));
        assert!(!FloorKind::Pio.expects(Exit::Pio { port: 0x80, data: 0 }));
        assert!(!FloorKind::Mmio.expects(Exit::Other("Hlt")));
        // The MMIO target is mapped by the guest's huge page but not backed by the slot.
        assert!(MMIO_ADDR >= MEM_SIZE as u64 && MMIO_ADDR < 2 << 20);
    }
}
