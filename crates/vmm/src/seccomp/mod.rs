//! Seccomp filters, one allow-list per thread role (vCPU, device worker,
//! API, VMM thread), built with rust-vmm's `seccompiler` at build time
//! (`build.rs` compiles the rules of `filters.rs`; `embedded` holds the
//! BPF), so a thread only installs its program.
//!
//! The binary calls [`configure`] once, before it starts any thread; every
//! role then calls [`apply`] when its thread starts (the VMM thread after the
//! machine is built). Without [`configure`] (library use, unit tests) nothing
//! is installed. A syscall outside a thread's list raises SIGSYS
//! (`SECCOMP_RET_TRAP`); the handler names the thread and the syscall on
//! stderr and ends the process with status 159 (128 + SIGSYS).
//!
//! Device workers are started by whichever thread activates the device (a
//! vCPU writing DRIVER_OK, or the VMM). A child inherits its parent's filter,
//! so they are started by one spawner thread instead ([`spawn_worker`]),
//! which runs under the worker list (plus `clone`): a worker never holds a
//! vCPU's or the VMM's calls.

mod embedded;
// The rules: compiled by build.rs; here the crate takes `Role` from them,
// and its tests compile them again to compare.
#[cfg_attr(not(test), allow(dead_code))]
mod filters;
pub mod names;
mod tree;

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

pub use filters::Role;
pub use seccompiler::{sock_filter, BpfProgram};

/// Which filters to install.
#[derive(Debug)]
pub enum Policy {
    /// None (`--no-seccomp`).
    Off,
    /// kvmkit's default lists.
    Default,
    /// Compiled from a Firecracker-format JSON file (`--seccomp-filter`):
    /// keys `vmm`, `api`, `vcpu`, and optionally `worker` (else `vmm`'s).
    Custom(HashMap<String, BpfProgram>),
}

struct Installed {
    /// Each role's program: the default ones embedded at build time, a
    /// `--seccomp-filter` file's compiled when it was read.
    programs: HashMap<Role, Cow<'static, [sock_filter]>>,
    selftest: Option<Role>,
    spawner: Mutex<Option<Sender<Job>>>,
    /// The spawner's end of the channel until its thread starts
    /// ([`launch_worker_spawner`]).
    spawner_rx: Mutex<Option<Receiver<Job>>>,
}

type Job = Box<dyn FnOnce() + Send>;

static INSTALLED: OnceLock<Option<Installed>> = OnceLock::new();

/// The environment variable that makes a thread of the named role
/// (`vcpu`, `worker`, `api`, `vmm`) call a forbidden syscall right after its
/// filter is installed (tests of the SIGSYS report).
pub const SELFTEST_ENV: &str = "KVMKIT_SECCOMP_SELFTEST";

/// Reads a Firecracker-format JSON filter file.
pub fn load_json(path: &std::path::Path) -> Result<Policy, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut map = seccompiler::compile_from_json(io::BufReader::new(f), seccompiler::TargetArch::x86_64)
        .map_err(|e| format!("{}: not a seccomp filter file: {e}", path.display()))?;
    // The same search-tree dispatch as the default lists; a program in
    // another shape is kept as it is.
    for p in map.values_mut() {
        if let Ok(t) = tree::search_tree(p) {
            *p = t;
        }
    }
    for k in ["vmm", "api", "vcpu"] {
        if !map.contains_key(k) {
            return Err(format!("{}: no filter for the '{k}' thread", path.display()));
        }
    }
    Ok(Policy::Custom(map))
}

/// `role`'s default filter: BPF that seccompiler compiled from `filters.rs`
/// at build time.
pub fn default_program(role: Role) -> &'static [sock_filter] {
    embedded::program(role)
}

/// `role`'s list as seccompiler alone compiles it, its calls matched one
/// after another (what [`default_program`] was before its search tree):
/// for side-by-side costs (`examples/seccomp_cost.rs`).
pub fn linear_program(role: Role) -> Result<BpfProgram, String> {
    filters::linear_program(role)
}

