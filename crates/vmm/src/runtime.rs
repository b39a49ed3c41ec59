//! The VMM thread: one event loop that owns the resources before boot and
//! the [`Machine`] after, and serves everything that acts on the VM:
//! control-plane actions ([`crate::rpc`]), exit requests from vCPUs and
//! devices, host signals, console input, the time limit and the metrics
//! timer. [`run_vmm`] returns when the VM (or, with no VM, the VMM) ends.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;
use crate::console::{install_exit_signal_handlers, last_exit_signal, TerminalGuard};
use crate::control::ExitReason;
use crate::lifecycle::VmState;
use crate::machine::{Machine, MachineError, MachineOptions, RestorePaths, RunOutcome};
use crate::metrics::{self, ApiCounters, MetricsSink};
use crate::rpc::{ActionError, ActionReceiver, ActionResult, InstanceInfo, VmmAction, VmmData};
use crate::snapshot::LoadSnapshotParams;
use crate::vmm_config::{LoggerConfig, VmResources};

/// Applies a `PUT /logger` body (the logging set-up is the caller's).
pub type LoggerHook = Box<dyn FnMut(&LoggerConfig) -> Result<(), String> + Send>;

/// How the VMM runs, beyond the VM's resources.
pub struct VmmOptions {
    /// How the machine is built.
    pub machine: MachineOptions,
    /// Build and start the VM at once (`kvmkit run` flags, `--config-file`);
    /// otherwise wait for InstanceStart.
    pub boot_now: bool,
    /// Forward host stdin to the guest's serial port.
    pub stdin: bool,
    /// Read console input from this descriptor instead of stdin (a pty, or
    /// the pipe of a socket console); no terminal mode is changed.
    pub console_input: Option<std::os::fd::OwnedFd>,
    /// End the VM this long after start.
    pub timeout: Option<Duration>,
    /// Instance id (`GET /`).
    pub id: String,
    /// Where control-plane actions arrive, when there is an API.
    pub actions: Option<ActionReceiver>,
    /// Applies `PUT /logger`.
    pub logger: Option<LoggerHook>,
    /// Restore this snapshot at once instead of building a VM
    /// (`kvmkit run --restore-state`).
    pub restore: Option<LoadSnapshotParams>,
}

struct Vmm {
    resources: VmResources,
    machine: Option<Machine>,
    opts: MachineOptions,
    id: String,
    api: ApiCounters,
    metrics: Option<MetricsSink>,
    logger: Option<LoggerHook>,
    start: Instant,
    /// Set when a client asked the VMM to end before any VM ran.
    ended: Option<ExitReason>,
    /// Something was configured (a snapshot loads only into a fresh VMM).
    configured: bool,
}

fn start_error(e: MachineError) -> ActionError {
    ActionError::Start(e.to_string())
}

impl Vmm {
    fn state(&self) -> VmState {
        self.machine.as_ref().map_or(VmState::NotStarted, Machine::state)
    }

    fn booted(&self) -> bool {
        self.machine.is_some()
    }

    fn pre_boot(&self) -> Result<(), ActionError> {
        if self.booted() {
            Err(ActionError::NotAllowedAfterBoot)
        } else {
            Ok(())
        }
    }

    fn running(&mut self) -> Result<&mut Machine, ActionError> {
        self.machine.as_mut().ok_or(ActionError::NotAllowedBeforeBoot)
    }

    fn boot(&mut self) -> Result<(), MachineError> {
        let mut m = Machine::build(&self.resources, &mut self.opts)?;
        m.start(false)?;
        self.machine = Some(m);
        crate::seccomp::apply(crate::seccomp::Role::Vmm).map_err(MachineError::Host)?;
        Ok(())
    }

