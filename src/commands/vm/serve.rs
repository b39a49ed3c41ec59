//! `kvmkit serve`: the host daemon, in the foreground (dist/kvmkit.service
//! runs it under systemd). It watches the state directory twice a second:
//!
//! - at its start it re-adopts every VM whose pid file names a live process
//!   (VMs run in their own sessions and outlive the daemon: it can be
//!   restarted or upgraded without stopping them), then starts the VMs
//!   defined with `--autostart` that are not running;
//! - a VM started by `kvmkit vm start` while it runs is adopted the same way;
//! - when a VM's process ends, how it ended is recorded (`kvmkit vm list`
//!   shows it: shutoff, stopped or crashed with the reason; for VMs the
//!   daemon started, with the wait status, e.g. "killed by signal 9");
//!   a crashed VM defined with `--restart on-failure` is started again, at
//!   most 5 times a minute.
//!
//! - it keeps each watched VM's console output in `console.log`
//!   ([`super::recorder`]), so `vm logs` shows a VM's last lines after it ended;
//! - it caches each running VM's state (`state.json`) for `vm list`.
//!
//! `kvmkit vm ...` does not need the daemon: it works on the same files and
//! sockets, and the daemon sees what it did.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use clap::Args;

use super::process::{self, PidFile};
use super::store::{self, RestartPolicy, VmDir};

/// Restarts allowed per VM within [`RESTART_WINDOW`].
const MAX_RESTARTS: usize = 5;
/// The window for [`MAX_RESTARTS`].
const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How often the state directory is looked at.
const TICK: Duration = Duration::from_millis(500);

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

/// A VM the daemon watches.
struct Watched {
    pid: PidFile,
    /// Present when the daemon started it (it can read its wait status).
    child: Option<Child>,
}

fn say(msg: &str) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    println!("[{t}] {msg}");
}

/// Runs the daemon until it is killed.
pub fn run(args: &ServeArgs) -> anyhow::Result<u8> {
    let state = store::state_dir(args.state_dir.as_deref());
    std::fs::create_dir_all(&state).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", state.display()))?;
    say(&format!("kvmkit serve: state directory {}", state.display()));
    if let Some(addr) = &args.web {
        let token = super::web::new_token()?;
        let web = super::web::Web {
            state: state.clone(),
            token: token.clone(),
            bench: args.bench_results.clone(),
        };
        super::web::spawn(addr, web)?;
        say(&format!("web console: http://{addr}/?token={token}"));
    }
    let mut watched: HashMap<String, Watched> = HashMap::new();
    let mut restarts: HashMap<String, Vec<Instant>> = HashMap::new();
    let mut first = true;
    loop {
        let vms = store::list(&state)?;
        for vm in &vms {
            if watched.contains_key(&vm.name) {
                continue;
            }
            if let Some(pid) = process::running(vm) {
                say(&format!("adopted VM {} (pid {})", vm.name, pid.pid));
                super::recorder::spawn(vm.clone());
                watched.insert(vm.name.clone(), Watched { pid, child: None });
            } else if first && vm.settings().is_ok_and(|s| s.autostart) {
                start(vm, "autostart", &mut watched);
            }
        }
        first = false;
        // Each running VM's state, asked of its API in parallel and cached
        // (state.json): `vm list` reads it instead of asking every VMM.
        std::thread::scope(|s| {
            for (name, w) in &watched {
                if let Ok(vm) = VmDir::new(&state, name) {
                    let pid = w.pid;
                    s.spawn(move || {
                        if pid.alive() {
                            process::refresh_state(&vm, &pid);
                        }
                    });
                }
            }
        });
        let names: Vec<String> = watched.keys().cloned().collect();
        for name in names {
            let Some(w) = watched.get_mut(&name) else { continue };
            let vm = match VmDir::new(&state, &name) {
                Ok(vm) => vm,
                Err(_) => continue,
            };
            let status = match &mut w.child {
                Some(c) => match c.try_wait() {
                    Ok(Some(s)) => Some(s),
                    Ok(None) => continue,
                    Err(_) => None,
                },
                None if w.pid.alive() => continue,
                None => None,
            };
            let pid = w.pid;
            watched.remove(&name);
            // Recorded here, or already by a client that saw it first.
            let end = if process::read_pid(&vm) == Some(pid) {
                Some(process::record_end(&vm, &pid, status))
            } else {
                process::last_exit(&vm)
            };
            let (state_word, reason) = end.map_or(("ended".to_owned(), String::new()), |e| (e.state, e.reason));
            say(&format!("VM {name} (pid {}) {state_word}: {reason}", pid.pid));
            let policy = vm.settings().map(|s| s.restart).unwrap_or_default();
            if state_word == "crashed" && policy == RestartPolicy::OnFailure && vm.exists() {
                let times = restarts.entry(name.clone()).or_default();
                times.retain(|t| t.elapsed() < RESTART_WINDOW);
                if times.len() >= MAX_RESTARTS {
                    say(&format!(
                        "VM {name}: not restarted: {MAX_RESTARTS} restarts within {}s",
                        RESTART_WINDOW.as_secs()
                    ));
                    continue;
                }
                times.push(Instant::now());
                start(&vm, "restart=on-failure", &mut watched);
            }
        }
        std::thread::sleep(TICK);
    }
}

fn start(vm: &VmDir, why: &str, watched: &mut HashMap<String, Watched>) {
    match super::start_child(vm) {
        Ok((child, pid)) => {
            say(&format!("started VM {} ({why}, pid {})", vm.name, pid.pid));
            super::recorder::spawn(vm.clone());
            watched.insert(
                vm.name.clone(),
                Watched {
                    pid,
                    child: Some(child),
                },
            );
        }
        Err(e) => say(&format!("VM {}: cannot start ({why}): {e:#}", vm.name)),
    }
}
