//! OCI image archives (index.json, oci-layout, blobs/sha256/...) that `ctr images import` accepts.

use std::path::Path;

/// A built image: its layers, config and manifest, ready to be written as an archive.
pub struct Image {
    /// The reference `ctr images import` registers, e.g. `strata.test/busybox:latest`.
    pub name: String,
}

impl Image {
    /// Writes the image as an OCI archive (a tar) at `path`.
    pub fn write_archive(&self, _path: &Path) -> std::io::Result<()> {
        todo!("testkit helper implements this")
    }
}