/// Sets the process's policy, installs the SIGSYS handler and starts the
/// worker spawner. Call once, before any other thread starts.
pub fn configure(policy: Policy) -> Result<(), String> {
    let installed = match policy {
        Policy::Off => None,
        Policy::Default => Some(
            Role::ALL
                .iter()
                .map(|&r| (r, Cow::Borrowed(embedded::program(r))))
                .collect(),
        ),
        Policy::Custom(mut map) => {
            let vmm = map.get("vmm").cloned().unwrap_or_default();
            let worker = map.remove("worker").unwrap_or_else(|| vmm.clone());
            let mut programs = HashMap::new();
            for r in Role::ALL {
                let p = match r {
                    Role::Worker | Role::Spawner | Role::Console => worker.clone(),
                    _ => map.get(r.key()).cloned().unwrap_or_default(),
                };
                programs.insert(r, Cow::Owned(p));
            }
            Some(programs)
        }
    }
    .map(|programs| Installed {
        programs,
        selftest: std::env::var(SELFTEST_ENV).ok().and_then(|v| {
            [Role::Vmm, Role::Vcpu, Role::Worker, Role::Api]
                .into_iter()
                .find(|r| r.key() == v)
        }),
        spawner: Mutex::new(None),
        spawner_rx: Mutex::new(None),
    });
    let on = installed.is_some();
    INSTALLED
        .set(installed)
        .map_err(|_| "seccomp is already configured".to_string())?;
    if on {
        one_malloc_arena();
        install_sigsys_handler()?;
    }
    Ok(())
}

/// Opens the channel device workers are spawned through (by a spawner
/// thread, so they never inherit a vCPU's filter). Call from the VMM thread
/// before any vCPU runs: a vCPU that writes DRIVER_OK then finds it, and
/// its request waits there until [`launch_worker_spawner`] starts the
/// thread, which can come after the vCPU threads (their start is the boot's
/// critical path; the spawner's start and filter cost ~0.2 ms). Idempotent,
/// and nothing when seccomp is off.
pub fn start_worker_spawner() -> Result<(), String> {
    let Some(Some(inst)) = INSTALLED.get() else {
        return Ok(());
    };
    let mut tx_slot = inst.spawner.lock().unwrap_or_else(|e| e.into_inner());
    if tx_slot.is_none() {
        let (tx, rx) = channel::<Job>();
        *tx_slot = Some(tx);
        *inst.spawner_rx.lock().unwrap_or_else(|e| e.into_inner()) = Some(rx);
    }
    Ok(())
}

