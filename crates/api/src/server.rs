//! The API socket: tiny_http on a unix socket and the threads that answer it.
//!
//! Threads:
//! - `fc_api_accept` takes requests from tiny_http (which reads each
//!   connection's request line and headers on a thread of its own). A
//!   request whose body tiny_http already holds (up to 1,024 bytes) goes
//!   straight to `fc_api`; any other gets a short-lived `fc_api_body` thread
//!   that reads at most the limit plus one byte, so a client that sends
//!   half a body blocks nobody but itself.
//! - `fc_api` answers requests one at a time, in arrival order: parse,
//!   [`ActionSender::call`] to the VMM thread, response, log line, counters.
//!
//! Every refusal is HTTP 400 with `{"fault_message": "..."}`, as Firecracker
//! answers; success is 204 with an empty body, or 200 with JSON (text for
//! `GET /metrics`).

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use kvmkit_vmm::rpc::{ActionSender, VmmAction, VmmData};
use serde::Serialize;
use tiny_http::{Header, Request, Response, Server};

use crate::log::{Admit, LogLimiter};
use crate::metrics::ApiMetrics;
use crate::request::{parse_request, quote, ParsedRequest, FIRECRACKER_API_VERSION};

/// Largest request body accepted (Firecracker's default
/// `--http-api-max-payload-size`).
pub const DEFAULT_MAX_BODY_BYTES: usize = 51_200;

/// How long a request waits for the VMM thread's answer by default.
pub const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Bodies up to this size are read by tiny_http before it hands over the
/// request (unless the client sent `Expect: 100-continue`).
const PREBUFFERED_BODY_MAX: usize = 1024;

/// Log lines (info and warn) per second before the rest are counted only.
const LOG_LINES_PER_SECOND: u32 = 20;

/// How long [`ApiHandle::shutdown`] waits for the request in hand.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// Longest path quoted in a log line.
const MAX_LOGGED_PATH: usize = 160;

/// A response as `fc_api` builds it.
type ApiResponse = Response<Cursor<Vec<u8>>>;

/// How the API server runs.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// The instance id (`--id`), for log lines.
    pub id: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long a request waits for the VMM thread's answer.
    pub action_timeout: Duration,
    /// Where the server counts requests; clone the `Arc` beforehand to read
    /// it from elsewhere (the VMM's metrics).
    pub metrics: Arc<ApiMetrics>,
}

impl ServerInfo {
    /// Defaults (51,200-byte bodies, 30 s per action, fresh counters) for
    /// instance `id`.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            action_timeout: DEFAULT_ACTION_TIMEOUT,
            metrics: Arc::default(),
        }
    }
}

impl Default for ServerInfo {
    fn default() -> Self {
        Self::new("anonymous-instance")
    }
}

/// Why the API server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Something is already at the socket path.
    #[error(
        "the API socket path {} already exists; remove it or choose another (Firecracker clients delete it before starting)",
        .0.display()
    )]
    SocketExists(PathBuf),
    /// The socket could not be created or bound.
    #[error("cannot create the API socket at {}: {reason}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The system's reason.
        reason: String,
    },
    /// A server thread could not be started.
    #[error("cannot start the API server's {name} thread: {source}")]
    Thread {
        /// The thread's name.
        name: &'static str,
        /// The system's reason.
        source: std::io::Error,
    },
}

/// A bound API socket that does not answer yet ([`ApiServer::serve`] starts
/// it). Dropping it closes the socket and removes its file.
pub struct ApiServer {
    server: Arc<Server>,
    path: PathBuf,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer").field("path", &self.path).finish()
    }
}

