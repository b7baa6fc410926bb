//! Where Apply writes, decided from the mounts containerd passes (containerd's
//! `plugins/diff/walking` `apply_linux.go`):
//! - one overlay mount with `upperdir=`: straight into the upperdir, nothing mounted, overlay
//!   whiteouts; its `lowerdir=`s give created parents the metadata the merged view had;
//! - one bind mount: straight into its source, OCI whiteouts;
//! - anything else: mounted on a private temporary directory, OCI whiteouts, unmounted after.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use strata_common::error::{Error, Result};
use strata_proto::types::Mount;
use tracing::warn;

use crate::whiteout;

/// A resolved Apply target.
#[derive(Debug)]
pub struct Target {
    pub root: PathBuf,
    pub whiteouts: whiteout::Mode,
    /// Overlay lowerdirs, highest first (empty unless writing into an upperdir).
    pub lowers: Vec<PathBuf>,
    mounted: Option<TempMount>,
}

impl Target {
    /// Decides the target of `mounts`, mounting them under `scratch` when needed.
    pub fn prepare(mounts: &[Mount], scratch: &Path) -> Result<Target> {
        if let [m] = mounts {
            if m.r#type == "overlay"
                && let Some(t) = overlay_upper(&m.options)
            {
                return Ok(t);
            }
            if m.r#type == "bind" {
                return Ok(Target {
                    root: PathBuf::from(&m.source),
                    whiteouts: whiteout::Mode::Oci,
                    lowers: Vec::new(),
                    mounted: None,
                });
            }
        }
        if mounts.is_empty() {
            return Err(Error::invalid_argument("apply needs at least one mount"));
        }
        let tm = TempMount::mount(mounts, scratch)?;
        Ok(Target {
            root: tm.dir.clone(),
            whiteouts: whiteout::Mode::Oci,
            lowers: Vec::new(),
            mounted: Some(tm),
        })
    }

    /// Unmounts what [`Target::prepare`] mounted, reporting failure (dropping does it too,
    /// silently).
    pub fn finish(mut self) -> Result<()> {
        match self.mounted.take() {
            Some(tm) => tm.unmount(),
            None => Ok(()),
        }
    }
}

fn overlay_upper(options: &[String]) -> Option<Target> {
    let mut upper = None;
    let mut lowers = Vec::new();
    let mut userxattr = false;
    for o in options {
        if let Some(u) = o.strip_prefix("upperdir=") {
            upper = Some(PathBuf::from(u));
        } else if let Some(l) = o.strip_prefix("lowerdir=") {
            lowers = l
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect();
        } else if o == "userxattr" {
            userxattr = true;
        }
    }
    let opaque_xattr = if userxattr {
        whiteout::USER_OPAQUE
    } else {
        whiteout::TRUSTED_OPAQUE
    };
    Some(Target {
        root: upper?,
        whiteouts: whiteout::Mode::Overlay { opaque_xattr },
        lowers,
        mounted: None,
    })
}

/// Mounts stacked on a private directory, undone on drop.
#[derive(Debug)]
struct TempMount {
    dir: PathBuf,
    mounted: usize,
}

impl TempMount {
    fn mount(mounts: &[Mount], scratch: &Path) -> Result<TempMount> {
        std::fs::create_dir_all(scratch)
            .map_err(|e| Error::io(format!("create {}", scratch.display()), e))?;
        let dir = tempfile::Builder::new()
            .prefix("apply-")
            .tempdir_in(scratch)
            .map_err(|e| Error::io(format!("temp dir in {}", scratch.display()), e))?
            .keep();
        let mut tm = TempMount { dir, mounted: 0 };
        for m in mounts {
            mount_one(m, &tm.dir).map_err(|e| {
                Error::io(
                    format!("mount {} ({}) on {}", m.source, m.r#type, tm.dir.display()),
                    e,
                )
            })?;
            tm.mounted += 1;
        }
        Ok(tm)
    }

    fn unmount(mut self) -> Result<()> {
        let r = self.undo();
        std::mem::forget(self);
        r
    }

    fn undo(&mut self) -> Result<()> {
        while self.mounted > 0 {
            unmount(&self.dir)
                .map_err(|e| Error::io(format!("unmount {}", self.dir.display()), e))?;
            self.mounted -= 1;
        }
        std::fs::remove_dir(&self.dir)
            .map_err(|e| Error::io(format!("remove {}", self.dir.display()), e))
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        if let Err(e) = self.undo() {
            warn!(error = %e, "cleaning up the apply mount");
        }
    }
}

fn unmount(target: &Path) -> io::Result<()> {
    use nix::mount::{MntFlags, umount2};
    match umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => umount2(target, MntFlags::MNT_DETACH).map_err(Into::into),
        Err(e) => Err(e.into()),
    }
}

