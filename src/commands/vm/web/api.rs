//! The web console's JSON: the create form's checks (each refusal names its
//! field), a VM's metrics for the live charts, and `kvmkit bench` results.

use std::path::Path;

use kvmkit_vmm::vmm_config::MAX_VCPUS;
use serde_json::{json, Map, Value};

use super::super::process;
use super::super::store::{self, VmDir};

/// A refused create form: the field (for the page to mark) and why.
#[derive(Debug)]
pub struct FieldError {
    /// The form field, e.g. `cpus` or `disks.0.path`.
    pub field: String,
    /// What to give instead.
    pub message: String,
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// A whole number field: absent or empty gives `default`.
fn number(v: &Value, key: &str, default: u64) -> Result<u64, FieldError> {
    let bad = || refuse(key, format!("{key}: give a whole number"));
    match &v[key] {
        Value::Null => Ok(default),
        Value::Number(n) => n.as_u64().ok_or_else(bad),
        Value::String(s) if s.trim().is_empty() => Ok(default),
        Value::String(s) => s.trim().parse().map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// A text field, trimmed; absent gives "".
fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().map_or("", str::trim)
}

/// No value a form passes on may read as a flag or hold a separator of ours.
fn plain(field: &str, s: &str) -> Result<(), FieldError> {
    if s.starts_with('-') || s.contains(',') || s.chars().any(char::is_control) {
        return Err(refuse(
            field,
            format!("{field} {s:?}: no leading '-', no ',' and no control characters"),
        ));
    }
    Ok(())
}

/// The `vm define` arguments for the create form's JSON body.
pub fn define_args(body: &str) -> Result<Vec<String>, FieldError> {
    let v: Value = serde_json::from_str(body).map_err(|e| refuse("", format!("not JSON: {e}")))?;
    let name = text(&v, "name");
    store::check_name(name).map_err(|e| refuse("name", e.to_string()))?;
    let mut args: Vec<String> = vec!["define".into(), name.into()];
    match v["boot"].as_str().unwrap_or("guest") {
        "guest" => {
            let workload = match text(&v, "workload") {
                "" => "primes:100000",
                w => w,
            };
            plain("workload", workload)?;
            args.extend(["--guest".into(), "--workload".into(), workload.into()]);
        }
        "kernel" => {
            let kernel = text(&v, "kernel");
            if !kernel.starts_with('/') {
                return Err(refuse("kernel", "kernel: give the kernel's absolute path on the host"));
            }
            args.extend(["--kernel".into(), kernel.into()]);
            let initrd = text(&v, "initrd");
            if !initrd.is_empty() {
                if !initrd.starts_with('/') {
                    return Err(refuse("initrd", "initrd: give an absolute path, or leave it empty"));
                }
                args.extend(["--initrd".into(), initrd.into()]);
            }
            let cmdline = text(&v, "cmdline");
            if !cmdline.is_empty() {
                if cmdline.starts_with('-') || cmdline.chars().any(char::is_control) {
                    return Err(refuse("cmdline", "cmdline: no leading '-' and no control characters"));
                }
                args.extend(["--cmdline".into(), cmdline.into()]);
            }
        }
        other => return Err(refuse("boot", format!("boot {other:?}: guest or kernel"))),
    }
    let cpus = number(&v, "cpus", 1)?;
    if cpus == 0 || cpus > u64::from(MAX_VCPUS) {
        return Err(refuse("cpus", format!("cpus: give 1 to {MAX_VCPUS}")));
    }
    let memory = number(&v, "memory", 128)?;
    if memory < 16 {
        return Err(refuse("memory", "memory: give at least 16 MiB"));
    }
    args.extend(["--cpus".into(), cpus.to_string(), "--memory".into(), memory.to_string()]);
    for (i, d) in v["disks"].as_array().into_iter().flatten().enumerate() {
        let field = format!("disks.{i}.path");
        let path = text(d, "path");
        if !path.starts_with('/') {
            return Err(refuse(field, format!("disk {}: give an image's absolute path", i + 1)));
        }
        plain(&field, path)?;
        let mut spec = format!("path={path}");
        if d["ro"].as_bool() == Some(true) {
            spec.push_str(",ro=on");
        }
        args.extend(["--disk".into(), spec]);
    }
    for (i, n) in v["nics"].as_array().into_iter().flatten().enumerate() {
        let tap = text(n, "tap");
        if tap.is_empty() || tap.len() > 15 || !tap.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(refuse(
                format!("nics.{i}.tap"),
                format!(
                    "NIC {}: give an existing tap's name (1 to 15 of A-Z a-z 0-9 . _ -)",
                    i + 1
                ),
            ));
        }
        let mut spec = format!("tap={tap}");
        let mac = text(n, "mac");
        if !mac.is_empty() {
            let ok = mac.split(':').count() == 6
                && mac
                    .split(':')
                    .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()));
            if !ok {
                return Err(refuse(
                    format!("nics.{i}.mac"),
                    format!("NIC {}: MAC as aa:bb:cc:dd:ee:ff", i + 1),
                ));
            }
            spec.push_str(&format!(",mac={mac}"));
        }
        args.extend(["--net".into(), spec]);
    }
    if v["autostart"].as_bool() == Some(true) {
        args.push("--autostart".into());
    }
    if v["restart_on_failure"].as_bool() == Some(true) {
        args.extend(["--restart".into(), "on-failure".into()]);
    }
    Ok(args)
}

