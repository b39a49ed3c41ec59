//! Drop-in mode: invoked as `firecracker` (a symlink to kvmkit), kvmkit
//! takes Firecracker's command line, so tools that spawn `firecracker`
//! (SDKs, Kata, Python clients) can spawn kvmkit. The flags are turned
//! into a `kvmkit run` command line: one code path for both.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

/// The Firecracker API version kvmkit implements (its swagger's contract).
pub const FIRECRACKER_API_VERSION: &str = "1.16.0";

/// Firecracker's command line, as kvmkit accepts it.
#[derive(Debug, Parser)]
#[command(
    name = "firecracker",
    disable_version_flag = true,
    about = "kvmkit in Firecracker drop-in mode"
)]
pub struct FirecrackerArgs {
    /// Path to the API unix socket.
    #[arg(long, value_name = "PATH", default_value = "/run/firecracker.socket")]
    api_sock: PathBuf,
    /// Boot from this JSON config file.
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// No API socket (needs --config-file).
    #[arg(long, requires = "config_file")]
    no_api: bool,
    /// Instance id.
    #[arg(long, value_name = "ID", default_value = "anonymous-instance")]
    id: String,
    /// Print boot milestones when the VM ends.
    #[arg(long)]
    boot_timer: bool,
    /// Log level (Off, Error, Warning, Info, Debug, Trace).
    #[arg(long, value_name = "LEVEL")]
    level: Option<String>,
    /// Log to this file or FIFO.
    #[arg(long, value_name = "PATH")]
    log_path: Option<PathBuf>,
    /// Only log this module (accepted; kvmkit filters by its own module names).
    #[arg(long, value_name = "MODULE")]
    module: Option<String>,
    /// Print the level in log lines (accepted; kvmkit always does).
    #[arg(long)]
    show_level: bool,
    /// Print the source of log lines (accepted; not printed).
    #[arg(long)]
    show_log_origin: bool,
    /// Metrics file or FIFO.
    #[arg(long, value_name = "PATH")]
    metrics_path: Option<PathBuf>,
    /// Print the version and exit.
    #[arg(long)]
    version: bool,
    /// Jailer: process start time (accepted, unused).
    #[arg(long, value_name = "US")]
    start_time_us: Option<u64>,
    /// Jailer: process start CPU time (accepted, unused).
    #[arg(long, value_name = "US")]
    start_time_cpu_us: Option<u64>,
    /// Jailer: parent CPU time (accepted, unused).
    #[arg(long, value_name = "US")]
    parent_cpu_time_us: Option<u64>,
    /// Largest API request body (kvmkit's limit is Firecracker's default, 51200).
    #[arg(long, value_name = "BYTES")]
    http_api_max_payload_size: Option<usize>,
    /// MMDS size limit (MMDS is not supported by kvmkit yet).
    #[arg(long, value_name = "BYTES")]
    mmds_size_limit: Option<usize>,
    /// Seccomp filter file (Firecracker's JSON format).
    #[arg(long, value_name = "FILE")]
    seccomp_filter: Option<PathBuf>,
    /// Run without seccomp filters.
    #[arg(long)]
    no_seccomp: bool,
    /// MMDS metadata file (not supported by kvmkit yet).
    #[arg(long, value_name = "FILE")]
    metadata: Option<PathBuf>,
    /// virtio-pci (not supported by kvmkit: devices are virtio-mmio).
    #[arg(long)]
    enable_pci: bool,
    /// Print a snapshot's version (snapshots are not supported by kvmkit yet).
    #[arg(long, value_name = "FILE")]
    describe_snapshot: Option<PathBuf>,
}

/// Whether this process was invoked as `firecracker`.
pub fn invoked_as_firecracker() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == "firecracker"))
        .unwrap_or(false)
}

/// The version line tools check (`Firecracker vX.Y.Z` first), then kvmkit's.
pub fn version_text() -> String {
    format!(
        "Firecracker v{FIRECRACKER_API_VERSION}\n\nkvmkit {} (drop-in mode: implements the Firecracker API v{FIRECRACKER_API_VERSION})",
        env!("CARGO_PKG_VERSION")
    )
}

/// Translates Firecracker's command line into `kvmkit run` arguments, or
/// a message (for `--version`, or for a feature kvmkit lacks).
pub fn translate(args: FirecrackerArgs) -> Result<Vec<OsString>, Result<String, String>> {
    if args.version {
        return Err(Ok(version_text()));
    }
    let unsupported = [
        (args.metadata.is_some(), "--metadata (MMDS)"),
        (args.enable_pci, "--enable-pci (kvmkit's devices are virtio-mmio)"),
        (args.describe_snapshot.is_some(), "--describe-snapshot (snapshots)"),
    ];
    if let Some((_, what)) = unsupported.iter().find(|(on, _)| *on) {
        return Err(Err(format!("{what} is not supported by kvmkit yet")));
    }
    if let Some(n) = args.http_api_max_payload_size.filter(|&n| n != 51_200) {
        tracing::warn!("--http-api-max-payload-size {n}: kvmkit keeps Firecracker's default limit, 51200 bytes");
    }
    let mut out: Vec<OsString> = vec!["kvmkit".into(), "run".into(), "--id".into(), args.id.into()];
    if let Some(f) = args.config_file {
        out.extend(["--config-file".into(), f.into()]);
    }
    if args.no_api {
        out.push("--no-api".into());
    } else {
        out.extend(["--api-sock".into(), args.api_sock.into()]);
    }
    if args.boot_timer {
        out.push("--boot-time".into());
    }
    if let Some(f) = args.seccomp_filter {
        out.extend(["--seccomp-filter".into(), f.into()]);
    } else if args.no_seccomp {
        out.push("--no-seccomp".into());
    }
    if let Some(l) = args.level {
        out.extend(["--level".into(), l.into()]);
    }
    if let Some(p) = args.log_path {
        out.extend(["--log-path".into(), p.into()]);
    }
    if let Some(p) = args.metrics_path {
        out.extend(["--metrics-path".into(), p.into()]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(argv: &[&str]) -> Result<Vec<String>, Result<String, String>> {
        let a = FirecrackerArgs::try_parse_from(argv).expect("parse");
        translate(a).map(|v| v.into_iter().map(|s| s.to_string_lossy().into_owned()).collect())
    }

    #[test]
    fn command_lines_translate() {
        let v = tr(&["firecracker", "--api-sock", "/tmp/s", "--id", "vm1"]).expect("run");
        assert_eq!(v, ["kvmkit", "run", "--id", "vm1", "--api-sock", "/tmp/s"]);
        let v = tr(&["firecracker", "--no-api", "--config-file", "c.json", "--level", "Error"]).expect("run");
        assert!(v.windows(2).any(|w| w == ["--config-file", "c.json"]));
        assert!(v.contains(&"--no-api".to_string()));
        assert!(!v.contains(&"--api-sock".to_string()));
        let version = tr(&["firecracker", "--version"]).expect_err("version").expect("text");
        assert!(version.starts_with("Firecracker v"), "{version}");
        assert!(tr(&["firecracker", "--metadata", "m.json"]).expect_err("mmds").is_err());
        assert!(FirecrackerArgs::try_parse_from(["firecracker", "--no-api"]).is_err());
        let v = tr(&["firecracker", "--api-sock", "/s", "--seccomp-filter", "f.json"]).expect("run");
        assert!(v.windows(2).any(|w| w == ["--seccomp-filter", "f.json"]));
        let v = tr(&["firecracker", "--api-sock", "/s", "--no-seccomp"]).expect("run");
        assert!(v.contains(&"--no-seccomp".to_string()));
    }
}
