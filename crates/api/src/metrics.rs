//! Counters of the API server, shared with whoever renders metrics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// The API server's counters. The server only adds to them; readers take a
/// [`ApiMetrics::snapshot`] or render them with
/// [`ApiMetrics::write_prometheus`]. Share one through
/// [`crate::ServerInfo::metrics`] to read it from the VMM's metrics code.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    /// Requests answered (counted with their response, so this is the sum
    /// of the status classes below).
    pub requests: AtomicU64,
    /// Answered 200 or 204.
    pub status_2xx: AtomicU64,
    /// Answered 400 (every refusal, Firecracker-style).
    pub status_4xx: AtomicU64,
    /// Answered 5xx (only when a VMM answer cannot be serialized).
    pub status_5xx: AtomicU64,
    /// Refused because the body was over the limit.
    pub bodies_too_large: AtomicU64,
    /// Refused before reaching the VMM (path, method or body).
    pub parse_errors: AtomicU64,
    /// Refused by the VMM (including timeouts and shutdown).
    pub action_errors: AtomicU64,
    /// Log lines left out by the rate limit.
    pub log_lines_suppressed: AtomicU64,
}

/// The counters at one moment, as plain numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ApiMetricsSnapshot {
    /// See [`ApiMetrics::requests`].
    pub requests: u64,
    /// See [`ApiMetrics::status_2xx`].
    pub status_2xx: u64,
    /// See [`ApiMetrics::status_4xx`].
    pub status_4xx: u64,
    /// See [`ApiMetrics::status_5xx`].
    pub status_5xx: u64,
    /// See [`ApiMetrics::bodies_too_large`].
    pub bodies_too_large: u64,
    /// See [`ApiMetrics::parse_errors`].
    pub parse_errors: u64,
    /// See [`ApiMetrics::action_errors`].
    pub action_errors: u64,
    /// See [`ApiMetrics::log_lines_suppressed`].
    pub log_lines_suppressed: u64,
}

impl ApiMetrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> ApiMetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ApiMetricsSnapshot {
            requests: get(&self.requests),
            status_2xx: get(&self.status_2xx),
            status_4xx: get(&self.status_4xx),
            status_5xx: get(&self.status_5xx),
            bodies_too_large: get(&self.bodies_too_large),
            parse_errors: get(&self.parse_errors),
            action_errors: get(&self.action_errors),
            log_lines_suppressed: get(&self.log_lines_suppressed),
        }
    }

    /// Appends the counters in Prometheus text format (`kvmkit_api_*`).
    pub fn write_prometheus(&self, out: &mut String) {
        let s = self.snapshot();
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        counter(
            "kvmkit_api_requests_total",
            "API requests answered.",
            &[("", s.requests)],
        );
        counter(
            "kvmkit_api_responses_total",
            "API responses by status class.",
            &[
                ("{class=\"2xx\"}", s.status_2xx),
                ("{class=\"4xx\"}", s.status_4xx),
                ("{class=\"5xx\"}", s.status_5xx),
            ],
        );
        counter(
            "kvmkit_api_errors_total",
            "API requests refused, by cause.",
            &[
                ("{cause=\"body_too_large\"}", s.bodies_too_large),
                ("{cause=\"parse\"}", s.parse_errors),
                ("{cause=\"action\"}", s.action_errors),
            ],
        );
        counter(
            "kvmkit_api_log_lines_suppressed_total",
            "API log lines left out by the rate limit.",
            &[("", s.log_lines_suppressed)],
        );
    }

    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
