//! strata-differ's Diff writing into strata-content directly (no containerd): the blob and its
//! labels, a reused ref, and a failed diff leaving no ingest behind. Both binaries run as
//! processes on their sockets. Needs root (the differ mounts and reads owners) and the plugin
//! binaries (`cargo build --workspace --bins`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;

use strata_common::client::unix_channel;
use strata_proto::content::content_client::ContentClient;
use strata_proto::content::{InfoRequest, ListStatusesRequest, ReadContentRequest};
use strata_proto::diff::DiffRequest;
use strata_proto::diff::diff_client::DiffClient;
use strata_proto::types::{Descriptor, Mount};
use strata_testkit::Compression;
use strata_testkit::layer::{decompress, read_raw};
use strata_testkit::tree::{apply, dir, file, remove};
use strata_tests::garage::GarageCluster;
use strata_tests::logs::{field, last_line_with};
use strata_tests::stack::DIFFER_MADE_LOG;
use strata_tests::tmp::TestDir;
use strata_tests::{PluginKind, StrataProcess};
use tonic::Request;

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

struct Env {
    _dir: TestDir,
    content: StrataProcess,
    differ: StrataProcess,
}

/// Where the differ is told the content store's directory is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BlobRoot {
    /// Not told: layers go through the content service.
    None,
    /// strata-content's own root: layers are written there.
    Store,
    /// A directory that is not the store's: the service cannot see what is written there.
    Elsewhere,
    /// A directory that does not exist: nothing can be written there.
    Missing,
}

fn start() -> Env {
    start_with(BlobRoot::None)
}

fn start_with(root: BlobRoot) -> Env {
    let dir = TestDir::new("diff-content").unwrap();
    let content = StrataProcess::start(PluginKind::Content, dir.path(), &[]).unwrap();
    let mut args = vec!["--content-address".into(), content.socket().into()];
    let elsewhere = dir.path().join("not-the-store");
    std::fs::create_dir_all(&elsewhere).unwrap();
    match root {
        BlobRoot::None => {}
        BlobRoot::Store => args.extend(["--content-root".into(), content.root().into()]),
        BlobRoot::Elsewhere => args.extend(["--content-root".into(), elsewhere.into()]),
        BlobRoot::Missing => args.extend([
            "--content-root".into(),
            dir.path().join("no-such-dir").into(),
        ]),
    }
    let differ = StrataProcess::start(PluginKind::Differ, dir.path(), &args).unwrap();
    Env {
        _dir: dir,
        content,
        differ,
    }
}

fn bind(p: &Path) -> Mount {
    Mount::bind(p, true)
}

fn trees() -> (tempfile::TempDir, tempfile::TempDir) {
    let (lower, upper) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let base = vec![dir("etc", 0o755), file("etc/a", "a"), file("etc/b", "b")];
    apply(lower.path(), &base).unwrap();
    apply(upper.path(), &base).unwrap();
    apply(
        upper.path(),
        &[file("etc/a", "changed"), remove("etc/b"), file("new", "n")],
    )
    .unwrap();
    (lower, upper)
}

