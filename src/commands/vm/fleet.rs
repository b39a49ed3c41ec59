//! `kvmkit serve`'s view of every VM, kept in memory and current from
//! events, so `vm list` (through [`super::rpc`]) and the web console answer
//! without reading a file that did not change or asking any VMM:
//!
//! - inotify on the state directory and each VM's folder marks a VM dirty
//!   when its definition, settings, pid file, `last-exit.json` or
//!   `state.json` changes (every one is written by rename); only dirty VMs
//!   are read again;
//! - a pidfd per VM process says when it ended, however it ended (the
//!   guest, `vm stop`, SIGKILL from anyone); the end is recorded at once
//!   (`last-exit.json`, with the wait status when the daemon is its parent);
//! - a thread per running VM asks its API for its state every
//!   [`POLL_EVERY`] (each with the API timeout; a busy or hung VMM delays
//!   only its own thread); `vm pause`/`resume`/`start` write what they saw
//!   to `state.json`, which inotify brings in at once. The newest
//!   observation wins.
//!
//! Every answer first drains both event queues (no blocking), so it is as
//! current as the kernel: a VM killed a moment ago shows as crashed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::events::{self, Inotify, Pidfd, FOLDER_MASK};
use super::process::{self, LastExit, PidFile};
use super::store::{self, Settings, VmDir};
use super::Row;

/// How often each running VM's API is asked for its state.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// The files whose changes matter to a VM's row.
const WATCHED_FILES: [&str; 5] = ["config.json", "vm.json", "pid", "last-exit.json", "state.json"];

/// The fleet shared by the daemon's threads.
pub type Shared = Arc<Mutex<Fleet>>;

/// A VM process the daemon watches.
struct Proc {
    pid: PidFile,
    fd: Pidfd,
    /// The newest state observed ("unknown" before the first).
    state: String,
    /// When that state was asked (ms since the epoch; 0: never).
    seen_ms: u64,
}

/// One defined VM.
struct Entry {
    vm: VmDir,
    vcpus: u8,
    memory_mib: u64,
    settings: Settings,
    last_exit: Option<LastExit>,
    proc: Option<Proc>,
}

/// How a watched VM's process ended (for the restart policy).
#[derive(Debug, Clone)]
pub struct Ended {
    /// The VM.
    pub name: String,
    /// shutoff, stopped or crashed.
    pub state: String,
}

/// Every defined VM under one state directory.
pub struct Fleet {
    state: PathBuf,
    /// None when inotify cannot be had: every sync then reads every VM again.
    inotify: Option<Inotify>,
    root_wd: i32,
    folders: HashMap<i32, String>,
    vms: BTreeMap<String, Entry>,
    dirty: BTreeSet<String>,
    rescan: bool,
    ended: Vec<Ended>,
    /// VMs the daemon is starting itself (their adoption is no news).
    starting: HashSet<String>,
}

/// Prints one line of the daemon's log with the time.
pub fn say(msg: &str) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    println!("[{t}] {msg}");
}

impl Fleet {
    /// The fleet of `state` (read on the first sync).
    pub fn new(state: &Path) -> Shared {
        let watched = Inotify::new().ok().and_then(|n| {
            let mask = libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM | libc::IN_ONLYDIR;
            let wd = n.watch(state, mask).ok()?;
            Some((n, wd))
        });
        if watched.is_none() {
            say("no inotify on the state directory: every answer reads every VM's files");
        }
        let (inotify, root_wd) = watched.map_or((None, -1), |(n, wd)| (Some(n), wd));
        Arc::new(Mutex::new(Self {
            state: state.to_path_buf(),
            inotify,
            root_wd,
            folders: HashMap::new(),
            vms: BTreeMap::new(),
            dirty: BTreeSet::new(),
            rescan: true,
            ended: Vec::new(),
            starting: HashSet::new(),
        }))
    }

