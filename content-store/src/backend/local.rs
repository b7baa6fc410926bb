//! Blobs on local disk at `<root>/blobs/<algorithm>/<hex>`, containerd's layout.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use strata_common::{Error, Result, publish};

use super::{BlobBackend, BlobReader, BlobStat, blob_not_found};
use crate::digest::{Algorithm, Digest};

pub struct LocalBackend {
    blobs: PathBuf,
}

impl LocalBackend {
    /// A backend under `root` (creating `root/blobs/sha256`).
    pub fn open(root: &Path) -> Result<LocalBackend> {
        let blobs = root.join("blobs");
        let sha = blobs.join(Algorithm::Sha256.as_str());
        fs::create_dir_all(&sha).map_err(|e| Error::io(format!("create {}", sha.display()), e))?;
        Ok(LocalBackend { blobs })
    }

    /// Where `digest` is stored.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }
}

/// An open blob file; also the S3 backend's cached copies.
pub(crate) struct FileReader {
    file: File,
    size: u64,
}

impl FileReader {
    pub(crate) fn new(file: File, size: u64) -> FileReader {
        FileReader { file, size }
    }
}

impl BlobReader for FileReader {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.file.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn read_at_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<Option<usize>> {
        let Ok(off) = libc::off_t::try_from(offset) else {
            return Ok(None);
        };
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        loop {
            // SAFETY: `iov` describes `buf`, valid and exclusively borrowed for the call; the
            // descriptor is owned by `self.file`.
            let n = unsafe { libc::preadv2(self.file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
            if let Ok(n) = usize::try_from(n) {
                // 0 is the end of the file; a short count may mean the rest is not cached
                // (the caller asks again, and then gets EAGAIN).
                return Ok(Some(n));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // Not cached (EAGAIN), or a kernel or file system without RWF_NOWAIT.
                Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => {
                    return Ok(None);
                }
                _ => return Err(e),
            }
        }
    }
}

fn stat_of(digest: Digest, meta: &fs::Metadata) -> BlobStat {
    BlobStat {
        digest,
        size: meta.len(),
        modified: meta.modified().unwrap_or(std::time::UNIX_EPOCH),
    }
}

impl BlobBackend for LocalBackend {
    fn stat(&self, digest: &Digest) -> Result<Option<BlobStat>> {
        match fs::metadata(self.blob_path(digest)) {
            Ok(m) => Ok(Some(stat_of(digest.clone(), &m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("stat content {digest}"), e)),
        }
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn BlobReader>> {
        let file = match File::open(self.blob_path(digest)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(blob_not_found(digest)),
            Err(e) => return Err(Error::io(format!("open content {digest}"), e)),
        };
        let size = file
            .metadata()
            .map_err(|e| Error::io(format!("stat content {digest}"), e))?
            .len();
        Ok(Box::new(FileReader { file, size }))
    }

    fn open_is_cheap(&self, _digest: &Digest) -> bool {
        true
    }

    fn put(&self, digest: &Digest, data: &Path) -> Result<()> {
        let dir = self.blobs.join(digest.algorithm().as_str());
        fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        // Read-only like containerd's committed blobs: some protection against stray writers.
        fs::set_permissions(data, fs::Permissions::from_mode(0o444))
            .map_err(|e| Error::io("make ingest read-only", e))?;
        let target = self.blob_path(digest);
        // No-replace, so of two refs committing one digest exactly one wins and the other gets
        // AlreadyExists, with no window in which the blob is missing or half there.
        let placed = publish::rename_no_replace(data, &target)
            .map_err(|e| Error::io(format!("rename ingest into content {digest}"), e))?;
        if !placed {
            return Err(Error::already_exists(format!("content {digest}")));
        }
        strata_common::crashpoint::hit("content.put.renamed");
        // The rename is durable only once the directory entry is.
        fsync_dir(&dir)
    }

    fn delete(&self, digest: &Digest) -> Result<()> {
        match fs::remove_file(self.blob_path(digest)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(blob_not_found(digest)),
            Err(e) => Err(Error::io(format!("delete content {digest}"), e)),
        }
    }

    fn list(&self, each: &mut dyn FnMut(BlobStat) -> Result<()>) -> Result<()> {
        blob_files(&self.blobs, &mut |digest, entry| {
            let meta = match entry.metadata() {
                Ok(m) if m.is_file() => m,
                Ok(_) => return Ok(()),
                // Deleted while listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io(format!("stat content {digest}"), e)),
            };
            each(stat_of(digest, &meta))
        })
    }
}

/// Calls `each` for every entry of `blobs/<alg>/` named by a well-formed digest (anything
/// else there is not ours to report).
pub(crate) fn blob_files(
    blobs: &Path,
    each: &mut dyn FnMut(Digest, fs::DirEntry) -> Result<()>,
) -> Result<()> {
    for alg in [Algorithm::Sha256, Algorithm::Sha384, Algorithm::Sha512] {
        let dir = blobs.join(alg.as_str());
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("list {}", dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
            let name = entry.file_name();
            let Some(Ok(digest)) = name
                .to_str()
                .map(|hex| Digest::parse(&format!("{}:{hex}", alg.as_str())))
            else {
                continue;
            };
            each(digest, entry)?;
        }
    }
    Ok(())
}

/// fsyncs a directory so entries created or renamed in it survive a crash.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    publish::fsync_dir(dir).map_err(|e| Error::io(format!("fsync {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use strata_common::error::ErrorKind;

    fn ingest(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.join(name);
        let mut f = File::create(&p).unwrap();
        f.write_all(data).unwrap();
        p
    }

    #[test]
    fn put_read_list_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let b = LocalBackend::open(tmp.path()).unwrap();
        let d = Digest::sha256_of(b"hello");
        assert_eq!(b.stat(&d).unwrap(), None);
        assert!(b.open(&d).err().unwrap().is(ErrorKind::NotFound));

        b.put(&d, &ingest(tmp.path(), "a", b"hello")).unwrap();
        assert!(!tmp.path().join("a").exists(), "ingest file was consumed");
        assert_eq!(b.stat(&d).unwrap().unwrap().size, 5);
        let path = tmp.path().join("blobs/sha256").join(d.hex());
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o444
        );

