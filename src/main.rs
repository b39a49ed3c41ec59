//! `kvmkit`: a KVM virtual machine monitor and virtualization lab.

// The doc comments of clap's argument structs are `--help` text: their
// `path=IMG[,ro=on]` grammars and `<placeholders>` are not rustdoc links or HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
// The C library calls kvmkit's `main` directly (see `main` below); unit
// tests keep the test harness's.
#![cfg_attr(not(test), no_main)]

mod cli;
mod commands;
mod firecracker;
mod libm_shim;
mod logging;
mod run_cli;

use std::time::Instant;

use clap::{Parser, Subcommand};

/// kvmkit: boot VMs on Linux KVM and measure what virtualization costs.
#[derive(Debug, Parser)]
#[command(name = "kvmkit", version, about)]
pub(crate) struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); KVMKIT_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// kvmkit's subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Report whether this host can run VMs, one line per requirement.
    Check(cli::CheckArgs),
    /// Boot a VM: a Linux kernel (--kernel) or kvmkit's own test guest (--guest).
    Run(Box<cli::RunArgs>),
    /// Run a test-guest workload on the bare host (same code) for comparison.
    Host(cli::HostArgs),
    /// Linux guest assets (kernel, busybox initramfs) and the bench rootfs, built from Debian packages.
    Image(cli::ImageArgs),
    /// The paper's experiment in one command: every workload on the host, a kvmkit guest and a QEMU guest.
    Bench(cli::BenchArgs),
    /// Drive a running kvmkit (or Firecracker) over its API socket.
    Ctl(cli::CtlArgs),
    /// Snapshot files: merge a diff memory file onto its base (`snapshot rebase`).
    Snapshot(cli::SnapshotArgs),
    /// Run a command in a running Linux guest through kvmkit's guest agent over vsock
    /// (the VM from `kvmkit run --linux --api-sock S`; docs/vsock.md).
    Exec(crate::commands::exec::ExecArgs),
    /// List every workload (name, argument grammar, where it runs: guest, host, bench), one a line.
    Workloads,
    /// Named VMs on this host (like virsh): define, start, stop, list, console, logs.
    Vm(crate::commands::vm::VmArgs),
    /// The host daemon (foreground): supervises started VMs, restarts, autostart, re-adoption.
    Serve(crate::commands::vm::serve::ServeArgs),
    /// Firecracker's jailer: run the VMM in a chroot with new namespaces, a cgroup and no privileges
    /// (also as `jailer` through a symlink; docs/security.md).
    Jail(crate::commands::jail::JailArgs),
}

/// The process's entry point, called by the C library's start-up code.
///
/// Rust's own start-up (what runs before a `fn main`) is left out: it reads
/// /proc/self/maps to find the main thread's stack guard and gives every
/// thread an alternate signal stack for its stack-overflow message, about
/// 0.1 ms of a 4 ms boot (docs/architecture.md, "Start-up"). What of it
/// kvmkit needs is kept: descriptors 0-2 are made valid, SIGPIPE is
/// ignored, and a panic still prints its message and ends with status 101.
/// A stack overflow is then a plain SIGSEGV.
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    standard_fds_and_sigpipe();
    // Arguments come from std's own capture (glibc passes them to
    // .init_array functions), as with a Rust `fn main`.
    let code = std::panic::catch_unwind(kvmkit_main).unwrap_or(101);
    // Flushes stdout, as returning from a Rust `fn main` does.
    std::process::exit(i32::from(code))
}

/// What Rust's start-up does that kvmkit relies on: a closed descriptor 0,
/// 1 or 2 is opened on /dev/null (else the first file kvmkit opens, /dev/kvm
/// or a disk, would become its stdout), and writes to a closed pipe fail
/// with EPIPE instead of killing the process.
#[cfg_attr(test, allow(dead_code))]
fn standard_fds_and_sigpipe() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: `fds` is a valid array of three pollfd; a zero timeout never blocks.
    if unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } != -1 {
        for p in fds.iter().filter(|p| p.revents & libc::POLLNVAL != 0) {
            // SAFETY: a plain open of a constant path; the lowest free
            // descriptor (the closed one) is taken.
            if unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) } != p.fd {
                std::process::abort();
            }
        }
    }
    // SAFETY: sets a signal's disposition to ignore; no handler runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// kvmkit's command line, run: the process exit status.
#[cfg_attr(test, allow(dead_code))]
fn kvmkit_main() -> u8 {
    let start = Instant::now();
    let cli = if firecracker::invoked_as_firecracker() {
        let fc = firecracker::FirecrackerArgs::parse();
        match firecracker::translate(fc) {
            Ok(argv) => run_cli::parse_from(argv),
            Err(Ok(text)) => {
                crate::logging::outln!("{text}");
                return 0;
            }
            Err(Err(why)) => {
                crate::logging::errln!("kvmkit: error: {why}");
                return 2;
            }
        }
    } else if commands::jail::invoked_as_jailer() {
        init_logging(0);
        return finish(commands::jail::main_as_jailer());
    } else {
        run_cli::parse_from(std::env::args_os())
    };
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Check(args) => commands::check::run(&args),
        Command::Run(args) => commands::run::run(&args, start),
        Command::Host(args) => commands::host::run(&args),
        Command::Image(args) => commands::image::run(&args),
        Command::Bench(args) => commands::bench::run(&args),
        Command::Ctl(args) => commands::ctl::run(&args),
        Command::Snapshot(args) => commands::snapshot::run(&args),
        Command::Exec(args) => commands::exec::run(&args),
        Command::Workloads => commands::workloads::run(),
        Command::Vm(args) => commands::vm::run(&args),
        Command::Serve(args) => commands::vm::serve::run(&args),
        Command::Jail(args) => commands::jail::run(&args),
    };
    finish(result)
}

/// The exit status for a command's result, printing its error.
fn finish(result: anyhow::Result<u8>) -> u8 {
    match result {
        Ok(code) => code,
        Err(e) => {
            crate::logging::errln!("kvmkit: error: {e:#}");
            2
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    logging::init(default);
}
