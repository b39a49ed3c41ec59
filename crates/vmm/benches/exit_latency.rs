//! Port-I/O exit round trip, measured from the host.
//!
//! * `raw_kvm_pio_exit`: the floor. A VM built with kvm-ioctls directly (one
//!   1 MiB memory slot, no irqchip) runs `out %al, (%dx)` / `jmp back` at CPL3
//!   in 64-bit mode; one iteration is one `KVM_RUN` that returns `IoOut`.
//! * `kvmkit_bus_pio_exit`: the same, but each `IoOut` goes the way kvmkit's
//!   vCPU loop sends it: a `VmControl::stopping()` check, then
//!   `Bus::write` to a `NullDevice` at kvmkit's null port (0x608).
//! * `bus_dispatch_only`: `Bus::write` to that `NullDevice`, no KVM at all.
//!
//! The guest starts directly in 64-bit mode at CPL3 (CS 0x1b, SS/DS 0x23),
//! the way kvmkit's guest runs its exit loops: under kvm_pvm CPL3 code runs
//! natively and a CPL3 `out` exits as `KVM_EXIT_IO` through KVM's default TSS
//! (see /work/shared/PVM.md). Set `KVMKIT_BENCH_CPL0=1` to start at CPL0
//! instead (emulated under PVM, for comparison).
//!
//! Run: `cargo bench -p kvmkit-vmm --bench exit_latency`. Without a usable
//! /dev/kvm the two KVM benches are skipped with a note on stderr.

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use kvmkit_guest_abi::NULL_PORT;
use kvmkit_vmm::bus::Bus;
use kvmkit_vmm::control::VmControl;
use kvmkit_vmm::devices::null::NullDevice;

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
const GUEST_LOOP: [u8; 3] = [0xee, 0xeb, 0xfd];

/// A 1 MiB anonymous mapping used as guest RAM.
struct GuestRam {
    ptr: *mut u8,
}

impl GuestRam {
    fn new() -> std::io::Result<Self> {
        // SAFETY: anonymous private mapping with no address hint; the result is checked.
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
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { ptr: ptr.cast() })
    }

    fn write(&mut self, gpa: u64, bytes: &[u8]) {
        let start = gpa as usize;
        assert!(start + bytes.len() <= MEM_SIZE);
        // SAFETY: the range is inside the mapping (checked above) and we hold it exclusively.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(start), bytes.len()) };
    }

    fn write_u64(&mut self, gpa: u64, v: u64) {
        self.write(gpa, &v.to_le_bytes());
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; the VM using it is dropped first.
        unsafe { libc::munmap(self.ptr.cast(), MEM_SIZE) };
    }
}

/// A one-vCPU VM spinning on `out %al, (%dx)`.
struct PioLoopVm {
    // Field order is drop order: vCPU, then VM, then the memory behind it.
    vcpu: VcpuFd,
    _vm: VmFd,
    _ram: GuestRam,
}

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

