//! The framing kvmkit's guest agent (`agent/`) and its host client (`kvmkit exec`,
//! `kvmkit run --linux -- CMD`) speak over one vsock stream connection.
//!
//! Every message is a frame: a kind byte, a little-endian `u32` payload length, then the
//! payload. Each kind has a payload limit ([`Kind::max_payload`]) checked from the 5-byte
//! header, before anything is allocated, so a hostile peer cannot make either side allocate
//! more than [`MAX_PAYLOAD`] bytes per frame (or [`MAX_REQUEST_BYTES`] per request).
//!
//! Host to agent: any number of [`Kind::Arg`] (argv, in order, at least one), [`Kind::Env`]
//! (`KEY=VALUE`, added to the agent's environment) and at most one [`Kind::Cwd`], then
//! [`Kind::Run`] (one flags byte, [`FLAG_STDIN`] | [`FLAG_POWEROFF`]); with [`FLAG_STDIN`]
//! the host then sends [`Kind::Stdin`] frames, an empty one closing the command's stdin.
//!
//! Agent to host: [`Kind::Stdout`] and [`Kind::Stderr`] frames as the command writes, then one
//! [`Kind::Exit`] ([`Exit`]: a kind byte, 0 = exited, 1 = killed by a signal, and a `u32`
//! code or signal number). A request the agent refuses or cannot start gets one
//! [`Kind::Error`] frame (a UTF-8 message) instead; a command that cannot be found is
//! reported like a shell does (a message on stderr, exit status 127). See docs/vsock.md.

#![deny(missing_docs)]

use std::fmt;
use std::io::{self, Read, Write};

/// The vsock port the agent listens on unless told otherwise.
pub const DEFAULT_PORT: u32 = 1024;
/// Bytes in a frame header: kind (1) and payload length (4, little-endian).
pub const HEADER_LEN: usize = 5;
/// The largest payload any frame may carry.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// The largest stdin/stdout/stderr chunk a sender puts in one frame.
pub const MAX_DATA: usize = 64 << 10;
/// The largest request: all argv, env and cwd payloads together.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// The most argv and env entries one request may have, together.
pub const MAX_ITEMS: usize = 4096;
/// [`Kind::Run`] flag: stdin arrives in [`Kind::Stdin`] frames (otherwise it is `/dev/null`).
pub const FLAG_STDIN: u8 = 1;
/// [`Kind::Run`] flag: when the command has ended and the host has closed the connection,
/// the agent reports the status on kvmkit's exit-status port and powers the guest off.
pub const FLAG_POWEROFF: u8 = 2;
const KNOWN_FLAGS: u8 = FLAG_STDIN | FLAG_POWEROFF;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Host to agent: one argv word.
    Arg = b'A',
    /// Host to agent: one `KEY=VALUE` environment entry.
    Env = b'E',
    /// Host to agent: the working directory.
    Cwd = b'D',
    /// Host to agent: end of the request, start the command (payload: one flags byte).
    Run = b'R',
    /// Host to agent: stdin bytes; an empty payload closes stdin.
    Stdin = b'I',
    /// Agent to host: stdout bytes.
    Stdout = b'o',
    /// Agent to host: stderr bytes.
    Stderr = b'e',
    /// Agent to host: the command ended ([`Exit`]).
    Exit = b'x',
    /// Agent to host: the request was refused or could not be started (a UTF-8 message).
    Error = b'!',
}

impl Kind {
    /// The kind a header byte names, if any.
    pub fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            b'A' => Kind::Arg,
            b'E' => Kind::Env,
            b'D' => Kind::Cwd,
            b'R' => Kind::Run,
            b'I' => Kind::Stdin,
            b'o' => Kind::Stdout,
            b'e' => Kind::Stderr,
            b'x' => Kind::Exit,
            b'!' => Kind::Error,
            _ => return None,
        })
    }

    /// The largest payload a frame of this kind may carry.
    pub fn max_payload(self) -> usize {
        match self {
            Kind::Run => 1,
            Kind::Exit => 5,
            Kind::Error => 4096,
            Kind::Arg | Kind::Env | Kind::Cwd => MAX_REQUEST_BYTES,
            Kind::Stdin | Kind::Stdout | Kind::Stderr => MAX_PAYLOAD,
        }
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub kind: Kind,
    /// The payload.
    pub payload: Vec<u8>,
}

