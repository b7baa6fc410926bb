//! The s3 backend when the object store misbehaves, on a real 3-node Garage cluster
//! (replication factor 3) and the real strata-content binary: one Garage node killed during
//! writes and reads (nothing surfaces), all of them killed (clear errors, every call bounded,
//! cache hits still served; service resumes when they return, without restarting strata),
//! and strata-content SIGKILLed in the middle of a multipart upload (no half blob anywhere).
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::TryStreamExt;
use object_store::ObjectStore;
use strata_content::backend::s3::S3Config;
use strata_content::config::{BackendKind, Config};
use strata_proto::content::{InfoRequest, ListStatusesRequest, StatusRequest};
use strata_tests::garage::GarageCluster;
use tonic::Code;

/// One strata-content process on `dir`, as node `node` of the fleet `cfg` describes.
struct Node {
    child: Child,
    dir: std::path::PathBuf,
}

impl Node {
    fn spawn(dir: &Path, cfg: &S3Config, node: &str) -> Node {
        std::fs::create_dir_all(dir).unwrap();
        let mut config = Config::default();
        config.content.backend = BackendKind::S3;
        config.content.s3 = S3Config {
            node_id: node.into(),
            ..cfg.clone()
        };
        let path = dir.join("content.toml");
        std::fs::write(&path, strata_common::cli::render(&config).unwrap()).unwrap();
        let log = std::fs::File::create(dir.join("content.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_strata-content"))
            .arg("--config")
            .arg(&path)
            .arg("--address")
            .arg(dir.join("content.sock"))
            .arg("--root")
            .arg(dir.join("root"))
            .args(["--log-level", "debug"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Node {
            child,
            dir: dir.to_path_buf(),
        }
    }

    async fn client(&self) -> Client {
        let mut c = client(&self.dir.join("content.sock"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while c
            .list_statuses(ListStatusesRequest::default())
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "strata-content did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("content.log")).unwrap_or_default()
    }

    fn cache_file(&self, digest: &str) -> std::path::PathBuf {
        self.dir
            .join("root/blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Short timeouts, so that a dead store shows within seconds.
fn fleet_config(cluster: &GarageCluster, case: &str) -> S3Config {
    S3Config {
        request_timeout_secs: 3,
        connect_timeout_secs: 1,
        retry_timeout_secs: 3,
        max_retries: 2,
        gc_interval_secs: 0,
        ..s3_config(cluster, case)
    }
}

/// Object keys under the config's prefix.
async fn bucket_keys(cfg: &S3Config, under: &str) -> Vec<String> {
    let store: Arc<dyn ObjectStore> = cfg.build().unwrap();
    let prefix = object_store::path::Path::from(format!("{}{under}", cfg.prefix));
    let metas: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
    metas.into_iter().map(|m| m.location.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_garage_node_down_during_writes_and_reads() {
    let mut cluster = garage().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = fleet_config(&cluster, "one-down");
    // strata talks to node 0; node 2 dies.
    let a = Node::spawn(&tmp.path().join("a"), &cfg, "a");
    let b = Node::spawn(&tmp.path().join("b"), &cfg, "b");
    let mut ca = a.client().await;
    let mut cb = b.client().await;

    let data = bytes(48 << 20, 1);
    let digest = sha256(&data);
    // Killed while the blob is written and uploaded (multipart: 48 MiB is past the threshold).
    let writing = {
        let (mut ca, data) = (ca.clone(), data.clone());
        tokio::spawn(async move { ingest(&mut ca, "one-down", &data, 1 << 20).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| cluster.kill(2)).unwrap();
    assert_eq!(writing.await.unwrap().unwrap(), digest, "{}", a.log());
    assert!(!cluster.is_running(2));
    // Its parts went up while it was written, not all at the commit.
    let ahead = uploaded_ahead(&a.log(), &digest);
    assert!(ahead >= cfg.part_bytes, "uploaded ahead: {ahead}");
    // Node b never saw it: Info and the whole read come from the bucket, one node short.
    assert_eq!(read(&mut cb, &digest, 0, 0).await.unwrap(), data);

    // And killed during a read: b reads another blob from the bucket while node 1 dies
    // (node 2 back first, so two of three stay up).
    tokio::task::block_in_place(|| cluster.start_node(2)).unwrap();
    let more = bytes(48 << 20, 2);
    let d2 = ingest(&mut ca, "one-down-2", &more, 1 << 20).await.unwrap();
    let reading = {
        let mut cb = cb.clone();
        let d2 = d2.clone();
        tokio::spawn(async move { read(&mut cb, &d2, 0, 0).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::task::block_in_place(|| cluster.kill(1)).unwrap();
    assert_eq!(reading.await.unwrap().unwrap(), more, "{}", b.log());
    // The download moves the blob into the cache once it is verified, just after the last
    // bytes reached the reader.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.cache_file(&d2).is_file() {
        assert!(Instant::now() < deadline, "never cached: {}", b.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_garage_nodes_down_then_back() {
    let mut cluster = garage().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = fleet_config(&cluster, "all-down");
    let a = Node::spawn(&tmp.path().join("a"), &cfg, "a");
    let mut c = a.client().await;
    let cached = bytes(3 << 20, 3);
    let cached_digest = ingest(&mut c, "before", &cached, 1 << 20).await.unwrap();

    tokio::task::block_in_place(|| cluster.kill_all());

    // A commit fails with an error naming the endpoint, bounded, and not Unavailable
    // (containerd's writer would retry that forever).
    let data = bytes(40 << 20, 4);
    let t = Instant::now();
    let e = ingest(&mut c, "during", &data, 1 << 20).await.unwrap_err();
    let bound = Duration::from_secs(3 * cfg.call_timeout().as_secs());
    assert!(t.elapsed() < bound, "took {:?}", t.elapsed());
    assert_ne!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(&cfg.endpoint), "{e:?}");
    // Info of a blob the node lacks asks the store: also an error, also bounded.
    let t = Instant::now();
    let e = c
        .info(InfoRequest {
            digest: sha256(b"unknown"),
        })
        .await
        .unwrap_err();
    assert!(t.elapsed() < bound);
    assert!(e.message().contains(&cfg.endpoint), "{e:?}");
    // Nothing partial: the failed commit left the ingest, not a blob.
    let st = c
        .status(StatusRequest {
            r#ref: "during".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(st.offset, data.len() as i64);
    assert!(!a.cache_file(&sha256(&data)).exists());
    // Cache hits are still served.
    assert_eq!(read(&mut c, &cached_digest, 0, 0).await.unwrap(), cached);

    // The store returns; the same import succeeds, strata untouched.
    tokio::task::block_in_place(|| cluster.start_all()).unwrap();
    let d = retry_until_ok(Duration::from_secs(60), || {
        let mut c = c.clone();
        let data = data.clone();
        async move { ingest(&mut c, "during", &data, 1 << 20).await }
    })
    .await;
    assert_eq!(d, sha256(&data));
    assert!(
        bucket_keys(&cfg, "blobs")
            .await
            .iter()
            .any(|k| k.ends_with(d.trim_start_matches("sha256:")))
    );
    drop(cluster);
}

/// What strata-content's debug log says the commit of `digest` found uploaded before it.
fn uploaded_ahead(log: &str, digest: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains("committed") && l.contains(digest))
        .unwrap_or_else(|| panic!("no commit of {digest} in the log:\n{log}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("uploaded_ahead="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no uploaded_ahead in {line}"))
}

/// Retries `f` until it succeeds (Garage takes a moment to elect after a full restart).
async fn retry_until_ok<T, F, Fut>(limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying after {e:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("still failing after {limit:?}: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_multipart_upload_leaves_no_half_blob() {
    let cluster = garage().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = S3Config {
        // Slow the upload down to one part at a time, so the kill lands inside it.
        upload_concurrency: 1,
        ..fleet_config(&cluster, "sigkill")
    };
    let dir = tmp.path().join("a");
    let mut a = Node::spawn(&dir, &cfg, "a");
    let mut c = a.client().await;
    let data = bytes(160 << 20, 5);
    let digest = sha256(&data);
    let (mut w, _) = Writer::open(&mut c, stat_req("big", data.len() as i64, &digest))
        .await
        .unwrap();
    let mut off = 0;
    for piece in data.chunks(4 << 20) {
        off = w.write(off, piece).await.unwrap().offset;
    }
    let n = data.len() as i64;
    let committing = tokio::spawn(async move { w.commit(n, n, &digest).await });
    // Kill once the upload is under way: its reference marker, written right before the
    // upload starts, is in the bucket.
    let digest = sha256(&data);
    let hex = digest.trim_start_matches("sha256:").to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bucket_keys(&cfg, "refs")
        .await
        .iter()
        .any(|k| k.contains(&hex))
    {
        assert!(Instant::now() < deadline, "no upload began: {}", a.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.kill();
    assert!(
        committing.await.unwrap().is_err(),
        "the commit did not finish before the kill; make the blob bigger"
    );

    // Nothing visible: no blob object, no cached file, no held blob.
    let hex = hex.as_str();
    assert!(
        !bucket_keys(&cfg, "blobs")
            .await
            .iter()
            .any(|k| k.ends_with(hex)),
        "a half blob in the bucket"
    );
    assert!(!a.cache_file(&digest).exists(), "a half blob in the cache");
    // The kill came after the marker, which is written right before the upload starts.
    assert!(
        bucket_keys(&cfg, "refs")
            .await
            .iter()
            .any(|k| k.contains(hex)),
        "killed before the upload began; kill later"
    );

    let a = Node::spawn(&dir, &cfg, "a");
    let mut c = a.client().await;
    assert_eq!(
        c.info(InfoRequest {
            digest: digest.clone()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    // The ingest survived; committing it again uploads the whole blob.
    assert_eq!(ingest(&mut c, "big", &data, 4 << 20).await.unwrap(), digest);
    let store: Arc<dyn ObjectStore> = cfg.build().unwrap();
    let key = object_store::path::Path::from(format!("{}blobs/sha256/{hex}", cfg.prefix));
    assert_eq!(store.head(&key).await.unwrap().size, data.len() as u64);
    std::fs::remove_file(a.cache_file(&digest)).unwrap();
    let other = Node::spawn(&tmp.path().join("b"), &cfg, "b");
    let mut cb = other.client().await;
    assert_eq!(read(&mut cb, &digest, 0, 0).await.unwrap(), data);
    drop(cluster);
}
