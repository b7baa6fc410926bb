//! The bucket, seen from blocking code: every call runs on a small runtime of its own (the
//! store's callers are blocking threads, and the server's runtime must never wait on the
//! network), is bounded by one deadline, and names the endpoint when it fails.
//!
//! Keys under the configured prefix:
//! - `blobs/<alg>/<hex>`: the blob, written only whole (single PUT or completed multipart);
//! - `refs/<alg>/<hex>/<node>`: an empty marker per node holding the blob;
//! - `gc/<alg>/<hex>`: `candidate` once no node holds it, `deleting` while one deletes it.

use std::fs::File;
use std::future::Future;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, PutPayload};
use strata_common::error::ErrorKind;
use strata_common::{Error, Result};

use crate::digest::Digest;
use crate::metrics::OBJECT_STORE;

/// Object metadata the backend uses.
#[derive(Clone, Debug)]
pub struct Object {
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// How blobs are uploaded.
#[derive(Clone, Copy, Debug)]
pub struct UploadShape {
    pub multipart_threshold: u64,
    pub part_bytes: u64,
    pub concurrency: usize,
}

pub struct Remote {
    store: Arc<dyn ObjectStore>,
    /// `Option` only so that Drop can shut it down without blocking (dropping a runtime from
    /// inside the server's runtime would panic).
    rt: Option<tokio::runtime::Runtime>,
    prefix: String,
    describe: String,
    deadline: Duration,
}

impl Drop for Remote {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A failed call to the store `describe` (endpoint and bucket), in the words every call uses.
pub fn failure(describe: &str, what: &str, key: &str, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!("object store {describe}: {what} {key}: {e}"),
    )
}

fn trim_prefix(prefix: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

impl Remote {
    /// `describe` names the store in errors (endpoint and bucket); every call gives up after
    /// `deadline`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        describe: String,
        deadline: Duration,
    ) -> Result<Remote> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("strata-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the object store runtime", e))?;
        Ok(Remote {
            store,
            rt: Some(rt),
            prefix: trim_prefix(prefix),
            describe,
            deadline,
        })
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    pub(super) fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    pub(super) fn runtime(&self) -> Option<&tokio::runtime::Runtime> {
        self.rt.as_ref()
    }

    pub fn blob_key(&self, d: &Digest) -> String {
        format!(
            "{}blobs/{}/{}",
            self.prefix,
            d.algorithm().as_str(),
            d.hex()
        )
    }

    pub fn refs_dir(&self, d: &Digest) -> String {
        format!("{}refs/{}/{}", self.prefix, d.algorithm().as_str(), d.hex())
    }

    pub fn ref_key(&self, d: &Digest, node: &str) -> String {
        format!("{}/{node}", self.refs_dir(d))
    }

    pub fn gc_key(&self, d: &Digest) -> String {
        format!("{}gc/{}/{}", self.prefix, d.algorithm().as_str(), d.hex())
    }

    /// `blobs`, `refs` or `gc` under the prefix.
    pub fn area(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The digest a `blobs/`, `refs/` or `gc/` key is about, and the rest after it.
    pub fn parse_key<'a>(&self, area: &str, key: &'a str) -> Option<(Digest, &'a str)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix(area)?;
        let rest = rest.strip_prefix('/')?;
        let (alg, rest) = rest.split_once('/')?;
        let (hex, tail) = rest.split_once('/').unwrap_or((rest, ""));
        Some((Digest::parse(&format!("{alg}:{hex}")).ok()?, tail))
    }

    fn fail(&self, what: &str, key: &str, e: impl std::fmt::Display) -> Error {
        failure(&self.describe, what, key, e)
    }