/// What is wrong with what a peer sent.
#[derive(Debug)]
pub enum ProtoError {
    /// A header with a kind byte no frame has.
    UnknownKind(u8),
    /// A header announcing more payload than its kind allows.
    TooLong {
        /// The frame's kind.
        kind: Kind,
        /// The announced length.
        len: u64,
        /// The kind's limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    Truncated,
    /// A frame of a kind that does not belong at this point of the conversation.
    Unexpected(Kind),
    /// More than [`MAX_ITEMS`] argv and env entries.
    TooManyItems,
    /// More than [`MAX_REQUEST_BYTES`] of argv, env and cwd.
    RequestTooBig,
    /// [`Kind::Run`] before any [`Kind::Arg`], or an empty first word.
    EmptyArgv,
    /// A NUL byte in an argv word, env entry or cwd.
    Nul(Kind),
    /// An env entry without `=` or with an empty key.
    BadEnv,
    /// A second [`Kind::Cwd`].
    TwoCwds,
    /// [`Kind::Run`] without its flags byte or with unknown flags.
    BadFlags,
    /// An [`Exit`] payload that is not 5 bytes with kind 0 or 1.
    BadExit,
    /// Reading from or writing to the stream failed.
    Io(io::Error),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::UnknownKind(b) => write!(f, "unknown frame kind 0x{b:02x}"),
            ProtoError::TooLong { kind, len, max } => {
                write!(f, "a {kind:?} frame of {len} bytes (at most {max})")
            }
            ProtoError::Truncated => write!(f, "the stream ended inside a frame"),
            ProtoError::Unexpected(k) => write!(f, "a {k:?} frame out of place"),
            ProtoError::TooManyItems => write!(f, "more than {MAX_ITEMS} argv and env entries"),
            ProtoError::RequestTooBig => write!(f, "a request over {MAX_REQUEST_BYTES} bytes"),
            ProtoError::EmptyArgv => write!(f, "no command (empty argv or first word)"),
            ProtoError::Nul(k) => write!(f, "a NUL byte in a {k:?} frame"),
            ProtoError::BadEnv => write!(f, "an env entry that is not KEY=VALUE"),
            ProtoError::TwoCwds => write!(f, "two working directories"),
            ProtoError::BadFlags => write!(f, "a Run frame without a known flags byte"),
            ProtoError::BadExit => write!(f, "a malformed Exit frame"),
            ProtoError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ProtoError {}

impl From<io::Error> for ProtoError {
    fn from(e: io::Error) -> Self {
        ProtoError::Io(e)
    }
}

/// Checks a header: `Ok(Some((kind, len)))` when it names a known kind within its limit.
fn check_header(h: &[u8; HEADER_LEN]) -> Result<(Kind, usize), ProtoError> {
    let kind = Kind::from_byte(h[0]).ok_or(ProtoError::UnknownKind(h[0]))?;
    let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
    let max = kind.max_payload();
    match usize::try_from(len) {
        Ok(n) if n <= max => Ok((kind, n)),
        _ => Err(ProtoError::TooLong {
            kind,
            len: u64::from(len),
            max,
        }),
    }
}

/// Appends one frame to `out`. Fails (and appends nothing) when `payload` is over the kind's
/// limit.
pub fn encode_frame(kind: Kind, payload: &[u8], out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let max = kind.max_payload();
    if payload.len() > max {
        return Err(ProtoError::TooLong {
            kind,
            len: payload.len() as u64,
            max,
        });
    }
    out.push(kind as u8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Writes one frame (one `write_all` of header and payload).
pub fn write_frame<W: Write + ?Sized>(w: &mut W, kind: Kind, payload: &[u8]) -> Result<(), ProtoError> {
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    encode_frame(kind, payload, &mut buf)?;
    w.write_all(&buf)?;
    Ok(())
}

/// Decodes the first frame of `buf`: `Ok(None)` when more bytes are needed, otherwise the
/// frame and the bytes it took. A bad header fails as soon as its 5 bytes are there.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, ProtoError> {
    let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let (kind, len) = check_header(h)?;
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((
        Frame {
            kind,
            payload: payload.to_vec(),
        },
        HEADER_LEN + len,
    )))
}

/// Reads one frame from a blocking stream: `Ok(None)` at a clean end of the stream (before a
/// header), [`ProtoError::Truncated`] at an end inside a frame. At most the kind's limit is
/// allocated, and only after the header was checked.
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<Option<Frame>, ProtoError> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(ProtoError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (kind, len) = check_header(&h)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ProtoError::Truncated,
        _ => ProtoError::Io(e),
    })?;
    Ok(Some(Frame { kind, payload }))
}

/// A command for the agent to run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// The command and its arguments (at least one word; the first is looked up in `PATH`).
    pub argv: Vec<Vec<u8>>,
    /// `(KEY, VALUE)` pairs added to the agent's environment.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// The working directory (the agent's, `/`, when `None`).
    pub cwd: Option<Vec<u8>>,
    /// [`FLAG_STDIN`] | [`FLAG_POWEROFF`].
    pub flags: u8,
}

