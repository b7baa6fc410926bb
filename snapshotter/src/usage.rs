//! Disk usage as containerd's `continuity/fs.DiskUsage` computes it: every inode under the
//! root (the root included) counted once however many hardlinks reach it, and its size as
//! allocated blocks (`st_blocks * 512`), not file length.
//!
//! containerd's overlay snapshotter runs this walk inside Commit, and containerd runs a proxy
//! snapshotter's Commit inside its own metadata write transaction, so a 100k-file layer stalls
//! every other metadata write for the walk. strata commits without walking: the committed
//! snapshot's usage is left unmeasured, a background worker measures it right after (a
//! committed snapshot's files no longer change) and stores it; a Usage call that arrives
//! before the worker does measures it then and stores it. Active snapshots are measured on
//! every Usage call, as in containerd.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use strata_common::{Error, Result};

use crate::metadata::Usage;

/// Measures the tree at `root` without following symlinks or crossing into other
/// filesystems' mounts.
pub fn disk_usage(root: &Path) -> Result<Usage> {
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut size: i64 = 0;
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .same_file_system(true)
    {
        let entry = entry.map_err(|e| {
            let what = format!("measure {}", root.display());
            match e.into_io_error() {
                Some(io) => Error::io(what, io),
                None => Error::internal(what),
            }
        })?;
        let md = entry
            .metadata()
            .map_err(|e| Error::internal(format!("stat {}: {e}", entry.path().display())))?;
        if seen.insert((md.dev(), md.ino())) {
            size = size
                .saturating_add(i64::try_from(md.blocks().saturating_mul(512)).unwrap_or(i64::MAX));
        }
    }
    Ok(Usage {
        size,
        inodes: i64::try_from(seen.len()).unwrap_or(i64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardlinks_count_once_and_size_is_in_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("fs");
        std::fs::create_dir(&root).unwrap();
        let empty = disk_usage(&root).unwrap();
        assert_eq!(empty.inodes, 1, "the root itself counts");
        std::fs::write(root.join("a"), vec![7u8; 10_000]).unwrap();
        std::fs::hard_link(root.join("a"), root.join("b")).unwrap();
        std::os::unix::fs::symlink("a", root.join("s")).unwrap();
        std::fs::create_dir(root.join("d")).unwrap();
        let u = disk_usage(&root).unwrap();
        assert_eq!(u.inodes, 4, "root, a(=b), s, d");
        let blocks: u64 = ["", "a", "s", "d"]
            .iter()
            .map(|p| std::fs::symlink_metadata(root.join(p)).unwrap().blocks() * 512)
            .sum();
        assert_eq!(u.size as u64, blocks);
        assert!(u.size >= 10_000);
    }

    #[test]
    fn a_missing_root_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let e = disk_usage(&dir.path().join("nope")).unwrap_err();
        assert_eq!(e.kind(), strata_common::error::ErrorKind::NotFound);
    }
}
