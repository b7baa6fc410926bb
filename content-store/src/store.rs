//! The content store: blobs in a [`BlobBackend`], their labels and times in [`Metadata`],
//! writes going through [`Ingests`]. Plain Rust types, blocking calls: the gRPC adaptor runs
//! them on blocking threads.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use strata_common::fieldpath::{UpdateTarget, apply_label_update, validate_labels};
use strata_common::filter::{FieldMap, Filter};
use strata_common::{Error, Result};
use tracing::{debug, warn};

use crate::backend::{
    BlobBackend, BlobReader, BlobStat, LocalBackend, UploadAhead, blob_not_found,
};
use crate::digest::Digest;
use crate::ingest::{IngestStatus, IngestWriter, Ingests};
use crate::metadata::{BlobMeta, Metadata};

/// A committed blob as Info and List report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub digest: Digest,
    pub size: u64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub labels: BTreeMap<String, String>,
}

/// Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct ContentStore {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Box<dyn BlobBackend>,
    meta: Metadata,
    ingests: Ingests,
}

fn label_error(e: strata_common::fieldpath::FieldPathError) -> Error {
    Error::invalid_argument(e.to_string())
}

impl ContentStore {
    /// A store under `root` with blobs on local disk (`root/blobs`).
    pub fn open_local(root: &Path) -> Result<ContentStore> {
        let backend = LocalBackend::open(root)?;
        ContentStore::open(root, Box::new(backend))
    }

    /// A store keeping ingests and metadata under `root` and blobs in `backend`.
    pub fn open(root: &Path, backend: Box<dyn BlobBackend>) -> Result<ContentStore> {
        std::fs::create_dir_all(root)
            .map_err(|e| Error::io(format!("create {}", root.display()), e))?;
        let meta = Metadata::open(&root.join("metadata.db"))?;
        let ingests = Ingests::open(root)?;
        Ok(ContentStore {
            inner: Arc::new(Inner {
                backend,
                meta,
                ingests,
            }),
        })
    }

    fn info_of(stat: BlobStat, meta: Option<BlobMeta>) -> Info {
        let (created_at, updated_at, labels) = match meta {
            Some(m) => (m.created_at, m.updated_at, m.labels),
            None => (stat.modified, stat.modified, BTreeMap::new()),
        };
        Info {
            digest: stat.digest,
            size: stat.size,
            created_at,
            updated_at,
            labels,
        }
    }

    pub fn info(&self, digest: &Digest) -> Result<Info> {
        let stat = self
            .inner
            .backend
            .stat(digest)?
            .ok_or_else(|| blob_not_found(digest))?;
        let meta = self.inner.meta.get(digest)?;
        Ok(Self::info_of(stat, meta))
    }

