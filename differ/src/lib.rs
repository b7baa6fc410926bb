//! strata-differ: containerd's `containerd.services.diff.v1.Diff` API: Apply unpacks tar layers
//! into mounts, Diff turns two mount sets into a layer in the content store (not yet: answers
//! Unimplemented, so containerd falls through to its walking differ).
//!
//! - [`media`]: which layer media types are applied, and their compression;
//! - [`fetch`]: the blob read through a content service, and the namespace to read it in;
//! - [`target`]: where to write, from the mounts (upperdir, bind source, or a temp mount);
//! - [`resolve`], [`unpack`], [`whiteout`]: tar entries written inside the root, never out;
//! - [`apply`]: the pipeline tying them together ([`Applier`]);
//! - [`service`]: the gRPC adaptor.

pub mod apply;
pub mod config;
pub mod fetch;
pub mod media;
pub mod resolve;
pub mod service;
pub mod target;
pub mod unpack;
pub mod whiteout;

#[cfg(test)]
mod tests;

pub use apply::{Applied, Applier, apply_reader};
pub use fetch::Fetcher;
pub use service::DiffService;

/// The gRPC service name containerd's proxy plugin calls.
pub const SERVICE_NAME: &str = "containerd.services.diff.v1.Diff";
