//! Tar entries written into a root directory with containerd's `pkg/archive` semantics
//! (`applyNaive` / `createTarFile`), every path resolved inside the root ([`crate::resolve`]).
//!
//! - an existing path is replaced, unless both it and the entry are directories (merged);
//! - missing parents are created 0755; in an overlay upperdir they copy the mode, owner,
//!   xattrs and times of the same directory in the highest lowerdir that has it, so the merged
//!   view does not change (containerd's `mkparent` with `WithParents`);
//! - metadata order: owner, xattrs, mode (chown clears setuid and capabilities), times;
//!   directory times are set last, once nothing more is created inside them;
//! - a hard link entry's owner, xattrs, mode and times are applied to the inode it shares
//!   with its target, as containerd does (the target's own entry's are overwritten).

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use strata_common::error::{Error, Result};
use tracing::warn;

use crate::apply::copy_up;
use crate::resolve::{self, RelPath, Root};
use crate::whiteout::{self, Marker};

const COPY_BUF: usize = 1 << 20;

/// What the entries of one layer carry besides their data.
#[derive(Debug, Default)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    atime: Option<(i64, u32)>,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    /// containerd sets atime to the later of atime and mtime.
    fn atime(&self) -> (i64, u32) {
        match self.atime {
            Some(a) if a > self.mtime => a,
            _ => self.mtime,
        }
    }
}

/// Counts of what an unpack did, for logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub whiteouts: u64,
    pub bytes: u64,
}

/// Writes one layer into `root`.
pub struct Unpacker {
    root: Root,
    whiteouts: whiteout::Mode,
    /// Overlay lowerdirs, highest first, for the metadata of parents created in an upperdir.
    lowers: Vec<Root>,
    /// The last parent directory resolved (entries come grouped by directory). Only the
    /// entry itself acts between two lookups, and it never acts on its own parent, so the fd
    /// cannot go stale.
    cache: Option<(RelPath, OwnedFd)>,
    dirs: Vec<(RelPath, Meta)>,
    /// Paths this layer wrote, which a later opaque marker of their directory must keep
    /// (only tracked for OCI whiteouts, where opaque deletes).
    unpacked: HashSet<RelPath>,
    buf: Vec<u8>,
    stats: Stats,
}

fn io_err(what: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::io(what(), e)
}

impl Unpacker {
    pub fn new(root: Root, whiteouts: whiteout::Mode, lowers: Vec<Root>) -> Unpacker {
        Unpacker {
            root,
            whiteouts,
            lowers,
            cache: None,
            dirs: Vec::new(),
            unpacked: HashSet::new(),
            buf: vec![0; COPY_BUF],
            stats: Stats::default(),
        }
    }

    /// Unpacks the tar stream `r`, then reads it to its end (the decompressor and the digest
    /// need every byte, including the padding after the end-of-archive marker).
    pub fn unpack<R: Read>(mut self, r: R) -> Result<Stats> {
        let mut archive = tar::Archive::new(r);
        let entries = archive
            .entries()
            .map_err(|e| Error::invalid_argument(format!("reading layer tar: {e}")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| Error::invalid_argument(format!("reading layer tar: {e}")))?;
            self.entry(&mut entry)?;
        }
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink())
            .map_err(|e| Error::invalid_argument(format!("reading layer tar: {e}")))?;
        self.finish_dirs()?;
        Ok(self.stats)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if matches!(kind, T::XGlobalHeader) {
            return Ok(());
        }
        let name = entry.path_bytes().into_owned();
        let rel = RelPath::clean(&name);
        let Some((parent, base)) = rel.split_last() else {
            // Resolves to the root itself: containerd ignores it.
            return Ok(());
        };
        let base = base.to_vec();
        let meta = read_meta(entry)?;
        self.stats.entries += 1;

        let marker = whiteout::classify(&base)?;
        let pfd = self.parent(&parent)?;
        let pfd = pfd.as_raw_fd();
        if let Some(marker) = marker {
            self.stats.whiteouts += 1;
            return self.whiteout(&parent, pfd, marker, &meta);
        }

