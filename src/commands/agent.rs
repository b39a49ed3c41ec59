//! The host side of kvmkit's guest agent (`agent/`, protocol in `kvmkit-agent-proto` and
//! docs/vsock.md): connect through the vsock device's unix-socket bridge (`CONNECT <port>`,
//! `OK <hostport>`), send one request, copy the command's stdout and stderr to ours as the
//! frames arrive, and return how it ended. Used by `kvmkit exec` and `kvmkit run --linux -- CMD`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kvmkit_agent_proto::{read_frame, write_frame, Exit, Kind, Request, MAX_DATA};

/// Why the agent could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The bridge's socket cannot be connected to (missing, not listening).
    #[error("cannot connect to the vsock socket {path}: {source}")]
    Socket {
        /// The socket.
        path: String,
        /// connect(2)'s error.
        source: std::io::Error,
    },
    /// The bridge closed the connection or answered something else than `OK`: nothing
    /// listens on the port in the guest (yet).
    #[error("nothing answered on guest vsock port {port}{}", answer.as_deref().map(|a| format!(" (the bridge said {a:?})")).unwrap_or_default())]
    NoListener {
        /// The port.
        port: u32,
        /// What the bridge sent instead of `OK ...`, if anything.
        answer: Option<String>,
    },
}

/// One attempt: connects to the bridge at `uds`, asks for guest `port` and waits (at most
/// `wait`) for the `OK` line. The stream is returned without timeouts.
pub fn connect(uds: &Path, port: u32, wait: Duration) -> Result<UnixStream, ConnectError> {
    let socket_error = |source| ConnectError::Socket {
        path: uds.display().to_string(),
        source,
    };
    let mut s = UnixStream::connect(uds).map_err(socket_error)?;
    s.set_read_timeout(Some(wait.max(Duration::from_millis(1))))
        .map_err(socket_error)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(socket_error)?;
    // Read the answer a byte at a time: what follows the line is the agent's.
    let mut line = Vec::new();
    let mut byte = [0u8];
    while line.len() < 64 {
        match s.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            _ => {
                return Err(ConnectError::NoListener {
                    port,
                    answer: (!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned()),
                })
            }
        }
    }
    if !line.starts_with(b"OK") {
        return Err(ConnectError::NoListener {
            port,
            answer: Some(String::from_utf8_lossy(&line).into_owned()),
        });
    }
    s.set_read_timeout(None).map_err(socket_error)?;
    Ok(s)
}

/// Tries [`connect`] every 200 ms until it works, `deadline` passes, or `give_up()` says
/// so (e.g. the VM ended); returns the last error then.
pub fn connect_until(
    uds: &Path,
    port: u32,
    deadline: Instant,
    give_up: &dyn Fn() -> bool,
) -> Result<UnixStream, ConnectError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match connect(uds, port, left.min(Duration::from_secs(5))) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline || give_up() => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200).min(left)),
        }
    }
}

/// Sends `req` on a connected stream, copies stdin (when given; `req` must then have
/// `FLAG_STDIN`) to the command, the command's stdout and stderr to ours as they come, and
/// returns its exit. The connection is closed afterwards.
pub fn run(mut s: UnixStream, req: &Request, stdin: Option<Box<dyn Read + Send>>) -> anyhow::Result<Exit> {
    let bytes = req
        .encode()
        .map_err(|e| anyhow::anyhow!("the command is too big to send: {e}"))?;
    s.write_all(&bytes)
        .context("cannot send the command to the guest agent")?;
    if let Some(mut input) = stdin {
        let mut w = s.try_clone()?;
        std::thread::Builder::new().name("agent-stdin".into()).spawn(move || {
            let mut buf = vec![0u8; MAX_DATA];
            loop {
                let n = match input.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => 0,
                };
                if write_frame(&mut w, Kind::Stdin, &buf[..n]).is_err() || n == 0 {
                    return;
                }
            }
        })?;
    }
    let mut reader = std::io::BufReader::with_capacity(MAX_DATA + 16, &s);
    let exit = loop {
        let frame = match read_frame(&mut reader) {
            Ok(Some(f)) => f,
            Ok(None) => bail!("the guest agent closed the connection before the command's exit status"),
            Err(e) => bail!("the guest agent's answer is broken: {e}"),
        };
        match frame.kind {
            Kind::Stdout => write_out(&mut std::io::stdout().lock(), &frame.payload, "stdout")?,
            Kind::Stderr => write_out(&mut std::io::stderr().lock(), &frame.payload, "stderr")?,
            Kind::Exit => break Exit::decode(&frame.payload).map_err(|e| anyhow::anyhow!("the guest agent: {e}"))?,
            Kind::Error => bail!(
                "the guest agent refused the command: {}",
                String::from_utf8_lossy(&frame.payload)
            ),
            other => bail!("the guest agent sent a {other:?} frame"),
        }
    };
    let _ = s.shutdown(std::net::Shutdown::Both);
    Ok(exit)
}

fn write_out(w: &mut dyn Write, data: &[u8], what: &str) -> anyhow::Result<()> {
    w.write_all(data)
        .and_then(|()| w.flush())
        .with_context(|| format!("cannot write the command's {what}"))
}
