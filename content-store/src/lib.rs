//! strata-content: containerd's `containerd.services.content.v1.Content` API over a pluggable
//! blob backend (local disk by default).
//!
//! - [`store::ContentStore`]: the store, in plain Rust types;
//! - [`backend::BlobBackend`]: where committed blobs live ([`backend::LocalBackend`]);
//! - [`ingest`]: resumable, per-ref-locked writes; [`metadata`]: labels and times in SQLite;
//! - [`service::ContentService`]: the gRPC adaptor containerd's proxy plugin talks to.

pub mod append;
pub mod backend;
pub mod config;
pub mod digest;
pub mod ingest;
pub mod metadata;
pub mod metrics;
pub mod service;
pub mod sqlite;
pub mod store;
pub mod time;

pub use digest::Digest;
pub use service::ContentService;
pub use store::{ContentStore, ContentWriter, Info};

/// The gRPC service name containerd's proxy plugin calls.
pub const SERVICE_NAME: &str = "containerd.services.content.v1.Content";
