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
        ci_target: args.ci_target / 100.0,
        min_runs: args.min_runs,
        max_runs: args.max_runs,
        max_cell_s: args.max_cell_time,
        seed: args.seed,
        quiet_wait: std::time::Duration::try_from_secs_f64(args.quiet_wait)
            .context("--quiet-wait: give seconds, 0 or more")?,
        pin: !args.no_pin,
        cpus: args.cpus,
        memory: args.memory,
        disk_poll: args.disk_poll,
        out: args.out.clone(),
        guest: args.guest,
        kernel: args.kernel.clone(),
        linux_assets: &linux_assets,
    })
}
