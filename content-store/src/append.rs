//! The writing side of an ingest: appending to its data file, the running sha256, and early
//! writeback ([`Writeback`]). containerd forwards a Write stream one message at a time and
//! waits for each answer before it reads on from its source (ctr's archive, a registry), so
//! whatever the answer waits for adds up in the import. Once a writer sends large messages,
//! all three move to a thread of the ingest's own: a WRITE is answered once its bytes are
//! queued, and the next message travels while the thread writes and hashes. containerd's own
//! store writes each message before it reads the next; on the 2-core VM of docs/benchmarks.md
//! a 1 MiB `write(2)` into the page cache alone took about 3 ms, 3 s of a 1 GiB import. Small
//! writes (manifests, configs) stay inline.
//!
//! What this changes, on purpose: if the server is killed, the last acknowledged bytes of an
//! open ingest may be missing from its file, at most [`UNWRITTEN_MAX_BYTES`] (the queue, the
//! message being written, each at most [`BACKGROUND_MAX`]; a larger message is written before
//! it is answered). Nothing else is promised early: the ingest resumes from the offset Status
//! reports (containerd's writers seek their source there), so the bytes are sent again, never
//! lost; a write into the page cache is not durable either; and the commit (and every call
//! that needs the bytes: a digest, a truncation, the writer's release) first waits for the
//! thread. A write that fails in the thread fails the next call on the ingest; the file may
//! then hold part of the data, and a resumed ingest re-reads it, as after a failed inline
//! write.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use strata_common::{Error, Result};

use strata_common::writeback::Writeback;

/// Messages at least this large move writing and hashing off the caller's thread.
pub const BACKGROUND_MIN: usize = 256 << 10;
/// Larger messages are still written by the thread, but answered only once written: they
/// would make the bytes a kill can cost unbounded. containerd's writers send 1 MiB.
pub const BACKGROUND_MAX: usize = 1 << 20;
/// Messages queued for the thread before the caller waits: bounds memory per ingest.
const QUEUE: usize = 4;
/// The most acknowledged bytes of an open ingest a kill of the server can take back: the
/// queue and the message the thread is writing.
pub const UNWRITTEN_MAX_BYTES: u64 = ((QUEUE + 1) * BACKGROUND_MAX) as u64;

enum Msg {
    /// Bytes for the file at this offset.
    Data(u64, Bytes),
    Snapshot(SyncSender<Progress>),
}

/// What the thread has done: the bytes written and hashed, their hash, and the write that
/// failed if one did (nothing after it is written).
#[derive(Clone)]
struct Progress {
    done: u64,
    hash: Sha256,
    failed: Option<(std::io::ErrorKind, String)>,
}

enum State {
    Inline(Sha256, Option<Writeback>),
    Background {
        /// `None` only while dropping.
        tx: Option<SyncSender<Msg>>,
        thread: Option<JoinHandle<()>>,
        /// Bytes handed to the thread.
        sent: u64,
        /// The thread's progress after each message, read without a round trip to it.
        latest: Latest,
    },
}

type Latest = Arc<Mutex<Progress>>;

fn lock(latest: &Latest) -> MutexGuard<'_, Progress> {
    // Plain data, replaced whole: a panicking holder cannot leave it half-written.
    latest.lock().unwrap_or_else(|p| p.into_inner())
}

/// Appends to an ingest's data file and keeps its running hash.
pub struct Appender {
    state: State,
}

fn run(file: File, mut writeback: Option<Writeback>, latest: Latest, rx: Receiver<Msg>) {
    let mut progress = lock(&latest).clone();
    for msg in rx {
        match msg {
            Msg::Data(offset, b) => {
                if progress.failed.is_some() {
                    continue;
                }
                if let Err(e) = file.write_all_at(&b, offset) {
                    progress.failed = Some((e.kind(), format!("write at offset {offset}: {e}")));
                    *lock(&latest) = progress.clone();
                    continue;
                }
                strata_common::crashpoint::hit("content.ingest.written");
                // The bytes are in the file: start the disk before hashing them.
                if let Some(wb) = writeback.as_mut() {
                    wb.advance(b.len() as u64);
                }
                progress.hash.update(&b);
                progress.done += b.len() as u64;
                *lock(&latest) = progress.clone();
            }
            Msg::Snapshot(reply) => {
                let _ = reply.send(progress.clone());
            }
        }
    }
}

fn gone() -> Error {
    Error::internal("ingest writing thread stopped")
}

