//! One module per subcommand.

pub mod bench;
pub mod check;
pub mod ctl;
pub mod host;
pub mod image;
pub mod run;
pub mod vm;
pub mod workloads;
