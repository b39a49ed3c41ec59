//! `kvmkit exec --api-sock S -- CMD [ARGS]`: runs a command in a running Linux guest through
//! kvmkit's guest agent. The VM's vsock socket comes from `GET /vm/config`; the command's
//! stdout and stderr are copied as they stream, and kvmkit exits with its status (128 + N
//! when signal N killed it). A VM without a vsock device, or an agent that does not answer
//! in time, is one line on stderr and exit status 2.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use kvmkit_agent_proto::{Request, DEFAULT_PORT, FLAG_STDIN};

/// Options of `kvmkit exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The VMM's API socket (`kvmkit run --api-sock PATH`).
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,
    /// The agent's vsock port in the guest.
    #[arg(long, default_value_t = DEFAULT_PORT, value_name = "N")]
    pub port: u32,
    /// Seconds to wait for the agent to answer (it may still be starting).
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    pub timeout: f64,
    /// Send our stdin to the command (otherwise its stdin is /dev/null).
    #[arg(short, long)]
    pub interactive: bool,
    /// Set an environment variable for the command (repeatable): KEY=VALUE.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The command's working directory in the guest (default /).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Runs `kvmkit exec`; returns the command's status.
pub fn run(args: &ExecArgs) -> anyhow::Result<u8> {
    if !(args.timeout > 0.0 && args.timeout <= 86_400.0) {
        bail!("--timeout {}: give 0 to 86400 seconds", args.timeout);
    }
    let wait = Duration::from_secs_f64(args.timeout);
    let mut req = Request::new(args.command.iter().map(|w| w.as_bytes().to_vec()));
    for e in &args.env {
        match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => req.env.push((k.as_bytes().to_vec(), v.as_bytes().to_vec())),
            _ => bail!("--env {e}: give KEY=VALUE"),
        }
    }
    req.cwd = args.cwd.as_ref().map(|c| c.as_bytes().to_vec());
    if args.interactive {
        req.flags |= FLAG_STDIN;
    }
    req.encode()
        .map_err(|e| anyhow::anyhow!("the command is too big to send: {e}"))?;

    let uds = vsock_socket(&args.api_sock, wait)?;
    let deadline = Instant::now() + wait;
    let stream = super::agent::connect_until(&uds, args.port, deadline, &|| false).map_err(|e| {
        anyhow::anyhow!(
            "the guest agent did not answer on vsock port {} within {} s: {e} (is kvmkit-agent running in the guest? \
             `kvmkit run --linux` starts it)",
            args.port,
            args.timeout
        )
    })?;
    let stdin: Option<Box<dyn std::io::Read + Send>> = args.interactive.then(|| Box::new(std::io::stdin()) as _);
    let exit = super::agent::run(stream, &req, stdin)?;
    Ok(exit.shell_status())
}

/// The VM's vsock `uds_path`, from `GET /vm/config`.
fn vsock_socket(api: &std::path::Path, wait: Duration) -> anyhow::Result<PathBuf> {
    let r = super::ctl::request_within(api, "GET", "/vm/config", None, wait.max(Duration::from_secs(5)))?;
    if r.status / 100 != 2 {
        bail!(
            "GET /vm/config on {} answered {}: {}",
            api.display(),
            r.status,
            String::from_utf8_lossy(&r.body).trim()
        );
    }
    let config: serde_json::Value = serde_json::from_slice(&r.body).context("GET /vm/config is not JSON")?;
    match config.pointer("/vsock/uds_path").and_then(|p| p.as_str()) {
        Some(p) => Ok(PathBuf::from(p)),
        None => bail!(
            "the VM behind {} has no vsock device (start it with --vsock cid=N,uds=PATH or PUT /vsock, or with \
             `kvmkit run --linux`)",
            api.display()
        ),
    }
}
