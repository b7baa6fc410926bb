//! Ingests: content being written under a client-chosen ref, in `<root>/ingest/<sha256(ref)>/`
//! (`ref`, `data`, `startedat`, `updatedat`, and `total`/`expected` when known), as containerd's
//! local store lays them out. An ingest outlives the stream writing it, so a client whose
//! connection dropped resumes from Status' offset; one writer per ref at a time.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use strata_common::{Error, Result};
use tracing::{info, warn};

use crate::append::Appender;
use crate::digest::Digest;
use crate::time::{from_nanos, rfc3339, to_nanos};
use strata_common::writeback::Writeback;

/// An ingest as Status reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestStatus {
    pub r#ref: String,
    pub offset: u64,
    /// 0 when unknown.
    pub total: u64,
    /// Empty when unknown.
    pub expected: String,
    pub started_at: SystemTime,
    pub updated_at: SystemTime,
}

/// A held ref: since when, and the offset its writer has acknowledged, which the file reaches
/// a moment later when the writing thread has messages queued (`crate::append`).
#[derive(Clone)]
struct Held {
    since: SystemTime,
    accepted: Arc<AtomicU64>,
}

type LockTable = Arc<Mutex<HashMap<String, Held>>>;

fn lock_table(t: &LockTable) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
    // The table holds plain data; a panic elsewhere does not make it inconsistent.
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Holds a ref's writer lock until dropped.
pub struct RefLock {
    table: LockTable,
    r#ref: String,
    accepted: Arc<AtomicU64>,
}

impl RefLock {
    /// Records what the writer has acknowledged, for Status while the file catches up.
    fn accept(&self, offset: u64) {
        self.accepted.store(offset, Ordering::Release);
    }
}

impl Drop for RefLock {
    fn drop(&mut self) {
        lock_table(&self.table).remove(&self.r#ref);
    }
}

pub struct Ingests {
    root: PathBuf,
    locks: LockTable,
}

const DATA: &str = "data";
const REF: &str = "ref";
const REF_TEMP: &str = "ref.tmp";
const STARTED: &str = "startedat";
const UPDATED: &str = "updatedat";
const TOTAL: &str = "total";
const EXPECTED: &str = "expected";

fn io_err(what: &str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let what = format!("{what} {}", path.display());
    move |e| Error::io(what, e)
}

fn read_string(path: &Path) -> io::Result<String> {
    fs::read_to_string(path)
}

fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn read_time(path: &Path) -> io::Result<SystemTime> {
    let s = read_string(path)?;
    let n = s
        .trim()
        .parse::<i64>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(from_nanos(n))
}

fn not_found(r#ref: &str) -> Error {
    Error::not_found(format!("ingest ref {ref:?}"))
}

impl Ingests {
    pub fn open(root: &Path) -> Result<Ingests> {
        let root = root.join("ingest");
        fs::create_dir_all(&root).map_err(io_err("create", &root))?;
        Ok(Ingests {
            root,
            locks: Arc::default(),
        })
    }

