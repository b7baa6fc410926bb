//! Change lists materialised on a real directory, and directories read back into [`Tree`]s.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;

use super::model::{Node, NodeKind, Tree};
use super::{Change, Entry, EntryKind, Look, Timestamp, clean, clean_nonroot, resolve_in_root};

fn ctx(e: io::Error, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn look(root: &Path, rel: &Path) -> io::Result<Look> {
    match fs::symlink_metadata(root.join(rel)) {
        Ok(md) if md.file_type().is_symlink() => Ok(Look::Symlink(fs::read_link(root.join(rel))?)),
        Ok(_) => Ok(Look::Other),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(Look::Missing)
        }
        Err(e) => Err(ctx(e, root.join(rel).display())),
    }
}

fn resolve(root: &Path, rel: &Path, follow_last: bool) -> io::Result<PathBuf> {
    resolve_in_root(rel, follow_last, |q| look(root, q))
}

fn split(p: &Path) -> (&Path, &OsStr) {
    (
        p.parent().unwrap_or(Path::new("")),
        p.file_name().unwrap_or_default(),
    )
}

/// `mkdir -p` for an already resolved relative directory (new ones get 0755, umask aside).
fn ensure_dirs(root: &Path, dir: &Path) -> io::Result<()> {
    let mut cur = root.to_path_buf();
    for c in dir.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{}: not a directory", cur.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(|e| ctx(e, cur.display()))?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))?;
            }
            Err(e) => return Err(ctx(e, cur.display())),
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|e| ctx(e, format!("remove {}", path.display())))
}

/// Materialises `changes` under `root` with the same meaning [`Tree::apply_changes`] gives
/// them (so `snapshot(root)` afterwards matches `Tree::from_changes`): removals and opaque
/// markers act on what was there before, the rest is applied in order, directory mtimes are
/// set last.
///
/// Paths are resolved inside `root` (symlinks in the way are followed but clamped at
/// `root`, like `openat2(RESOLVE_IN_ROOT)`), and the final component is never followed, so
/// nothing outside `root` is touched. Owners, device nodes and `trusted.*` or
/// `security.capability` xattrs need root.
pub fn apply(root: &Path, changes: &[Change]) -> io::Result<()> {
    let md = fs::metadata(root).map_err(|e| ctx(e, root.display()))?;
    if !md.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{}: not a directory", root.display()),
        ));
    }
    for c in changes {
        match c {
            Change::Remove(p) => {
                let p = clean_nonroot(p)?;
                let (parent, name) = split(&p);
                let parent = resolve(root, parent, true)?;
                remove_any(&root.join(parent).join(name))?;
            }
            Change::Opaque(d) => {
                let d = root.join(resolve(root, &clean(d)?, true)?);
                if fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) {
                    for child in fs::read_dir(&d)? {
                        remove_any(&child?.path())?;
                    }
                }
            }
            _ => {}
        }
    }

    let mut dir_times: Vec<(PathBuf, Timestamp)> = Vec::new();
    for c in changes {
        match c {
            Change::Remove(_) => {}
            Change::Opaque(d) => ensure_dirs(root, &resolve(root, &clean(d)?, true)?)?,
            Change::Add(e) => add(root, e, &mut dir_times)
                .map_err(|err| ctx(err, format!("apply {}", e.path.display())))?,
            Change::Chmod(p, mode) => {
                let full = existing(root, p)?;
                if fs::symlink_metadata(&full)?.file_type().is_symlink() {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("chmod {}: Linux cannot chmod a symlink", p.display()),
                    ));
                }
                fs::set_permissions(&full, fs::Permissions::from_mode(*mode))
                    .map_err(|e| ctx(e, format!("chmod {}", p.display())))?;
            }
            Change::Chown(p, uid, gid) => {
                let full = existing(root, p)?;
                std::os::unix::fs::lchown(&full, Some(*uid), Some(*gid))
                    .map_err(|e| ctx(e, format!("chown {}", p.display())))?;
            }
            Change::SetXattr(p, name, value) => {
                let full = existing(root, p)?;
                lsetxattr(&full, name, value)
                    .map_err(|e| ctx(e, format!("setxattr {name} on {}", p.display())))?;
            }
            Change::SetMtime(p, t) => {
                let full = existing(root, p)?;
                if fs::symlink_metadata(&full)?.is_dir() {
                    dir_times.push((full, *t));
                } else {
                    set_mtime(&full, *t)?;
                }
            }
        }
    }
    for (dir, t) in dir_times {
        set_mtime(&dir, t)?;
    }
    Ok(())
}

