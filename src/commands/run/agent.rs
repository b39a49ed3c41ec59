//! `kvmkit run --linux` with kvmkit's guest agent (`--exec-via vsock`, the default).
//!
//! The VM gets a virtio-vsock device (CID 3, its unix socket in a private directory removed
//! at exit, or the one `--vsock` names) and an initramfs that is the cached one with
//! `/bin/kvmkit-agent` appended as a second cpio archive; `kvmkit.agent=1024:only` on the
//! kernel command line makes `/init` load the vsock modules and run only the agent. kvmkit
//! then connects through the socket (retrying while the guest boots), sends CMD, copies its
//! stdout and stderr as they stream and exits with its status; the agent reports the status
//! on the exit-status port and powers the guest off. Without a command (the console shell),
//! the agent runs in the background when `--api-sock` or `--vsock` is given, for `kvmkit exec`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;
use kvmkit_agent_proto::{Exit, Request, DEFAULT_PORT, FLAG_POWEROFF, FLAG_STDIN};
use kvmkit_images::{InitramfsEntry, LinuxAssets, AGENT_KEY};
use kvmkit_vmm::vmm_config::VsockDeviceConfig;

use crate::cli::{ExecViaArg, RunArgs};

/// The guest CID of the private vsock device.
const GUEST_CID: u32 = 3;

/// The agent set-up of one `kvmkit run --linux`.
pub struct AgentPlan {
    /// The vsock device the VM gets.
    pub vsock: VsockDeviceConfig,
    /// The initramfs with the agent appended.
    pub initramfs: PathBuf,
    /// The word for the kernel command line (`kvmkit.agent=PORT[:only]`).
    pub cmdline_word: String,
    /// The command to run through the agent (none: the console shell, agent in the background).
    pub command: Option<Vec<String>>,
    /// Forward kvmkit's stdin to the command.
    pub stdin: bool,
    /// The private directory (socket and initramfs), removed when the plan is dropped.
    dir: Option<PathBuf>,
    /// The directory opened with an exclusive `flock` held for kvmkit's lifetime: a directory
    /// nobody holds locked belongs to a kvmkit that ended without removing it.
    _lock: Option<std::fs::File>,
}

impl Drop for AgentPlan {
    fn drop(&mut self) {
        let Some(dir) = &self.dir else { return };
        // By now the main thread runs under the VMM's seccomp filter: no getdents64 (so no
        // remove_dir_all) and no rmdir, but unlink and unlinkat. The directory holds only
        // these names (the VMM removes its socket itself).
        let _ = std::fs::remove_file(&self.initramfs);
        if self.vsock.uds_path.starts_with(dir) {
            let _ = std::fs::remove_file(&self.vsock.uds_path);
        }
        if let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) {
            // SAFETY: unlinkat(2) with a valid NUL-terminated path; it only removes an empty
            // directory (AT_REMOVEDIR) and reports failure in its result, which is ignored.
            unsafe { libc::unlinkat(libc::AT_FDCWD, path.as_ptr(), libc::AT_REMOVEDIR) };
        }
    }
}

/// Whether (and how) `args` runs through the agent: `None` for the console path
/// (`--exec-via console`, no `--linux`, assets without the vsock modules, or no command and
/// nobody who could reach the agent).
pub fn plan(args: &RunArgs, assets: &LinuxAssets) -> anyhow::Result<Option<AgentPlan>> {
    if !args.linux || args.exec_via == ExecViaArg::Console {
        return Ok(None);
    }
    let command = (!args.command.is_empty()).then(|| args.command.clone());
    if command.is_none() && args.api_sock.is_none() && args.vsock.is_none() {
        return Ok(None);
    }
    if !assets.vsock {
        crate::logging::errln!(
            "kvmkit: note: the cached Linux initramfs has no vsock modules; running the command through the console \
             (kvmkit image fetch rebuilds it)"
        );
        return Ok(None);
    }
    let (dir, lock) = private_dir()?;
    let mut plan = AgentPlan {
        vsock: VsockDeviceConfig {
            vsock_id: None,
            guest_cid: GUEST_CID,
            uds_path: dir.join("v.sock"),
        },
        initramfs: dir.join("initramfs.cpio"),
        cmdline_word: format!(
            "{AGENT_KEY}={DEFAULT_PORT}{}",
            if command.is_some() { ":only" } else { "" }
        ),
        command,
        stdin: !args.no_stdin,
        dir: Some(dir),
        _lock: Some(lock),
    };
    if let Some(spec) = &args.vsock {
        plan.vsock = super::config::parse_vsock(spec)?;
    }
    write_initramfs(&assets.initramfs, &plan.initramfs)?;
    Ok(Some(plan))
}

