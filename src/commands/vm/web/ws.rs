//! The web console's serial console: `GET /ws/NAME/console` upgrades to a
//! WebSocket (tungstenite over the connection tiny_http hands over) and
//! bridges it to the VM's console socket. The first message to the page is
//! `{"writer": true|false}`; then console output goes to the page as binary
//! messages, and the page's messages (text or binary: keystrokes) go to the
//! console when this client holds the input. A browser that does not keep
//! up loses console bytes (the console socket drops them), never the VM's
//! time.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use tiny_http::{Request, Response};
use tungstenite::protocol::{Role, WebSocket};
use tungstenite::{Error as WsError, Message};

use super::super::console;
use super::super::store::VmDir;
use super::{header, json};

/// Most console bytes read for one message.
const CHUNK: usize = 16 << 10;

/// Answers a WebSocket upgrade for VM `vm`'s console; `want_input`: the page
/// asks to type (it gets the input unless another client holds it).
pub fn serve(rq: Request, vm: &VmDir, want_input: bool) {
    let Some(key) = header_value(&rq, "Sec-WebSocket-Key") else {
        let _ = rq.respond(json(
            400,
            &serde_json::json!({"error": "a WebSocket upgrade is expected here"}),
        ));
        return;
    };
    if !same_origin(&rq) {
        let _ = rq.respond(json(
            403,
            &serde_json::json!({"error": "cross-origin WebSocket refused"}),
        ));
        return;
    }
    let conn = match console::connect(vm, want_input) {
        Ok(c) => c,
        Err(e) => {
            let _ = rq.respond(json(409, &serde_json::json!({"error": format!("{e:#}")})));
            return;
        }
    };
    let Some(peer) = rq.remote_addr().copied() else {
        let _ = rq.respond(json(500, &serde_json::json!({"error": "no peer address"})));
        return;
    };
    let response = Response::empty(101).with_header(header(
        "Sec-WebSocket-Accept",
        &tungstenite::handshake::derive_accept_key(key.as_bytes()),
    ));
    // tiny_http's stream cannot be polled; the same connection is found by
    // its peer address among this process's descriptors and used directly.
    // The browser sends nothing before the 101, so tiny_http buffered nothing.
    let upgraded = rq.upgrade("websocket", response);
    let Some(fd) = connection_fd(peer) else {
        tracing::warn!("web console: the upgraded connection from {peer} was not found");
        return;
    };
    let tcp = TcpStream::from(fd);
    if tcp.set_nonblocking(true).is_err() || conn.stream.set_nonblocking(true).is_err() {
        return;
    }
    let mut ws = WebSocket::from_raw_socket(tcp, Role::Server, None);
    let hello = serde_json::json!({"writer": conn.writer}).to_string();
    if bridge(&mut ws, &conn.stream, conn.writer, hello).is_err() {
        // The page left or the VM ended: both sides close.
    }
    let _ = ws.close(None);
    let _ = ws.flush();
    drop(upgraded);
}

/// Copies console output to the page and the page's keystrokes to the
/// console until either side ends.
fn bridge(ws: &mut WebSocket<TcpStream>, console: &UnixStream, writer: bool, hello: String) -> Result<(), WsError> {
    // A write the socket cannot take yet stays queued in `ws`; flush() tells.
    match ws.write(Message::text(hello)) {
        Err(WsError::Io(e)) if e.kind() != ErrorKind::WouldBlock => return Err(WsError::Io(e)),
        _ => {}
    }
    let mut pending;
    let mut buf = vec![0u8; CHUNK];
    loop {
        match ws.flush() {
            Ok(()) => pending = false,
            Err(WsError::Io(e)) if e.kind() == ErrorKind::WouldBlock => pending = true,
            Err(e) => return Err(e),
        }
        let tcp_fd = ws.get_ref().as_raw_fd();
        let mut fds = [
            libc::pollfd {
                fd: tcp_fd,
                events: libc::POLLIN | if pending { libc::POLLOUT } else { 0 },
                revents: 0,
            },
            libc::pollfd {
                // While the page has not taken what was sent, the console waits
                // (and its socket drops bytes for this client alone).
                fd: console.as_raw_fd(),
                events: if pending { 0 } else { libc::POLLIN },
                revents: 0,
            },
        ];
        // SAFETY: a valid array of two pollfd.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) } < 0 {
            continue;
        }
        if fds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            loop {
                match ws.read() {
                    Ok(Message::Text(t)) if writer => write_all(console, t.as_bytes())?,
                    Ok(Message::Binary(b)) if writer => write_all(console, &b)?,
                    Ok(Message::Close(_)) => return Ok(()),
                    Ok(_) => {}
                    Err(WsError::Io(e)) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        if fds[1].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            match std::io::Read::read(&mut { console }, &mut buf) {
                Ok(0) => return Ok(()), // the VM ended
                Ok(n) => match ws.write(Message::binary(buf[..n].to_vec())) {
                    Err(WsError::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                    Ok(()) => {}
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(WsError::Io(e)),
            }
        }
    }
}

/// Writes keystrokes to the console socket (non-blocking: waits briefly
/// when its buffer is full, which a human's typing never fills).
fn write_all(mut s: &UnixStream, mut data: &[u8]) -> Result<(), WsError> {
    use std::io::Write;
    let mut tries = 0;
    while !data.is_empty() {
        match s.write(data) {
            Ok(0) => return Err(WsError::Io(ErrorKind::WriteZero.into())),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(WsError::Io(e)),
        }
    }
    Ok(())
}

fn header_value(rq: &Request, name: &'static str) -> Option<String> {
    rq.headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str().trim().to_owned())
}

/// A browser's WebSocket carries an Origin: it must name this server (the
/// Host the page was loaded from); clients without one (tools) pass.
fn same_origin(rq: &Request) -> bool {
    match (header_value(rq, "Origin"), header_value(rq, "Host")) {
        (None, _) => true,
        (Some(origin), Some(host)) => {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(host.as_str())
        }
        (Some(_), None) => false,
    }
}

/// This process's descriptor of the TCP connection from `peer` (a dup).
fn connection_fd(peer: SocketAddr) -> Option<OwnedFd> {
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else {
            continue;
        };
        if !std::fs::read_link(entry.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")) {
            continue;
        }
        // SAFETY: borrowed only to ask the peer address; ManuallyDrop never closes it.
        let s = std::mem::ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
        if s.peer_addr().ok() == Some(peer) {
            // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we own, or -1.
            let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
            if dup >= 0 {
                // SAFETY: `dup` is new and ours.
                return Some(unsafe { OwnedFd::from_raw_fd(dup) });
            }
        }
    }
    None
}
