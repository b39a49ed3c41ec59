//! The server on a real unix socket, against a fake VMM thread, spoken to by
//! a small raw HTTP/1.1 client (so that what is checked is the bytes a
//! Firecracker client sees).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kvmkit_vmm::lifecycle::VmState;
use kvmkit_vmm::rpc::{action_channel, ActionError, ActionReceiver, InstanceInfo, VmmAction, VmmData};
use kvmkit_vmm::vmm_config::VmResources;

use super::*;

/// A socket path of its own for each test.
fn sock_path(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("kvmkit-api-{}-{n}-{name}.sock", std::process::id()))
}

/// A VMM thread that keeps resources like the real one before boot.
struct FakeVmm {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<VmmAction>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeVmm {
    fn start(rx: ActionReceiver) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let thread = thread::spawn(move || {
            let mut res = VmResources::default();
            while !s.load(Ordering::SeqCst) {
                for r in rx.drain() {
                    v.lock().unwrap().push(r.action.clone());
                    let _ = r.reply.send(answer(&mut res, r.action));
                }
                thread::sleep(Duration::from_millis(1));
            }
        });
        Self {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<VmmAction> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeVmm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(res: &mut VmResources, action: VmmAction) -> Result<VmmData, ActionError> {
    let empty = |r: Result<(), kvmkit_vmm::vmm_config::ConfigError>| r.map(|()| VmmData::Empty).map_err(Into::into);
    match action {
        VmmAction::GetInstanceInfo => Ok(VmmData::InstanceInfo(InstanceInfo {
            app_name: "kvmkit".into(),
            id: "test-vm".into(),
            state: VmState::NotStarted,
            vmm_version: "0.1.0".into(),
        })),
        VmmAction::GetVmConfig => Ok(VmmData::VmConfig(Box::new(res.clone()))),
        VmmAction::GetMachineConfig => Ok(VmmData::MachineConfig(res.machine_config.clone())),
        VmmAction::PutMachineConfig(c) => empty(res.set_machine_config(c)),
        VmmAction::PatchMachineConfig(u) => empty(res.update_machine_config(&u)),
        VmmAction::PutBootSource(b) => empty(res.set_boot_source(b)),
        VmmAction::PutDrive(d) => empty(res.put_drive(d)),
        VmmAction::PutNetworkInterface(n) => empty(res.put_network_interface(n)),
        VmmAction::PutEntropy(e) => empty(res.set_entropy(e)),
        VmmAction::PutVsock(v) => empty(res.set_vsock(v)),
        VmmAction::InstanceStart => empty(res.check_bootable()),
        VmmAction::Pause | VmmAction::Resume | VmmAction::PatchDrive(_) => Err(ActionError::NotAllowedBeforeBoot),
        VmmAction::GetMetrics => Ok(VmmData::MetricsText(
            "# TYPE kvmkit_test counter\nkvmkit_test 1\n".into(),
        )),
        _ => Ok(VmmData::Empty),
    }
}

/// A server on a fresh socket with a fake VMM behind it.
struct Fixture {
    path: PathBuf,
    api: Option<ApiHandle>,
    vmm: FakeVmm,
}

impl Fixture {
    fn new(name: &str) -> Self {
        Self::with(name, |_| {})
    }

    fn with(name: &str, tweak: impl FnOnce(&mut ServerInfo)) -> Self {
        let path = sock_path(name);
        let (tx, rx) = action_channel().unwrap();
        let mut info = ServerInfo::new("test-vm");
        info.action_timeout = Duration::from_secs(5);
        tweak(&mut info);
        let api = ApiServer::spawn(&path, tx, info).unwrap();
        Self {
            path,
            api: Some(api),
            vmm: FakeVmm::start(rx),
        }
    }

    fn connect(&self) -> Conn {
        Conn::new(&self.path)
    }

    fn call(&self, method: &str, target: &str, body: &str) -> Reply {
        self.connect().call(method, target, body)
    }

    fn metrics(&self) -> ApiMetricsSnapshot {
        self.api.as_ref().unwrap().metrics().snapshot()
    }
}

use crate::ApiMetricsSnapshot;

/// One response as the client read it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        assert_eq!(self.header("Content-Type"), Some("application/json"), "{self:?}");
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    fn fault(&self) -> String {
        assert_eq!(self.status, 400, "{self:?}");
        let v = self.json();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 1, "{v}");
        obj["fault_message"].as_str().unwrap().to_string()
    }

