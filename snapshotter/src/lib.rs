//! strata-snapshotter: containerd's `containerd.services.snapshots.v1.Snapshots` API served
//! from overlayfs snapshots with metadata in SQLite.
//!
//! - [`snapshotter::Snapshotter`]: the core (plain Rust types, blocking);
//! - [`service::Service`]: the gRPC adaptor containerd's proxy plugin talks to;
//! - [`metadata`], [`layout`], [`mounts`], [`usage`], [`probe`], [`copy`], [`idmap`], [`quota`]: its parts.

pub mod config;
pub mod copy;
pub mod idmap;
pub mod layout;
pub mod metadata;
pub mod metrics;
pub mod mounts;
pub mod probe;
pub mod quota;
pub mod service;
pub mod snapshotter;
pub mod usage;

pub use metadata::{Info, Kind, Usage};
pub use mounts::Mount;
pub use service::Service;
pub use snapshotter::Snapshotter;

/// The gRPC service name containerd's proxy plugin calls.
pub const SERVICE_NAME: &str = "containerd.services.snapshots.v1.Snapshots";
