//! The backend's logic over object_store's in-memory store; the same paths against a real
//! Garage cluster, and through containerd, are in content-store/tests and tests/.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use strata_common::error::ErrorKind;

use super::*;
use crate::backend::BlobBackend;

fn cfg(node: &str) -> S3Config {
    S3Config {
        bucket: "b".into(),
        prefix: "fleet".into(),
        node_id: node.into(),
        gc_grace_secs: 0,
        multipart_threshold_bytes: 6 << 20,
        part_bytes: 5 << 20,
        ..S3Config::default()
    }
}

fn node(dir: &Path, name: &str, store: &Arc<InMemory>, cache_max: u64) -> S3Backend {
    let c = S3Config {
        cache_max_bytes: cache_max,
        ..cfg(name)
    };
    let s: Arc<dyn ObjectStore> = store.clone();
    S3Backend::with_store(&dir.join(name), &c, s).unwrap()
}

fn ingest(dir: &Path, data: &[u8]) -> (Digest, PathBuf) {
    let d = Digest::sha256_of(data);
    let p = dir.join(format!("ingest-{}", &d.hex()[..8]));
    File::create(&p).unwrap().write_all(data).unwrap();
    (d, p)
}

fn read_all(r: &dyn BlobReader) -> Vec<u8> {
    let mut out = vec![0u8; r.size() as usize];
    let mut at = 0;
    while at < out.len() {
        let n = r.read_at(&mut out[at..], at as u64).unwrap();
        assert!(n > 0);
        at += n;
    }
    out
}

fn keys(store: &InMemory, prefix: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        use futures::TryStreamExt;
        let p = object_store::path::Path::from(prefix);
        let v: Vec<_> = store.list(Some(&p)).try_collect().await.unwrap();
        let mut k: Vec<String> = v.into_iter().map(|m| m.location.to_string()).collect();
        k.sort();
        k
    })
}

