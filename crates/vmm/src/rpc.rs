//! What a control plane may ask of the VMM, and what it gets back.
//!
//! The API server (crate `kvmkit-api`) turns HTTP requests into
//! [`VmmAction`]s and sends them over an [`ActionSender`]; the VMM thread
//! receives them on its event loop ([`ActionReceiver`]), carries them out
//! against the resources (before boot) or the running
//! [`crate::machine::Machine`] (after), and answers with [`VmmData`] or an
//! [`ActionError`]. No HTTP here: the same actions serve the config file,
//! the API and tests.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use crate::lifecycle::VmState;
use crate::vmm_config::{
    BlockDeviceConfig, BlockDeviceUpdate, BootSourceConfig, EntropyDeviceConfig, LoggerConfig, MachineConfig,
    MachineConfigUpdate, MetricsConfig, NetworkInterfaceConfig, VmResources, VsockDeviceConfig,
};

/// Something a client asks the VMM to do.
#[derive(Debug, Clone, PartialEq)]
pub enum VmmAction {
    /// `GET /`.
    GetInstanceInfo,
    /// `GET /vm/config`.
    GetVmConfig,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `PUT /machine-config` (before boot).
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config` (before boot).
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /boot-source` (before boot).
    PutBootSource(BootSourceConfig),
    /// `PUT /drives/{id}` (before boot).
    PutDrive(BlockDeviceConfig),
    /// `PATCH /drives/{id}` (after boot: a new backing file).
    PatchDrive(BlockDeviceUpdate),
    /// `PUT /network-interfaces/{id}` (before boot).
    PutNetworkInterface(NetworkInterfaceConfig),
    /// `PUT /entropy` (before boot).
    PutEntropy(EntropyDeviceConfig),
    /// `PUT /vsock` (before boot).
    PutVsock(VsockDeviceConfig),
    /// `PUT /logger`.
    PutLogger(LoggerConfig),
    /// `PUT /metrics`.
    PutMetrics(MetricsConfig),
    /// `PUT /actions` InstanceStart.
    InstanceStart,
    /// `PUT /actions` SendCtrlAltDel.
    SendCtrlAltDel,
    /// `PUT /actions` FlushMetrics.
    FlushMetrics,
    /// `PATCH /vm` Paused.
    Pause,
    /// `PATCH /vm` Resumed.
    Resume,
    /// `GET /metrics` (kvmkit extension): the counters in Prometheus text form.
    GetMetrics,
    /// kvmkit extension (`kvmkit ctl stop`): end the VM and the VMM.
    Stop,
    /// `PUT /snapshot/create` (VM Paused).
    CreateSnapshot(crate::snapshot::CreateSnapshotParams),
    /// `PUT /snapshot/load` (fresh VMM, before any configuration).
    LoadSnapshot(crate::snapshot::LoadSnapshotParams),
}

impl VmmAction {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::GetInstanceInfo => "get_instance_info",
            Self::GetVmConfig => "get_vm_config",
            Self::GetMachineConfig => "get_machine_config",
            Self::PutMachineConfig(_) => "put_machine_config",
            Self::PatchMachineConfig(_) => "patch_machine_config",
            Self::PutBootSource(_) => "put_boot_source",
            Self::PutDrive(_) => "put_drive",
            Self::PatchDrive(_) => "patch_drive",
            Self::PutNetworkInterface(_) => "put_network_interface",
            Self::PutEntropy(_) => "put_entropy",
            Self::PutVsock(_) => "put_vsock",
            Self::PutLogger(_) => "put_logger",
            Self::PutMetrics(_) => "put_metrics",
            Self::InstanceStart => "instance_start",
            Self::SendCtrlAltDel => "send_ctrl_alt_del",
            Self::FlushMetrics => "flush_metrics",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::GetMetrics => "get_metrics",
            Self::Stop => "stop",
            Self::CreateSnapshot(_) => "create_snapshot",
            Self::LoadSnapshot(_) => "load_snapshot",
        }
    }
}

/// `GET /`: Firecracker's InstanceInfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceInfo {
    /// Always "kvmkit".
    pub app_name: String,
    /// The instance id (`--id`).
    pub id: String,
    /// "Not started", "Running" or "Paused".
    pub state: VmState,
    /// kvmkit's version.
    pub vmm_version: String,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq)]
pub enum VmmData {
    /// Done; nothing to return (HTTP 204).
    Empty,
    /// `GET /`.
    InstanceInfo(InstanceInfo),
    /// `GET /vm/config`.
    VmConfig(Box<VmResources>),
    /// `GET /machine-config`.
    MachineConfig(MachineConfig),
    /// `GET /metrics`: Prometheus text.
    MetricsText(String),
}

