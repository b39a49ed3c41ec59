//! The VM lifecycle in-process, on real KVM: build, start, pause, resume,
//! stop, with kvmkit's own guest counting on its console.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvmkit_vmm::control::ExitReason;
use kvmkit_vmm::lifecycle::VmState;
use kvmkit_vmm::vmm_config::{BootSourceConfig, MachineConfig, VmResources};
use kvmkit_vmm::{KernelSource, Machine, MachineError, MachineOptions};

/// A console that keeps what the guest printed.
#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("console").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("console")).into_owned()
    }
    fn ticks(&self) -> usize {
        self.text().lines().filter(|l| l.starts_with("tick=")).count()
    }
    fn wait_for(&self, what: &str, f: impl Fn(&Self) -> bool, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; console:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn kvm_available() -> bool {
    std::path::Path::new("/dev/kvm").exists()
}

fn machine(workload: &str, cpus: u8) -> (Machine, Console) {
    let console = Console::default();
    let mut res = VmResources::default();
    res.set_machine_config(MachineConfig {
        vcpu_count: cpus,
        mem_size_mib: 64,
        ..Default::default()
    })
    .expect("machine config");
    res.set_boot_source(BootSourceConfig {
        kernel_image_path: "<kvmkit test guest>".into(),
        initrd_path: None,
        boot_args: Some(format!("kvmkit.workload={workload} kvmkit.cpus={cpus}")),
    })
    .expect("boot source");
    let mut opts = MachineOptions::new(Instant::now());
    opts.kernel = Some(KernelSource::Embedded {
        name: "kvmkit test guest".into(),
        bytes: kvmkit_guest_image::GUEST_ELF,
    });
    opts.tsc_hint = true;
    opts.console = Some(Box::new(console.clone()));
    (Machine::build(&res, &mut opts).expect("build"), console)
}

#[test]
fn pause_stops_progress_and_resume_continues() {
    if !kvm_available() {
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    let (mut m, console) = machine("ticks:10", 1);
    assert_eq!(m.state(), VmState::NotStarted);
    assert!(
        matches!(m.pause(), Err(MachineError::Transition(_))),
        "pause before start"
    );
    assert!(
        matches!(m.resume(), Err(MachineError::Transition(_))),
        "resume before start"
    );
    m.start(false).expect("start");
    assert_eq!(m.state(), VmState::Running);
    assert!(m.start(false).is_err(), "start twice");
    console.wait_for("3 ticks", |c| c.ticks() >= 3, Duration::from_secs(20));

    m.pause().expect("pause");
    assert_eq!(m.state(), VmState::Paused);
    assert!(matches!(m.pause(), Err(MachineError::Transition(_))), "pause twice");
    let frozen = console.ticks();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(console.ticks(), frozen, "the guest printed while paused");

    m.resume().expect("resume");
    assert_eq!(m.state(), VmState::Running);
    console.wait_for(
        "ticks after resume",
        |c| c.ticks() >= frozen + 3,
        Duration::from_secs(20),
    );

    assert!(m.stop(ExitReason::Stopped("the test")));
    assert_eq!(m.state(), VmState::Stopped);
    assert_eq!(m.outcome().reason, ExitReason::Stopped("the test"));
    assert!(m.resume().is_err(), "a stopped VM cannot run");
    let after = console.ticks();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(console.ticks(), after, "the guest ran after stop");
}

#[test]
fn a_vm_can_start_paused() {
    if !kvm_available() {
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    let (mut m, console) = machine("ticks:10", 2);
    m.start(true).expect("start paused");
    assert_eq!(m.state(), VmState::Paused);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(console.text(), "", "a paused VM ran guest code");
    m.resume().expect("resume");
    console.wait_for("ticks", |c| c.ticks() >= 2, Duration::from_secs(20));
    assert!(m.stop(ExitReason::Stopped("the test")));
}

#[test]
fn primes_are_right_after_many_pause_resume_cycles() {
    if !kvm_available() {
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    let (mut m, console) = machine("primes:5000000", 1);
    m.start(false).expect("start");
    let mut cycles = 0;
    while cycles < 100 && !m.control().stopping() {
        std::thread::sleep(Duration::from_millis(1));
        if m.pause().is_err() {
            break; // the guest ended between two cycles
        }
        m.resume().expect("resume");
        cycles += 1;
    }
    console.wait_for("the result", |c| c.text().contains("count="), Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !m.control().stopping() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(m.stop(ExitReason::Stopped("the test")));
    assert!(console.text().contains("count=348513"), "{}", console.text());
    assert_eq!(m.outcome().reason, ExitReason::GuestExit(0));
    assert!(
        cycles >= 10,
        "only {cycles} pause/resume cycles happened during the run"
    );
}

#[test]
fn stopping_joins_every_vcpu_thread() {
    if !kvm_available() {
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    let (mut m, console) = machine("ticks:5", 4);
    m.start(false).expect("start");
    console.wait_for("ticks", |c| c.ticks() >= 1, Duration::from_secs(20));
    assert!(m.stop(ExitReason::Stopped("the test")), "a vCPU thread was left behind");
    assert!(m.stop(ExitReason::Stopped("again")), "stop is idempotent");
    assert_eq!(
        m.outcome().reason,
        ExitReason::Stopped("the test"),
        "the first reason wins"
    );
}
