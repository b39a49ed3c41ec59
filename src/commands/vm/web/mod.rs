//! `kvmkit serve --web ADDR`: a minimal web console. One HTML page (no
//! front-end build: plain JavaScript) listing the VMs with their live state
//! (polled every second), start/stop/pause/resume/kill buttons, the last
//! console lines of a chosen VM, and a form that defines a VM running
//! kvmkit's guest. Every request needs the token printed at start
//! (`?token=T` in the page's address, then a header); without it: 401.
//!
//! Actions run `kvmkit vm ACTION NAME --state-dir DIR` as a child process
//! (arguments passed as they are, no shell), so the page does exactly
//! what the terminal does and shows its message.
//!
//! Not yet: xterm.js console with typing, live charts, the bench results
//! page, browser end-to-end tests.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use tiny_http::{Header, Method, Request, Response, Server};

use super::store;

/// Largest request body read (the create form is a few hundred bytes).
const MAX_BODY: u64 = 16 * 1024;

/// A fresh random token (128 bits, hex).
pub fn new_token() -> anyhow::Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("cannot read /dev/urandom for the web console token")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Serves the web console on `addr` in a thread of its own.
pub fn spawn(addr: &str, state: PathBuf, token: String) -> anyhow::Result<()> {
    let server = Server::http(addr).map_err(|e| anyhow::anyhow!("--web {addr}: cannot listen: {e}"))?;
    std::thread::Builder::new().name("web".into()).spawn(move || {
        for rq in server.incoming_requests() {
            let state = state.clone();
            let token = token.clone();
            // Actions may take seconds (vm stop): one thread per request.
            let _ = std::thread::Builder::new()
                .name("web-request".into())
                .spawn(move || handle(rq, &state, &token));
        }
    })?;
    Ok(())
}

/// Constant-time comparison of the token.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a request carries: `?token=` or the `X-Kvmkit-Token` header.
fn token_of(rq: &Request) -> Option<String> {
    let from_query = rq
        .url()
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("token=")).map(str::to_owned));
    from_query.or_else(|| {
        rq.headers()
            .iter()
            .find(|h| h.field.equiv("X-Kvmkit-Token"))
            .map(|h| h.value.as_str().to_owned())
    })
}

fn header(k: &str, v: &str) -> Header {
    Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("a valid header")
}

fn json(code: u16, v: &serde_json::Value) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(v.to_string())
        .with_status_code(code)
        .with_header(header("Content-Type", "application/json"))
}

fn handle(mut rq: Request, state: &Path, token: &str) {
    if !token_of(&rq).is_some_and(|t| same(&t, token)) {
        let _ = rq.respond(json(
            401,
            &serde_json::json!({"error": "give the token kvmkit serve printed: ?token=T or X-Kvmkit-Token"}),
        ));
        return;
    }
    let path = rq.url().split('?').next().unwrap_or("/").to_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = rq.method().clone();
    let response = match (&method, parts.as_slice()) {
        (Method::Get, [""]) => Response::from_string(PAGE)
            .with_header(header("Content-Type", "text/html; charset=utf-8"))
            .with_header(header("Cache-Control", "no-store")),
        (Method::Get, ["api", "vms"]) => match super::rows(state) {
            Ok(rows) => json(200, &serde_json::to_value(rows).unwrap_or_default()),
            Err(e) => json(500, &serde_json::json!({"error": format!("{e:#}")})),
        },
        (Method::Get, ["api", "vms", name, "logs"]) => {
            let vm = store::VmDir::new(state, name);
            match vm {
                Ok(vm) => {
                    let data = match super::process::running(&vm) {
                        Some(_) => super::console::recent(&vm).unwrap_or_default(),
                        None => std::fs::read(super::process::log_path(&vm)).unwrap_or_default(),
                    };
                    let from = data.len().saturating_sub(8192);
                    Response::from_data(data[from..].to_vec())
                        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
                }
                Err(e) => json(400, &serde_json::json!({"error": e.to_string()})),
            }
        }
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
                Err(e) => json(400, &serde_json::json!({"error": e.to_string()})),
            }
        }
        (Method::Post, ["api", "vms"]) => {
            let mut body = String::new();
            let _ = rq.as_reader().take(MAX_BODY).read_to_string(&mut body);
            match define_args(&body) {
                Ok(args) => run_vm(state, &args),
                Err(e) => json(400, &serde_json::json!({"error": e})),
            }
        }
        _ => json(404, &serde_json::json!({"error": "no such page"})),
    };
    let _ = rq.respond(response);
}

/// The `vm define` arguments for the create form's JSON body.
fn define_args(body: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let name = v["name"].as_str().unwrap_or("");
    store::check_name(name).map_err(|e| e.to_string())?;
    let workload = v["workload"].as_str().unwrap_or("primes:100000");
    if workload.starts_with('-') || workload.is_empty() {
        return Err(format!("workload {workload:?}: give NAME[:ARG] (kvmkit workloads)"));
    }
    let num = |k: &str, d: u64| -> Result<String, String> {
        match &v[k] {
            serde_json::Value::Null => Ok(d.to_string()),
            serde_json::Value::Number(n) => n.as_u64().map(|n| n.to_string()).ok_or(format!("{k}: a whole number")),
            serde_json::Value::String(s) if s.is_empty() => Ok(d.to_string()),
            serde_json::Value::String(s) => s
                .parse::<u64>()
                .map(|n| n.to_string())
                .map_err(|_| format!("{k}: a whole number")),
            _ => Err(format!("{k}: a whole number")),
        }
    };
    let mut args: Vec<String> = ["define", name, "--guest", "--workload", workload, "--cpus"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(num("cpus", 1)?);
    args.push("--memory".into());
    args.push(num("memory", 128)?);
    if v["autostart"].as_bool() == Some(true) {
        args.push("--autostart".into());
    }
    if v["restart_on_failure"].as_bool() == Some(true) {
        args.extend(["--restart".into(), "on-failure".into()]);
    }
    Ok(args)
}

/// Runs `kvmkit vm ARGS --state-dir STATE` and answers with its message.
fn run_vm(state: &Path, args: &[String]) -> Response<std::io::Cursor<Vec<u8>>> {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return json(500, &serde_json::json!({"error": e.to_string()})),
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
            let err = err.trim().trim_start_matches("kvmkit: error: ");
            json(400, &serde_json::json!({"error": err}))
        }
        Err(e) => json(500, &serde_json::json!({"error": e.to_string()})),
    }
}

