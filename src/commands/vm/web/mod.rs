//! `kvmkit serve --web ADDR`: the web console. One page (web/src/, no build
//! step of its own; xterm.js from npm, vendored in web/dist/ and embedded
//! here) with the VMs and their live state, start/stop/pause/resume/kill
//! buttons, a create form (kvmkit's guest or a kernel, vCPUs, memory, disks,
//! NICs) showing the refusal's reason, the serial console in xterm.js over
//! a WebSocket ([`ws`]), live charts from each VM's metrics ([`api`]), and
//! the `kvmkit bench` results of `--bench-results DIR`.
//!
//! Every request needs the token printed at start: `?token=T` (the page's
//! address; the answer sets it as a SameSite=Strict, HttpOnly cookie so the
//! page's scripts, images and WebSocket carry it), the `X-Kvmkit-Token`
//! header, or that cookie. Without it: 401.
//!
//! Actions run `kvmkit vm ACTION NAME --state-dir DIR` as a child process
//! (arguments passed as they are, no shell), so the page does exactly
//! what the terminal does and shows its message.

mod api;
mod ws;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::Context;
use tiny_http::{Header, Method, Request, Response, Server};

use super::store;

/// Largest request body read (the create form is a few hundred bytes).
const MAX_BODY: u64 = 16 * 1024;
/// The token's cookie.
const COOKIE: &str = "kvmkit_token";

/// What the web console serves.
pub struct Web {
    /// The state directory.
    pub state: PathBuf,
    /// The token every request must carry.
    pub token: String,
    /// Where `kvmkit bench` results are read from (`--bench-results`).
    pub bench: Option<PathBuf>,
    /// The daemon's view of the VMs (the VM list comes from it).
    pub fleet: super::fleet::Shared,
}

/// A fresh random token (128 bits, hex).
pub fn new_token() -> anyhow::Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("cannot read /dev/urandom for the web console token")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Serves the web console on `addr` in a thread of its own.
pub fn spawn(addr: &str, web: Web) -> anyhow::Result<()> {
    let server = Server::http(addr).map_err(|e| anyhow::anyhow!("--web {addr}: cannot listen: {e}"))?;
    let web = Arc::new(web);
    std::thread::Builder::new().name("web".into()).spawn(move || {
        for rq in server.incoming_requests() {
            let web = web.clone();
            // Actions may take seconds (vm stop), consoles last: one thread per request.
            let _ = std::thread::Builder::new()
                .name("web-request".into())
                .spawn(move || handle(rq, &web));
        }
    })?;
    Ok(())
}

/// Constant-time comparison of the token.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The tokens a request carries: `?token=`, the `X-Kvmkit-Token` header, the cookie.
fn tokens_of(rq: &Request) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((_, q)) = rq.url().split_once('?') {
        out.extend(
            q.split('&')
                .filter_map(|kv| kv.strip_prefix("token="))
                .map(str::to_owned),
        );
    }
    for h in rq.headers() {
        if h.field.equiv("X-Kvmkit-Token") {
            out.push(h.value.as_str().to_owned());
        } else if h.field.equiv("Cookie") {
            out.extend(
                h.value
                    .as_str()
                    .split(';')
                    .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
                    .map(str::to_owned),
            );
        }
    }
    out
}

fn header(k: &str, v: &str) -> Header {
    Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("a valid header")
}

fn json(code: u16, v: &serde_json::Value) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(v.to_string())
        .with_status_code(code)
        .with_header(header("Content-Type", "application/json"))
        .with_header(header("Cache-Control", "no-store"))
}

fn error(code: u16, e: impl std::fmt::Display) -> Response<std::io::Cursor<Vec<u8>>> {
    json(code, &serde_json::json!({"error": e.to_string()}))
}

/// An embedded file.
fn asset(body: &'static [u8], content_type: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_data(body.to_vec())
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-cache"))
}

