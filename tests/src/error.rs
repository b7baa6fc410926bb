//! One error type for the harness: a human-readable message that already carries the context
//! (command, exit status, log tails) a failing test needs to print.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Error(String);

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(msg: impl Into<String>) -> Self {
        Error(msg.into())
    }

    /// An I/O error with what was being done when it happened.
    pub fn io(context: impl fmt::Display, err: std::io::Error) -> Self {
        Error(format!("{context}: {err}"))
    }

    pub fn message(&self) -> &str {
        &self.0
    }

    /// This error with more text after it, e.g. log tails gathered by the caller.
    pub fn with_details(self, details: impl fmt::Display) -> Self {
        Error(format!("{}\n{details}", self.0))
    }
}

// `unwrap()`/`expect()` in tests print Debug: keep it the plain multi-line message so log
// tails stay readable instead of becoming one escaped string.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}
