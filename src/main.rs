//! `kvmkit`: a KVM virtual machine monitor and virtualization lab.

// The doc comments of clap's argument structs are `--help` text: their
// `path=IMG[,ro=on]` grammars and `<placeholders>` are not rustdoc links or HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod cli;
mod commands;
mod firecracker;
mod logging;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = if firecracker::invoked_as_firecracker() {
        let fc = firecracker::FirecrackerArgs::parse();
        match firecracker::translate(fc) {
            Ok(argv) => cli::Cli::parse_from(argv),
            Err(Ok(text)) => {
                crate::logging::outln!("{text}");
                return ExitCode::SUCCESS;
            }
            Err(Err(why)) => {
                crate::logging::errln!("kvmkit: error: {why}");
                return ExitCode::from(2);
            }
        }
    } else if commands::jail::invoked_as_jailer() {
        init_logging(0);
        return finish(commands::jail::main_as_jailer());
    } else {
        cli::Cli::parse()
    };
    init_logging(cli.verbose);
    let result = match cli.command {
        cli::Command::Check(args) => commands::check::run(&args),
        cli::Command::Run(args) => commands::run::run(&args, start),
        cli::Command::Host(args) => commands::host::run(&args),
        cli::Command::Image(args) => commands::image::run(&args),
        cli::Command::Bench(args) => commands::bench::run(&args),
        cli::Command::Ctl(args) => commands::ctl::run(&args),
        cli::Command::Exec(args) => commands::exec::run(&args),
        cli::Command::Workloads => commands::workloads::run(),
        cli::Command::Vm(args) => commands::vm::run(&args),
        cli::Command::Serve(args) => commands::vm::serve::run(&args),
        cli::Command::Jail(args) => commands::jail::run(&args),
    };
    finish(result)
}

/// The exit status for a command's result, printing its error.
fn finish(result: anyhow::Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            crate::logging::errln!("kvmkit: error: {e:#}");
            ExitCode::from(2)
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