    fn assert_204(&self) {
        assert_eq!(self.status, 204, "{self:?} {}", String::from_utf8_lossy(&self.body));
        assert!(self.body.is_empty());
        assert_eq!(self.header("Content-Length"), None, "{self:?}");
        assert_eq!(self.header("Content-Type"), None, "{self:?}");
    }
}

/// A keep-alive connection speaking raw HTTP/1.1.
struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    fn new(path: &std::path::Path) -> Self {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    fn send(&mut self, raw: &[u8]) {
        self.writer.write_all(raw).unwrap();
    }

    fn request_bytes(method: &str, target: &str, body: &str) -> Vec<u8> {
        let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
        if !body.is_empty() {
            raw += &format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len());
        }
        raw += "\r\n";
        raw += body;
        raw.into_bytes()
    }

    fn call(&mut self, method: &str, target: &str, body: &str) -> Reply {
        self.send(&Self::request_bytes(method, target, body));
        self.read()
    }

    fn read(&mut self) -> Reply {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 "), "status line {line:?}");
        let status = line[9..12].parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).unwrap();
            let h = h.trim_end_matches("\r\n");
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':').unwrap();
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
        };
        if status == 204 || status < 200 {
            return reply;
        }
        let len: usize = reply
            .header("Content-Length")
            .unwrap_or_else(|| panic!("no Content-Length: {reply:?}"))
            .parse()
            .unwrap();
        reply.body = vec![0; len];
        self.reader.read_exact(&mut reply.body).unwrap();
        reply
    }
}

const BOOT_SOURCE: &str = r#"{"kernel_image_path": "/boot/vmlinux", "boot_args": "console=ttyS0"}"#;

#[test]
fn success_without_data_is_204_with_an_empty_body() {
    let f = Fixture::new("204");
    let mut c = f.connect();
    c.call("PUT", "/boot-source", BOOT_SOURCE).assert_204();
    // The same connection goes on: nothing stray was sent after the 204.
    c.call("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#)
        .assert_204();
    let r = c.call("GET", "/", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Server"), Some("kvmkit API"));
    assert_eq!(
        f.vmm.seen()[..2],
        [
            VmmAction::PutBootSource(kvmkit_vmm::vmm_config::BootSourceConfig {
                kernel_image_path: "/boot/vmlinux".into(),
                boot_args: Some("console=ttyS0".into()),
                initrd_path: None,
            }),
            VmmAction::InstanceStart
        ]
    );
}

#[test]
fn data_is_200_with_json() {
    let f = Fixture::new("200");
    let r = f.call("GET", "/", "");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({"app_name": "kvmkit", "id": "test-vm", "state": "Not started", "vmm_version": "0.1.0"})
    );
    let r = f.call("GET", "/machine-config", "");
    assert_eq!(r.status, 200);
    let mc = r.json();
    assert_eq!(
        (mc["vcpu_count"].as_u64(), mc["mem_size_mib"].as_u64()),
        (Some(1), Some(128))
    );

    f.call("PUT", "/boot-source", BOOT_SOURCE).assert_204();
    let cfg = f.call("GET", "/vm/config", "").json();
    assert_eq!(cfg["boot-source"]["kernel_image_path"], "/boot/vmlinux");
    assert_eq!(cfg["machine-config"]["vcpu_count"], 1);
    assert!(
        cfg.get("network-interfaces").is_some() && cfg.get("drives").is_some(),
        "{cfg}"
    );

    let r = f.call("GET", "/metrics", "");
    assert_eq!(r.status, 200);
    assert!(r.header("Content-Type").unwrap().starts_with("text/plain"));
    assert!(String::from_utf8_lossy(&r.body).contains("kvmkit_test 1"));
}

#[test]
fn version_is_answered_without_the_vmm() {
    let f = Fixture::new("version");
    let r = f.call("GET", "/version", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"firecracker_version": "1.16.0"}));
    assert!(f.vmm.seen().is_empty());
}