        if let T::Link = kind {
            let link = entry
                .link_name_bytes()
                .ok_or_else(|| Error::invalid_argument("hard link without a target"))?
                .into_owned();
            let target = RelPath::clean(&link);
            if target == rel {
                return Ok(());
            }
            let Some((tparent, tbase)) = target.split_last() else {
                return Err(Error::invalid_argument(format!(
                    "{}: hard link to the root directory",
                    rel.display()
                )));
            };
            if !self.lowers.is_empty() {
                self.copy_up_link_target(&target, &tparent, tbase)?;
            }
            let tfd = self.link_parent(&tparent)?;
            replacing(pfd, &base, || {
                resolve::link_at(tfd.as_raw_fd(), tbase, pfd, &base)
            })
            .map_err(io_err(|| {
                format!("link {} to {}", rel.display(), target.display())
            }))?;
            self.link_meta(pfd, &base, &meta, &rel)?;
            self.note_unpacked(&rel);
            return Ok(());
        }

        let what = || rel.display();
        match kind {
            T::Directory => {
                // An existing directory is merged (only its metadata changes); anything else
                // in the way is replaced.
                match resolve::mkdir_at(pfd, &base, 0o700) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let st = resolve::lstat_at(pfd, &base)
                            .map_err(io_err(|| format!("lstat {}", what())))?;
                        if !st.is_some_and(|st| resolve::is_dir(&st)) {
                            replacing(pfd, &base, || resolve::mkdir_at(pfd, &base, 0o700))
                                .map_err(io_err(|| format!("mkdir {}", what())))?;
                        }
                    }
                    Err(e) => return Err(Error::io(format!("mkdir {}", what()), e)),
                }
                let fd =
                    resolve::openat_nofollow(pfd, &base, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                        .map_err(io_err(|| format!("open {}", what())))?;
                let fd = fd.as_raw_fd();
                resolve::fchown(fd, meta.uid, meta.gid)
                    .map_err(io_err(|| format!("chown {}", what())))?;
                self.xattrs(&meta, |k, v| resolve::fsetxattr(fd, k, v), &rel)?;
                resolve::fchmod(fd, meta.mode).map_err(io_err(|| format!("chmod {}", what())))?;
                self.dirs.push((rel.clone(), meta));
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                let fd = replacing(pfd, &base, || {
                    resolve::openat_nofollow(
                        pfd,
                        &base,
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                        0o600,
                    )
                })
                .map_err(io_err(|| format!("create {}", what())))?;
                let mut file = std::fs::File::from(fd);
                // The tar crate hands a GNU sparse file's holes over as zeros: skipping zero
                // blocks keeps them holes on disk.
                let sparse = matches!(kind, T::GNUSparse);
                let mut written = 0u64;
                loop {
                    let n = match entry.read(&mut self.buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            return Err(Error::invalid_argument(format!(
                                "reading {} from the layer: {e}",
                                what()
                            )));
                        }
                    };
                    let data = &self.buf[..n];
                    if sparse {
                        write_sparse(&mut file, data)
                    } else {
                        file.write_all(data)
                    }
                    .map_err(io_err(|| format!("write {}", what())))?;
                    written += n as u64;
                    self.stats.bytes += n as u64;
                }
                if sparse {
                    // A trailing hole was only seeked over.
                    file.set_len(written)
                        .map_err(io_err(|| format!("truncate {}", what())))?;
                }
                let fd = file.as_raw_fd();
                resolve::fchown(fd, meta.uid, meta.gid)
                    .map_err(io_err(|| format!("chown {}", what())))?;
                self.xattrs(&meta, |k, v| resolve::fsetxattr(fd, k, v), &rel)?;
                resolve::fchmod(fd, meta.mode).map_err(io_err(|| format!("chmod {}", what())))?;
                resolve::futimes(fd, meta.atime(), meta.mtime)
                    .map_err(io_err(|| format!("set times of {}", what())))?;
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Error::invalid_argument("symlink without a target"))?
                    .into_owned();
                // The target is stored as written: it is only ever followed by resolution
                // inside a root (here) or inside the container's root (later).
                replacing(pfd, &base, || resolve::symlink_at(&target, pfd, &base))
                    .map_err(io_err(|| format!("symlink {}", what())))?;
                resolve::lchown_at(pfd, &base, meta.uid, meta.gid)
                    .map_err(io_err(|| format!("chown {}", what())))?;
                self.xattrs(&meta, |k, v| resolve::lsetxattr_at(pfd, &base, k, v), &rel)?;
                resolve::utimes_at(pfd, &base, meta.atime(), meta.mtime)
                    .map_err(io_err(|| format!("set times of {}", what())))?;
            }
            T::Char | T::Block | T::Fifo => {
                let (fmt, dev) = match kind {
                    T::Fifo => (libc::S_IFIFO, 0),
                    _ => {
                        let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                        let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                        let fmt = if matches!(kind, T::Char) {
                            libc::S_IFCHR
                        } else {
                            libc::S_IFBLK
                        };
                        (fmt, libc::makedev(major, minor))
                    }
                };
                replacing(pfd, &base, || {
                    resolve::mknod_at(pfd, &base, fmt | meta.mode, dev)
                })
                .map_err(io_err(|| format!("mknod {}", what())))?;
                resolve::lchown_at(pfd, &base, meta.uid, meta.gid)
                    .map_err(io_err(|| format!("chown {}", what())))?;
                self.xattrs(&meta, |k, v| resolve::lsetxattr_at(pfd, &base, k, v), &rel)?;
                resolve::chmod_at(pfd, &base, meta.mode)
                    .map_err(io_err(|| format!("chmod {}", what())))?;
                resolve::utimes_at(pfd, &base, meta.atime(), meta.mtime)
                    .map_err(io_err(|| format!("set times of {}", what())))?;
            }
            other => {
                return Err(Error::invalid_argument(format!(
                    "{}: unhandled tar header type {:?}",
                    what(),
                    other.as_byte() as char
                )));
            }
        }
        self.note_unpacked(&rel);
        Ok(())
    }

    /// A hard link entry's metadata goes to the inode it shares, as containerd's
    /// `createTarFile` runs chown, setxattr, chmod and chtimes after `link` for every entry.
    /// Unlike containerd (whose chmod and chtimes follow a symlink), a link to a symlink only
    /// changes the symlink's own owner and xattrs: following it could leave the root, and
    /// Linux has no mode for a symlink.
    fn link_meta(&self, pfd: RawFd, base: &[u8], meta: &Meta, rel: &RelPath) -> Result<()> {
        let what = || rel.display();
        resolve::lchown_at(pfd, base, meta.uid, meta.gid)
            .map_err(io_err(|| format!("chown {}", what())))?;
        self.xattrs(meta, |k, v| resolve::lsetxattr_at(pfd, base, k, v), rel)?;
        let st = resolve::lstat_at(pfd, base).map_err(io_err(|| format!("lstat {}", what())))?;
        if st.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK) {
            return Ok(());
        }
        resolve::chmod_at(pfd, base, meta.mode).map_err(io_err(|| format!("chmod {}", what())))?;
        resolve::utimes_at(pfd, base, meta.atime(), meta.mtime)
            .map_err(io_err(|| format!("set times of {}", what())))
    }

    fn note_unpacked(&mut self, rel: &RelPath) {
        if self.whiteouts == whiteout::Mode::Oci {
            self.unpacked.insert(rel.clone());
        }
    }

    fn xattrs(
        &self,
        meta: &Meta,
        set: impl Fn(&str, &[u8]) -> io::Result<()>,
        rel: &RelPath,
    ) -> Result<()> {
        for (k, v) in &meta.xattrs {
            if let Err(e) = set(k, v) {
                let ignorable = e.raw_os_error() == Some(libc::ENOTSUP)
                    || (e.raw_os_error() == Some(libc::EPERM) && k.starts_with("user."));
                if ignorable {
                    // containerd logs and goes on: user.* is refused on symlinks and devices,
                    // some filesystems have no xattrs at all.
                    warn!(path = %rel.display(), xattr = %k, error = %e, "ignored xattr in layer");
                    continue;
                }
                return Err(Error::io(format!("setxattr {k} on {}", rel.display()), e));
            }
        }
        Ok(())
    }

    fn whiteout(
        &mut self,
        parent: &RelPath,
        pfd: RawFd,
        marker: Marker<'_>,
        meta: &Meta,
    ) -> Result<()> {
        match (self.whiteouts, marker) {
            (whiteout::Mode::Oci, Marker::Remove(name)) => resolve::remove_all_at(pfd, name)
                .map_err(io_err(|| {
                    format!("whiteout {}", parent.join(name).display())
                })),
            (whiteout::Mode::Oci, Marker::Opaque) => {
                let dir = self
                    .root
                    .open_dir_read(parent)
                    .map_err(io_err(|| format!("opaque {}", parent.display())))?;
                let unpacked = &self.unpacked;
                resolve::remove_children(dir.as_raw_fd(), |n| unpacked.contains(&parent.join(n)))
                    .map_err(io_err(|| format!("opaque {}", parent.display())))
            }
            (whiteout::Mode::Overlay { .. }, Marker::Remove(name)) => {
                whiteout::overlay_remove(pfd, name, meta.uid, meta.gid).map_err(io_err(|| {
                    format!("whiteout {}", parent.join(name).display())
                }))
            }
            (whiteout::Mode::Overlay { opaque_xattr }, Marker::Opaque) => {
                let dir = self
                    .root
                    .open_dir_read(parent)
                    .map_err(io_err(|| format!("opaque {}", parent.display())))?;
                whiteout::overlay_opaque(dir.as_raw_fd(), opaque_xattr)
                    .map_err(io_err(|| format!("opaque {}", parent.display())))
            }
        }
    }

    /// The parent directory of an entry, created (with its own parents) when missing.
    fn parent(&mut self, parent: &RelPath) -> Result<&OwnedFd> {
        let hit = matches!(&self.cache, Some((p, _)) if p == parent);
        if !hit {
            let fd = match self.root.open_dir(parent) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.mkparent(parent)?,
                Err(e) => return Err(Error::io(format!("open {}", parent.display()), e)),
            };
            self.cache = Some((parent.clone(), fd));
        }
        match &self.cache {
            Some((_, fd)) => Ok(fd),
            None => Err(Error::internal("parent cache empty")),
        }
    }

    /// Resolves `path` the way containerd's `fs.RootPath` does, for paths `openat2` cannot
    /// open: symlinks followed (dangling ones too), missing components and the `..` after them
    /// cancelled lexically, one component at a time with `O_NOFOLLOW`, `..` and absolute
    /// targets clamped at the root. With `create`, what is still missing at the end is made
    /// (containerd's `mkparent`); without, a missing directory is `None`.
    fn walk(&self, path: &RelPath, create: bool) -> Result<Option<OwnedFd>> {
        let open_root = |root: &Root| {
            root.open_dir(&RelPath::default())
                .map_err(io_err(|| "open root".to_string()))
        };
        let mut cur = open_root(&self.root)?;
        let mut resolved = RelPath::default();
        // Components below the first missing directory: nothing on disk to follow there.
        let mut missing: Vec<Vec<u8>> = Vec::new();
        let mut pending: Vec<Vec<u8>> = path.components().iter().rev().cloned().collect();
        let mut links = 0;
        while let Some(c) = pending.pop() {
            if c.is_empty() || c == b"." {
                continue;
            }
            if c == b".." {
                if missing.pop().is_some() {
                    continue;
                }
                if let Some((up, _)) = resolved.split_last() {
                    resolved = up;
                }
                cur = self
                    .root
                    .open_dir(&resolved)
                    .map_err(io_err(|| format!("open {}", resolved.display())))?;
                continue;
            }
            if !missing.is_empty() {
                missing.push(c);
                continue;
            }
            let here = resolved.join(&c);
            let st = resolve::lstat_at(cur.as_raw_fd(), &c)
                .map_err(io_err(|| format!("lstat {}", here.display())))?;
            match st {
                None => {
                    missing.push(c);
                    continue;
                }
                Some(st) if resolve::is_dir(&st) => {}
                Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                    links += 1;
                    if links > 40 {
                        return Err(Error::invalid_argument(format!(
                            "{}: too many levels of symbolic links",
                            path.display()
                        )));
                    }
                    let target = resolve::readlink_at(cur.as_raw_fd(), &c)
                        .map_err(io_err(|| format!("readlink {}", here.display())))?;
                    if target.first() == Some(&b'/') {
                        resolved = RelPath::default();
                        cur = open_root(&self.root)?;
                    }
                    pending.extend(target.split(|b| *b == b'/').rev().map(<[u8]>::to_vec));
                    continue;
                }
                Some(_) => {
                    return Err(Error::io(
                        format!("resolve {}", here.display()),
                        io::Error::from_raw_os_error(libc::ENOTDIR),
                    ));
                }
            }
            cur =
                resolve::openat_nofollow(cur.as_raw_fd(), &c, libc::O_PATH | libc::O_DIRECTORY, 0)
                    .map_err(io_err(|| format!("open {}", here.display())))?;
            resolved = here;
        }
        if missing.is_empty() {
            return Ok(Some(cur));
        }
        if !create {
            return Ok(None);
        }
        for c in missing {
            let here = resolved.join(&c);
            match resolve::mkdir_at(cur.as_raw_fd(), &c, 0o755) {
                // Set, not left to the umask: that is whatever the process was started
                // with (a service manager's 077 would make the directory 0700).
                Ok(()) => resolve::chmod_at(cur.as_raw_fd(), &c, 0o755)
                    .map_err(|e| Error::io(format!("chmod {}", here.display()), e))?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(format!("mkdir {}", here.display()), e)),
            }
            self.copy_lower_dir_info(&here, cur.as_raw_fd(), &c)?;
            cur =
                resolve::openat_nofollow(cur.as_raw_fd(), &c, libc::O_PATH | libc::O_DIRECTORY, 0)
                    .map_err(io_err(|| format!("open {}", here.display())))?;
            resolved = here;
        }
        Ok(Some(cur))
    }

    fn mkparent(&mut self, parent: &RelPath) -> Result<OwnedFd> {
        self.walk(parent, true)?
            .ok_or_else(|| Error::internal(format!("{} was not created", parent.display())))
    }

    /// Before linking to `target` in an upperdir: overlayfs's copy-up, when only a lower layer
    /// has it. Deleted in the upper or by a layer in between, it stays missing (the link then
    /// fails as on the mounted overlay).
    fn copy_up_link_target(
        &mut self,
        target: &RelPath,
        tparent: &RelPath,
        tbase: &[u8],
    ) -> Result<()> {
        let what = || format!("copy up {} to link to it", target.display());
        match copy_up::in_upper(&self.root, tparent, tbase).map_err(io_err(what))? {
            copy_up::Upper::Present | copy_up::Upper::WhitedOut => return Ok(()),
            copy_up::Upper::Absent => {}
        }
        let Some((lower_dir, st)) =
            copy_up::find_in_lowers(&self.lowers, tparent, tbase).map_err(io_err(what))?
        else {
            return Ok(());
        };
        let pfd = self.mkparent(tparent)?;
        copy_up::copy_up(lower_dir.as_raw_fd(), &st, pfd.as_raw_fd(), tbase).map_err(io_err(what))
    }

    /// The directory a hard link's target is in.
    fn link_parent(&self, parent: &RelPath) -> Result<OwnedFd> {
        match self.root.open_dir(parent) {
            Ok(fd) => Ok(fd),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.walk(parent, false)?.ok_or_else(|| {
                    Error::not_found(format!("hard link target directory {}", parent.display()))
                })
            }
            Err(e) => Err(Error::io(format!("open {}", parent.display()), e)),
        }
    }

    /// Gives a parent created in an upperdir the metadata the merged view showed for it.
    fn copy_lower_dir_info(&self, rel: &RelPath, pfd: RawFd, name: &[u8]) -> Result<()> {
        for lower in &self.lowers {
            let lfd = match lower.open_dir(rel) {
                Ok(fd) => fd,
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ENOTDIR) =>
                {
                    // Not a directory there: replaced in that layer, nothing below shows.
                    if e.raw_os_error() == Some(libc::ENOTDIR) {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => return Err(Error::io(format!("lower {}", rel.display()), e)),
            };
            let st = resolve::fstat(lfd.as_raw_fd())
                .map_err(io_err(|| format!("stat lower {}", rel.display())))?;
            let what = || format!("copy lower metadata to {}", rel.display());
            resolve::lchown_at(pfd, name, st.st_uid, st.st_gid).map_err(io_err(what))?;
            let lpath = resolve::proc_path(lfd.as_raw_fd(), b"").map_err(io_err(what))?;
            for key in resolve::list_xattrs(&lpath).map_err(io_err(what))? {
                if key.starts_with(b"trusted.overlay.") || key.starts_with(b"user.overlay.") {
                    continue;
                }
                let value = resolve::get_xattr(&lpath, &key).map_err(io_err(what))?;
                let Ok(key) = String::from_utf8(key) else {
                    continue;
                };
                // Best effort, like containerd's copyUpXAttrs: the merged view loses at worst
                // an xattr, the apply goes on.
                if let Err(e) = resolve::lsetxattr_at(pfd, name, &key, &value) {
                    warn!(path = %rel.display(), xattr = %key, error = %e, "xattr not copied from lower");
                }
            }
            resolve::chmod_at(pfd, name, st.st_mode & 0o7777).map_err(io_err(what))?;
            resolve::utimes_at(
                pfd,
                name,
                (st.st_atime, st.st_atime_nsec as u32),
                (st.st_mtime, st.st_mtime_nsec as u32),
            )
            .map_err(io_err(what))?;
            return Ok(());
        }
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<()> {
        self.cache = None;
        for (rel, meta) in std::mem::take(&mut self.dirs) {
            let Some((parent, base)) = rel.split_last() else {
                continue;
            };
            let pfd = match self.root.open_dir(&parent) {
                Ok(fd) => fd,
                // Removed again later in the same layer.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("open {}", parent.display()), e)),
            };
            match resolve::lstat_at(pfd.as_raw_fd(), base) {
                Ok(Some(st)) if resolve::is_dir(&st) => {}
                Ok(_) => continue,
                Err(e) => return Err(Error::io(format!("lstat {}", rel.display()), e)),
            }
            resolve::utimes_at(pfd.as_raw_fd(), base, meta.atime(), meta.mtime)
                .map_err(io_err(|| format!("set times of {}", rel.display())))?;
        }
        Ok(())
    }
}

/// Writes `data`, seeking over the 4 KiB blocks that are all zeros.
fn write_sparse(file: &mut std::fs::File, data: &[u8]) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    const BLOCK: usize = 4096;
    for block in data.chunks(BLOCK) {
        if block.len() == BLOCK && block.iter().all(|b| *b == 0) {
            file.seek(SeekFrom::Current(BLOCK as i64))?;
        } else {
            file.write_all(block)?;
        }
    }
    Ok(())
}

