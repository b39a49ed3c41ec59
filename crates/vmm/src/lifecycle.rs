//! The VM's lifecycle: its states and which transitions are legal
//! (after Cloud Hypervisor's `VmState::valid_transition`).

use serde::{Serialize, Serializer};

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmState {
    /// Configured (or being configured), not booted yet.
    NotStarted,
    /// vCPUs are running guest code.
    Running,
    /// vCPUs are parked; devices hold their state.
    Paused,
    /// The VM has ended; it cannot run again.
    Stopped,
}

/// A transition the lifecycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the VM is {from}; it cannot go to {to}")]
pub struct InvalidTransition {
    /// The state the VM is in.
    pub from: VmState,
    /// The state that was asked for.
    pub to: VmState,
}

impl VmState {
    /// The name Firecracker's `GET /` reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "Not started",
            Self::Running => "Running",
            Self::Paused => "Paused",
            Self::Stopped => "Stopped",
        }
    }

    /// Checks that going from `self` to `to` is allowed: boot (into
    /// Running, or Paused for a VM that starts paused), pause, resume, and
    /// stop from anywhere but Stopped.
    pub fn valid_transition(self, to: VmState) -> Result<(), InvalidTransition> {
        use VmState::*;
        let ok = matches!(
            (self, to),
            (NotStarted, Running)
                | (NotStarted, Paused)
                | (Running, Paused)
                | (Paused, Running)
                | (NotStarted, Stopped)
                | (Running, Stopped)
                | (Paused, Stopped)
        );
        if ok {
            Ok(())
        } else {
            Err(InvalidTransition { from: self, to })
        }
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotStarted => "not started",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
        })
    }
}

impl Serialize for VmState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::VmState::*;

    #[test]
    fn transition_table() {
        let all = [NotStarted, Running, Paused, Stopped];
        let allowed = [
            (NotStarted, Running),
            (NotStarted, Paused),
            (Running, Paused),
            (Paused, Running),
            (NotStarted, Stopped),
            (Running, Stopped),
            (Paused, Stopped),
        ];
        for from in all {
            for to in all {
                assert_eq!(
                    from.valid_transition(to).is_ok(),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
        let e = Running.valid_transition(Running).expect_err("no self transition");
        assert_eq!(e.to_string(), "the VM is running; it cannot go to running");
    }

    #[test]
    fn firecracker_names() {
        assert_eq!(serde_json::to_string(&NotStarted).expect("json"), "\"Not started\"");
        assert_eq!(Paused.as_str(), "Paused");
    }
}
