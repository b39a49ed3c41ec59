//! From an HTTP method, path and body to what the VMM should do.
//!
//! [`parse_request`] is pure (no I/O, no global state) so that the server,
//! the unit tests and the fuzz target (`fuzz/src/api_request.rs`) run the
//! same code. The routes and bodies follow Firecracker's swagger
//! (`src/firecracker/swagger/firecracker.yaml`, v1.16); what kvmkit lacks is
//! refused with a message that names the feature.

use kvmkit_vmm::rpc::VmmAction;
use kvmkit_vmm::snapshot::params::{CreateSnapshotBody, LoadSnapshotBody};
use kvmkit_vmm::vmm_config::{
    BlockDeviceConfig, BlockDeviceUpdate, BootSourceConfig, EntropyDeviceConfig, LoggerConfig, MachineConfig,
    MachineConfigUpdate, MetricsConfig, NetworkInterfaceConfig, VsockDeviceConfig,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// The Firecracker API version kvmkit implements (`GET /version`).
pub const FIRECRACKER_API_VERSION: &str = "1.16.0";

/// Longest device id accepted in a path (the VMM's limit for drive and
/// interface ids).
pub const MAX_ID_LEN: usize = 64;

/// Longest piece of client text (a path, an id) quoted in a fault message.
const MAX_QUOTED_PATH: usize = 160;
/// Longest id quoted in a fault message.
const MAX_QUOTED_ID: usize = 80;
/// Longest serde message quoted in a fault message (serde quotes the
/// offending value, which may be most of the body).
const MAX_QUOTED_SERDE: usize = 400;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedRequest {
    /// `GET /version`: answered by the API server itself with
    /// [`FIRECRACKER_API_VERSION`].
    GetVersion,
    /// Everything else: an action for the VMM thread.
    Vmm(VmmAction),
}

/// Why a request was refused before it reached the VMM. Every variant is
/// answered with HTTP 400 and its `Display` text as `fault_message`; client
/// text quoted in it is shortened and has its control characters escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No route has this method and path (Firecracker's wording).
    #[error("Invalid request method and/or path: {method} {path}.{hint}")]
    InvalidPathMethod {
        /// The method as sent.
        method: String,
        /// The path as sent (shortened).
        path: String,
        /// Empty, or the methods the path takes.
        hint: String,
    },
    /// The path is not in the form kvmkit's routes take.
    #[error("Invalid request path {path}: {why}.")]
    BadPath {
        /// The path as sent (shortened).
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A Firecracker feature kvmkit does not implement.
    #[error("{method} {path}: {feature} not supported by kvmkit yet.")]
    Unsupported {
        /// The method as sent.
        method: String,
        /// The path as sent (shortened).
        path: String,
        /// The feature, with its verb ("balloon devices are").
        feature: &'static str,
    },
    /// A PUT or PATCH without a body.
    #[error("{method} {path} needs a JSON body ({schema}); the request has none.")]
    MissingBody {
        /// The method.
        method: String,
        /// The path (shortened).
        path: String,
        /// The swagger definition the body follows.
        schema: &'static str,
    },
    /// A body where the route takes none.
    #[error("{method} {path} takes no body; the request has {len} bytes.")]
    UnexpectedBody {
        /// The method.
        method: String,
        /// The path (shortened).
        path: String,
        /// Body length in bytes.
        len: usize,
    },
    /// The body is not JSON.
    #[error("The body of {method} {path} is not valid JSON: {detail}.")]
    InvalidJson {
        /// The method.
        method: String,
        /// The path (shortened).
        path: String,
        /// serde_json's message (shortened).
        detail: String,
    },
    /// The body is JSON but not the route's schema (wrong type, missing
    /// field, unknown field, unknown enum value).
    #[error("The body of {method} {path} is not a valid {schema}: {detail}.")]
    InvalidBody {
        /// The method.
        method: String,
        /// The path (shortened).
        path: String,
        /// The swagger definition the body follows.
        schema: &'static str,
        /// serde_json's message (shortened).
        detail: String,
    },
    /// A path such as `/drives` without its id.
    #[error("{method} {path} needs an id in the path: {template}.")]
    MissingId {
        /// The method.
        method: String,
        /// The path (shortened).
        path: String,
        /// The route's template (`/drives/{drive_id}`).
        template: &'static str,
    },
    /// The id in the path is not one kvmkit accepts.
    #[error("Invalid {field} in the path: {why}.")]
    InvalidId {
        /// `drive_id` or `iface_id`.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The path's id and the body's id differ (Firecracker's wording).
    #[error("The id from the path [{path_id}] does not match the id from the body [{body_id}]!")]
    IdMismatch {
        /// Id from the path (shortened).
        path_id: String,
        /// Id from the body (shortened).
        body_id: String,
    },
}

impl RequestError {
    /// The HTTP status the server answers with: always 400, as Firecracker
    /// does for requests it cannot parse.
    pub fn status(&self) -> u16 {
        400
    }
}

/// The routes kvmkit knows, by path only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Root,
    Version,
    VmConfig,
    MachineConfig,
    BootSource,
    Drive(&'a str),
    NetworkInterface(&'a str),
    Entropy,
    Vsock,
    Actions,
    Vm,
    Logger,
    Metrics,
    KvmkitStop,
    SnapshotCreate,
    SnapshotLoad,
    /// A collection path without its id (`/drives`).
    MissingId(&'static str),
    /// A Firecracker path kvmkit does not implement (any method).
    Unsupported(&'static str),
}

impl Route<'_> {
    /// Methods the route takes, for the "invalid method" hint.
    fn methods(self) -> &'static [&'static str] {
        match self {
            Route::Root | Route::Version | Route::VmConfig => &["GET"],
            Route::MachineConfig => &["GET", "PUT", "PATCH"],
            Route::Drive(_) => &["PUT", "PATCH"],
            Route::NetworkInterface(_) => &["PUT"],
            Route::BootSource | Route::Entropy | Route::Vsock | Route::Actions | Route::Logger | Route::KvmkitStop => {
                &["PUT"]
            }
            Route::SnapshotCreate | Route::SnapshotLoad => &["PUT"],
            Route::Vm => &["PATCH"],
            Route::Metrics => &["GET", "PUT"],
            Route::MissingId(_) | Route::Unsupported(_) => &[],
        }
    }
}

/// Firecracker features kvmkit lacks, by path (matched whole), with the
/// verb their message takes.
const UNSUPPORTED: &[(&[&str], &str)] = &[
    (&["balloon"], "balloon devices are"),
    (&["balloon", "statistics"], "balloon devices are"),
    (&["balloon", "hinting", "start"], "balloon devices are"),
    (&["balloon", "hinting", "status"], "balloon devices are"),
    (&["balloon", "hinting", "stop"], "balloon devices are"),
    (&["mmds"], "MMDS (the microVM metadata service) is"),
    (&["mmds", "config"], "MMDS (the microVM metadata service) is"),
    (&["cpu-config"], "custom CPU templates are"),
    (&["serial"], "serial device configuration is"),
    (&["hotplug", "memory"], "memory hotplug is"),
];

/// Parses one request. `path` is the request target as sent (origin form
/// `/drives/rootfs`, or absolute form `http://localhost/drives/rootfs`);
/// `body` is empty when the request has none.
///
/// Never panics, whatever the input (the `api_request` fuzz target checks).
pub fn parse_request(method: &str, path: &str, body: &[u8]) -> Result<ParsedRequest, RequestError> {
    let req = Req {
        method: quote(method, 16),
        path: quote(path, MAX_QUOTED_PATH),
        body,
    };
    let clean = check_path(path).map_err(|why| RequestError::BadPath {
        path: req.path.clone(),
        why,
    })?;
    let route = route(clean);
    let Some(route) = route else {
        return Err(req.invalid_path_method(""));
    };
    if let Route::MissingId(template) = route {
        return Err(RequestError::MissingId {
            method: req.method,
            path: req.path,
            template,
        });
    }
    // Firecracker features kvmkit lacks, whatever the method.
    match (method, route) {
        (_, Route::Unsupported(feature)) => return Err(req.unsupported(feature)),
        ("DELETE", Route::Drive(_) | Route::NetworkInterface(_)) => {
            return Err(req.unsupported("hot-unplugging devices is"))
        }
        // Firecracker's PATCH there only updates rate limiters.
        ("PATCH", Route::NetworkInterface(_)) => return Err(req.unsupported("rate limiters are")),
        _ => {}
    }
    if !route.methods().contains(&method) {
        let hint = format!(" {} takes {}.", route_name(clean), route.methods().join(", "));
        return Err(req.invalid_path_method(&hint));
    }
    let action = match (method, route) {
        ("GET", Route::Version) => {
            req.no_body()?;
            return Ok(ParsedRequest::GetVersion);
        }
        ("GET", Route::Root) => req.no_body().map(|()| VmmAction::GetInstanceInfo)?,
        ("GET", Route::VmConfig) => req.no_body().map(|()| VmmAction::GetVmConfig)?,
        ("GET", Route::MachineConfig) => req.no_body().map(|()| VmmAction::GetMachineConfig)?,
        ("GET", Route::Metrics) => req.no_body().map(|()| VmmAction::GetMetrics)?,
        ("PUT", Route::MachineConfig) => {
            VmmAction::PutMachineConfig(req.json::<MachineConfig>("MachineConfiguration")?)
        }
        ("PATCH", Route::MachineConfig) => {
            VmmAction::PatchMachineConfig(req.json::<MachineConfigUpdate>("MachineConfiguration (partial)")?)
        }
        ("PUT", Route::BootSource) => VmmAction::PutBootSource(req.json::<BootSourceConfig>("BootSource")?),
        ("PUT", Route::Drive(id)) => {
            check_id("drive_id", id)?;
            let mut drive = req.json::<BlockDeviceConfig>("Drive")?;
            same_id(id, &drive.drive_id)?;
            drive.rate_limiter = req.no_rate_limiter(drive.rate_limiter.take(), "rate limiters are")?;
            VmmAction::PutDrive(drive)
        }
        ("PATCH", Route::Drive(id)) => {
            check_id("drive_id", id)?;
            let mut update = req.json::<BlockDeviceUpdate>("PartialDrive")?;
            same_id(id, &update.drive_id)?;
            update.rate_limiter = req.no_rate_limiter(update.rate_limiter.take(), "rate limiters are")?;
            VmmAction::PatchDrive(update)
        }
        ("PUT", Route::NetworkInterface(id)) => {
            check_id("iface_id", id)?;
            let mut nic = req.json::<NetworkInterfaceConfig>("NetworkInterface")?;
            same_id(id, &nic.iface_id)?;
            nic.rx_rate_limiter = req.no_rate_limiter(nic.rx_rate_limiter.take(), "rate limiters are")?;
            nic.tx_rate_limiter = req.no_rate_limiter(nic.tx_rate_limiter.take(), "rate limiters are")?;
            VmmAction::PutNetworkInterface(nic)
        }
        ("PUT", Route::Entropy) => {
            let mut entropy = req.json::<EntropyDeviceConfig>("EntropyDevice")?;
            entropy.rate_limiter =
                req.no_rate_limiter(entropy.rate_limiter.take(), "entropy device rate limiters are")?;
            VmmAction::PutEntropy(entropy)
        }
        ("PUT", Route::Vsock) => VmmAction::PutVsock(req.json::<VsockDeviceConfig>("Vsock")?),
        ("PUT", Route::Actions) => match req.json::<ActionBody>("InstanceActionInfo")?.action_type {
            ActionType::InstanceStart => VmmAction::InstanceStart,
            ActionType::SendCtrlAltDel => VmmAction::SendCtrlAltDel,
            ActionType::FlushMetrics => VmmAction::FlushMetrics,
        },
        ("PATCH", Route::Vm) => match req.json::<VmBody>("Vm")?.state {
            VmStateBody::Paused => VmmAction::Pause,
            VmStateBody::Resumed => VmmAction::Resume,
        },
        ("PUT", Route::Logger) => VmmAction::PutLogger(req.json::<LoggerConfig>("Logger")?),
        ("PUT", Route::Metrics) => VmmAction::PutMetrics(req.json::<MetricsConfig>("Metrics")?),
        ("PUT", Route::SnapshotCreate) => VmmAction::CreateSnapshot(
            req.json::<CreateSnapshotBody>("SnapshotCreateParams")?
                .validate()
                .map_err(|detail| req.invalid_body("SnapshotCreateParams", detail))?,
        ),
        ("PUT", Route::SnapshotLoad) => VmmAction::LoadSnapshot(
            req.json::<LoadSnapshotBody>("SnapshotLoadParams")?
                .validate()
                .map_err(|detail| req.invalid_body("SnapshotLoadParams", detail))?,
        ),
        ("PUT", Route::KvmkitStop) => {
            // No body, or an empty object: `curl -X PUT` sends none.
            if !req.body.iter().all(u8::is_ascii_whitespace) {
                req.json::<StopBody>("an empty object")?;
            }
            VmmAction::Stop
        }
        // Only methods from `route.methods()` get here, and each has an arm above.
        _ => return Err(req.invalid_path_method("")),
    };
    Ok(ParsedRequest::Vmm(action))
}

/// `PUT /actions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

/// Firecracker's action types (all of them: kvmkit has each).
#[derive(Debug, Deserialize)]
enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

/// `PATCH /vm`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmBody {
    state: VmStateBody,
}

/// The states a client may ask for.
#[derive(Debug, Deserialize)]
enum VmStateBody {
    Paused,
    Resumed,
}

/// `PUT /kvmkit/stop` with a body: only `{}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StopBody {}

/// The parts of a request every check quotes.
struct Req<'a> {
    method: String,
    path: String,
    body: &'a [u8],
}

impl Req<'_> {
    /// A body that parsed but failed the route's own checks.
    fn invalid_body(&self, schema: &'static str, detail: String) -> RequestError {
        RequestError::InvalidBody {
            method: self.method.clone(),
            path: self.path.clone(),
            schema,
            detail,
        }
    }

    fn invalid_path_method(&self, hint: &str) -> RequestError {
        RequestError::InvalidPathMethod {
            method: self.method.clone(),
            path: self.path.clone(),
            hint: hint.into(),
        }
    }

    fn unsupported(&self, feature: &'static str) -> RequestError {
        RequestError::Unsupported {
            method: self.method.clone(),
            path: self.path.clone(),
            feature,
        }
    }

    fn no_body(&self) -> Result<(), RequestError> {
        if self.body.is_empty() {
            return Ok(());
        }
        Err(RequestError::UnexpectedBody {
            method: self.method.clone(),
            path: self.path.clone(),
            len: self.body.len(),
        })
    }

    fn json<T: DeserializeOwned>(&self, schema: &'static str) -> Result<T, RequestError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Err(RequestError::MissingBody {
                method: self.method.clone(),
                path: self.path.clone(),
                schema,
            });
        }
        serde_json::from_slice(self.body).map_err(|e| {
            let detail = quote(&e.to_string(), MAX_QUOTED_SERDE);
            match e.classify() {
                serde_json::error::Category::Data => RequestError::InvalidBody {
                    method: self.method.clone(),
                    path: self.path.clone(),
                    schema,
                    detail,
                },
                _ => RequestError::InvalidJson {
                    method: self.method.clone(),
                    path: self.path.clone(),
                    detail,
                },
            }
        })
    }

    /// A rate limiter that limits nothing (null, `{}`, or an object whose
    /// fields are all null) is dropped; any other is refused, since kvmkit
    /// has none.
    fn no_rate_limiter(
        &self,
        limiter: Option<serde_json::Value>,
        feature: &'static str,
    ) -> Result<Option<serde_json::Value>, RequestError> {
        let limits = match &limiter {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Object(fields)) => fields.values().any(|v| !v.is_null()),
            Some(_) => true,
        };
        if limits {
            return Err(self.unsupported(feature));
        }
        Ok(None)
    }
}

