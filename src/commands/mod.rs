//! One module per subcommand.

pub mod check;
pub mod host;
pub mod image;
pub mod run;