/// Waits for `d`'s download (if any) to be done with the cache.
fn settle(b: &S3Backend, d: &Digest) {
    for _ in 0..500 {
        if !b.inner.downloads.busy(d) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("download of {d} never finished");
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn commit_read_delete_on_one_node() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let a = node(tmp.path(), "a", &store, 0);
    for bytes in [data(1000, 1), data(13 << 20, 2)] {
        let (d, p) = ingest(tmp.path(), &bytes);
        a.put(&d, &p).unwrap();
        assert!(!p.exists(), "the ingest became the cached copy");
        assert_eq!(a.stat(&d).unwrap().unwrap().size, bytes.len() as u64);
        assert!(read_all(&*a.open(&d).unwrap()) == bytes);
        let (_, again) = ingest(tmp.path(), &bytes);
        assert!(a.put(&d, &again).unwrap_err().is(ErrorKind::AlreadyExists));
        assert!(keys(&store, "fleet/blobs").contains(&format!("fleet/blobs/sha256/{}", d.hex())));
        assert_eq!(
            keys(&store, &format!("fleet/refs/sha256/{}", d.hex())),
            [format!("fleet/refs/sha256/{}/a", d.hex())]
        );
    }
    let mut listed = 0;
    a.list(&mut |_| {
        listed += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(listed, 2);
}

#[test]
fn second_node_answers_from_the_bucket_and_fleet_gc_waits_for_both() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let a = node(tmp.path(), "a", &store, 0);
    let b = node(tmp.path(), "b", &store, 0);
    let bytes = data(7 << 20, 3);
    let (d, p) = ingest(tmp.path(), &bytes);
    a.put(&d, &p).unwrap();

    // B never saw it: Info comes from the bucket and B now holds a reference.
    assert_eq!(b.stat(&d).unwrap().unwrap().size, bytes.len() as u64);
    assert!(read_all(&*b.open(&d).unwrap()) == bytes);
    settle(&b, &d);
    assert!(
        tmp.path().join("b/blobs/sha256").join(d.hex()).is_file(),
        "read into B's cache"
    );

    // A lets go: the blob stays for B, whatever the sweepers do.
    a.delete(&d).unwrap();
    assert!(a.delete(&d).unwrap_err().is(ErrorKind::NotFound));
    a.sweep().unwrap();
    b.sweep().unwrap();
    assert_eq!(keys(&store, "fleet/blobs").len(), 1);
    b.inner.cache.remove(&d).unwrap();
    assert!(read_all(&*b.open(&d).unwrap()) == bytes, "downloaded again");

    // B lets go too: flagged, then deleted by a sweep past the grace period (0 here).
    b.delete(&d).unwrap();
    assert_eq!(
        keys(&store, "fleet/gc"),
        [format!("fleet/gc/sha256/{}", d.hex())]
    );
    let swept = a.sweep().unwrap();
    assert_eq!(swept.deleted, vec![d.clone()]);
    assert!(
        keys(&store, "fleet").is_empty(),
        "{:?}",
        keys(&store, "fleet")
    );
    assert!(a.stat(&d).unwrap().is_none());
}

#[test]
fn a_released_blob_is_absent_to_info_but_a_commit_takes_it_back() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let a = node(tmp.path(), "a", &store, 0);
    let b = node(tmp.path(), "b", &store, 0);
    let (d, p) = ingest(tmp.path(), b"shared");
    a.put(&d, &p).unwrap();
    a.delete(&d).unwrap();
    assert_eq!(keys(&store, "fleet/gc").len(), 1, "candidate");
    // Nobody holds it: absent, on the node that deleted it and on any other.
    assert!(a.stat(&d).unwrap().is_none());
    assert!(b.stat(&d).unwrap().is_none());
    assert!(
        keys(&store, "fleet/refs").is_empty(),
        "no marker left behind"
    );
    // A commit of the same bytes withdraws the flag, and sweeps keep the blob.
    let (_, p) = ingest(tmp.path(), b"shared");
    b.put(&d, &p).unwrap();
    assert!(keys(&store, "fleet/gc").is_empty());
    a.sweep().unwrap();
    assert!(read_all(&*a.open(&d).unwrap()) == b"shared");
}

#[test]
fn a_blob_being_deleted_is_absent_to_a_new_reader_and_reuploaded_by_a_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let a = node(tmp.path(), "a", &store, 0);
    let b = node(tmp.path(), "b", &store, 0);
    let (d, p) = ingest(tmp.path(), b"going");
    a.put(&d, &p).unwrap();
    // A sweeper elsewhere is mid-deletion (stale only after minutes).
    let r = &a.inner.remote;
    r.put_small(&r.gc_key(&d), bytes::Bytes::from_static(fleet::DELETING))
        .unwrap();
    assert!(b.stat(&d).unwrap().is_none(), "treated as absent");
    assert!(
        keys(&store, &r.refs_dir(&d))
            .iter()
            .all(|k| !k.ends_with("/b")),
        "B's marker withdrawn"
    );
    // The deletion finishes; B then commits the same bytes and the blob is back.
    r.delete(&r.blob_key(&d)).unwrap();
    r.delete(&r.gc_key(&d)).unwrap();
    let (_, p) = ingest(tmp.path(), b"going");
    b.put(&d, &p).unwrap();
    assert_eq!(r.head(&r.blob_key(&d)).unwrap().unwrap().size, 5);
}

#[test]
fn ghost_markers_and_orphan_blobs_are_swept() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let a = node(tmp.path(), "a", &store, 0);
    let (d, p) = ingest(tmp.path(), b"orphan");
    a.put(&d, &p).unwrap();
    // A crash between removing the held row and the marker:
    a.inner.held.remove(&d).unwrap();
    let s = a.sweep().unwrap();
    assert_eq!(
        (s.ghost_refs, s.deleted.len()),
        (1, 0),
        "flagged by the ghost's removal"
    );
    assert_eq!(a.sweep().unwrap().deleted, vec![d.clone()], "grace 0");
    // A crash between an upload and its marker: flagged first, deleted on the next sweep.
    let r = &a.inner.remote;
    r.put_small(&r.blob_key(&d), bytes::Bytes::from_static(b"orphan"))
        .unwrap();
    let s = a.sweep().unwrap();
    assert_eq!((s.flagged, s.deleted.len()), (1, 0));
    assert_eq!(a.sweep().unwrap().deleted, vec![d]);
}

