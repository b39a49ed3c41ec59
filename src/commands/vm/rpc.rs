//! The daemon's socket, `STATE/.serve.sock` (mode 0600): `kvmkit vm list`
//! asks `kvmkit serve` for the rows it keeps current in memory
//! ([`super::fleet`]) instead of reading every VM's files. One request per
//! connection, one line: `list` or `list json`; the answer is `ok` and a
//! newline, then the text `vm list` prints. No daemon, or no answer within
//! [`ANSWER_WAIT`]: the client reads the files itself, as without a daemon.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::fleet::{self, Shared};

/// The socket's name in the state directory (a leading dot: never a VM name).
pub const SOCK: &str = ".serve.sock";
/// How long a client waits for the daemon's answer before reading the files itself.
const ANSWER_WAIT: Duration = Duration::from_secs(2);
/// How long the daemon waits for a client's request line.
const REQUEST_WAIT: Duration = Duration::from_millis(500);
/// Longest request line.
const MAX_REQUEST: u64 = 256;
/// Largest answer a client reads.
const MAX_ANSWER: u64 = 64 << 20;

/// The socket's path for a state directory.
pub fn sock_path(state: &Path) -> PathBuf {
    state.join(SOCK)
}

/// Listens on the state directory's socket (replacing a dead daemon's) and
/// answers in a thread of its own. The caller holds the daemon lock, so no
/// live daemon's socket is taken over.
pub fn spawn(state: &Path, fleet: Shared) -> anyhow::Result<()> {
    let path = sock_path(state);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    std::thread::Builder::new().name("serve-rpc".into()).spawn(move || {
        for conn in listener.incoming().flatten() {
            answer(conn, &fleet);
        }
    })?;
    Ok(())
}

/// Answers one connection (its errors are the client's problem: it falls back).
fn answer(mut conn: UnixStream, fleet: &Shared) {
    let _ = conn.set_read_timeout(Some(REQUEST_WAIT));
    let _ = conn.set_write_timeout(Some(ANSWER_WAIT));
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < MAX_REQUEST as usize {
        match (&conn).read(&mut byte) {
            Ok(1) if byte[0] != b'\n' => line.push(byte[0]),
            _ => break,
        }
    }
    let text = match std::str::from_utf8(&line).map(str::trim) {
        Ok("list") => super::render(&fleet::rows(fleet), false),
        Ok("list json") => super::render(&fleet::rows(fleet), true),
        _ => Err(anyhow::anyhow!("unknown request")),
    };
    let reply = match text {
        Ok(t) => format!("ok\n{t}"),
        Err(e) => format!("error: {e:#}\n"),
    };
    let _ = conn.write_all(reply.as_bytes());
}

/// What `vm list` prints, as the daemon answers it; None without a daemon
/// (or when it does not answer in time).
pub fn list(state: &Path, json: bool) -> Option<String> {
    let mut s = UnixStream::connect(sock_path(state)).ok()?;
    s.set_read_timeout(Some(ANSWER_WAIT)).ok()?;
    s.set_write_timeout(Some(ANSWER_WAIT)).ok()?;
    s.write_all(if json { b"list json\n" } else { b"list\n" }).ok()?;
    let mut raw = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    text.strip_prefix("ok\n").map(str::to_owned)
}
