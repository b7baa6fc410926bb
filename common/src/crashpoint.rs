//! Named places where a test can make the server die exactly as `kill -9` would, to prove
//! that a crash in a narrow window (between a rename and its fsync, inside a transaction)
//! loses nothing committed. A random SIGKILL from outside lands in such windows too rarely.
//!
//! `STRATA_CRASH_AT=NAME` kills the process the first time it reaches `NAME`,
//! `STRATA_CRASH_AT=NAME@N` the N-th time. Unset (always, outside tests), [`hit`] is one load
//! of an initialised cell.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable naming the crash point.
pub const ENV: &str = "STRATA_CRASH_AT";

struct Armed {
    name: String,
    nth: u64,
    seen: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok()?;
            let (name, nth) = match spec.split_once('@') {
                Some((name, n)) => (name, n.parse().ok().filter(|n| *n > 0)?),
                None => (spec.as_str(), 1),
            };
            Some(Armed {
                name: name.to_string(),
                nth,
                seen: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Dies by SIGKILL if the armed crash point is `name` and this is its N-th hit.
pub fn hit(name: &str) {
    let Some(a) = armed() else { return };
    if a.name != name || a.seen.fetch_add(1, Ordering::SeqCst) + 1 != a.nth {
        return;
    }
    // Unbuffered, so the test can tell this crash from a random one.
    let _ = writeln!(std::io::stderr(), "crash point {name}@{} reached", a.nth);
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    // SIGKILL cannot be caught; this is never reached.
    std::process::abort();
}