impl ApiServer {
    /// Binds a unix socket at `path`, which must not exist yet.
    pub fn bind(path: impl AsRef<Path>) -> Result<Self, ApiError> {
        let path = path.as_ref().to_path_buf();
        if std::fs::symlink_metadata(&path).is_ok() {
            return Err(ApiError::SocketExists(path));
        }
        let bind_error = |reason: String| ApiError::Bind {
            path: path.clone(),
            reason,
        };
        let listener = std::os::unix::net::UnixListener::bind(&path).map_err(|e| bind_error(e.to_string()))?;
        // tiny_http's accept thread (and the connection threads it starts)
        // inherit the filter of the thread that makes the server.
        let server = thread::Builder::new()
            .name("fc_api_init".into())
            .spawn(move || {
                kvmkit_vmm::seccomp::apply(kvmkit_vmm::seccomp::Role::Api)?;
                Server::from_listener(listener, None).map_err(|e| e.to_string())
            })
            .map_err(|e| bind_error(e.to_string()))?
            .join()
            .map_err(|_| bind_error("the API thread panicked".into()))?
            .map_err(bind_error)?;
        Ok(Self {
            server: Arc::new(server),
            path,
        })
    }

    /// Binds `path` and starts answering requests with `sender`.
    pub fn spawn(path: impl AsRef<Path>, sender: ActionSender, info: ServerInfo) -> Result<ApiHandle, ApiError> {
        Self::bind(path)?.serve(sender, info)
    }

    /// The socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Starts the `fc_api` threads; requests go to the VMM through `sender`.
    pub fn serve(self, sender: ActionSender, info: ServerInfo) -> Result<ApiHandle, ApiError> {
        let (work_tx, work_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let metrics = info.metrics.clone();
        let limit = info.max_body_bytes;

        let probe_sender = sender.clone();
        let service = Service {
            sender,
            limiter: LogLimiter::new(LOG_LINES_PER_SECOND, Duration::from_secs(1)),
            info,
        };
        let main = thread::Builder::new()
            .name("fc_api".into())
            .spawn(move || service.run(work_rx))
            .map_err(|source| ApiError::Thread { name: "fc_api", source })?;

        let pump = Pump {
            server: self.server.clone(),
            stop: stop.clone(),
            work: work_tx.clone(),
            limit,
            sender: probe_sender,
            metrics: metrics.clone(),
        };
        let pump = match thread::Builder::new()
            .name("fc_api_accept".into())
            .spawn(move || pump.run())
        {
            Ok(p) => p,
            Err(source) => {
                let _ = work_tx.send(Work::Shutdown);
                let _ = main.join();
                return Err(ApiError::Thread {
                    name: "fc_api_accept",
                    source,
                });
            }
        };
        tracing::debug!("API server listening on {}", self.path.display());
        Ok(ApiHandle {
            path: self.path,
            server: Some(self.server),
            stop,
            work: work_tx,
            pump: Some(pump),
            main: Some(main),
            metrics,
        })
    }
}

/// A running API server. [`ApiHandle::shutdown`] or dropping it stops the
/// server and removes the socket file.
pub struct ApiHandle {
    path: PathBuf,
    server: Option<Arc<Server>>,
    stop: Arc<AtomicBool>,
    work: Sender<Work>,
    pump: Option<JoinHandle<()>>,
    main: Option<JoinHandle<()>>,
    metrics: Arc<ApiMetrics>,
}

impl std::fmt::Debug for ApiHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiHandle")
            .field("path", &self.path)
            .field("running", &self.server.is_some())
            .finish()
    }
}

impl ApiHandle {
    /// The socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Arc<ApiMetrics> {
        &self.metrics
    }

    /// Stops accepting, removes the socket file, answers requests already
    /// received with a shutdown fault, and waits (briefly) for the request
    /// in hand. Connections still open are closed as their clients go.
    pub fn shutdown(mut self) {
        self.stop_server();
    }

    fn stop_server(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        server.unblock();
        if let Some(pump) = self.pump.take() {
            let _ = pump.join();
        }
        // The last reference: tiny_http stops its accept thread, closes the
        // listener and removes the socket file.
        drop(server);
        let _ = self.work.send(Work::Shutdown);
        // fc_api may be waiting on the VMM thread for up to the action
        // timeout (and the VMM thread may be the one shutting down): wait a
        // little, then let it finish on its own.
        let Some(main) = self.main.take() else {
            return;
        };
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        while !main.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
        if main.is_finished() {
            let _ = main.join();
        } else {
            tracing::warn!("API server: the request in hand is still waiting for the VMM; not waiting for it");
        }
    }
}

