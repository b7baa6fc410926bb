//! A large blob's multipart upload run while its ingest is still being written: each whole
//! part goes up as soon as the ingest's file holds it, and the commit sends the tail and
//! completes the upload, so a commit waits for the last part rather than the whole blob when
//! the upload waits on the network. (On a Garage cluster sharing this node's two cores it
//! gained nothing: the upload is bound by the same CPUs as the ingest; docs/performance.md.)
//! A commit-time upload ([`Remote::upload`]) is the same task told to complete at once.
//!
//! Nothing is visible early: an object of S3 exists only once its multipart upload is
//! completed, and only the commit completes it, after the data was verified and this node's
//! reference taken ([`super::S3Backend::put_ahead`]). Dropped without a commit (the writer
//! went, the data was truncated, the digest did not match) the upload is aborted; after a
//! crash its parts stay invisible until the bucket's lifecycle rule for incomplete uploads
//! removes them, as for an upload interrupted at commit.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as Key;
use object_store::{ObjectStore, WriteMultipart};
use strata_common::Result;
use tokio::sync::watch;

use super::remote::{Remote, UploadShape, failure};
use crate::backend::UploadAhead;
use crate::metrics::OBJECT_STORE;

/// What the upload is to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Goal {
    /// Upload whole parts of the first `n` bytes.
    Follow(u64),
    /// Upload everything up to this size and complete.
    Complete(u64),
}

/// One blob's upload ahead of its commit.
pub struct Ahead {
    goal: watch::Sender<Goal>,
    /// The task's answer once it completed (or failed); taken by [`Ahead::complete`].
    done: Option<std::sync::mpsc::Receiver<object_store::Result<()>>>,
    /// Bytes sent as parts so far (tests watch it).
    sent: Arc<AtomicU64>,
    key: String,
    describe: String,
    deadline: Duration,
    part_bytes: u64,
}

impl Remote {
    /// Starts the upload of `key` from `file`, following [`UploadAhead::available`]; `None`
    /// when the runtime is gone.
    pub fn upload_ahead(&self, key: &str, file: File, shape: UploadShape) -> Option<Ahead> {
        let rt = self.runtime()?;
        let (goal, rx) = watch::channel(Goal::Follow(0));
        let (tx, done) = std::sync::mpsc::sync_channel(1);
        let sent = Arc::new(AtomicU64::new(0));
        let task = Task {
            store: self.store(),
            key: Key::from(key),
            file: Arc::new(file),
            shape,
            deadline: self.deadline(),
            sent: sent.clone(),
        };
        rt.spawn(async move {
            let r = task.run(rx).await;
            let _ = tx.send(r);
        });
        Some(Ahead {
            goal,
            done: Some(done),
            sent,
            key: key.to_string(),
            describe: self.describe().to_string(),
            deadline: self.deadline(),
            part_bytes: shape.part_bytes,
        })
    }
}

impl Ahead {
    /// The object this uploads.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Bytes uploaded as parts so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Uploads the rest of the `size` bytes and completes the upload: the object exists
    /// once this returns Ok. Bounded by one call's deadline per part still to send.
    pub fn complete(mut self, size: u64) -> Result<()> {
        let fail = |e: String| failure(&self.describe, "multipart upload", &self.key, e);
        let Some(done) = self.done.take() else {
            return Err(fail("already completed".into()));
        };
        // Refused only when the task ended already, with an error it reports below.
        let _ = self.goal.send(Goal::Complete(size));
        let left = size.saturating_sub(self.sent()).div_ceil(self.part_bytes) + 1;
        let wait = self.deadline * u32::try_from(left.min(10_000)).unwrap_or(1);
        let r = match done.recv_timeout(wait) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(fail(e.to_string())),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(fail(format!("not done within {}s", wait.as_secs())))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(fail("upload task ended".into()))
            }
        };
        match &r {
            Ok(()) => OBJECT_STORE.uploaded(size),
            Err(_) => OBJECT_STORE.error("PUT_MULTIPART"),
        }
        r
    }
}

impl UploadAhead for Ahead {
    fn available(&mut self, bytes: u64) {
        self.goal.send_if_modified(|g| match g {
            Goal::Follow(n) if *n < bytes => {
                *n = bytes;
                true
            }
            _ => false,
        });
    }

    fn sent(&self) -> u64 {
        Ahead::sent(self)
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

struct Task {
    store: Arc<dyn ObjectStore>,
    key: Key,
    file: Arc<File>,
    shape: UploadShape,
    deadline: Duration,
    sent: Arc<AtomicU64>,
}

fn local(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "local",
        source: Box::new(e),
    }
}

fn timed_out(what: &str, deadline: Duration) -> object_store::Error {
    local(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what}: no answer within {}s", deadline.as_secs()),
    ))
}