        let r = b.open(&d).unwrap();
        let mut buf = [0u8; 3];
        assert_eq!(r.read_at(&mut buf, 2).unwrap(), 3);
        assert_eq!(&buf, b"llo");
        assert_eq!(r.read_at(&mut buf, 5).unwrap(), 0);

        let mut seen = Vec::new();
        b.list(&mut |s| {
            seen.push(s.digest);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![d.clone()]);

        b.delete(&d).unwrap();
        assert!(b.delete(&d).unwrap_err().is(ErrorKind::NotFound));
        assert_eq!(b.stat(&d).unwrap(), None);
    }

    #[test]
    fn put_never_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let b = LocalBackend::open(tmp.path()).unwrap();
        let d = Digest::sha256_of(b"x");
        b.put(&d, &ingest(tmp.path(), "a", b"x")).unwrap();
        let second = ingest(tmp.path(), "b", b"x");
        assert!(b.put(&d, &second).unwrap_err().is(ErrorKind::AlreadyExists));
        assert!(second.exists(), "the loser's ingest is left for its owner");
    }

    #[test]
    fn list_skips_foreign_files() {
        let tmp = tempfile::tempdir().unwrap();
        let b = LocalBackend::open(tmp.path()).unwrap();
        ingest(&tmp.path().join("blobs/sha256"), "not-a-digest", b"x");
        let mut n = 0;
        b.list(&mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn cached_reads_agree_with_plain_reads() {
        let tmp = tempfile::tempdir().unwrap();
        let b = LocalBackend::open(tmp.path()).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let d = Digest::sha256_of(&data);
        b.put(&d, &ingest(tmp.path(), "a", &data)).unwrap();
        let r = b.open(&d).unwrap();
        let mut buf = vec![0u8; 4096];
        // Just written, so in the page cache; `None` only where RWF_NOWAIT is unsupported.
        if let Some(n) = r.read_at_cached(&mut buf, 50_000).unwrap() {
            assert!(n > 0);
            assert_eq!(buf[..n], data[50_000..50_000 + n]);
        }
        if let Some(n) = r.read_at_cached(&mut buf, data.len() as u64).unwrap() {
            assert_eq!(n, 0, "end of file");
        }
    }
}
