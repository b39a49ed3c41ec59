//! Fuzz target body: `kvmkit_api::parse_request` on arbitrary method, path
//! and body.
//!
//! Input: `METHOD SP PATH LF BODY`. The bytes up to the first LF are the
//! request line (the whole input when there is none), split at its first
//! space into method and path (path empty when there is none); everything
//! after the LF is the body, passed as bytes. Method and path are decoded
//! lossily (tiny_http only ever hands over ASCII, but `parse_request` must
//! take any `&str`). Seeds: `fuzz/seeds/api_request/`, one request a file.
//!
//! Checks beyond "no panic":
//! * the same input parses to the same result twice;
//! * a refusal is HTTP 400 with a fault message that is not empty, has no
//!   control characters (it goes into log lines) and stays under 8 KiB
//!   whatever the input's size;
//! * an accepted request is one a small independent model of the routes
//!   accepts: GET/PUT/PATCH on the route its action names, GET with no body,
//!   the id in the path equal to the id in the body and made of ASCII
//!   letters, digits, '_', '-', '.' (at most 64), no rate limiter left in
//!   the config kvmkit forwards;
//! * a config that was accepted, serialized back to JSON (as `GET
//!   /vm/config` would) and sent again, parses to the same action.

use kvmkit_api::{parse_request, ParsedRequest, RequestError};
use kvmkit_vmm::rpc::VmmAction;

/// Longest fault message accepted, whatever the input.
pub const MAX_FAULT_MESSAGE: usize = 8 * 1024;

/// What one input did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted: the action's name, or "get_version".
    Accepted(&'static str),
    /// Refused: the `RequestError` variant's name.
    Refused(String),
}

/// Splits an input into method, path and body.
pub fn split(data: &[u8]) -> (String, String, &[u8]) {
    let (line, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let (method, path) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[][..]),
    };
    (
        String::from_utf8_lossy(method).into_owned(),
        String::from_utf8_lossy(path).into_owned(),
        body,
    )
}

/// Runs one input; panics only when `parse_request` or the checks above
/// are wrong.
pub fn run(data: &[u8]) -> Verdict {
    let (method, path, body) = split(data);
    let result = parse_request(&method, &path, body);
    assert_eq!(result, parse_request(&method, &path, body), "not deterministic");
    match result {
        Err(e) => check_refusal(&e),
        Ok(ParsedRequest::GetVersion) => {
            assert_eq!(method, "GET");
            assert_eq!(model_path(&path), Some("/version"), "{path:?}");
            assert!(body.is_empty());
            Verdict::Accepted("get_version")
        }
        Ok(ParsedRequest::Vmm(action)) => {
            check_accepted(&method, &path, body, &action);
            check_round_trip(&method, &path, &action);
            Verdict::Accepted(action.name())
        }
    }
}

fn check_refusal(e: &RequestError) -> Verdict {
    assert_eq!(e.status(), 400);
    let msg = e.to_string();
    assert!(!msg.is_empty());
    assert!(msg.len() <= MAX_FAULT_MESSAGE, "{} bytes: {msg}", msg.len());
    assert!(!msg.chars().any(char::is_control), "control character in {msg:?}");
    let name = format!("{e:?}");
    let name = name.split([' ', '{', '(']).next().unwrap_or_default().to_string();
    Verdict::Refused(name)
}

/// The model's view of a path: absolute form stripped.
fn model_path(path: &str) -> Option<&str> {
    let lower = path.to_ascii_lowercase();
    for scheme in ["http://", "https://"] {
        if lower.starts_with(scheme) {
            let rest = &path[scheme.len()..];
            return Some(rest.find('/').map_or("/", |i| &rest[i..]));
        }
    }
    Some(path)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// The id after `prefix` in `path`, checked to be a valid single segment.
fn path_id<'a>(path: &'a str, prefix: &str) -> &'a str {
    let id = path
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{path:?} accepted for a {prefix} route"));
    assert!(valid_id(id), "{id:?} accepted as a path id");
    id
}