#[test]
fn cache_limit_evicts_and_reads_come_back_from_the_bucket() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let a = node(tmp.path(), "a", &store, 10 << 20);
    let one = data(6 << 20, 4);
    let two = data(6 << 20, 5);
    let (d1, p1) = ingest(tmp.path(), &one);
    let (d2, p2) = ingest(tmp.path(), &two);
    a.put(&d1, &p1).unwrap();
    a.put(&d2, &p2).unwrap();
    assert!(a.cached_bytes() <= 10 << 20);
    assert!(!a.inner.cache.path(&d1).exists(), "the older evicted");
    // Several readers of the evicted blob share one download.
    let readers: Vec<_> = (0..4).map(|_| a.open(&d1).unwrap()).collect();
    for r in &readers {
        assert!(read_all(&**r) == one);
    }
    drop(readers);
    settle(&a, &d1);
    assert!(a.inner.cache.path(&d1).exists(), "back in the cache");
    assert!(!a.inner.cache.path(&d2).exists(), "and the other evicted");
}

#[test]
fn a_corrupt_object_never_enters_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let a = node(tmp.path(), "a", &store, 0);
    let (d, p) = ingest(tmp.path(), b"good bytes");
    a.put(&d, &p).unwrap();
    a.inner.cache.remove(&d).unwrap();
    let r = &a.inner.remote;
    r.put_small(&r.blob_key(&d), bytes::Bytes::from_static(b"evil bytes"))
        .unwrap();
    let reader = a.open(&d).unwrap();
    // Served as it streams, but never kept: the next open downloads again.
    let _ = read_all(&*reader);
    drop(reader);
    settle(&a, &d);
    assert!(!a.inner.cache.path(&d).exists());
}

#[test]
fn a_file_placed_in_the_cache_dir_is_uploaded_before_it_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let a = node(tmp.path(), "a", &store, 0);
    let b = node(tmp.path(), "b", &store, 0);
    let bytes = data(3000, 6);
    let d = Digest::sha256_of(&bytes);
    // What the differ's Diff does with content_root:
    std::fs::write(a.inner.cache.path(&d), &bytes).unwrap();
    assert_eq!(a.stat(&d).unwrap().unwrap().size, 3000);
    assert!(read_all(&*b.open(&d).unwrap()) == bytes, "in the bucket");
    // A misnamed file is not trusted.
    let wrong = Digest::sha256_of(b"other");
    std::fs::write(a.inner.cache.path(&wrong), b"not other").unwrap();
    assert!(a.stat(&wrong).unwrap().is_none());
    assert!(!a.inner.cache.path(&wrong).exists());
}

#[test]
fn node_id_is_made_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let c = S3Config {
        node_id: String::new(),
        ..cfg("")
    };
    let s: Arc<dyn ObjectStore> = store.clone();
    let first = S3Backend::with_store(tmp.path(), &c, s.clone())
        .unwrap()
        .node_id()
        .to_string();
    let again = S3Backend::with_store(tmp.path(), &c, s).unwrap();
    assert_eq!(again.node_id(), first);
    assert!(!first.is_empty());
}

/// A content store on node `name`'s backend, with its ingests beside the cache.
fn content_store(dir: &Path, name: &str, store: &Arc<InMemory>) -> crate::store::ContentStore {
    let b = node(dir, name, store, 0);
    crate::store::ContentStore::open(&dir.join(name), Box::new(b)).unwrap()
}

fn blob_keys(store: &InMemory) -> Vec<String> {
    keys(store, "fleet/blobs")
}

