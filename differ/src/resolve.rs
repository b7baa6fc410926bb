//! Paths of a layer resolved inside the directory being written, never outside it.
//!
//! Names from the tar are first cleaned lexically (`..` clamped at the root, leading `/`
//! dropped: containerd's `filepath.Clean` + `fs.RootPath`), then the parent directory is opened
//! with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so symlinks already on disk (from
//! this layer or from the snapshot below) are followed as if the root were `/`. Every change is
//! then made with `*at` calls relative to that parent's fd: no absolute path is ever built from
//! layer data, so a path swapped underneath cannot redirect a write outside either.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A cleaned path relative to the root: its components, none of them `.`, `..` or empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RelPath(Vec<Vec<u8>>);

impl RelPath {
    /// Cleans a tar name: `..` pops (never above the root), `.`, empty and leading `/` vanish.
    pub fn clean(name: &[u8]) -> RelPath {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for c in name.split(|b| *b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => {
                    out.pop();
                }
                c => out.push(c.to_vec()),
            }
        }
        RelPath(out)
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The parent and the last component (`None` for the root).
    pub fn split_last(&self) -> Option<(RelPath, &[u8])> {
        let (last, parent) = self.0.split_last()?;
        Some((RelPath(parent.to_vec()), last.as_slice()))
    }

    pub fn join(&self, name: &[u8]) -> RelPath {
        let mut v = self.0.clone();
        v.push(name.to_vec());
        RelPath(v)
    }

    pub fn components(&self) -> &[Vec<u8>] {
        &self.0
    }

    /// `a/b/c`, or `.` for the root (what openat2 takes).
    pub fn to_bytes(&self) -> Vec<u8> {
        if self.0.is_empty() {
            return b".".to_vec();
        }
        self.0.join(&b'/')
    }

    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.to_bytes()).into_owned()
    }

    pub fn prefix(&self, n: usize) -> RelPath {
        RelPath(self.0[..n.min(self.0.len())].to_vec())
    }
}