impl Drop for ApiHandle {
    fn drop(&mut self) {
        self.stop_server();
    }
}

/// What `fc_api` is handed.
enum Work {
    /// A request whose body tiny_http holds (or that has none): reading it
    /// cannot block.
    Request {
        rq: Request,
        upgrade: bool,
        received: Instant,
    },
    /// A request whose body an `fc_api_body` thread read; the response goes
    /// back to that thread, which sends it.
    Body {
        method: String,
        url: String,
        body: Result<Vec<u8>, BodyError>,
        reply: Sender<ApiResponse>,
        received: Instant,
    },
    /// Stop.
    Shutdown,
}

/// Why a body was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BodyError {
    TooLarge { declared: Option<usize>, limit: usize },
    Truncated { got: usize, declared: usize },
    Io(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge {
                declared: Some(n),
                limit,
            } => write!(
                f,
                "Request payload with size {n} is larger than the limit of {limit} allowed by server."
            ),
            Self::TooLarge { declared: None, limit } => {
                write!(
                    f,
                    "Request payload is larger than the limit of {limit} allowed by server."
                )
            }
            Self::Truncated { got, declared } => write!(
                f,
                "The connection ended after {got} of the {declared} body bytes the request declared."
            ),
            Self::Io(e) => write!(f, "Cannot read the request body: {e}."),
        }
    }
}

/// Reads a body: refuses a declared length over `limit` without reading,
/// and never reads more than `limit + 1` bytes.
fn read_body(reader: &mut dyn Read, declared: Option<usize>, limit: usize) -> Result<Vec<u8>, BodyError> {
    if let Some(n) = declared.filter(|&n| n > limit) {
        return Err(BodyError::TooLarge {
            declared: Some(n),
            limit,
        });
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut body)
        .map_err(|e| BodyError::Io(e.to_string()))?;
    if body.len() > limit {
        return Err(BodyError::TooLarge { declared, limit });
    }
    match declared {
        Some(n) if body.len() < n => Err(BodyError::Truncated {
            got: body.len(),
            declared: n,
        }),
        _ => Ok(body),
    }
}

/// Where a request's body is, as tiny_http 0.12 left it (`new_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    /// None, or in memory.
    Buffered,
    /// Still on the socket.
    Streamed,
    /// `Connection: upgrade`: the rest of the connection.
    Upgrade,
}

fn body_kind(rq: &Request) -> BodyKind {
    let header = |name: &'static str| {
        rq.headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str())
    };
    if header("Connection").is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")) {
        return BodyKind::Upgrade;
    }
    let expects_continue = header("Expect").is_some();
    match rq.body_length() {
        Some(0) => BodyKind::Buffered,
        Some(n) if n <= PREBUFFERED_BODY_MAX && !expects_continue => BodyKind::Buffered,
        Some(_) => BodyKind::Streamed,
        // tiny_http ignores Content-Length when Transfer-Encoding is set
        // and then decodes chunks from the socket.
        None if header("Transfer-Encoding").is_some() => BodyKind::Streamed,
        None => BodyKind::Buffered,
    }
}

/// Sends a response; a client that left is not an error worth a line.
fn respond(rq: Request, response: ApiResponse) {
    if let Err(e) = rq.respond(response) {
        tracing::debug!("API client went away before its response: {e}");
    }
}

/// The `fc_api_accept` thread.
struct Pump {
    server: Arc<Server>,
    stop: Arc<AtomicBool>,
    work: Sender<Work>,
    limit: usize,
    /// For the readiness probe, answered on this thread.
    sender: ActionSender,
    metrics: Arc<ApiMetrics>,
}