/// Waits until `w`'s upload has sent `n` bytes ahead of the commit; an empty write tells the
/// upload what the writing thread has put in the file since the last one.
fn wait_uploaded_ahead(w: &mut crate::store::ContentWriter, n: u64) {
    for _ in 0..500 {
        if w.uploaded_ahead() >= n {
            return;
        }
        w.write_bytes(Bytes::new()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("uploaded ahead {} of {n}", w.uploaded_ahead());
}

#[test]
fn a_large_ingest_uploads_while_it_is_written_and_appears_at_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let cs = content_store(tmp.path(), "a", &store);
    let bytes = data(14 << 20, 9);
    let d = Digest::sha256_of(&bytes);
    let mut w = cs.writer("big", bytes.len() as u64, Some(&d)).unwrap();
    let (head, tail) = bytes.split_at(12 << 20);
    for chunk in head.chunks(1 << 20) {
        w.write_bytes(Bytes::copy_from_slice(chunk)).unwrap();
    }
    // Two whole 5 MiB parts are in the file.
    wait_uploaded_ahead(&mut w, 5 << 20);
    assert!(
        blob_keys(&store).is_empty(),
        "nothing visible before the commit"
    );
    w.write_bytes(Bytes::copy_from_slice(tail)).unwrap();
    assert_eq!(w.commit(0, Some(&d), Default::default()).unwrap(), d);
    assert_eq!(
        blob_keys(&store),
        [format!("fleet/blobs/sha256/{}", d.hex())]
    );
    // Read back from the bucket, not the cache: a second node.
    let b = node(tmp.path(), "b", &store, 0);
    assert!(read_all(&*b.open(&d).unwrap()) == bytes);
}

#[test]
fn an_upload_begun_for_data_that_is_not_committed_never_appears() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let cs = content_store(tmp.path(), "a", &store);
    let bytes = data(12 << 20, 4);
    let expected = Digest::sha256_of(&data(12 << 20, 5));
    let actual = Digest::sha256_of(&bytes);
    let wait_sent = |w: &mut crate::store::ContentWriter| wait_uploaded_ahead(w, 10 << 20);

    // The digest does not match: FailedPrecondition, the upload is dropped with the writer.
    let mut w = cs
        .writer("wrong", bytes.len() as u64, Some(&expected))
        .unwrap();
    w.write_bytes(Bytes::copy_from_slice(&bytes)).unwrap();
    wait_sent(&mut w);
    let err = w
        .commit(0, Some(&expected), Default::default())
        .unwrap_err();
    assert!(err.is(ErrorKind::FailedPrecondition), "{err}");

    // Abandoned half-way, and truncated: nothing either.
    let mut w = cs
        .writer("gone", bytes.len() as u64, Some(&actual))
        .unwrap();
    w.write_bytes(Bytes::copy_from_slice(&bytes)).unwrap();
    wait_sent(&mut w);
    drop(w);
    let mut w = cs
        .writer("gone", bytes.len() as u64, Some(&actual))
        .unwrap();
    wait_sent(&mut w);
    w.truncate().unwrap();
    assert_eq!(w.uploaded_ahead(), 0);
    drop(w);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(blob_keys(&store).is_empty(), "{:?}", blob_keys(&store));

    // Opened expecting one digest, committed as what the data is: stored under the latter
    // only (the upload begun for the former is dropped).
    let mut w = cs
        .writer("other", bytes.len() as u64, Some(&expected))
        .unwrap();
    w.write_bytes(Bytes::copy_from_slice(&bytes)).unwrap();
    wait_sent(&mut w);
    assert_eq!(w.commit(0, None, Default::default()).unwrap(), actual);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        blob_keys(&store),
        [format!("fleet/blobs/sha256/{}", actual.hex())]
    );
    let b = node(tmp.path(), "b", &store, 0);
    assert!(read_all(&*b.open(&actual).unwrap()) == bytes);
}

#[test]
fn an_ingest_without_a_digest_uploads_at_its_commit_and_never_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let cs = content_store(tmp.path(), "a", &store);
    // containerd's image importer names the size only: nothing goes up before the commit.
    for (name, bytes) in [("big", data(14 << 20, 6)), ("small", data(1000, 7))] {
        let d = Digest::sha256_of(&bytes);
        let mut w = cs.writer(name, bytes.len() as u64, None).unwrap();
        w.write_bytes(Bytes::copy_from_slice(&bytes)).unwrap();
        assert_eq!(w.uploaded_ahead(), 0);
        assert_eq!(w.commit(0, None, Default::default()).unwrap(), d);
        let key = format!("fleet/blobs/sha256/{}", d.hex());
        assert!(blob_keys(&store).contains(&key));

        // Another node importing the same bytes finds the blob at its commit: the object
        // stays the one node a uploaded.
        let before = head_of(&store, &key);
        let cs_c = content_store(tmp.path(), &format!("c-{name}"), &store);
        let mut w = cs_c.writer(name, bytes.len() as u64, None).unwrap();
        w.write_bytes(Bytes::copy_from_slice(&bytes)).unwrap();
        assert_eq!(w.commit(0, None, Default::default()).unwrap(), d);
        assert_eq!(head_of(&store, &key), before);
        let b = node(tmp.path(), &format!("b-{name}"), &store, 0);
        assert!(read_all(&*b.open(&d).unwrap()) == bytes);
    }
}

fn head_of(store: &InMemory, key: &str) -> (Option<String>, std::time::SystemTime) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let m = rt
        .block_on(store.head(&object_store::path::Path::from(key)))
        .unwrap();
    (m.e_tag, m.last_modified.into())
}
