//! Names that stay unique across parallel tests and parallel test processes, because runc
//! state, ctr fifos and cgroup paths are global to the machine whichever daemon runs a container.

use std::sync::atomic::{AtomicU64, Ordering};

/// `PREFIX-PID-N`, valid as a containerd namespace and as a container id as long as `prefix`
/// is made of letters, digits and single `-`, `.` or `_` between them.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}
