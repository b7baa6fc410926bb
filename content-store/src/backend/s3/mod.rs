//! Blobs in an S3-compatible bucket shared by a fleet of nodes, with each node's disk as a
//! cache. Ingests stay local; a commit uploads the verified file (in parts when large) and
//! the blob exists for everyone once the upload completes. Reads come from the cache, else
//! from one shared download that fills it. Which node holds which blob is recorded in the
//! bucket, so that a Delete on one node never removes a blob another still uses ([`fleet`]).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};
use strata_common::{Error, Result};
use tracing::{debug, info, warn};

use super::local::FileReader;
use super::{BlobBackend, BlobReader, BlobStat, UploadAhead, blob_not_found};
use crate::digest::Digest;

pub mod ahead;
pub mod cache;
pub mod config;
pub mod download;
pub mod fleet;
pub mod held;
pub mod remote;

pub use config::S3Config;

use ahead::Ahead;
use cache::{Cache, Pin};
use download::{Downloads, Source};
use fleet::{Flag, Fleet};
use held::{Held, HeldBlob};
use remote::{Remote, UploadShape};

/// Cheap to clone; clones share one backend (the sweeper thread holds one).
#[derive(Clone)]
pub struct S3Backend {
    inner: Arc<Shared>,
}

struct Shared {
    remote: Arc<Remote>,
    cache: Arc<Cache>,
    held: Held,
    downloads: Arc<Downloads>,
    source: Arc<Source>,
    node: String,
    shape: UploadShape,
    grace: Duration,
    stale_after: Duration,
    /// Per-blob locks: one commit, adoption or delete of a blob at a time on this node. The
    /// count tells the sweeper that this node is taking a reference it has not recorded yet.
    busy: Mutex<HashMap<Digest, BusyEntry>>,
}

/// A blob's lock and how many callers want it.
type BusyEntry = (Arc<Mutex<()>>, usize);

/// Holds a blob's lock; see [`Shared::busy`].
struct Busy<'a> {
    shared: &'a Shared,
    digest: Digest,
    lock: Arc<Mutex<()>>,
}

impl Shared {
    fn busy(&self, d: &Digest) -> Busy<'_> {
        let mut map = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(d.clone()).or_insert_with(|| (Arc::default(), 0));
        entry.1 += 1;
        Busy {
            shared: self,
            digest: d.clone(),
            lock: entry.0.clone(),
        }
    }

    fn is_busy(&self, d: &Digest) -> bool {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(d)
    }

    fn fleet(&self) -> Fleet<'_> {
        Fleet {
            remote: &self.remote,
            node: &self.node,
            stale_after: self.stale_after,
        }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut map = self.shared.busy.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get_mut(&self.digest) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&self.digest);
            }
        }
    }
}

/// This node's id: the configured one, else one made up once and kept under `root`.
fn node_id(root: &Path, configured: &str) -> Result<String> {
    if !configured.is_empty() {
        return Ok(configured.to_string());
    }
    let path = root.join("node-id");
    match fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
    }
    let mut raw = [0u8; 8];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(|e| Error::io("read /dev/urandom", e))?;
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect::<String>();
    let id = if host.is_empty() {
        hex::encode(raw)
    } else {
        format!("{host}-{}", hex::encode(raw))
    };
    let tmp = root.join("node-id.tmp");
    fs::write(&tmp, &id)
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
    Ok(id)
}

fn sha256_file(file: &File) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut f = file;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

impl S3Backend {
    /// The backend for `cfg`, caching under `root` (`root/blobs`, the local layout).
    pub fn open(root: &Path, cfg: &S3Config) -> Result<S3Backend> {
        let store = cfg.build()?;
        Self::with_store(root, cfg, store)
    }