/// The path without scheme and authority, checked for what kvmkit's routes
/// never contain.
fn check_path(path: &str) -> Result<&str, &'static str> {
    let path = strip_absolute_form(path)?;
    if path.is_empty() {
        return Err("it is empty");
    }
    if !path.starts_with('/') {
        return Err("it must start with '/'");
    }
    if path.contains(['?', '#']) {
        return Err("query strings and fragments are not supported");
    }
    if path.contains('%') {
        return Err("percent-encoding is not supported (ids are plain letters, digits, '_', '-' and '.')");
    }
    if path.chars().any(|c| c.is_control() || c == ' ') {
        return Err("it contains a space or control character");
    }
    if path.contains("//") {
        return Err("it has an empty segment ('//')");
    }
    if path.len() > 1 && path.ends_with('/') {
        return Err("it ends with '/' (kvmkit's paths have no trailing slash)");
    }
    Ok(path)
}

/// `http://host/p` -> `/p`; `http://host` -> `/`; anything else unchanged.
fn strip_absolute_form(path: &str) -> Result<&str, &'static str> {
    let lower = |n: usize| path.get(..n).map(str::to_ascii_lowercase);
    let scheme_len = if lower(7).as_deref() == Some("http://") {
        7
    } else if lower(8).as_deref() == Some("https://") {
        8
    } else {
        return Ok(path);
    };
    let rest = path.get(scheme_len..).unwrap_or_default();
    match rest.find('/') {
        Some(i) => Ok(rest.get(i..).unwrap_or("/")),
        None if rest.contains(['?', '#']) => Err("query strings and fragments are not supported"),
        None => Ok("/"),
    }
}