/// Starts the spawner thread of [`start_worker_spawner`]'s channel, if it
/// has not started yet.
pub fn launch_worker_spawner() -> Result<(), String> {
    let Some(Some(inst)) = INSTALLED.get() else {
        return Ok(());
    };
    let Some(rx) = inst.spawner_rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("virtio-spawn".into())
        .spawn(move || {
            apply_or_exit(Role::Spawner);
            for job in rx {
                job();
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the device worker spawner: {e}"))
}

/// Whether filters are installed in this process.
pub fn enabled() -> bool {
    matches!(INSTALLED.get(), Some(Some(_)))
}

thread_local! {
    static THREAD_NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

/// One malloc arena for the whole process. glibc gives new threads arenas
/// of their own, and two things it then does need a syscall no filter
/// allows: it reads /sys/devices/system/cpu/online (an `openat`) the first
/// time a thread needs an arena unless the arena limit is set, and
/// /proc/sys/vm/overcommit_memory the first time it shrinks a thread arena's
/// heap (a device worker freeing large buffers under load). kvmkit used to
/// set glibc's default limit and prime the second read with a short-lived
/// thread at start; with one arena neither happens (the main arena grows
/// and shrinks with brk), no thread maps a 64 MiB arena reserve at its
/// start, and start-up has one thread less. Allocation on the I/O paths is
/// rare (buffers are made when a device is) and small ones come from each
/// thread's cache without the arena's lock.
fn one_malloc_arena() {
    // SAFETY: mallopt only changes a malloc tunable.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1)
    };
}

/// Records the calling thread's name for the SIGSYS report (threads that
/// inherit a filter instead of calling [`apply`]).
pub fn note_thread() {
    if enabled() {
        remember_name();
    }
}

fn remember_name() {
    let mut buf = [0u8; 16];
    if let Some(n) = std::thread::current().name() {
        let b = n.as_bytes();
        let k = b.len().min(15);
        buf[..k].copy_from_slice(&b[..k]);
    }
    THREAD_NAME.with(|c| c.set(buf));
}

/// Installs `role`'s filter on the calling thread (nothing when seccomp is
/// off or not configured).
pub fn apply(role: Role) -> Result<(), String> {
    let Some(Some(inst)) = INSTALLED.get() else {
        return Ok(());
    };
    remember_name();
    let Some(prog) = inst.programs.get(&role) else {
        return Ok(());
    };
    if prog.is_empty() {
        return Ok(());
    }
    seccompiler::apply_filter(prog).map_err(|e| format!("cannot install the {} seccomp filter: {e}", role.key()))?;
    if inst.selftest == Some(role) {
        forbidden_call();
    }
    Ok(())
}

/// Installs `role`'s filter; a failure is reported and ends the process
/// (a thread must not run unfiltered when filters were asked for).
pub fn apply_or_exit(role: Role) {
    if let Err(e) = apply(role) {
        eprintln!("kvmkit: {e}");
        std::process::exit(1);
    }
}

/// A syscall no role allows (`getppid`), for the self-test.
fn forbidden_call() {
    // SAFETY: getppid has no arguments and no side effects.
    unsafe { libc::syscall(libc::SYS_getppid) };
}

/// Starts device worker thread `name` running `f` under the worker filter.
pub fn spawn_worker<T, F>(name: String, f: F) -> io::Result<JoinHandle<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let body = move || {
        apply_or_exit(Role::Worker);
        f()
    };
    let spawner = match INSTALLED.get() {
        Some(Some(inst)) => inst.spawner.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        _ => None,
    };
    let Some(tx) = spawner else {
        return std::thread::Builder::new().name(name).spawn(body);
    };
    let (rtx, rrx) = channel();
    let job: Job = Box::new(move || {
        let _ = rtx.send(std::thread::Builder::new().name(name).spawn(body));
    });
    tx.send(job)
        .map_err(|_| io::Error::other("the device worker spawner has ended"))?;
    rrx.recv()
        .map_err(|_| io::Error::other("the device worker spawner did not answer"))?
}

fn install_sigsys_handler() -> Result<(), String> {
    // SAFETY: a zeroed sigaction is valid; the handler only uses
    // async-signal-safe calls (write, _exit) and a const thread-local.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(format!(
                "cannot install the SIGSYS handler: {}",
                io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Exit status after a forbidden syscall: 128 + SIGSYS.
pub const SIGSYS_EXIT: i32 = 128 + libc::SIGSYS;

struct Buf {
    b: [u8; 256],
    n: usize,
}

impl Buf {
    fn push(&mut self, s: &[u8]) {
        for &c in s {
            if self.n < self.b.len() {
                self.b[self.n] = c;
                self.n += 1;
            }
        }
    }

    fn num(&mut self, mut v: u64) {
        let mut d = [0u8; 20];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&d[i..]);
    }
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // siginfo_t's SIGSYS fields: si_call_addr at 16, si_syscall (int) at 24.
    // SAFETY: the kernel hands a valid siginfo_t for SA_SIGINFO handlers.
    let nr = unsafe { *(info as *const u8).add(24).cast::<i32>() };
    let name = THREAD_NAME.with(Cell::get);
    let len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    let mut b = Buf { b: [0; 256], n: 0 };
    b.push(b"kvmkit: seccomp: thread '");
    if len == 0 {
        b.push(b"(unnamed) tid ");
        // SAFETY: gettid has no arguments (and every filter allows it).
        b.num(unsafe { libc::syscall(libc::SYS_gettid) } as u64);
    } else {
        b.push(&name[..len]);
    }
    b.push(b"' made syscall ");
    b.num(nr as u64);
    b.push(b" (");
    b.push(names::name(nr.into()).unwrap_or("unknown").as_bytes());
    b.push(b"), which its filter forbids; the VM is ended\n");
    // SAFETY: write and _exit are async-signal-safe; the buffer is local.
    unsafe {
        libc::write(libc::STDERR_FILENO, b.b.as_ptr().cast(), b.n);
        libc::_exit(SIGSYS_EXIT);
    }
}

/// Whether this kernel offers seccomp filters with the trap action kvmkit
/// uses (`seccomp(SECCOMP_GET_ACTION_AVAIL, SECCOMP_RET_TRAP)`).
pub fn available() -> Result<(), String> {
    let action: u32 = libc::SECCOMP_RET_TRAP;
    // SAFETY: the third argument points at a u32, as this operation wants.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error().to_string())
    }
}

/// The Landlock ABI version this kernel offers, or why none.
pub fn landlock_abi() -> Result<i64, String> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_long = 1;
    // SAFETY: with a null attribute and size 0, this only asks the version.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if r > 0 {
        Ok(r)
    } else {
        Err(io::Error::last_os_error().to_string())
    }
}