/// The page.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>kvmkit</title>
<style>
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}
.running{color:#070}.paused{color:#a60}.crashed{color:#b00}
#msg{min-height:1.4em;margin:.6em 0}.err{color:#b00}
pre{background:#111;color:#ddd;padding:.8em;max-height:24em;overflow:auto}
button{margin-right:.2em}
</style></head><body>
<h1>kvmkit</h1>
<div id="msg"></div>
<table><thead><tr><th>Name</th><th>State</th><th>vCPUs</th><th>Memory</th><th>Uptime</th><th>PID</th><th></th></tr></thead>
<tbody id="vms"></tbody></table>
<h2>New VM (kvmkit's guest)</h2>
<form id="create">
Name <input name="name" required pattern="[A-Za-z0-9][A-Za-z0-9._-]{0,63}">
Workload <input name="workload" value="ticks:1000">
vCPUs <input name="cpus" value="1" size="3">
Memory MiB <input name="memory" value="128" size="5">
<label><input type="checkbox" name="autostart"> autostart</label>
<label><input type="checkbox" name="restart_on_failure"> restart on failure</label>
<button>Define</button></form>
<h2>Console <span id="which"></span></h2>
<pre id="console">(choose a VM's "console" button)</pre>
<script>
const token = new URLSearchParams(location.search).get("token") || "";
const H = {"X-Kvmkit-Token": token};
let shown = null;
function say(text, err){const m=document.getElementById("msg");m.textContent=text;m.className=err?"err":"";}
async function call(method, url, body){
  const r = await fetch(url,{method,headers:{...H,"Content-Type":"application/json"},body});
  const j = await r.json().catch(()=>({}));
  if(!r.ok) say(j.error||r.statusText,true); else say(j.message||"ok",false);
  refresh();
}
function esc(s){return String(s).replace(/[&<>"]/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));}
async function refresh(){
  const r = await fetch("/api/vms",{headers:H});
  if(!r.ok){say("token refused ("+r.status+")",true);return;}
  const vms = await r.json();
  document.getElementById("vms").innerHTML = vms.map(v=>{
    const n=esc(v.name);
    const b=a=>`<button data-a="${a}" data-n="${n}">${a}</button>`;
    return `<tr><td>${n}</td><td class="${esc(v.state)}" title="${esc(v.last_exit||"")}">${esc(v.state)}</td>
      <td>${v.vcpus}</td><td>${v.memory_mib} MiB</td><td>${v.uptime_s==null?"-":Math.round(v.uptime_s)+" s"}</td>
      <td>${v.pid==null?"-":v.pid}</td><td>${b("start")}${b("stop")}${b("pause")}${b("resume")}${b("kill")}${b("console")}${b("undefine")}</td></tr>`;
  }).join("");
  if(shown){const c=await fetch(`/api/vms/${encodeURIComponent(shown)}/logs`,{headers:H});
    const p=document.getElementById("console");p.textContent=await c.text();p.scrollTop=p.scrollHeight;}
}
document.getElementById("vms").addEventListener("click",e=>{
  const a=e.target.dataset.a,n=e.target.dataset.n; if(!a)return;
  if(a==="console"){shown=n;document.getElementById("which").textContent=n;refresh();return;}
  say(a+" "+n+" ...",false);
  call("POST",`/api/vms/${encodeURIComponent(n)}/${a}`);
});
document.getElementById("create").addEventListener("submit",e=>{
  e.preventDefault();const f=new FormData(e.target);
  call("POST","/api/vms",JSON.stringify({name:f.get("name"),workload:f.get("workload"),cpus:f.get("cpus"),
    memory:f.get("memory"),autostart:f.get("autostart")==="on",restart_on_failure:f.get("restart_on_failure")==="on"}));
});
refresh(); setInterval(refresh,1000);
</script></body></html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_form_becomes_define_arguments_or_a_reason() {
        let a = define_args(r#"{"name":"w1","workload":"ticks:10","cpus":"2","memory":64,"autostart":true}"#)
            .expect("args");
        assert_eq!(
            a.join(" "),
            "define w1 --guest --workload ticks:10 --cpus 2 --memory 64 --autostart"
        );
        for bad in [
            r#"{"name":"-x"}"#,
            r#"{"name":"a/b"}"#,
            r#"{"name":"ok","workload":"--kernel"}"#,
            r#"{"name":"ok","cpus":"two"}"#,
            "nope",
        ] {
            assert!(define_args(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_are_random_hex_and_compared_whole() {
        let (a, b) = (new_token().expect("a"), new_token().expect("b"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(same(&a, &a.clone()));
        assert!(!same(&a, &b) && !same(&a, &a[..31]));
    }
}