fn existing(root: &Path, p: &Path) -> io::Result<PathBuf> {
    let full = root.join(resolve(root, &clean(p)?, false)?);
    fs::symlink_metadata(&full).map_err(|e| ctx(e, p.display()))?;
    Ok(full)
}

fn add(root: &Path, e: &Entry, dir_times: &mut Vec<(PathBuf, Timestamp)>) -> io::Result<()> {
    let p = clean_nonroot(&e.path)?;
    let (parent, name) = split(&p);
    let parent = resolve(root, parent, true)?;
    ensure_dirs(root, &parent)?;
    let rel = parent.join(name);
    let full = root.join(&rel);
    let existing = fs::symlink_metadata(&full).ok();

    if let EntryKind::Hardlink(target) = &e.kind {
        let target = resolve(root, &clean_nonroot(target)?, false)?;
        if target == rel {
            return Ok(());
        }
        if existing.is_some() {
            remove_any(&full)?;
        }
        // Shares the target's inode and therefore its metadata.
        return fs::hard_link(root.join(&target), &full)
            .map_err(|err| ctx(err, format!("link to {}", target.display())));
    }

    let keep_dir =
        matches!(e.kind, EntryKind::Dir) && existing.as_ref().is_some_and(|m| m.is_dir());
    if !keep_dir && existing.is_some() {
        remove_any(&full)?;
    }
    let private = Mode::from_bits_truncate(0o600);
    match &e.kind {
        EntryKind::File(content) => {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&full)?;
            let n = io::copy(&mut content.reader(), &mut f)?;
            if n != content.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("content produced {n} bytes, declared {}", content.len()),
                ));
            }
        }
        EntryKind::Dir if keep_dir => {}
        EntryKind::Dir => fs::create_dir(&full)?,
        EntryKind::Symlink(target) => std::os::unix::fs::symlink(target, &full)?,
        EntryKind::Fifo => nix::unistd::mkfifo(&full, private)?,
        EntryKind::CharDev { major, minor } => mknod(
            &full,
            SFlag::S_IFCHR,
            private,
            makedev(u64::from(*major), u64::from(*minor)),
        )?,
        EntryKind::BlockDev { major, minor } => mknod(
            &full,
            SFlag::S_IFBLK,
            private,
            makedev(u64::from(*major), u64::from(*minor)),
        )?,
        EntryKind::Hardlink(_) => unreachable!("handled above"),
    }
    let is_symlink = matches!(e.kind, EntryKind::Symlink(_));
    // Order matters: chown clears setuid/setgid and file capabilities, so mode and xattrs
    // come after it.
    std::os::unix::fs::lchown(&full, Some(e.uid), Some(e.gid)).map_err(|err| ctx(err, "chown"))?;
    if !is_symlink {
        fs::set_permissions(&full, fs::Permissions::from_mode(e.mode))?;
    }
    for (k, v) in &e.xattrs {
        lsetxattr(&full, k, v).map_err(|err| ctx(err, format!("setxattr {k}")))?;
    }
    if matches!(e.kind, EntryKind::Dir) {
        dir_times.push((full, e.effective_mtime()));
    } else {
        set_mtime(&full, e.effective_mtime())?;
    }
    Ok(())
}