impl PioLoopVm {
    fn new(port: u16, cpl0: bool) -> Result<Self, String> {
        let e = |what: &str| {
            let what = what.to_string();
            move |err: kvm_ioctls::Error| format!("{what}: {err}")
        };
        let kvm = Kvm::new().map_err(e("open /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(e("KVM_CREATE_VM"))?;
        let mut ram = GuestRam::new().map_err(|err| format!("mmap: {err}"))?;

        // Identity-map the first 2 MiB with one huge page, User set at every level.
        ram.write_u64(PML4, PDPT | PT_PRW_USER);
        ram.write_u64(PDPT, PD | PT_PRW_USER);
        ram.write_u64(PD, PT_PRW_USER | PT_HUGE);
        ram.write(CODE, &GUEST_LOOP);

        // The memory slot goes in before anything else (no irqchip at all here).
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: ram.ptr as u64,
        };
        // SAFETY: `ram` is a live 1 MiB mapping that outlives the VM (field order in PioLoopVm).
        unsafe { vm.set_user_memory_region(region) }.map_err(e("KVM_SET_USER_MEMORY_REGION"))?;

        let vcpu = vm.create_vcpu(0).map_err(e("KVM_CREATE_VCPU"))?;
        // Long mode needs CPUID.LM in the guest's CPUID, or KVM refuses EFER.LME.
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(e("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(e("KVM_SET_CPUID2"))?;

        let mut sregs = vcpu.get_sregs().map_err(e("KVM_GET_SREGS"))?;
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
        vcpu.set_sregs(&sregs).map_err(e("KVM_SET_SREGS"))?;

        let mut regs = vcpu.get_regs().map_err(e("KVM_GET_REGS"))?;
        regs.rip = CODE;
        regs.rsp = STACK_TOP;
        regs.rflags = 0x2;
        regs.rdx = u64::from(port);
        regs.rax = 0;
        vcpu.set_regs(&regs).map_err(e("KVM_SET_REGS"))?;

        let mut me = Self {
            vcpu,
            _vm: vm,
            _ram: ram,
        };
        // The first exit must be our `out`, or the setup is wrong.
        match me.vcpu.run() {
            Ok(VcpuExit::IoOut(p, _)) if p == port => {}
            Ok(other) => {
                let what = format!("{other:?}");
                let rip = me.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                return Err(format!("first exit was {what} at RIP {rip:#x}, not IoOut({port:#x})"));
            }
            Err(err) => return Err(format!("KVM_RUN: {err}")),
        }
        Ok(me)
    }
}

fn kvm_loop_or_skip(name: &str) -> Option<PioLoopVm> {
    let cpl0 = std::env::var_os("KVMKIT_BENCH_CPL0").is_some_and(|v| v == "1");
    let t = Instant::now();
    match PioLoopVm::new(NULL_PORT, cpl0) {
        Ok(vm) => {
            eprintln!(
                "{name}: guest at CPL{} in 64-bit mode, set up in {:.1} ms",
                if cpl0 { 0 } else { 3 },
                t.elapsed().as_secs_f64() * 1e3
            );
            Some(vm)
        }
        Err(err) => {
            eprintln!("{name}: skipped, no usable KVM VM: {err}");
            None
        }
    }
}

fn null_bus() -> Bus {
    let mut bus = Bus::new("pio");
    bus.insert(Arc::new(Mutex::new(NullDevice::new(0))), u64::from(NULL_PORT), 1)
        .expect("insert null device");
    bus
}

fn raw_kvm_pio_exit(c: &mut Criterion) {
    let Some(mut vm) = kvm_loop_or_skip("raw_kvm_pio_exit") else {
        return;
    };
    c.bench_function("raw_kvm_pio_exit", |b| {
        b.iter(|| match vm.vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                black_box((port, data));
            }
            other => panic!("unexpected exit {other:?}"),
        })
    });
}

fn kvmkit_bus_pio_exit(c: &mut Criterion) {
    let Some(mut vm) = kvm_loop_or_skip("kvmkit_bus_pio_exit") else {
        return;
    };
    let bus = null_bus();
    let control = VmControl::new(Instant::now()).expect("VmControl");
    c.bench_function("kvmkit_bus_pio_exit", |b| {
        b.iter(|| {
            // What kvmkit's vCPU loop does per exit: check for a stop, run, dispatch.
            if control.stopping() {
                return;
            }
            match vm.vcpu.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    black_box(bus.write(u64::from(port), data));
                }
                other => panic!("unexpected exit {other:?}"),
            }
        })
    });
}

fn bus_dispatch_only(c: &mut Criterion) {
    let bus = null_bus();
    let data = [0u8; 1];
    c.bench_function("bus_dispatch_only", |b| {
        b.iter(|| black_box(bus.write(black_box(u64::from(NULL_PORT)), black_box(&data))))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = raw_kvm_pio_exit, kvmkit_bus_pio_exit, bus_dispatch_only
}
criterion_main!(benches);
