//! The default allow-lists, one per thread role: the one source of truth
//! for kvmkit's filters. Derived by running kvmkit's integration suite
//! (guest workloads, blk-*, rng, net-*, the API and snapshot tests) under
//! `strace -f` and reading each thread's calls; see docs/security.md for the
//! table.
//!
//! This file is compiled twice: into the crate, and into `build.rs` (through
//! `#[path]`, beside `names.rs`), which compiles every role's program with
//! seccompiler and embeds the BPF in the binary, so starting a thread only
//! installs it. It uses nothing of the crate but `super::names`, and no
//! syscall number from the build host's libc (the lists are x86_64's,
//! whatever machine builds them).

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond,
    SeccompFilter, SeccompRule, TargetArch,
};

/// A thread's role, which picks its filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The VMM thread (event loop), after the machine is built.
    Vmm,
    /// A vCPU thread.
    Vcpu,
    /// A virtio device worker.
    Worker,
    /// The thread that starts device workers.
    Spawner,
    /// The serial console's output thread (the worker list).
    Console,
    /// The API threads (tiny_http's and `fc_api*`).
    Api,
}

impl Role {
    /// The key of this role in a Firecracker-format JSON filter file.
    pub fn key(self) -> &'static str {
        match self {
            Role::Vmm => "vmm",
            Role::Vcpu => "vcpu",
            Role::Worker | Role::Spawner | Role::Console => "worker",
            Role::Api => "api",
        }
    }

    /// Every role.
    pub const ALL: [Role; 6] = [
        Role::Vmm,
        Role::Vcpu,
        Role::Worker,
        Role::Spawner,
        Role::Console,
        Role::Api,
    ];
}

/// x86_64's number of a syscall named in these lists.
fn nr(name: &str) -> i64 {
    super::names::number(name).unwrap_or_else(|| panic!("unknown syscall {name}"))
}

// ioctl request numbers (from <linux/kvm.h>, <asm/termbits.h>, <linux/if_tun.h>).
const KVM_RUN: u64 = 0xae80;
const KVM_GET_CPUID2: u64 = 0xc008_ae91;
const KVM_GET_DEBUGREGS: u64 = 0x8080_aea1;
const KVM_GET_LAPIC: u64 = 0x8400_ae8e;
const KVM_GET_MP_STATE: u64 = 0x8004_ae98;
const KVM_GET_MSRS: u64 = 0xc008_ae88;
const KVM_GET_MSR_INDEX_LIST: u64 = 0xc004_ae02;
const KVM_GET_REGS: u64 = 0x8090_ae81;
const KVM_GET_SREGS: u64 = 0x8138_ae83;
const KVM_GET_TSC_KHZ: u64 = 0xaea3;
const KVM_GET_VCPU_EVENTS: u64 = 0x8040_ae9f;
const KVM_GET_XCRS: u64 = 0x8188_aea6;
const KVM_GET_XSAVE: u64 = 0x9000_aea4;
const KVM_GET_XSAVE2: u64 = 0x9000_aecf;
const KVM_CHECK_EXTENSION: u64 = 0xae03;
const KVM_GET_CLOCK: u64 = 0x8030_ae7c;
const KVM_GET_IRQCHIP: u64 = 0xc208_ae62;
const KVM_GET_PIT2: u64 = 0x8070_ae9f;
const KVM_GET_DIRTY_LOG: u64 = 0x4010_ae42;
const KVM_IRQFD: u64 = 0x4020_ae76;
const KVM_IOEVENTFD: u64 = 0x4040_ae79;
const KVM_IRQ_LINE: u64 = 0x4008_ae61;
const TCGETS: u64 = 0x5401;
const TCSETS: u64 = 0x5402;
const TCSETSW: u64 = 0x5403;
const TCSETSF: u64 = 0x5404;
const SIOCGIFINDEX: u64 = 0x8933;
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;

// Argument values (Linux's, the same on every architecture; written here
// rather than taken from libc so that build.rs needs no libc).
pub(crate) const PROT_EXEC: u64 = 4;
pub(crate) const PR_SET_NAME: u64 = 15;
pub(crate) const PR_SET_NO_NEW_PRIVS: u64 = 38;
pub(crate) const SECCOMP_SET_MODE_FILTER: u64 = 1;
pub(crate) const AF_UNIX: u64 = 1;

