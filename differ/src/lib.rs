//! strata-differ: containerd's `containerd.services.diff.v1.Diff` API: Apply unpacks tar layers
//! into mounts, Diff turns two mount sets into a layer in the content store.

pub mod config;

/// The gRPC service name containerd's proxy plugin calls.
pub const SERVICE_NAME: &str = "containerd.services.diff.v1.Diff";
