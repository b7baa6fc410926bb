//! strata-differ: containerd's `containerd.services.diff.v1.Diff` API: Apply unpacks tar layers
//! into mounts, Diff turns two mount sets into a layer in the content store. One folder per
//! data path:
//!
//! - [`apply`]: the Apply pipeline ([`Applier`]): [`apply::fetch`] reads the blob through a
//!   content service or from the store's directory, [`apply::inflate`] decompresses,
//!   [`apply::target`] decides where to write from the mounts, [`apply::unpack`] writes the
//!   entries inside the root (with [`apply::copy_up`] for links into lower layers);
//! - [`diff`]: the Diff pipeline ([`Comparer`]): [`diff::changes`] finds what changed between
//!   two trees, [`diff::layer`] writes it as a deterministic tar, [`diff::compress`] compresses
//!   on every core, [`diff::upload`] writes it through a content service or
//!   [`diff::blob_file`] straight into the store's directory;
//! - shared by both: [`media`] (media types and compression), [`resolve`] (paths inside a
//!   root), [`whiteout`] (OCI and overlay markers), [`read_full`], [`config`], [`metrics`],
//!   and [`service`], the gRPC adaptor.

pub mod apply;
pub mod config;
pub mod diff;
pub mod media;
pub mod metrics;
pub mod read_full;
pub mod resolve;
pub mod service;
pub mod whiteout;

pub use apply::fetch::Fetcher;
pub use apply::{Applied, Applier, apply_reader};
pub use diff::compare::{Compared, Comparer};
pub use diff::upload::Uploader;
pub use service::DiffService;

/// The gRPC service name containerd's proxy plugin calls.
pub const SERVICE_NAME: &str = "containerd.services.diff.v1.Diff";
