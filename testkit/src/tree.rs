//! Trees described declaratively, applied to a directory, read back and compared.
//!
//! A test describes a tree (or a layer's changes) as a list of [`Change`]s built with the
//! short constructors below, e.g.
//! `tree![file("a/b", "hi").owner(1000, 1000), dir("c", 0o755), symlink("d", "../x")]`.
//! The same list can be
//! - materialised on disk with [`apply`],
//! - turned into a tar layer with [`crate::layer`],
//! - evaluated in memory into the [`Tree`] it should produce ([`Tree::from_changes`]),
//!
//! and a directory is read back with [`snapshot`] and compared with [`assert_trees_equal`].
//!
//! A change list means what a layer means (OCI semantics): `remove` and `opaque` act on what
//! existed *before* the list, everything else is applied in order on top. Entries that do not
//! say otherwise get mode defaults (files 0644, symlinks 0777), owner 0:0 and the fixed
//! [`crate::DEFAULT_MTIME`], so trees built from the same list are identical everywhere.

mod disk;
mod model;

use std::fmt;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};

pub use disk::{SnapshotOptions, apply, snapshot, snapshot_with};
pub use model::{Compare, Node, NodeKind, Tree, assert_trees_equal, assert_trees_equal_with};

/// A modification time: seconds since the epoch and nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub const fn new(secs: i64, nanos: u32) -> Self {
        Timestamp { secs, nanos }
    }

    pub const fn secs(secs: i64) -> Self {
        Timestamp { secs, nanos: 0 }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            write!(f, "{}", self.secs)
        } else {
            write!(f, "{}.{:09}", self.secs, self.nanos)
        }
    }
}

/// A regular file's contents: bytes in memory, or a generator that can be re-run (big
/// fixtures stream their contents instead of holding gigabytes).
#[derive(Clone)]
pub struct Content(ContentRepr);

#[derive(Clone)]
enum ContentRepr {
    Bytes(Arc<[u8]>),
    Lazy(Arc<LazySource>),
}

type Opener = dyn Fn() -> Box<dyn Read + Send> + Send + Sync;

struct LazySource {
    len: u64,
    open: Box<Opener>,
    digest: OnceLock<String>,
}

impl Content {
    pub fn bytes(data: impl Into<Vec<u8>>) -> Content {
        Content(ContentRepr::Bytes(Arc::from(data.into())))
    }

    /// `len` bytes produced by a fresh reader from `open` each time they are needed. The
    /// reader must yield exactly `len` bytes; writers fail loudly if it does not.
    pub fn lazy(
        len: u64,
        open: impl Fn() -> Box<dyn Read + Send> + Send + Sync + 'static,
    ) -> Content {
        Content(ContentRepr::Lazy(Arc::new(LazySource {
            len,
            open: Box::new(open),
            digest: OnceLock::new(),
        })))
    }

    /// Like [`Content::lazy`] with the digest already known (it is not re-checked).
    pub(crate) fn lazy_with_digest(
        len: u64,
        digest: String,
        open: impl Fn() -> Box<dyn Read + Send> + Send + Sync + 'static,
    ) -> Content {
        let c = Content::lazy(len, open);
        if let ContentRepr::Lazy(src) = &c.0 {
            let _ = src.digest.set(digest);
        }
        c
    }

    /// `len` zero bytes, without allocating them.
    pub fn zeros(len: u64) -> Content {
        Content::lazy(len, move || Box::new(io::repeat(0).take(len)))
    }

