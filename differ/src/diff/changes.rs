//! What changed between two trees, in the order a layer lists it (containerd's continuity
//! `fs.Changes` order: names sorted bytewise within a directory, a directory before its
//! children).
//!
//! Two ways to find out:
//! - [`double_walk`]: walk the lower and the upper tree side by side (continuity's
//!   `doubleWalkDiff`); works for any pair of trees.
//! - [`overlay_upper`]: walk only an overlay upperdir, turning overlay whiteouts and opaque
//!   directories into deletions (an opaque directory's own subtree is compared in full), and checking each entry against the lower tree so that a
//!   copy-up that changed nothing is not reported (BuildKit's guard). Both give the same list
//!   for the same trees, so the layer does not depend on which one ran.
//!
//! "Same" is continuity's `sameFile`: equal mode, owner and device number, equal
//! `security.capability`; for non-directories also equal size and mtime (to the nanosecond,
//! or when both have zero nanoseconds, as archives truncate them, equal content).

use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::read_full;
use crate::resolve::{self, Follow};

/// The extended attribute a layer carries (containerd's walking differ carries only this one).
pub const CAPABILITY: &[u8] = b"security.capability";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Add,
    Modify,
    /// Unchanged, listed only because it is hardlinked: if another name of its inode changed,
    /// this name must be written as a link to it.
    Unmodified,
    /// Deleted (a `.wh.<name>` whiteout).
    Delete,
}

#[derive(Clone, Debug)]
pub struct Change {
    pub kind: Kind,
    /// Relative to the root, without a leading `/`.
    pub path: PathBuf,
    /// The upper tree's entry (none for [`Kind::Delete`]).
    pub meta: Option<Metadata>,
}

impl Change {
    fn new(kind: Kind, path: PathBuf, meta: Option<Metadata>) -> Change {
        Change { kind, path, meta }
    }
}

/// Why [`overlay_upper`] could not answer.
#[derive(Debug)]
pub enum OverlayError {
    /// The upperdir uses overlay features the walk cannot read (renamed directories,
    /// metadata-only copy-ups): the caller must compare the merged trees instead.
    Unsupported(String),
    Io(io::Error),
}

impl From<io::Error> for OverlayError {
    fn from(e: io::Error) -> Self {
        OverlayError::Io(e)
    }
}

/// The changes from `lower` to `upper`. `lower` is `None` when the upper tree has no parent:
/// everything in it is added.
pub fn double_walk(lower: Option<&Path>, upper: &Path) -> io::Result<Vec<Change>> {
    let mut out = Vec::new();
    double_walk_into(lower, upper, &mut |c| {
        out.push(c);
        Ok(())
    })?;
    Ok(out)
}

/// [`double_walk`], handing each change to `emit` as it is found (memory does not grow with
/// the number of changes).
pub fn double_walk_into(lower: Option<&Path>, upper: &Path, emit: &mut Emit<'_>) -> io::Result<()> {
    walk_pair(lower, upper, Path::new(""), false, emit)
}

/// Where changes go, in layer order.
pub type Emit<'a> = dyn FnMut(Change) -> io::Result<()> + 'a;

