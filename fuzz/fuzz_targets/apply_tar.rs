//! Arbitrary bytes as a layer blob through the differ's Apply path (`apply_reader`: the same
//! decoders, digest pipeline and unpacker as a real Apply) into a fresh temporary root.
//!
//! The first byte picks plain, gzip, zstd or detected compression of the rest, and a bind
//! target (OCI whiteouts) or an overlay upperdir (overlay whiteouts, with a lowerdir). Beside
//! the root lie a sentinel directory and the lowerdir, and the root holds symlinks into the
//! sentinel (relative and absolute): whatever the layer says, neither may change (not a byte,
//! mode, owner, time, xattr or link count), nor may anything appear next to them.

#![no_main]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use strata_differ::apply_reader;
use strata_differ::media::Compression;
use strata_fuzz::apply;
use strata_proto::types::Mount;

/// What is kept of one file system object to tell whether it changed.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    content: Vec<u8>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let mut out = BTreeMap::new();
    let Ok(p) = CString::new(path.as_os_str().as_bytes()) else {
        return out;
    };
    let mut names = vec![0u8; 4096];
    // SAFETY: valid C string and buffer of the given length.
    let n = unsafe { libc::llistxattr(p.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return out;
    }
    names.truncate(n as usize);
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(cname) = CString::new(name) else {
            continue;
        };
        let mut value = vec![0u8; 4096];
        // SAFETY: valid C strings and buffer of the given length.
        let n = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        value.truncate(n.max(0) as usize);
        out.insert(name.to_vec(), value);
    }
    out
}

/// Every object under `dir` (itself included), by path relative to it.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let path = dir.join(&rel);
        let md = std::fs::symlink_metadata(&path).expect("stat a sentinel");
        let content = if md.is_file() {
            std::fs::read(&path).expect("read a sentinel file")
        } else if md.file_type().is_symlink() {
            use std::os::unix::ffi::OsStrExt;
            std::fs::read_link(&path)
                .expect("read a sentinel link")
                .as_os_str()
                .as_bytes()
                .to_vec()
        } else {
            Vec::new()
        };
        if md.is_dir() {
            for e in std::fs::read_dir(&path).expect("list a sentinel dir") {
                pending.push(rel.join(e.expect("sentinel dir entry").file_name()));
            }
        }
        out.insert(
            rel,
            Entry {
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                nlink: md.nlink(),
                ino: md.ino(),
                mtime: (md.mtime(), md.mtime_nsec()),
                ctime: (md.ctime(), md.ctime_nsec()),
                content,
                xattrs: xattrs(&path),
            },
        );
    }
    out
}

fn names(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("list the input's dir")
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    v.sort();
    v
}

fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(strata_fuzz::scratch_base)
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).expect("path");
    let n = CString::new(name).expect("xattr name");
    // SAFETY: valid C strings and buffer. Best effort: the file system may refuse user.*.
    unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
}

fn run(data: &[u8]) {
    let Some((&mode, blob)) = data.split_first() else {
        return;
    };
    let compression = match mode & 3 {
        apply::PLAIN => Compression::None,
        apply::GZIP => Compression::Gzip,
        apply::ZSTD => Compression::Zstd,
        _ => Compression::Detect,
    };
    let overlay = mode & apply::OVERLAY != 0;

    let dir = tempfile::Builder::new()
        .prefix("strata-fuzz-apply-")
        .tempdir_in(base())
        .expect("temp dir");
    let t = dir.path();
    let (root, lower, sentinel, work, scratch) = (
        t.join("root"),
        t.join("lower"),
        t.join("sentinel"),
        t.join("work"),
        t.join("scratch"),
    );
    for d in [&root, &lower, &sentinel, &work, &scratch] {
        std::fs::create_dir(d).expect("mkdir");
    }
    std::fs::write(sentinel.join("secret"), b"secret").expect("write");
    std::fs::create_dir(sentinel.join("d")).expect("mkdir");
    std::fs::write(sentinel.join("d/f"), b"f").expect("write");
    symlink("../secret", sentinel.join("d/l")).expect("symlink");
    // What a layer may try to write through.
    symlink("../sentinel", root.join("up")).expect("symlink");
    symlink(&sentinel, root.join("abs")).expect("symlink");
    symlink(sentinel.join("secret"), root.join("secret")).expect("symlink");
    symlink("../lower/d", root.join("low")).expect("symlink");
    std::fs::create_dir(root.join("d")).expect("mkdir");
    std::fs::write(root.join("d/f"), b"root file").expect("write");
    // A lowerdir whose directories lend their metadata to parents created in the upperdir.
    std::fs::create_dir_all(lower.join("d/sub")).expect("mkdir");
    std::fs::set_permissions(lower.join("d"), std::fs::Permissions::from_mode(0o750))
        .expect("chmod");
    set_xattr(&lower.join("d"), "user.lower", b"1");
    set_xattr(&lower.join("d"), "trusted.overlay.opaque", b"y");
    std::fs::write(lower.join("d/f"), b"lower file").expect("write");

    let before = (snapshot(&sentinel), snapshot(&lower), names(t));

    let mount = if overlay {
        Mount::overlay(Some((&root, &work)), &[&lower])
    } else {
        Mount::bind(&root, false)
    };
    // Errors are fine: only what the apply did outside the root is checked.
    let _ = apply_reader(
        std::io::Cursor::new(blob.to_vec()),
        compression,
        &[mount],
        &scratch,
        false,
    );

    let after = (snapshot(&sentinel), snapshot(&lower), names(t));
    assert!(
        before.0 == after.0,
        "the apply changed the sentinel beside the root:\n{:#?}\n{:#?}",
        before.0,
        after.0
    );
    assert!(
        before.1 == after.1,
        "the apply changed the lowerdir:\n{:#?}\n{:#?}",
        before.1,
        after.1
    );
    assert_eq!(before.2, after.2, "the apply wrote beside the root");
}

fuzz_target!(|data: &[u8]| run(data));
