//! `kvmkit run ...` parsed without building every subcommand's parser (issue 15,
//! a VMM smaller than Firecracker).
//!
//! clap's derived [`Cli`] builds the whole command tree (every subcommand, every
//! option, its help text) before it looks at the first argument: ~190 KiB of heap
//! and the code of every subcommand's builder, at every start of `kvmkit run`.
//! When the first argument is `run`, [`parse_from`] first tries a parser that holds
//! only the global `-v` and `run`'s own options ([`cli::RunArgs`], the same
//! definitions). Anything that parser does not accept as a run to start (`--help`,
//! a bad option, a missing value) goes to the full parser, which prints clap's
//! usual help or one-line error (exit status 2), exactly as before.

use std::ffi::OsString;

use clap::{Arg, ArgAction, Args, FromArgMatches, Parser};

use crate::{cli, Cli, Command};

/// The command line `argv` (program name first), parsed: the `run` fast path when it
/// applies, else the full parser (which exits with help or an error as clap does).
pub(crate) fn parse_from<I, T>(argv: I) -> Cli
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    try_run_only(&argv).unwrap_or_else(|| Cli::parse_from(argv))
}

/// `argv` as `kvmkit run ...` through a parser of only that subcommand, or None when
/// the first argument is not `run` or that parser has anything to say (help, error).
fn try_run_only(argv: &[OsString]) -> Option<Cli> {
    if argv.get(1).is_none_or(|a| a != "run") {
        return None;
    }
    // The same shape as `Cli`: `-v` global on the top-level command, then `run`.
    let verbose = Arg::new("verbose")
        .short('v')
        .long("verbose")
        .action(ArgAction::Count)
        .global(true);
    let run = cli::RunArgs::augment_args(clap::Command::new("run"));
    let matches = clap::Command::new("kvmkit")
        .arg(verbose)
        .subcommand(run)
        .try_get_matches_from(argv)
        .ok()?;
    let (_, sub) = matches.subcommand()?;
    let args = cli::RunArgs::from_arg_matches(sub).ok()?;
    Some(Cli {
        verbose: matches.get_count("verbose"),
        command: Command::Run(Box::new(args)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path's result for `argv`, checked against the full parser's: the same `Cli`
    /// when the fast path takes it, an error of the full parser when it does not.
    fn same_as_full(argv: &[&str]) -> bool {
        let full = Cli::try_parse_from(argv);
        let fast = try_run_only(&argv.iter().map(OsString::from).collect::<Vec<_>>());
        match (&fast, &full) {
            (Some(f), Ok(c)) => assert_eq!(format!("{f:?}"), format!("{c:?}"), "{argv:?}"),
            (Some(f), Err(e)) => panic!("{argv:?}: fast path took {f:?}, full parser said {e}"),
            (None, Ok(c)) if argv.get(1) == Some(&"run") => panic!("{argv:?}: fast path missed {c:?}"),
            _ => {}
        }
        fast.is_some()
    }

    #[test]
    fn run_command_lines_parse_as_the_full_parser_does() {
        let taken = [
            "kvmkit run --guest",
            "kvmkit run -v --guest --workload primes:10",
            "kvmkit run --guest -vv --cpus 2 --memory 512 --boot-time",
            "kvmkit run --kernel k --no-stdin --memory 256",
            "kvmkit run --kernel k --initrd i --cmdline console=ttyS0 --boot pvh",
            "kvmkit run --linux -- uname -a",
            "kvmkit run --guest --disk path=a --disk path=b,ro=on --net auto",
            "kvmkit run --guest --serial socket=/tmp/s --console-filter off --rng",
            "kvmkit run --api-sock /tmp/a --id vm1 --level Error",
            "kvmkit run --id vm1 --config-file c.json --no-api --boot-time",
            "kvmkit run --restore-state s --restore-mem m --restore-mem-copy",
            "kvmkit run --guest --landlock --landlock-allow /a --landlock-allow /b",
            "kvmkit run --guest --no-seccomp --timeout 1.5 --results r.json",
        ];
        for line in taken {
            let argv: Vec<&str> = line.split(' ').collect();
            assert!(same_as_full(&argv), "fast path did not take {line}");
        }
    }

    #[test]
    fn help_errors_and_other_subcommands_go_to_the_full_parser() {
        let left = [
            "kvmkit run --help",
            "kvmkit run -h",
            "kvmkit run",
            "kvmkit run --kernel",
            "kvmkit run --guest --linux",
            "kvmkit run --guest --bogus",
            "kvmkit run --guest --cpus two",
            "kvmkit run --guest --serial nowhere",
            "kvmkit run --restore-state s",
            "kvmkit run --no-api",
            "kvmkit run --version",
            "kvmkit -v run --guest",
            "kvmkit --help",
            "kvmkit check",
            "kvmkit workloads",
            "kvmkit",
        ];
        for line in left {
            let argv: Vec<&str> = line.split(' ').collect();
            assert!(!same_as_full(&argv), "fast path took {line}");
        }
    }
}