impl Pump {
    fn run(self) {
        kvmkit_vmm::seccomp::apply_or_exit(kvmkit_vmm::seccomp::Role::Api);
        while !self.stop.load(Ordering::SeqCst) {
            match self.server.recv_timeout(Duration::from_millis(500)) {
                Ok(Some(rq)) => self.dispatch(rq),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!("API server stopped accepting connections: {e}");
                    break;
                }
            }
        }
    }

    /// `GET /` with no body, answered here from the state the VMM thread
    /// publishes: the probe clients poll, at the cost of one thread hop.
    fn probe(&self, rq: &Request) -> Option<ApiResponse> {
        if *rq.method() != tiny_http::Method::Get || rq.url() != "/" || rq.body_length().unwrap_or(0) != 0 {
            return None;
        }
        let info = self.sender.instance_info()?;
        ApiMetrics::add(&self.metrics.requests);
        ApiMetrics::add(&self.metrics.status_2xx);
        Some(json(200, &info))
    }

    fn dispatch(&self, rq: Request) {
        if let Some(r) = self.probe(&rq) {
            respond(rq, r);
            return;
        }
        let received = Instant::now();
        match body_kind(&rq) {
            kind @ (BodyKind::Buffered | BodyKind::Upgrade) => {
                // If fc_api is gone the request is dropped here: its body is
                // in memory, so that cannot block.
                let _ = self.work.send(Work::Request {
                    rq,
                    upgrade: kind == BodyKind::Upgrade,
                    received,
                });
            }
            BodyKind::Streamed => {
                let work = self.work.clone();
                let limit = self.limit;
                if let Err(e) = thread::Builder::new()
                    .name("fc_api_body".into())
                    .spawn(move || read_body_then_answer(rq, work, limit, received))
                {
                    tracing::error!("API server: cannot start a thread to read a request body: {e}");
                }
            }
        }
    }
}

/// The `fc_api_body` thread: reads the body, has `fc_api` answer, sends
/// the response, and drops the request here (tiny_http then drains what is
/// left of the body, however long the client takes).
fn read_body_then_answer(mut rq: Request, work: Sender<Work>, limit: usize, received: Instant) {
    kvmkit_vmm::seccomp::note_thread();
    let method = rq.method().to_string();
    let url = rq.url().to_string();
    let declared = rq.body_length();
    let body = read_body(rq.as_reader(), declared, limit);
    let (reply, answer) = mpsc::channel();
    let sent = work.send(Work::Body {
        method,
        url,
        body,
        reply,
        received,
    });
    // Holding a sender while waiting would keep fc_api's queue alive at
    // shutdown.
    drop(work);
    let response = match sent.ok().and_then(|()| answer.recv().ok()) {
        Some(r) => r,
        None => fault(400, "The API server is shutting down."),
    };
    respond(rq, response);
}

/// The `fc_api` thread's state.
struct Service {
    sender: ActionSender,
    info: ServerInfo,
    limiter: LogLimiter,
}

/// How a request ended, for the log line and the counters.
enum Outcome {
    BodyTooLarge(String),
    Refused(String),
    ActionFailed(String),
    Internal(String),
}

impl Service {
    fn run(mut self, work: Receiver<Work>) {
        kvmkit_vmm::seccomp::apply_or_exit(kvmkit_vmm::seccomp::Role::Api);
        for w in work.iter() {
            match w {
                Work::Request {
                    mut rq,
                    upgrade,
                    received,
                } => {
                    let method = rq.method().to_string();
                    let url = rq.url().to_string();
                    let response = if upgrade {
                        let msg = "Connection upgrades are not supported.".to_string();
                        self.finish(&method, &url, "", received, Outcome::Refused(msg))
                    } else {
                        let declared = rq.body_length();
                        let body = read_body(rq.as_reader(), declared, self.info.max_body_bytes);
                        self.answer(&method, &url, body, received)
                    };
                    respond(rq, response);
                }
                Work::Body {
                    method,
                    url,
                    body,
                    reply,
                    received,
                } => {
                    let response = self.answer(&method, &url, body, received);
                    let _ = reply.send(response);
                }
                Work::Shutdown => break,
            }
        }
        // Whatever arrived meanwhile gets an answer rather than tiny_http's
        // bare 500 when dropped.
        while let Ok(w) = work.try_recv() {
            let msg = || Outcome::ActionFailed("The API server is shutting down.".into());
            match w {
                Work::Request { rq, received, .. } => {
                    let (method, url) = (rq.method().to_string(), rq.url().to_string());
                    let response = self.finish(&method, &url, "", received, msg());
                    respond(rq, response);
                }
                Work::Body {
                    method,
                    url,
                    reply,
                    received,
                    ..
                } => {
                    let _ = reply.send(self.finish(&method, &url, "", received, msg()));
                }
                Work::Shutdown => {}
            }
        }
        let suppressed = self.limiter.take_suppressed();
        if suppressed > 0 {
            tracing::warn!("API server: {suppressed} more log lines were left out by the rate limit");
        }
    }