impl Request {
    /// A request for `argv` with no env, cwd or flags.
    pub fn new<I: IntoIterator<Item = S>, S: Into<Vec<u8>>>(argv: I) -> Self {
        Request {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }

    /// The request as frames, ending with [`Kind::Run`]. Fails when it breaks a limit the
    /// agent would refuse it for (checked here so the host says so before connecting).
    pub fn encode(&self) -> Result<Vec<u8>, ProtoError> {
        let mut out = Vec::new();
        let mut b = RequestBuilder::default();
        let mut frames = Vec::new();
        for a in &self.argv {
            frames.push((Kind::Arg, a.clone()));
        }
        for (k, v) in &self.env {
            let mut e = k.clone();
            e.push(b'=');
            e.extend_from_slice(v);
            frames.push((Kind::Env, e));
        }
        if let Some(c) = &self.cwd {
            frames.push((Kind::Cwd, c.clone()));
        }
        frames.push((Kind::Run, vec![self.flags]));
        for (kind, payload) in frames {
            encode_frame(kind, &payload, &mut out)?;
            b.push(Frame { kind, payload })?;
        }
        Ok(out)
    }
}

/// Collects a [`Request`] from frames, enforcing every limit as it goes.
#[derive(Debug, Default)]
pub struct RequestBuilder {
    req: Request,
    bytes: usize,
}

impl RequestBuilder {
    /// Takes the next frame: `Ok(Some(request))` at [`Kind::Run`], `Ok(None)` for more, an
    /// error for anything a request may not contain (the connection should then be closed).
    pub fn push(&mut self, frame: Frame) -> Result<Option<Request>, ProtoError> {
        let Frame { kind, payload } = frame;
        if matches!(kind, Kind::Arg | Kind::Env | Kind::Cwd) {
            if payload.contains(&0) {
                return Err(ProtoError::Nul(kind));
            }
            self.bytes = self.bytes.saturating_add(payload.len());
            if self.bytes > MAX_REQUEST_BYTES {
                return Err(ProtoError::RequestTooBig);
            }
        }
        if matches!(kind, Kind::Arg | Kind::Env) && self.req.argv.len() + self.req.env.len() >= MAX_ITEMS {
            return Err(ProtoError::TooManyItems);
        }
        match kind {
            Kind::Arg => self.req.argv.push(payload),
            Kind::Env => {
                let eq = payload.iter().position(|&b| b == b'=').ok_or(ProtoError::BadEnv)?;
                if eq == 0 {
                    return Err(ProtoError::BadEnv);
                }
                let value = payload[eq + 1..].to_vec();
                let mut key = payload;
                key.truncate(eq);
                self.req.env.push((key, value));
            }
            Kind::Cwd if self.req.cwd.is_some() => return Err(ProtoError::TwoCwds),
            Kind::Cwd => self.req.cwd = Some(payload),
            Kind::Run => {
                let [flags] = payload[..] else {
                    return Err(ProtoError::BadFlags);
                };
                if flags & !KNOWN_FLAGS != 0 {
                    return Err(ProtoError::BadFlags);
                }
                if self.req.argv.first().is_none_or(|a| a.is_empty()) {
                    return Err(ProtoError::EmptyArgv);
                }
                self.req.flags = flags;
                self.bytes = 0;
                return Ok(Some(std::mem::take(&mut self.req)));
            }
            other => return Err(ProtoError::Unexpected(other)),
        }
        Ok(None)
    }
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(u32),
    /// A signal with this number killed it.
    Signal(u32),
}

impl Exit {
    /// The [`Kind::Exit`] payload.
    pub fn encode(self) -> [u8; 5] {
        let (k, v) = match self {
            Exit::Code(c) => (0, c),
            Exit::Signal(s) => (1, s),
        };
        let v = v.to_le_bytes();
        [k, v[0], v[1], v[2], v[3]]
    }

    /// Parses a [`Kind::Exit`] payload.
    pub fn decode(p: &[u8]) -> Result<Exit, ProtoError> {
        match p {
            [k @ (0 | 1), a, b, c, d] => {
                let v = u32::from_le_bytes([*a, *b, *c, *d]);
                Ok(if *k == 0 { Exit::Code(v) } else { Exit::Signal(v) })
            }
            _ => Err(ProtoError::BadExit),
        }
    }

    /// The status a shell would give: the code (low 8 bits), or 128 + the signal number.
    pub fn shell_status(self) -> u8 {
        match self {
            Exit::Code(c) => (c & 0xff) as u8,
            Exit::Signal(s) => 128u32.saturating_add(s).min(255) as u8,
        }
    }
}

#[cfg(test)]
mod tests;
