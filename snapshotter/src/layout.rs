//! Where snapshots live on disk:
//!
//! ```text
//! <root>/metadata.db           SQLite (WAL) metadata
//! <root>/snapshots/<id>/fs     the snapshot's files (overlay upper dir, or the full copy)
//! <root>/snapshots/<id>/work   overlay work dir (active snapshots only)
//! <root>/snapshots/new-<pid>-<n> a snapshot (or shifted copy) being created; renamed to
//!                              <id> (or r<id>) inside the transaction that inserts its row
//! <root>/snapshots/r<id>/fs    a shifted copy of a parent chain (`remap_method = "copy"`),
//!                              the one lower layer of the id-mapped snapshots standing on it
//! ```
//!
//! Ids are small decimal numbers so a 128-layer `lowerdir=` stays short (containerd also
//! compacts it to paths relative to `<root>/snapshots` when it would overflow a page).
//! Anything under `snapshots/` whose name is not the id of a row is an orphan: a `new-` dir of
//! a create that crashed or failed, or a removed snapshot's directory. Start-up and Cleanup
//! delete orphans.

use std::path::{Path, PathBuf};

/// The prefix of directories still being built.
pub const TEMP_PREFIX: &str = "new-";
/// The prefix of shifted copies' directories.
pub const REMAP_PREFIX: &str = "r";

#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn metadata_db(&self) -> PathBuf {
        self.root.join("metadata.db")
    }

    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.snapshots_dir().join(id.to_string())
    }

    pub fn fs(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("fs")
    }

    pub fn work(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("work")
    }

    /// The directory of shifted copy `id` (a row of `remaps`).
    pub fn remap_dir(&self, id: u64) -> PathBuf {
        self.snapshots_dir().join(format!("{REMAP_PREFIX}{id}"))
    }

    pub fn remap_fs(&self, id: u64) -> PathBuf {
        self.remap_dir(id).join("fs")
    }

    /// A temporary directory's name: unique within this process (`n`) and across restarts
    /// (the pid), so a leftover that could not be deleted never collides with a new one.
    pub fn temp_name(n: u64) -> String {
        format!("{TEMP_PREFIX}{}-{n}", std::process::id())
    }

    pub fn temp_dir(&self, n: u64) -> PathBuf {
        self.snapshots_dir().join(Self::temp_name(n))
    }
}

/// The snapshot id a directory name under `snapshots/` stands for, if it is one.
pub fn parse_id(name: &str) -> Option<u64> {
    // "007" is not an id we would have written; treat it as an orphan.
    if name.starts_with('0') {
        return None;
    }
    name.parse().ok()
}

/// The shifted copy a directory name under `snapshots/` stands for, if it is one.
pub fn parse_remap_id(name: &str) -> Option<u64> {
    name.strip_prefix(REMAP_PREFIX).and_then(parse_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_short_and_numeric() {
        let l = Layout::new("/r");
        assert_eq!(l.fs(12), Path::new("/r/snapshots/12/fs"));
        assert_eq!(l.work(12), Path::new("/r/snapshots/12/work"));
        let temp = l.temp_dir(3);
        assert_eq!(temp.parent(), Some(Path::new("/r/snapshots")));
        assert_eq!(temp, Path::new("/r/snapshots").join(Layout::temp_name(3)));
        assert!(Layout::temp_name(3).starts_with(TEMP_PREFIX));
        assert_ne!(Layout::temp_name(3), Layout::temp_name(4));
        assert_eq!(parse_id("12"), Some(12));
        assert_eq!(parse_id("new-3"), None);
        assert_eq!(parse_id("012"), None);
        assert_eq!(parse_id("-1"), None);
        assert_eq!(l.remap_fs(4), Path::new("/r/snapshots/r4/fs"));
        assert_eq!(parse_remap_id("r4"), Some(4));
        assert_eq!(parse_remap_id("4"), None);
        assert_eq!(parse_remap_id("r04"), None);
        assert_eq!(parse_id("r4"), None);
    }
}