/// Bytes the VMM's console thread has read (the input clients sent to the
/// guest's serial port), from /proc: the thread named `serial-socket`.
fn console_input_bytes(pid: i32) -> Option<u64> {
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        if std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "serial-socket") {
            let io = std::fs::read_to_string(t.path().join("io")).ok()?;
            return io.lines().find_map(|l| l.strip_prefix("rchar:")?.trim().parse().ok());
        }
    }
    None
}

/// A running VM's counters (`GET /metrics` of its API), summed for the
/// charts: `exits` by kind over the vCPUs, `devices` by id, the time taken.
pub fn metrics(vm: &VmDir) -> anyhow::Result<Value> {
    let Some(pid) = process::running(vm) else {
        anyhow::bail!("VM {} is not running", vm.name);
    };
    let r = process::api_ok(vm, "GET", "/metrics", None)?;
    let mut out = parse_prometheus(&String::from_utf8_lossy(&r.body));
    let t_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    out["t_ms"] = json!(t_ms);
    out["console_input_bytes"] = json!(console_input_bytes(pid.pid));
    Ok(out)
}

/// The label value `key="..."` in a Prometheus label set.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// `kvmkit_vcpu_exits_total{cpu,kind}` summed by kind, and
/// `kvmkit_device_counter{device,counter}` by device.
fn parse_prometheus(text: &str) -> Value {
    let mut exits = Map::new();
    let mut devices = Map::new();
    let mut state = Value::Null;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((metric, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(n) = value.parse::<u64>() else { continue };
        let (name, labels) = metric.split_once('{').unwrap_or((metric, "}"));
        let labels = labels.trim_end_matches('}');
        match name {
            "kvmkit_vcpu_exits_total" => {
                if let Some(kind) = label(labels, "kind") {
                    let e = exits.entry(kind).or_insert(json!(0));
                    *e = json!(e.as_u64().unwrap_or(0) + n);
                }
            }
            "kvmkit_device_counter" => {
                if let (Some(d), Some(c)) = (label(labels, "device"), label(labels, "counter")) {
                    let dev = devices.entry(d).or_insert(json!({}));
                    dev[c] = json!(n);
                }
            }
            "kvmkit_vm_state" => state = label(labels, "state").map_or(Value::Null, |s| json!(s)),
            _ => {}
        }
    }
    json!({"exits": exits, "devices": devices, "state": state})
}

/// The name of the result set in the results folder itself (a browser
/// would fold a "." path segment away).
const ROOT_SET: &str = "_";

/// The result sets under `dir`: `dir` itself and each folder in it that
/// holds a `results.json`, with each workload's medians and the charts.
pub fn bench_sets(dir: &Path) -> Value {
    let mut sets = Vec::new();
    let mut folders = vec![(ROOT_SET.to_owned(), dir.to_path_buf())];
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut subs: Vec<_> = rd
            .flatten()
            .filter(|e| e.path().join("results.json").is_file())
            .filter_map(|e| Some((e.file_name().to_str()?.to_owned(), e.path())))
            .collect();
        subs.sort();
        folders.extend(subs);
    }
    for (name, path) in folders {
        let Ok(text) = std::fs::read_to_string(path.join("results.json")) else {
            continue;
        };
        let Ok(results) = serde_json::from_str::<Value>(&text) else {
            sets.push(json!({"name": name, "error": "results.json is not JSON"}));
            continue;
        };
        let mut rows = Vec::new();
        for (id, w) in results["workloads"].as_object().into_iter().flatten() {
            let mut medians = Map::new();
            for (env, cell) in w.as_object().into_iter().flatten() {
                if let Some(m) = cell.get("stats").and_then(|s| s.get("median")) {
                    medians.insert(env.clone(), m.clone());
                }
            }
            rows.push(json!({
                "id": id, "label": w["label"], "table": w["table"], "unit": w["unit"],
                "lower_is_better": w["lower_is_better"], "medians": medians,
            }));
        }
        let mut charts: Vec<String> = std::fs::read_dir(&path)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|f| f.ends_with(".svg"))
            .collect();
        charts.sort();
        sets.push(json!({
            "name": name, "environments": results["environments"], "runs": results["runs"],
            "started_unix": results["started_unix"], "wall_s": results["wall_s"],
            "warnings": results["warnings"], "workloads": rows, "charts": charts,
        }));
    }
    Value::Array(sets)
}