/// Runs `create` (which makes `name` in `dir` exclusively); if something is in the way, removes
/// it (a directory with everything below) and tries once more. Trying first saves a stat per
/// entry on the common path, where nothing is there yet.
fn replacing<T>(dir: RawFd, name: &[u8], create: impl Fn() -> io::Result<T>) -> io::Result<T> {
    match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            resolve::remove_all_at(dir, name)?;
            create()
        }
        r => r,
    }
}

fn parse_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let negative = secs.starts_with('-');
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        let d = c.to_digit(10)?;
        nanos += d * 10u32.pow(8 - i as u32);
    }
    if negative && nanos > 0 {
        // -1.5 is 1.5 s before the epoch: (-2 s, +0.5 s). A time before i64::MIN seconds is
        // no time at all: the record is ignored like any other it cannot parse.
        return Some((secs.checked_sub(1)?, 1_000_000_000 - nanos));
    }
    Some((secs, nanos))
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta> {
    let bad = |what: &str, e: io::Error| Error::invalid_argument(format!("tar header {what}: {e}"));
    let h = entry.header();
    let mut meta = Meta {
        mode: h.mode().map_err(|e| bad("mode", e))? & 0o7777,
        uid: h.uid().map_err(|e| bad("uid", e))? as u32,
        gid: h.gid().map_err(|e| bad("gid", e))? as u32,
        mtime: (h.mtime().map_err(|e| bad("mtime", e))? as i64, 0),
        atime: None,
        xattrs: Vec::new(),
    };
    if let Some(exts) = entry.pax_extensions().map_err(|e| bad("pax", e))? {
        for ext in exts {
            let ext = ext.map_err(|e| bad("pax", e))?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                meta.xattrs.push((name.to_string(), value.to_vec()));
                continue;
            }
            if key.starts_with("GNU.sparse.") {
                // The tar crate would write the sparse map as file data. Unimplemented lets
                // containerd's chain re-apply the layer with walking (Go reads these), which
                // rewrites every entry this attempt wrote.
                return Err(Error::unimplemented(
                    "PAX-format sparse files (GNU.sparse.* records) are not supported",
                ));
            }
            let num = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
            };
            match key {
                "mtime" => {
                    if let Some(t) = parse_time(value) {
                        meta.mtime = t;
                    }
                }
                "atime" => meta.atime = parse_time(value),
                "uid" => {
                    if let Some(v) = num() {
                        meta.uid = v as u32;
                    }
                }
                "gid" => {
                    if let Some(v) = num() {
                        meta.gid = v as u32;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(parse_time(b"5"), Some((5, 0)));
        assert_eq!(parse_time(b"5.25"), Some((5, 250_000_000)));
        assert_eq!(parse_time(b"1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(parse_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_time(b"x"), None);
    }

    /// A PAX time a second before i64::MIN seconds overflowed: a panic with overflow checks
    /// (fuzz/'s apply_tar, seed `pax-time-limits`), a wrapped time without.
    #[test]
    fn pax_times_at_the_limits() {
        assert_eq!(parse_time(b"-9223372036854775808"), Some((i64::MIN, 0)));
        assert_eq!(parse_time(b"-9223372036854775808.5"), None);
        assert_eq!(
            parse_time(b"-9223372036854775807.5"),
            Some((i64::MIN, 500_000_000))
        );
        assert_eq!(
            parse_time(b"9223372036854775807.999999999"),
            Some((i64::MAX, 999_999_999))
        );
        assert_eq!(parse_time(b"9223372036854775808"), None);
    }
}
