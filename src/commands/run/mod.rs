//! `kvmkit run`: flags (or a config file) become the VM's resources, an
//! optional API socket serves Firecracker's API, and the VMM thread runs
//! until the VM ends.

mod agent;
mod config;
mod report;
mod serial;

use std::time::Instant;

use anyhow::Context;
use kvmkit_vmm::rpc::action_channel;
use kvmkit_vmm::snapshot::LoadSnapshotParams;
use kvmkit_vmm::{run_vmm, VmmOptions};

use crate::cli::RunArgs;

/// `--restore-state`/`--restore-mem` as a snapshot load: the VM runs at
/// once unless an API socket is there to resume it.
fn restore_params(args: &RunArgs) -> Option<LoadSnapshotParams> {
    let state = args.restore_state.as_ref()?;
    Some(LoadSnapshotParams {
        snapshot_path: state.clone(),
        mem_file_path: args.restore_mem.clone().unwrap_or_default(),
        copy_memory: args.restore_mem_copy,
        resume_vm: args.resume || args.api_sock.is_none(),
        network_overrides: Vec::new(),
        track_dirty_pages: args.track_dirty_pages,
    })
}

/// Boots the VM (or waits for one over the API) and returns the process exit status.
pub fn run(args: &RunArgs, start: Instant) -> anyhow::Result<u8> {
    crate::commands::seccomp::configure(args)?;
    let plan = config::plan(args, start)?;
    if let Some(logger) = &plan.resources.logger {
        crate::logging::apply(logger).map_err(anyhow::Error::msg)?;
    }
    // Before any thread starts, so that every thread is restricted.
    crate::commands::landlock::apply(args, &plan.resources)?;
    let mut serial = serial::Serial::setup(&args.serial)?;
    let (actions, api) = match &args.api_sock {
        Some(path) => {
            let (tx, rx) = action_channel().context("cannot create the API channel")?;
            let server = kvmkit_api::ApiServer::spawn(path, tx, kvmkit_api::ServerInfo::new(args.id.clone()))?;
            (Some(rx), Some(server))
        }
        None => (None, None),
    };
    let config::RunPlan {
        resources,
        mut machine,
        boot_now,
        net_guards,
        agent,
    } = plan;
    // The command runs through the guest agent: our stdin goes to it, not to the console.
    let client = match &agent {
        Some(a) => agent::Client::start(a, config::timeout(args)?)?,
        None => None,
    };
    if let Some(out) = serial.output.take() {
        machine.console = Some(out);
    }
    let outcome = run_vmm(
        resources,
        VmmOptions {
            machine,
            boot_now,
            stdin: !args.no_stdin && serial.stdin && client.is_none(),
            console_input: serial.input.take(),
            timeout: config::timeout(args)?,
            id: args.id.clone(),
            actions,
            logger: Some(Box::new(crate::logging::apply)),
            restore: restore_params(args),
        },
    );
    drop(api);
    drop(serial);
    drop(net_guards);
    let exit = client.map(agent::Client::finish);
    drop(agent);
    let outcome = outcome?;
    report::report(args, &outcome);
    if let Some(path) = &args.results {
        let json = serde_json::to_string_pretty(&report::summary(&outcome))?;
        std::fs::write(path, json + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    }
    match exit {
        // The command's status, as the agent reported it (also on the exit-status port).
        Some(Ok(exit)) => Ok(exit.shell_status()),
        Some(Err(e)) => {
            tracing::info!("no exit status from the guest agent: {e:#}");
            Ok(outcome.reason.exit_code().clamp(0, 255) as u8)
        }
        None => Ok(outcome.reason.exit_code().clamp(0, 255) as u8),
    }
}
