//! `kvmkit check`.

use kvmkit_vmm::check_host;

use crate::cli::CheckArgs;

/// Prints the host report; exit status 0 when KVM can be used, 1 otherwise.
pub fn run(args: &CheckArgs) -> anyhow::Result<u8> {
    // A report piped into `head` ends quietly, as other command-line tools do.
    // SAFETY: restoring the default disposition of SIGPIPE has no other effect.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let report = check_host();
    if args.json {
        crate::logging::outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for item in &report.items {
            let mark = match (item.ok, item.required) {
                (true, _) => "ok  ",
                (false, true) => "FAIL",
                (false, false) => "warn",
            };
            crate::logging::outln!("[{mark}] {}: {}", item.name, item.detail);
            if let Some(fix) = &item.fix {
                crate::logging::outln!("       fix: {fix}");
            }
        }
        crate::logging::outln!("{}", report.verdict);
    }
    Ok(if report.usable { 0 } else { 1 })
}
