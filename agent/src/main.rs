//! kvmkit-agent: runs commands the host sends over vsock in a Linux guest.
//!
//! `kvmkit-agent [--port N]` listens on AF_VSOCK port N (default 1024, any CID) and serves
//! each connection on its own thread: it reads one request ([`kvmkit_agent_proto`]: argv, env,
//! cwd, flags), runs the command with stdout and stderr on pipes, streams both back as frames
//! as they come, and ends with the exit status (or the signal). With `FLAG_POWEROFF` it then
//! waits (up to 5 s) for the host to close the connection, writes the status to kvmkit's
//! exit-status port and powers the guest off. See docs/vsock.md.

mod sys;

use std::ffi::OsStr;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvmkit_agent_proto::{
    read_frame, write_frame, Exit, Frame, Kind, ProtoError, Request, RequestBuilder, DEFAULT_PORT, FLAG_POWEROFF,
    FLAG_STDIN, MAX_DATA,
};

/// Connections served at once; more are answered with an error frame and closed.
const MAX_CONNECTIONS: usize = 512;
/// How long a connection may take to send its whole request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent waits for the host to close the connection before powering off.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Error lines the agent prints to the console at most (the rest are counted only).
const MAX_LOGGED: usize = 20;

static ACTIVE: AtomicUsize = AtomicUsize::new(0);
static LOGGED: AtomicUsize = AtomicUsize::new(0);

/// Prints one line to stderr (the guest console), at most [`MAX_LOGGED`] times in all.
fn log(msg: std::fmt::Arguments<'_>) {
    let n = LOGGED.fetch_add(1, Ordering::Relaxed);
    if n < MAX_LOGGED {
        eprintln!("kvmkit-agent: {msg}");
    } else if n == MAX_LOGGED {
        eprintln!("kvmkit-agent: further errors are not printed");
    }
}

