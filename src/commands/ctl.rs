//! `kvmkit ctl`: a small client for people. One HTTP/1.1 request over the
//! API socket per command; the answer is printed (JSON pretty-printed), a
//! refusal's `fault_message` goes to stderr with exit status 1.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cli::{CtlArgs, CtlCommand};

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

/// Sends one request over the unix socket at `sock` and reads the answer.
pub fn request(sock: &Path, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<Response> {
    let mut s = UnixStream::connect(sock).with_context(|| {
        format!(
            "cannot connect to the API socket {} (is the VMM running with --api-sock?)",
            sock.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
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

/// Runs `kvmkit ctl`.
pub fn run(args: &CtlArgs) -> anyhow::Result<u8> {
    let (method, path, body) = match args.command {
        CtlCommand::Info => ("GET", "/", None),
        CtlCommand::Config => ("GET", "/vm/config", None),
        CtlCommand::Pause => ("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)),
        CtlCommand::Resume => ("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)),
        CtlCommand::CtrlAltDel => ("PUT", "/actions", Some(r#"{"action_type": "SendCtrlAltDel"}"#)),
        CtlCommand::FlushMetrics => ("PUT", "/actions", Some(r#"{"action_type": "FlushMetrics"}"#)),
        CtlCommand::Stop => ("PUT", "/kvmkit/stop", None),
    };
    let r = request(&args.api_sock, method, path, body)?;
    let text = String::from_utf8_lossy(&r.body);
    if (200..300).contains(&r.status) {
        if !r.body.is_empty() {
            match serde_json::from_slice::<serde_json::Value>(&r.body) {
                Ok(v) => println!("{}", serde_json::to_string_pretty(&v)?),
                Err(_) => println!("{text}"),
            }
        }
        return Ok(0);
    }
    let why = serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v.get("fault_message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| text.into_owned());
    eprintln!("kvmkit: {method} {path}: {} {why}", r.status);
    Ok(1)
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
}
