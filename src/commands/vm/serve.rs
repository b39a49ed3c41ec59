//! `kvmkit serve`: the host daemon, in the foreground (dist/kvmkit.service
//! runs it under systemd). It keeps every VM's row in memory, current from
//! kernel events ([`super::fleet`]: inotify on the state directory, a pidfd
//! per VM process, a state poller per running VM), and answers `kvmkit vm
//! list` from it over `STATE/.serve.sock` ([`super::rpc`]):
//!
//! - at its start it re-adopts every VM whose pid file names a live process
//!   (VMs run in their own sessions and outlive the daemon: it can be
//!   restarted or upgraded without stopping them), then starts the VMs
//!   defined with `--autostart` that are not running;
//! - a VM started by `kvmkit vm start` while it runs is adopted the same way
//!   (its pid file appearing is an event);
//! - when a VM's process ends, how it ended is recorded at once (`kvmkit vm
//!   list` shows it: shutoff, stopped or crashed with the reason; for VMs the
//!   daemon started, with the wait status, e.g. "killed by signal 9");
//!   a crashed VM defined with `--restart on-failure` is started again
//!   (within [`TICK`]), at most 5 times a minute;
//! - it keeps each watched VM's console output in `console.log`
//!   ([`super::recorder`]), so `vm logs` shows a VM's last lines after it ended.
//!
//! `kvmkit vm ...` does not need the daemon: it works on the same files and
//! sockets, and the daemon sees what it did. One daemon per state
//! directory (a flock on `STATE/.serve.lock`).

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;

use super::fleet::{self, say, Fleet, Shared};
use super::store::{self, RestartPolicy, VmDir};

/// Restarts allowed per VM within [`RESTART_WINDOW`].
const MAX_RESTARTS: usize = 5;
/// The window for [`MAX_RESTARTS`].
const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How often ended VMs are looked at for a restart (every `vm list` brings
/// the view up to date in between).
const TICK: Duration = Duration::from_millis(500);
/// The daemon's lock in the state directory.
const LOCK: &str = ".serve.lock";

/// Options of `kvmkit serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// State directory (default $KVMKIT_STATE_DIR, else /var/lib/kvmkit).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Serve the web console on ADDR (e.g. 127.0.0.1:8080); the token to open it is printed at start.
    #[arg(long, value_name = "ADDR")]
    pub web: Option<String>,
    /// `kvmkit bench` results the web console shows: a folder with results.json
    /// and the SVG charts, or folders of them.
    #[arg(long, value_name = "DIR", requires = "web")]
    pub bench_results: Option<PathBuf>,
}

/// Takes the state directory's daemon lock for the daemon's life, or fails
/// saying another daemon holds it.
fn take_lock(state: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let p = state.join(LOCK);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&p)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", p.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!(
            "another kvmkit serve runs on {} (lock {} held)",
            state.display(),
            p.display()
        );
    }
    Ok(f)
}

/// Runs the daemon until it is killed.
pub fn run(args: &ServeArgs) -> anyhow::Result<u8> {
    let state = store::state_dir(args.state_dir.as_deref());
    std::fs::create_dir_all(&state).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", state.display()))?;
    let _lock = take_lock(&state)?;
    say(&format!("kvmkit serve: state directory {}", state.display()));
    let fleet = Fleet::new(&state);
    super::rpc::spawn(&state, fleet.clone())?;
    if let Some(addr) = &args.web {
        let token = super::web::new_token()?;
        let web = super::web::Web {
            state: state.clone(),
            token: token.clone(),
            bench: args.bench_results.clone(),
            fleet: fleet.clone(),
        };
        super::web::spawn(addr, web)?;
        say(&format!("web console: http://{addr}/?token={token}"));
    }
    for vm in fleet::autostart_candidates(&fleet) {
        start(&fleet, vm, "autostart");
    }
    let mut restarts: HashMap<String, Vec<Instant>> = HashMap::new();
    loop {
        for ended in fleet::tick(&fleet) {
            let Ok(vm) = VmDir::new(&state, &ended.name) else {
                continue;
            };
            let policy = vm.settings().map(|s| s.restart).unwrap_or_default();
            if ended.state != "crashed" || policy != RestartPolicy::OnFailure || !vm.exists() {
                continue;
            }
            let times = restarts.entry(ended.name.clone()).or_default();
            times.retain(|t| t.elapsed() < RESTART_WINDOW);
            if times.len() >= MAX_RESTARTS {
                say(&format!(
                    "VM {}: not restarted: {MAX_RESTARTS} restarts within {}s",
                    ended.name,
                    RESTART_WINDOW.as_secs()
                ));
                continue;
            }
            times.push(Instant::now());
            start(&fleet, vm, "restart=on-failure");
        }
        std::thread::sleep(TICK);
    }
}

/// Starts a VM in a thread of its own (a start waits for the VM's API);
/// the fleet adopts it when its pid file appears and reaps it when it ends.
fn start(fleet: &Shared, vm: VmDir, why: &'static str) {
    fleet::starting(fleet, &vm.name);
    let fleet = fleet.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("start-{}", vm.name))
        .spawn(move || {
            match super::start_child(&vm) {
                // The fleet's pidfd reaps it (the daemon is its parent).
                Ok((_child, pid)) => say(&format!("started VM {} ({why}, pid {})", vm.name, pid.pid)),
                Err(e) => say(&format!("VM {}: cannot start ({why}): {e:#}", vm.name)),
            }
            fleet::started(&fleet, &vm.name);
        });
    if spawned.is_err() {
        say("cannot start a thread to start a VM");
    }
}
