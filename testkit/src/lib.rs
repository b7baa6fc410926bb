//! One declarative vocabulary for trees, layers and OCI images in strata's tests (after
//! continuity's `fstest`): describe a tree, build a tar layer from it, wrap layers in an image
//! archive for `ctr images import`, read a directory back and compare two trees.
//!
//! ```no_run
//! use strata_testkit::prelude::*;
//!
//! let changes = tree![file("a/b", "hi"), dir("c", 0o755), symlink("d", "../x")];
//! let layer = Layer::new(changes.clone(), Compression::Gzip)?;
//! let image = ImageBuilder::new("localhost/test/one:latest").layer(layer).build()?;
//! image.write_archive(std::path::Path::new("/tmp/one.tar"))?;
//!
//! let dir = std::path::Path::new("/tmp/unpacked");
//! apply(dir, &changes)?;
//! assert_trees_equal(&Tree::from_changes(&changes)?, &snapshot(dir)?);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! End-to-end tests compare what containerd unpacked with what the image should give:
//!
//! ```no_run
//! use strata_testkit::prelude::*;
//! use strata_testkit::fixtures;
//!
//! let image = fixtures::mixed(Compression::Zstd)?;
//! image.write_archive(std::path::Path::new("/tmp/mixed.tar"))?; // then `ctr images import`
//! let rootfs = std::path::Path::new("/run/test/rootfs"); // the mounted snapshot
//! assert_trees_equal(&image.expected_tree()?, &snapshot(rootfs)?);
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod fixtures;
pub mod image;
pub mod layer;
mod rng;
mod tarw;
#[cfg(test)]
mod testutil;
pub mod tree;

use sha2::{Digest, Sha256};

pub use tarw::TarFormat;

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// All variants, for tests that loop over them.
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Gzip, Compression::Zstd];

    /// `none`, `gzip` or `zstd` (the names mkimage.py and `strata-mkimage` use).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// The OCI layer media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// The Docker schema 2 layer media type (the zstd one is containerd's extension, Docker
    /// itself has none).
    pub fn docker_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.docker.image.rootfs.diff.tar",
            Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Compression::Zstd => "application/vnd.docker.image.rootfs.diff.tar.zstd",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Compression {
    type Err = std::io::Error;

    fn from_str(s: &str) -> std::io::Result<Self> {
        match s {
            "none" | "plain" | "tar" => Ok(Compression::None),
            "gzip" | "gz" => Ok(Compression::Gzip),
            "zstd" | "zst" => Ok(Compression::Zstd),
            other => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("unknown compression {other:?} (none, gzip, zstd)"),
            )),
        }
    }
}

/// The modification time every entry gets unless it says otherwise (mkimage.py's `MTIME`,
/// 2023-11-14T22:13:20Z): fixed so that the same changes always give the same bytes.
pub const DEFAULT_MTIME: i64 = 1_700_000_000;

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Everything a test usually needs: `use strata_testkit::prelude::*;`.
pub mod prelude {
    pub use crate::Compression;
    pub use crate::image::{Image, ImageBuilder};
    pub use crate::layer::{Layer, RawEntry, TarOptions};
    pub use crate::tree;
    pub use crate::tree::{
        Change, Compare, Content, SnapshotOptions, Tree, apply, assert_trees_equal,
        assert_trees_equal_with, block_dev, char_dev, chmod, dir, fifo, file, file_mode, hardlink,
        mtime, opaque, owner, remove, snapshot, snapshot_with, symlink, xattr,
    };
}
