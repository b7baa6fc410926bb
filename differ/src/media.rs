//! Layer media types: which ones strata applies and how each is compressed.
//!
//! Anything not listed (encrypted layers, foreign formats) is Unimplemented, the answer that
//! makes containerd's diff service try the next differ in its chain.

use strata_common::error::{Error, Result};

/// The media type of an uncompressed OCI layer, what `ApplyResponse.applied` carries.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// Docker's plain-tar types: containerd detects gzip or zstd by magic number because
    /// some producers compressed without saying so.
    Detect,
}

/// What the first bytes of a blob say it is compressed with.
pub fn detect(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b, 0x08]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// The compression of a layer of `media_type`, or Unimplemented when strata does not apply it.
pub fn compression_of(media_type: &str) -> Result<Compression> {
    // Parameters (`;foo=bar`) are not part of the type proper.
    let base = media_type.split(';').next().unwrap_or("").trim();
    let c = match base {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Compression::None,
        "application/vnd.docker.image.rootfs.diff.tar"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar" => Compression::Detect,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
        _ => {
            return Err(Error::unimplemented(format!(
                "strata-differ does not apply media type {media_type:?}"
            )));
        }
    };
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_common::error::ErrorKind;
    use strata_testkit::Compression as Tk;

    fn ours(c: Tk) -> Compression {
        match c {
            Tk::None => Compression::None,
            Tk::Gzip => Compression::Gzip,
            Tk::Zstd => Compression::Zstd,
        }
    }

    #[test]
    fn oci_and_docker_names() {
        for c in Tk::ALL {
            assert_eq!(compression_of(c.media_type()).unwrap(), ours(c), "{c}");
            let docker = if c == Tk::None {
                Compression::Detect
            } else {
                ours(c)
            };
            assert_eq!(
                compression_of(c.docker_media_type()).unwrap(),
                docker,
                "{c}"
            );
            let blob = strata_testkit::layer::compress(b"x", c).unwrap();
            assert_eq!(detect(&blob), ours(c), "{c}");
        }
        assert_eq!(
            compression_of("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip").unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            compression_of("application/vnd.oci.image.layer.v1.tar+zstd; x=y").unwrap(),
            Compression::Zstd
        );
    }

    #[test]
    fn others_fall_through() {
        for m in [
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            "application/vnd.oci.image.layer.v1.tar+encrypted",
            "application/vnd.oci.image.layer.v1.tar+bzip2",
            "application/octet-stream",
            "",
        ] {
            let e = compression_of(m).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unimplemented, "{m}");
        }
    }
}