/// Why an action was refused (HTTP 400 with this as `fault_message`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// A configuration value was refused.
    #[error(transparent)]
    Config(#[from] crate::vmm_config::ConfigError),
    /// The operation only exists before boot.
    #[error("the requested operation is not supported after starting the microVM")]
    NotAllowedAfterBoot,
    /// The operation only exists after boot.
    #[error("the requested operation is not supported before starting the microVM")]
    NotAllowedBeforeBoot,
    /// The lifecycle forbids it (pause a paused VM, ...).
    #[error(transparent)]
    Transition(#[from] crate::lifecycle::InvalidTransition),
    /// Building or starting the VM failed.
    #[error("cannot start the microVM: {0}")]
    Start(String),
    /// Something the running VM refused or failed at.
    #[error("{0}")]
    Runtime(String),
    /// The VMM is ending and no longer takes requests.
    #[error("the VMM is shutting down")]
    ShuttingDown,
}

/// The result of one action.
pub type ActionResult = Result<VmmData, ActionError>;

/// One request in flight: the action and where its answer goes.
pub struct ActionRequest {
    /// What to do.
    pub action: VmmAction,
    /// Where the answer goes.
    pub reply: Sender<ActionResult>,
}

/// The client side: any thread may send actions and wait for answers.
#[derive(Clone)]
pub struct ActionSender {
    tx: Sender<ActionRequest>,
    wake: Arc<EventFd>,
    info: Arc<Mutex<Option<InstanceInfo>>>,
}

/// The VMM side: polled by the VMM thread's event loop.
pub struct ActionReceiver {
    rx: Receiver<ActionRequest>,
    wake: Arc<EventFd>,
    info: Arc<Mutex<Option<InstanceInfo>>>,
}

/// A connected sender/receiver pair.
pub fn action_channel() -> std::io::Result<(ActionSender, ActionReceiver)> {
    let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
    let (tx, rx) = mpsc::channel();
    let info = Arc::new(Mutex::new(None));
    Ok((
        ActionSender {
            tx,
            wake: wake.clone(),
            info: info.clone(),
        },
        ActionReceiver { rx, wake, info },
    ))
}

impl ActionSender {
    /// The instance info last published by the VMM thread, if any.
    pub fn instance_info(&self) -> Option<InstanceInfo> {
        crate::bus::lock(&self.info).clone()
    }

    /// Sends `action` and waits up to `timeout` for the answer.
    pub fn call(&self, action: VmmAction, timeout: Duration) -> ActionResult {
        let (reply, answer) = mpsc::channel();
        self.tx
            .send(ActionRequest { action, reply })
            .map_err(|_| ActionError::ShuttingDown)?;
        // A failed eventfd write means the counter is saturated: a wake-up is pending anyway.
        let _ = self.wake.write(1);
        match answer.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(ActionError::Runtime(format!(
                "the VMM did not answer within {} s",
                timeout.as_secs_f64()
            ))),
            Err(RecvTimeoutError::Disconnected) => Err(ActionError::ShuttingDown),
        }
    }
}

impl ActionReceiver {
    /// Publishes the instance info the VMM thread holds now, so `GET /`
    /// (the readiness probe clients poll) is answered without a round trip
    /// to the VMM thread. The VMM publishes after every action and state
    /// change; the published state is never ahead of the real one.
    pub fn publish(&self, info: InstanceInfo) {
        *crate::bus::lock(&self.info) = Some(info);
    }

    /// The eventfd that becomes readable when a request is waiting.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Takes every waiting request (clears the wake-up first, so none is missed).
    pub fn drain(&self) -> Vec<ActionRequest> {
        let _ = self.wake.read();
        self.rx.try_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips() {
        let (tx, rx) = action_channel().expect("channel");
        let t = std::thread::spawn(move || tx.call(VmmAction::GetInstanceInfo, Duration::from_secs(5)));
        let mut served = false;
        while !served {
            for r in rx.drain() {
                assert_eq!(r.action, VmmAction::GetInstanceInfo);
                r.reply.send(Ok(VmmData::Empty)).expect("reply");
                served = true;
            }
            std::thread::yield_now();
        }
        assert_eq!(t.join().expect("join"), Ok(VmmData::Empty));
    }

    #[test]
    fn a_gone_vmm_is_an_error_not_a_hang() {
        let (tx, rx) = action_channel().expect("channel");
        drop(rx);
        assert_eq!(
            tx.call(VmmAction::Pause, Duration::from_secs(5)),
            Err(ActionError::ShuttingDown)
        );
    }
}