/// A chart or `results.json` of a result set: (bytes, content type).
pub fn bench_file(dir: &Path, set: &str, file: &str) -> Option<(Vec<u8>, &'static str)> {
    let safe = |s: &str| !s.is_empty() && !s.contains('/') && !s.starts_with('.');
    if !safe(set) || !safe(file) {
        return None;
    }
    let folder = if set == ROOT_SET {
        dir.to_path_buf()
    } else {
        dir.join(set)
    };
    let ct = match file.rsplit_once('.')?.1 {
        "svg" => "image/svg+xml",
        "json" => "application/json",
        "md" => "text/plain; charset=utf-8",
        _ => return None,
    };
    Some((std::fs::read(folder.join(file)).ok()?, ct))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_form_becomes_define_arguments_or_a_reason_naming_the_field() {
        let a = define_args(
            r#"{"name":"w1","workload":"ticks:10","cpus":"2","memory":64,"autostart":true,
                "disks":[{"path":"/tmp/d.img","ro":true}],"nics":[{"tap":"tap0","mac":"06:00:00:00:00:01"}]}"#,
        )
        .expect("args");
        assert_eq!(
            a.join(" "),
            "define w1 --guest --workload ticks:10 --cpus 2 --memory 64 --disk path=/tmp/d.img,ro=on \
             --net tap=tap0,mac=06:00:00:00:00:01 --autostart"
        );
        let k = define_args(r#"{"name":"k","boot":"kernel","kernel":"/boot/vmlinuz","cmdline":"console=ttyS0"}"#)
            .expect("kernel");
        assert_eq!(
            k.join(" "),
            "define k --kernel /boot/vmlinuz --cmdline console=ttyS0 --cpus 1 --memory 128"
        );
        for (bad, field) in [
            (r#"{"name":"-x"}"#, "name"),
            (r#"{"name":"a/b"}"#, "name"),
            (r#"{"name":"ok","workload":"--kernel"}"#, "workload"),
            (r#"{"name":"ok","cpus":"two"}"#, "cpus"),
            (r#"{"name":"ok","cpus":0}"#, "cpus"),
            (r#"{"name":"ok","memory":"8"}"#, "memory"),
            (r#"{"name":"ok","disks":[{"path":"rel.img"}]}"#, "disks.0.path"),
            (r#"{"name":"ok","disks":[{"path":"/a,ro=off"}]}"#, "disks.0.path"),
            (r#"{"name":"ok","nics":[{"tap":""}]}"#, "nics.0.tap"),
            (r#"{"name":"ok","nics":[{"tap":"t","mac":"zz"}]}"#, "nics.0.mac"),
            (r#"{"name":"ok","boot":"kernel","kernel":"vmlinuz"}"#, "kernel"),
            ("nope", ""),
        ] {
            let e = define_args(bad).expect_err(bad);
            assert_eq!(e.field, field, "{bad}: {}", e.message);
        }
    }

    #[test]
    fn prometheus_counters_are_summed_by_kind_and_device() {
        let v = parse_prometheus(
            "# TYPE kvmkit_vcpu_exits_total counter\n\
             kvmkit_vcpu_exits_total{cpu=\"0\",kind=\"io_out\"} 5\n\
             kvmkit_vcpu_exits_total{cpu=\"1\",kind=\"io_out\"} 7\n\
             kvmkit_device_counter{device=\"net0\",counter=\"rx_bytes\"} 100\n\
             kvmkit_vm_state{state=\"Running\"} 1\n",
        );
        assert_eq!(v["exits"]["io_out"], 12);
        assert_eq!(v["devices"]["net0"]["rx_bytes"], 100);
        assert_eq!(v["state"], "Running");
    }

    #[test]
    fn bench_files_stay_inside_the_results_folder() {
        let dir = Path::new("/tmp");
        for (set, file) in [
            ("..", "x.svg"),
            (".", "../x.svg"),
            ("a/b", "x.svg"),
            (".", "x.elf"),
            (".", ".svg"),
        ] {
            assert!(bench_file(dir, set, file).is_none(), "{set} {file}");
        }
    }
}