    /// [`S3Backend::open`] over an object store built elsewhere.
    pub fn with_store(
        root: &Path,
        cfg: &S3Config,
        store: Arc<dyn object_store::ObjectStore>,
    ) -> Result<S3Backend> {
        fs::create_dir_all(root).map_err(|e| Error::io(format!("create {}", root.display()), e))?;
        let remote = Arc::new(Remote::new(
            store,
            &cfg.prefix,
            cfg.describe(),
            cfg.call_timeout(),
        )?);
        let cache = Cache::open(root, cfg.cache_max_bytes)?;
        // Downloads of a previous process: never complete, never renamed into place.
        let _ = fs::remove_dir_all(cache.temp_dir());
        let held = Held::open(&root.join("held.db"))?;
        let mut held_now = std::collections::HashSet::new();
        for h in held.all()? {
            cache.adopt_existing(&h.digest);
            held_now.insert(h.digest);
        }
        // Files of blobs no longer held (a crash inside Delete). A younger one may be a
        // layer the differ just placed, which Info adopts.
        match cache.remove_unheld(&|d| held_now.contains(d), Duration::from_secs(3600)) {
            Ok(0) => {}
            Ok(n) => info!(files = n, "removed cached files of blobs no longer held"),
            Err(e) => warn!(error = %e.chain(), "cannot clean the cache directory"),
        }
        let evicted = cache.evict();
        if !evicted.is_empty() {
            info!(
                count = evicted.len(),
                "evicted cached blobs over cache_max_bytes"
            );
        }
        let node = node_id(root, &cfg.node_id)?;
        info!(node = %node, store = %cfg.describe(), prefix = %cfg.prefix, "s3 backend");
        let source = Arc::new(Source {
            remote: remote.clone(),
            cache: cache.clone(),
            part_bytes: cfg.part_bytes,
            read_ahead: cfg.read_ahead,
        });
        Ok(S3Backend {
            inner: Arc::new(Shared {
                remote,
                cache,
                held,
                downloads: Arc::default(),
                source,
                node,
                shape: UploadShape {
                    multipart_threshold: cfg.multipart_threshold_bytes,
                    part_bytes: cfg.part_bytes,
                    concurrency: cfg.upload_concurrency,
                },
                grace: Duration::from_secs(cfg.gc_grace_secs),
                stale_after: cfg.call_timeout() * 3,
                busy: Mutex::default(),
            }),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node
    }

    /// Bytes of blobs in the local cache.
    pub fn cached_bytes(&self) -> u64 {
        self.inner.cache.total()
    }

    /// One garbage-collection pass over the bucket (see [`fleet`]).
    pub fn sweep(&self) -> Result<fleet::Sweep> {
        let s = &*self.inner;
        let held = |d: &Digest| s.is_busy(d) || matches!(s.held.get(d), Ok(Some(_)));
        s.fleet().sweep(s.grace, &held)
    }

    /// Sweeps every `interval` on a thread of its own, for the life of the process.
    pub fn spawn_sweeper(&self, interval: Duration) -> Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("strata-s3-gc".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    match me.sweep() {
                        Ok(r) if r.ghost_refs + r.flagged + r.deleted.len() > 0 => {
                            info!(
                                ghost_refs = r.ghost_refs,
                                flagged = r.flagged,
                                deleted = r.deleted.len(),
                                "bucket sweep"
                            );
                        }
                        Ok(_) => {}
                        Err(e) => warn!(error = %e.chain(), "bucket sweep failed"),
                    }
                }
            })
            .map(|_| ())
            .map_err(|e| Error::io("start the bucket sweeper", e))
    }

    /// Makes `d` (whose bytes are `file`, `size` long, verified) held by this node: marker,
    /// flag check, then the upload: the early upload's tail and completion when one began,
    /// else the whole file unless a HEAD finds the blob there: a node importing what another
    /// uploaded leaves the object as it was.
    fn publish(&self, d: &Digest, file: &File, size: u64, ahead: Option<Ahead>) -> Result<()> {
        let s = &*self.inner;
        let key = s.remote.blob_key(d);
        if let Flag::Deleting { stale: false } = s.fleet().add_ref(d)? {
            // Another node is deleting it right now; the upload below starts after it.
            s.fleet().wait_deleting(d)?;
        }
        if let Some(a) = ahead {
            match a.complete(size) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    warn!(digest = %d, error = %e.chain(), "upload begun during the ingest failed; uploading the blob again");
                }
            }
        } else if let Some(o) = s.remote.head(&key)?
            && o.size == size
        {
            debug!(digest = %d, "already in the bucket");
            return Ok(());
        }
        s.remote.upload(&key, file, size, s.shape)
    }

    /// [`BlobBackend::put`], completing `ahead` when the ingest's upload began early.
    fn put_with(&self, digest: &Digest, data: &Path, ahead: Option<Ahead>) -> Result<()> {
        let s = &*self.inner;
        let busy = s.busy(digest);
        let _locked = busy.lock.lock().unwrap_or_else(|p| p.into_inner());
        if s.held.get(digest)?.is_some() {
            return Err(Error::already_exists(format!("content {digest}")));
        }
        let file = File::open(data).map_err(|e| Error::io("open committed ingest", e))?;
        let size = file
            .metadata()
            .map_err(|e| Error::io("stat committed ingest", e))?
            .len();
        self.publish(digest, &file, size, ahead)?;
        s.held.insert(&HeldBlob {
            digest: digest.clone(),
            size,
            stored: SystemTime::now(),
        })?;
        // The ingest is fsynced and verified: it becomes the cached copy.
        if let Err(e) = s.cache.insert(digest, data, size) {
            warn!(%digest, error = %e.chain(), "committed blob not cached");
        }
        s.cache.evict();
        Ok(())
    }

    /// `d` is in the bucket but not held here: take a reference, unless no node holds it any
    /// more (released blobs are absent to nodes without their bytes).
    fn adopt_remote(&self, d: &Digest) -> Result<Option<BlobStat>> {
        let s = &*self.inner;
        let _busy = s.busy(d);
        if let Some(h) = s.held.get(d)? {
            return Ok(Some(stat_of(h)));
        }
        let key = s.remote.blob_key(d);
        if s.remote.head(&key)?.is_none() {
            return Ok(None);
        }
        if !s.fleet().add_ref_if_live(d)? {
            return Ok(None);
        }
        // Still there? (A sweeper may have deleted it before the marker was written.)
        let Some(obj) = s.remote.head(&key)? else {
            s.remote.delete(&s.remote.ref_key(d, &s.node))?;
            return Ok(None);
        };
        let h = HeldBlob {
            digest: d.clone(),
            size: obj.size,
            stored: obj.modified,
        };
        s.held.insert(&h)?;
        debug!(digest = %d, "took a reference to a blob from the bucket");
        Ok(Some(stat_of(h)))
    }

    /// A file in the cache directory that this node does not hold: the differ placed a layer
    /// there. It must reach the bucket before anyone is told the blob exists.
    fn adopt_placed(&self, d: &Digest) -> Result<Option<BlobStat>> {
        let s = &*self.inner;
        let _busy = s.busy(d);
        if let Some(h) = s.held.get(d)? {
            return Ok(Some(stat_of(h)));
        }
        let path = s.cache.path(d);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("open {}", path.display()), e)),
        };
        let size = file
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
            .len();
        let got =
            sha256_file(&file).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        if got != d.to_string() {
            warn!(path = %path.display(), %got, "file in the cache does not match its name; removed");
            s.cache.remove(d)?;
            return Ok(None);
        }
        self.publish(d, &file, size, None)?;
        let h = HeldBlob {
            digest: d.clone(),
            size,
            stored: SystemTime::now(),
        };
        s.held.insert(&h)?;
        s.cache.adopt_existing(d);
        s.cache.evict();
        info!(digest = %d, size, "uploaded a blob placed in the cache directory");
        Ok(Some(stat_of(h)))
    }
}

