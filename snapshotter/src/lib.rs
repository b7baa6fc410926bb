//! strata-snapshotter: containerd's `containerd.services.snapshots.v1.Snapshots` API served
//! from overlayfs snapshots with metadata in SQLite.

pub mod config;

/// The gRPC service name containerd's proxy plugin calls.
pub const SERVICE_NAME: &str = "containerd.services.snapshots.v1.Snapshots";
