//! One declarative vocabulary for trees, layers and OCI images in strata's tests (after
//! continuity's `fstest`): describe a tree, build a tar layer from it, wrap layers in an image
//! archive for `ctr images import`, read a directory back and compare two trees.

pub mod fixtures;
pub mod image;
pub mod layer;
pub mod tree;

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}
