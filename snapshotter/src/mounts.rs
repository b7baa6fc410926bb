//! The mounts a snapshot is handed out as, in containerd's overlay (and native) snapshotter
//! shapes, plus a small mounter for tests and tools (the server itself never mounts: the
//! caller, usually containerd, does).

use std::io;
use std::path::{Path, PathBuf};

#[cfg(test)]
use crate::idmap::RemapLabels;
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
    bind_with(source, readonly, Vec::new())
}

fn bind_with(source: PathBuf, readonly: bool, mut options: Vec<String>) -> Vec<Mount> {
    options.push(if readonly { "ro" } else { "rw" }.into());
    options.push("rbind".into());
    vec![Mount {
        kind: "bind".into(),
        source: path_str(source),
        target: String::new(),
        options,
    }]
}

/// containerd's overlay snapshotter's `mounts()`: no parent gives a bind of the snapshot's own
/// dir (`ro` for a view); a view of one parent gives a read-only bind of the parent; anything
/// else is an overlay with `lowerdir=` nearest parent first, and `workdir=`/`upperdir=` when
/// active. `options` (detected `index=off`/`userxattr` plus configured ones) go on overlay
/// mounts only, as in containerd.
///
/// With `idmap_options` (id-mapped mounts), a snapshot's id-mapping labels come first on
/// every shape as `uidmap=`/`gidmap=`, as in containerd: its mount code then makes id-mapped
/// mounts of the lower dirs (or of the bind mount) instead of passing them on.
///
/// A snapshot standing on a shifted copy (`remap_copy`) has that copy as its one lower dir in
/// place of its parent chain, and no mapping options: the copy's files already carry host ids.
pub fn overlay_mounts(
    layout: &Layout,
    s: &Snapshot,
    options: &[String],
    idmap_options: bool,
) -> Vec<Mount> {
    let mut opts = Vec::with_capacity(options.len() + 5);
    if let Some(copy) = s.remap_copy
        && !s.parent_ids.is_empty()
    {
        let lower = layout.remap_fs(copy);
        if s.kind == Kind::View {
            return bind_with(lower, true, opts);
        }
        opts.push(format!("workdir={}", layout.work(s.id).display()));
        opts.push(format!("upperdir={}", layout.fs(s.id).display()));
        opts.push(format!("lowerdir={}", lower.display()));
        opts.extend(options.iter().cloned());
        return vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: opts,
        }];
    }
    if idmap_options {
        opts.extend(s.remap.options());
    }
    if s.parent_ids.is_empty() {
        return bind_with(layout.fs(s.id), s.kind == Kind::View, opts);
    }
    if s.kind == Kind::Active {
        opts.push(format!("workdir={}", layout.work(s.id).display()));
        opts.push(format!("upperdir={}", layout.fs(s.id).display()));
    } else if let [only] = s.parent_ids.as_slice() {
        return bind_with(layout.fs(*only), true, opts);
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
        strata_common::mount::mount(&m.kind, &m.source, &m.options, target)?;
    }
    Ok(())
}

