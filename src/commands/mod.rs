//! One module per subcommand.

pub mod agent;
pub mod bench;
pub mod check;
pub mod ctl;
pub mod exec;
pub mod host;
pub mod image;
pub mod jail;
pub mod landlock;
pub mod run;
pub mod seccomp;
pub mod snapshot;
pub mod vm;
pub mod workloads;
