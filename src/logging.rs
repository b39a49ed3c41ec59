//! Logging set-up: `tracing` to stderr (or a file/FIFO from `--log-path` or
//! `PUT /logger`), the level from `-v`, `--level`, `KVMKIT_LOG` (targets
//! syntax: `warn`, `kvmkit_vmm=debug,info`) or the API.
//! No ANSI colour: logs often end up in files.
//!
//! Every line a guest can cause is rate-limited ([`RateLimit`]): warn and
//! error events, and everything that comes through the `log` bridge (the
//! virtio-queue crate logs an error per pop of a queue with a bogus avail
//! index). Per call site (or `log` target), at most [`BURST`] lines per
//! [`WINDOW`]; the rest are counted and said in one line.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kvmkit_vmm::vmm_config::LoggerConfig;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Layer, Registry};

type Target = Arc<Mutex<Box<dyn Write + Send>>>;

/// `eprintln!` that never panics: stderr may be a closed pipe, and what
/// kvmkit says there is best-effort (the exit status and `--results` are not).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use errln;

/// `println!` that never panics (stdout may be a closed pipe).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
pub(crate) use outln;

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

/// Lines allowed per key and window.
pub const BURST: u32 = 10;
/// The rate-limit window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Most keys tracked (call sites are few; `log` targets are bounded too,
/// but a bound costs nothing).
const MAX_KEYS: usize = 1024;

struct Window {
    start: Instant,
    lines: u32,
    suppressed: u64,
}

/// Per-key line budget: [`BURST`] lines per [`WINDOW`], the rest counted.
#[derive(Default)]
pub struct RateLimit {
    keys: Mutex<HashMap<String, Window>>,
    suppressed: AtomicU64,
}

impl RateLimit {
    /// Whether a line with `key` may go out at `now`. When it opens a new
    /// window after lines were suppressed, also returns how many.
    pub fn admit(&self, key: &str, now: Instant) -> (bool, u64) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if !keys.contains_key(key) {
            if keys.len() >= MAX_KEYS {
                keys.retain(|_, w| now.duration_since(w.start) < WINDOW);
            }
            if keys.len() >= MAX_KEYS {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return (false, 0);
            }
            keys.insert(
                key.to_owned(),
                Window {
                    start: now,
                    lines: 0,
                    suppressed: 0,
                },
            );
        }
        let Some(w) = keys.get_mut(key) else {
            return (true, 0);
        };
        let mut earlier = 0;
        if now.duration_since(w.start) >= WINDOW {
            earlier = std::mem::take(&mut w.suppressed);
            w.start = now;
            w.lines = 0;
        }
        if w.lines < BURST {
            w.lines += 1;
            (true, earlier)
        } else {
            w.suppressed += 1;
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            (false, earlier)
        }
    }

    /// Lines suppressed so far, all keys together.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

/// Finds the `log.target` field of an event that came through the `log` bridge.
#[derive(Default)]
struct LogTarget(Option<String>);

impl tracing::field::Visit for LogTarget {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "log.target" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, _field: &tracing::field::Field, _value: &dyn std::fmt::Debug) {}
}

/// The layer that applies a [`RateLimit`] to warn/error events and to all
/// `log`-bridge events, writing a line for what it suppressed to `out`.
struct RateLimitLayer {
    limit: Arc<RateLimit>,
    out: Target,
}

impl<S: tracing::Subscriber> Layer<S> for RateLimitLayer {
    fn event_enabled(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        let key = if meta.target() == "log" {
            let mut t = LogTarget::default();
            event.record(&mut t);
            format!("log:{}", t.0.as_deref().unwrap_or("?"))
        } else if *meta.level() <= tracing::Level::WARN {
            format!("{}:{}", meta.file().unwrap_or(meta.target()), meta.line().unwrap_or(0))
        } else {
            return true;
        };
        let (pass, earlier) = self.limit.admit(&key, Instant::now());
        if earlier > 0 {
            let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(
                out,
                "kvmkit: {earlier} log lines from {key} suppressed (at most {BURST} per {} s)",
                WINDOW.as_secs()
            );
        }
        pass
    }
}

/// The process-wide rate limit, once logging is initialised.
static LIMIT: OnceLock<Arc<RateLimit>> = OnceLock::new();

/// Log lines suppressed by the rate limit so far.
pub fn suppressed_lines() -> u64 {
    LIMIT.get().map_or(0, |l| l.suppressed())
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
            errln!("kvmkit: warning: KVMKIT_LOG={spec}: {e}; using {default}");
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
    let limit = LIMIT.get_or_init(Arc::default).clone();
    let rate = RateLimitLayer {
        limit,
        out: target.clone(),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(rate)
        .with(fmt)
        .try_init()
        .is_ok()
    {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_a_burst_per_window_and_the_rest_is_counted() {
        let l = RateLimit::default();
        let t0 = Instant::now();
        let passed = (0..1000).filter(|_| l.admit("log:virtio_queue", t0).0).count();
        assert_eq!(passed, BURST as usize);
        assert_eq!(l.suppressed(), 1000 - u64::from(BURST));
        // Another key has its own budget.
        assert!(l.admit("src/x.rs:1", t0).0);
        // The next window lets lines through again and says what was dropped.
        assert_eq!(
            l.admit("log:virtio_queue", t0 + WINDOW),
            (true, 1000 - u64::from(BURST))
        );
        assert_eq!(l.admit("log:virtio_queue", t0 + WINDOW), (true, 0));
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[test]
    fn a_flood_of_log_bridge_errors_and_warnings_is_rate_limited() {
        let buf = Buf::default();
        let limit = Arc::new(RateLimit::default());
        let out: Target = Arc::new(Mutex::new(Box::new(buf.clone())));
        let subscriber = tracing_subscriber::registry()
            .with(RateLimitLayer {
                limit: limit.clone(),
                out,
            })
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(buf.clone())
                    .with_ansi(false),
            );
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..10_000 {
                // What tracing-log makes of virtio-queue's `error!("Iterator error {}", e)`.
                tracing::event!(target: "log", tracing::Level::ERROR, { log.target = "virtio_queue::queue" }, "Iterator error");
                tracing::warn!("a guest-caused warning");
                tracing::info!("not limited");
            }
        });
        let text = String::from_utf8(buf.0.lock().expect("buf").clone()).expect("utf8");
        assert_eq!(text.matches("Iterator error").count(), BURST as usize);
        assert_eq!(text.matches("a guest-caused warning").count(), BURST as usize);
        assert_eq!(text.matches("not limited").count(), 10_000);
        assert_eq!(limit.suppressed(), 2 * (10_000 - u64::from(BURST)));
    }
}