pub use strata_common::mount::unmount;

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
            remap: RemapLabels::default(),
            remap_copy: None,
        }
    }

    #[test]
    fn a_shifted_copy_replaces_the_chain_without_mapping_options() {
        let l = Layout::new("/r");
        let opts = vec!["index=off".to_string()];
        let on_copy = |kind, parents: &[u64]| Snapshot {
            remap_copy: Some(7),
            ..mapped(5, kind, parents)
        };
        let m = overlay_mounts(&l, &on_copy(Kind::Active, &[2, 1]), &opts, false);
        assert_eq!(
            m[0].options,
            [
                "workdir=/r/snapshots/5/work",
                "upperdir=/r/snapshots/5/fs",
                "lowerdir=/r/snapshots/r7/fs",
                "index=off",
            ]
        );
        // One parent or many, the copy is the only lower.
        let one = overlay_mounts(&l, &on_copy(Kind::Active, &[2]), &opts, false);
        assert_eq!(one, m);
        let v = overlay_mounts(&l, &on_copy(Kind::View, &[2, 1]), &opts, false);
        assert_eq!(v[0].kind, "bind");
        assert_eq!(v[0].source, "/r/snapshots/r7/fs");
        assert_eq!(v[0].options, ["ro", "rbind"]);
    }

    fn mapped(id: u64, kind: Kind, parents: &[u64]) -> Snapshot {
        Snapshot {
            remap: RemapLabels {
                uidmap: Some("0:100000:65536".into()),
                gidmap: Some("0:200000:65536,65536:300000:1".into()),
            },
            ..snap(id, kind, parents)
        }
    }

    #[test]
    fn mapping_labels_lead_every_shape_when_ids_can_be_remapped() {
        let l = Layout::new("/r");
        let opts = vec!["index=off".to_string()];
        let maps = [
            "uidmap=0:100000:65536",
            "gidmap=0:200000:65536,65536:300000:1",
        ];
        let m = overlay_mounts(&l, &mapped(1, Kind::Active, &[]), &opts, true);
        assert_eq!(m[0].kind, "bind");
        assert_eq!(m[0].options, [maps[0], maps[1], "rw", "rbind"]);
        let m = overlay_mounts(&l, &mapped(3, Kind::View, &[2]), &opts, true);
        assert_eq!(m[0].source, "/r/snapshots/2/fs");
        assert_eq!(m[0].options, [maps[0], maps[1], "ro", "rbind"]);
        let m = overlay_mounts(&l, &mapped(3, Kind::Active, &[2, 1]), &opts, true);
        assert_eq!(
            m[0].options,
            [
                maps[0],
                maps[1],
                "workdir=/r/snapshots/3/work",
                "upperdir=/r/snapshots/3/fs",
                "lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs",
                "index=off",
            ]
        );
        let m = overlay_mounts(&l, &mapped(4, Kind::View, &[2, 1]), &[], true);
        assert_eq!(
            m[0].options,
            [
                maps[0],
                maps[1],
                "lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs"
            ]
        );
        // Without kernel support the labels change nothing (containerd's overlayfs without
        // `remapIDs`): the client has shifted the layers itself (its slow_chown path).
        for (kind, parents) in [
            (Kind::Active, &[][..]),
            (Kind::View, &[2][..]),
            (Kind::Active, &[2, 1][..]),
        ] {
            assert_eq!(
                overlay_mounts(&l, &mapped(5, kind, parents), &opts, false),
                overlay_mounts(&l, &snap(5, kind, parents), &opts, true),
            );
        }
    }

    #[test]
    fn shapes_match_containerds_overlay_snapshotter() {
        let l = Layout::new("/r");
        let opts = vec!["index=off".to_string(), "volatile".to_string()];
        let m = overlay_mounts(&l, &snap(1, Kind::Active, &[]), &opts, true);
        assert_eq!(m, bind(PathBuf::from("/r/snapshots/1/fs"), false));
        assert_eq!(m[0].options, ["rw", "rbind"]);
        let m = overlay_mounts(&l, &snap(1, Kind::View, &[]), &opts, true);
        assert_eq!(m[0].options, ["ro", "rbind"]);
        let m = overlay_mounts(&l, &snap(3, Kind::View, &[2]), &opts, true);
        assert_eq!(m[0].kind, "bind");
        assert_eq!(m[0].source, "/r/snapshots/2/fs");
        assert_eq!(m[0].options, ["ro", "rbind"]);
        let m = overlay_mounts(&l, &snap(3, Kind::Active, &[2, 1]), &opts, true);
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
        let m = overlay_mounts(&l, &snap(4, Kind::View, &[2, 1]), &[], true);
        assert_eq!(
            m[0].options,
            ["lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs"]
        );
        let m = native_mounts(&l, &snap(4, Kind::Active, &[2, 1]));
        assert_eq!(m, bind(PathBuf::from("/r/snapshots/4/fs"), false));
    }
}