fn set_mtime(path: &Path, t: Timestamp) -> io::Result<()> {
    let mtime = TimeSpec::new(t.secs, i64::from(t.nanos));
    // atime follows mtime so that nothing in a snapshot depends on when the test ran.
    utimensat(None, path, &mtime, &mtime, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| ctx(e.into(), format!("set mtime of {}", path.display())))
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = cpath(path)?;
    let n = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    // SAFETY: both strings are NUL-terminated and outlive the call; value/len describe a
    // valid slice.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// All extended attributes of `path` (not following a final symlink), sorted by name.
pub(crate) fn read_xattrs(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let p = cpath(path)?;
    let names = loop {
        // SAFETY: a NULL buffer with size 0 only asks for the needed size.
        let need = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
        if need < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOTSUP) {
                return Ok(Vec::new());
            }
            return Err(e);
        }
        let mut buf = vec![0u8; need as usize];
        // SAFETY: buf is writable for buf.len() bytes.
        let got = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue; // grew in between
            }
            return Err(e);
        }
        buf.truncate(got as usize);
        break buf;
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "xattr name with NUL"))?;
        let value = loop {
            // SAFETY: as above, size query.
            let need =
                unsafe { libc::lgetxattr(p.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
            if need < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = vec![0u8; need as usize];
            // SAFETY: buf is writable for buf.len() bytes.
            let got = unsafe {
                libc::lgetxattr(
                    p.as_ptr(),
                    cname.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if got < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ERANGE) {
                    continue;
                }
                return Err(e);
            }
            buf.truncate(got as usize);
            break buf;
        };
        out.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    out.sort();
    Ok(out)
}

/// How [`snapshot_with`] reads deletion markers. Both are off by default: a snapshot shows
/// what is on disk, literally.
#[derive(Clone, Debug, Default)]
pub struct SnapshotOptions {
    /// Overlayfs upper-directory form: a 0/0 character device becomes a
    /// [`NodeKind::Whiteout`], a directory with `trusted.overlay.opaque=y` (or
    /// `user.overlay.opaque=y`) becomes opaque and loses that xattr.
    pub overlay_whiteouts: bool,
    /// OCI form, e.g. a tar extracted without whiteout processing: `.wh.<name>` becomes a
    /// [`NodeKind::Whiteout`] at `<name>`, `.wh..wh..opq` makes its directory opaque.
    pub oci_whiteouts: bool,
}

impl SnapshotOptions {
    pub fn overlay() -> Self {
        SnapshotOptions {
            overlay_whiteouts: true,
            oci_whiteouts: false,
        }
    }

    pub fn oci() -> Self {
        SnapshotOptions {
            overlay_whiteouts: false,
            oci_whiteouts: true,
        }
    }
}

/// Reads the directory `root` (without following any symlink) into a [`Tree`].
pub fn snapshot(root: &Path) -> io::Result<Tree> {
    snapshot_with(root, &SnapshotOptions::default())
}

pub fn snapshot_with(root: &Path, opts: &SnapshotOptions) -> io::Result<Tree> {
    let mut tree = Tree::new();
    let mut shared: HashMap<(u64, u64), u64> = HashMap::new();
    let mut whiteouts: Vec<PathBuf> = Vec::new();
    let mut opaques: Vec<PathBuf> = Vec::new();
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(io::Error::from)?;
        let full = entry.path();
        let rel = full
            .strip_prefix(root)
            .map_err(|e| io::Error::other(format!("{}: {e}", full.display())))?
            .to_path_buf();
        if opts.oci_whiteouts
            && let Some(name) = rel.file_name().map(OsStr::as_bytes)
            && let Some(hidden) = name.strip_prefix(b".wh.")
        {
            let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
            if hidden == b".wh..opq" {
                opaques.push(parent);
            } else {
                whiteouts.push(parent.join(OsStr::from_bytes(hidden)));
            }
            continue;
        }
        let md = fs::symlink_metadata(full).map_err(|e| ctx(e, full.display()))?;
        let ft = md.file_type();
        let mut xattrs: std::collections::BTreeMap<String, Vec<u8>> = read_xattrs(full)
            .map_err(|e| ctx(e, format!("xattrs of {}", full.display())))?
            .into_iter()
            .collect();
        let rdev = md.rdev();
        let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        let kind = if ft.is_dir() {
            let mut opaque = false;
            if opts.overlay_whiteouts {
                for key in ["trusted.overlay.opaque", "user.overlay.opaque"] {
                    if xattrs.get(key).is_some_and(|v| v == b"y") {
                        xattrs.remove(key);
                        opaque = true;
                    }
                }
            }
            NodeKind::Dir { opaque }
        } else if ft.is_file() {
            let mut hasher = super::HashWriter::default();
            let mut f = fs::File::open(full).map_err(|e| ctx(e, full.display()))?;
            io::copy(&mut f, &mut hasher).map_err(|e| ctx(e, full.display()))?;
            NodeKind::File {
                size: md.size(),
                digest: format!("sha256:{}", crate::hex(&sha2::Digest::finalize(hasher.0))),
            }
        } else if ft.is_symlink() {
            NodeKind::Symlink {
                target: fs::read_link(full)?,
            }
        } else if ft.is_fifo() {
            NodeKind::Fifo
        } else if ft.is_socket() {
            NodeKind::Socket
        } else if ft.is_char_device() {
            if opts.overlay_whiteouts && rdev == 0 {
                whiteouts.push(rel);
                continue;
            }
            NodeKind::CharDev { major, minor }
        } else {
            NodeKind::BlockDev { major, minor }
        };
        let is_dir = kind.is_dir();
        let node = Node {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: Some(Timestamp::new(md.mtime(), md.mtime_nsec() as u32)),
            xattrs,
        };
        let ino = if !is_dir && md.nlink() > 1 {
            match shared.get(&(md.dev(), md.ino())) {
                Some(ino) => *ino,
                None => {
                    let ino = tree.new_inode(node);
                    shared.insert((md.dev(), md.ino()), ino);
                    ino
                }
            }
        } else {
            tree.new_inode(node)
        };
        tree.set_path(rel, ino);
    }
    for w in whiteouts {
        tree.insert(w, Node::new(NodeKind::Whiteout, 0));
    }
    for d in opaques {
        if let Some(Node {
            kind: NodeKind::Dir { opaque },
            ..
        }) = tree.get_mut(&d)
        {
            *opaque = true;
        }
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::require_root;
    use crate::tree::*;

    /// `security.capability` v2 granting cap_net_bind_service, effective.
    fn cap_net_bind_service() -> Vec<u8> {
        let mut v = Vec::new();
        for word in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
            v.extend_from_slice(&word.to_le_bytes());
        }
        v
    }

    fn everything() -> Vec<Change> {
        crate::tree![
            dir("d", 0o750)
                .owner(10, 20)
                .mtime_ns(1_600_000_000, 5)
                .xattr("user.d", "dir"),
            file("d/f", "hello\n")
                .xattr("user.a", "1")
                .xattr("trusted.t", [0u8, 1, 2]),
            file_mode("d/suid", "#!/bin/sh\n", 0o4755).owner(1000, 1000),
            file_mode("d/sgid", "x", 0o2755),
            file("d/cap", "bin").xattr("security.capability", cap_net_bind_service()),
            dir("tmp", 0o1777),
            symlink("d/abs", "/etc/passwd").owner(3, 4).mtime(12345),
            symlink("d/rel", "../nowhere"),
            hardlink("d/f2", "d/f"),
            hardlink("top-link", "d/f"),
            fifo("p").mode(0o600),
            char_dev("dev/null", 1, 3).mode(0o666),
            block_dev("dev/loop9", 7, 9).mode(0o660).owner(0, 6),
            file("implied/parents/x", Content::zeros(70_000)),
            file(format!("long/{}", "n".repeat(250)), "long"),
            file("uni/\u{e9}t\u{e9}-\u{1F642}", "u").mtime_ns(-5, 500),
            file("empty", ""),
        ]
    }

    #[test]
    fn round_trip_every_kind() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let changes = everything();
        apply(tmp.path(), &changes).unwrap();
        let expected = Tree::from_changes(&changes).unwrap();
        let actual = snapshot(tmp.path()).unwrap();
        assert_trees_equal(&expected, &actual);
        assert_eq!(
            actual.get("d/suid").unwrap().mode,
            0o4755,
            "chmod after chown"
        );
        assert!(
            actual
                .get("d/cap")
                .unwrap()
                .xattrs
                .contains_key("security.capability")
        );
        assert_eq!(
            actual.get("d").unwrap().mtime,
            Some(Timestamp::new(1_600_000_000, 5)),
            "directory times are set after their children"
        );
        assert_eq!(
            actual.hardlink_groups(),
            vec![vec![
                PathBuf::from("d/f"),
                PathBuf::from("d/f2"),
                PathBuf::from("top-link")
            ]]
        );
        // And through a layer: what the tar says is what apply did.
        let back = crate::layer::read_changes(&crate::layer::tar(&changes).unwrap()[..]).unwrap();
        assert_trees_equal(&Tree::from_changes(&back).unwrap(), &actual);
    }

    #[test]
    fn later_lists_have_layer_semantics() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let base = everything();
        apply(tmp.path(), &base).unwrap();
        let upper = crate::tree![
            file("d/new", "n"),
            opaque("d"),
            remove("implied/parents"),
            remove("not/there"),
            file("tmp", "dir became a file"),
            dir("p", 0o700),
            file("p/inside", "fifo became a dir"),
            dir("d/sub", 0o755),
            owner("d/new", 5, 5),
            chmod("top-link", 0o600),
            xattr("uni", "user.x", "y"),
            mtime("long", 42),
            file("empty", "replaced").owner(9, 9),
        ];
        apply(tmp.path(), &upper).unwrap();
        let mut expected = Tree::from_changes(&base).unwrap();
        expected.apply_changes(&upper).unwrap();
        assert_trees_equal(&expected, &snapshot(tmp.path()).unwrap());
        // Opaque hid the old children only; the new ones stay.
        let d: Vec<_> = expected
            .paths()
            .filter(|p| p.starts_with("d"))
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(d, ["d", "d/new", "d/sub"]);
        assert_eq!(expected.get("d/new").unwrap().uid, 5);
        // chmod through one name shows through all names of the inode.
        assert_eq!(expected.get("top-link").unwrap().mode, 0o600);
        assert!(
            !expected.contains("d/f"),
            "hidden by opaque, the inode lives on"
        );
    }

    #[test]
    fn chown_drops_setuid_like_the_kernel() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let changes = crate::tree![
            file_mode("s", "x", 0o4755),
            file_mode("g", "x", 0o2755),
            file_mode("g-noexec", "x", 0o2745),
            file("c", "x").xattr("security.capability", cap_net_bind_service()),
            dir("sd", 0o4755),
        ];
        apply(tmp.path(), &changes).unwrap();
        let chown = crate::tree![
            owner("s", 1, 1),
            owner("g", 1, 1),
            owner("g-noexec", 1, 1),
            owner("c", 1, 1),
            owner("sd", 1, 1),
        ];
        apply(tmp.path(), &chown).unwrap();
        let mut expected = Tree::from_changes(&changes).unwrap();
        expected.apply_changes(&chown).unwrap();
        assert_trees_equal(&expected, &snapshot(tmp.path()).unwrap());
    }

    #[test]
    fn nothing_escapes_the_root() {
        require_root();
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        let outside = base.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("keep"), "precious").unwrap();
        apply(
            &root,
            &crate::tree![
                symlink("rel", "../outside"),
                symlink("abs", &outside),
                symlink("dotdot", "../../../../.."),
            ],
        )
        .unwrap();
        apply(
            &root,
            &crate::tree![
                file("rel/x", "1"),
                file("abs/y", "2"),
                file("dotdot/z", "3"),
                remove("rel/keep"),
                remove("abs/keep"),
                opaque("abs"),
                owner("dotdot", 1, 1),
            ],
        )
        .unwrap();
        let names: Vec<_> = fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            ["keep"],
            "nothing written or removed outside the root"
        );
        assert_eq!(fs::read(outside.join("keep")).unwrap(), b"precious");
        // The writes landed where an in-root resolution puts them.
        assert_eq!(fs::read(root.join("outside/x")).unwrap(), b"1");
        assert_eq!(
            fs::read(root.join(outside.strip_prefix("/").unwrap()).join("y")).unwrap(),
            b"2"
        );
        assert_eq!(fs::read(root.join("z")).unwrap(), b"3");
        assert_eq!(
            fs::symlink_metadata(root.join("dotdot")).unwrap().uid(),
            1,
            "lchown, not chown"
        );
        // A hard link cannot reach out either: /etc/passwd is resolved inside the root.
        let err = apply(
            &root,
            &crate::tree![hardlink("h", "abs/../../../../etc/passwd")],
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        let err = apply(
            &root,
            &crate::tree![symlink("e", "/etc"), hardlink("h", "e/passwd")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("link to etc/passwd"), "{err}");
        // The model resolves the same way.
        let mut t = Tree::from_changes(&crate::tree![symlink("rel", "../outside")]).unwrap();
        t.apply_changes(&crate::tree![file("rel/x", "1")]).unwrap();
        assert!(t.contains("outside/x"));
    }

    #[test]
    fn errors_name_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let err = apply(tmp.path(), &crate::tree![chmod("missing", 0o600)]).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let err = apply(
            tmp.path(),
            &crate::tree![symlink("s", "x"), chmod("s", 0o600)],
        )
        .unwrap_err();
        assert!(err.to_string().contains("cannot chmod a symlink"), "{err}");
        let err = apply(tmp.path(), &crate::tree![file("f", ""), file("f/g", "")]).unwrap_err();
        assert!(err.to_string().contains("f/g"), "{err}");
        let err = apply(tmp.path(), &crate::tree![file("../x", "")]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn overlay_and_oci_whiteouts_read_the_same() {
        require_root();
        let overlay = tempfile::tempdir().unwrap();
        let oci = tempfile::tempdir().unwrap();
        let common = || crate::tree![dir("d", 0o755), file("d/kept", "k"), dir("o", 0o755)];
        apply(
            overlay.path(),
            &[
                common(),
                crate::tree![
                    char_dev("d/gone", 0, 0),
                    xattr("o", "trusted.overlay.opaque", "y"),
                    char_dev("real-dev", 1, 3),
                ],
            ]
            .concat(),
        )
        .unwrap();
        apply(
            oci.path(),
            &[
                common(),
                crate::tree![
                    file("d/.wh.gone", ""),
                    file("o/.wh..wh..opq", ""),
                    char_dev("real-dev", 1, 3)
                ],
            ]
            .concat(),
        )
        .unwrap();
        let a = snapshot_with(overlay.path(), &SnapshotOptions::overlay()).unwrap();
        let b = snapshot_with(oci.path(), &SnapshotOptions::oci()).unwrap();
        assert!(matches!(a.get("d/gone").unwrap().kind, NodeKind::Whiteout));
        assert_eq!(a.get("o").unwrap().kind, NodeKind::Dir { opaque: true });
        assert!(
            a.get("o").unwrap().xattrs.is_empty(),
            "the marker xattr is consumed"
        );
        assert!(matches!(
            a.get("real-dev").unwrap().kind,
            NodeKind::CharDev { major: 1, minor: 3 }
        ));
        assert_trees_equal_with(&a, &b, &Compare::strict().ignore_root());
        // Literal reading keeps them as they are.
        let literal = snapshot(overlay.path()).unwrap();
        assert!(matches!(
            literal.get("d/gone").unwrap().kind,
            NodeKind::CharDev { major: 0, minor: 0 }
        ));
        assert!(snapshot(oci.path()).unwrap().contains("d/.wh.gone"));
    }
}