    fn answer(&mut self, method: &str, url: &str, body: Result<Vec<u8>, BodyError>, received: Instant) -> ApiResponse {
        let body = match body {
            Ok(b) => b,
            Err(e @ BodyError::TooLarge { .. }) => {
                return self.finish(method, url, "", received, Outcome::BodyTooLarge(e.to_string()))
            }
            Err(e) => return self.finish(method, url, "", received, Outcome::Refused(e.to_string())),
        };
        let action = match parse_request(method, url, &body) {
            Ok(ParsedRequest::GetVersion) => {
                let version = serde_json::json!({ "firecracker_version": FIRECRACKER_API_VERSION });
                let response = json(200, &version);
                return self.finish_with(method, url, "get_version", received, response);
            }
            Ok(ParsedRequest::Vmm(action)) => action,
            Err(e) => return self.finish(method, url, "", received, Outcome::Refused(e.to_string())),
        };
        let name = action.name();
        let notable = is_notable(&action);
        // The readiness probe: answered from the state the VMM thread
        // publishes, without a round trip to it.
        let published = match action {
            VmmAction::GetInstanceInfo => self.sender.instance_info().map(VmmData::InstanceInfo),
            _ => None,
        };
        let result = match published {
            Some(data) => Ok(data),
            None => self.sender.call(action, self.info.action_timeout),
        };
        let response = match result {
            Ok(data) => render(data),
            Err(e) => return self.finish(method, url, name, received, Outcome::ActionFailed(e.to_string())),
        };
        match response {
            Ok(r) if notable => self.finish_notable(method, url, name, received, r),
            Ok(r) => self.finish_with(method, url, name, received, r),
            Err(msg) => self.finish(method, url, name, received, Outcome::Internal(msg)),
        }
    }

    /// Counts and logs a success.
    fn finish_with(&mut self, method: &str, url: &str, action: &str, received: Instant, r: ApiResponse) -> ApiResponse {
        let m = &self.info.metrics;
        ApiMetrics::add(&m.requests);
        ApiMetrics::add(&m.status_2xx);
        tracing::debug!(
            "API {} {} -> {} ({action}, {} us)",
            method,
            quote(url, MAX_LOGGED_PATH),
            r.status_code().0,
            received.elapsed().as_micros()
        );
        r
    }

    /// A success that changes the VM's life (start, pause, stop...): worth
    /// an info line.
    fn finish_notable(
        &mut self,
        method: &str,
        url: &str,
        action: &str,
        received: Instant,
        r: ApiResponse,
    ) -> ApiResponse {
        let status = r.status_code().0;
        let r = self.finish_with(method, url, action, received, r);
        if self.admit_line() {
            tracing::info!(
                "API {method} {} -> {status} ({action}, instance {})",
                quote(url, MAX_LOGGED_PATH),
                self.info.id
            );
        }
        r
    }