/// The error of a write the thread failed, of its kind (a full disk stays ResourceExhausted).
fn failed((kind, message): &(std::io::ErrorKind, String)) -> Error {
    Error::io(
        "an earlier write failed",
        std::io::Error::new(*kind, message.clone()),
    )
}

impl Appender {
    /// Continues `hash`, the hash of what the file holds; `writeback`, when given, follows
    /// the file.
    pub fn new(hash: Sha256, writeback: Option<Writeback>) -> Appender {
        Appender {
            state: State::Inline(hash, writeback),
        }
    }

    /// Whether writing and hashing run on their own thread.
    pub fn in_background(&self) -> bool {
        matches!(self.state, State::Background { .. })
    }

    /// Appends `data` to `file`, whose first `offset` bytes are written (or queued): written
    /// before this returns when small, else queued for the thread.
    pub fn append(&mut self, file: &mut File, offset: u64, data: Bytes) -> Result<()> {
        match &mut self.state {
            State::Inline(h, wb) if data.len() < BACKGROUND_MIN => {
                write_inline(file, &data)?;
                if let Some(wb) = wb.as_mut() {
                    wb.advance(data.len() as u64);
                }
                h.update(&data);
                Ok(())
            }
            State::Inline(h, wb) => {
                let (tx, rx) = mpsc::sync_channel(QUEUE);
                // The thread counts from the offset it starts at.
                let start = Progress {
                    done: offset,
                    hash: h.clone(),
                    failed: None,
                };
                let latest = Arc::new(Mutex::new(start));
                let published = latest.clone();
                // The thread writes with positioned writes on a descriptor of its own.
                let own = file.try_clone().ok();
                let writeback = wb.take();
                let spawned = own.map(|own| {
                    std::thread::Builder::new()
                        .name("strata-append".into())
                        .spawn(move || run(own, writeback, published, rx))
                });
                let Some(Ok(thread)) = spawned else {
                    // No thread or descriptor to be had: inline is slower, not wrong (and
                    // writeback only a hint, gone with the closure).
                    write_inline(file, &data)?;
                    h.update(&data);
                    return Ok(());
                };
                self.state = State::Background {
                    tx: Some(tx),
                    thread: Some(thread),
                    sent: offset,
                    latest,
                };
                self.append(file, offset, data)
            }
            State::Background {
                tx, sent, latest, ..
            } => {
                if let Some(f) = &lock(latest).failed {
                    return Err(failed(f));
                }
                debug_assert_eq!(*sent, offset, "appends are contiguous");
                let n = data.len() as u64;
                tx.as_ref()
                    .ok_or_else(gone)?
                    .send(Msg::Data(offset, data))
                    .map_err(|_| gone())?;
                *sent = offset + n;
                if n > BACKGROUND_MAX as u64 {
                    self.settle()?;
                }
                Ok(())
            }
        }
    }

    /// The hash of everything appended if it is at hand without waiting for the thread
    /// (always when inline).
    pub fn hash_if_ready(&self) -> Option<Sha256> {
        match &self.state {
            State::Inline(h, _) => Some(h.clone()),
            State::Background { sent, latest, .. } => {
                let latest = lock(latest);
                (latest.done == *sent && latest.failed.is_none()).then(|| latest.hash.clone())
            }
        }
    }

    /// The bytes the thread has written into the file, from its start; `None` when inline
    /// (everything appended is in the file).
    pub fn written(&self) -> Option<u64> {
        match &self.state {
            State::Inline(..) => None,
            State::Background { latest, .. } => Some(lock(latest).done),
        }
    }

    /// Waits until everything appended is in the file; the hash of it all.
    pub fn settle(&self) -> Result<Sha256> {
        match &self.state {
            State::Inline(h, _) => Ok(h.clone()),
            State::Background { tx, .. } => {
                let (reply, rx) = mpsc::sync_channel(1);
                tx.as_ref()
                    .ok_or_else(gone)?
                    .send(Msg::Snapshot(reply))
                    .map_err(|_| gone())?;
                let progress = rx.recv().map_err(|_| gone())?;
                match progress.failed {
                    Some(f) => Err(failed(&f)),
                    None => Ok(progress.hash),
                }
            }
        }
    }

    /// Starts over at offset 0 with `writeback`, after the thread (if any) has written all
    /// it was given: the caller truncates the file next.
    pub fn reset(&mut self, writeback: Option<Writeback>) {
        self.stop();
        self.state = State::Inline(Sha256::new(), writeback);
    }

