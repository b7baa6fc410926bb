//! What the three strata plugins share: serving a unix socket with graceful shutdown, config
//! and flags, tracing, the error type and its containerd (errdefs) gRPC codes, request
//! namespaces and leases, containerd's filter language and update field paths.

pub mod app;
pub mod cli;
pub mod client;
pub mod crashpoint;
pub mod error;
pub mod fieldpath;
pub mod filter;
pub mod memory;
pub mod metrics;
pub mod mount;
pub mod namespace;
pub mod publish;
pub mod rpc;
pub mod serve;
pub mod telemetry;
pub mod time;
pub mod writeback;

pub use error::{Error, Result};

/// What `--version` prints after a binary's name: the crate version and the git commit it was
/// built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("STRATA_GIT_COMMIT"),
    ")"
);
