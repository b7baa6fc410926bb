//! The mounts a snapshot is handed out as, in containerd's overlay (and native) snapshotter
//! shapes, plus a small mounter for tests and tools (the server itself never mounts: the
//! caller, usually containerd, does).

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use crate::layout::Layout;
use crate::metadata::{Kind, Snapshot};

/// containerd's `mount.Mount`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// `bind` or `overlay`.
    pub kind: String,
    pub source: String,
    pub target: String,
    pub options: Vec<String>,
}

fn path_str(p: PathBuf) -> String {
    p.to_string_lossy().into_owned()
}

fn bind(source: PathBuf, readonly: bool) -> Vec<Mount> {
    vec![Mount {
        kind: "bind".into(),
        source: path_str(source),
        target: String::new(),
        options: vec![if readonly { "ro" } else { "rw" }.into(), "rbind".into()],
    }]
}

/// containerd's overlay snapshotter's `mounts()`: no parent gives a bind of the snapshot's own
/// dir (`ro` for a view); a view of one parent gives a read-only bind of the parent; anything
/// else is an overlay with `lowerdir=` nearest parent first, and `workdir=`/`upperdir=` when
/// active. `options` (detected `index=off`/`userxattr` plus configured ones) go on overlay
/// mounts only, as in containerd.
pub fn overlay_mounts(layout: &Layout, s: &Snapshot, options: &[String]) -> Vec<Mount> {
    if s.parent_ids.is_empty() {
        return bind(layout.fs(s.id), s.kind == Kind::View);
    }
    let mut opts = Vec::with_capacity(options.len() + 3);
    if s.kind == Kind::Active {
        opts.push(format!("workdir={}", layout.work(s.id).display()));
        opts.push(format!("upperdir={}", layout.fs(s.id).display()));
    } else if let [only] = s.parent_ids.as_slice() {
        return bind(layout.fs(*only), true);
    }
    let lower: Vec<String> = s
        .parent_ids
        .iter()
        .map(|id| path_str(layout.fs(*id)))
        .collect();
    opts.push(format!("lowerdir={}", lower.join(":")));
    opts.extend(options.iter().cloned());
    vec![Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options: opts,
    }]
}

/// containerd's native snapshotter: every snapshot is its own full copy, bound in.
pub fn native_mounts(layout: &Layout, s: &Snapshot) -> Vec<Mount> {
    bind(layout.fs(s.id), s.kind == Kind::View)
}

/// Mounts `mounts` on `target` in order, as containerd's `mount.All` does for these shapes
/// (bind with `ro` remounted read-only; overlay with its options as data, its `lowerdir`
/// made relative to a common parent and mounted from there when the options would not fit
/// in a page, as containerd's `compactLowerdirOption` does).
pub fn mount_all(mounts: &[Mount], target: &Path) -> io::Result<()> {
    for m in mounts {
        mount_one(m, target)?;
    }
    Ok(())
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn mount_one(m: &Mount, target: &Path) -> io::Result<()> {
    use nix::mount::{MsFlags, mount};
    match m.kind.as_str() {
        "bind" => {
            let readonly = m.options.iter().any(|o| o == "ro");
            let mut flags = MsFlags::MS_BIND;
            if m.options.iter().any(|o| o == "rbind") {
                flags |= MsFlags::MS_REC;
            }
            mount(
                Some(Path::new(&m.source)),
                target,
                None::<&str>,
                flags,
                None::<&str>,
            )?;
            if readonly {
                let flags = flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
                    let _ = unmount(target);
                    return Err(e.into());
                }
            }
            Ok(())
        }
        "overlay" => {
            let mut flags = MsFlags::empty();
            let data: Vec<&str> = m
                .options
                .iter()
                .map(String::as_str)
                .filter(|o| match *o {
                    "ro" => {
                        flags |= MsFlags::MS_RDONLY;
                        false
                    }
                    "rw" => false,
                    _ => true,
                })
                .collect();
            let joined = data.join(",");
            // The kernel takes at most a page of mount data; containerd leaves 512 bytes
            // of slack for the kernel's own additions.
            let page = 4096usize;
            if joined.len() < page - 512 {
                return mount(
                    Some(m.source.as_str()),
                    target,
                    Some("overlay"),
                    flags,
                    Some(joined.as_str()),
                )
                .map_err(Into::into);
            }
            let (dir, compacted) = compact_lowerdir(&data).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "overlay options too long and lowerdirs share no parent",
                )
            })?;
            mount_in_dir(&dir, &m.source, target, flags.bits(), &compacted.join(","))
        }
        other => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("mount type {other:?}"),
        )),
    }
}

/// Rewrites `lowerdir=` relative to the lower dirs' common parent directory; returns that
/// directory and the new options.
pub fn compact_lowerdir(options: &[&str]) -> Option<(PathBuf, Vec<String>)> {
    let idx = options.iter().position(|o| o.starts_with("lowerdir="))?;
    let lowers: Vec<&str> = options[idx].strip_prefix("lowerdir=")?.split(':').collect();
    let first = Path::new(lowers.first()?);
    let mut common: PathBuf = first.parent()?.to_path_buf();
    for l in &lowers {
        while !Path::new(l).starts_with(&common) {
            common = common.parent()?.to_path_buf();
        }
    }
    if common == Path::new("/") {
        return None;
    }
    let rel: Vec<String> = lowers
        .iter()
        .map(|l| {
            Path::new(l)
                .strip_prefix(&common)
                .map(|p| p.to_string_lossy().into_owned())
        })
        .collect::<Result<_, _>>()
        .ok()?;
    let mut out: Vec<String> = options.iter().map(|s| s.to_string()).collect();
    out[idx] = format!("lowerdir={}", rel.join(":"));
    Some((common, out))
}