    /// Brings the view up to date: ended processes, then changed files.
    /// Returns the processes adopted (they need a recorder and a poller).
    fn sync(&mut self) -> Vec<(VmDir, PidFile)> {
        let gone: Vec<String> = {
            let procs: Vec<(&String, &Pidfd)> = self
                .vms
                .iter()
                .filter_map(|(n, e)| Some((n, &e.proc.as_ref()?.fd)))
                .collect();
            let fds: Vec<&Pidfd> = procs.iter().map(|(_, f)| *f).collect();
            let ended = events::ended(&fds);
            procs
                .iter()
                .zip(ended)
                .filter(|(_, e)| *e)
                .map(|((n, _), _)| (*n).clone())
                .collect()
        };
        for name in gone {
            self.end(&name);
        }
        self.drain_inotify();
        if self.rescan {
            self.rescan = self.inotify.is_none();
            self.dirty.extend(self.vms.keys().cloned());
            for name in std::fs::read_dir(&self.state)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| store::check_name(n).is_ok())
            {
                self.watch_folder(&name);
                self.dirty.insert(name);
            }
        }
        let mut adopted = Vec::new();
        for name in std::mem::take(&mut self.dirty) {
            self.reload(&name, &mut adopted);
        }
        adopted
    }

    fn drain_inotify(&mut self) {
        let Some(n) = &self.inotify else { return };
        for c in n.drain() {
            if c.mask & libc::IN_Q_OVERFLOW != 0 {
                self.rescan = true;
            } else if c.wd == self.root_wd {
                if c.mask & libc::IN_IGNORED != 0 {
                    self.rescan = true; // the state directory itself went
                } else if store::check_name(&c.name).is_ok() {
                    if c.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
                        self.watch_folder(&c.name);
                    }
                    self.dirty.insert(c.name);
                }
            } else if c.mask & libc::IN_IGNORED != 0 {
                if let Some(name) = self.folders.remove(&c.wd) {
                    self.dirty.insert(name);
                }
            } else if let Some(name) = self.folders.get(&c.wd) {
                if WATCHED_FILES.contains(&c.name.as_str()) {
                    self.dirty.insert(name.clone());
                }
            }
        }
    }

    /// Watches a VM's folder (made or found); the caller reads it afterwards,
    /// so nothing written before the watch is missed.
    fn watch_folder(&mut self, name: &str) {
        if let Some(n) = &self.inotify {
            if let Ok(wd) = n.watch(&self.state.join(name), FOLDER_MASK) {
                self.folders.insert(wd, name.to_owned());
            }
        }
    }

    /// Reads one VM's files again; adopts a process its pid file names.
    fn reload(&mut self, name: &str, adopted: &mut Vec<(VmDir, PidFile)>) {
        let Ok(vm) = VmDir::new(&self.state, name) else { return };
        if !vm.exists() {
            self.vms.remove(name); // undefined (a running VM cannot be)
            return;
        }
        let (vcpus, memory_mib) = vm
            .resources()
            .map(|r| (r.machine_config.vcpu_count, r.machine_config.mem_size_mib))
            .unwrap_or((0, 0));
        let e = self.vms.entry(name.to_owned()).or_insert_with(|| Entry {
            vm: vm.clone(),
            vcpus,
            memory_mib,
            settings: Settings::default(),
            last_exit: None,
            proc: None,
        });
        (e.vcpus, e.memory_mib) = (vcpus, memory_mib);
        e.settings = vm.settings().unwrap_or_default();
        e.last_exit = process::last_exit(&vm);
        if let Some(pid) = process::read_pid(&vm) {
            if e.proc.as_ref().map(|p| p.pid) != Some(pid) {
                if e.proc.is_some() {
                    self.end(name); // a new run's pid file: the old run is over
                }
                self.adopt(&vm, pid, adopted);
            }
        }
        let Some(e) = self.vms.get_mut(name) else { return };
        if let (Some(p), Some(c)) = (&mut e.proc, process::read_cache(&vm)) {
            if (c.pid, c.start_ticks) == (p.pid.pid, p.pid.start_ticks) && c.at_ms > p.seen_ms {
                (p.state, p.seen_ms) = (c.state, c.at_ms);
            }
        }
    }

    /// Watches the process a pid file names, or records its end when it is gone.
    fn adopt(&mut self, vm: &VmDir, pid: PidFile, adopted: &mut Vec<(VmDir, PidFile)>) {
        let fd = Pidfd::open(pid.pid);
        let Some(e) = self.vms.get_mut(&vm.name) else { return };
        match fd {
            Ok(fd) if process::start_ticks(pid.pid) == Some(pid.start_ticks) => {
                if !self.starting.contains(&vm.name) {
                    say(&format!("adopted VM {} (pid {})", vm.name, pid.pid));
                }
                e.proc = Some(Proc {
                    pid,
                    fd,
                    state: "unknown".into(),
                    seen_ms: 0,
                });
                adopted.push((vm.clone(), pid));
            }
            fd => {
                // Gone (or a zombie: reaped here when it is the daemon's child).
                let status = fd
                    .ok()
                    .filter(|_| process::start_ticks(pid.pid).is_none())
                    .and_then(|f| f.reap());
                e.last_exit = Some(process::record_end(vm, &pid, status));
            }
        }
    }

    /// Records the end of a watched VM's process.
    fn end(&mut self, name: &str) {
        let Some(e) = self.vms.get_mut(name) else { return };
        let Some(p) = e.proc.take() else { return };
        let status = p.fd.reap();
        // Recorded here, or already by a client (vm stop/kill) that saw it first.
        let end = if process::read_pid(&e.vm) == Some(p.pid) {
            Some(process::record_end(&e.vm, &p.pid, status))
        } else {
            process::last_exit(&e.vm)
        };
        let (state, reason) = end
            .clone()
            .map_or(("ended".to_owned(), String::new()), |x| (x.state, x.reason));
        say(&format!("VM {name} (pid {}) {state}: {reason}", p.pid.pid));
        e.last_exit = end;
        self.ended.push(Ended {
            name: name.to_owned(),
            state,
        });
    }

    /// Takes a state a poller saw, asked at `at_ms`; false when the VM no
    /// longer runs as that process (the poller ends).
    fn observe(&mut self, name: &str, pid: PidFile, state: String, at_ms: u64) -> bool {
        let Some(p) = self.vms.get_mut(name).and_then(|e| e.proc.as_mut()) else {
            return false;
        };
        if p.pid != pid {
            return false;
        }
        if at_ms > p.seen_ms {
            (p.state, p.seen_ms) = (state, at_ms);
        }
        true
    }

    fn rows(&self) -> Vec<Row> {
        let up = process::host_uptime_s();
        self.vms
            .values()
            .map(|e| {
                let (state, last_exit) = match (&e.proc, &e.last_exit) {
                    (Some(p), _) => (p.state.clone(), None),
                    (None, Some(x)) => (x.state.clone(), Some(x.reason.clone())),
                    (None, None) => ("shutoff".to_owned(), None),
                };
                let pid = e.proc.as_ref().map(|p| p.pid);
                Row {
                    name: e.vm.name.clone(),
                    state,
                    vcpus: e.vcpus,
                    memory_mib: e.memory_mib,
                    uptime_s: pid.zip(up).map(|(p, up)| (p.uptime_at(up) * 10.0).round() / 10.0),
                    pid: pid.map(|p| p.pid),
                    api_sock: pid.map(|_| e.vm.file("api.sock").display().to_string()),
                    autostart: e.settings.autostart,
                    restart: e.settings.restart,
                    last_exit,
                }
            })
            .collect()
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Fleet> {
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Brings the fleet up to date and starts watching what it adopted.
fn synced(shared: &Shared) -> MutexGuard<'_, Fleet> {
    let mut f = lock(shared);
    let adopted = f.sync();
    for (vm, pid) in adopted {
        super::recorder::spawn(vm.clone());
        poll_state(shared.clone(), vm, pid);
    }
    f
}

/// Every defined VM's row, as current as the kernel's event queues.
pub fn rows(shared: &Shared) -> Vec<Row> {
    synced(shared).rows()
}

/// Brings the fleet up to date; the VMs whose process ended since the last call.
pub fn tick(shared: &Shared) -> Vec<Ended> {
    std::mem::take(&mut synced(shared).ended)
}

/// Defined VMs with `--autostart` that do not run and are not being started.
pub fn autostart_candidates(shared: &Shared) -> Vec<VmDir> {
    let f = synced(shared);
    f.vms
        .values()
        .filter(|e| e.settings.autostart && e.proc.is_none() && !f.starting.contains(&e.vm.name))
        .map(|e| e.vm.clone())
        .collect()
}

/// Marks a VM as being started by the daemon (its adoption is no news).
pub fn starting(shared: &Shared, name: &str) {
    lock(shared).starting.insert(name.to_owned());
}

/// The daemon's start of a VM is over: its process (if it runs) is adopted now.
pub fn started(shared: &Shared, name: &str) {
    synced(shared).starting.remove(name);
}

/// Asks a VM's API for its state every [`POLL_EVERY`], in a thread of its
/// own, until that process no longer runs.
fn poll_state(shared: Shared, vm: VmDir, pid: PidFile) {
    let _ = std::thread::Builder::new()
        .name(format!("state-{}", vm.name))
        .spawn(move || loop {
            let at_ms = process::now_ms();
            let state = process::api_state(&vm);
            if !lock(&shared).observe(&vm.name, pid, state, at_ms) {
                return;
            }
            std::thread::sleep(POLL_EVERY);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"boot-source": {"kernel_image_path": "/bin/true"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 64}}"#;

    fn define(state: &Path, name: &str) -> VmDir {
        let vm = VmDir::new(state, name).expect("name");
        std::fs::create_dir_all(&vm.dir).expect("dir");
        store::write_atomic(&vm.config_path(), CONFIG.as_bytes()).expect("config");
        vm
    }

    fn row<'a>(rows: &'a [Row], name: &str) -> &'a Row {
        rows.iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name} not listed"))
    }

    /// The view follows definitions, a process's start and end, and takes
    /// the newest state observed, all from events, with no VMM involved
    /// (a `sleep` child stands in for the VMM).
    #[test]
    fn the_view_follows_definitions_processes_and_the_newest_state() {
        let state = std::env::temp_dir().join(format!("kvmkit-fleet-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state).expect("state");
        define(&state, "a");
        let shared = Fleet::new(&state);
        let mut f = lock(&shared);
        assert!(f.sync().is_empty());
        assert_eq!(f.rows().len(), 1);
        assert_eq!(
            (row(&f.rows(), "a").state.as_str(), row(&f.rows(), "a").vcpus),
            ("shutoff", 2)
        );

        // Defined after the first look: listed on the next sync.
        let b = define(&state, "b");
        f.sync();
        assert_eq!(f.rows().len(), 2);

        // A process named by b's pid file is adopted and watched.
        let mut child = std::process::Command::new("sleep").arg("60").spawn().expect("sleep");
        let pid = PidFile {
            pid: child.id() as i32,
            start_ticks: process::start_ticks(child.id() as i32).expect("ticks"),
        };
        store::write_atomic(&b.file("pid"), format!("{} {}\n", pid.pid, pid.start_ticks).as_bytes()).expect("pid");
        assert_eq!(f.sync().len(), 1, "adopted");
        let rows = f.rows();
        let r = row(&rows, "b");
        assert_eq!((r.state.as_str(), r.pid), ("unknown", Some(pid.pid)));

        // The newest observation wins, whether from a poller or state.json.
        assert!(f.observe("b", pid, "running".into(), 2000));
        assert!(f.observe("b", pid, "paused".into(), 1000), "older: still this process");
        assert_eq!(row(&f.rows(), "b").state, "running");
        let cache = process::CachedState {
            pid: pid.pid,
            start_ticks: pid.start_ticks,
            state: "paused".into(),
            at_ms: 3000,
        };
        std::fs::write(b.file(".s"), serde_json::to_string(&cache).expect("json")).expect("cache");
        std::fs::rename(b.file(".s"), b.file("state.json")).expect("rename");
        f.sync();
        assert_eq!(row(&f.rows(), "b").state, "paused");
        let other = PidFile {
            pid: pid.pid,
            start_ticks: pid.start_ticks + 1,
        };
        assert!(!f.observe("b", other, "running".into(), 4000), "another process");

        // Killed behind everyone's back: the next sync after it ended shows it.
        child.kill().expect("kill");
        let fd = Pidfd::open(pid.pid).expect("pidfd");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !events::ended(&[&fd])[0] {
            assert!(std::time::Instant::now() < deadline, "sleep never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
        f.sync();
        let rows = f.rows();
        let r = row(&rows, "b");
        assert_eq!((r.state.as_str(), r.pid), ("crashed", None));
        assert!(
            r.last_exit.as_deref().is_some_and(|e| e.contains("killed by signal 9")),
            "{r:?}"
        );
        assert!(!b.file("pid").exists(), "the pid file goes");
        assert_eq!(std::mem::take(&mut f.ended).len(), 1);
        assert!(child.wait().is_err(), "already reaped through the pidfd");
        assert!(!f.observe("b", pid, "running".into(), 5000), "its poller ends");

        // Undefined: gone from the view.
        std::fs::remove_dir_all(&b.dir).expect("undefine");
        f.sync();
        assert_eq!(f.rows().len(), 1);
        drop(f);
        let _ = std::fs::remove_dir_all(&state);
    }
}
