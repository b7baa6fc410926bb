//! Giving freed memory back to the system once a burst of calls is over. glibc keeps what the
//! threads of a burst freed in their arenas: after 64 clients at once strata-content stayed at
//! 90 MiB and strata-differ near 1 GiB long after the calls ended. Every call is counted in
//! and out (`rpc`), and a timer trims the heap when calls came and none is running.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

static RUNNING: AtomicUsize = AtomicUsize::new(0);
/// Whether a call ran since the last trim: an idle server is not trimmed again and again.
static USED: AtomicBool = AtomicBool::new(false);

/// How long the trimmer sleeps between looks: short enough that memory goes back soon after
/// a burst, long enough that a busy server pays nothing measurable.
const PERIOD: Duration = Duration::from_secs(1);

/// A call started.
pub fn call_started() {
    RUNNING.fetch_add(1, Ordering::Relaxed);
    USED.store(true, Ordering::Relaxed);
}

/// A call ended (once per [`call_started`]).
pub fn call_finished() {
    RUNNING.fetch_sub(1, Ordering::Relaxed);
}

/// Trims the heap every [`PERIOD`] in which calls ran and none is running now. Runs until the
/// runtime it is spawned on ends.
pub async fn trim_when_idle() {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if RUNNING.load(Ordering::Relaxed) == 0 && USED.swap(false, Ordering::Relaxed) {
            // Walks every arena (milliseconds at most): off the async workers.
            let _ = tokio::task::spawn_blocking(release_free).await;
        }
    }
}

/// Returns free heap memory to the system (glibc's `malloc_trim`; a no-op elsewhere).
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only takes glibc's allocator locks; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}