/// Mounts overlay from inside `dir` in a forked child, so relative lower dirs resolve there
/// without changing this (multi-threaded) process's working directory.
fn mount_in_dir(
    dir: &Path,
    source: &str,
    target: &Path,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::path::absolute(target)?;
    let c_dir = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let c_source = cstr(source)?;
    let c_target = CString::new(target.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let c_fstype = cstr("overlay")?;
    let c_data = cstr(data)?;
    // SAFETY: the child only makes raw syscalls (chdir, mount, _exit) on memory prepared
    // before the fork, which is async-signal-safe.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; the child never returns into Rust code.
        unsafe {
            if libc::chdir(c_dir.as_ptr()) != 0 {
                libc::_exit(*libc::__errno_location());
            }
            let rc = libc::mount(
                c_source.as_ptr(),
                c_target.as_ptr(),
                c_fstype.as_ptr(),
                flags,
                c_data.as_ptr().cast(),
            );
            libc::_exit(if rc == 0 {
                0
            } else {
                *libc::__errno_location()
            });
        }
    }
    let mut status: libc::c_int = 0;
    // SAFETY: waiting for the child we just forked.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else if libc::WIFEXITED(status) {
        Err(io::Error::from_raw_os_error(libc::WEXITSTATUS(status)))
    } else {
        Err(io::Error::other("mount helper child died"))
    }
}

/// Unmounts `target` (lazily if it is busy).
pub fn unmount(target: &Path) -> io::Result<()> {
    use nix::mount::{MntFlags, umount2};
    match umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => umount2(target, MntFlags::MNT_DETACH).map_err(Into::into),
        Err(e) => Err(e.into()),
    }
}

/// A mount that is undone when dropped, so a failing test leaves nothing mounted.
#[derive(Debug)]
pub struct MountGuard {
    target: PathBuf,
    mounted: bool,
}

impl MountGuard {
    pub fn mount(mounts: &[Mount], target: &Path) -> io::Result<MountGuard> {
        mount_all(mounts, target)?;
        Ok(MountGuard {
            target: target.to_path_buf(),
            mounted: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Unmounts now, reporting failure.
    pub fn unmount(mut self) -> io::Result<()> {
        self.mounted = false;
        unmount(&self.target)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.mounted {
            let _ = unmount(&self.target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: u64, kind: Kind, parents: &[u64]) -> Snapshot {
        Snapshot {
            id,
            kind,
            parent_ids: parents.to_vec(),
        }
    }

    #[test]
    fn shapes_match_containerds_overlay_snapshotter() {
        let l = Layout::new("/r");
        let opts = vec!["index=off".to_string(), "volatile".to_string()];
        let m = overlay_mounts(&l, &snap(1, Kind::Active, &[]), &opts);
        assert_eq!(m, bind(PathBuf::from("/r/snapshots/1/fs"), false));
        assert_eq!(m[0].options, ["rw", "rbind"]);
        let m = overlay_mounts(&l, &snap(1, Kind::View, &[]), &opts);
        assert_eq!(m[0].options, ["ro", "rbind"]);
        let m = overlay_mounts(&l, &snap(3, Kind::View, &[2]), &opts);
        assert_eq!(m[0].kind, "bind");
        assert_eq!(m[0].source, "/r/snapshots/2/fs");
        assert_eq!(m[0].options, ["ro", "rbind"]);
        let m = overlay_mounts(&l, &snap(3, Kind::Active, &[2, 1]), &opts);
        assert_eq!(m[0].kind, "overlay");
        assert_eq!(m[0].source, "overlay");
        assert_eq!(
            m[0].options,
            [
                "workdir=/r/snapshots/3/work",
                "upperdir=/r/snapshots/3/fs",
                "lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs",
                "index=off",
                "volatile"
            ]
        );
        let m = overlay_mounts(&l, &snap(4, Kind::View, &[2, 1]), &[]);
        assert_eq!(
            m[0].options,
            ["lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs"]
        );
        let m = native_mounts(&l, &snap(4, Kind::Active, &[2, 1]));
        assert_eq!(m, bind(PathBuf::from("/r/snapshots/4/fs"), false));
    }

    #[test]
    fn lowerdir_compaction_uses_the_common_parent() {
        let opts = [
            "upperdir=/r/s/9/fs",
            "lowerdir=/r/s/2/fs:/r/s/10/fs",
            "index=off",
        ];
        let (dir, out) = compact_lowerdir(&opts).unwrap();
        assert_eq!(dir, Path::new("/r/s"));
        assert_eq!(
            out,
            ["upperdir=/r/s/9/fs", "lowerdir=2/fs:10/fs", "index=off"]
        );
    }
}