    pub fn len(&self) -> u64 {
        match &self.0 {
            ContentRepr::Bytes(b) => b.len() as u64,
            ContentRepr::Lazy(src) => src.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reader over the whole contents.
    pub fn reader(&self) -> Box<dyn Read + Send + '_> {
        match &self.0 {
            ContentRepr::Bytes(b) => Box::new(&b[..]),
            ContentRepr::Lazy(src) => (src.open)(),
        }
    }

    /// The contents in memory (generates lazy contents).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        match &self.0 {
            ContentRepr::Bytes(b) => Ok(b.to_vec()),
            ContentRepr::Lazy(src) => {
                let mut out = Vec::with_capacity(usize::try_from(src.len).unwrap_or(0));
                (src.open)().read_to_end(&mut out)?;
                check_len(out.len() as u64, src.len)?;
                Ok(out)
            }
        }
    }

    /// `sha256:<hex>` of the contents (computed once per lazy source).
    pub fn digest(&self) -> io::Result<String> {
        match &self.0 {
            ContentRepr::Bytes(b) => Ok(crate::sha256_digest(b)),
            ContentRepr::Lazy(src) => {
                if let Some(d) = src.digest.get() {
                    return Ok(d.clone());
                }
                let mut hasher = HashWriter::default();
                let n = io::copy(&mut (src.open)(), &mut hasher)?;
                check_len(n, src.len)?;
                let d = format!("sha256:{}", crate::hex(&hasher.0.finalize()));
                let _ = src.digest.set(d.clone());
                Ok(d)
            }
        }
    }
}

fn check_len(got: u64, want: u64) -> io::Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("content generator produced {got} bytes, declared {want}"),
        ))
    }
}

#[derive(Default)]
struct HashWriter(Sha256);

impl io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ContentRepr::Bytes(b) if b.len() <= 32 => {
                write!(f, "{:?}", String::from_utf8_lossy(b))
            }
            ContentRepr::Bytes(b) => write!(f, "<{} bytes>", b.len()),
            ContentRepr::Lazy(src) => write!(f, "<{} generated bytes>", src.len),
        }
    }
}

impl From<&str> for Content {
    fn from(s: &str) -> Self {
        Content::bytes(s.as_bytes())
    }
}

impl From<String> for Content {
    fn from(s: String) -> Self {
        Content::bytes(s.into_bytes())
    }
}

impl From<&String> for Content {
    fn from(s: &String) -> Self {
        Content::bytes(s.as_bytes())
    }
}

impl From<&[u8]> for Content {
    fn from(b: &[u8]) -> Self {
        Content::bytes(b)
    }
}

impl<const N: usize> From<&[u8; N]> for Content {
    fn from(b: &[u8; N]) -> Self {
        Content::bytes(&b[..])
    }
}

impl From<Vec<u8>> for Content {
    fn from(b: Vec<u8>) -> Self {
        Content::bytes(b)
    }
}

/// What an added entry is.
#[derive(Clone, Debug)]
pub enum EntryKind {
    File(Content),
    Dir,
    Symlink(PathBuf),
    /// A hard link to another path of the same tree; it shares that inode's metadata, so the
    /// entry's own mode/owner/mtime only matter for the tar header when the target is not
    /// part of the same change list.
    Hardlink(PathBuf),
    Fifo,
    CharDev {
        major: u32,
        minor: u32,
    },
    BlockDev {
        major: u32,
        minor: u32,
    },
}