    /// Counts, logs and builds the response for a refusal.
    fn finish(&mut self, method: &str, url: &str, action: &str, received: Instant, outcome: Outcome) -> ApiResponse {
        let m = &self.info.metrics;
        ApiMetrics::add(&m.requests);
        let (status, msg) = match outcome {
            Outcome::BodyTooLarge(msg) => {
                ApiMetrics::add(&m.bodies_too_large);
                (400, msg)
            }
            Outcome::Refused(msg) => {
                ApiMetrics::add(&m.parse_errors);
                (400, msg)
            }
            Outcome::ActionFailed(msg) => {
                ApiMetrics::add(&m.action_errors);
                (400, msg)
            }
            Outcome::Internal(msg) => (500, msg),
        };
        match status {
            200..=299 => ApiMetrics::add(&m.status_2xx),
            500..=599 => ApiMetrics::add(&m.status_5xx),
            _ => ApiMetrics::add(&m.status_4xx),
        }
        if self.admit_line() {
            let action = if action.is_empty() { "-" } else { action };
            tracing::warn!(
                "API {} {} -> {status} ({action}, {} us): {msg}",
                quote(method, 16),
                quote(url, MAX_LOGGED_PATH),
                received.elapsed().as_micros()
            );
        }
        fault(status, &msg)
    }

    /// Whether a line may be logged now (and reports lines left out before).
    fn admit_line(&mut self) -> bool {
        match self.limiter.admit(Instant::now()) {
            Admit::Yes { suppressed } => {
                if suppressed > 0 {
                    tracing::warn!("API server: {suppressed} log lines were left out by the rate limit");
                }
                true
            }
            Admit::No => {
                ApiMetrics::add(&self.info.metrics.log_lines_suppressed);
                false
            }
        }
    }
}

/// Actions whose success is logged at info level.
fn is_notable(action: &VmmAction) -> bool {
    matches!(
        action,
        VmmAction::InstanceStart
            | VmmAction::Pause
            | VmmAction::Resume
            | VmmAction::SendCtrlAltDel
            | VmmAction::Stop
            | VmmAction::CreateSnapshot(_)
            | VmmAction::LoadSnapshot(_)
    )
}

/// The HTTP form of a VMM answer (Err: it could not be serialized).
fn render(data: VmmData) -> Result<ApiResponse, String> {
    let body = match data {
        VmmData::Empty => return Ok(empty(204)),
        VmmData::MetricsText(text) => {
            return Ok(response(
                200,
                Some("text/plain; version=0.0.4; charset=utf-8"),
                text.into_bytes(),
            ))
        }
        VmmData::InstanceInfo(info) => serde_json::to_vec(&info),
        VmmData::VmConfig(resources) => serde_json::to_vec(&*resources),
        VmmData::MachineConfig(config) => serde_json::to_vec(&config),
    };
    body.map(|b| response(200, Some("application/json"), b))
        .map_err(|e| format!("Cannot serialize the VMM's answer: {e}."))
}

fn json<T: Serialize>(status: u16, value: &T) -> ApiResponse {
    match serde_json::to_vec(value) {
        Ok(body) => response(status, Some("application/json"), body),
        Err(e) => fault(500, &format!("Cannot serialize the answer: {e}.")),
    }
}

/// `{"fault_message": msg}` with `status`.
fn fault(status: u16, msg: &str) -> ApiResponse {
    #[derive(Serialize)]
    struct Fault<'a> {
        fault_message: &'a str,
    }
    let body = serde_json::to_vec(&Fault { fault_message: msg })
        .unwrap_or_else(|_| br#"{"fault_message":"internal error"}"#.to_vec());
    response(status, Some("application/json"), body)
}

/// No body, no Content-Type, no Content-Length (what strict Firecracker
/// clients expect of a 204).
fn empty(status: u16) -> ApiResponse {
    response(status, None, Vec::new())
}

fn response(status: u16, content_type: Option<&str>, body: Vec<u8>) -> ApiResponse {
    // Never chunked: a Content-Length is what every Firecracker client handles.
    let mut r = Response::from_data(body)
        .with_status_code(status)
        .with_chunked_threshold(usize::MAX);
    if let Ok(h) = Header::from_bytes(&b"Server"[..], &b"kvmkit API"[..]) {
        r.add_header(h);
    }
    if let Some(Ok(h)) = content_type.map(|ct| Header::from_bytes(&b"Content-Type"[..], ct.as_bytes())) {
        r.add_header(h);
    }
    r
}

#[cfg(test)]
mod tests;