    /// Builds the VM from a snapshot; it stays Paused unless `resume_vm`.
    fn load_snapshot(&mut self, p: &LoadSnapshotParams) -> Result<(), MachineError> {
        let paths = RestorePaths {
            state: &p.snapshot_path,
            memory: &p.mem_file_path,
            copy_memory: p.copy_memory,
            network_overrides: &p.network_overrides,
            track_dirty_pages: p.track_dirty_pages,
        };
        let mut m = Machine::restore(&paths, &mut self.opts)?;
        m.start(!p.resume_vm)?;
        tracing::info!(
            "snapshot {} restored ({}), {} us after start",
            p.snapshot_path.display(),
            if p.resume_vm { "running" } else { "paused" },
            self.start.elapsed().as_micros()
        );
        self.resources = m.resources().clone();
        self.machine = Some(m);
        crate::seccomp::apply(crate::seccomp::Role::Vmm).map_err(MachineError::Host)?;
        Ok(())
    }

    fn flush_metrics(&mut self) -> Result<(), ActionError> {
        let line = metrics::json_line(self.machine.as_ref(), &self.api, self.startup_us()).to_string();
        match &mut self.metrics {
            Some(sink) => {
                sink.write_line(&line);
                Ok(())
            }
            None => Err(ActionError::Runtime(
                "metrics are not configured: PUT /metrics first".into(),
            )),
        }
    }

