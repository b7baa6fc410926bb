//! What overlayfs does before a hard link to a lower layer's file, done by hand: strata
//! writes an overlay snapshot's upperdir directly, where containerd applies onto the mounted
//! overlay and the kernel copies the target up (data, owner, xattrs, mode, times) into the
//! upperdir, so that both names share one upper inode.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use tracing::warn;

use crate::resolve::{self, Follow, RelPath, Root};
use crate::whiteout::{TRUSTED_OPAQUE, USER_OPAQUE};

/// An overlay whiteout: a character device numbered 0/0.
fn is_whiteout(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

fn is_opaque(dir: RawFd) -> bool {
    let Ok(path) = resolve::proc_path(dir, b"") else {
        return false;
    };
    // `/proc/self/fd/N` links to the directory: followed.
    [TRUSTED_OPAQUE, USER_OPAQUE]
        .iter()
        .any(|x| resolve::get_xattr_of(&path, x.as_bytes(), Follow::Yes).is_ok_and(|v| v == b"y"))
}

/// Whether `name` in `dir` of the upperdir hides the lowers: there (a whiteout counts as
/// "deleted": nothing to link to, in the upper or below).
pub enum Upper {
    Present,
    WhitedOut,
    Absent,
}

pub fn in_upper(root: &Root, parent: &RelPath, name: &[u8]) -> io::Result<Upper> {
    let dir = match root.open_dir(parent) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Upper::Absent),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(Upper::WhitedOut),
        Err(e) => return Err(e),
    };
    Ok(match resolve::lstat_at(dir.as_raw_fd(), name)? {
        Some(st) if is_whiteout(&st) => Upper::WhitedOut,
        Some(_) => Upper::Present,
        None if is_opaque(dir.as_raw_fd()) => Upper::WhitedOut,
        None => Upper::Absent,
    })
}

/// The file the merged view shows at `parent/name` from `lowers` (highest first): its
/// directory and its stat. `None` when a layer deletes it (a whiteout, a parent that is not
/// a directory there, or an opaque one hiding the layers below) before one has it.
pub fn find_in_lowers(
    lowers: &[Root],
    parent: &RelPath,
    name: &[u8],
) -> io::Result<Option<(OwnedFd, libc::stat)>> {
    for lower in lowers {
        let shadow = shadow_of(lower, parent)?;
        if let Shadow::Deleted = shadow {
            return Ok(None);
        }
        if let Ok(dir) = lower.open_dir(parent) {
            match resolve::lstat_at(dir.as_raw_fd(), name)? {
                Some(st) if is_whiteout(&st) => return Ok(None),
                Some(st) => return Ok(Some((dir, st))),
                None => {}
            }
        }
        if let Shadow::Opaque = shadow {
            return Ok(None);
        }
    }
    Ok(None)
}

/// What `lower` does to the path `parent` for itself and the layers below it.
enum Shadow {
    /// Nothing: the layers below show through.
    Through,
    /// A directory on the path is opaque: the layers below are hidden.
    Opaque,
    /// A whiteout or a non-directory on the path: the path is gone from here down.
    Deleted,
}

fn shadow_of(lower: &Root, parent: &RelPath) -> io::Result<Shadow> {
    let parts = parent.components();
    let mut opaque = false;
    for depth in 0..=parts.len() {
        let dir = match lower.open_dir(&parent.prefix(depth)) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(Shadow::Deleted),
            Err(e) => return Err(e),
        };
        opaque |= depth > 0 && is_opaque(dir.as_raw_fd());
        let Some(name) = parts.get(depth) else { break };
        match resolve::lstat_at(dir.as_raw_fd(), name)? {
            Some(st) if is_whiteout(&st) || !resolve::is_dir(&st) => return Ok(Shadow::Deleted),
            Some(_) => {}
            None => break,
        }
    }
    Ok(if opaque {
        Shadow::Opaque
    } else {
        Shadow::Through
    })
}

/// Copies `name` (stat `st`) from the lower directory `from` to the upper directory `to`,
/// with its owner, xattrs (but overlay's own), mode and times, as overlayfs copies up.
pub fn copy_up(from: RawFd, st: &libc::stat, to: RawFd, name: &[u8]) -> io::Result<()> {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => {
            let src = resolve::openat_nofollow(from, name, libc::O_RDONLY, 0)?;
            let dst = resolve::openat_nofollow(
                to,
                name,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                0o600,
            )?;
            io::copy(&mut File::from(src), &mut File::from(dst))?;
        }
        libc::S_IFLNK => resolve::symlink_at(&resolve::readlink_at(from, name)?, to, name)?,
        libc::S_IFDIR => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a hard link cannot name a directory",
            ));
        }
        _ => resolve::mknod_at(to, name, st.st_mode, st.st_rdev)?,
    }
    resolve::lchown_at(to, name, st.st_uid, st.st_gid)?;
    let lpath = resolve::proc_path(from, name)?;
    for key in resolve::list_xattrs_of(&lpath, Follow::No)? {
        if key.starts_with(b"trusted.overlay.") || key.starts_with(b"user.overlay.") {
            continue;
        }
        let value = resolve::get_xattr_of(&lpath, &key, Follow::No)?;
        let Ok(key) = String::from_utf8(key) else {
            continue;
        };
        // Best effort, as overlayfs's own copy-up of xattrs the upper fs refuses.
        if let Err(e) = resolve::lsetxattr_at(to, name, &key, &value) {
            warn!(xattr = %key, error = %e, "xattr not copied up from lower");
        }
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
        resolve::chmod_at(to, name, st.st_mode & 0o7777)?;
    }
    resolve::utimes_at(
        to,
        name,
        (st.st_atime, st.st_atime_nsec as u32),
        (st.st_mtime, st.st_mtime_nsec as u32),
    )
}