    /// The ingest directory of `ref`: hashed, because refs are arbitrary strings.
    fn dir(&self, r#ref: &str) -> PathBuf {
        self.root.join(Digest::sha256_of(r#ref.as_bytes()).hex())
    }

    /// Takes the writer lock on `ref`, or Unavailable saying since when another writer holds
    /// it (containerd's clients retry Unavailable; the age tells contention from a leak).
    pub fn try_lock(&self, r#ref: &str) -> Result<RefLock> {
        let mut table = lock_table(&self.locks);
        let now = SystemTime::now();
        if let Some(held) = table.get(r#ref) {
            let since = held.since;
            let held = now.duration_since(since).unwrap_or_default();
            return Err(Error::unavailable(format!(
                "ref {ref} locked for {:.3}s (since {})",
                held.as_secs_f64(),
                rfc3339(since)
            )));
        }
        let accepted = Arc::new(AtomicU64::new(0));
        table.insert(
            r#ref.to_owned(),
            Held {
                since: now,
                accepted: accepted.clone(),
            },
        );
        Ok(RefLock {
            table: self.locks.clone(),
            r#ref: r#ref.to_owned(),
            accepted,
        })
    }

    /// `status` as a client sees it: a held ref's writer may have acknowledged bytes its
    /// writing thread is still putting into the file; those count, as they would had the
    /// write been inline (and containerd's writers never see the offset go back).
    fn as_acknowledged(&self, mut status: IngestStatus) -> IngestStatus {
        if let Some(held) = lock_table(&self.locks).get(&status.r#ref) {
            status.offset = status.offset.max(held.accepted.load(Ordering::Acquire));
        }
        status
    }

    /// Reads an ingest directory. Errors when it is incomplete (a crash while it was being
    /// created), which callers treat as "no usable ingest".
    fn read_status(dir: &Path) -> io::Result<IngestStatus> {
        let data = fs::metadata(dir.join(DATA))?;
        let r#ref = read_string(&dir.join(REF))?;
        if r#ref.is_empty() {
            // Written in place by an older version and cut by a crash: incomplete.
            return Err(io::Error::new(io::ErrorKind::NotFound, "empty ingest ref"));
        }
        let started_at = read_time(&dir.join(STARTED))?;
        let mut updated_at = read_time(&dir.join(UPDATED)).unwrap_or(started_at);
        // Writes do not rewrite `updatedat`; the data file's mtime is fresher.
        if let Ok(m) = data.modified() {
            updated_at = updated_at.max(m);
        }
        let total = read_optional(&dir.join(TOTAL))?
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let expected = read_optional(&dir.join(EXPECTED))?.unwrap_or_default();
        Ok(IngestStatus {
            r#ref,
            offset: data.len(),
            total,
            expected,
            started_at,
            updated_at,
        })
    }

    pub fn status(&self, r#ref: &str) -> Result<IngestStatus> {
        let dir = self.dir(r#ref);
        match Self::read_status(&dir) {
            Ok(s) if s.r#ref == r#ref => Ok(self.as_acknowledged(s)),
            Ok(_) => Err(not_found(r#ref)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(not_found(r#ref)),
            Err(e) => Err(Error::io(format!("status of ingest ref {ref:?}"), e)),
        }
    }

    /// Every readable ingest; incomplete ones are logged and left for expiry.
    pub fn list(&self) -> Result<Vec<IngestStatus>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err("list", &self.root))? {
            let entry = entry.map_err(io_err("list", &self.root))?;
            match Self::read_status(&entry.path()) {
                Ok(s) => out.push(self.as_acknowledged(s)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Created or removed under our feet, or left incomplete by a crash.
                }
                Err(e) => warn!(path = %entry.path().display(), error = %e, "unreadable ingest"),
            }
        }
        Ok(out)
    }

    /// Opens the writer of `ref`, resuming its ingest when one exists (the data written so far
    /// is hashed again), else starting one with `total` and `expected` when given.
    pub fn writer(
        &self,
        r#ref: &str,
        total: u64,
        expected: Option<&Digest>,
    ) -> Result<IngestWriter> {
        if r#ref.is_empty() {
            return Err(Error::invalid_argument("ref must not be empty"));
        }
        let lock = self.try_lock(r#ref)?;
        self.writer_locked(lock, r#ref, total, expected)
    }

    /// [`Ingests::writer`] for a caller already holding `ref`'s lock.
    pub fn writer_locked(
        &self,
        lock: RefLock,
        r#ref: &str,
        total: u64,
        expected: Option<&Digest>,
    ) -> Result<IngestWriter> {
        let dir = self.dir(r#ref);
        let mut resumed = None;
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match Self::resume(&dir, r#ref) {
                Ok(r) => resumed = Some(r),
                Err(e) => info!(r#ref, error = %e, "cannot resume ingest; starting it again"),
            },
            Err(e) => return Err(io_err("create", &dir)(e)),
        }
        strata_common::crashpoint::hit("content.ingest.dir_created");
        let (status, hasher) = match resumed {
            Some(r) => r,
            None => (Self::create(&dir, r#ref, total, expected)?, Sha256::new()),
        };
        let path = dir.join(DATA);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open", &path))?;
        file.seek(SeekFrom::Start(status.offset))
            .map_err(io_err("seek", &path))?;
        let writeback = writeback_of(&file, &path, status.offset);
        lock.accept(status.offset);
        Ok(IngestWriter {
            dir,
            file,
            persisted_update: status.updated_at,
            status,
            appender: Appender::new(hasher, writeback),
            lock: Some(lock),
        })
    }

    fn resume(dir: &Path, r#ref: &str) -> io::Result<(IngestStatus, Sha256)> {
        let status = Self::read_status(dir)?;
        if status.r#ref != r#ref {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ingest belongs to another ref",
            ));
        }
        let mut hasher = Sha256::new();
        let mut file = File::open(dir.join(DATA))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
        Ok((IngestStatus { offset, ..status }, hasher))
    }

    fn create(
        dir: &Path,
        r#ref: &str,
        total: u64,
        expected: Option<&Digest>,
    ) -> Result<IngestStatus> {
        let now = SystemTime::now();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            fs::write(&p, text).map_err(io_err("write", &p))
        };
        // Written first so a crash before `ref` exists leaves a directory that reads as
        // incomplete rather than as an ingest with stale contents.
        let data = dir.join(DATA);
        File::create(&data).map_err(io_err("create", &data))?;
        write(STARTED, &to_nanos(now).to_string())?;
        write(UPDATED, &to_nanos(now).to_string())?;
        if total > 0 {
            write(TOTAL, &total.to_string())?;
        }
        if let Some(e) = expected {
            write(EXPECTED, &e.to_string())?;
        }
        // Renamed into place: a crash while writing it must not leave an ingest named by an
        // empty or cut ref (`ref` marks the ingest complete).
        write(REF_TEMP, r#ref)?;
        let (temp, path) = (dir.join(REF_TEMP), dir.join(REF));
        fs::rename(&temp, &path).map_err(io_err("rename", &temp))?;
        Ok(IngestStatus {
            r#ref: r#ref.to_owned(),
            offset: 0,
            total,
            expected: expected.map(|e| e.to_string()).unwrap_or_default(),
            started_at: now,
            updated_at: now,
        })
    }

    /// Removes `ref`'s ingest (even while a writer holds it, as containerd does: that
    /// writer's commit then fails). NotFound when there is none.
    pub fn abort(&self, r#ref: &str) -> Result<()> {
        let dir = self.dir(r#ref);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(not_found(r#ref)),
            Err(e) => Err(io_err("remove", &dir)(e)),
        }
    }

    /// Removes ingests nobody is writing that were last written more than `max_age` ago,
    /// and incomplete ingest directories older than that. Returns the refs removed.
    pub fn expire(&self, max_age: Duration) -> Result<Vec<String>> {
        let now = SystemTime::now();
        let old = |t: SystemTime| now.duration_since(t).is_ok_and(|age| age > max_age);
        let mut removed = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err("list", &self.root))? {
            let entry = entry.map_err(io_err("list", &self.root))?;
            let path = entry.path();
            match Self::read_status(&path) {
                Ok(s) => {
                    if !old(s.updated_at) {
                        continue;
                    }
                    // A writer holding the ref is alive, however idle; leave it.
                    let Ok(_lock) = self.try_lock(&s.r#ref) else {
                        continue;
                    };
                    match fs::remove_dir_all(&path) {
                        Ok(()) => removed.push(s.r#ref),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => warn!(path = %path.display(), error = %e, "cannot expire ingest"),
                    }
                }
                Err(_) => {
                    let modified = entry.metadata().and_then(|m| m.modified());
                    if modified.is_ok_and(old)
                        && let Err(e) = fs::remove_dir_all(&path)
                    {
                        warn!(path = %path.display(), error = %e, "cannot remove broken ingest");
                    }
                }
            }
        }
        Ok(removed)
    }
}

/// Early writeback for `file` (see [`Writeback`]), on a descriptor of its own so the hashing
/// thread can use it; none when no descriptor is to be had, which only costs speed.
fn writeback_of(file: &File, path: &Path, offset: u64) -> Option<Writeback> {
    file.try_clone()
        .ok()
        .map(|f| Writeback::new(f, path.to_path_buf(), offset))
}

/// The one writer of an ingest; dropping it releases the ref (the ingest stays, resumable).
pub struct IngestWriter {
    /// Empty once [`IngestWriter::finish`] handed the ingest on.
    dir: PathBuf,
    file: File,
    status: IngestStatus,
    /// The `updatedat` file's time.
    persisted_update: SystemTime,
    appender: Appender,
    /// `None` once handed on.
    lock: Option<RefLock>,
}

impl Drop for IngestWriter {
    /// Records the exact time of the last write before the ref is released, so a resumed
    /// ingest reports it (the data file's mtime comes from the kernel's coarse clock and may
    /// be milliseconds earlier). No fsync: after a crash the mtime is the fallback.
    fn drop(&mut self) {
        if self.dir.as_os_str().is_empty() || self.status.updated_at == self.persisted_update {
            return;
        }
        let path = self.dir.join(UPDATED);
        // Into a file of its own then renamed, so a reader never sees it half written; an
        // aborted ingest's directory is gone and stays gone.
        let tmp = self.dir.join(format!("{UPDATED}.tmp"));
        let written = fs::write(&tmp, to_nanos(self.status.updated_at).to_string())
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::debug!(path = %path.display(), error = %e, "cannot record the last write time");
        }
    }
}

/// A verified, fsynced ingest ready to be stored; still holds the ref's lock.
pub struct FinishedIngest {
    pub digest: Digest,
    pub size: u64,
    pub data: PathBuf,
    pub dir: PathBuf,
    pub lock: RefLock,
}

impl IngestWriter {
    pub fn status(&self) -> &IngestStatus {
        &self.status
    }

    pub fn offset(&self) -> u64 {
        self.status.offset
    }

    /// The ingest's data file (what it holds so far: [`IngestWriter::in_file`]).
    pub fn data_path(&self) -> PathBuf {
        self.dir.join(DATA)
    }

    /// How many of the accepted bytes are in the data file now (the rest are queued for the
    /// writing thread).
    pub fn in_file(&self) -> u64 {
        self.appender.written().unwrap_or(self.status.offset)
    }

    /// The digest of what has been written so far (waits for the writing thread).
    pub fn digest(&self) -> Result<Digest> {
        Ok(Digest::from_sha256(self.appender.settle()?))
    }

    /// [`IngestWriter::digest`] if it needs no waiting for a writing thread.
    pub fn digest_if_ready(&self) -> Option<Digest> {
        self.appender.hash_if_ready().map(Digest::from_sha256)
    }

    /// Appends `data`.
    pub fn write_slice(&mut self, data: &[u8]) -> Result<()> {
        self.write(Bytes::copy_from_slice(data))
    }

    /// Appends `data`: small writes before this returns, large ones possibly later (see
    /// [`Appender`]); every call that needs the bytes in the file waits for them.
    pub fn write(&mut self, data: Bytes) -> Result<()> {
        let n = data.len() as u64;
        // On an error part of `data` may be in the file: this writer's offset and hash are no
        // longer trustworthy; the stream ends and a resume re-reads the file.
        self.appender
            .append(&mut self.file, self.status.offset, data)
            .map_err(|e| {
                let r#ref = &self.status.r#ref;
                Error::new(e.kind(), format!("ingest ref {ref:?}: {}", e.message()))
            })?;
        self.status.offset += n;
        self.status.updated_at = SystemTime::now();
        if let Some(lock) = &self.lock {
            lock.accept(self.status.offset);
        }
        Ok(())
    }

    /// Starts over from offset 0 (the only truncation containerd's writers support).
    pub fn truncate(&mut self) -> Result<()> {
        let what = || format!("truncate ingest ref {:?}", self.status.r#ref);
        // Nothing queued may land after the truncation.
        self.appender.reset(None);
        self.file.set_len(0).map_err(|e| Error::io(what(), e))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(what(), e))?;
        self.appender
            .reset(writeback_of(&self.file, &self.dir.join(DATA), 0));
        self.status.offset = 0;
        self.status.updated_at = SystemTime::now();
        if let Some(lock) = &self.lock {
            lock.accept(0);
        }
        Ok(())
    }

    /// Makes the data durable and checks it against `size` (0: any) and `expected`, in
    /// containerd's words; FailedPrecondition leaves the ingest as it was.
    pub fn finish(mut self, size: u64, expected: Option<&Digest>) -> Result<FinishedIngest> {
        let r#ref = &self.status.r#ref;
        // Every accepted byte in the file first.
        let hash = self.appender.settle()?;
        // The commit time, as containerd's local store stamps its blobs: a blob without a
        // metadata row reports it as its creation time.
        if let Err(e) = self.file.set_modified(SystemTime::now()) {
            tracing::debug!(r#ref, error = %e, "cannot stamp the ingest with the commit time");
        }
        self.file
            .sync_all()
            .map_err(|e| Error::io(format!("sync ingest ref {ref:?}"), e))?;
        let offset = self.status.offset;
        if size > 0 && size != offset {
            return Err(Error::failed_precondition(format!(
                "unexpected commit size {offset}, expected {size}"
            )));
        }
        let digest = Digest::from_sha256(hash);
        if let Some(e) = expected
            && *e != digest
        {
            return Err(Error::failed_precondition(format!(
                "unexpected commit digest {digest}, expected {e}"
            )));
        }
        let lock = self
            .lock
            .take()
            .ok_or_else(|| Error::internal("ingest writer without its lock"))?;
        Ok(FinishedIngest {
            digest,
            size: offset,
            data: self.dir.join(DATA),
            dir: std::mem::take(&mut self.dir),
            lock,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_common::error::ErrorKind;

    #[test]
    fn one_writer_per_ref_and_resume_rehashes() {
        let tmp = tempfile::tempdir().unwrap();
        let ing = Ingests::open(tmp.path()).unwrap();
        let mut w = ing.writer("r", 10, None).unwrap();
        let err = ing.writer("r", 0, None).err().unwrap();
        assert!(err.is(ErrorKind::Unavailable));
        assert!(err.message().contains("ref r locked for"), "{err}");
        assert!(err.message().contains("since 20"), "{err}");
        w.write_slice(b"hello").unwrap();
        assert_eq!(ing.status("r").unwrap().offset, 5);
        assert_eq!(ing.status("r").unwrap().total, 10);
        drop(w);

        let mut w = ing.writer("r", 0, None).unwrap();
        assert_eq!(w.offset(), 5);
        assert_eq!(w.status().total, 10);
        w.write_slice(b"world").unwrap();
        assert_eq!(w.digest().unwrap(), Digest::sha256_of(b"helloworld"));
        let f = w
            .finish(10, Some(&Digest::sha256_of(b"helloworld")))
            .unwrap();
        assert_eq!(fs::read(&f.data).unwrap(), b"helloworld");
    }

    #[test]
    fn an_ingest_cut_by_a_crash_before_its_ref_is_not_listed_and_starts_again() {
        let tmp = tempfile::tempdir().unwrap();
        let ing = Ingests::open(tmp.path()).unwrap();
        let mut w = ing.writer("cut", 0, None).unwrap();
        w.write_slice(b"partial").unwrap();
        let dir = w.dir.clone();
        drop(w);
        // What a SIGKILL inside `create` leaves: the ref not yet renamed into place, or (an
        // older version writing it in place) empty.
        fs::rename(dir.join(REF), dir.join(REF_TEMP)).unwrap();
        assert!(ing.list().unwrap().is_empty());
        assert!(ing.status("cut").unwrap_err().is(ErrorKind::NotFound));
        fs::write(dir.join(REF), "").unwrap();
        assert!(ing.list().unwrap().is_empty());
        let mut w = ing.writer("cut", 0, None).unwrap();
        assert_eq!(w.offset(), 0, "starts again");
        w.write_slice(b"whole").unwrap();
        drop(w);
        let listed = ing.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].r#ref.as_str(), listed[0].offset), ("cut", 5));
    }

    #[test]
    fn status_of_a_held_ref_counts_every_acknowledged_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let ing = Ingests::open(tmp.path()).unwrap();
        let mut w = ing.writer("big", 0, None).unwrap();
        let piece = vec![3u8; crate::append::BACKGROUND_MIN];
        for _ in 0..6 {
            w.write(Bytes::from(piece.clone())).unwrap();
            // Whatever the writing thread has reached, Status and List say what was answered.
            assert_eq!(ing.status("big").unwrap().offset, w.offset());
            assert_eq!(ing.list().unwrap()[0].offset, w.offset());
        }
        w.truncate().unwrap();
        assert_eq!(ing.status("big").unwrap().offset, 0);
        w.write(Bytes::from(piece.clone())).unwrap();
        drop(w);
        // Released only once the file holds it all.
        assert_eq!(ing.status("big").unwrap().offset, piece.len() as u64);
        let data = fs::metadata(ing.dir("big").join(DATA)).unwrap().len();
        assert_eq!(data, piece.len() as u64);
    }

    #[test]
    fn updated_at_is_the_last_write_exactly_across_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let ing = Ingests::open(tmp.path()).unwrap();
        let mut w = ing.writer("r", 0, None).unwrap();
        let started = w.status().started_at;
        std::thread::sleep(Duration::from_millis(5));
        w.write_slice(b"abc").unwrap();
        let last = w.status().updated_at;
        assert!(last > started);
        drop(w);
        let st = ing.status("r").unwrap();
        assert_eq!((st.started_at, st.updated_at), (started, last));
        let w = ing.writer("r", 0, None).unwrap();
        assert_eq!(
            (w.status().started_at, w.status().updated_at),
            (started, last)
        );
        // A writer that wrote nothing changes nothing.
        drop(w);
        assert_eq!(ing.status("r").unwrap().updated_at, last);
        assert_eq!(ing.list().unwrap()[0].updated_at, last);
    }

    #[test]
    fn finish_checks_size_and_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let ing = Ingests::open(tmp.path()).unwrap();
        let mut w = ing.writer("r", 0, None).unwrap();
        w.write_slice(b"abc").unwrap();
        let e = w.finish(4, None).err().unwrap();
        assert!(e.is(ErrorKind::FailedPrecondition), "{e}");
        let mut w = ing.writer("r", 0, None).unwrap();
        assert_eq!(w.offset(), 3, "a failed commit keeps the ingest");
        w.truncate().unwrap();
        w.write_slice(b"xyz").unwrap();
        let e = w.finish(0, Some(&Digest::sha256_of(b"abc"))).err().unwrap();
        assert!(e.is(ErrorKind::FailedPrecondition), "{e}");
        assert!(e.message().contains("unexpected commit digest"));
    }

    #[test]
    fn abort_list_and_expire() {
        let tmp = tempfile::tempdir().unwrap();
        let ing = Ingests::open(tmp.path()).unwrap();
        assert!(ing.abort("nope").unwrap_err().is(ErrorKind::NotFound));
        assert!(ing.status("nope").unwrap_err().is(ErrorKind::NotFound));
        drop(ing.writer("a", 0, None).unwrap());
        let held = ing.writer("b", 0, None).unwrap();
        let mut refs: Vec<_> = ing.list().unwrap().into_iter().map(|s| s.r#ref).collect();
        refs.sort();
        assert_eq!(refs, ["a", "b"]);

        assert!(ing.expire(Duration::from_secs(3600)).unwrap().is_empty());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(ing.expire(Duration::from_millis(1)).unwrap(), ["a"]);
        assert_eq!(ing.list().unwrap().len(), 1, "the locked ingest stays");
        drop(held);
        ing.abort("b").unwrap();
        assert!(ing.list().unwrap().is_empty());
    }

    #[test]
    fn incomplete_ingest_is_started_again() {
        let tmp = tempfile::tempdir().unwrap();
        let ing = Ingests::open(tmp.path()).unwrap();
        let dir = ing.dir("r");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(DATA), b"junk").unwrap();
        assert!(ing.list().unwrap().is_empty());
        let w = ing.writer("r", 0, None).unwrap();
        assert_eq!(w.offset(), 0);
        assert_eq!(fs::read(dir.join(DATA)).unwrap(), b"");
    }
}
