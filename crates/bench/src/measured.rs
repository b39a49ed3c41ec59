//! What one run measured, before it becomes a [`crate::results`] sample.

use crate::kind::Kind;
use crate::record::IoCost;

/// The note of a Table 3 guest run whose image could not be `cache=none`.
pub const NO_DIRECT_IO: &str =
    "the output directory's file system has no O_DIRECT, so the image was not cache=none: the guest's \
     reads may come from the host page cache";

/// Per CPU (ns, value) of one kind, as one run measured it.
pub type PerCpu = Vec<(u64, u64)>;

/// What one run measured: per kind it measures (`Kind::siblings`), per CPU (ns, value).
pub struct Measured {
    /// Per kind: per CPU (ns, value).
    pub kinds: Vec<(Kind, PerCpu)>,
    /// How it was measured, where that needs saying.
    pub note: Option<String>,
    /// What its block requests cost in notifications (kvmkit runs with a disk).
    pub io: Option<IoCost>,
}