    /// Ends the thread once it has written everything queued.
    fn stop(&mut self) {
        if let State::Background { tx, thread, .. } = &mut self.state {
            drop(tx.take());
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Appender {
    /// The writer's ref lock is released after this: a resumed ingest must find every
    /// accepted byte in the file, not have the thread append behind it.
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_inline(file: &mut File, data: &[u8]) -> Result<()> {
    file.write_all(data).map_err(|e| Error::io("write", e))?;
    strata_common::crashpoint::hit("content.ingest.written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek as _, SeekFrom};

    fn file_in(dir: &tempfile::TempDir) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("data"))
            .unwrap()
    }

    #[test]
    fn background_and_inline_agree_and_write_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = file_in(&dir);
        let data: Vec<u8> = (0..3 * BACKGROUND_MIN + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut a = Appender::new(Sha256::new(), None);
        a.append(&mut file, 0, Bytes::copy_from_slice(&data[..10]))
            .unwrap();
        assert!(!a.in_background());
        let mut offset = 10u64;
        for piece in data[10..].chunks(BACKGROUND_MIN) {
            a.append(&mut file, offset, Bytes::copy_from_slice(piece))
                .unwrap();
            offset += piece.len() as u64;
        }
        assert!(a.in_background());
        let mid = a.settle().unwrap();
        assert_eq!(mid.finalize()[..], Sha256::digest(&data)[..]);
        assert_eq!(std::fs::read(dir.path().join("data")).unwrap(), data);
        // Once the thread has answered it is caught up.
        let ready = a.hash_if_ready().expect("caught up");
        assert_eq!(ready.finalize()[..], Sha256::digest(&data)[..]);
        a.append(&mut file, offset, Bytes::from_static(b"more"))
            .unwrap();
        let mut all = data.clone();
        all.extend_from_slice(b"more");
        assert_eq!(a.settle().unwrap().finalize()[..], Sha256::digest(&all)[..]);
        a.reset(None);
        assert!(!a.in_background());
        file.set_len(0).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        a.append(&mut file, 0, Bytes::from_static(b"again"))
            .unwrap();
        assert_eq!(
            a.settle().unwrap().finalize()[..],
            Sha256::digest(b"again")[..]
        );
        assert_eq!(std::fs::read(dir.path().join("data")).unwrap(), b"again");
    }

    #[test]
    fn dropping_waits_for_queued_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = file_in(&dir);
        let piece = vec![7u8; BACKGROUND_MIN];
        let mut a = Appender::new(Sha256::new(), None);
        for i in 0..(QUEUE as u64 + 3) {
            a.append(
                &mut file,
                i * piece.len() as u64,
                Bytes::from(piece.clone()),
            )
            .unwrap();
        }
        drop(a);
        let len = std::fs::metadata(dir.path().join("data")).unwrap().len();
        assert_eq!(len, (QUEUE as u64 + 3) * piece.len() as u64);
    }

    #[test]
    fn a_message_over_the_limit_is_written_before_it_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = file_in(&dir);
        let mut a = Appender::new(Sha256::new(), None);
        a.append(&mut file, 0, Bytes::from(vec![1u8; BACKGROUND_MIN]))
            .unwrap();
        assert!(a.in_background());
        let big = Bytes::from(vec![2u8; BACKGROUND_MAX + 1]);
        a.append(&mut file, BACKGROUND_MIN as u64, big).unwrap();
        let len = std::fs::metadata(dir.path().join("data")).unwrap().len();
        assert_eq!(len, (BACKGROUND_MIN + BACKGROUND_MAX + 1) as u64);
        assert!(a.hash_if_ready().is_some(), "nothing left queued");
    }

    #[test]
    fn a_failed_background_write_fails_the_next_calls() {
        let dir = tempfile::tempdir().unwrap();
        // Read-only: every positioned write on the thread's descriptor fails.
        std::fs::write(dir.path().join("data"), b"").unwrap();
        let mut file = File::open(dir.path().join("data")).unwrap();
        let mut a = Appender::new(Sha256::new(), None);
        let piece = Bytes::from(vec![1u8; BACKGROUND_MIN]);
        a.append(&mut file, 0, piece.clone()).unwrap();
        let err = a.settle().unwrap_err();
        assert!(err.message().contains("an earlier write failed"), "{err}");
        assert!(a.hash_if_ready().is_none());
        assert!(a.append(&mut file, piece.len() as u64, piece).is_err());
    }
}
