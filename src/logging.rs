//! Logging set-up: `tracing` to stderr (or a file/FIFO from `--log-path` or
//! `PUT /logger`), the level from `-v`, `--level`, `KVMKIT_LOG` (targets
//! syntax: `warn`, `kvmkit_vmm=debug,info`) or the API.
//! No ANSI colour: logs often end up in files.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex, OnceLock};

use kvmkit_vmm::vmm_config::LoggerConfig;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Registry};

type Target = Arc<Mutex<Box<dyn Write + Send>>>;

/// The writer every log line goes through; its target can be switched.
#[derive(Clone)]
struct Switch(Target);

struct Guard(Target);

impl Write for Guard {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // A full FIFO or a closed file drops the line rather than blocking the VMM.
        let _ = t.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

impl<'a> MakeWriter<'a> for Switch {
    type Writer = Guard;

    fn make_writer(&'a self) -> Guard {
        Guard(self.0.clone())
    }
}

struct Handles {
    filter: reload::Handle<Targets, Registry>,
    target: Target,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

/// Starts logging at `default` level (`KVMKIT_LOG` overrides) to stderr.
pub fn init(default: &str) {
    // `Targets` (`warn`, `kvmkit_vmm=debug,info`): no regex engine to
    // build at every start, unlike an EnvFilter.
    let fallback = || default.parse::<Targets>().unwrap_or_default();
    let filter = match std::env::var("KVMKIT_LOG") {
        Ok(spec) => spec.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!("kvmkit: warning: KVMKIT_LOG={spec}: {e}; using {default}");
            fallback()
        }),
        Err(_) => fallback(),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let target: Target = Arc::new(Mutex::new(Box::new(std::io::stderr())));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(Switch(target.clone()))
        .with_ansi(false)
        .with_target(false);
    if tracing_subscriber::registry().with(filter).with(fmt).try_init().is_ok() {
        let _ = HANDLES.set(Handles { filter: handle, target });
    }
}

/// Opens `path` for log lines: appended to a file (created), or a FIFO
/// whose reader is open; writes never block.
fn open_target(path: &str) -> Result<Box<dyn Write + Send>, String> {
    let f = OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENXIO) => format!("log FIFO {path} has no reader; open it for reading first"),
            _ => format!("cannot open log file {path}: {e}"),
        })?;
    Ok(Box::new(f))
}

/// Applies a logger configuration (`--log-path`/`--level`, `PUT /logger`).
pub fn apply(cfg: &LoggerConfig) -> Result<(), String> {
    let Some(h) = HANDLES.get() else {
        return Err("logging is not initialised".into());
    };
    if let Some(path) = &cfg.log_path {
        let target = open_target(path)?;
        *h.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }
    if cfg.level.is_some() || cfg.module.is_some() {
        let level = cfg.level.unwrap_or_default().directive();
        let directive = match &cfg.module {
            Some(m) => format!("off,{m}={level}"),
            None => level.to_owned(),
        };
        let filter = directive
            .parse::<Targets>()
            .map_err(|e| format!("log filter '{directive}': {e}"))?;
        h.filter.reload(filter).map_err(|e| e.to_string())?;
    }
    Ok(())
}
