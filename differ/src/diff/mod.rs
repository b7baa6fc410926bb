//! Diff: two mount sets to a layer in the content store ([`compare`] ties the stages
//! together). The blob goes through the content service ([`upload`]) or, with the store's
//! directory at hand, straight into it ([`blob_file`]) and is then only recorded.

use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

pub mod blob_file;
pub mod changes;
pub mod compare;
pub mod compress;
pub mod layer;
pub mod upload;

#[cfg(test)]
mod tests;

/// A name nothing else uses: time, process and a random part (ingest refs, temporary files).
pub fn unique_id(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(nanos);
    format!(
        "{prefix}-{nanos}-{}-{:06x}",
        std::process::id(),
        h.finish() & 0xff_ffff
    )
}