    fn startup_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn instance_info(&self) -> InstanceInfo {
        InstanceInfo {
            app_name: "kvmkit".into(),
            id: self.id.clone(),
            state: self.state(),
            vmm_version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn handle(&mut self, action: VmmAction) -> ActionResult {
        use VmmAction::*;
        if !matches!(
            action,
            GetInstanceInfo | GetVmConfig | GetMachineConfig | GetMetrics | LoadSnapshot(_) | FlushMetrics
        ) {
            self.configured = true;
        }
        let done = |r: Result<(), ActionError>| r.map(|()| VmmData::Empty);
        match action {
            GetInstanceInfo => Ok(VmmData::InstanceInfo(self.instance_info())),
            GetVmConfig => Ok(VmmData::VmConfig(Box::new(
                self.machine
                    .as_ref()
                    .map_or_else(|| self.resources.clone(), |m| m.resources().clone()),
            ))),
            GetMachineConfig => Ok(VmmData::MachineConfig(self.resources.machine_config.clone())),
            GetMetrics => Ok(VmmData::MetricsText(metrics::prometheus_text(
                self.machine.as_ref(),
                &self.api,
            ))),
            PutMachineConfig(c) => {
                self.pre_boot()?;
                done(self.resources.set_machine_config(c).map_err(Into::into))
            }
            PatchMachineConfig(c) => {
                self.pre_boot()?;
                done(self.resources.update_machine_config(&c).map_err(Into::into))
            }
            PutBootSource(b) => {
                self.pre_boot()?;
                done(self.resources.set_boot_source(b).map_err(Into::into))
            }
            PutDrive(d) => {
                self.pre_boot()?;
                done(self.resources.put_drive(d).map_err(Into::into))
            }
            PutNetworkInterface(n) => {
                self.pre_boot()?;
                done(self.resources.put_network_interface(n).map_err(Into::into))
            }
            PutEntropy(e) => {
                self.pre_boot()?;
                e.validate()?;
                done(self.resources.set_entropy(e).map_err(Into::into))
            }
            PutVsock(v) => {
                self.pre_boot()?;
                done(self.resources.set_vsock(v).map_err(Into::into))
            }
            PutLogger(l) => {
                self.pre_boot()?;
                if let Some(hook) = &mut self.logger {
                    hook(&l).map_err(ActionError::Runtime)?;
                }
                self.resources.logger = Some(l);
                Ok(VmmData::Empty)
            }
            PutMetrics(m) => {
                self.pre_boot()?;
                m.validate()?;
                if self.metrics.is_some() {
                    return Err(ActionError::Runtime("metrics are already configured".into()));
                }
                self.metrics = Some(MetricsSink::open(&m.metrics_path).map_err(ActionError::Runtime)?);
                self.resources.metrics = Some(m);
                Ok(VmmData::Empty)
            }
            PatchDrive(u) => {
                u.validate()?;
                let m = self.running()?;
                if let Some(path) = &u.path_on_host {
                    m.update_drive(&u.drive_id, path)
                        .map_err(|e| ActionError::Runtime(e.to_string()))?;
                } else if m.resources().drives.iter().all(|d| d.drive_id != u.drive_id) {
                    return Err(ActionError::Runtime(format!("no drive with id '{}'", u.drive_id)));
                }
                Ok(VmmData::Empty)
            }
            InstanceStart => {
                self.pre_boot()?;
                self.resources.check_bootable()?;
                self.boot().map_err(start_error)?;
                Ok(VmmData::Empty)
            }
            SendCtrlAltDel => done(
                self.running()?
                    .send_ctrl_alt_del()
                    .map_err(|e| ActionError::Runtime(e.to_string())),
            ),
            FlushMetrics => done(self.flush_metrics()),
            Pause => done(self.running()?.pause().map_err(transition_error)),
            Resume => done(self.running()?.resume().map_err(transition_error)),
            CreateSnapshot(p) => {
                let m = self.running()?;
                m.snapshot(p.snapshot_type, &p.snapshot_path, &p.mem_file_path)
                    .map_err(|e| ActionError::Runtime(format!("cannot create the snapshot: {e}")))?;
                Ok(VmmData::Empty)
            }
            LoadSnapshot(p) => {
                self.pre_boot()?;
                if self.configured {
                    return Err(ActionError::Runtime(
                        "a snapshot loads only into a fresh VMM, before any configuration".into(),
                    ));
                }
                self.load_snapshot(&p)
                    .map_err(|e| ActionError::Runtime(format!("cannot load the snapshot: {e}")))?;
                Ok(VmmData::Empty)
            }
            Stop => {
                match &mut self.machine {
                    Some(m) => m.control().request_exit(ExitReason::Stopped("a control-plane request")),
                    None => self.ended = Some(ExitReason::Stopped("a control-plane request")),
                }
                Ok(VmmData::Empty)
            }
        }
    }
}

fn transition_error(e: MachineError) -> ActionError {
    match e {
        MachineError::Transition(t) => ActionError::Transition(t),
        other => ActionError::Runtime(other.to_string()),
    }
}

fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Runs the VMM until the VM ends (or, before boot, until a signal or a
/// Stop): boots at once when `opts.boot_now`, otherwise waits for
/// InstanceStart on `opts.actions`. Errors before the guest runs (bad
/// files, KVM) are returned as `Err` when booting at once.
pub fn run_vmm(resources: VmResources, opts: VmmOptions) -> Result<RunOutcome, MachineError> {
    let VmmOptions {
        machine,
        boot_now,
        stdin,
        console_input,
        timeout,
        id,
        actions,
        logger,
        restore,
    } = opts;
    let start = machine.start;
    let metrics = match &resources.metrics {
        Some(m) => Some(MetricsSink::open(&m.metrics_path).map_err(MachineError::Config)?),
        None => None,
    };
    let mut vmm = Vmm {
        resources,
        machine: None,
        opts: machine,
        id,
        api: ApiCounters::default(),
        metrics,
        logger,
        start,
        ended: None,
        configured: false,
    };
    let signal_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| MachineError::Host(format!("eventfd: {e}")))?;
    install_exit_signal_handlers(signal_evt.as_raw_fd())
        .map_err(|e| MachineError::Host(format!("signal handlers: {e}")))?;
    if let Some(p) = &restore {
        vmm.load_snapshot(p)?;
    } else if boot_now {
        vmm.boot()?;
    }
    if let Some(a) = &actions {
        a.publish(vmm.instance_info());
    }
    let _terminal = if stdin && console_input.is_none() {
        TerminalGuard::new(libc::STDIN_FILENO)
    } else {
        None
    };
    let input_fd = console_input.as_ref().map_or(libc::STDIN_FILENO, |f| f.as_raw_fd());
    let mut stdin = stdin || console_input.is_some();
    let deadline = timeout.map(|t| start + t);
    let mut next_flush = Instant::now() + metrics::FLUSH_INTERVAL;
    let mut pending: Vec<u8> = Vec::new();
    loop {
        if let Some(reason) = vmm.ended.take() {
            return Ok(RunOutcome::without_vm(reason));
        }
        if vmm.machine.as_ref().is_some_and(|m| m.control().stopping()) {
            break;
        }
        let mut fds = vec![pollfd(signal_evt.as_raw_fd())];
        let control_at = vmm.machine.as_ref().map(|m| {
            fds.push(pollfd(m.control().wake_fd().as_raw_fd()));
            fds.len() - 1
        });
        let api_at = actions.as_ref().map(|a| {
            fds.push(pollfd(a.wake_fd().as_raw_fd()));
            fds.len() - 1
        });
        let stdin_at = (stdin && pending.is_empty() && vmm.booted()).then(|| {
            fds.push(pollfd(input_fd));
            fds.len() - 1
        });
        let now = Instant::now();
        let mut wait = if pending.is_empty() {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(5)
        };
        if vmm.metrics.is_some() {
            wait = wait.min(next_flush.saturating_duration_since(now));
        }
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(now);
            if left.is_zero() {
                let reason = ExitReason::Timeout(d.duration_since(start));
                match &vmm.machine {
                    Some(m) => m.control().request_exit(reason),
                    None => return Ok(RunOutcome::without_vm(reason)),
                }
                continue;
            }
            wait = wait.min(left + Duration::from_millis(1));
        }
        let wait_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            continue; // EINTR: a signal arrived; the loop re-checks everything.
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let _ = signal_evt.read();
            let reason = ExitReason::Signal(last_exit_signal().unwrap_or(libc::SIGTERM));
            match &vmm.machine {
                Some(m) => m.control().request_exit(reason),
                None => return Ok(RunOutcome::without_vm(reason)),
            }
        }
        if let Some(i) = control_at {
            if fds[i].revents & libc::POLLIN != 0 {
                // The loop's head sees `stopping()`; the eventfd stays set.
            }
        }
        if let (Some(i), Some(a)) = (api_at, &actions) {
            if fds[i].revents & libc::POLLIN != 0 {
                for req in a.drain() {
                    let name = req.action.name();
                    let result = vmm.handle(req.action);
                    vmm.api.record(name, result.is_err());
                    if let Err(e) = &result {
                        tracing::debug!("action {name} refused: {e}");
                    }
                    // Published before answering: a client that sees this
                    // answer and then polls GET / sees the new state.
                    a.publish(vmm.instance_info());
                    // The client may have gone; its answer is then dropped.
                    let _ = req.reply.send(result);
                }
            }
        }
        if let Some(i) = stdin_at {
            if fds[i].revents & (libc::POLLIN | libc::POLLHUP) != 0 {
                let mut buf = [0u8; 64];
                // SAFETY: reading into a local buffer of the given size.
                let k = unsafe { libc::read(input_fd, buf.as_mut_ptr().cast(), buf.len()) };
                if k < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
                    // A non-blocking pipe with nothing yet: poll again.
                } else if k <= 0 {
                    stdin = false; // EOF or error: stop reading input, the VM runs on.
                } else {
                    pending.extend_from_slice(&buf[..k as usize]);
                }
            }
        }
        if let (false, Some(m)) = (pending.is_empty(), &vmm.machine) {
            let n = lock(m.serial()).enqueue_input(&pending);
            pending.drain(..n);
        }
        if vmm.metrics.is_some() && Instant::now() >= next_flush {
            let _ = vmm.flush_metrics();
            next_flush = Instant::now() + metrics::FLUSH_INTERVAL;
        }
    }
    let _ = vmm.flush_metrics();
    let Some(mut machine) = vmm.machine.take() else {
        return Ok(RunOutcome::without_vm(ExitReason::VmmError("no VM".into())));
    };
    if !machine.stop(ExitReason::VmmError("VM ended without a reason".into())) {
        tracing::error!("a vCPU thread did not end; exiting anyway");
    }
    Ok(machine.outcome())
}
