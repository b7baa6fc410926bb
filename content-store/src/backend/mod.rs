//! Where committed blobs live. Ingests are always local files (they must be appendable and
//! resumable); a backend only takes a finished, fsynced ingest file and serves it back, so
//! the same contract fits local disk (rename) and object storage (upload, ranged GET).

use std::path::Path;
use std::time::SystemTime;

use strata_common::Result;

use crate::digest::Digest;

pub mod local;
pub mod s3;

pub use local::LocalBackend;
pub use s3::S3Backend;

/// What a backend knows about a stored blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobStat {
    pub digest: Digest,
    pub size: u64,
    /// When the blob was stored: the fallback creation time for a blob whose metadata row was
    /// lost (a crash between storing the blob and recording it).
    pub modified: SystemTime,
}

/// An open blob. Positional reads so one handle could serve concurrent ranges; a remote
/// backend maps `read_at` to a ranged request.
pub trait BlobReader: Send + Sync {
    fn size(&self) -> u64;
    /// Reads at most `buf.len()` bytes at `offset`; 0 only at or past the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;

    /// [`BlobReader::read_at`] only if it can be served without waiting for I/O (from the
    /// page cache); `None` when it would wait or the backend cannot tell.
    fn read_at_cached(&self, _buf: &mut [u8], _offset: u64) -> std::io::Result<Option<usize>> {
        Ok(None)
    }
}

/// A blob's upload begun while its ingest is still being written, for a backend whose store
/// is slower than the ingest (object storage): the commit then waits for the tail, not the
/// whole blob. Dropping it abandons what was sent; nothing becomes visible before
/// [`BlobBackend::put_ahead`].
pub trait UploadAhead: Send {
    /// The ingest's data file holds its first `bytes` bytes, never rewritten while this lives
    /// (a truncation drops it first).
    fn available(&mut self, bytes: u64);

    /// Bytes already sent to the store.
    fn sent(&self) -> u64;

    /// For the backend that made it, to take back its own type.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
}

/// Blob storage. All methods block; callers run them on blocking threads.
pub trait BlobBackend: Send + Sync + 'static {
    /// The blob's size and store time, or `None` when it is absent.
    fn stat(&self, digest: &Digest) -> Result<Option<BlobStat>>;

    /// Opens the blob for reading; NotFound when it is absent.
    fn open(&self, digest: &Digest) -> Result<Box<dyn BlobReader>>;

    /// Whether [`BlobBackend::open`] is a lookup in kernel caches in the common case (a local
    /// file: dentry and inode caches) rather than I/O, so that a caller may run it on an async
    /// worker. A backend that talks to anything remote answers true only for blobs it has
    /// locally.
    fn open_is_cheap(&self, _digest: &Digest) -> bool {
        false
    }

    /// Stores the complete, already verified and fsynced file `data` as `digest`, atomically:
    /// readers see either no blob or all of it, also after a crash. AlreadyExists (leaving
    /// `data` alone) when the blob is already stored; on success `data` may be consumed.
    fn put(&self, digest: &Digest, data: &Path) -> Result<()>;

    /// Starts storing the ingest whose data file is `data`, expected to be `expected` and
    /// `total` bytes long, while it is written; `None` where that does not pay (the default).
    fn upload_ahead(
        &self,
        _expected: &Digest,
        _total: u64,
        _data: &Path,
    ) -> Option<Box<dyn UploadAhead>> {
        None
    }

    /// [`BlobBackend::put`] for an ingest whose upload `ahead` began (made by this backend's
    /// [`BlobBackend::upload_ahead`]); the same contract.
    fn put_ahead(&self, digest: &Digest, data: &Path, ahead: Box<dyn UploadAhead>) -> Result<()> {
        drop(ahead);
        self.put(digest, data)
    }

    /// Removes the blob; NotFound when it is absent.
    fn delete(&self, digest: &Digest) -> Result<()>;

    /// Calls `each` for every stored blob, in no particular order; stops at its first error.
    fn list(&self, each: &mut dyn FnMut(BlobStat) -> Result<()>) -> Result<()>;
}

/// The error for an absent blob, in containerd's wording (`content <digest>: not found`).
pub fn blob_not_found(digest: &Digest) -> strata_common::Error {
    strata_common::Error::not_found(format!("content {digest}"))
}
