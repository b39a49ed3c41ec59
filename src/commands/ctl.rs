//! `kvmkit ctl`: a small client for people and scripts. One HTTP/1.1
//! request over the API socket per command; the answer is printed (JSON
//! pretty-printed; `request`: the body as it came), a refusal's
//! `fault_message` goes to stderr with exit status 1. `request METHOD PATH
//! [BODY]` sends any request, so a shell without curl drives the whole API.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cli::{CtlArgs, CtlCommand, SnapshotTypeArg};

/// Largest answer read (a VM config with many devices is a few KiB).
const MAX_RESPONSE: usize = 1 << 20;

/// An HTTP answer.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// Sends one request over the unix socket at `sock` and reads the answer
/// (30 s at most).
pub fn request(sock: &Path, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<Response> {
    request_within(sock, method, path, body, Duration::from_secs(30))
}

/// [`request`] with a time limit for each read and write.
pub fn request_within(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Response> {
    let mut s = UnixStream::connect(sock).with_context(|| {
        format!(
            "cannot connect to the API socket {} (is the VMM running with --api-sock?)",
            sock.display()
        )
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if !body.is_empty() {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).context("cannot send the request")?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .context("cannot read the answer")?;
    parse_response(&raw)
}

/// Parses a complete HTTP/1.1 response (status line, headers, body).
pub fn parse_response(raw: &[u8]) -> anyhow::Result<Response> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = resp.parse(raw).context("malformed HTTP answer")? else {
        bail!("the VMM closed the connection before a full answer");
    };
    let status = resp.code.context("HTTP answer without a status")?;
    let len = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok());
    let rest = &raw[head_len..];
    let body = match len {
        Some(n) if n <= rest.len() => rest[..n].to_vec(),
        Some(n) => bail!("answer body cut short ({} of {n} bytes)", rest.len()),
        None => rest.to_vec(),
    };
    Ok(Response { status, body })
}

/// Longest request path `ctl request` sends.
const MAX_PATH: usize = 4096;

/// The request a `kvmkit ctl` command sends: method, path and body.
fn route(cmd: &CtlCommand) -> anyhow::Result<(String, &str, Option<String>)> {
    let fixed = |m: &str, p: &'static str, b: Option<&'static str>| Ok((m.to_string(), p, b.map(str::to_owned)));
    match cmd {
        CtlCommand::Info => fixed("GET", "/", None),
        CtlCommand::Config => fixed("GET", "/vm/config", None),
        CtlCommand::Pause => fixed("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)),
        CtlCommand::Resume => fixed("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)),
        CtlCommand::CtrlAltDel => fixed("PUT", "/actions", Some(r#"{"action_type": "SendCtrlAltDel"}"#)),
        CtlCommand::FlushMetrics => fixed("PUT", "/actions", Some(r#"{"action_type": "FlushMetrics"}"#)),
        CtlCommand::Stop => fixed("PUT", "/kvmkit/stop", None),
        CtlCommand::Snapshot { state, mem, kind } => {
            let body = serde_json::json!({
                "snapshot_type": match kind {
                    SnapshotTypeArg::Full => "Full",
                    SnapshotTypeArg::Diff => "Diff",
                },
                "snapshot_path": path_text(state)?,
                "mem_file_path": path_text(mem)?,
            });
            Ok(("PUT".into(), "/snapshot/create", Some(body.to_string())))
        }
        CtlCommand::Load {
            state,
            mem,
            resume,
            track_dirty_pages,
        } => {
            let mut body = serde_json::json!({
                "snapshot_path": path_text(state)?,
                "mem_backend": {"backend_type": "File", "backend_path": path_text(mem)?},
                "resume_vm": resume,
            });
            // Only when asked: Firecracker refuses fields it does not know
            // in older versions, and the default is off anyway.
            if *track_dirty_pages {
                body["track_dirty_pages"] = serde_json::Value::Bool(true);
            }
            Ok(("PUT".into(), "/snapshot/load", Some(body.to_string())))
        }
        CtlCommand::Request { method, path, body } => {
            // The method and path go into the request line as they are:
            // nothing that could end it or the header early.
            let method = method.to_ascii_uppercase();
            if method.is_empty() || method.len() > 16 || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                bail!("method {method:?}: give an HTTP method such as GET, PUT or PATCH");
            }
            if !path.starts_with('/') || path.len() > MAX_PATH || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                bail!("path {path:?}: give a path starting with / and without spaces, e.g. /machine-config");
            }
            Ok((method, path.as_str(), body.clone()))
        }
    }
}

/// A path for a JSON body: absolute (the VMM may run elsewhere) and UTF-8.
fn path_text(p: &std::path::Path) -> anyhow::Result<String> {
    let abs = std::path::absolute(p).with_context(|| format!("{}: cannot make it absolute", p.display()))?;
    abs.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{}: the API takes UTF-8 paths only", p.display()))
}

/// Runs `kvmkit ctl`.
pub fn run(args: &CtlArgs) -> anyhow::Result<u8> {
    let (method, path, body) = route(&args.command)?;
    let Some(sock) = &args.api_sock else {
        bail!("give --api-sock PATH (the socket of kvmkit run --api-sock)");
    };
    let r = request(sock, &method, path, body.as_deref())?;
    let raw = matches!(args.command, CtlCommand::Request { .. });
    let (code, out, err) = outcome(&method, path, &r, raw)?;
    if let Some(out) = out {
        print!("{out}");
    }
    if let Some(err) = err {
        eprintln!("{err}");
    }
    Ok(code)
}

/// What `ctl` makes of an answer: exit status, text for stdout (JSON
/// pretty-printed unless `raw`), and the line for stderr on a refusal.
fn outcome(method: &str, path: &str, r: &Response, raw: bool) -> anyhow::Result<(u8, Option<String>, Option<String>)> {
    let text = String::from_utf8_lossy(&r.body);
    if (200..300).contains(&r.status) {
        if r.body.is_empty() {
            return Ok((0, None, None));
        }
        let mut out = match serde_json::from_slice::<serde_json::Value>(&r.body) {
            Ok(v) if !raw => serde_json::to_string_pretty(&v)?,
            _ => text.into_owned(),
        };
        if !out.ends_with('\n') {
            out.push('\n');
        }
        return Ok((0, Some(out), None));
    }
    let why = serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v.get("fault_message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| text.into_owned());
    Ok((1, None, Some(format!("kvmkit: {method} {path}: {} {why}", r.status))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse() {
        let r = parse_response(b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n").expect("204");
        assert_eq!((r.status, r.body.len()), (204, 0));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").expect("200");
        assert_eq!(r.body, b"{}");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}").is_err());
        assert!(parse_response(b"HTTP/1.1 200").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    fn request_cmd(method: &str, path: &str, body: Option<&str>) -> CtlCommand {
        CtlCommand::Request {
            method: method.into(),
            path: path.into(),
            body: body.map(str::to_owned),
        }
    }

    #[test]
    fn request_parses_from_the_command_line() {
        use clap::Parser;
        let parse = |argv: &[&str]| match crate::Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(crate::Command::Ctl(a)) => Ok(a.command),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        let body = r#"{"vcpu_count": 1, "mem_size_mib": 256}"#;
        assert_eq!(
            parse(&[
                "kvmkit",
                "ctl",
                "--api-sock",
                "/s",
                "request",
                "PUT",
                "/machine-config",
                body
            ])
            .expect("put"),
            request_cmd("PUT", "/machine-config", Some(body))
        );
        assert_eq!(
            parse(&["kvmkit", "ctl", "--api-sock", "/s", "request", "GET", "/"]).expect("get"),
            request_cmd("GET", "/", None)
        );
        assert!(parse(&["kvmkit", "ctl", "--api-sock", "/s", "request", "GET"]).is_err());
        assert_eq!(
            parse(&["kvmkit", "ctl", "--api-sock", "/s", "info"]).expect("info"),
            CtlCommand::Info
        );
    }

    #[test]
    fn request_routes_as_given_and_refuses_bad_request_lines() {
        let cmd = request_cmd("patch", "/vm", Some(r#"{"state": "Paused"}"#));
        let (m, p, b) = route(&cmd).expect("route");
        assert_eq!(
            (m.as_str(), p, b.as_deref()),
            ("PATCH", "/vm", Some(r#"{"state": "Paused"}"#))
        );
        for (m, p) in [
            ("GET", "vm"),
            ("GET", "/a b"),
            ("GET", "/a\r\nX: y"),
            ("G T", "/"),
            ("", "/"),
            ("GET\r\n", "/"),
        ] {
            assert!(route(&request_cmd(m, p, None)).is_err(), "{m:?} {p:?}");
        }
        assert_eq!(route(&CtlCommand::Pause).expect("pause").1, "/vm");
    }

    #[test]
    fn request_prints_the_body_and_fails_on_refusals() {
        let ok = Response {
            status: 200,
            body: br#"{"id":"x","state":"Running"}"#.to_vec(),
        };
        let (code, out, err) = outcome("GET", "/", &ok, true).expect("ok");
        assert_eq!(
            (code, out.as_deref(), err),
            (0, Some("{\"id\":\"x\",\"state\":\"Running\"}\n"), None)
        );
        let (_, pretty, _) = outcome("GET", "/", &ok, false).expect("pretty");
        assert!(pretty.expect("text").contains("\"state\": \"Running\""));
        let empty = Response {
            status: 204,
            body: Vec::new(),
        };
        assert_eq!(outcome("PUT", "/actions", &empty, true).expect("204"), (0, None, None));
        let refused = Response {
            status: 400,
            body: br#"{"fault_message": "The requested operation is not supported after starting the microVM."}"#
                .to_vec(),
        };
        let (code, out, err) = outcome("PUT", "/boot-source", &refused, true).expect("400");
        assert_eq!((code, out), (1, None));
        assert_eq!(
            err.as_deref(),
            Some("kvmkit: PUT /boot-source: 400 The requested operation is not supported after starting the microVM.")
        );
    }

    /// One request over a real unix socket, to a server that answers 204.
    #[test]
    fn request_goes_over_the_socket() {
        use std::io::BufRead;
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("kvmkit-ctl-request-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let sock = dir.join("api.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            let mut r = std::io::BufReader::new(s);
            let mut head = Vec::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).expect("line");
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().expect("length");
                }
                if line == "\r\n" {
                    break;
                }
                head.push(line);
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).expect("body");
            r.get_mut()
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .expect("answer");
            (head, String::from_utf8(body).expect("utf8"))
        });
        let cmd = request_cmd("PUT", "/drives/rootfs", Some(r#"{"drive_id": "rootfs"}"#));
        let (m, p, b) = route(&cmd).expect("route");
        let r = request(&sock, &m, p, b.as_deref()).expect("request");
        assert_eq!(r.status, 204);
        let (head, body) = server.join().expect("server");
        assert_eq!(head[0], "PUT /drives/rootfs HTTP/1.1\r\n");
        assert_eq!(body, r#"{"drive_id": "rootfs"}"#);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