/// An entry to create (or replace) at `path`.
#[derive(Clone, Debug)]
pub struct Entry {
    pub path: PathBuf,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// `None` means [`crate::DEFAULT_MTIME`].
    pub mtime: Option<Timestamp>,
    /// In the order given (kept so tar headers are reproducible).
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Entry {
    fn new(path: impl AsRef<Path>, kind: EntryKind, mode: u32) -> Entry {
        Entry {
            path: path.as_ref().to_path_buf(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: None,
            xattrs: Vec::new(),
        }
    }

    pub fn effective_mtime(&self) -> Timestamp {
        self.mtime.unwrap_or(Timestamp::secs(crate::DEFAULT_MTIME))
    }

    pub(crate) fn set_xattr(&mut self, name: String, value: Vec<u8>) {
        match self.xattrs.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.xattrs.push((name, value)),
        }
    }
}

/// One step of a tree or layer description.
#[derive(Clone, Debug)]
pub enum Change {
    /// Create `entry.path`, replacing whatever is there (an existing directory stays and only
    /// takes the new metadata when the entry is a directory too).
    Add(Entry),
    /// Delete a path and everything under it; in a layer, an OCI whiteout `.wh.<name>`.
    Remove(PathBuf),
    /// Hide everything the directory held before; in a layer, `<dir>/.wh..wh..opq`.
    Opaque(PathBuf),
    /// Metadata changes of an existing path (or of an entry added earlier in the same list;
    /// a tar layer can only carry them that way).
    Chmod(PathBuf, u32),
    Chown(PathBuf, u32, u32),
    SetXattr(PathBuf, String, Vec<u8>),
    SetMtime(PathBuf, Timestamp),
}

impl Change {
    /// The path the change is about.
    pub fn path(&self) -> &Path {
        match self {
            Change::Add(e) => &e.path,
            Change::Remove(p)
            | Change::Opaque(p)
            | Change::Chmod(p, _)
            | Change::Chown(p, _, _)
            | Change::SetXattr(p, _, _)
            | Change::SetMtime(p, _) => p,
        }
    }

    /// The entry, if this change adds one.
    pub fn entry(&self) -> Option<&Entry> {
        match self {
            Change::Add(e) => Some(e),
            _ => None,
        }
    }

    #[track_caller]
    fn edit(mut self, what: &str, f: impl FnOnce(&mut Entry)) -> Change {
        match &mut self {
            Change::Add(e) => f(e),
            other => panic!(
                ".{what}() only applies to entries made by file/dir/symlink/...; for {:?} use \
                 the standalone chmod/owner/xattr/mtime changes",
                other.path()
            ),
        }
        self
    }

    /// Sets the permission bits (`0o7777`, setuid/setgid/sticky included).
    #[track_caller]
    pub fn mode(self, mode: u32) -> Change {
        self.edit("mode", |e| e.mode = mode & 0o7777)
    }

    #[track_caller]
    pub fn owner(self, uid: u32, gid: u32) -> Change {
        self.edit("owner", |e| {
            e.uid = uid;
            e.gid = gid;
        })
    }

    #[track_caller]
    pub fn mtime(self, secs: i64) -> Change {
        self.edit("mtime", |e| e.mtime = Some(Timestamp::secs(secs)))
    }

    #[track_caller]
    pub fn mtime_ns(self, secs: i64, nanos: u32) -> Change {
        self.edit("mtime_ns", |e| e.mtime = Some(Timestamp::new(secs, nanos)))
    }