/// Mount flags by option name, as containerd's `mount_linux.go` parses them.
fn flag(o: &str) -> Option<(bool, nix::mount::MsFlags)> {
    use nix::mount::MsFlags as F;
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

fn mount_one(m: &Mount, target: &Path) -> io::Result<()> {
    use nix::mount::{MsFlags, mount};
    let mut flags = MsFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    for o in &m.options {
        match flag(o) {
            Some((true, f)) => flags |= f,
            Some((false, f)) => flags &= !f,
            None => data.push(o),
        }
    }
    let kind = if m.r#type == "bind" {
        flags |= MsFlags::MS_BIND;
        None
    } else {
        Some(m.r#type.as_str())
    };
    let data = data.join(",");
    // The kernel takes at most a page of mount data; containerd leaves 512 bytes of slack.
    if kind == Some("overlay") && data.len() >= 4096 - 512 {
        return mount_overlay_compacted(m, target, flags, &data);
    }
    let ro_bind = flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY);
    mount(
        Some(m.source.as_str()),
        target,
        kind,
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )?;
    if ro_bind {
        // A bind mount ignores MS_RDONLY until remounted.
        let f = flags | MsFlags::MS_REMOUNT;
        if let Err(e) = mount(None::<&str>, target, None::<&str>, f, None::<&str>) {
            let _ = unmount(target);
            return Err(e.into());
        }
    }
    Ok(())
}

/// containerd's answer to overlay options longer than a page: `lowerdir=` relative to the
/// lowers' common parent, mounted from a child process whose working directory is that parent
/// (this process is multi-threaded and must not chdir).
fn mount_overlay_compacted(
    m: &Mount,
    target: &Path,
    flags: nix::mount::MsFlags,
    data: &str,
) -> io::Result<()> {
    let opts: Vec<&str> = data.split(',').collect();
    let too_long = || io::Error::new(io::ErrorKind::InvalidInput, "overlay options too long");
    let idx = opts
        .iter()
        .position(|o| o.starts_with("lowerdir="))
        .ok_or_else(too_long)?;
    let lowers: Vec<&Path> = opts[idx]
        .trim_start_matches("lowerdir=")
        .split(':')
        .map(Path::new)
        .collect();
    let mut common = lowers
        .first()
        .and_then(|p| p.parent())
        .ok_or_else(too_long)?
        .to_path_buf();
    for l in &lowers {
        while !l.starts_with(&common) {
            common = common.parent().ok_or_else(too_long)?.to_path_buf();
        }
    }
    let mut rel = Vec::new();
    for l in &lowers {
        rel.push(
            l.strip_prefix(&common)
                .map_err(|_| too_long())?
                .to_string_lossy()
                .into_owned(),
        );
    }
    let mut new: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
    new[idx] = format!("lowerdir={}", rel.join(":"));
    let data = new.join(",");
    if data.len() >= 4096 {
        return Err(too_long());
    }
    let target = std::path::absolute(target)?;
    let c = |b: &[u8]| CString::new(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let c_dir = c(common.as_os_str().as_bytes())?;
    let c_source = c(m.source.as_bytes())?;
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
    if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else if libc::WIFEXITED(status) {
        Err(io::Error::from_raw_os_error(libc::WEXITSTATUS(status)))
    } else {
        Err(io::Error::other("overlay mount helper died"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(t: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            r#type: t.into(),
            source: source.into(),
            target: String::new(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn overlay_with_upper_writes_the_upperdir() {
        let t = Target::prepare(
            &[mount(
                "overlay",
                "overlay",
                &["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"],
            )],
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(t.root, Path::new("/u"));
        assert_eq!(t.lowers, [Path::new("/l1"), Path::new("/l2")]);
        assert_eq!(
            t.whiteouts,
            whiteout::Mode::Overlay {
                opaque_xattr: whiteout::TRUSTED_OPAQUE
            }
        );
        let t = Target::prepare(
            &[mount("overlay", "overlay", &["upperdir=/u", "userxattr"])],
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(
            t.whiteouts,
            whiteout::Mode::Overlay {
                opaque_xattr: whiteout::USER_OPAQUE
            }
        );
    }

    #[test]
    fn bind_writes_its_source() {
        let t = Target::prepare(
            &[mount("bind", "/snap/fs", &["rbind", "rw"])],
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(t.root, Path::new("/snap/fs"));
        assert_eq!(t.whiteouts, whiteout::Mode::Oci);
        t.finish().unwrap();
    }

    #[test]
    fn other_mounts_are_mounted_and_undone() {
        // A read-only overlay (no upperdir) cannot be written through: it must be mounted,
        // and the failure must leave nothing behind.
        let scratch = tempfile::tempdir().unwrap();
        let e = Target::prepare(
            &[mount(
                "overlay",
                "overlay",
                &["lowerdir=/nonexistent-a:/nonexistent-b"],
            )],
            scratch.path(),
        )
        .unwrap_err();
        assert!(e.message().contains("mount"), "{e}");
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
        assert!(Target::prepare(&[], scratch.path()).is_err());
    }
}