#[test]
fn refusals_are_400_with_a_fault_message() {
    let f = Fixture::new("400");
    let mut c = f.connect();
    // Parse errors never reach the VMM.
    let m = c.call("PUT", "/boot-source", r#"{"kernel": "/k"}"#).fault();
    assert!(m.contains("unknown field `kernel`"), "{m}");
    let m = c.call("PUT", "/vsock", r#"{"guest_cid": 3}"#).fault();
    assert!(m.contains("missing field `uds_path`"), "{m}");
    let m = c.call("DELETE", "/boot-source", "").fault();
    assert_eq!(
        m,
        "Invalid request method and/or path: DELETE /boot-source. /boot-source takes PUT."
    );
    let m = c.call("GET", "/machine-config?x=1", "").fault();
    assert!(m.contains("query strings"), "{m}");
    let m = c
        .call("PUT", "/drives/a", r#"{"drive_id": "b", "is_root_device": true}"#)
        .fault();
    assert!(m.contains("[a] does not match the id from the body [b]"), "{m}");
    let m = c.call("PUT", "/boot-source", "").fault();
    assert!(m.contains("needs a JSON body"), "{m}");
    assert!(f.vmm.seen().is_empty());
    // The VMM's refusals, as its errors word them.
    let m = c
        .call("PUT", "/machine-config", r#"{"vcpu_count": 0, "mem_size_mib": 128}"#)
        .fault();
    assert!(m.starts_with("vcpu_count: 0 is out of range"), "{m}");
    let m = c
        .call("PUT", "/vsock", r#"{"guest_cid": 2, "uds_path": "/v.sock"}"#)
        .fault();
    assert!(m.starts_with("guest_cid: 2 is reserved"), "{m}");
    let m = c.call("PATCH", "/vm", r#"{"state": "Paused"}"#).fault();
    assert_eq!(
        m,
        "the requested operation is not supported before starting the microVM"
    );
    let s = f.metrics();
    assert_eq!(
        (s.requests, s.status_4xx, s.parse_errors, s.action_errors),
        (9, 9, 6, 3)
    );
}

#[test]
fn a_gone_vmm_is_a_fault_not_a_hang() {
    let path = sock_path("gone");
    let (tx, rx) = action_channel().unwrap();
    drop(rx);
    let api = ApiServer::spawn(&path, tx, ServerInfo::new("gone")).unwrap();
    let m = Conn::new(&path).call("GET", "/", "").fault();
    assert_eq!(m, "the VMM is shutting down");
    api.shutdown();
}

#[test]
fn a_vmm_that_does_not_answer_times_out() {
    let path = sock_path("slow");
    let (tx, _rx) = action_channel().unwrap();
    let mut info = ServerInfo::new("slow");
    info.action_timeout = Duration::from_millis(200);
    let api = ApiServer::spawn(&path, tx, info).unwrap();
    let m = Conn::new(&path).call("GET", "/", "").fault();
    assert!(m.contains("did not answer within 0.2 s"), "{m}");
    api.shutdown();
    // Shutdown does not wait long for a request stuck on the VMM either.
    let (tx, _rx) = action_channel().unwrap();
    let api = ApiServer::spawn(&path, tx, ServerInfo::new("stuck")).unwrap();
    let mut c = Conn::new(&path);
    c.send(&Conn::request_bytes("GET", "/", ""));
    thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    api.shutdown();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn oversized_bodies_are_refused() {
    let f = Fixture::new("big");
    let mut c = f.connect();
    // Exactly the limit is read (and then is not JSON).
    let body = "x".repeat(DEFAULT_MAX_BODY_BYTES);
    let m = c.call("PUT", "/boot-source", &body).fault();
    assert!(m.contains("not valid JSON"), "{m}");
    // One byte over is refused for its declared size.
    let body = "x".repeat(DEFAULT_MAX_BODY_BYTES + 1);
    let m = f.call("PUT", "/boot-source", &body).fault();
    assert_eq!(
        m,
        "Request payload with size 51201 is larger than the limit of 51200 allowed by server."
    );
    // Chunked: no size declared, cut at limit + 1.
    let mut c = f.connect();
    let mut raw = b"PUT /boot-source HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..60 {
        raw.extend_from_slice(b"400\r\n");
        raw.extend_from_slice(&[b' '; 0x400]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    c.send(&raw);
    let m = c.read().fault();
    assert_eq!(
        m,
        "Request payload is larger than the limit of 51200 allowed by server."
    );
    // A small chunked body is fine.
    let mut c = f.connect();
    let body = BOOT_SOURCE.as_bytes();
    let mut raw = b"PUT /boot-source HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    raw.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
    raw.extend_from_slice(body);
    raw.extend_from_slice(b"\r\n0\r\n\r\n");
    c.send(&raw);
    c.read().assert_204();
    assert_eq!(f.metrics().bodies_too_large, 2);
}

#[test]
fn a_huge_declared_length_does_not_take_the_server_down() {
    let f = Fixture::new("huge");
    for len in ["1000000000000000", "18446744073709551615", "9223372036854775807"] {
        let mut c = f.connect();
        c.send(format!("PUT /boot-source HTTP/1.1\r\nContent-Length: {len}\r\n\r\n{{\"kern").as_bytes());
        let r = c.read();
        assert_eq!(r.status, 400, "{len}: {r:?}");
        // The client leaves mid-body; tiny_http drains nothing more.
        drop(c);
    }
    // Still serving.
    assert_eq!(f.call("GET", "/", "").status, 200);
}

#[test]
fn a_smaller_limit_applies_to_buffered_bodies_too() {
    let f = Fixture::with("limit", |i| i.max_body_bytes = 16);
    let m = f.call("PUT", "/boot-source", BOOT_SOURCE).fault();
    assert!(m.contains("larger than the limit of 16"), "{m}");
    f.call("PUT", "/kvmkit/stop", "{}").assert_204();
}

#[test]
fn a_half_sent_request_blocks_no_other_client() {
    let f = Fixture::new("half");
    // A: a body tiny_http does not buffer (over 1,024 bytes), half sent.
    let padded = format!("{BOOT_SOURCE:<5000}");
    let mut a = f.connect();
    let head = format!("PUT /boot-source HTTP/1.1\r\nContent-Length: {}\r\n\r\n", padded.len());
    a.send(head.as_bytes());
    a.send(&padded.as_bytes()[..100]);
    // B: a body tiny_http buffers itself, half sent.
    let mut b = f.connect();
    b.send(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 500\r\n\r\n{\"kernel");
    // C: only half a request line.
    let mut c = f.connect();
    c.send(b"GET /machine-con");
    thread::sleep(Duration::from_millis(50));
    // D is answered promptly, several times over.
    for _ in 0..5 {
        let t = Instant::now();
        let r = f.call("GET", "/", "");
        assert_eq!(r.status, 200);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    // A finishes and gets its answer.
    a.send(&padded.as_bytes()[100..]);
    a.read().assert_204();
    c.send(b"fig HTTP/1.1\r\n\r\n");
    assert_eq!(c.read().status, 200);
    drop(b);
}

#[test]
fn fifty_concurrent_clients() {
    let f = Arc::new(Fixture::new("fifty"));
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let f = f.clone();
            thread::spawn(move || {
                let mut c = f.connect();
                assert_eq!(c.call("GET", "/", "").status, 200);
                let patch = format!(r#"{{"vcpu_count": {}}}"#, i % 32 + 1);
                c.call("PATCH", "/machine-config", &patch).assert_204();
                assert_eq!(c.call("GET", "/machine-config", "").status, 200);
                assert!(c.call("PUT", "/balloon", "{}").fault().contains("balloon"));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = f.metrics();
    assert_eq!(
        (s.requests, s.status_2xx, s.status_4xx, s.status_5xx),
        (200, 150, 50, 0)
    );
    let patches = f
        .vmm
        .seen()
        .iter()
        .filter(|a| matches!(a, VmmAction::PatchMachineConfig(_)))
        .count();
    assert_eq!(patches, 50);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let f = Fixture::new("pipe");
    let mut c = f.connect();
    let mut raw = Conn::request_bytes("PUT", "/boot-source", BOOT_SOURCE);
    raw.extend(Conn::request_bytes("GET", "/version", ""));
    raw.extend(Conn::request_bytes("GET", "/nope", ""));
    raw.extend(Conn::request_bytes("GET", "/vm/config", ""));
    c.send(&raw);
    c.read().assert_204();
    assert_eq!(c.read().json()["firecracker_version"], "1.16.0");
    assert!(c.read().fault().contains("/nope"));
    assert_eq!(c.read().json()["boot-source"]["kernel_image_path"], "/boot/vmlinux");
}

#[test]
fn expect_100_continue_is_honoured() {
    let f = Fixture::new("expect");
    let mut c = f.connect();
    let head = format!(
        "PUT /boot-source HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        BOOT_SOURCE.len()
    );
    c.send(head.as_bytes());
    assert_eq!(c.read().status, 100);
    c.send(BOOT_SOURCE.as_bytes());
    c.read().assert_204();
}

#[test]
fn upgrades_are_refused() {
    let f = Fixture::new("upgrade");
    let mut c = f.connect();
    c.send(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert!(c.read().fault().contains("upgrades are not supported"));
}

#[test]
fn a_flood_of_bad_requests_is_logged_within_bounds() {
    let f = Fixture::new("flood");
    let mut c = f.connect();
    let t = Instant::now();
    for _ in 0..300 {
        c.call("GET", "/nope", "").fault();
    }
    let s = f.metrics();
    let windows = t.elapsed().as_secs() + 1;
    let logged = s.requests - s.log_lines_suppressed;
    assert!(
        logged <= u64::from(LOG_LINES_PER_SECOND) * windows,
        "{logged} lines in {windows} s"
    );
    assert!(s.log_lines_suppressed > 0);
    let mut text = String::new();
    f.api.as_ref().unwrap().metrics().write_prometheus(&mut text);
    assert!(text.contains("kvmkit_api_responses_total{class=\"4xx\"} 300"), "{text}");
    assert!(text.contains("kvmkit_api_requests_total 300"), "{text}");
}

#[test]
fn an_existing_path_is_refused() {
    let path = sock_path("exists");
    std::fs::write(&path, b"").unwrap();
    let (tx, _rx) = action_channel().unwrap();
    let e = ApiServer::spawn(&path, tx, ServerInfo::default()).unwrap_err();
    assert!(matches!(e, ApiError::SocketExists(_)));
    assert_eq!(
        e.to_string(),
        format!(
            "the API socket path {} already exists; remove it or choose another (Firecracker clients delete it before starting)",
            path.display()
        )
    );
    // Left alone.
    assert!(path.exists());
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn an_uncreatable_path_is_refused() {
    let (tx, _rx) = action_channel().unwrap();
    let path = std::env::temp_dir().join("kvmkit-no-such-dir-4242/api.sock");
    let e = ApiServer::spawn(&path, tx.clone(), ServerInfo::default()).unwrap_err();
    assert!(matches!(e, ApiError::Bind { .. }), "{e:?}");
    let m = e.to_string();
    assert!(
        m.starts_with(&format!("cannot create the API socket at {}: ", path.display())),
        "{m}"
    );
    // Longer than a unix socket address holds.
    let path = std::env::temp_dir().join("x".repeat(200));
    let e = ApiServer::spawn(&path, tx, ServerInfo::default()).unwrap_err();
    assert!(matches!(e, ApiError::Bind { .. }), "{e:?}");
}

#[test]
fn shutdown_and_drop_remove_the_socket() {
    let (tx, _rx) = action_channel().unwrap();
    let path = sock_path("down");
    let api = ApiServer::spawn(&path, tx.clone(), ServerInfo::default()).unwrap();
    assert_eq!(api.socket_path(), path);
    assert!(path.exists());
    api.shutdown();
    assert!(!path.exists());
    assert!(UnixStream::connect(&path).is_err());

    let server = ApiServer::bind(&path).unwrap();
    assert!(path.exists());
    drop(server);
    assert!(!path.exists());

    let api = ApiServer::spawn(&path, tx, ServerInfo::default()).unwrap();
    // An idle keep-alive client does not hold shutdown up.
    let _idle = Conn::new(&path);
    let t = Instant::now();
    drop(api);
    assert!(!path.exists());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn read_body_never_takes_more_than_the_limit_plus_one() {
    let mut src = std::io::repeat(b'a');
    assert_eq!(
        read_body(&mut src, None, 10),
        Err(BodyError::TooLarge {
            declared: None,
            limit: 10
        })
    );
    let mut short = &b"abc"[..];
    assert_eq!(
        read_body(&mut short, Some(5), 10),
        Err(BodyError::Truncated { got: 3, declared: 5 })
    );
    let mut exact = &b"abcde"[..];
    assert_eq!(read_body(&mut exact, Some(5), 10), Ok(b"abcde".to_vec()));
    let mut never_read = std::io::repeat(b'a');
    assert_eq!(
        read_body(&mut never_read, Some(usize::MAX), 10),
        Err(BodyError::TooLarge {
            declared: Some(usize::MAX),
            limit: 10
        })
    );
}

#[test]
fn huge_paths_get_a_400_and_the_server_goes_on() {
    let f = Fixture::new("hugepath");
    // Within tiny_http's 64 KiB request head: kvmkit's own message.
    let id = "a".repeat(60_000);
    let m = f.call("PUT", &format!("/drives/{id}"), "{}").fault();
    assert!(m.contains("60000 bytes long; at most 64") && m.len() < 300, "{m}");
    // Past it: tiny_http's bare 400, and the connection is closed.
    let mut c = f.connect();
    c.send(format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(70_000)).as_bytes());
    let r = c.read();
    assert_eq!(r.status, 400, "{r:?}");
    let mut rest = Vec::new();
    assert_eq!(c.reader.read_to_end(&mut rest).unwrap_or(0), 0);
    assert_eq!(f.call("GET", "/", "").status, 200);
}