/// What every thread does: memory, locks, signals, its own start and end,
/// writing to the descriptors it already holds (stderr, eventfds).
const BASE: &[&str] = &[
    "brk",
    "close",
    "clock_gettime",
    "clock_nanosleep",
    "exit",
    "exit_group",
    "fcntl",
    "futex",
    "getrandom",
    "gettid",
    "madvise",
    "mremap",
    "munmap",
    "nanosleep",
    // A sleep or poll interrupted by SIGSTOP/SIGCONT goes on through it.
    "restart_syscall",
    "rseq",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sched_getaffinity",
    "sched_yield",
    "set_robust_list",
    "sigaltstack",
    "write",
];

const VCPU: &[&str] = &[
    // Device activation (a DRIVER_OK write) makes eventfds. (A snapshot's
    // SaveState uses the MSR list the machine builder read: no openat.)
    "eventfd2", "read", "poll", "ppoll",
];

const WORKER: &[&str] = &[
    // virtio-net's tx bursts (net/tx_ring.rs): the ring, made before any
    // filter, can only write to its tap.
    "io_uring_enter",
    "poll",
    "ppoll",
    "read",
    "readv",
    "pread64",
    "preadv",
    "pwrite64",
    "pwritev",
    "writev",
    "lseek",
    "fdatasync",
    "fsync",
    // virtio-blk DISCARD (punch a hole) and WRITE_ZEROES (zero a range):
    // Linux's ext4 issues them from its lazy inode-table init.
    "fallocate",
    "recvfrom",
    "sendto",
    // virtio-vsock: its unix sockets (accept4 on the listener made at
    // build time, connect for guest-initiated connections, half-closes)
    // and the epoll set it polls them through; socket() is AF_UNIX only.
    "accept4",
    "connect",
    "shutdown",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
];

const API: &[&str] = &[
    "accept4",
    "getsockname",
    "poll",
    "ppoll",
    "read",
    "readv",
    "recvfrom",
    "recvmsg",
    "sendmsg",
    "sendto",
    "shutdown",
    "writev",
    // tiny_http starts a thread per connection (up to its pool size); the
    // body reader is a thread too.
    "clone",
    "clone3",
];

const VMM: &[&str] = &[
    "poll",
    "ppoll",
    "read",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "lseek",
    "openat",
    "statx",
    "newfstatat",
    "fstat",
    "ftruncate",
    "fallocate",
    "fdatasync",
    "fsync",
    "flock",
    "rename",
    "unlink",
    "unlinkat",
    "getpid",
    "tgkill",
    "connect",
    "shutdown",
    "sendto",
    "recvfrom",
    "eventfd2",
    "copy_file_range",
    "sendfile",
];

fn ioctls(role: Role) -> &'static [u64] {
    match role {
        Role::Vcpu => &[
            KVM_RUN,
            KVM_GET_CPUID2,
            KVM_GET_DEBUGREGS,
            KVM_GET_LAPIC,
            KVM_GET_MP_STATE,
            KVM_GET_MSRS,
            KVM_GET_MSR_INDEX_LIST,
            KVM_GET_REGS,
            KVM_GET_SREGS,
            KVM_GET_TSC_KHZ,
            KVM_GET_VCPU_EVENTS,
            KVM_GET_XCRS,
            KVM_GET_XSAVE,
            KVM_GET_XSAVE2,
            KVM_CHECK_EXTENSION,
            KVM_IRQFD,
            KVM_IOEVENTFD,
            KVM_IRQ_LINE,
            TUNSETOFFLOAD,
            TUNSETVNETHDRSZ,
        ],
        Role::Worker | Role::Spawner | Role::Console => &[TUNSETOFFLOAD, TUNSETVNETHDRSZ],
        Role::Api => &[],
        Role::Vmm => &[
            KVM_GET_CLOCK,
            // Diff snapshots (and the reset after any snapshot) with dirty-page tracking.
            KVM_GET_DIRTY_LOG,
            KVM_GET_IRQCHIP,
            KVM_GET_PIT2,
            KVM_CHECK_EXTENSION,
            KVM_IRQ_LINE,
            KVM_IRQFD,
            KVM_IOEVENTFD,
            TCGETS,
            TCSETS,
            TCSETSW,
            TCSETSF,
            // if_nametoindex at network teardown.
            SIOCGIFINDEX,
        ],
    }
}

fn eq(arg: u8, v: u64) -> Cond {
    Cond::new(arg, Len::Dword, Op::Eq, v).expect("valid condition")
}

fn rule(c: Vec<Cond>) -> SeccompRule {
    SeccompRule::new(c).expect("valid rule")
}