/// The route of a checked path, or None when kvmkit has no such path.
fn route(path: &str) -> Option<Route<'_>> {
    let segments: Vec<&str> = match path {
        "/" => Vec::new(),
        p => p.get(1..).unwrap_or_default().split('/').collect(),
    };
    let r = match segments.as_slice() {
        [] => Route::Root,
        ["version"] => Route::Version,
        ["vm", "config"] => Route::VmConfig,
        ["machine-config"] => Route::MachineConfig,
        ["boot-source"] => Route::BootSource,
        ["drives"] => Route::MissingId("/drives/{drive_id}"),
        ["drives", id] => Route::Drive(id),
        ["network-interfaces"] => Route::MissingId("/network-interfaces/{iface_id}"),
        ["network-interfaces", id] => Route::NetworkInterface(id),
        ["entropy"] => Route::Entropy,
        ["vsock"] => Route::Vsock,
        ["actions"] => Route::Actions,
        ["vm"] => Route::Vm,
        ["logger"] => Route::Logger,
        ["metrics"] => Route::Metrics,
        ["kvmkit", "stop"] => Route::KvmkitStop,
        ["snapshot", "create"] => Route::SnapshotCreate,
        ["snapshot", "load"] => Route::SnapshotLoad,
        ["pmem"] => Route::MissingId("/pmem/{id}"),
        ["pmem", _] => Route::Unsupported("virtio-pmem devices are"),
        other => Route::Unsupported(UNSUPPORTED.iter().find(|(p, _)| *p == other)?.1),
    };
    Some(r)
}