/// `kvmkit check`'s lines for seccomp and Landlock (neither is required).
pub fn host_items() -> Vec<crate::host::check::CheckItem> {
    use crate::host::check::CheckItem;
    let seccomp = available();
    let landlock = landlock_abi();
    vec![
        CheckItem {
            name: "seccomp".into(),
            ok: seccomp.is_ok(),
            required: false,
            detail: match &seccomp {
                Ok(()) => "filters with SECCOMP_RET_TRAP available; kvmkit run installs them per thread".into(),
                Err(e) => format!("not available ({e}); kvmkit run needs --no-seccomp"),
            },
            fix: seccomp
                .is_err()
                .then(|| "use a kernel built with CONFIG_SECCOMP_FILTER".to_owned()),
        },
        CheckItem {
            name: "Landlock".into(),
            ok: landlock.is_ok(),
            required: false,
            detail: match &landlock {
                Ok(v) => format!("ABI version {v} (kvmkit run --landlock uses it)"),
                Err(e) => format!("not available ({e}); kvmkit run --landlock cannot be used"),
            },
            fix: landlock
                .is_err()
                .then(|| "boot with lsm=...,landlock (CONFIG_SECURITY_LANDLOCK)".to_owned()),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The programs build.rs embedded are the ones seccompiler builds from
    /// the same rules now, instruction for instruction.
    #[test]
    fn embedded_filters_are_the_ones_seccompiler_builds() {
        for r in Role::ALL {
            let now = filters::program(r).expect("compile");
            assert!(!now.is_empty());
            assert_eq!(default_program(r), now.as_slice(), "{r:?}");
        }
        // Roles with different lists get different programs.
        assert_ne!(default_program(Role::Vcpu), default_program(Role::Vmm));
    }

    /// Runs a classic BPF seccomp program (the instructions seccompiler,
    /// the search tree and `kvm_run_first` emit) on one x86_64 call; returns
    /// the action.
    fn run_bpf(p: &[sock_filter], nr: u32, args: [u64; 6]) -> u32 {
        let word = |off: u32| match off {
            0 => nr,
            4 => 0xc000_003e, // AUDIT_ARCH_X86_64
            16..=63 => {
                let a = args[((off - 16) / 8) as usize];
                if (off - 16).is_multiple_of(8) {
                    a as u32
                } else {
                    (a >> 32) as u32
                }
            }
            _ => panic!("load at {off}"),
        };
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = &p[pc];
            pc += 1;
            let jump = |t: bool| usize::from(if t { i.jt } else { i.jf });
            match i.code {
                0x20 => acc = word(i.k),
                0x54 => acc &= i.k,
                0x05 => pc += i.k as usize,
                0x15 => pc += jump(acc == i.k),
                0x25 => pc += jump(acc > i.k),
                0x35 => pc += jump(acc >= i.k),
                0x45 => pc += jump(acc & i.k != 0),
                0x06 => return i.k,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    /// Every embedded program (its dispatch a search tree, the vCPU's with
    /// its KVM_RUN check first) decides every call as seccompiler's linear
    /// program does: every syscall number, with each value the rules
    /// compare (and the same with high bits set) in each argument.
    #[test]
    fn embedded_programs_decide_as_seccompilers() {
        let allow = u32::from(seccompiler::SeccompAction::Allow);
        let trap = u32::from(seccompiler::SeccompAction::Trap);
        for role in Role::ALL {
            let linear = filters::linear_program(role).expect("compile");
            let fast = default_program(role);
            let mut values: Vec<u64> = vec![0, 0xffff_ffff, 0xdead_beef];
            for i in &linear {
                if matches!(i.code, 0x15 | 0x25 | 0x35 | 0x45 | 0x54) {
                    values.extend([u64::from(i.k), u64::from(i.k) | 1 << 32, u64::from(i.k).wrapping_add(1)]);
                }
            }
            values.sort_unstable();
            values.dedup();
            let (mut allowed, mut trapped) = (0, 0);
            for nr in 0..512u32 {
                for &v in &values {
                    for arg in 0..6 {
                        let mut args = [0u64; 6];
                        args[arg] = v;
                        let want = run_bpf(&linear, nr, args);
                        assert_eq!(run_bpf(fast, nr, args), want, "{role:?}: nr {nr} args {args:x?}");
                        if want == allow {
                            allowed += 1;
                        } else if want == trap {
                            trapped += 1;
                        }
                    }
                }
            }
            assert!(allowed > 0 && trapped > 0, "{role:?}");
        }
        let fast = default_program(Role::Vcpu);
        // The interpreter agrees with the lists: KVM_RUN allowed, getppid not.
        let ioctl = names::number("ioctl").expect("ioctl") as u32;
        assert_eq!(run_bpf(fast, ioctl, [0, 0xae80, 0, 0, 0, 0]), allow);
        assert_eq!(run_bpf(fast, ioctl, [0, 0xae81, 0, 0, 0, 0]), trap);
        assert_eq!(run_bpf(fast, libc::SYS_getppid as u32, [0; 6]), trap);
    }

    /// What Linux does when a filter is installed (kernel/seccomp.c,
    /// `seccomp_is_const_allow`, once per syscall number): the instructions
    /// walked until the program loads an argument or returns. The tree cuts
    /// that walk, summed over the numbers, by more than 4x.
    #[test]
    fn the_search_tree_shortens_the_kernels_walk() {
        fn steps(p: &[sock_filter], nr: u32) -> usize {
            let (mut pc, mut acc, mut n) = (0usize, 0u32, 0);
            loop {
                let i = &p[pc];
                pc += 1;
                n += 1;
                let jump = |t: bool| usize::from(if t { i.jt } else { i.jf });
                match i.code {
                    0x20 if i.k == 0 => acc = nr,
                    0x20 if i.k == 4 => acc = 0xc000_003e,
                    0x20 | 0x06 => return n,
                    0x54 => acc &= i.k,
                    0x05 => pc += i.k as usize,
                    0x15 => pc += jump(acc == i.k),
                    0x25 => pc += jump(acc > i.k),
                    0x35 => pc += jump(acc >= i.k),
                    0x45 => pc += jump(acc & i.k != 0),
                    c => panic!("opcode {c:#x}"),
                }
            }
        }
        for role in Role::ALL {
            let linear = filters::linear_program(role).expect("compile");
            let tree = default_program(role);
            let walk = |p: &[sock_filter]| (0..460).map(|nr| steps(p, nr)).sum::<usize>();
            let (before, after) = (walk(&linear), walk(tree));
            eprintln!("{role:?}: {before} -> {after} steps");
            assert!(after * 4 < before, "{role:?}: {before} -> {after} steps");
        }
    }

    /// filters.rs writes Linux's argument values itself (build.rs has no
    /// libc); they must be libc's.
    #[test]
    fn argument_values_are_linux_ones() {
        assert_eq!(filters::PROT_EXEC, libc::PROT_EXEC as u64);
        assert_eq!(filters::PR_SET_NAME, libc::PR_SET_NAME as u64);
        assert_eq!(filters::PR_SET_NO_NEW_PRIVS, libc::PR_SET_NO_NEW_PRIVS as u64);
        assert_eq!(
            filters::SECCOMP_SET_MODE_FILTER,
            u64::from(libc::SECCOMP_SET_MODE_FILTER)
        );
        assert_eq!(filters::AF_UNIX, libc::AF_UNIX as u64);
        for n in ["mmap", "mprotect", "ioctl", "prctl", "seccomp", "socket"] {
            assert!(names::number(n).is_some(), "{n}");
        }
        assert_eq!(names::number("mmap"), Some(libc::SYS_mmap));
        assert_eq!(names::number("socket"), Some(libc::SYS_socket));
    }

    #[test]
    fn list_sizes_match_docs_security_md() {
        let n = |r| filters::rules(r).len();
        assert_eq!(
            [
                n(Role::Vcpu),
                n(Role::Worker),
                n(Role::Spawner),
                n(Role::Api),
                n(Role::Vmm)
            ],
            [30, 50, 53, 40, 56],
            "update the table in docs/security.md"
        );
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(names::name(16), Some("ioctl"));
        assert_eq!(names::number("ioctl"), Some(16));
        assert_eq!(names::name(-1), None);
    }
}
