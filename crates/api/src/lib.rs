//! kvmkit's control API: Firecracker's REST API (swagger v1.16) over a unix
//! socket.
//!
//! - [`parse_request`] turns a method, path and body into a
//!   [`ParsedRequest`]: a [`kvmkit_vmm::rpc::VmmAction`] for the VMM thread,
//!   or `GET /version`, which the server answers itself. It is pure, and the
//!   `api_request` fuzz target drives it.
//! - [`ApiServer`] binds the socket (tiny_http) and [`ApiServer::serve`]
//!   answers it on an `fc_api` thread, sending each action over an
//!   [`kvmkit_vmm::rpc::ActionSender`]; the returned [`ApiHandle`] stops it.
//! - [`ApiMetrics`] counts requests by status class for the metrics code.
//!
//! Routes: `GET /`, `GET /version`, `GET /vm/config`,
//! `GET|PUT|PATCH /machine-config`, `PUT /boot-source`,
//! `PUT|PATCH /drives/{drive_id}`, `PUT /network-interfaces/{iface_id}`,
//! `PUT /entropy`, `PUT /vsock`, `PUT /actions` (InstanceStart, SendCtrlAltDel,
//! FlushMetrics), `PATCH /vm` (Paused, Resumed), `PUT /logger`,
//! `PUT /metrics`, and two kvmkit extensions: `GET /metrics` (Prometheus
//! text) and `PUT /kvmkit/stop`. Firecracker's other paths (balloon, MMDS,
//! CPU templates, serial, memory hotplug, pmem, device
//! unplug, rate limiters) are answered 400 with a message naming the
//! feature kvmkit lacks.

mod log;
mod metrics;
mod request;
mod server;

pub use metrics::{ApiMetrics, ApiMetricsSnapshot};
pub use request::{parse_request, ParsedRequest, RequestError, FIRECRACKER_API_VERSION, MAX_ID_LEN};
pub use server::{ApiError, ApiHandle, ApiServer, ServerInfo, DEFAULT_ACTION_TIMEOUT, DEFAULT_MAX_BODY_BYTES};
