//! Bounded polling: every wait in a test ends, with an error naming what never happened.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How often [`until`] polls.
pub const POLL: Duration = Duration::from_millis(100);

/// Polls `done` every [`POLL`] until it holds; an error naming `what` after `timeout`.
pub fn until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() >= timeout {
            return Err(Error::new(format!(
                "timed out after {timeout:?} waiting for {what}"
            )));
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}