/// The syscall names and argument rules of `role`'s default filter.
pub fn rules(role: Role) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut names: Vec<&str> = BASE.to_vec();
    names.extend_from_slice(match role {
        Role::Vcpu => VCPU,
        Role::Worker => WORKER,
        Role::Spawner | Role::Console => WORKER,
        Role::Api => API,
        Role::Vmm => VMM,
    });
    if role == Role::Spawner {
        names.extend_from_slice(&["clone", "clone3"]);
    }
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for n in names {
        map.insert(nr(n), vec![]);
    }
    // No executable mappings: mmap and mprotect only without PROT_EXEC.
    let no_exec = || {
        vec![rule(vec![
            Cond::new(2, Len::Dword, Op::MaskedEq(PROT_EXEC), 0).expect("cond")
        ])]
    };
    map.insert(nr("mmap"), no_exec());
    map.insert(nr("mprotect"), no_exec());
    let io: Vec<SeccompRule> = ioctls(role).iter().map(|&r| rule(vec![eq(1, r)])).collect();
    if !io.is_empty() {
        map.insert(nr("ioctl"), io);
    }
    if matches!(role, Role::Api | Role::Worker | Role::Spawner | Role::Console) {
        // Naming a new thread (std does it in the thread itself).
        map.insert(nr("prctl"), vec![rule(vec![eq(0, PR_SET_NAME)])]);
    }
    if role == Role::Spawner {
        // A new worker installs its own list on top of the spawner's.
        map.insert(
            nr("prctl"),
            vec![rule(vec![eq(0, PR_SET_NAME)]), rule(vec![eq(0, PR_SET_NO_NEW_PRIVS)])],
        );
        map.insert(nr("seccomp"), vec![rule(vec![eq(0, SECCOMP_SET_MODE_FILTER)])]);
    }
    if matches!(role, Role::Vmm | Role::Worker | Role::Spawner | Role::Console) {
        // VMM: waking the API's accept thread when it stops; workers:
        // virtio-vsock's guest-initiated connections.
        map.insert(nr("socket"), vec![rule(vec![eq(0, AF_UNIX)])]);
    }
    map
}

/// `role`'s default filter, compiled: anything else traps (SIGSYS).
pub fn program(role: Role) -> Result<BpfProgram, String> {
    let p = super::tree::search_tree(&linear_program(role)?)?;
    if role == Role::Vcpu {
        kvm_run_first(p)
    } else {
        Ok(p)
    }
}

/// `role`'s list as seccompiler compiles it: the calls matched one after
/// another in syscall-number order.
pub fn linear_program(role: Role) -> Result<BpfProgram, String> {
    let f = SeccompFilter::new(
        rules(role),
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| e.to_string())?;
    f.try_into().map_err(|e: seccompiler::BackendError| e.to_string())
}

/// A vCPU's one hot call is `ioctl(KVM_RUN)`, once per exit; in
/// seccompiler's order it first passes the chains of the ten calls numbered
/// below `ioctl` (~25 instructions, ~100 ns per exit on this lab's host).
/// This puts one check for it right after the architecture check, ahead of
/// seccompiler's program, which is otherwise unchanged: an `ioctl` whose
/// request (low 32 bits, as seccompiler's `Dword` compares) is `KVM_RUN`
/// is allowed there, as the list allows it anyway; anything else goes on
/// to the program's own `LD nr`. A unit test runs both programs over every
/// syscall number and the argument values the rules name and compares.
pub fn kvm_run_first(mut p: BpfProgram) -> Result<BpfProgram, String> {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    // offsetof(struct seccomp_data, nr) and args[1]'s low half (x86_64).
    const NR: u32 = 0;
    const ARG1_LOW: u32 = 24;
    let at = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    // seccompiler's start: LD arch; JEQ AUDIT_ARCH_X86_64 (skip 1); RET kill; LD nr.
    let start_ok = p.len() > 4
        && p[0].code == LD_W_ABS
        && p[1].code == JEQ_K
        && (p[1].jt, p[1].jf) == (1, 0)
        && p[2].code == RET_K
        && p[3] == at(LD_W_ABS, 0, 0, NR);
    if !start_ok || !ioctls(Role::Vcpu).contains(&KVM_RUN) {
        return Err("the vCPU program does not start as expected: no KVM_RUN fast path".into());
    }
    let ioctl = u32::try_from(nr("ioctl")).map_err(|e| e.to_string())?;
    let run = u32::try_from(KVM_RUN).map_err(|e| e.to_string())?;
    let fast = [
        at(LD_W_ABS, 0, 0, NR),
        at(JEQ_K, 0, 3, ioctl),
        at(LD_W_ABS, 0, 0, ARG1_LOW),
        at(JEQ_K, 0, 1, run),
        at(RET_K, 0, 0, u32::from(SeccompAction::Allow)),
    ];
    let rest = p.split_off(3);
    p.extend(fast);
    p.extend(rest);
    Ok(p)
}
