//! `kvmkit run`'s seccomp flags: the default filters, `--seccomp-filter
//! FILE` (Firecracker's JSON format) or `--no-seccomp`.

use kvmkit_vmm::seccomp::{self, Policy};

use crate::cli::RunArgs;

/// Sets the process's seccomp policy; call before any thread starts.
pub fn configure(args: &RunArgs) -> anyhow::Result<()> {
    let policy = if args.no_seccomp {
        tracing::warn!("--no-seccomp: kvmkit's threads run without seccomp filters");
        Policy::Off
    } else if let Some(path) = &args.seccomp_filter {
        seccomp::load_json(path).map_err(anyhow::Error::msg)?
    } else {
        Policy::Default
    };
    seccomp::configure(policy).map_err(anyhow::Error::msg)
}
