//! Metrics: Firecracker-style JSON lines written to a file or FIFO (every
//! 60 s and on FlushMetrics), and a Prometheus text view for `GET /metrics`.
//!
//! Groups follow Firecracker's where they apply (`utc_timestamp_ms`,
//! `api_server`, `vmm`, `vcpu`, `block`, `net`, `entropy`), plus `kvmkit`:
//! exits by kind for each vCPU and every device's counters by id.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use serde_json::{json, Map, Value};

use crate::device_manager::DeviceKind;
use crate::machine::Machine;

/// How often metrics are written without a FlushMetrics.
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Counts of control-plane requests by action name.
#[derive(Debug, Default, Clone)]
pub struct ApiCounters {
    by_action: BTreeMap<&'static str, (u64, u64)>,
}

impl ApiCounters {
    /// Records one request for `action`, failed or not.
    pub fn record(&mut self, action: &'static str, failed: bool) {
        let e = self.by_action.entry(action).or_default();
        e.0 += 1;
        if failed {
            e.1 += 1;
        }
    }

    /// `(action, count, fails)`.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64, u64)> + '_ {
        self.by_action.iter().map(|(k, (c, f))| (*k, *c, *f))
    }
}

/// A metrics destination: a file (appended to) or a FIFO. Writes never
/// block the VMM: a FIFO whose reader is slow loses lines (counted).
pub struct MetricsSink {
    file: File,
    path: String,
    /// Lines that could not be written.
    pub dropped: u64,
}

impl MetricsSink {
    /// Opens `path` for appending, creating a regular file if missing. A
    /// FIFO needs its reader to be open already.
    pub fn open(path: &str) -> Result<Self, String> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENXIO) => format!("metrics FIFO {path} has no reader; open it for reading first"),
                _ => format!("cannot open metrics file {path}: {e}"),
            })?;
        Ok(Self {
            file,
            path: path.to_owned(),
            dropped: 0,
        })
    }

    /// Writes one line; a full FIFO drops it.
    pub fn write_line(&mut self, line: &str) {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        if let Err(e) = self.file.write_all(&buf) {
            self.dropped += 1;
            if self.dropped == 1 || self.dropped.is_power_of_two() {
                tracing::warn!("metrics line to {} dropped ({} so far): {e}", self.path, self.dropped);
            }
        }
    }
}

fn device_group(kind: DeviceKind) -> Option<&'static str> {
    match kind {
        DeviceKind::VirtioBlock => Some("block"),
        DeviceKind::VirtioNet => Some("net"),
        DeviceKind::VirtioRng => Some("entropy"),
        DeviceKind::VirtioVsock => Some("vsock"),
        _ => None,
    }
}

/// One metrics line (JSON object) for the VMM's current state.
pub fn json_line(machine: Option<&Machine>, api: &ApiCounters, start_us: u64) -> Value {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut api_obj = Map::new();
    api_obj.insert("process_startup_time_us".into(), json!(start_us));
    for (action, count, fails) in api.iter() {
        api_obj.insert(format!("{action}_count"), json!(count));
        api_obj.insert(format!("{action}_fails"), json!(fails));
    }
    let mut line = Map::new();
    line.insert("utc_timestamp_ms".into(), json!(now_ms));
    line.insert("api_server".into(), Value::Object(api_obj));
    let mut kvmkit = Map::new();
    if let Some(m) = machine {
        line.insert("vmm".into(), json!({ "state": m.state().as_str() }));
        let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
        let mut per_vcpu = Vec::new();
        for (i, v) in m.vcpu_metrics().iter().enumerate() {
            let mut o = Map::new();
            o.insert("cpu".into(), json!(i));
            for (k, n) in v.snapshot() {
                *totals.entry(k).or_default() += n;
                o.insert(k.into(), json!(n));
            }
            per_vcpu.push(Value::Object(o));
        }
        line.insert("vcpu".into(), json!(totals));
        kvmkit.insert("vcpus".into(), Value::Array(per_vcpu));
        let kinds: BTreeMap<String, DeviceKind> = m.devices().map(|d| (d.id.clone(), d.kind)).collect();
        let mut groups: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
        let mut devices: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        for (id, name, v) in m.device_counters() {
            if let Some(g) = kinds.get(&id).copied().and_then(device_group) {
                *groups.entry(g).or_default().entry(name).or_default() += v;
            }
            devices.entry(id).or_default().insert(name.into(), json!(v));
        }
        for (g, counters) in groups {
            line.insert(g.into(), json!(counters));
        }
        kvmkit.insert("devices".into(), json!(devices));
    }
    line.insert("kvmkit".into(), Value::Object(kvmkit));
    Value::Object(line)
}

/// The same counters in Prometheus text format (`GET /metrics`).
pub fn prometheus_text(machine: Option<&Machine>, api: &ApiCounters) -> String {
    let mut out = String::new();
    out.push_str("# TYPE kvmkit_api_requests_total counter\n");
    for (action, count, fails) in api.iter() {
        out.push_str(&format!("kvmkit_api_requests_total{{action=\"{action}\"}} {count}\n"));
        out.push_str(&format!(
            "kvmkit_api_request_failures_total{{action=\"{action}\"}} {fails}\n"
        ));
    }
    if let Some(m) = machine {
        out.push_str("# TYPE kvmkit_vcpu_exits_total counter\n");
        for (i, v) in m.vcpu_metrics().iter().enumerate() {
            for (k, n) in v.snapshot() {
                let kind = k.trim_start_matches("exit_");
                out.push_str(&format!("kvmkit_vcpu_exits_total{{cpu=\"{i}\",kind=\"{kind}\"}} {n}\n"));
            }
        }
        out.push_str("# TYPE kvmkit_device_counter counter\n");
        for (id, name, v) in m.device_counters() {
            out.push_str(&format!(
                "kvmkit_device_counter{{device=\"{id}\",counter=\"{name}\"}} {v}\n"
            ));
        }
        let state = m.state().as_str();
        out.push_str(&format!("kvmkit_vm_state{{state=\"{state}\"}} 1\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_counters_and_lines() {
        let mut c = ApiCounters::default();
        c.record("pause", false);
        c.record("pause", true);
        let line = json_line(None, &c, 1234);
        assert_eq!(line["api_server"]["pause_count"], 2);
        assert_eq!(line["api_server"]["pause_fails"], 1);
        assert_eq!(line["api_server"]["process_startup_time_us"], 1234);
        let text = prometheus_text(None, &c);
        assert!(text.contains("kvmkit_api_requests_total{action=\"pause\"} 2"), "{text}");
    }

    #[test]
    fn sink_appends_lines_and_fifo_without_reader_is_an_error() {
        let dir = std::env::temp_dir().join(format!("kvmkit-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("m.json");
        let mut s = MetricsSink::open(path.to_str().expect("utf8")).expect("open");
        s.write_line("{\"a\":1}");
        s.write_line("{\"a\":2}");
        assert_eq!(std::fs::read_to_string(&path).expect("read").lines().count(), 2);
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().expect("utf8")).expect("cstr");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = MetricsSink::open(fifo.to_str().expect("utf8"))
            .err()
            .expect("no reader");
        assert!(e.contains("no reader"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