fn main() {
    let mut port = DEFAULT_PORT;
    let mut unix = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let value = args.next();
        match (a.to_str(), value) {
            (Some("--port"), Some(v)) if v.to_str().and_then(|v| v.parse::<u32>().ok()).is_some() => {
                port = v.to_str().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_PORT);
            }
            (Some("--unix"), Some(path)) => unix = Some(std::path::PathBuf::from(path)),
            _ => {
                eprintln!("usage: kvmkit-agent [--port N | --unix PATH]");
                std::process::exit(2);
            }
        }
    }
    // --unix PATH: the same service on a unix socket (kvmkit's host-side tests).
    let (listener, what) = match &unix {
        Some(path) => (sys::listen_unix(path), format!("unix socket {}", path.display())),
        None => (sys::listen_vsock(port), format!("vsock port {port}")),
    };
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kvmkit-agent: cannot listen on {what}: {e} (are the vsock modules loaded?)");
            std::process::exit(1);
        }
    };
    // Nothing is printed on success: in `kvmkit run --linux -- CMD` the console is kvmkit's stdout.
    loop {
        let sock = match sys::accept(&listener) {
            Ok(s) => s,
            Err(e) => {
                log(format_args!("accept: {e}"));
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if ACTIVE.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            ACTIVE.fetch_sub(1, Ordering::AcqRel);
            let _ = write_frame(&mut &sock, Kind::Error, b"too many connections");
            continue;
        }
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .stack_size(256 << 10)
            .spawn(move || {
                if let Err(e) = serve(sock) {
                    log(format_args!("connection: {e}"));
                }
                ACTIVE.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            ACTIVE.fetch_sub(1, Ordering::AcqRel);
            log(format_args!("cannot start a thread: {e}"));
        }
    }
}

/// Reads the request from `sock`, runs it, streams its output and status back.
fn serve(sock: UnixStream) -> Result<(), ProtoError> {
    sock.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut reader = BufReader::with_capacity(MAX_DATA, sock.try_clone()?);
    let mut builder = RequestBuilder::default();
    let req = loop {
        let refused = match read_frame(&mut reader) {
            Ok(Some(f)) => match builder.push(f) {
                Ok(Some(req)) => break req,
                Ok(None) => continue,
                Err(e) => e,
            },
            Ok(None) => return Ok(()),
            Err(e) => e,
        };
        let _ = write_frame(&mut &sock, Kind::Error, format!("bad request: {refused}").as_bytes());
        return Err(refused);
    };
    sock.set_read_timeout(None)?;
    let out = Arc::new(Mutex::new(sock.try_clone()?));
    let exit = run(&req, reader, &out)?;
    send(&out, Kind::Exit, &exit.encode())?;
    if req.flags & FLAG_POWEROFF == 0 {
        // Also ends a stdin thread still waiting for frames.
        let _ = sock.shutdown(std::net::Shutdown::Both);
    } else {
        let _ = sock.shutdown(std::net::Shutdown::Write);
        // The host closes its side once it has everything; then the VM may end.
        let _ = sock.set_read_timeout(Some(CLOSE_WAIT));
        let _ = io::copy(&mut &sock, &mut io::sink());
        sys::power_off(exit.shell_status());
    }
    Ok(())
}

/// Writes one frame under the connection's write lock.
fn send(out: &Mutex<UnixStream>, kind: Kind, payload: &[u8]) -> Result<(), ProtoError> {
    let mut s = out.lock().unwrap_or_else(|p| p.into_inner());
    write_frame(&mut *s, kind, payload)
}

/// Runs the request's command; returns how it ended. A command that cannot be started is
/// reported the way a shell does: a line on stderr and status 127 (not found) or 126.
fn run(req: &Request, reader: BufReader<UnixStream>, out: &Arc<Mutex<UnixStream>>) -> Result<Exit, ProtoError> {
    let program = OsStr::from_bytes(&req.argv[0]);
    let mut cmd = Command::new(program);
    cmd.args(req.argv[1..].iter().map(|a| OsStr::from_bytes(a)))
        .envs(
            req.env
                .iter()
                .map(|(k, v)| (OsStr::from_bytes(k), OsStr::from_bytes(v))),
        )
        .current_dir(req.cwd.as_deref().map_or(OsStr::new("/"), OsStr::from_bytes))
        .stdin(if req.flags & FLAG_STDIN != 0 {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let status = match e.kind() {
                io::ErrorKind::NotFound => 127,
                _ => 126,
            };
            let name = String::from_utf8_lossy(&req.argv[0]);
            send(out, Kind::Stderr, format!("kvmkit-agent: {name}: {e}\n").as_bytes())?;
            return Ok(Exit::Code(status));
        }
    };
    if let Some(stdin) = child.stdin.take() {
        std::thread::Builder::new()
            .name("stdin".into())
            .stack_size(128 << 10)
            .spawn(move || feed_stdin(reader, stdin))
            .map_err(ProtoError::Io)?;
    }
    let mut pumps = Vec::new();
    let pipes: [(Kind, Option<Box<dyn Read + Send>>); 2] = [
        (Kind::Stdout, child.stdout.take().map(|p| Box::new(p) as _)),
        (Kind::Stderr, child.stderr.take().map(|p| Box::new(p) as _)),
    ];
    for (kind, pipe) in pipes {
        let Some(pipe) = pipe else { continue };
        let out = Arc::clone(out);
        pumps.push(
            std::thread::Builder::new()
                .name("pump".into())
                .stack_size(128 << 10)
                .spawn(move || pump(pipe, kind, &out))
                .map_err(ProtoError::Io)?,
        );
    }
    let status = child.wait()?;
    for p in pumps {
        let _ = p.join();
    }
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => Exit::Code(c as u32),
        (None, Some(s)) => Exit::Signal(s as u32),
        (None, None) => Exit::Code(255),
    })
}

/// Copies a pipe to the connection as `kind` frames until the pipe ends (or the host is gone:
/// then the pipe is dropped and the command gets SIGPIPE on its next write).
fn pump(mut pipe: Box<dyn Read + Send>, kind: Kind, out: &Mutex<UnixStream>) {
    let mut buf = vec![0u8; MAX_DATA];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if send(out, kind, &buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Copies `Stdin` frames to the command's stdin until an empty one, the end of the
/// connection, or anything else (a protocol error), then closes it.
fn feed_stdin(mut reader: BufReader<UnixStream>, stdin: std::process::ChildStdin) {
    let mut stdin = Some(stdin);
    loop {
        match read_frame(&mut reader) {
            Ok(Some(Frame {
                kind: Kind::Stdin,
                payload,
            })) if !payload.is_empty() => {
                // A command that closed its stdin: drain what the host still sends.
                if stdin.as_mut().is_some_and(|s| s.write_all(&payload).is_err()) {
                    stdin = None;
                }
            }
            _ => return,
        }
    }
}
