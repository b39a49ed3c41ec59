//! kvmkit's developer tasks, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! - `nested [OPTIONS] [SCENARIO...]`: the nested lab (`docs/nested-lab.md`): boots Debian's
//!   generic kernel under QEMU TCG with `-cpu max`, loads the real `kvm_amd` there, and runs
//!   kvmkit inside that L1 against real Linux guests.

mod nested;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask nested [OPTIONS] [SCENARIO...]

Runs kvmkit inside an L1 Linux under QEMU TCG (-cpu max: real kvm_amd, real /dev/kvm) and
checks its Linux-facing features. Default: all scenarios, in one L1 boot.

options:
  --list                     print the scenarios and what each proves, then exit
  --scenario-timeout SECS    per-scenario timeout inside L1 (default 45)
  --timeout SECS             hard limit for the whole QEMU run (default: 120 + 60 per scenario)
  --no-build                 use the static kvmkit built last (skip cargo build)
  --l1-cpus N                L1's CPU count, QEMU -smp (default 1)
  -h, --help                 this text";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("nested") if args.iter().any(|a| a == "-h" || a == "--help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("nested") => match nested::Options::parse(&args[1..]) {
            Ok(Some(options)) => match nested::run(&options) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("nested: error: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Ok(None) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nested: {e}\n\n{USAGE}");
                ExitCode::from(2)
            }
        },
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("unknown task {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
