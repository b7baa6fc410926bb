//! Where Apply writes, decided from the mounts containerd passes (containerd's
//! `plugins/diff/walking` `apply_linux.go`):
//! - one overlay mount with `upperdir=`: straight into the upperdir, nothing mounted, overlay
//!   whiteouts; its `lowerdir=`s give created parents the metadata the merged view had;
//! - one bind mount: straight into its source, OCI whiteouts;
//! - anything else: mounted on a private temporary directory, OCI whiteouts, unmounted after.

use std::path::{Path, PathBuf};

use strata_common::error::{Error, Result};
use strata_common::mount::{mount, unmount};
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

/// `mounts` changed to mount read-only, as containerd's `WithReadonlyTempMount` does: an
/// overlay's upperdir becomes its top lowerdir (and its workdir goes), others get `ro`.
pub fn readonly(mounts: &[Mount]) -> Vec<Mount> {
    mounts
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if m.r#type == "overlay" {
                let upper = m
                    .options
                    .iter()
                    .find_map(|o| o.strip_prefix("upperdir=").map(str::to_string));
                if let Some(upper) = upper {
                    m.options
                        .retain(|o| !o.starts_with("upperdir=") && !o.starts_with("workdir="));
                    match m.options.iter_mut().find(|o| o.starts_with("lowerdir=")) {
                        Some(l) => *l = format!("lowerdir={upper}:{}", &l["lowerdir=".len()..]),
                        None => m.options.push(format!("lowerdir={upper}")),
                    }
                }
            } else {
                m.options.retain(|o| o != "rw");
                m.options.push("ro".to_string());
            }
            m
        })
        .collect()
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
pub(crate) struct TempMount {
    dir: PathBuf,
    mounted: usize,
}

impl TempMount {
    /// Where the mounts are.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn mount(mounts: &[Mount], scratch: &Path) -> Result<TempMount> {
        std::fs::create_dir_all(scratch)
            .map_err(|e| Error::io(format!("create {}", scratch.display()), e))?;
        let dir = tempfile::Builder::new()
            .prefix("apply-")
            .tempdir_in(scratch)
            .map_err(|e| Error::io(format!("temp dir in {}", scratch.display()), e))?
            .keep();
        let mut tm = TempMount { dir, mounted: 0 };
        for m in mounts {
            mount(&m.r#type, &m.source, &m.options, &tm.dir).map_err(|e| {
                Error::io(
                    format!("mount {} ({}) on {}", m.source, m.r#type, tm.dir.display()),
                    e,
                )
            })?;
            tm.mounted += 1;
        }
        strata_common::crashpoint::hit("differ.temp_mount.mounted");
        Ok(tm)
    }

    pub(crate) fn unmount(mut self) -> Result<()> {
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
            warn!(error = %e, "cleaning up a temporary mount");
        }
    }
}

/// Undoes what a killed process left on `scratch`: unmounts every mount below it (stacked
/// ones too, deepest first) and removes the then empty directories. Directories are only
/// ever removed one by one and empty, so a mount that would not go keeps what it shows.
/// Returns how many directories were removed.
pub fn reap_scratch(scratch: &Path) -> Result<usize> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read /proc/self/mountinfo", e))?;
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(scratch) && p != scratch)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in &points {
        if let Err(e) = unmount(p) {
            warn!(path = %p.display(), error = %e, "cannot unmount what a previous run left");
        }
    }
    let entries = match std::fs::read_dir(scratch) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(format!("read {}", scratch.display()), e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        match std::fs::remove_dir(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => {
                warn!(path = %entry.path().display(), error = %e, "left on the scratch directory")
            }
        }
    }
    Ok(removed)
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes.
fn unescape_mountinfo(p: &str) -> String {
    p.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(t: &str, source: &str, options: &[&str]) -> Mount {
        Mount::new(t, source, options)
    }

    #[test]
    fn reap_scratch_unmounts_stacked_mounts_and_removes_only_empty_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let (scratch, src) = (tmp.path().join("mounts"), tmp.path().join("src"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("kept"), "k").unwrap();
        let bind = Mount::bind(&src, true);
        // What a process killed with two mounts stacked on one directory leaves.
        let tm = TempMount::mount(&[bind.clone(), bind], &scratch).unwrap();
        let dir = tm.dir().to_path_buf();
        std::mem::forget(tm);
        std::fs::create_dir(scratch.join("not-empty")).unwrap();
        std::fs::write(scratch.join("not-empty/f"), "f").unwrap();
        assert_eq!(reap_scratch(&scratch).unwrap(), 1);
        assert!(!dir.exists());
        assert!(scratch.join("not-empty/f").exists(), "only empty dirs go");
        assert_eq!(std::fs::read_to_string(src.join("kept")).unwrap(), "k");
        assert_eq!(reap_scratch(&tmp.path().join("absent")).unwrap(), 0);
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
    fn readonly_as_containerd_makes_it() {
        let ro = readonly(&[
            mount(
                "overlay",
                "overlay",
                &["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"],
            ),
            mount("bind", "/s", &["rbind", "rw"]),
        ]);
        assert_eq!(ro[0].options, ["index=off", "lowerdir=/u:/l1:/l2"]);
        assert_eq!(ro[1].options, ["rbind", "ro"]);
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