/// The prefix of the private directories' names.
const DIR_PREFIX: &str = "kvmkit-agent-";

/// A new directory only this user can enter, for the socket and the initramfs, locked (see
/// [`AgentPlan`]); first removes the directories of kvmkit processes that were killed before
/// they could remove theirs (SIGKILL, a seccomp kill).
fn private_dir() -> anyhow::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::DirBuilderExt;
    let mut base = std::env::temp_dir();
    // The socket path must fit in sun_path with `_<port>` appended.
    if base.as_os_str().len() > 60 {
        base = PathBuf::from("/tmp");
    }
    sweep_stale(&base);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for i in 0..100u32 {
        let dir = base.join(format!(
            "{DIR_PREFIX}{}-{:x}",
            std::process::id(),
            nanos.wrapping_add(i)
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                let lock = lock_dir(&dir)
                    .with_context(|| format!("cannot lock {}", dir.display()))?
                    .with_context(|| format!("{} is locked by another process", dir.display()))?;
                return Ok((dir, lock));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    anyhow::bail!("cannot create a private directory in {}", base.display())
}

/// Opens `dir` and takes an exclusive `flock` on it without waiting: `Ok(None)` when another
/// process holds it.
fn lock_dir(dir: &Path) -> std::io::Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)?;
    // SAFETY: flock(2) on an fd this function owns; failure is reported in the result.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(f));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// How old an unlocked private directory must be to be taken for stale: a starting kvmkit
/// creates its directory and locks it a moment later.
const STALE_AFTER: Duration = Duration::from_secs(10);

/// Removes this user's private directories in `base` that no live kvmkit holds locked and
/// that are older than [`STALE_AFTER`]. Best effort: what cannot be read or removed stays.
fn sweep_stale(base: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else { return };
    // SAFETY: geteuid(2) cannot fail.
    let uid = unsafe { libc::geteuid() };
    // A bound on the work in a /tmp with very many entries.
    for entry in entries.take(100_000).flatten() {
        if !entry.file_name().as_encoded_bytes().starts_with(DIR_PREFIX.as_bytes()) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= STALE_AFTER);
        if !meta.is_dir() || meta.uid() != uid || !old {
            continue;
        }
        // Holding the lock while removing keeps a second sweeper out.
        if let Ok(Some(_lock)) = lock_dir(&path) {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => tracing::info!("removed {}, left by a kvmkit that was killed", path.display()),
                Err(e) => tracing::debug!("cannot remove the stale {}: {e}", path.display()),
            }
        }
    }
}