    /// Updates the labels of `digest` per containerd's field paths (none: replace all).
    pub fn update(
        &self,
        digest: &Digest,
        labels: &BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Info> {
        let mut info = self.info(digest)?;
        let name = digest.to_string();
        apply_label_update(
            UpdateTarget::Content(&name),
            &mut info.labels,
            labels,
            paths,
        )
        .map_err(label_error)?;
        info.updated_at = SystemTime::now();
        self.inner.meta.put(
            digest,
            &BlobMeta {
                created_at: info.created_at,
                updated_at: info.updated_at,
                labels: info.labels.clone(),
            },
        )?;
        Ok(info)
    }

    /// Every blob `filter` selects (fields `digest` and `labels.<key>`, as containerd's).
    pub fn list(&self, filter: &Filter) -> Result<Vec<Info>> {
        let mut meta = self.inner.meta.all()?;
        let mut out = Vec::new();
        self.inner.backend.list(&mut |stat| {
            let name = stat.digest.to_string();
            let info = Self::info_of(stat, meta.remove(&name));
            if filter.matches(
                &FieldMap::new()
                    .with_field("digest", &name)
                    .with_labels(&info.labels),
            ) {
                out.push(info);
            }
            Ok(())
        })?;
        Ok(out)
    }

    pub fn delete(&self, digest: &Digest) -> Result<()> {
        self.inner.backend.delete(digest)?;
        strata_common::crashpoint::hit("content.delete.blob_gone");
        // The blob is gone already; a row left by a failure here is harmless (see metadata).
        if let Err(e) = self.inner.meta.remove(digest) {
            warn!(%digest, error = %e.chain(), "blob deleted but its metadata row stays");
        }
        Ok(())
    }

    pub fn reader(&self, digest: &Digest) -> Result<Box<dyn BlobReader>> {
        self.inner.backend.open(digest)
    }

    /// See [`BlobBackend::open_is_cheap`].
    pub fn reader_is_cheap(&self, digest: &Digest) -> bool {
        self.inner.backend.open_is_cheap(digest)
    }

    pub fn status(&self, r#ref: &str) -> Result<IngestStatus> {
        self.inner.ingests.status(r#ref)
    }

    /// Ingests `filter` selects (field `ref`, as containerd's).
    pub fn list_statuses(&self, filter: &Filter) -> Result<Vec<IngestStatus>> {
        let mut all = self.inner.ingests.list()?;
        all.retain(|s| filter.matches(&FieldMap::new().with_field("ref", &s.r#ref)));
        Ok(all)
    }

    /// Opens (or resumes) the writer of `ref`: Unavailable while another writer holds it,
    /// AlreadyExists when `expected` is already stored.
    pub fn writer(
        &self,
        r#ref: &str,
        total: u64,
        expected: Option<&Digest>,
    ) -> Result<ContentWriter> {
        if r#ref.is_empty() {
            return Err(Error::invalid_argument("ref must not be empty"));
        }
        // Lock first, so a second writer hears "locked" whether or not the blob exists.
        let lock = self.inner.ingests.try_lock(r#ref)?;
        if let Some(e) = expected {
            match self.inner.backend.stat(e) {
                Ok(Some(_)) => return Err(Error::already_exists(format!("content {e}"))),
                Ok(None) => {}
                // A remote backend that cannot tell right now: take the data anyway, so that
                // only the commit has to wait for the store to come back.
                Err(err) => debug!(digest = %e, error = %err.chain(), "cannot check for the blob"),
            }
        }
        let writer = self
            .inner
            .ingests
            .writer_locked(lock, r#ref, total, expected)?;
        let ahead = match expected {
            Some(e) if total > 0 => self
                .inner
                .backend
                .upload_ahead(e, total, &writer.data_path())
                .map(|mut a| {
                    a.available(writer.in_file());
                    a
                }),
            _ => None,
        };
        Ok(ContentWriter {
            store: self.clone(),
            writer,
            ahead,
        })
    }

    pub fn abort(&self, r#ref: &str) -> Result<()> {
        self.inner.ingests.abort(r#ref)
    }

    /// Removes ingests idle for longer than `max_age` that nobody is writing.
    pub fn expire_ingests(&self, max_age: Duration) -> Result<Vec<String>> {
        self.inner.ingests.expire(max_age)
    }

    /// Drops metadata rows whose blob is gone (left by a crash during Delete).
    pub fn prune_metadata(&self) -> Result<usize> {
        let mut present = std::collections::HashSet::new();
        self.inner.backend.list(&mut |s| {
            present.insert(s.digest.to_string());
            Ok(())
        })?;
        self.inner.meta.retain(|d| present.contains(d))
    }
}

/// The writer of one ref; dropping it releases the ref and keeps the ingest for a resume.
pub struct ContentWriter {
    store: ContentStore,
    writer: IngestWriter,
    /// The blob's upload while it is written, when the backend begins one.
    ahead: Option<Box<dyn UploadAhead>>,
}

impl ContentWriter {
    pub fn status(&self) -> &IngestStatus {
        self.writer.status()
    }

    pub fn offset(&self) -> u64 {
        self.writer.offset()
    }

    /// The digest so far; waits for background hashing (see [`ContentWriter::digest_if_ready`]).
    pub fn digest(&self) -> Result<Digest> {
        self.writer.digest()
    }

    /// The digest so far if it needs no waiting for background hashing.
    pub fn digest_if_ready(&self) -> Option<Digest> {
        self.writer.digest_if_ready()
    }

    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.writer.write_slice(data)?;
        self.tell_ahead();
        Ok(())
    }

    /// [`ContentWriter::write`] without a copy.
    pub fn write_bytes(&mut self, data: bytes::Bytes) -> Result<()> {
        self.writer.write(data)?;
        self.tell_ahead();
        Ok(())
    }

    /// Bytes of this ingest the backend already stored ahead of the commit.
    pub fn uploaded_ahead(&self) -> u64 {
        self.ahead.as_ref().map_or(0, |a| a.sent())
    }

    fn tell_ahead(&mut self) {
        if let Some(a) = self.ahead.as_mut() {
            a.available(self.writer.in_file());
        }
    }

    pub fn truncate(&mut self) -> Result<()> {
        // What was uploaded is no longer the ingest's; the commit uploads the new bytes.
        self.ahead = None;
        self.writer.truncate()
    }

    /// Verifies the data against `size` (0: any) and `expected`, stores it as a blob with
    /// `labels`, and removes the ingest. FailedPrecondition on a mismatch (the ingest stays);
    /// AlreadyExists when the blob was already stored (the ingest goes, as in containerd).
    pub fn commit(
        self,
        size: u64,
        expected: Option<&Digest>,
        labels: BTreeMap<String, String>,
    ) -> Result<Digest> {
        validate_labels(&labels).map_err(label_error)?;
        let ahead_sent = self.uploaded_ahead();
        let ContentWriter {
            store,
            writer,
            ahead,
        } = self;
        let inner = &store.inner;
        let t = Instant::now();
        let done = writer.finish(size, expected)?;
        strata_common::crashpoint::hit("content.commit.synced");
        let finished = t.elapsed();
        let remove_ingest = || {
            if let Err(e) = std::fs::remove_dir_all(&done.dir) {
                warn!(dir = %done.dir.display(), error = %e, "cannot remove committed ingest");
            }
        };
        let put = match ahead {
            Some(a) => inner.backend.put_ahead(&done.digest, &done.data, a),
            None => inner.backend.put(&done.digest, &done.data),
        };
        match put {
            Ok(()) => {}
            Err(e) if e.is(strata_common::error::ErrorKind::AlreadyExists) => {
                remove_ingest();
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        strata_common::crashpoint::hit("content.commit.stored");
        let stored = t.elapsed();
        remove_ingest();
        strata_common::crashpoint::hit("content.commit.ingest_removed");
        let removed = t.elapsed();
        let now = SystemTime::now();
        let mut labels = labels;
        labels.retain(|_, v| !v.is_empty());
        // containerd's commits carry no labels (its metadata store keeps them in its own
        // database): the blob's store time (the file's mtime, set when the ingest was
        // finished) then stands for both times, and no row is written, which saves a commit
        // its SQLite fsync. A row left by an earlier blob of this digest is replaced.
        let needs_row = !labels.is_empty() || !matches!(inner.meta.get(&done.digest), Ok(None));
        // The blob is committed; like containerd, a metadata failure is logged, not returned,
        // because the commit cannot be rolled back.
        if needs_row
            && let Err(e) = inner.meta.put(
                &done.digest,
                &BlobMeta {
                    created_at: now,
                    updated_at: now,
                    labels,
                },
            )
        {
            warn!(digest = %done.digest, error = %e.chain(), "cannot record committed blob");
        }
        // The commit's syncs are most of a large ingest's last answer; where they went.
        debug!(
            digest = %done.digest,
            size = done.size,
            sync_ms = finished.as_secs_f64() * 1e3,
            store_ms = (stored - finished).as_secs_f64() * 1e3,
            remove_ms = (removed - stored).as_secs_f64() * 1e3,
            metadata_ms = (t.elapsed() - removed).as_secs_f64() * 1e3,
            uploaded_ahead = ahead_sent,
            "committed"
        );
        drop(done.lock);
        Ok(done.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_common::error::ErrorKind;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn commit_info_update_list_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let s = ContentStore::open_local(tmp.path()).unwrap();
        let d = Digest::sha256_of(b"blob");
        assert!(s.info(&d).unwrap_err().is(ErrorKind::NotFound));

        let mut w = s.writer("r", 4, Some(&d)).unwrap();
        w.write(b"blob").unwrap();
        assert_eq!(w.commit(4, Some(&d), labels(&[("a", "1")])).unwrap(), d);
        assert!(s.status("r").unwrap_err().is(ErrorKind::NotFound));

        let info = s.info(&d).unwrap();
        assert_eq!(info.size, 4);
        assert_eq!(info.labels, labels(&[("a", "1")]));

        let up = s
            .update(&d, &labels(&[("b", "2")]), &["labels.b".to_string()])
            .unwrap();
        assert_eq!(up.labels, labels(&[("a", "1"), ("b", "2")]));
        assert!(up.updated_at >= info.updated_at);
        assert_eq!(up.created_at, info.created_at);
        let e = s
            .update(&d, &BTreeMap::new(), &["size".to_string()])
            .unwrap_err();
        assert!(e.is(ErrorKind::InvalidArgument));

        let other = Digest::sha256_of(b"other");
        let mut w = s.writer("r2", 0, None).unwrap();
        w.write(b"other").unwrap();
        w.commit(0, None, BTreeMap::new()).unwrap();

        let all = s.list(&Filter::default()).unwrap();
        assert_eq!(all.len(), 2);
        let sel = s.list(&Filter::parse("labels.b==2").unwrap()).unwrap();
        assert_eq!(sel.iter().map(|i| &i.digest).collect::<Vec<_>>(), [&d]);
        let sel = s
            .list(&Filter::parse(&format!("digest=={other}")).unwrap())
            .unwrap();
        assert_eq!(sel.len(), 1);

        s.delete(&d).unwrap();
        assert!(s.delete(&d).unwrap_err().is(ErrorKind::NotFound));
        assert!(s.info(&d).unwrap_err().is(ErrorKind::NotFound));
    }

    #[test]
    fn writer_refuses_existing_expected_and_second_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let s = ContentStore::open_local(tmp.path()).unwrap();
        let d = Digest::sha256_of(b"x");
        let mut a = s.writer("a", 0, None).unwrap();
        let mut b = s.writer("b", 0, None).unwrap();
        a.write(b"x").unwrap();
        b.write(b"x").unwrap();
        a.commit(1, Some(&d), BTreeMap::new()).unwrap();
        let e = b.commit(1, Some(&d), BTreeMap::new()).unwrap_err();
        assert!(e.is(ErrorKind::AlreadyExists), "{e}");
        assert!(s.status("b").unwrap_err().is(ErrorKind::NotFound));
        let e = s.writer("c", 0, Some(&d)).err().unwrap();
        assert!(e.is(ErrorKind::AlreadyExists), "{e}");
        assert!(s.list_statuses(&Filter::default()).unwrap().is_empty());
    }

    #[test]
    fn a_commit_without_labels_writes_no_row_and_reports_its_commit_time() {
        let tmp = tempfile::tempdir().unwrap();
        let s = ContentStore::open_local(tmp.path()).unwrap();
        let mut w = s.writer("plain", 0, None).unwrap();
        w.write(b"abc").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let before = SystemTime::now();
        let d = w.commit(0, None, BTreeMap::new()).unwrap();
        let after = SystemTime::now();
        assert!(s.inner.meta.get(&d).unwrap().is_none());
        let info = s.info(&d).unwrap();
        assert!(
            info.created_at >= before && info.created_at <= after,
            "{:?} not in {before:?}..{after:?}",
            info.created_at
        );
        assert_eq!(info.updated_at, info.created_at);
        assert!(info.labels.is_empty());

        // A row an earlier blob of the digest left (a crash inside Delete) is replaced.
        let d2 = Digest::sha256_of(b"again");
        s.inner
            .meta
            .put(
                &d2,
                &BlobMeta {
                    created_at: SystemTime::UNIX_EPOCH,
                    updated_at: SystemTime::UNIX_EPOCH,
                    labels: labels(&[("stale", "x")]),
                },
            )
            .unwrap();
        let mut w = s.writer("again", 0, None).unwrap();
        w.write(b"again").unwrap();
        w.commit(0, Some(&d2), BTreeMap::new()).unwrap();
        let info = s.info(&d2).unwrap();
        assert!(info.labels.is_empty());
        assert!(info.created_at >= before);
    }

    #[test]
    fn labels_survive_reopen_and_stale_rows_are_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Digest::sha256_of(b"y");
        {
            let s = ContentStore::open_local(tmp.path()).unwrap();
            let mut w = s.writer("a", 0, None).unwrap();
            w.write(b"y").unwrap();
            w.commit(0, None, labels(&[("k", "v")])).unwrap();
        }
        let s = ContentStore::open_local(tmp.path()).unwrap();
        assert_eq!(s.info(&d).unwrap().labels, labels(&[("k", "v")]));
        // A crash between deleting the blob and its row:
        std::fs::remove_file(tmp.path().join("blobs/sha256").join(d.hex())).unwrap();
        assert_eq!(s.prune_metadata().unwrap(), 1);
        assert_eq!(s.prune_metadata().unwrap(), 0);
    }
}
