//! Putting a finished file in place the way a content store commits a blob: renamed to its
//! final name only if nothing is there yet, then the directory fsynced so the new entry
//! survives a crash. strata-content's local backend and strata-differ's Diff written into
//! the store both publish blobs this way.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use nix::errno::Errno;

/// Renames `from` to `to` unless `to` exists. `Ok(true)`: `from` is now `to`; `Ok(false)`: `to`
/// was there already and `from` is left as it was. Never replaces `to`, so of two writers
/// publishing one name exactly one wins, with no moment in which the name is missing.
pub fn rename_no_replace(from: &Path, to: &Path) -> io::Result<bool> {
    match nix::fcntl::renameat2(
        None,
        from,
        None,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        // File systems without RENAME_NOREPLACE: link() does not replace either.
        Err(Errno::EINVAL) => match fs::hard_link(from, to) {
            Ok(()) => {
                // The new name is in place; a leftover old name would only be an orphan.
                let _ = fs::remove_file(from);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        },
        Err(e) => Err(io::Error::from(e)),
    }
}

/// fsyncs a directory so entries created or renamed in it survive a crash.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_only_onto_a_free_name() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        fs::write(&a, "a").unwrap();
        fs::write(&b, "b").unwrap();
        assert!(!rename_no_replace(&a, &b).unwrap());
        assert_eq!(fs::read(&b).unwrap(), b"b", "an existing name is kept");
        assert!(a.exists(), "the source stays when nothing was renamed");
        assert!(rename_no_replace(&a, &c).unwrap());
        assert_eq!(fs::read(&c).unwrap(), b"a");
        assert!(!a.exists());
        fsync_dir(dir.path()).unwrap();
    }
}