/// How a route is named in hints: its template for id routes.
fn route_name(path: &str) -> String {
    match route(path) {
        Some(Route::Drive(_)) => "/drives/{drive_id}".into(),
        Some(Route::NetworkInterface(_)) => "/network-interfaces/{iface_id}".into(),
        _ => quote(path, MAX_QUOTED_PATH),
    }
}

/// Checks an id from the path by the VMM's rules (1 to 64 ASCII letters,
/// digits, '_', '-', '.').
fn check_id(field: &'static str, id: &str) -> Result<(), RequestError> {
    let why = if id.is_empty() {
        "it is empty".into()
    } else if id.len() > MAX_ID_LEN {
        format!("it is {} bytes long; at most {MAX_ID_LEN} are allowed", id.len())
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        format!(
            "'{}' may only hold ASCII letters, digits, '_', '-' and '.'",
            quote(id, MAX_QUOTED_ID)
        )
    } else {
        return Ok(());
    };
    Err(RequestError::InvalidId { field, why })
}

/// Firecracker refuses a body whose id is not the path's.
fn same_id(path_id: &str, body_id: &str) -> Result<(), RequestError> {
    if path_id == body_id {
        return Ok(());
    }
    Err(RequestError::IdMismatch {
        path_id: quote(path_id, MAX_QUOTED_ID),
        body_id: quote(body_id, MAX_QUOTED_ID),
    })
}

/// Client text as it may appear in a fault message and a log line: at most
/// `max` characters (then "..."), control characters escaped (`\u{a}`).
pub(crate) fn quote(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 8));
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests;
