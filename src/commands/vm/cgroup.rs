//! The CPU cgroup every VM started by `kvmkit vm start` or `kvmkit serve`
//! joins, so that all VMs together weigh as much as one ordinary process
//! group when the host's CPUs are contended (libvirt's `machine.slice`).
//! Each VM runs in a session of its own, so without it every VM is an
//! autogroup of its own: 20 spinning vCPUs outweighed the host's own
//! processes (the daemon, `kvmkit vm list`, a shell) 20 to 1, and every one
//! of them waited for a CPU. Weights only matter under contention: VMs on
//! an otherwise idle host get all of it.
//!
//! Where: `$KVMKIT_VM_CGROUP` (a cgroup folder; `off`: none), else
//! `/sys/fs/cgroup/kvmkit-vms` (cgroup v2 with the cpu controller enabled
//! for the root's children), else `/sys/fs/cgroup/cpu/kvmkit-vms` (v1).
//! Made when missing, with the default weight. Failing to join (not root,
//! no cpu controller) is said in the VM's `kvmkit.log`; the VM runs anyway.

use std::path::{Path, PathBuf};

/// The environment variable naming the VMs' cgroup (`off`: none).
pub const ENV: &str = "KVMKIT_VM_CGROUP";
/// The group's name under the cpu controller's root.
const NAME: &str = "kvmkit-vms";

/// The cgroup VMs join, from the environment's value and the host's cgroup
/// file system rooted at `root` (None: they stay where they are).
pub fn group_for(env: Option<&str>, root: &Path) -> Option<PathBuf> {
    match env {
        Some("off") => return None,
        Some(p) if !p.is_empty() => return Some(PathBuf::from(p)),
        _ => {}
    }
    let enabled =
        |f: &str| std::fs::read_to_string(root.join(f)).is_ok_and(|t| t.split_whitespace().any(|w| w == "cpu"));
    if enabled("cgroup.subtree_control") {
        return Some(root.join(NAME)); // v2, cpu delegated to the root's children
    }
    let v1 = root.join("cpu");
    v1.join("cpu.shares").is_file().then(|| v1.join(NAME))
}

/// The cgroup VMs join on this host.
pub fn group() -> Option<PathBuf> {
    let env = std::env::var(ENV).ok();
    group_for(env.as_deref(), Path::new("/sys/fs/cgroup"))
}

/// Moves process `pid` (all its threads) into `group`, making the group first.
pub fn join(group: &Path, pid: i32) -> std::io::Result<()> {
    std::fs::create_dir_all(group)?;
    std::fs::write(group.join("cgroup.procs"), pid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_comes_from_the_environment_then_v2_then_v1() {
        let root = std::env::temp_dir().join(format!("kvmkit-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("cpu")).expect("dir");
        assert_eq!(group_for(None, &root), None, "no cpu controller");
        assert_eq!(group_for(Some("off"), &root), None);
        assert_eq!(group_for(Some("/x/y"), &root), Some(PathBuf::from("/x/y")));
        std::fs::write(root.join("cpu/cpu.shares"), "1024\n").expect("v1");
        assert_eq!(group_for(Some(""), &root), Some(root.join("cpu/kvmkit-vms")));
        std::fs::write(root.join("cgroup.subtree_control"), "memory pids\n").expect("v2");
        assert_eq!(
            group_for(None, &root),
            Some(root.join("cpu/kvmkit-vms")),
            "v2 without cpu"
        );
        std::fs::write(root.join("cgroup.subtree_control"), "cpuset cpu io\n").expect("v2");
        assert_eq!(group_for(None, &root), Some(root.join("kvmkit-vms")));
        assert_eq!(group_for(Some("off"), &root), None);
        let _ = std::fs::remove_dir_all(&root);
    }
}