async fn blob(content: &Path, digest: &str) -> Vec<u8> {
    let mut c = ContentClient::new(unix_channel(content));
    let mut stream = c
        .read(Request::new(ReadContentRequest {
            digest: digest.into(),
            offset: 0,
            size: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        out.extend_from_slice(&m.data);
    }
    out
}

/// The blob `digest` carries the request's label and the diffID of `tar`.
async fn assert_labelled(content: &Path, digest: &str, tar: &[u8]) {
    let info = ContentClient::new(unix_channel(content))
        .info(Request::new(InfoRequest {
            digest: digest.to_string(),
        }))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(
        info.labels.get("test/label").map(String::as_str),
        Some("yes")
    );
    assert_eq!(
        info.labels.get("containerd.io/uncompressed"),
        Some(&strata_testkit::sha256_digest(tar))
    );
}

/// A gzip Diff of the bind mounts `lower` and `upper` under `r#ref`, labelled `test/label=yes`.
fn labelled_gzip(lower: &Path, upper: &Path, r#ref: &str) -> DiffRequest {
    DiffRequest {
        left: vec![bind(lower)],
        right: vec![bind(upper)],
        media_type: GZIP.into(),
        r#ref: r#ref.into(),
        labels: HashMap::from([("test/label".to_string(), "yes".to_string())]),
        source_date_epoch: None,
    }
}

async fn diff(env: &Env, req: DiffRequest) -> Descriptor {
    DiffClient::new(unix_channel(env.differ.socket()))
        .diff(Request::new(req))
        .await
        .unwrap()
        .into_inner()
        .diff
        .unwrap()
}

async fn ingests(content: &Path) -> usize {
    let mut c = ContentClient::new(unix_channel(content));
    c.list_statuses(Request::new(ListStatusesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .statuses
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_commits_a_labelled_layer_and_a_ref_can_be_reused() {
    let env = start();
    let (lower, upper) = trees();
    let req = || labelled_gzip(lower.path(), upper.path(), "my-diff");
    let desc = diff(&env, req()).await;
    assert_eq!(desc.media_type, GZIP);
    let bytes = blob(env.content.socket(), &desc.digest).await;
    assert_eq!(bytes.len() as i64, desc.size);
    assert_eq!(strata_testkit::sha256_digest(&bytes), desc.digest);
    let tar = decompress(&bytes, Compression::Gzip).unwrap();
    let names: Vec<String> = read_raw(&tar[..])
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .collect();
    assert_eq!(names, ["etc/", "etc/a", "etc/.wh.b", "new"]);

    assert_labelled(env.content.socket(), &desc.digest, &tar).await;

    // The same ref again: the ingest is started over and the existing blob accepted.
    let again = diff(&env, req()).await;
    assert_eq!(again.digest, desc.digest);
    assert_eq!(ingests(env.content.socket()).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_diff_leaves_no_ingest() {
    let env = start();
    let (lower, _upper) = trees();
    let err = DiffClient::new(unix_channel(env.differ.socket()))
        .diff(Request::new(DiffRequest {
            left: vec![bind(lower.path())],
            right: vec![bind(&lower.path().join("no-such-dir"))],
            media_type: GZIP.into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert_eq!(ingests(env.content.socket()).await, 0);
}

/// A layer written into the store's directory is only recorded through the service; one
/// written where the service cannot see it, or that cannot be written where the differ was
/// told, is sent after all. Either way the service ends up with the blob and its labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_written_into_the_store_is_recorded_and_elsewhere_is_sent() {
    for root in [BlobRoot::Store, BlobRoot::Elsewhere, BlobRoot::Missing] {
        let env = start_with(root);
        let (lower, upper) = trees();
        let req = || labelled_gzip(lower.path(), upper.path(), "");
        let desc = diff(&env, req()).await;
        let bytes = blob(env.content.socket(), &desc.digest).await;
        assert_eq!(strata_testkit::sha256_digest(&bytes), desc.digest);
        let tar = decompress(&bytes, Compression::Gzip).unwrap();
        assert_labelled(env.content.socket(), &desc.digest, &tar).await;
        let log = env.differ.log();
        let line = last_line_with(&log, DIFFER_MADE_LOG);
        let sent = if root == BlobRoot::Store {
            0
        } else {
            bytes.len()
        };
        assert_eq!(field(line, "bytes_sent"), sent.to_string(), "{line}");
        // Again: the blob is there; accepted, nothing left behind.
        let again = diff(&env, req()).await;
        assert_eq!(again.digest, desc.digest);
        assert_eq!(ingests(env.content.socket()).await, 0);
    }
}

/// strata-content's `[content]` config for the s3 backend on `cluster`, as node `node`, under
/// `prefix`.
fn s3_config(cluster: &GarageCluster, prefix: &str, node: &str) -> String {
    format!(
        "[content]\nbackend = \"s3\"\n[content.s3]\nendpoint = \"{}\"\nregion = \"{}\"\n\
         bucket = \"{}\"\nprefix = \"{prefix}\"\npath_style = true\nallow_http = true\n\
         credentials_file = \"{}\"\nnode_id = \"{node}\"\ngc_interval_secs = 0\n",
        cluster.endpoint(0),
        cluster.region(),
        cluster.bucket(),
        cluster.credentials_file().display()
    )
}

/// With strata-content on S3, the store's directory is its cache: a layer the differ writes
/// there is only recorded through the service, and strata-content uploads it before it
/// answers, so another node on the bucket reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_written_into_an_s3_stores_cache_reaches_the_bucket() {
    let cluster = tokio::task::spawn_blocking(GarageCluster::start)
        .await
        .unwrap()
        .unwrap();
    let dir = TestDir::new("diff-s3").unwrap();
    let base = dir.path().to_path_buf();
    let prefix = format!("{}/", strata_tests::unique_name("diff-s3"));
    let start_node = |node: &str| {
        let d = base.join(node);
        std::fs::create_dir_all(&d).unwrap();
        let config = d.join("content.toml");
        std::fs::write(&config, s3_config(&cluster, &prefix, node)).unwrap();
        StrataProcess::start(PluginKind::Content, &d, &["--config".into(), config.into()]).unwrap()
    };
    let content = start_node("a");
    let differ = StrataProcess::start(
        PluginKind::Differ,
        &base,
        &[
            "--content-address".into(),
            content.socket().into(),
            "--content-root".into(),
            content.root().into(),
        ],
    )
    .unwrap();
    let env = Env {
        _dir: dir,
        content,
        differ,
    };
    let (lower, upper) = trees();
    let desc = diff(&env, labelled_gzip(lower.path(), upper.path(), "")).await;
    let log = env.differ.log();
    let line = last_line_with(&log, DIFFER_MADE_LOG);
    assert_eq!(field(line, "bytes_sent"), "0", "{line}");
    assert!(
        env.content
            .log()
            .contains("uploaded a blob placed in the cache directory"),
        "{}",
        env.content.log_tail(40)
    );
    // Node b never saw it: its Info and Read come from the bucket.
    let other = start_node("b");
    let bytes = blob(other.socket(), &desc.digest).await;
    assert_eq!(strata_testkit::sha256_digest(&bytes), desc.digest);
    assert_eq!(bytes.len() as i64, desc.size);
    let tar = decompress(&bytes, Compression::Gzip).unwrap();
    assert_labelled(env.content.socket(), &desc.digest, &tar).await;
    drop(other);
    drop(env);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