/// Query parameter `key` of the request's URL.
fn query<'a>(rq_url: &'a str, key: &str) -> Option<&'a str> {
    rq_url
        .split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn handle(mut rq: Request, web: &Web) {
    let state = web.state.as_path();
    if !tokens_of(&rq).iter().any(|t| same(t, &web.token)) {
        let _ = rq.respond(error(
            401,
            "give the token kvmkit serve printed: ?token=T or X-Kvmkit-Token",
        ));
        return;
    }
    let url = rq.url().to_owned();
    let path = url.split('?').next().unwrap_or("/").to_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = rq.method().clone();
    if let (Method::Get, ["ws", name, "console"]) = (&method, parts.as_slice()) {
        match store::VmDir::new(state, name) {
            Ok(vm) if super::process::running(&vm).is_some() => {
                ws::serve(rq, &vm, query(&url, "input") != Some("0"));
            }
            Ok(_) => {
                let _ = rq.respond(error(409, format!("VM {name} is not running")));
            }
            Err(e) => {
                let _ = rq.respond(error(400, e));
            }
        }
        return;
    }
    let response = match (&method, parts.as_slice()) {
        (Method::Get, [""]) => asset(
            include_bytes!("../../../../web/src/index.html"),
            "text/html; charset=utf-8",
        )
        .with_header(header(
            "Set-Cookie",
            &format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", web.token),
        )),
        (Method::Get, ["assets", file]) => match *file {
            "app.js" => asset(include_bytes!("../../../../web/src/app.js"), "text/javascript"),
            "app.css" => asset(include_bytes!("../../../../web/src/app.css"), "text/css"),
            "xterm.js" => asset(include_bytes!("../../../../web/dist/xterm.js"), "text/javascript"),
            "xterm.css" => asset(include_bytes!("../../../../web/dist/xterm.css"), "text/css"),
            "addon-fit.js" => asset(include_bytes!("../../../../web/dist/addon-fit.js"), "text/javascript"),
            _ => error(404, "no such file"),
        },
        (Method::Get, ["api", "vms"]) => json(
            200,
            &serde_json::to_value(super::fleet::rows(&web.fleet)).unwrap_or_default(),
        ),
        (Method::Get, ["api", "vms", name, "logs"]) => match store::VmDir::new(state, name) {
            Ok(vm) => {
                let data = match super::process::running(&vm) {
                    Some(_) => super::console::recent(&vm).unwrap_or_default(),
                    None => {
                        let mut d = std::fs::read(vm.file(super::recorder::CONSOLE_LOG)).unwrap_or_default();
                        d.extend(std::fs::read(super::process::log_path(&vm)).unwrap_or_default());
                        d
                    }
                };
                let from = data.len().saturating_sub(8192);
                Response::from_data(data[from..].to_vec())
                    .with_header(header("Content-Type", "text/plain; charset=utf-8"))
            }
            Err(e) => error(400, e),
        },
        (Method::Get, ["api", "vms", name, "metrics"]) => match store::VmDir::new(state, name) {
            Ok(vm) => match api::metrics(&vm) {
                Ok(v) => json(200, &v),
                Err(e) => error(409, format!("{e:#}")),
            },
            Err(e) => error(400, e),
        },
        (Method::Get, ["api", "bench"]) => match &web.bench {
            Some(dir) => json(200, &api::bench_sets(dir)),
            None => error(404, "kvmkit serve was started without --bench-results DIR"),
        },
        (Method::Get, ["bench", set, file]) => match &web.bench {
            Some(dir) => match api::bench_file(dir, set, file) {
                Some((data, ct)) => Response::from_data(data).with_header(header("Content-Type", ct)),
                None => error(404, "no such file"),
            },
            None => error(404, "kvmkit serve was started without --bench-results DIR"),
        },
        (Method::Post, ["api", "vms", name, action])
            if ["start", "stop", "pause", "resume", "kill", "undefine"].contains(action) =>
        {
            match store::check_name(name) {
                Ok(()) => {
                    let mut args = vec![action.to_string(), name.to_string()];
                    if *action == "stop" {
                        args.extend(["--grace".into(), "5".into()]);
                    }
                    run_vm(state, &args)
                }
                Err(e) => error(400, e),
            }
        }
        (Method::Post, ["api", "vms"]) => {
            let mut body = String::new();
            let _ = rq.as_reader().take(MAX_BODY).read_to_string(&mut body);
            match api::define_args(&body) {
                Ok(args) => run_vm(state, &args),
                Err(e) => json(400, &serde_json::json!({"error": e.message, "field": e.field})),
            }
        }
        _ => error(404, "no such page"),
    };
    let _ = rq.respond(response);
}

/// Runs `kvmkit vm ARGS --state-dir STATE` and answers with its message.
fn run_vm(state: &Path, args: &[String]) -> Response<std::io::Cursor<Vec<u8>>> {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return error(500, e),
    };
    let out = Command::new(exe)
        .arg("vm")
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => json(
            200,
            &serde_json::json!({"message": String::from_utf8_lossy(&o.stdout).trim()}),
        ),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            error(400, err.trim().trim_start_matches("kvmkit: error: "))
        }
        Err(e) => error(500, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex_and_compared_whole() {
        let (a, b) = (new_token().expect("a"), new_token().expect("b"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(same(&a, &a.clone()));
        assert!(!same(&a, &b) && !same(&a, &a[..31]));
    }

    #[test]
    fn query_values_are_found_by_whole_key() {
        assert_eq!(query("/ws/a/console?token=x&input=0", "input"), Some("0"));
        assert_eq!(query("/ws/a/console?token=x&inputs=1", "input"), None);
        assert_eq!(query("/", "input"), None);
    }
}
