//! The debug port (0x80): boot-time milestones written by the guest.
//!
//! Linux also writes to port 0x80 as an I/O delay; only the milestone codes
//! kvmkit's guest (and a guest instrumented like Cloud Hypervisor's) writes
//! are recorded, each the first time it appears.

use std::sync::Arc;
use std::time::Instant;

use kvmkit_guest_abi::{MILESTONE_ENTRY, MILESTONE_READY};

use crate::bus::BusDevice;
use crate::control::VmControl;

/// The debug port device.
pub struct DebugPort {
    control: Arc<VmControl>,
}

impl DebugPort {
    /// A debug port recording into `control`'s timeline.
    pub fn new(control: Arc<VmControl>) -> Self {
        Self { control }
    }
}

impl BusDevice for DebugPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let now = Instant::now();
        let timeline = &self.control.timeline;
        match data.first().copied() {
            Some(MILESTONE_ENTRY) => {
                let _ = timeline.entry.set(now);
            }
            Some(MILESTONE_READY) => {
                let _ = timeline.ready.set(now);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milestones_are_recorded_once() {
        let c = Arc::new(VmControl::new(Instant::now()).expect("control"));
        let mut p = DebugPort::new(c.clone());
        p.write(0, &[0]);
        assert!(c.timeline.entry.get().is_none());
        p.write(0, &[MILESTONE_ENTRY]);
        let first = *c.timeline.entry.get().expect("entry");
        p.write(0, &[MILESTONE_ENTRY]);
        assert_eq!(*c.timeline.entry.get().expect("entry"), first);
        p.write(0, &[MILESTONE_READY]);
        assert!(c.timeline.ready.get().is_some());
    }
}
