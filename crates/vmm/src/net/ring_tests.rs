//! What the tx and rx rings' tests share: submitting operations a ring's
//! restrictions must refuse, one at a time.

use io_uring::{squeue, IoUring};

/// Submits each of `sqes` on `ring` and waits for its completion; returns
/// the results in order.
///
/// # Safety
/// Every buffer an entry points to must stay valid until this returns (it
/// waits for each completion before it goes on).
pub(crate) unsafe fn submit_each(ring: &mut IoUring, sqes: &[squeue::Entry]) -> Vec<i32> {
    let mut results = Vec::new();
    for sqe in sqes {
        // SAFETY: the caller keeps the entry's buffers alive for this call,
        // which waits for the completion below.
        unsafe { ring.submission().push(sqe) }.expect("push");
        ring.submit_and_wait(1).expect("submit");
        results.extend(ring.completion().map(|c| c.result()));
    }
    results
}