    /// Runs `fut` on the object store's runtime and waits for it, at most the deadline;
    /// counted as one request `what` (HEAD, GET, PUT, DELETE, LIST).
    pub fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        key: &str,
        fut: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> Result<Option<T>> {
        let Some(rt) = self.rt.as_ref() else {
            return Err(self.fail(what, key, "shut down"));
        };
        OBJECT_STORE.request(what);
        let deadline = self.deadline;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let r = tokio::time::timeout(deadline, fut).await;
            let _ = tx.send(r);
        });
        let r = match rx.recv() {
            Ok(Ok(Ok(v))) => Ok(Some(v)),
            Ok(Ok(Err(object_store::Error::NotFound { .. }))) => Ok(None),
            Ok(Ok(Err(e))) => Err(self.fail(what, key, e)),
            Ok(Err(_)) => Err(self.fail(
                what,
                key,
                format!("no answer within {}s", deadline.as_secs()),
            )),
            Err(_) => Err(self.fail(what, key, "request task ended")),
        };
        if r.is_err() {
            OBJECT_STORE.error(what);
        }
        r
    }

    fn key(k: &str) -> Key {
        Key::from(k)
    }

    pub fn head(&self, key: &str) -> Result<Option<Object>> {
        let store = self.store.clone();
        let k = Self::key(key);
        let meta = self.run("HEAD", key, async move { store.head(&k).await })?;
        Ok(meta.map(|m| Object {
            key: m.location.to_string(),
            size: m.size,
            modified: m.last_modified.into(),
        }))
    }

    /// The object's bytes (small objects: markers and flags).
    pub fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let store = self.store.clone();
        let k = Self::key(key);
        let got = self.run("GET", key, async move {
            match store.get(&k).await {
                Ok(r) => r.bytes().await,
                Err(e) => Err(e),
            }
        })?;
        if let Some(b) = &got {
            OBJECT_STORE.downloaded(b.len() as u64);
        }
        Ok(got)
    }

    pub fn put_small(&self, key: &str, data: Bytes) -> Result<()> {
        let store = self.store.clone();
        let k = Self::key(key);
        let len = data.len() as u64;
        self.run("PUT", key, async move {
            store.put(&k, PutPayload::from(data)).await.map(|_| ())
        })?
        .ok_or_else(|| self.fail("PUT", key, "not found"))?;
        OBJECT_STORE.uploaded(len);
        Ok(())
    }

    /// Deletes `key`; absent is fine.
    pub fn delete(&self, key: &str) -> Result<()> {
        let store = self.store.clone();
        let k = Self::key(key);
        self.run("DELETE", key, async move { store.delete(&k).await })?;
        Ok(())
    }

    /// Every object under `dir/`.
    pub fn list(&self, dir: &str) -> Result<Vec<Object>> {
        let store = self.store.clone();
        let k = Self::key(dir);
        let listed = self.run("LIST", dir, async move {
            let mut out = Vec::new();
            let mut s = store.list(Some(&k));
            while let Some(m) = s.next().await {
                let m = m?;
                out.push(Object {
                    key: m.location.to_string(),
                    size: m.size,
                    modified: m.last_modified.into(),
                });
            }
            Ok(out)
        })?;
        Ok(listed.unwrap_or_default())
    }

    /// Bytes `range` of `key`; NotFound when the object is gone.
    pub fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let store = self.store.clone();
        let k = Self::key(key);
        let got = self
            .run("GET", key, async move { store.get_range(&k, range).await })?
            .ok_or_else(|| Error::not_found(format!("object {key} in {}", self.describe)))?;
        OBJECT_STORE.downloaded(got.len() as u64);
        Ok(got)
    }

    /// Starts fetching `range` of `key` without waiting (for read-ahead).
    pub fn spawn_range(
        &self,
        key: &str,
        range: Range<u64>,
    ) -> Result<std::sync::mpsc::Receiver<Result<Bytes>>> {
        let Some(rt) = self.rt.as_ref() else {
            return Err(self.fail("GET", key, "shut down"));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let store = self.store.clone();
        let k = Self::key(key);
        let (key, describe, deadline) = (key.to_string(), self.describe.clone(), self.deadline);
        OBJECT_STORE.request("GET");
        rt.spawn(async move {
            let r = match tokio::time::timeout(deadline, store.get_range(&k, range)).await {
                Ok(Ok(b)) => {
                    OBJECT_STORE.downloaded(b.len() as u64);
                    Ok(b)
                }
                Ok(Err(object_store::Error::NotFound { .. })) => {
                    Err(Error::not_found(format!("object {key} in {describe}")))
                }
                Ok(Err(e)) => {
                    OBJECT_STORE.error("GET");
                    Err(failure(&describe, "GET", &key, e))
                }
                Err(_) => {
                    OBJECT_STORE.error("GET");
                    let e = format!("no answer within {}s", deadline.as_secs());
                    Err(failure(&describe, "GET", &key, e))
                }
            };
            let _ = tx.send(r);
        });
        Ok(rx)
    }

    /// Uploads `file` (`size` bytes) as `key`: one PUT when small, else a multipart upload
    /// with `shape.concurrency` parts in flight. The object appears only when complete; a
    /// failed multipart upload is aborted.
    pub fn upload(&self, key: &str, file: &File, size: u64, shape: UploadShape) -> Result<()> {
        if size < shape.multipart_threshold {
            let len = usize::try_from(size).map_err(|_| self.fail("PUT", key, "too large"))?;
            let mut data = vec![0u8; len];
            file.read_exact_at(&mut data, 0)
                .map_err(|e| Error::io(format!("read blob for {key}"), e))?;
            return self.put_small(key, Bytes::from(data));
        }
        let file = file
            .try_clone()
            .map_err(|e| Error::io(format!("read blob for {key}"), e))?;
        self.upload_ahead(key, file, shape)
            .ok_or_else(|| self.fail("multipart upload", key, "shut down"))?
            .complete(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let r = Remote::new(store, "/fleet-a/", "mem".into(), Duration::from_secs(5)).unwrap();
        let d = Digest::sha256_of(b"x");
        assert_eq!(r.blob_key(&d), format!("fleet-a/blobs/sha256/{}", d.hex()));
        let k = r.ref_key(&d, "node-1");
        assert_eq!(r.parse_key("refs", &k), Some((d.clone(), "node-1")));
        assert_eq!(r.parse_key("gc", &r.gc_key(&d)), Some((d.clone(), "")));
        assert_eq!(r.parse_key("blobs", "other/blobs/sha256/x"), None);
        let bare = Remote::new(
            Arc::new(object_store::memory::InMemory::new()),
            "",
            "mem".into(),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(bare.blob_key(&d), format!("blobs/sha256/{}", d.hex()));
    }

    #[test]
    fn multipart_and_single_uploads_read_back() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let r = Remote::new(store, "p", "mem".into(), Duration::from_secs(5)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(11u32 << 20) + 7).map(|i| (i % 251) as u8).collect();
        let path = tmp.path().join("f");
        std::fs::write(&path, &data).unwrap();
        let f = File::open(&path).unwrap();
        for threshold in [1, u64::MAX] {
            let shape = UploadShape {
                multipart_threshold: threshold,
                part_bytes: 5 << 20,
                concurrency: 2,
            };
            r.upload("p/obj", &f, data.len() as u64, shape).unwrap();
            let got = r.get_range("p/obj", 0..data.len() as u64).unwrap();
            assert!(got == data[..], "threshold {threshold}");
        }
        assert_eq!(r.head("p/obj").unwrap().unwrap().size, data.len() as u64);
        assert!(r.head("p/none").unwrap().is_none());
        assert!(
            r.get_range("p/none", 0..1)
                .unwrap_err()
                .is(ErrorKind::NotFound)
        );
        r.delete("p/obj").unwrap();
        r.delete("p/obj").unwrap();
        assert!(r.list("p").unwrap().is_empty());
    }

    #[test]
    fn requests_and_bytes_are_counted() {
        // The counters are the process's: other tests add to them meanwhile, never take away.
        let (down0, up0) = OBJECT_STORE.bytes();
        let (puts0, multi0, gets0) = (
            OBJECT_STORE.requests_of("PUT"),
            OBJECT_STORE.requests_of("PUT_MULTIPART"),
            OBJECT_STORE.requests_of("GET"),
        );
        let store = Arc::new(object_store::memory::InMemory::new());
        let r = Remote::new(store, "m", "mem".into(), Duration::from_secs(5)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let data = vec![7u8; (5 << 20) + 3];
        let path = tmp.path().join("f");
        std::fs::write(&path, &data).unwrap();
        let f = File::open(&path).unwrap();
        let multipart = UploadShape {
            multipart_threshold: 1,
            part_bytes: 5 << 20,
            concurrency: 2,
        };
        r.upload("m/big", &f, data.len() as u64, multipart).unwrap();
        r.put_small("m/small", Bytes::from_static(b"abc")).unwrap();
        assert_eq!(r.get_range("m/big", 0..10).unwrap().len(), 10);
        let spawned = r.spawn_range("m/big", 10..30).unwrap();
        assert_eq!(spawned.recv().unwrap().unwrap().len(), 20);
        assert_eq!(r.get("m/small").unwrap().unwrap().as_ref(), b"abc");

        let (down, up) = OBJECT_STORE.bytes();
        assert!(up - up0 >= data.len() as u64 + 3, "uploaded {}", up - up0);
        assert!(down - down0 >= 10 + 20 + 3, "downloaded {}", down - down0);
        assert!(OBJECT_STORE.requests_of("PUT") > puts0);
        assert!(OBJECT_STORE.requests_of("PUT_MULTIPART") > multi0);
        assert!(OBJECT_STORE.requests_of("GET") >= gets0 + 3);
    }
}
