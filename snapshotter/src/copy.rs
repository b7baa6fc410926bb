//! A full copy of a snapshot's tree for the `native` mode (containerd's native snapshotter
//! copies the parent with `continuity/fs.CopyDir`): contents, modes, owners, timestamps,
//! extended attributes, symlinks, device nodes and fifos, and hardlinks kept as hardlinks.
//!
//! The same copy, with owners shifted by an id map, is the lower layer of id-mapped snapshots
//! when `remap_method` copies ([`copy_dir_shifted`]).

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::idmap::{IdMap, IdMapError};

/// The xattr holding a file's capabilities, whose root uid a shifted copy maps too.
const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// Why a shifted copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// A file's owner is outside the mapping: containerd's client refuses to chown it too.
    #[error("{}: {source}", path.display())]
    Unmapped { path: PathBuf, source: IdMapError },
    #[error("{}: {why}", path.display())]
    Capability { path: PathBuf, why: String },
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> CopyError + '_ {
    move |source| CopyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Copies the contents of `src` into the existing directory `dst` and gives `dst` the
/// metadata of `src`.
pub fn copy_dir(src: &Path, dst: &Path) -> io::Result<()> {
    copy_tree(src, dst, None).map_err(|e| match e {
        CopyError::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    })
}

/// [`copy_dir`] with every owner shifted to the host ids `map` gives it, exactly as
/// containerd's client chowns its copy of an image (`remapRootFS`): an owner outside the map
/// fails the copy, set-id bits stay, and file capabilities are rooted at the mapped root.
/// `src` must not change meanwhile; it is never written.
pub fn copy_dir_shifted(src: &Path, dst: &Path, map: &IdMap) -> Result<(), CopyError> {
    copy_tree(src, dst, Some(map))
}

fn copy_tree(src: &Path, dst: &Path, map: Option<&IdMap>) -> Result<(), CopyError> {
    let mut links: HashMap<(u64, u64), std::path::PathBuf> = HashMap::new();
    let mut dirs = Vec::new();
    for entry in walkdir::WalkDir::new(src)
        .follow_links(false)
        .same_file_system(true)
    {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(src).to_path_buf();
            CopyError::Io {
                path,
                source: io::Error::from(e),
            }
        })?;
        let from = entry.path();
        let rel = from
            .strip_prefix(src)
            .map_err(|e| at(from)(io::Error::other(e.to_string())))?;
        let to = dst.join(rel);
        let md = from.symlink_metadata().map_err(at(from))?;
        let owner = match map {
            Some(m) => m
                .to_host(md.uid(), md.gid())
                .map_err(|source| CopyError::Unmapped {
                    path: Path::new("/").join(rel),
                    source,
                })?,
            None => (md.uid(), md.gid()),
        };
        let ft = md.file_type();
        if ft.is_dir() {
            if !rel.as_os_str().is_empty() {
                std::fs::create_dir(&to).map_err(at(&to))?;
            }
            // Directory metadata last: a read-only dir must stay writable while filled, and
            // its mtime changes as entries arrive.
            dirs.push((from.to_path_buf(), to, md, owner));
            continue;
        }
        if md.nlink() > 1 && !ft.is_dir() {
            if let Some(first) = links.get(&(md.dev(), md.ino())) {
                std::fs::hard_link(first, &to).map_err(at(&to))?;
                continue;
            }
            links.insert((md.dev(), md.ino()), to.clone());
        }
        (|| {
            if ft.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(from)?, &to)
            } else if ft.is_file() {
                let mut r = open_source(from)?;
                let mut w = std::fs::File::create(&to)?;
                io::copy(&mut r, &mut w).map(drop)
            } else {
                let c = cpath(&to)?;
                // SAFETY: mknod on a NUL-terminated path we own.
                if unsafe { libc::mknod(c.as_ptr(), md.mode(), md.rdev()) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
        })()
        .map_err(at(&to))?;
        apply_metadata(from, &to, &md, owner, map)?;
    }
    for (from, to, md, owner) in dirs.into_iter().rev() {
        apply_metadata(&from, &to, &md, owner, map)?;
    }
    Ok(())
}

