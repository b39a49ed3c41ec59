//! VM exit round trips, measured from the host.
//!
//! * `raw_kvm_pio_exit`: the floor. The minimal VM of `kvmkit_vmm::exit_floor` (kvm-ioctls
//!   directly, one 1 MiB memory slot, no irqchip) runs `out %al, (%dx)` / `jmp back` at
//!   CPL3 in 64-bit mode; one iteration is one `KVM_RUN` that returns `IoOut`.
//! * `raw_kvm_mmio_exit`: the same floor for MMIO: `mov %al, (%rdx)` / `jmp back` to a
//!   guest-physical address no memory slot backs; one iteration is one `MmioWrite`.
//! * `kvmkit_bus_pio_exit`: the PIO loop, but each `IoOut` goes the way kvmkit's
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
//! /dev/kvm the KVM benches are skipped with a note on stderr.

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use kvmkit_guest_abi::NULL_PORT;
use kvmkit_vmm::bus::Bus;
use kvmkit_vmm::control::VmControl;
use kvmkit_vmm::devices::null::NullDevice;
use kvmkit_vmm::exit_floor::{Exit, FloorKind, FloorVm};

fn kvm_loop_or_skip(name: &str, kind: FloorKind) -> Option<FloorVm> {
    let cpl0 = std::env::var_os("KVMKIT_BENCH_CPL0").is_some_and(|v| v == "1");
    let t = Instant::now();
    match FloorVm::new(kind, cpl0) {
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

/// One `KVM_RUN` per iteration of the loop of `kind`.
fn raw_kvm_exit(c: &mut Criterion, name: &str, kind: FloorKind) {
    let Some(mut vm) = kvm_loop_or_skip(name, kind) else {
        return;
    };
    c.bench_function(name, |b| {
        b.iter(|| black_box(vm.run_expected().expect("the loop's exit")))
    });
}

fn raw_kvm_pio_exit(c: &mut Criterion) {
    raw_kvm_exit(c, "raw_kvm_pio_exit", FloorKind::Pio);
}

fn raw_kvm_mmio_exit(c: &mut Criterion) {
    raw_kvm_exit(c, "raw_kvm_mmio_exit", FloorKind::Mmio);
}

fn kvmkit_bus_pio_exit(c: &mut Criterion) {
    let Some(mut vm) = kvm_loop_or_skip("kvmkit_bus_pio_exit", FloorKind::Pio) else {
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
            match vm.run_exit() {
                Ok(Exit::Pio { port, data }) => {
                    black_box(bus.write(u64::from(port), &[data]));
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
    targets = raw_kvm_pio_exit, raw_kvm_mmio_exit, kvmkit_bus_pio_exit, bus_dispatch_only
}
criterion_main!(benches);
