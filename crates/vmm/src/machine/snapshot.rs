//! Snapshot and restore of a [`Machine`]: a paused VM written out as a
//! state file and a memory file, and a machine rebuilt from them.

use std::path::Path;
use std::time::Instant;

use super::{Machine, MachineError, MachineOptions, RestoreSource, VCPU_ANSWER_TIMEOUT};
use crate::bus::lock;
use crate::lifecycle::VmState;
use crate::snapshot::devices::{check_supported, DevicesState, SerialSnapshot};
use crate::snapshot::memory::{map_memory_file, write_memory_file};
use crate::snapshot::{file, vm, SnapshotError, SnapshotInfo, SnapshotState};
use crate::vcpu::handle::{VcpuEvent, VcpuHandleError, VcpuResponse};

/// Where a snapshot's files are and how to load its memory.
#[derive(Debug, Clone)]
pub struct RestorePaths<'a> {
    /// The state file.
    pub state: &'a Path,
    /// The memory file.
    pub memory: &'a Path,
    /// Read guest RAM eagerly into anonymous memory instead of mapping the
    /// file copy-on-write.
    pub copy_memory: bool,
}

impl Machine {
    /// Writes the paused VM to `state_path` (vCPUs, VM, devices, resources)
    /// and `mem_path` (guest RAM). Refused unless the VM is Paused, and for
    /// VMs with devices kvmkit cannot save yet. Each file is written under a
    /// temporary name and renamed, so a failed snapshot leaves no file
    /// that looks complete.
    pub fn snapshot(&mut self, state_path: &Path, mem_path: &Path) -> Result<SnapshotInfo, MachineError> {
        if self.state != VmState::Paused {
            return Err(MachineError::Config(format!(
                "a snapshot needs a Paused VM (this one is {}); pause it first",
                self.state
            )));
        }
        check_supported(&self.resources)?;
        let t0 = Instant::now();
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for h in &self.vcpus {
            h.send(VcpuEvent::SaveState)?;
            match h.response(VcpuEvent::SaveState, VCPU_ANSWER_TIMEOUT)? {
                VcpuResponse::State(saved) => {
                    let state = std::sync::Arc::try_unwrap(saved.0)
                        .map_err(|_| MachineError::Host(format!("vCPU {}: state still shared", h.index())))?
                        .map_err(SnapshotError::Kvm)?;
                    vcpus.push(state);
                }
                VcpuResponse::NotAllowed(why) => return Err(VcpuHandleError::Refused(h.index(), why).into()),
                other => {
                    return Err(MachineError::Host(format!(
                        "vCPU {} answered {other:?} to SaveState",
                        h.index()
                    )))
                }
            }
        }
        let vm_state = vm::save(self._vm.fd())?;
        let devices = DevicesState {
            serial: SerialSnapshot::from(&lock(&self.serial).state()),
            i8042: Some(lock(&self.i8042).state()),
        };
        let save_state_us = t0.elapsed().as_micros() as u64;
        let t1 = Instant::now();
        let memory = write_memory_file(&self._memory, mem_path)?;
        let write_memory_us = t1.elapsed().as_micros() as u64;
        let state = SnapshotState {
            resources: self.resources.clone(),
            memory,
            vm: vm_state,
            vcpus,
            devices,
        };
        let bytes = file::encode(&state)?;
        file::write_atomic(state_path, |f| std::io::Write::write_all(f, &bytes))?;
        let info = SnapshotInfo {
            state_bytes: bytes.len() as u64,
            memory_bytes: state.memory_bytes(),
            save_state_us,
            write_memory_us,
        };
        tracing::info!(
            "snapshot: {} ({} bytes), {} ({} bytes); state read in {} us, memory written in {} us",
            state_path.display(),
            info.state_bytes,
            mem_path.display(),
            info.memory_bytes,
            info.save_state_us,
            info.write_memory_us
        );
        Ok(info)
    }

    /// Rebuilds a snapshotted VM: reads and checks the state file, maps the
    /// memory file, builds the machine from the saved resources with that
    /// memory, and writes the VM's and every vCPU's state back. The machine
    /// is NotStarted; [`Machine::start`] runs it (paused or not). Nothing is
    /// left behind on error.
    pub fn restore(paths: &RestorePaths<'_>, opts: &mut MachineOptions) -> Result<Self, MachineError> {
        let state = file::read_state(paths.state)?;
        let memory = map_memory_file(paths.memory, &state.memory, paths.copy_memory)?;
        opts.restore = Some(RestoreSource {
            memory,
            serial: (&state.devices.serial).into(),
        });
        let machine = Self::build(&state.resources, opts)?;
        if let Some(s) = &state.devices.i8042 {
            lock(&machine.i8042).restore_state(s).map_err(SnapshotError::Invalid)?;
        }
        vm::restore(machine._vm.fd(), &state.vm)?;
        for (vcpu, saved) in machine.unstarted.iter().zip(&state.vcpus) {
            vcpu.restore_state(saved)?;
        }
        tracing::debug!(
            "restored {} vCPUs, {} us after start",
            state.vcpus.len(),
            opts.start.elapsed().as_micros()
        );
        Ok(machine)
    }
}