/// Opens a file to copy without touching its access time: the layers being copied are shared
/// and are not to change, not even there. Without the right to (O_NOATIME needs the owner or
/// CAP_FOWNER), a plain open.
fn open_source(p: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(p)
    {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => std::fs::File::open(p),
        other => other,
    }
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn apply_metadata(
    from: &Path,
    to: &Path,
    md: &std::fs::Metadata,
    (uid, gid): (u32, u32),
    map: Option<&IdMap>,
) -> Result<(), CopyError> {
    // Owner first: chown clears set-id bits and file capabilities, which follow.
    std::os::unix::fs::lchown(to, Some(uid), Some(gid)).map_err(at(to))?;
    copy_xattrs(from, to, map)?;
    if !md.file_type().is_symlink() {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(at(to))?;
    }
    set_times(to, md).map_err(at(to))
}

fn set_times(to: &Path, md: &std::fs::Metadata) -> io::Result<()> {
    let times = [
        libc::timespec {
            tv_sec: md.atime(),
            tv_nsec: md.atime_nsec(),
        },
        libc::timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec(),
        },
    ];
    let c = cpath(to)?;
    // SAFETY: valid path and a two-element timespec array.
    if unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn copy_xattrs(from: &Path, to: &Path, map: Option<&IdMap>) -> Result<(), CopyError> {
    copy_xattrs_io(from, to, map).map_err(|e| match e {
        XattrError::Io(source) => CopyError::Io {
            path: from.to_path_buf(),
            source,
        },
        XattrError::Capability(why) => CopyError::Capability {
            path: from.to_path_buf(),
            why,
        },
    })
}

enum XattrError {
    Io(io::Error),
    Capability(String),
}

impl From<io::Error> for XattrError {
    fn from(e: io::Error) -> Self {
        XattrError::Io(e)
    }
}

fn copy_xattrs_io(from: &Path, to: &Path, map: Option<&IdMap>) -> Result<(), XattrError> {
    let cf = cpath(from)?;
    let ct = cpath(to)?;
    // SAFETY: size query with a null buffer.
    let len = unsafe { libc::llistxattr(cf.as_ptr(), std::ptr::null_mut(), 0) };
    if len <= 0 {
        return Ok(());
    }
    let mut names = vec![0u8; usize::try_from(len).unwrap_or(0)];
    // SAFETY: buffer of the size just reported.
    let len = unsafe { libc::llistxattr(cf.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if len < 0 {
        return Err(io::Error::last_os_error().into());
    }
    names.truncate(usize::try_from(len).unwrap_or(0));
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: size query.
        let vlen = unsafe { libc::lgetxattr(cf.as_ptr(), cn.as_ptr(), std::ptr::null_mut(), 0) };
        if vlen < 0 {
            return Err(io::Error::last_os_error().into());
        }
        let mut value = vec![0u8; usize::try_from(vlen).unwrap_or(0)];
        // SAFETY: buffer of the size just reported.
        let vlen = unsafe {
            libc::lgetxattr(
                cf.as_ptr(),
                cn.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if vlen < 0 {
            return Err(io::Error::last_os_error().into());
        }
        value.truncate(usize::try_from(vlen).unwrap_or(0));
        if let Some(m) = map
            && name == CAPABILITY_XATTR
        {
            match m
                .shift_file_capability(&value)
                .map_err(XattrError::Capability)?
            {
                Some(v) => value = v,
                None => continue,
            }
        }
        // SAFETY: valid name and value buffer.
        if unsafe {
            libc::lsetxattr(
                ct.as_ptr(),
                cn.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        } != 0
        {
            return Err(io::Error::last_os_error().into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn copies_everything_containerds_native_copy_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&dst).unwrap();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o751)).unwrap();
        std::fs::create_dir(src.join("ro")).unwrap();
        std::fs::write(src.join("ro/f"), b"hello").unwrap();
        std::fs::set_permissions(src.join("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
        std::fs::write(src.join("a"), b"data").unwrap();
        // chown clears set-id bits, so the mode goes on after it.
        std::os::unix::fs::lchown(src.join("a"), Some(1234), Some(5678)).unwrap();
        std::fs::set_permissions(src.join("a"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::hard_link(src.join("a"), src.join("b")).unwrap();
        std::os::unix::fs::symlink("a", src.join("s")).unwrap();
        nix::unistd::mkfifo(
            &src.join("p"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .unwrap();
        let ca = cpath(&src.join("a")).unwrap();
        let n = CString::new("user.k").unwrap();
        // SAFETY: test setup with valid buffers.
        assert_eq!(
            unsafe { libc::lsetxattr(ca.as_ptr(), n.as_ptr(), b"v".as_ptr().cast(), 1, 0) },
            0
        );

        copy_dir(&src, &dst).unwrap();

        let md = |p: &str| std::fs::symlink_metadata(dst.join(p)).unwrap();
        assert_eq!(md("").mode() & 0o7777, 0o751);
        assert_eq!(md("ro").mode() & 0o7777, 0o555);
        assert_eq!(std::fs::read(dst.join("ro/f")).unwrap(), b"hello");
        assert_eq!(md("a").mode() & 0o7777, 0o4755);
        assert_eq!((md("a").uid(), md("a").gid()), (1234, 5678));
        assert_eq!(md("a").ino(), md("b").ino(), "hardlink kept");
        assert_eq!(std::fs::read_link(dst.join("s")).unwrap(), Path::new("a"));
        assert!(md("p").file_type().is_fifo());
        assert_eq!(
            md("a").mtime(),
            std::fs::metadata(src.join("a")).unwrap().mtime()
        );
        let cd = cpath(&dst.join("a")).unwrap();
        let mut buf = [0u8; 8];
        // SAFETY: valid buffers.
        let l =
            unsafe { libc::lgetxattr(cd.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(&buf[..usize::try_from(l).unwrap()], b"v");
    }
}
