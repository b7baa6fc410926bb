//! Scratch directories for daemons: short paths (unix socket addresses are limited to 108
//! bytes), unmounted and removed on drop.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, umount2};

use crate::error::{Error, Result};

/// Longest file name the harness puts in a scratch dir (`containerd.sock.ttrpc`) plus slack.
const LONGEST_LEAF: usize = 32;
/// sun_path is 108 bytes including the terminating NUL.
const SUN_PATH_MAX: usize = 107;

/// Where scratch dirs go: `$STRATA_TEST_TMPDIR`, else `/tmp`.
pub fn base_dir() -> PathBuf {
    std::env::var_os("STRATA_TEST_TMPDIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// Whether `$STRATA_KEEP_TMP` asks to keep scratch dirs for a post-mortem.
pub fn keep_requested() -> bool {
    std::env::var_os("STRATA_KEEP_TMP").is_some_and(|v| !v.is_empty() && v != "0")
}

/// A scratch dir. Dropping it unmounts everything below it and removes it, unless
/// `$STRATA_KEEP_TMP` is set.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// A new dir `PREFIX-XXXXXX` under [`base_dir`].
    pub fn new(prefix: &str) -> Result<TestDir> {
        let base = base_dir();
        std::fs::create_dir_all(&base)
            .map_err(|e| Error::io(format!("creating {}", base.display()), e))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir_in(&base)
            .map_err(|e| Error::io(format!("creating a temp dir in {}", base.display()), e))?;
        let path = dir.keep();
        let len = path.as_os_str().len();
        if len + 1 + LONGEST_LEAF > SUN_PATH_MAX {
            let _ = std::fs::remove_dir(&path);
            return Err(Error::new(format!(
                "scratch dir {} is too long for unix sockets ({len} bytes); set STRATA_TEST_TMPDIR \
                 to a shorter dir",
                path.display()
            )));
        }
        Ok(TestDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, leaf: impl AsRef<Path>) -> PathBuf {
        self.path.join(leaf)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if keep_requested() {
            eprintln!(
                "strata-tests: keeping {} (STRATA_KEEP_TMP)",
                self.path.display()
            );
            return;
        }
        for problem in unmount_below(&self.path) {
            eprintln!("strata-tests: {problem}");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("strata-tests: removing {}: {e}", self.path.display());
        }
    }
}

/// Unmounts every mount at or below `dir`, deepest first (lazily if busy), and returns what
/// could not be unmounted.
pub fn unmount_below(dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let mounts = match std::fs::read("/proc/self/mounts") {
        Ok(m) => m,
        Err(e) => return vec![format!("reading /proc/self/mounts: {e}")],
    };
    let mut targets: Vec<PathBuf> = mounts
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(1))
        .map(|field| PathBuf::from(OsString::from_vec(unescape_mount_field(field))))
        .filter(|p| p.starts_with(dir))
        .collect();
    // deepest first; a path sorts after its prefixes, so reverse order unmounts children first
    targets.sort();
    targets.dedup();
    for target in targets.iter().rev() {
        if umount2(target, MntFlags::empty()).is_err()
            && let Err(e) = umount2(target, MntFlags::MNT_DETACH)
        {
            problems.push(format!("unmounting {}: {e}", target.display()));
        }
    }
    problems
}

/// /proc/self/mounts escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_field(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 3 < field.len()
            && field[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = field[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape_mount_field(br"/a\040b"), b"/a b");
        assert_eq!(unescape_mount_field(br"/a\0"), br"/a\0");
        assert_eq!(unescape_mount_field(b"/plain"), b"/plain");
    }
}
