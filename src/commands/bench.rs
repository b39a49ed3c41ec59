//! `kvmkit bench`: the flags become [`kvmkit_bench::Options`]; the experiment itself
//! (profiles, runners, results, report, charts) is the `kvmkit-bench` crate.

use anyhow::Context;

use crate::cli::BenchArgs;

/// Runs the bench; exit status 0 when every cell was measured, 1 when some run failed.
pub fn run(args: &BenchArgs) -> anyhow::Result<u8> {
    let linux_assets = || {
        let cache = kvmkit_images::Cache::from_env().context("cannot locate the kvmkit cache (set KVMKIT_CACHE)")?;
        let assets = crate::commands::image::ensure_linux_assets(&cache)?;
        let rootfs = crate::commands::image::ensure_rootfs(&cache)?;
        Ok((assets, rootfs))
    };
    kvmkit_bench::run(&kvmkit_bench::Options {
        profile: args.profile,
        only: args.only.clone(),
        envs: args.envs.clone(),
        runs: args.runs,
        cpus: args.cpus,
        memory: args.memory,
        out: args.out.clone(),
        guest: args.guest,
        kernel: args.kernel.clone(),
        linux_assets: &linux_assets,
    })
}