fn stat_of(h: HeldBlob) -> BlobStat {
    BlobStat {
        digest: h.digest,
        size: h.size,
        modified: h.stored,
    }
}

/// A cached blob, kept from eviction while open.
struct CachedReader {
    file: FileReader,
    _pin: Pin,
}

impl BlobReader for CachedReader {
    fn size(&self) -> u64 {
        self.file.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    fn read_at_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<Option<usize>> {
        self.file.read_at_cached(buf, offset)
    }
}

impl BlobBackend for S3Backend {
    fn stat(&self, digest: &Digest) -> Result<Option<BlobStat>> {
        let s = &*self.inner;
        if let Some(h) = s.held.get(digest)? {
            return Ok(Some(stat_of(h)));
        }
        if s.cache.path(digest).is_file() {
            return self.adopt_placed(digest);
        }
        self.adopt_remote(digest)
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn BlobReader>> {
        let s = &*self.inner;
        // Cached means held: the common case needs neither the database nor the network.
        if s.cache.contains(digest)
            && let Some((file, pin)) = s.cache.open_file(digest)?
        {
            let size = file
                .metadata()
                .map_err(|e| Error::io(format!("stat cached content {digest}"), e))?
                .len();
            return Ok(Box::new(CachedReader {
                file: FileReader::new(file, size),
                _pin: pin,
            }));
        }
        let size = match self.stat(digest)? {
            Some(st) => st.size,
            None => return Err(blob_not_found(digest)),
        };
        if let Some((file, pin)) = s.cache.open_file(digest)? {
            return Ok(Box::new(CachedReader {
                file: FileReader::new(file, size),
                _pin: pin,
            }));
        }
        s.downloads.reader(&s.source, digest, size)
    }

    fn open_is_cheap(&self, digest: &Digest) -> bool {
        self.inner.cache.contains(digest)
    }

    fn put(&self, digest: &Digest, data: &Path) -> Result<()> {
        self.put_with(digest, data, None)
    }

    fn upload_ahead(
        &self,
        expected: &Digest,
        total: u64,
        data: &Path,
    ) -> Option<Box<dyn UploadAhead>> {
        let s = &*self.inner;
        if total < s.shape.multipart_threshold {
            return None;
        }
        let file = File::open(data).ok()?;
        let a = s
            .remote
            .upload_ahead(&s.remote.blob_key(expected), file, s.shape)?;
        Some(Box::new(a))
    }

    fn put_ahead(&self, digest: &Digest, data: &Path, ahead: Box<dyn UploadAhead>) -> Result<()> {
        let ahead = ahead
            .into_any()
            .downcast::<Ahead>()
            .ok()
            .map(|a| *a)
            // Begun for the digest the writer expected; the data may have turned out another.
            .filter(|a| a.key() == self.inner.remote.blob_key(digest));
        self.put_with(digest, data, ahead)
    }

    fn delete(&self, digest: &Digest) -> Result<()> {
        let s = &*self.inner;
        let busy = s.busy(digest);
        let _locked = busy.lock.lock().unwrap_or_else(|p| p.into_inner());
        let was_held = s.held.remove(digest)?;
        let had_file = s.cache.path(digest).is_file();
        s.cache.remove(digest)?;
        if !was_held {
            return if had_file {
                Ok(())
            } else {
                Err(blob_not_found(digest))
            };
        }
        // Gone from this node now; a marker the bucket keeps because it cannot be reached is
        // removed by the next sweep.
        if let Err(e) = s.fleet().drop_ref(digest) {
            warn!(%digest, error = %e.chain(), "reference marker stays until the next sweep");
        }
        Ok(())
    }

    fn list(&self, each: &mut dyn FnMut(BlobStat) -> Result<()>) -> Result<()> {
        for h in self.inner.held.all()? {
            each(stat_of(h))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
