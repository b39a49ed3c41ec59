//! `kvmkit snapshot`: work on snapshot files without a VM (merging a diff
//! memory file onto its base).

use anyhow::Context;

use crate::cli::{SnapshotArgs, SnapshotCommand};

/// Runs `kvmkit snapshot ...`; exit status 0 when done.
pub fn run(args: &SnapshotArgs) -> anyhow::Result<u8> {
    match &args.command {
        SnapshotCommand::Rebase { base_mem, diff_mem } => {
            let t0 = std::time::Instant::now();
            let info = kvmkit_vmm::snapshot::rebase::rebase(base_mem, diff_mem)
                .with_context(|| format!("cannot merge {} onto {}", diff_mem.display(), base_mem.display()))?;
            crate::logging::outln!(
                "merged {} onto {}: {} bytes in {} ranges, {} ms",
                diff_mem.display(),
                base_mem.display(),
                info.bytes,
                info.ranges,
                t0.elapsed().as_millis()
            );
            Ok(0)
        }
    }
}