/// `out` = the cached initramfs, zero-padded to 4 bytes, then a second cpio archive holding
/// the agent (Linux unpacks concatenated archives in order).
fn write_initramfs(cached: &Path, out: &Path) -> anyhow::Result<()> {
    let overlay = out.with_extension("agent.cpio");
    kvmkit_images::write_initramfs(
        &overlay,
        &[InitramfsEntry::file(
            kvmkit_agent_image::AGENT_PATH,
            0o755,
            kvmkit_agent_image::AGENT,
        )],
    )
    .context("cannot write the agent's initramfs")?;
    let mut base = std::fs::read(cached).with_context(|| format!("cannot read {}", cached.display()))?;
    base.resize(base.len().next_multiple_of(4), 0);
    base.extend_from_slice(&std::fs::read(&overlay)?);
    let _ = std::fs::remove_file(&overlay);
    let mut f = std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    f.write_all(&base)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

/// The command running through the agent while the VM runs.
pub struct Client {
    done: mpsc::Receiver<anyhow::Result<Exit>>,
    vm_ended: Arc<AtomicBool>,
}

impl Client {
    /// Starts the client thread for `plan`'s command (none: nothing to run).
    pub fn start(plan: &AgentPlan, timeout: Option<Duration>) -> anyhow::Result<Option<Client>> {
        let Some(command) = &plan.command else {
            return Ok(None);
        };
        let mut req = Request::new(command.iter().map(|w| w.as_bytes().to_vec()));
        req.flags = FLAG_POWEROFF | if plan.stdin { FLAG_STDIN } else { 0 };
        req.encode()
            .map_err(|e| anyhow::anyhow!("the command is too big to send to the guest agent: {e}"))?;
        let uds = plan.vsock.uds_path.clone();
        let stdin = plan.stdin;
        let vm_ended = Arc::new(AtomicBool::new(false));
        let ended = Arc::clone(&vm_ended);
        let (tx, done) = mpsc::channel();
        // Without --timeout the VM's end stops the waiting (the guest may boot slowly).
        let deadline = Instant::now() + timeout.unwrap_or(Duration::from_secs(365 * 86_400));
        std::thread::Builder::new().name("agent-client".into()).spawn(move || {
            let result =
                super::super::agent::connect_until(&uds, DEFAULT_PORT, deadline, &|| ended.load(Ordering::Relaxed))
                    .map_err(anyhow::Error::from)
                    .and_then(|s| {
                        let input: Option<Box<dyn std::io::Read + Send>> =
                            stdin.then(|| Box::new(std::io::stdin()) as _);
                        super::super::agent::run(s, &req, input)
                    });
            let _ = tx.send(result);
        })?;
        Ok(Some(Client { done, vm_ended }))
    }

    /// After the VM ended: the command's exit, or why there is none.
    pub fn finish(self) -> anyhow::Result<Exit> {
        self.vm_ended.store(true, Ordering::Relaxed);
        match self.done.recv_timeout(Duration::from_secs(5)) {
            Ok(r) => r,
            Err(_) => anyhow::bail!("the guest agent never reported the command's exit status"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes `base/name` with an mtime `age` ago.
    fn dir_aged(base: &Path, name: &str, age: Duration) -> PathBuf {
        let dir = base.join(name);
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("initramfs.cpio"), b"x").expect("write");
        let when = std::time::SystemTime::now() - age;
        std::fs::File::open(&dir)
            .expect("open")
            .set_modified(when)
            .expect("set mtime");
        dir
    }

    #[test]
    fn the_sweep_removes_only_unlocked_old_private_directories() {
        let base = std::env::temp_dir().join(format!("kvmkit-sweep-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).expect("mkdir base");
        let hour = Duration::from_secs(3600);
        let stale = dir_aged(&base, "kvmkit-agent-1-a", hour);
        let live = dir_aged(&base, "kvmkit-agent-2-b", hour);
        let young = dir_aged(&base, "kvmkit-agent-3-c", Duration::ZERO);
        let other = dir_aged(&base, "something-else", hour);
        let held = lock_dir(&live).expect("lock").expect("not locked yet");
        // A second lock on a held directory is refused without waiting.
        assert!(lock_dir(&live).expect("lock attempt").is_none());

        sweep_stale(&base);
        assert!(!stale.exists(), "an old unlocked directory is removed");
        assert!(live.exists(), "a directory a live kvmkit holds locked stays");
        assert!(young.exists(), "a directory younger than {STALE_AFTER:?} stays");
        assert!(other.exists(), "other names stay");
        drop(held);
        let _ = std::fs::remove_dir_all(&base);
    }
}
