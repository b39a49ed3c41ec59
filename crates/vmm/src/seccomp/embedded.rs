//! The default filters as BPF, compiled from `filters.rs` by seccompiler in
//! `build.rs` and embedded in the binary: installing one costs no
//! compilation at run time. A unit test checks that each is identical to the
//! program seccompiler builds from the same rules now.

use seccompiler::sock_filter;

use super::Role;

include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));
