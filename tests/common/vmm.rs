//! A kvmkit process started in the background for a test: its stdout (the
//! guest console) collected, its API socket (when it has one) ready before
//! the test goes on, and the process killed when the handle is dropped, so
//! a failing assertion never leaves a VM running.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running kvmkit process with its stdout collected; killed (and reaped)
/// when dropped.
pub struct Vmm {
    /// The process, for a test that signals or waits on it itself.
    pub child: Child,
    sock: Option<PathBuf>,
    out: Arc<Mutex<String>>,
    remove: Option<PathBuf>,
}

impl Vmm {
    /// Starts `kvmkit ARGS...` with no API socket to wait for (stdin
    /// closed, stderr inherited).
    pub fn start(args: &[&str]) -> Self {
        Self::launch(Path::new(super::kvmkit()), args, None)
    }

    /// Starts `kvmkit run --no-stdin --api-sock DIR/NAME.sock EXTRA...` and
    /// waits until the socket accepts connections.
    pub fn spawn(dir: &Path, name: &str, extra: &[&str]) -> Self {
        let sock = dir.join(format!("{name}.sock"));
        let mut args = vec!["run", "--no-stdin", "--api-sock", sock.to_str().expect("utf8")];
        args.extend_from_slice(extra);
        Self::launch(Path::new(super::kvmkit()), &args, Some(sock.clone()))
    }

    /// Starts `bin ARGS...` (kvmkit under another name, say), whose
    /// arguments make it serve its API at `sock`, and waits until the socket
    /// accepts connections.
    pub fn spawn_with(bin: &Path, args: &[&str], sock: PathBuf) -> Self {
        Self::launch(bin, args, Some(sock))
    }

    fn launch(bin: &Path, args: &[&str], sock: Option<PathBuf>) -> Self {
        let (child, out) = super::spawn_collecting(bin, args);
        // Built before the wait, so a socket that never comes kills the process.
        let vmm = Self {
            child,
            sock,
            out,
            remove: None,
        };
        if let Some(sock) = &vmm.sock {
            super::wait_for_socket(sock);
        }
        vmm
    }

    /// Removes `dir` and all in it when this VMM is dropped (after the
    /// process ended).
    pub fn removing(mut self, dir: PathBuf) -> Self {
        self.remove = Some(dir);
        self
    }

    /// The API socket; panics for a VMM started without one.
    pub fn sock(&self) -> &Path {
        self.sock.as_deref().expect("a VMM started with an API socket")
    }

    /// Everything the process printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.out.lock().expect("out").clone()
    }

    /// Waits until `f` holds for the stdout so far; panics, naming `what`
    /// and showing the stdout, after `limit`.
    pub fn wait_stdout(&self, what: &str, f: impl Fn(&str) -> bool, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !f(&self.stdout()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                self.stdout()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// One HTTP request on the API socket: (status, body).
    pub fn req(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        super::api_request(self.sock(), method, path, body)
    }

    /// A request that must be answered `204 No Content` with an empty body.
    pub fn ok(&self, method: &str, path: &str, body: &str) {
        let (status, text) = self.req(method, path, body);
        assert_eq!(status, 204, "{method} {path} {body}: {text}");
        assert_eq!(text, "", "a 204 has an empty body");
    }

    /// `PUT /snapshot/create` of `kind` ("Full" or "Diff") to
    /// `DIR/NAME.state` + `DIR/NAME.mem` (the VM must be Paused); prints how
    /// long it took and returns the two paths.
    pub fn snapshot(&self, kind: &str, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (state, mem) = (dir.join(format!("{name}.state")), dir.join(format!("{name}.mem")));
        let body = serde_json::json!({
            "snapshot_type": kind,
            "snapshot_path": state.to_str().expect("utf8"),
            "mem_file_path": mem.to_str().expect("utf8"),
        });
        let t = Instant::now();
        self.ok("PUT", "/snapshot/create", &body.to_string());
        eprintln!("{kind} snapshot {name}: {} ms", t.elapsed().as_millis());
        (state, mem)
    }

    /// Waits (`limit` at most, else panics) for the process to exit on its
    /// own; returns its exit code (None when a signal ended it).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s.code();
            }
            assert!(Instant::now() < deadline, "the VMM did not exit:\n{}", self.stdout());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process (SIGKILL, so nothing is cleaned up on its side)
    /// and reaps it: what dropping the handle does, said out loud.
    pub fn kill(self) {
        drop(self);
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.remove {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