    /// Adds (or replaces) an extended attribute, e.g. `user.x`, `trusted.x`,
    /// `security.capability`.
    #[track_caller]
    pub fn xattr(self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Change {
        let (name, value) = (name.into(), value.as_ref().to_vec());
        self.edit("xattr", |e| e.set_xattr(name, value))
    }
}

/// A regular file with mode 0644.
pub fn file(path: impl AsRef<Path>, contents: impl Into<Content>) -> Change {
    Change::Add(Entry::new(path, EntryKind::File(contents.into()), 0o644))
}

pub fn file_mode(path: impl AsRef<Path>, contents: impl Into<Content>, mode: u32) -> Change {
    Change::Add(Entry::new(
        path,
        EntryKind::File(contents.into()),
        mode & 0o7777,
    ))
}

pub fn dir(path: impl AsRef<Path>, mode: u32) -> Change {
    Change::Add(Entry::new(path, EntryKind::Dir, mode & 0o7777))
}

/// A symlink; the target is stored verbatim (absolute or `..` targets are fine, nothing in
/// this crate follows them out of the root).
pub fn symlink(path: impl AsRef<Path>, target: impl AsRef<Path>) -> Change {
    Change::Add(Entry::new(
        path,
        EntryKind::Symlink(target.as_ref().to_path_buf()),
        0o777,
    ))
}

/// A hard link at `path` to `target` (a path of the same tree, resolved from its root).
pub fn hardlink(path: impl AsRef<Path>, target: impl AsRef<Path>) -> Change {
    Change::Add(Entry::new(
        path,
        EntryKind::Hardlink(target.as_ref().to_path_buf()),
        0o644,
    ))
}

pub fn fifo(path: impl AsRef<Path>) -> Change {
    Change::Add(Entry::new(path, EntryKind::Fifo, 0o644))
}

pub fn char_dev(path: impl AsRef<Path>, major: u32, minor: u32) -> Change {
    Change::Add(Entry::new(path, EntryKind::CharDev { major, minor }, 0o644))
}

pub fn block_dev(path: impl AsRef<Path>, major: u32, minor: u32) -> Change {
    Change::Add(Entry::new(
        path,
        EntryKind::BlockDev { major, minor },
        0o644,
    ))
}

pub fn remove(path: impl AsRef<Path>) -> Change {
    Change::Remove(path.as_ref().to_path_buf())
}

pub fn opaque(dir: impl AsRef<Path>) -> Change {
    Change::Opaque(dir.as_ref().to_path_buf())
}

pub fn chmod(path: impl AsRef<Path>, mode: u32) -> Change {
    Change::Chmod(path.as_ref().to_path_buf(), mode & 0o7777)
}

pub fn owner(path: impl AsRef<Path>, uid: u32, gid: u32) -> Change {
    Change::Chown(path.as_ref().to_path_buf(), uid, gid)
}

pub fn xattr(path: impl AsRef<Path>, name: impl Into<String>, value: impl AsRef<[u8]>) -> Change {
    Change::SetXattr(
        path.as_ref().to_path_buf(),
        name.into(),
        value.as_ref().to_vec(),
    )
}

pub fn mtime(path: impl AsRef<Path>, secs: i64) -> Change {
    Change::SetMtime(path.as_ref().to_path_buf(), Timestamp::secs(secs))
}

/// Anything `tree!` accepts as an element: one change or a batch of them.
pub trait IntoChanges {
    fn push_into(self, out: &mut Vec<Change>);
}

impl IntoChanges for Change {
    fn push_into(self, out: &mut Vec<Change>) {
        out.push(self);
    }
}

impl IntoChanges for Vec<Change> {
    fn push_into(self, out: &mut Vec<Change>) {
        out.extend(self);
    }
}

impl<const N: usize> IntoChanges for [Change; N] {
    fn push_into(self, out: &mut Vec<Change>) {
        out.extend(self);
    }
}

/// `tree![file("a", "x"), dir("b", 0o755), many_files()]` -> `Vec<Change>`; elements may be
/// single changes or `Vec<Change>` batches, which are flattened in place.
#[macro_export]
macro_rules! tree {
    ($($item:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut out: ::std::vec::Vec<$crate::tree::Change> = ::std::vec::Vec::new();
        $($crate::tree::IntoChanges::push_into($item, &mut out);)*
        out
    }};
}

/// Lexically cleans a path of a change: leading `/` and `.` components go, `..` is refused
/// (the safe builders never express a path outside the root; hostile layers are built with
/// [`crate::layer::RawEntry`]).
pub(crate) fn clean(path: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: `..` is not allowed in tree paths", path.display()),
                ));
            }
        }
    }
    Ok(out)
}

/// [`clean`], refusing the root itself.
pub(crate) fn clean_nonroot(path: &Path) -> io::Result<PathBuf> {
    let p = clean(path)?;
    if p.as_os_str().is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?}: the root itself cannot be added or removed", path),
        ));
    }
    Ok(p)
}

/// What a path resolver needs to know about a path: whether it is a symlink (and where to).
pub(crate) enum Look {
    Missing,
    Symlink(PathBuf),
    Other,
}

