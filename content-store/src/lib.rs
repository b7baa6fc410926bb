//! strata-content: containerd's `containerd.services.content.v1.Content` API over a pluggable
//! blob backend (local disk by default).

pub mod config;

/// The gRPC service name containerd's proxy plugin calls.
pub const SERVICE_NAME: &str = "containerd.services.content.v1.Content";