fn check_accepted(method: &str, path: &str, body: &[u8], action: &VmmAction) {
    let path = model_path(path).unwrap_or_default();
    let blank = body.iter().all(u8::is_ascii_whitespace);
    let expect = |m: &str, p: &str| {
        assert_eq!((method, path), (m, p), "{} accepted", action.name());
    };
    match action {
        VmmAction::GetInstanceInfo => expect("GET", "/"),
        VmmAction::GetVmConfig => expect("GET", "/vm/config"),
        VmmAction::GetMachineConfig => expect("GET", "/machine-config"),
        VmmAction::GetMetrics => expect("GET", "/metrics"),
        VmmAction::PutMachineConfig(_) => expect("PUT", "/machine-config"),
        VmmAction::PatchMachineConfig(_) => expect("PATCH", "/machine-config"),
        VmmAction::PutBootSource(_) => expect("PUT", "/boot-source"),
        VmmAction::PutEntropy(e) => {
            expect("PUT", "/entropy");
            assert_eq!(e.rate_limiter, None);
        }
        VmmAction::PutVsock(_) => expect("PUT", "/vsock"),
        VmmAction::PutLogger(_) => expect("PUT", "/logger"),
        VmmAction::PutMetrics(_) => expect("PUT", "/metrics"),
        VmmAction::InstanceStart | VmmAction::SendCtrlAltDel | VmmAction::FlushMetrics => expect("PUT", "/actions"),
        VmmAction::Pause | VmmAction::Resume => expect("PATCH", "/vm"),
        VmmAction::Stop => expect("PUT", "/kvmkit/stop"),
        VmmAction::CreateSnapshot(p) => {
            expect("PUT", "/snapshot/create");
            assert!(!p.snapshot_path.as_os_str().is_empty() && !p.mem_file_path.as_os_str().is_empty());
        }
        VmmAction::LoadSnapshot(p) => {
            expect("PUT", "/snapshot/load");
            assert!(!p.snapshot_path.as_os_str().is_empty() && !p.mem_file_path.as_os_str().is_empty());
        }
        VmmAction::PutDrive(d) => {
            assert_eq!(method, "PUT");
            assert_eq!(path_id(path, "/drives/"), d.drive_id);
            assert_eq!(d.rate_limiter, None);
        }
        VmmAction::PatchDrive(d) => {
            assert_eq!(method, "PATCH");
            assert_eq!(path_id(path, "/drives/"), d.drive_id);
            assert_eq!(d.rate_limiter, None);
        }
        VmmAction::PutNetworkInterface(n) => {
            assert_eq!(method, "PUT");
            assert_eq!(path_id(path, "/network-interfaces/"), n.iface_id);
            assert_eq!((&n.rx_rate_limiter, &n.tx_rate_limiter), (&None, &None));
        }
    }
    match method {
        "GET" => assert!(body.is_empty(), "GET with a body accepted"),
        _ if matches!(action, VmmAction::Stop) => {}
        _ => assert!(!blank, "{method} {path} accepted without a body"),
    }
}

/// A config sent back as its JSON parses to the same action.
fn check_round_trip(method: &str, path: &str, action: &VmmAction) {
    let json = match action {
        VmmAction::PutMachineConfig(c) => serde_json::to_vec(c),
        VmmAction::PatchMachineConfig(c) => serde_json::to_vec(c),
        VmmAction::PutBootSource(c) => serde_json::to_vec(c),
        VmmAction::PutDrive(c) => serde_json::to_vec(c),
        VmmAction::PatchDrive(c) => serde_json::to_vec(c),
        VmmAction::PutNetworkInterface(c) => serde_json::to_vec(c),
        VmmAction::PutEntropy(c) => serde_json::to_vec(c),
        VmmAction::PutVsock(c) => serde_json::to_vec(c),
        VmmAction::PutLogger(c) => serde_json::to_vec(c),
        VmmAction::PutMetrics(c) => serde_json::to_vec(c),
        _ => return,
    };
    let json = json.expect("a parsed config serializes");
    let again = parse_request(method, path, &json);
    assert_eq!(
        again,
        Ok(ParsedRequest::Vmm(action.clone())),
        "round trip through {}",
        String::from_utf8_lossy(&json)
    );
}
