//! What a seccomp filter costs on this host, apart from any VM: installing
//! each role's embedded program (search-tree dispatch) and seccompiler's
//! linear program for the same list on a fresh thread, and the time of a
//! syscall (an `ioctl` the vCPU filter checks by argument, a `write` and a
//! `gettid` it allows outright) without a filter, under a one-instruction
//! allow-all filter, and under the vCPU filter. Medians of interleaved
//! rounds.
//!
//!     cargo run --release -p kvmkit-vmm --example seccomp_cost [ROUNDS]

use std::time::Instant;

use kvmkit_vmm::seccomp::{default_program, linear_program, sock_filter, Role};

/// `KVM_RUN`, made on fd -1 (EBADF): the vCPU filter's argument check runs.
const KVM_RUN: libc::c_ulong = 0xae80;
/// Calls per timing.
const CALLS: u32 = 200_000;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Nanoseconds per call of three syscalls, on a new thread under `prog`.
fn syscall_ns(prog: Option<Vec<sock_filter>>) -> [f64; 3] {
    std::thread::spawn(move || {
        if let Some(p) = prog {
            seccompiler::apply_filter(&p).expect("install");
        }
        let time = |f: &dyn Fn()| {
            let t = Instant::now();
            for _ in 0..CALLS {
                f();
            }
            t.elapsed().as_nanos() as f64 / f64::from(CALLS)
        };
        [
            // SAFETY: an ioctl on fd -1 fails with EBADF and touches nothing.
            time(&|| unsafe {
                libc::ioctl(-1, KVM_RUN);
            }),
            // SAFETY: a zero-length write to fd -1 fails with EBADF.
            time(&|| unsafe {
                libc::write(-1, std::ptr::null(), 0);
            }),
            // SAFETY: gettid has no arguments.
            time(&|| unsafe {
                libc::syscall(libc::SYS_gettid);
            }),
        ]
    })
    .join()
    .expect("thread")
}

/// Microseconds to install `prog` on a new thread.
fn install_us(prog: &[sock_filter]) -> f64 {
    let p = prog.to_vec();
    std::thread::spawn(move || {
        let t = Instant::now();
        seccompiler::apply_filter(&p).expect("install");
        t.elapsed().as_nanos() as f64 / 1000.0
    })
    .join()
    .expect("thread")
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(9);
    // SECCOMP_RET_ALLOW for every call.
    let allow = vec![sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0x7fff_0000,
    }];
    let roles = [Role::Vcpu, Role::Worker, Role::Spawner, Role::Api, Role::Vmm];
    let linear: Vec<Vec<sock_filter>> = roles
        .iter()
        .map(|&r| linear_program(r).expect("seccompiler compiles the list"))
        .collect();
    let mut inst: Vec<Vec<f64>> = vec![Vec::new(); roles.len() + 1];
    let mut inst_linear: Vec<Vec<f64>> = vec![Vec::new(); roles.len()];
    let mut calls: Vec<[Vec<f64>; 3]> = vec![Default::default(); 4];
    for _ in 0..rounds {
        inst[0].push(install_us(&allow));
        for (i, r) in roles.iter().enumerate() {
            inst[i + 1].push(install_us(default_program(*r)));
            inst_linear[i].push(install_us(&linear[i]));
        }
        let progs = [
            None,
            Some(allow.clone()),
            Some(default_program(Role::Vcpu).to_vec()),
            Some(linear[0].clone()),
        ];
        for (i, p) in progs.into_iter().enumerate() {
            for (k, ns) in syscall_ns(p).into_iter().enumerate() {
                calls[i][k].push(ns);
            }
        }
    }
    println!("install on a new thread (median of {rounds}, us):   search tree   seccompiler (linear)");
    println!("  allow-all (1 instruction)      {:>8.1}", median(&mut inst[0]));
    for (i, r) in roles.iter().enumerate() {
        let label = format!(
            "{r:?} ({} / {} instructions)",
            default_program(*r).len(),
            linear[i].len()
        );
        println!(
            "  {label:<36} {:>8.1} {:>8.1}",
            median(&mut inst[i + 1]),
            median(&mut inst_linear[i])
        );
    }
    println!("one syscall (median of {rounds}, ns):   ioctl(KVM_RUN)   write    gettid");
    let labels = ["no filter", "allow-all filter", "vCPU filter", "vCPU filter, linear"];
    for (i, label) in labels.iter().enumerate() {
        let [a, b, c] = &mut calls[i];
        println!("  {label:<30} {:>8.0} {:>8.0} {:>8.0}", median(a), median(b), median(c));
    }
}
