//! Mounting containerd's mount shapes (`bind`, `overlay`, ...) the way containerd's
//! `core/mount` does on Linux: fstab-style options split into flags and data, read-only binds
//! remounted, and overlay options longer than a page shortened by making `lowerdir=` relative
//! to the lowers' common parent. Shared by the snapshotter (probes, tests) and the differ
//! (Apply onto mounts it cannot write into directly).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, umount2};

/// The kernel takes at most a page of mount data; containerd keeps 512 bytes of slack for what
/// the kernel adds itself.
const MAX_OVERLAY_DATA: usize = 4096 - 512;

/// Mount flags by option name, as containerd's `mount_linux.go` parses them: `Some((true, f))`
/// sets `f`, `Some((false, f))` clears it, `None` means the option is filesystem data.
fn flag(o: &str) -> Option<(bool, MsFlags)> {
    use MsFlags as F;
    Some(match o {
        "ro" => (true, F::MS_RDONLY),
        "rw" => (false, F::MS_RDONLY),
        "bind" => (true, F::MS_BIND),
        "rbind" => (true, F::MS_BIND | F::MS_REC),
        "nosuid" => (true, F::MS_NOSUID),
        "suid" => (false, F::MS_NOSUID),
        "nodev" => (true, F::MS_NODEV),
        "dev" => (false, F::MS_NODEV),
        "noexec" => (true, F::MS_NOEXEC),
        "exec" => (false, F::MS_NOEXEC),
        "sync" => (true, F::MS_SYNCHRONOUS),
        "async" => (false, F::MS_SYNCHRONOUS),
        "noatime" => (true, F::MS_NOATIME),
        "relatime" => (true, F::MS_RELATIME),
        "strictatime" => (true, F::MS_STRICTATIME),
        "nodiratime" => (true, F::MS_NODIRATIME),
        "remount" => (true, F::MS_REMOUNT),
        "defaults" => (false, F::empty()),
        _ => return None,
    })
}

/// Splits fstab-style options into mount flags and the data string.
fn parse_options(options: &[String]) -> (MsFlags, Vec<&str>) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match flag(o) {
            Some((true, f)) => flags |= f,
            Some((false, f)) => flags &= !f,
            None => data.push(o.as_str()),
        }
    }
    (flags, data)
}

/// Mounts one containerd mount (`kind` is its type: `bind`, `overlay`, ...) on `target`.
pub fn mount(kind: &str, source: &str, options: &[String], target: &Path) -> io::Result<()> {
    let (mut flags, data) = parse_options(options);
    let fstype = if kind == "bind" {
        flags |= MsFlags::MS_BIND;
        None
    } else {
        Some(kind)
    };
    let joined = data.join(",");
    if kind == "overlay" && joined.len() >= MAX_OVERLAY_DATA {
        let (dir, compacted) = compact_lowerdir(&data).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "overlay options too long and lowerdirs share no parent",
            )
        })?;
        return mount_in_dir(&dir, source, target, flags, &compacted.join(","));
    }
    let ro_bind = flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY);
    nix::mount::mount(
        Some(source),
        target,
        fstype,
        flags,
        (!joined.is_empty()).then_some(joined.as_str()),
    )?;
    if ro_bind {
        // A bind mount ignores MS_RDONLY until it is remounted.
        let f = flags | MsFlags::MS_REMOUNT;
        if let Err(e) = nix::mount::mount(None::<&str>, target, None::<&str>, f, None::<&str>) {
            let _ = unmount(target);
            return Err(e.into());
        }
    }
    Ok(())
}

/// Rewrites `lowerdir=` relative to the lower dirs' common parent directory (containerd's
/// `compactLowerdirOption`); returns that directory and the new options.
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
    flags: MsFlags,
    data: &str,
) -> io::Result<()> {
    let target = std::path::absolute(target)?;
    let c = |b: &[u8]| CString::new(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let c_dir = c(dir.as_os_str().as_bytes())?;
    let c_source = c(source.as_bytes())?;
    let c_target = c(target.as_os_str().as_bytes())?;
    let c_fstype = c(b"overlay")?;
    let c_data = c(data.as_bytes())?;
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
                flags.bits(),
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

/// Unmounts `target`, lazily if it is busy (an open file must not make cleanup fail).
pub fn unmount(target: &Path) -> io::Result<()> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => umount2(target, MntFlags::MNT_DETACH).map_err(Into::into),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(o: &[&str]) -> Vec<String> {
        o.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_split_into_flags_and_data_like_containerd() {
        let o = opts(&["ro", "rbind", "nosuid", "index=off", "exec", "noexec"]);
        let (flags, data) = parse_options(&o);
        assert_eq!(
            flags,
            MsFlags::MS_RDONLY
                | MsFlags::MS_BIND
                | MsFlags::MS_REC
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NOEXEC
        );
        assert_eq!(data, ["index=off"]);
        let (flags, _) = parse_options(&opts(&["ro", "rw"]));
        assert!(flags.is_empty(), "a later option clears an earlier one");
    }

    #[test]
    fn lowerdir_compaction_uses_the_common_parent() {
        let o = [
            "upperdir=/r/s/9/fs",
            "lowerdir=/r/s/2/fs:/r/s/10/fs",
            "index=off",
        ];
        let (dir, out) = compact_lowerdir(&o).unwrap();
        assert_eq!(dir, Path::new("/r/s"));
        assert_eq!(
            out,
            ["upperdir=/r/s/9/fs", "lowerdir=2/fs:10/fs", "index=off"]
        );
        assert!(
            compact_lowerdir(&["lowerdir=/a/fs:/b/fs"]).is_none(),
            "only / in common"
        );
        assert!(compact_lowerdir(&["upperdir=/x"]).is_none());
    }

    #[test]
    fn read_only_bind_and_long_overlay_mount_for_real() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let tgt = dir.path().join("tgt");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&tgt).unwrap();
        std::fs::write(src.join("f"), b"x").unwrap();
        mount("bind", src.to_str().unwrap(), &opts(&["ro", "rbind"]), &tgt).unwrap();
        let write = std::fs::write(tgt.join("g"), b"y");
        unmount(&tgt).unwrap();
        assert!(write.is_err(), "a ro bind must refuse writes");

        // Enough lowers with long names to overflow a page, as a deep image does.
        let base = dir
            .path()
            .join("layers-with-a-long-directory-name-to-fill-the-page");
        let mut lowers = Vec::new();
        for i in 0..60 {
            let l = base.join(format!("{i:04}-a-rather-long-layer-directory-name/fs"));
            std::fs::create_dir_all(&l).unwrap();
            std::fs::write(l.join(format!("file{i}")), b"").unwrap();
            lowers.push(l.to_string_lossy().into_owned());
        }
        let lowerdir = format!("lowerdir={}", lowers.join(":"));
        assert!(lowerdir.len() > 4096);
        mount("overlay", "overlay", &[lowerdir], &tgt).unwrap();
        let seen = std::fs::read_dir(&tgt).unwrap().count();
        unmount(&tgt).unwrap();
        assert_eq!(seen, 60);
    }
}
