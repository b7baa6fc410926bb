//! strata-differ: containerd's `containerd.services.diff.v1.Diff` API: Apply unpacks tar layers
//! into mounts, Diff turns two mount sets into a layer in the content store.
//!
//! - [`media`]: which layer media types are applied, and their compression;
//! - [`fetch`]: the blob read through a content service, and the namespace to read it in;
//! - [`target`]: where to write, from the mounts (upperdir, bind source, or a temp mount);
//! - [`resolve`], [`unpack`], [`whiteout`]: tar entries written inside the root, never out;
//! - [`apply`]: the pipeline tying them together ([`Applier`]);
//! - [`changes`], [`layer`], [`compress`], [`upload`]: what changed between two trees, as a
//!   deterministic tar, compressed on every core, written through a content service;
//! - [`blob_file`]: or written straight into the store's directory, then only recorded
//!   through the content service;
//! - [`compare`]: the Diff pipeline tying those together ([`Comparer`]);
//! - [`service`]: the gRPC adaptor.

pub mod apply;
pub mod blob_file;
pub mod changes;
pub mod compare;
pub mod compress;
pub mod config;
pub mod copy_up;
pub mod fetch;
pub mod inflate;
pub mod layer;
pub mod media;
pub mod metrics;
pub mod read_full;
pub mod resolve;
pub mod service;
pub mod target;
pub mod unpack;
pub mod upload;
pub mod whiteout;

#[cfg(test)]
mod diff_tests;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;

pub use apply::{Applied, Applier, apply_reader};
pub use compare::{Compared, Comparer};
pub use fetch::Fetcher;
pub use service::DiffService;
pub use upload::Uploader;

/// The gRPC service name containerd's proxy plugin calls.
pub const SERVICE_NAME: &str = "containerd.services.diff.v1.Diff";
