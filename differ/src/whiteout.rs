//! OCI whiteouts (`.wh.<name>`, `.wh..wh..opq`) and what they become on each kind of target.
//!
//! On a plain directory they delete (containerd's naive applier); in an overlay upperdir they
//! become overlayfs's own markers (containerd's `OverlayConvertWhiteout`): a 0/0 character
//! device for a deleted path, the `overlay.opaque` xattr for an opaque directory, because the
//! lower directories they hide are not in the upperdir to be deleted.

use std::io;
use std::os::fd::RawFd;

use strata_common::error::{Error, Result};

use crate::resolve;

pub const PREFIX: &[u8] = b".wh.";
pub const OPAQUE: &[u8] = b".wh..wh..opq";

/// What a whiteout entry asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Marker<'a> {
    /// Hide everything the layers below have in the parent directory.
    Opaque,
    /// Delete this name in the parent directory.
    Remove(&'a [u8]),
}

/// `None` for an ordinary name; an error for whiteouts naming something other than a child of
/// their directory (`.wh.`, `.wh..`, `.wh...`: containerd's `validateWhiteout`).
pub fn classify(base: &[u8]) -> Result<Option<Marker<'_>>> {
    if base == OPAQUE {
        return Ok(Some(Marker::Opaque));
    }
    let Some(hidden) = base.strip_prefix(PREFIX) else {
        return Ok(None);
    };
    if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
        return Err(Error::invalid_argument(format!(
            "invalid whiteout name {:?}",
            String::from_utf8_lossy(base)
        )));
    }
    Ok(Some(Marker::Remove(hidden)))
}

/// How whiteouts are written on a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Delete what they name (a bind mount or a mounted tree).
    Oci,
    /// Write overlayfs markers into an upperdir; `opaque_xattr` is `trusted.overlay.opaque`, or
    /// `user.overlay.opaque` for an overlay mounted with `userxattr`.
    Overlay { opaque_xattr: &'static str },
}

pub const TRUSTED_OPAQUE: &str = "trusted.overlay.opaque";
pub const USER_OPAQUE: &str = "user.overlay.opaque";

/// An overlay whiteout for `name` in `dir`: a 0/0 character device owned like the tar entry.
pub fn overlay_remove(dir: RawFd, name: &[u8], uid: u32, gid: u32) -> io::Result<()> {
    resolve::remove_all_at(dir, name)?;
    resolve::mknod_at(dir, name, libc::S_IFCHR, 0)?;
    resolve::lchown_at(dir, name, uid, gid)
}

/// Marks the directory `dir` (an fd opened for reading) opaque for overlayfs.
pub fn overlay_opaque(dir: RawFd, xattr: &str) -> io::Result<()> {
    resolve::fsetxattr(dir, xattr, b"y")
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_common::error::ErrorKind;

    #[test]
    fn names() {
        assert_eq!(classify(b"a").unwrap(), None);
        assert_eq!(classify(b".whx").unwrap(), None);
        assert_eq!(classify(OPAQUE).unwrap(), Some(Marker::Opaque));
        assert_eq!(classify(b".wh.a").unwrap(), Some(Marker::Remove(b"a")));
        assert_eq!(
            classify(b".wh..wh.plnk").unwrap(),
            Some(Marker::Remove(b".wh.plnk"))
        );
        for bad in [&b".wh."[..], b".wh..", b".wh..."] {
            assert_eq!(
                classify(bad).unwrap_err().kind(),
                ErrorKind::InvalidArgument,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