impl Task {
    /// Follows the goal until told to complete (then completes) or until the [`Ahead`] is
    /// dropped (then aborts, and answers nobody).
    async fn run(self, mut goal: watch::Receiver<Goal>) -> object_store::Result<()> {
        // No request before there is a whole part: an ingest abandoned early costs nothing.
        loop {
            match *goal.borrow_and_update() {
                Goal::Follow(n) if n < self.shape.part_bytes => {}
                _ => break,
            }
            if goal.changed().await.is_err() {
                return Ok(());
            }
        }
        OBJECT_STORE.request("PUT_MULTIPART");
        let upload = tokio::time::timeout(self.deadline, self.store.put_multipart(&self.key))
            .await
            .map_err(|_| timed_out("start", self.deadline))??;
        let part = usize::try_from(self.shape.part_bytes).unwrap_or(8 << 20);
        let mut w = WriteMultipart::new_with_chunk_size(upload, part);
        let mut at = 0u64;
        let outcome = loop {
            let (upto, last) = match *goal.borrow_and_update() {
                Goal::Follow(n) => (n - n % self.shape.part_bytes, false),
                Goal::Complete(size) => (size, true),
            };
            if let Err(e) = self.send(&mut w, &mut at, upto).await {
                break Err(e);
            }
            if last {
                break Ok(true);
            }
            if goal.changed().await.is_err() {
                break Ok(false);
            }
        };
        match outcome {
            Ok(true) => tokio::time::timeout(self.deadline, w.finish())
                .await
                .map_err(|_| timed_out("complete", self.deadline))?
                .map(|_| ()),
            Ok(false) => {
                let _ = tokio::time::timeout(self.deadline, w.abort()).await;
                Ok(())
            }
            Err(e) => {
                let _ = tokio::time::timeout(self.deadline, w.abort()).await;
                Err(e)
            }
        }
    }

    /// Sends the file's bytes from `at` up to `upto` as parts, at most the shape's
    /// concurrency in flight.
    async fn send(
        &self,
        w: &mut WriteMultipart,
        at: &mut u64,
        upto: u64,
    ) -> object_store::Result<()> {
        while *at < upto {
            tokio::time::timeout(self.deadline, w.wait_for_capacity(self.shape.concurrency))
                .await
                .map_err(|_| timed_out("part", self.deadline))??;
            let n = (upto - *at).min(self.shape.part_bytes) as usize;
            let (file, offset) = (self.file.clone(), *at);
            let buf = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                file.read_exact_at(&mut buf, offset).map(|()| buf)
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(local)?;
            w.put(Bytes::from(buf));
            *at += n as u64;
            self.sent.store(*at, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn setup(data: &[u8]) -> (Remote, tempfile::TempDir, File) {
        let store = Arc::new(InMemory::new());
        let r = Remote::new(store, "p", "mem".into(), Duration::from_secs(5)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, data).unwrap();
        let f = File::open(&path).unwrap();
        (r, tmp, f)
    }

    const SHAPE: UploadShape = UploadShape {
        multipart_threshold: 1,
        part_bytes: 5 << 20,
        concurrency: 2,
    };

    fn wait_sent(a: &Ahead, n: u64) {
        for _ in 0..500 {
            if a.sent() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("sent {} of {n}", a.sent());
    }

    #[test]
    fn parts_go_up_as_the_file_grows_and_the_object_appears_on_complete() {
        let data: Vec<u8> = (0..(12u32 << 20) + 5).map(|i| (i % 253) as u8).collect();
        let (r, _tmp, f) = setup(&data);
        let mut a = r.upload_ahead("p/obj", f, SHAPE).unwrap();
        a.available(4 << 20);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(a.sent(), 0, "less than a part: nothing sent");
        a.available(11 << 20);
        wait_sent(&a, 10 << 20);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(a.sent(), 10 << 20, "only whole parts before the commit");
        assert!(
            r.head("p/obj").unwrap().is_none(),
            "invisible until complete"
        );
        a.complete(data.len() as u64).unwrap();
        let got = r.get_range("p/obj", 0..data.len() as u64).unwrap();
        assert!(got == data[..]);
    }

    #[test]
    fn a_dropped_upload_leaves_no_object() {
        let data = vec![3u8; 11 << 20];
        let (r, _tmp, f) = setup(&data);
        let mut a = r.upload_ahead("p/gone", f, SHAPE).unwrap();
        a.available(data.len() as u64);
        wait_sent(&a, 10 << 20);
        drop(a);
        std::thread::sleep(Duration::from_millis(100));
        assert!(r.head("p/gone").unwrap().is_none());
    }

    #[test]
    fn complete_uploads_everything_when_nothing_was_sent_yet() {
        let data: Vec<u8> = (0..(7u32 << 20)).map(|i| (i % 241) as u8).collect();
        let (r, _tmp, f) = setup(&data);
        let a = r.upload_ahead("p/late", f, SHAPE).unwrap();
        a.complete(data.len() as u64).unwrap();
        assert!(r.get_range("p/late", 0..data.len() as u64).unwrap() == data[..]);
    }
}