/// `in_upperdir`: `upper_root` is an overlay upperdir (under an opaque directory), whose
/// whiteouts are not entries.
fn walk_pair(
    lower_root: Option<&Path>,
    upper_root: &Path,
    rel: &Path,
    in_upperdir: bool,
    out: &mut Emit<'_>,
) -> io::Result<()> {
    let mut upper_names = sorted_names(&upper_root.join(rel))?;
    if in_upperdir {
        let mut kept = Vec::with_capacity(upper_names.len());
        for n in upper_names {
            if !is_overlay_whiteout(&fs::symlink_metadata(upper_root.join(rel).join(&n))?) {
                kept.push(n);
            }
        }
        upper_names = kept;
    }
    let lower_names = match lower_root {
        Some(l) => sorted_names(&l.join(rel))?,
        None => Vec::new(),
    };
    let (mut i, mut j) = (0, 0);
    while i < lower_names.len() || j < upper_names.len() {
        let order = match (lower_names.get(i), upper_names.get(j)) {
            (Some(l), Some(u)) => l.as_bytes().cmp(u.as_bytes()),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                // Only in the lower tree. A deleted directory's children go with it.
                out(Change::new(Kind::Delete, rel.join(&lower_names[i]), None))?;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let path = rel.join(&upper_names[j]);
                let meta = fs::symlink_metadata(upper_root.join(&path))?;
                let is_dir = meta.is_dir();
                out(Change::new(Kind::Add, path.clone(), Some(meta)))?;
                if is_dir {
                    walk_pair(None, upper_root, &path, in_upperdir, out)?;
                }
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let path = rel.join(&upper_names[j]);
                let (Some(lroot), u) = (lower_root, upper_root.join(&path)) else {
                    unreachable!("names in both trees need a lower tree");
                };
                let l = lroot.join(&path);
                let lmeta = fs::symlink_metadata(&l)?;
                let umeta = fs::symlink_metadata(&u)?;
                let is_dir = umeta.is_dir();
                let lower_dir = lmeta.is_dir();
                push_compared(&path, &l, &lmeta, &u, umeta, out)?;
                if is_dir {
                    // Under a directory that replaced a file, everything is new.
                    let lower = if lower_dir { lower_root } else { None };
                    walk_pair(lower, upper_root, &path, in_upperdir, out)?;
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

/// Lists `path` as an entry present in both trees: a modification unless it is the same
/// file, then only listed when hardlinked.
fn push_compared(
    path: &Path,
    lower: &Path,
    lmeta: &Metadata,
    upper: &Path,
    umeta: Metadata,
    out: &mut Emit<'_>,
) -> io::Result<()> {
    if !same_file(lower, lmeta, upper, &umeta)? {
        out(Change::new(Kind::Modify, path.to_path_buf(), Some(umeta)))?;
    } else if is_linked(&umeta) {
        out(Change::new(
            Kind::Unmodified,
            path.to_path_buf(),
            Some(umeta),
        ))?;
    }
    Ok(())
}

/// The changes an overlay upperdir makes on `lower` (the merged view of the overlay's
/// lowerdirs, or `None` when there are none). `opaque_xattr` is `trusted.overlay.opaque`, or
/// `user.overlay.opaque` for overlays mounted with `userxattr`.
pub fn overlay_upper(
    lower: Option<&Path>,
    upperdir: &Path,
    opaque_xattr: &str,
) -> Result<Vec<Change>, OverlayError> {
    let mut out = Vec::new();
    overlay_upper_into(lower, upperdir, opaque_xattr, &mut |c| {
        out.push(c);
        Ok(())
    })?;
    Ok(out)
}

/// [`overlay_upper`], handing each change to `emit` as it is found. On
/// [`OverlayError::Unsupported`] some changes may have gone out already: the caller starts
/// over with [`double_walk_into`].
pub fn overlay_upper_into(
    lower: Option<&Path>,
    upperdir: &Path,
    opaque_xattr: &str,
    emit: &mut Emit<'_>,
) -> Result<(), OverlayError> {
    let xattrs = OverlayXattrs::new(opaque_xattr);
    walk_upper(lower, upperdir, Path::new(""), &xattrs, emit)
}

struct OverlayXattrs {
    opaque: Vec<u8>,
    /// A renamed directory (`redirect_dir=on`) or a metadata-only copy-up (`metacopy=on`):
    /// the upperdir alone does not say what such an entry holds. (`origin` and `impure`,
    /// which overlay sets on ordinary copy-ups, change nothing for a diff.)
    unreadable: [Vec<u8>; 2],
}

impl OverlayXattrs {
    fn new(opaque: &str) -> OverlayXattrs {
        let prefix = opaque.strip_suffix("opaque").unwrap_or(opaque);
        OverlayXattrs {
            opaque: opaque.as_bytes().to_vec(),
            unreadable: [
                format!("{prefix}redirect").into_bytes(),
                format!("{prefix}metacopy").into_bytes(),
            ],
        }
    }
}

fn walk_upper(
    lower_root: Option<&Path>,
    upperdir: &Path,
    rel: &Path,
    xattrs: &OverlayXattrs,
    out: &mut Emit<'_>,
) -> Result<(), OverlayError> {
    for name in sorted_names(&upperdir.join(rel))? {
        let path = rel.join(&name);
        let u = upperdir.join(&path);
        let umeta = fs::symlink_metadata(&u)?;
        let lower = lower_root.map(|l| l.join(&path));
        let lmeta = match &lower {
            Some(l) => lstat_if_exists(l)?,
            None => None,
        };
        if is_overlay_whiteout(&umeta) {
            // A whiteout of something the lower tree does not have hides nothing.
            if lmeta.is_some() {
                out(Change::new(Kind::Delete, path, None))?;
            }
            continue;
        }
        let mut opaque = false;
        for x in &llist_xattrs(&u)? {
            if *x == xattrs.opaque {
                opaque = umeta.is_dir() && lget_xattr(&u, x)?.as_deref() == Some(b"y");
            } else if xattrs.unreadable.contains(x) {
                return Err(OverlayError::Unsupported(format!(
                    "{} carries {}",
                    path.display(),
                    String::from_utf8_lossy(x)
                )));
            }
        }
        let is_dir = umeta.is_dir();
        match (&lower, &lmeta) {
            (Some(l), Some(lm)) => push_compared(&path, l, lm, &u, umeta, out)?,
            _ => out(Change::new(Kind::Add, path.clone(), Some(umeta)))?,
        }
        if is_dir {
            let lower_is_dir = lmeta.as_ref().is_some_and(Metadata::is_dir);
            if !lower_is_dir {
                // A new directory, or one that replaced a file: all it holds is new.
                walk_upper(None, upperdir, &path, xattrs, out)?;
            } else if opaque {
                // It hides the lower directory: the upperdir's subtree is the whole new
                // content, compared with the lower one as a full walk would (each hidden
                // name a deletion, unchanged names left out), not as one opaque marker, so
                // the layer is the full comparison's to the byte.
                walk_pair(lower_root, upperdir, &path, true, out)?;
            } else {
                walk_upper(lower_root, upperdir, &path, xattrs, out)?;
            }
        }
    }
    Ok(())
}

fn is_overlay_whiteout(m: &Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn lstat_if_exists(p: &Path) -> io::Result<Option<Metadata>> {
    match fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m)),
        // ENOTDIR: a parent is a file in the lower tree.
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn sorted_names(dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    let mut names = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()?;
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// A non-directory with more than one name.
pub fn is_linked(m: &Metadata) -> bool {
    !m.is_dir() && m.nlink() > 1
}

/// continuity's `sameFile`.
pub fn same_file(lower: &Path, lm: &Metadata, upper: &Path, um: &Metadata) -> io::Result<bool> {
    if lm.dev() == um.dev() && lm.ino() == um.ino() {
        return Ok(true);
    }
    if lm.mode() != um.mode() || lm.uid() != um.uid() || lm.gid() != um.gid() {
        return Ok(false);
    }
    if lm.rdev() != um.rdev() {
        return Ok(false);
    }
    if capability(lower)? != capability(upper)? {
        return Ok(false);
    }
    if lm.is_dir() {
        return Ok(true);
    }
    if lm.size() != um.size() || lm.mtime() != um.mtime() {
        return Ok(false);
    }
    let (ln, un) = (lm.mtime_nsec(), um.mtime_nsec());
    if ln == 0 && un == 0 {
        // Possibly truncated by an archive: only the content can tell.
        if lm.file_type().is_symlink() {
            return Ok(fs::read_link(lower)? == fs::read_link(upper)?);
        }
        if lm.is_file() && lm.size() > 0 {
            return same_content(lower, upper);
        }
        return Ok(true);
    }
    Ok(ln == un)
}

/// The `security.capability` of `path` (not following a symlink), if any.
pub fn capability(path: &Path) -> io::Result<Option<Vec<u8>>> {
    lget_xattr(path, CAPABILITY)
}

/// The value of xattr `key` of `path` itself (a symlink is not followed); `None` when unset
/// or when the filesystem has no xattrs.
pub fn lget_xattr(path: &Path, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let p = resolve::cstring(path_bytes(path))?;
    match resolve::get_xattr_of(&p, key, Follow::No) {
        Ok(v) => Ok(Some(v)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The xattr names of `path` itself (a symlink is not followed).
fn llist_xattrs(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let p = resolve::cstring(path_bytes(path))?;
    match resolve::list_xattrs_of(&p, Follow::No) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Ok(Vec::new()),
        r => r,
    }
}

fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let mut fa = open_nofollow(a)?;
    let mut fb = open_nofollow(b)?;
    let mut ba = vec![0u8; 256 << 10];
    let mut bb = vec![0u8; 256 << 10];
    loop {
        let na = read_full::read_full(&mut fa, &mut ba)?;
        let nb = read_full::read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

/// Opens a file for reading without following a symlink in its last component.
pub fn open_nofollow(p: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)
}

/// A path's bytes, for tar names.
pub fn path_bytes(p: &Path) -> &[u8] {
    OsStr::as_bytes(p.as_os_str())
}