pub fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The kernel's `struct open_how` (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2` with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`: `path` relative to `root`, any
/// `..` or absolute symlink clamped at `root`.
pub fn openat2_in_root(root: RawFd, path: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    loop {
        // SAFETY: `c` and `how` outlive the call; the kernel reads `size_of::<open_how>()` bytes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root,
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if rc >= 0 {
            // SAFETY: the kernel just returned this fd to us.
            return Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) });
        }
        let e = io::Error::last_os_error();
        // openat2 asks to retry when a rename raced with RESOLVE_IN_ROOT's `..` handling.
        if e.raw_os_error() != Some(libc::EAGAIN) && e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`: `name` is one component.
pub fn openat_nofollow(
    dir: RawFd,
    name: &[u8],
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    let c = cstring(name)?;
    // SAFETY: `c` is a valid C string for the duration of the call.
    let fd = cvt(unsafe {
        libc::openat(
            dir,
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `lstat` of `name` in `dir`; `None` when it does not exist.
pub fn lstat_at(dir: RawFd, name: &[u8]) -> io::Result<Option<libc::stat>> {
    let c = cstring(name)?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out pointer; `c` a valid C string.
    let rc = unsafe { libc::fstatat(dir, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if rc == 0 {
        return Ok(Some(st));
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::NotFound {
        Ok(None)
    } else {
        Err(e)
    }
}

pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out pointer.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

pub fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub fn mkdir_at(dir: RawFd, name: &[u8], mode: u32) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::mkdirat(dir, c.as_ptr(), mode as libc::mode_t) }).map(drop)
}

pub fn mknod_at(dir: RawFd, name: &[u8], mode: u32, dev: libc::dev_t) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::mknodat(dir, c.as_ptr(), mode as libc::mode_t, dev) }).map(drop)
}

pub fn symlink_at(target: &[u8], dir: RawFd, name: &[u8]) -> io::Result<()> {
    let t = cstring(target)?;
    let c = cstring(name)?;
    // SAFETY: valid C strings.
    cvt(unsafe { libc::symlinkat(t.as_ptr(), dir, c.as_ptr()) }).map(drop)
}

/// A hard link `newdir/newname` to `olddir/oldname` itself (a symlink is not followed).
pub fn link_at(olddir: RawFd, oldname: &[u8], newdir: RawFd, newname: &[u8]) -> io::Result<()> {
    let o = cstring(oldname)?;
    let n = cstring(newname)?;
    // SAFETY: valid C strings.
    cvt(unsafe { libc::linkat(olddir, o.as_ptr(), newdir, n.as_ptr(), 0) }).map(drop)
}

pub fn readlink_at(dir: RawFd, name: &[u8]) -> io::Result<Vec<u8>> {
    let c = cstring(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: valid C string; buf is valid for buf.len() bytes.
    let n = unsafe { libc::readlinkat(dir, c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn unlink_at(dir: RawFd, name: &[u8], flags: libc::c_int) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::unlinkat(dir, c.as_ptr(), flags) }).map(drop)
}

pub fn lchown_at(dir: RawFd, name: &[u8], uid: u32, gid: u32) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::fchownat(dir, c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
}

pub fn fchown(fd: RawFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we own.
    cvt(unsafe { libc::fchown(fd, uid, gid) }).map(drop)
}

pub fn fchmod(fd: RawFd, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we own.
    cvt(unsafe { libc::fchmod(fd, mode as libc::mode_t) }).map(drop)
}

/// chmod of a non-symlink `name` in `dir` (callers never pass symlinks: Linux cannot chmod
/// them and fchmodat would follow).
pub fn chmod_at(dir: RawFd, name: &[u8], mode: u32) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::fchmodat(dir, c.as_ptr(), mode as libc::mode_t, 0) }).map(drop)
}

fn timespec(secs: i64, nanos: u32) -> libc::timespec {
    libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos as libc::c_long,
    }
}

/// Sets atime and mtime of `name` in `dir` without following a symlink.
pub fn utimes_at(dir: RawFd, name: &[u8], atime: (i64, u32), mtime: (i64, u32)) -> io::Result<()> {
    let c = cstring(name)?;
    let ts = [timespec(atime.0, atime.1), timespec(mtime.0, mtime.1)];
    // SAFETY: valid C string and a two-element timespec array.
    cvt(unsafe { libc::utimensat(dir, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
        .map(drop)
}

pub fn futimes(fd: RawFd, atime: (i64, u32), mtime: (i64, u32)) -> io::Result<()> {
    let ts = [timespec(atime.0, atime.1), timespec(mtime.0, mtime.1)];
    // SAFETY: a two-element timespec array.
    cvt(unsafe { libc::futimens(fd, ts.as_ptr()) }).map(drop)
}

pub fn fsetxattr(fd: RawFd, name: &str, value: &[u8]) -> io::Result<()> {
    let n = cstring(name.as_bytes())?;
    // SAFETY: valid C string; value pointer and length describe one slice.
    cvt(unsafe { libc::fsetxattr(fd, n.as_ptr(), value.as_ptr().cast(), value.len(), 0) }).map(drop)
}

/// setxattr on `name` in `dir` without following a symlink, for inodes strata holds no
/// writable fd of (fifos, devices, symlinks). The path goes through `/proc/self/fd/<dir>`,
/// which is `dir` itself, so no component of it comes from the layer but `name`.
pub fn lsetxattr_at(dir: RawFd, name: &[u8], key: &str, value: &[u8]) -> io::Result<()> {
    let mut p = format!("/proc/self/fd/{dir}/").into_bytes();
    p.extend_from_slice(name);
    let p = cstring(&p)?;
    let k = cstring(key.as_bytes())?;
    // SAFETY: valid C strings; value pointer and length describe one slice.
    cvt(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
    .map(drop)
}

/// Whether an xattr call follows a symlink in the last component.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow {
    Yes,
    /// `llistxattr`/`lgetxattr`: the symlink itself.
    No,
}

/// Runs an xattr read syscall with a buffer grown until the answer fits (ERANGE).
fn xattr_buf(mut call: impl FnMut(&mut [u8]) -> isize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    loop {
        let n = call(&mut buf);
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ERANGE) && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 16, 0);
            continue;
        }
        return Err(e);
    }
}

/// The xattr names of `path` (following symlinks or not): `/proc/self/fd/<fd>` of an
/// `O_PATH` fd, followed, reaches the inode itself.
pub fn list_xattrs_of(path: &CStr, follow: Follow) -> io::Result<Vec<Vec<u8>>> {
    let names = xattr_buf(|buf| {
        // SAFETY: path is NUL-terminated; buf is valid for buf.len() bytes.
        unsafe {
            match follow {
                Follow::Yes => libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()),
                Follow::No => libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()),
            }
        }
    })?;
    Ok(names
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// The value of xattr `key` of `path` (following symlinks or not).
pub fn get_xattr_of(path: &CStr, key: &[u8], follow: Follow) -> io::Result<Vec<u8>> {
    let k = cstring(key)?;
    xattr_buf(|buf| {
        // SAFETY: both strings are NUL-terminated; buf is valid for buf.len() bytes.
        unsafe {
            match follow {
                Follow::Yes => libc::getxattr(
                    path.as_ptr(),
                    k.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                ),
                Follow::No => libc::lgetxattr(
                    path.as_ptr(),
                    k.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                ),
            }
        }
    })
}

/// The xattr names of what `path` leads to, following symlinks.
pub fn list_xattrs(path: &CStr) -> io::Result<Vec<Vec<u8>>> {
    list_xattrs_of(path, Follow::Yes)
}

/// The value of xattr `key` of what `path` leads to, following symlinks.
pub fn get_xattr(path: &CStr, key: &[u8]) -> io::Result<Vec<u8>> {
    get_xattr_of(path, key, Follow::Yes)
}

/// Removes `name` in `dir` and, if it is a directory, everything below it, never following
/// a symlink. A missing `name` is fine (`os.RemoveAll`).
pub fn remove_all_at(dir: RawFd, name: &[u8]) -> io::Result<()> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if is_dir(&st) {
        let sub = openat_nofollow(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        remove_children(sub.as_raw_fd(), |_| false)?;
        drop(sub);
        match unlink_at(dir, name, libc::AT_REMOVEDIR) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    } else {
        match unlink_at(dir, name, 0) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

/// The names in the directory `dir`, without `.` and `..`. Listed through
/// `/proc/self/fd/<dir>`, which is the already resolved directory itself.
pub fn read_dir_names(dir: RawFd) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(format!("/proc/self/fd/{dir}"))? {
        names.push(e?.file_name().as_bytes().to_vec());
    }
    Ok(names)
}

/// Removes every child of `dir` for which `keep` is false.
pub fn remove_children(dir: RawFd, keep: impl Fn(&[u8]) -> bool) -> io::Result<()> {
    for n in read_dir_names(dir)? {
        if !keep(&n) {
            remove_all_at(dir, &n)?;
        }
    }
    Ok(())
}

/// The directory written into: an `O_PATH` fd every path is resolved against.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
}

impl Root {
    pub fn open(path: &Path) -> io::Result<Root> {
        let c = cstring(path.as_os_str().as_bytes())?;
        // SAFETY: valid C string.
        let fd = cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: the kernel just returned this fd to us.
        Ok(Root {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// An `O_PATH` fd of the directory `rel` resolves to inside the root.
    pub fn open_dir(&self, rel: &RelPath) -> io::Result<OwnedFd> {
        openat2_in_root(self.fd(), &rel.to_bytes(), libc::O_PATH | libc::O_DIRECTORY)
    }

    /// Opens `rel` for reading (a directory listing), resolved inside the root.
    pub fn open_dir_read(&self, rel: &RelPath) -> io::Result<OwnedFd> {
        openat2_in_root(
            self.fd(),
            &rel.to_bytes(),
            libc::O_RDONLY | libc::O_DIRECTORY,
        )
    }
}

/// `/proc/self/fd/<fd>/<name>` as a C string, to reach `name` in an already resolved dir.
pub fn proc_path(dir: RawFd, name: &[u8]) -> io::Result<CString> {
    let mut p = format!("/proc/self/fd/{dir}").into_bytes();
    if !name.is_empty() {
        p.push(b'/');
        p.extend_from_slice(name);
    }
    cstring(&p)
}

pub fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_clamps_at_root() {
        let c = |s: &str| RelPath::clean(s.as_bytes()).display();
        assert_eq!(c("../../etc/passwd"), "etc/passwd");
        assert_eq!(c("/abs/x/"), "abs/x");
        assert_eq!(c("a/./b/../c"), "a/c");
        assert_eq!(c("./"), ".");
        assert!(RelPath::clean(b"..").is_root());
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink("../../../..", dir.path().join("up")).unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("abs")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        // An absolute symlink to a real dir outside resolves to root/<that path>, which does
        // not exist inside: no fd of the outside dir is ever handed out.
        let e = root.open_dir(&RelPath::clean(b"out")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        for via in ["up", "abs", "up/d/..", "abs/../.."] {
            let fd = root
                .open_dir(&RelPath(vec![via.as_bytes().to_vec()]))
                .unwrap();
            let st = fstat(fd.as_raw_fd()).unwrap();
            let want = std::fs::metadata(dir.path()).unwrap();
            use std::os::unix::fs::MetadataExt;
            assert_eq!(st.st_ino, want.ino(), "{via} must resolve to the root");
        }
    }
}