/// Resolves `rel` inside a root the way `openat2(RESOLVE_IN_ROOT)` would: symlinks are
/// followed but `..` and absolute targets are clamped at the root, so nothing escapes it.
/// The last component is followed only if `follow_last`. Returns a clean relative path.
pub(crate) fn resolve_in_root(
    rel: &Path,
    follow_last: bool,
    mut look: impl FnMut(&Path) -> io::Result<Look>,
) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    let mut pending: Vec<std::ffi::OsString> = Vec::new();
    push_components(&mut pending, rel);
    let mut links = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            out.pop();
            continue;
        }
        if c == "." || c.is_empty() {
            continue;
        }
        let candidate = out.join(&c);
        if pending.is_empty() && !follow_last {
            out = candidate;
            break;
        }
        match look(&candidate)? {
            Look::Symlink(target) => {
                links += 1;
                if links > 40 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{}: too many levels of symbolic links", rel.display()),
                    ));
                }
                if target.is_absolute() {
                    out = PathBuf::new();
                }
                push_components(&mut pending, &target);
            }
            Look::Missing | Look::Other => out = candidate,
        }
    }
    Ok(out)
}

fn push_components(stack: &mut Vec<std::ffi::OsString>, p: &Path) {
    let comps: Vec<std::ffi::OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    stack.extend(comps.into_iter().rev());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_flattens_batches() {
        let many: Vec<Change> = (0..3).map(|i| file(format!("d/{i}"), "x")).collect();
        let t = crate::tree![dir("d", 0o755), many, remove("gone"),];
        assert_eq!(t.len(), 5);
        assert_eq!(t[3].path(), Path::new("d/2"));
        let empty: Vec<Change> = crate::tree![];
        assert!(empty.is_empty());
    }

    #[test]
    fn chained_metadata() {
        let c = file("a", "x")
            .mode(0o4755)
            .owner(1, 2)
            .mtime(5)
            .xattr("user.a", "b");
        let e = c.entry().unwrap();
        assert_eq!((e.mode, e.uid, e.gid), (0o4755, 1, 2));
        assert_eq!(e.mtime, Some(Timestamp::secs(5)));
        assert_eq!(e.xattrs, vec![("user.a".to_string(), b"b".to_vec())]);
    }

    #[test]
    #[should_panic(expected = "only applies to entries")]
    fn chained_metadata_on_remove_panics() {
        let _ = remove("a").mode(0o600);
    }

    #[test]
    fn clean_paths() {
        assert_eq!(clean(Path::new("/a/./b/")).unwrap(), Path::new("a/b"));
        assert!(clean(Path::new("a/../b")).is_err());
        assert!(clean_nonroot(Path::new("/")).is_err());
    }

    #[test]
    fn resolver_clamps_at_root() {
        // "l" -> "../../etc", "abs" -> "/x": both stay inside.
        let look = |p: &Path| -> io::Result<Look> {
            Ok(match p.to_str().unwrap() {
                "l" => Look::Symlink("../../etc".into()),
                "abs" => Look::Symlink("/x".into()),
                "loop" => Look::Symlink("loop".into()),
                _ => Look::Other,
            })
        };
        assert_eq!(
            resolve_in_root(Path::new("l/passwd"), false, look).unwrap(),
            Path::new("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(Path::new("abs/y"), true, look).unwrap(),
            Path::new("x/y")
        );
        assert_eq!(
            resolve_in_root(Path::new("abs"), false, look).unwrap(),
            Path::new("abs")
        );
        assert!(resolve_in_root(Path::new("loop/x"), true, look).is_err());
    }

    #[test]
    fn content_digest_and_len() {
        let c = Content::zeros(3);
        assert_eq!(c.to_vec().unwrap(), vec![0, 0, 0]);
        assert_eq!(
            c.digest().unwrap(),
            Content::from(&[0u8, 0, 0]).digest().unwrap()
        );
        let short = Content::lazy(5, || Box::new(&b"abc"[..]));
        assert!(short.digest().is_err());
    }
}
