//! The embedded agent, run on the host with `--unix PATH` (the same service as on vsock):
//! the whole protocol against the real binary.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvmkit_agent_proto::{read_frame, write_frame, Exit, Kind, Request, FLAG_STDIN};

use super::AGENT;

#[test]
fn is_a_static_x86_64_executable() {
    assert_eq!(&AGENT[..4], b"\x7fELF");
    assert_eq!(AGENT[4], 2, "ELFCLASS64");
    assert_eq!(u16::from_le_bytes([AGENT[0x12], AGENT[0x13]]), 62, "EM_X86_64");
    // No PT_INTERP: nothing to load it with in a busybox initramfs.
    let phoff = u64::from_le_bytes(AGENT[0x20..0x28].try_into().unwrap()) as usize;
    let (size, n) = (
        u16::from_le_bytes([AGENT[0x36], AGENT[0x37]]) as usize,
        u16::from_le_bytes([AGENT[0x38], AGENT[0x39]]) as usize,
    );
    for i in 0..n {
        let p = phoff + i * size;
        let kind = u32::from_le_bytes(AGENT[p..p + 4].try_into().unwrap());
        assert_ne!(kind, 3, "PT_INTERP in the agent");
    }
}

struct Agent {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn agent(name: &str) -> Agent {
    let dir = std::env::temp_dir().join(format!("kvmkit-agent-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("kvmkit-agent");
    std::fs::write(&bin, AGENT).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.join("agent.sock");
    // Another test's fork may hold the just-written file open for writing
    // until its exec (ETXTBSY, "Text file busy"): wait for that to pass.
    let mut tries = 0;
    let child = loop {
        match Command::new(&bin)
            .arg("--unix")
            .arg(&sock)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Err(e) if e.raw_os_error() == Some(26) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            r => break r.unwrap(),
        }
    };
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "the agent did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    Agent { child, dir, sock }
}

/// A connection to the agent at `sock`. The socket file appears at `bind`, a moment
/// before the agent's `listen`: a connection refused in between is tried again (a CI run
/// under load once hit it), for at most 10 s.
fn connect(sock: &Path) -> UnixStream {
    let start = Instant::now();
    loop {
        match UnixStream::connect(sock) {
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused && start.elapsed() < Duration::from_secs(10) =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r.unwrap(),
        }
    }
}

/// Runs `req` (with `stdin` when given); returns stdout, stderr and the exit.
fn exec(sock: &Path, req: &Request, stdin: Option<&[u8]>) -> (Vec<u8>, Vec<u8>, Exit) {
    let mut s = connect(sock);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&req.encode().unwrap()).unwrap();
    if let Some(data) = stdin {
        for chunk in data.chunks(1000) {
            write_frame(&mut s, Kind::Stdin, chunk).unwrap();
        }
        write_frame(&mut s, Kind::Stdin, b"").unwrap();
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        let f = read_frame(&mut s).unwrap().expect("the connection ended before Exit");
        match f.kind {
            Kind::Stdout => out.extend_from_slice(&f.payload),
            Kind::Stderr => err.extend_from_slice(&f.payload),
            Kind::Exit => return (out, err, Exit::decode(&f.payload).unwrap()),
            k => panic!("unexpected {k:?}: {}", String::from_utf8_lossy(&f.payload)),
        }
    }
}

#[test]
fn runs_commands_and_streams_output_and_status() {
    let a = agent("run");
    let (out, err, exit) = exec(
        &a.sock,
        &Request::new(["sh", "-c", "echo out; echo err >&2; exit 3"]),
        None,
    );
    assert_eq!(
        (&out[..], &err[..], exit),
        (&b"out\n"[..], &b"err\n"[..], Exit::Code(3))
    );

    let mut req = Request::new(["sh", "-c", "echo $KVMKIT_T; pwd"]);
    req.env.push((b"KVMKIT_T".to_vec(), b"a b".to_vec()));
    req.cwd = Some(b"/tmp".to_vec());
    let (out, _, exit) = exec(&a.sock, &req, None);
    assert_eq!(
        (String::from_utf8_lossy(&out).as_ref(), exit),
        ("a b\n/tmp\n", Exit::Code(0))
    );

    let (_, err, exit) = exec(&a.sock, &Request::new(["no-such-command-kvmkit"]), None);
    assert_eq!(exit, Exit::Code(127));
    assert!(String::from_utf8_lossy(&err).contains("no-such-command-kvmkit"));

    let (_, _, exit) = exec(&a.sock, &Request::new(["sh", "-c", "kill -9 $$"]), None);
    assert_eq!((exit, exit.shell_status()), (Exit::Signal(9), 137));

    // stdin: 1 MiB through `sha256sum`-free check: wc -c counts it.
    let mut req = Request::new(["wc", "-c"]);
    req.flags = FLAG_STDIN;
    let (out, _, exit) = exec(&a.sock, &req, Some(&vec![b'z'; 1 << 20]));
    assert_eq!((String::from_utf8_lossy(&out).trim(), exit), ("1048576", Exit::Code(0)));

    // A large output arrives whole and in order.
    let (out, _, exit) = exec(&a.sock, &Request::new(["head", "-c", "3000000", "/dev/zero"]), None);
    assert_eq!((out.len(), exit), (3_000_000, Exit::Code(0)));
}

#[test]
fn serves_connections_concurrently() {
    let a = agent("many");
    // One connection blocks on stdin that never comes; the others still run.
    let mut blocked = connect(&a.sock);
    let mut req = Request::new(["cat"]);
    req.flags = FLAG_STDIN;
    blocked.write_all(&req.encode().unwrap()).unwrap();
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let sock = a.sock.clone();
            std::thread::spawn(move || {
                let (out, _, exit) = exec(&sock, &Request::new(["echo".to_string(), format!("conn-{i}")]), None);
                assert_eq!((out, exit), (format!("conn-{i}\n").into_bytes(), Exit::Code(0)));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    write_frame(&mut blocked, Kind::Stdin, b"late\n").unwrap();
    write_frame(&mut blocked, Kind::Stdin, b"").unwrap();
    let f = read_frame(&mut blocked).unwrap().unwrap();
    assert_eq!((f.kind, &f.payload[..]), (Kind::Stdout, &b"late\n"[..]));
}

#[test]
fn refuses_bad_requests_with_an_error_frame() {
    let a = agent("bad");
    for bad in [
        &b"Z\0\0\0\0"[..],
        &b"o\xff\xff\xff\xff"[..],
        &b"R\x01\0\0\0\0"[..],
        &b"E\x04\0\0\0NOEQ"[..],
    ] {
        let mut s = connect(&a.sock);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bad).unwrap();
        let f = read_frame(&mut s).unwrap().unwrap();
        assert_eq!(f.kind, Kind::Error, "{bad:?}");
        assert!(read_frame(&mut s).unwrap().is_none(), "closed after the error");
    }
    // The agent still serves.
    let (out, _, _) = exec(&a.sock, &Request::new(["echo", "ok"]), None);
    assert_eq!(out, b"ok\n");
}
