//! Apply over gRPC, as containerd calls it: a fake content store (Info and Read only, recording
//! the namespace of each call) and strata-differ's Diff service on temporary sockets, testkit
//! layers applied to bind targets and compared with `assert_trees_equal`. Needs root (owners,
//! devices, xattrs of the fixtures).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_common::client::unix_channel;
use strata_common::namespace::NAMESPACE_HEADER;
use strata_common::serve::{Listener, Running, spawn};
use strata_differ::{Applier, Comparer, DiffService, Fetcher, SERVICE_NAME, Uploader};
use strata_proto::content::content_server::{Content, ContentServer};
use strata_proto::content::*;
use strata_proto::diff::diff_client::DiffClient;
use strata_proto::diff::{ApplyRequest, DiffRequest};
use strata_proto::types::{Descriptor, Mount};
use strata_testkit::fixtures;
use strata_testkit::prelude::*;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// (method, namespace header) of every call a fake store received.
type Calls = Arc<Mutex<Vec<(&'static str, Option<String>)>>>;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Clone, Default)]
struct FakeContent {
    blobs: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    /// (method, namespace header) of every call.
    calls: Calls,
    /// Answer like containerd: calls without a namespace fail.
    require_namespace: bool,
}

impl FakeContent {
    fn check<T>(&self, method: &'static str, req: &Request<T>) -> Result<(), Status> {
        let ns = req
            .metadata()
            .get(NAMESPACE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let missing = ns.is_none();
        self.calls.lock().unwrap().push((method, ns));
        if self.require_namespace && missing {
            return Err(Status::failed_precondition("namespace is required"));
        }
        Ok(())
    }

    fn reads(&self) -> Vec<Option<String>> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(m, _)| *m == "read")
            .map(|(_, ns)| ns.clone())
            .collect()
    }
}

#[tonic::async_trait]
impl Content for FakeContent {
    async fn info(&self, req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        self.check("info", &req)?;
        let digest = req.into_inner().digest;
        let size = self
            .blobs
            .lock()
            .unwrap()
            .get(&digest)
            .map(|b| b.len() as i64)
            .ok_or_else(|| Status::not_found(digest.clone()))?;
        Ok(Response::new(InfoResponse {
            info: Some(Info {
                digest,
                size,
                ..Default::default()
            }),
        }))
    }

    async fn update(&self, _: Request<UpdateRequest>) -> Result<Response<UpdateResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type ListStream = BoxStream<ListContentResponse>;

    async fn list(
        &self,
        _: Request<ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn delete(&self, _: Request<DeleteContentRequest>) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type ReadStream = BoxStream<ReadContentResponse>;

    async fn read(
        &self,
        req: Request<ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        self.check("read", &req)?;
        let digest = req.into_inner().digest;
        let blob = self
            .blobs
            .lock()
            .unwrap()
            .get(&digest)
            .cloned()
            .ok_or_else(|| Status::not_found(digest.clone()))?;
        // containerd's content service answers in 1 MiB messages.
        let chunks: Vec<Result<ReadContentResponse, Status>> = blob
            .chunks(1 << 20)
            .enumerate()
            .map(|(i, c)| {
                Ok(ReadContentResponse {
                    offset: (i << 20) as i64,
                    data: c.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_statuses(
        &self,
        _: Request<ListStatusesRequest>,
    ) -> Result<Response<ListStatusesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type WriteStream = BoxStream<WriteContentResponse>;

    async fn write(
        &self,
        _: Request<tonic::Streaming<WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn abort(&self, _: Request<AbortRequest>) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

fn serve(
    listener: Listener,
    add: impl FnOnce(strata_common::serve::Router) -> strata_common::serve::Router + Send + 'static,
) -> Running {
    spawn(listener, &[SERVICE_NAME], add, Duration::from_secs(2))
}

struct Env {
    content: FakeContent,
    client: DiffClient<tonic::transport::Channel>,
    _served: Vec<Running>,
    _dir: tempfile::TempDir,
}

/// The differ is started first and dials the content socket lazily, as in production where
/// it starts before containerd.
async fn start(content: FakeContent, fallback: Option<&str>) -> Env {
    start_with(content, fallback, None).await
}

async fn start_with(content: FakeContent, fallback: Option<&str>, root: Option<&Path>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let content_sock = dir.path().join("content.sock");
    let differ_sock = dir.path().join("differ.sock");
    let fetcher = Fetcher::new(unix_channel(&content_sock), fallback.map(str::to_string))
        .with_content_root(root.map(Path::to_path_buf));
    let comparer = Comparer::new(
        fetcher.clone(),
        Uploader::new(unix_channel(&content_sock)),
        dir.path().join("scratch"),
    );
    let applier = Applier::new(fetcher, dir.path().join("scratch"));
    let svc = DiffService::new(applier, comparer).into_server();
    let s1 = serve(
        Listener::bind(&differ_sock, 0o600, None).unwrap(),
        move |r| r.add_service(svc),
    );
    let c = content.clone();
    let s2 = serve(
        Listener::bind(&content_sock, 0o600, None).unwrap(),
        move |r| r.add_service(ContentServer::new(c)),
    );
    Env {
        content,
        client: DiffClient::new(unix_channel(&differ_sock)),
        _served: vec![s1, s2],
        _dir: dir,
    }
}

fn bind(dir: &Path) -> Mount {
    Mount::bind(dir, false)
}

fn desc(layer: &Layer) -> Descriptor {
    Descriptor {
        media_type: layer.media_type.clone(),
        digest: layer.digest.clone(),
        size: layer.size as i64,
        annotations: Default::default(),
    }
}

fn request(layer: &Layer, dir: &Path, namespace: Option<&str>) -> Request<ApplyRequest> {
    let mut req = Request::new(ApplyRequest {
        diff: Some(desc(layer)),
        mounts: vec![bind(dir)],
        payloads: Default::default(),
        sync_fs: true,
    });
    if let Some(ns) = namespace {
        req.metadata_mut()
            .insert(NAMESPACE_HEADER, ns.parse().unwrap());
    }
    req
}

fn store(content: &FakeContent, layers: &[Layer]) {
    let mut blobs = content.blobs.lock().unwrap();
    for l in layers {
        blobs.insert(l.digest.clone(), l.blob_bytes().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_every_layer_with_one_read_each_in_the_callers_namespace() {
    let content = FakeContent {
        require_namespace: true,
        ..Default::default()
    };
    let mut env = start(content, None).await;
    for c in Compression::ALL {
        let image = fixtures::mixed(c).unwrap();
        store(&env.content, image.layers());
        let target = tempfile::tempdir().unwrap();
        for layer in image.layers() {
            let resp = env
                .client
                .apply(request(layer, target.path(), Some("ns-2x")))
                .await
                .unwrap_or_else(|s| panic!("{c}: {s:?}"))
                .into_inner();
            let applied = resp.applied.unwrap();
            assert_eq!(applied.digest, layer.diff_id);
            assert_eq!(applied.media_type, "application/vnd.oci.image.layer.v1.tar");
            assert_eq!(applied.size as usize, layer.tar_bytes().unwrap().len());
        }
        assert_trees_equal(
            &image.expected_tree().unwrap(),
            &snapshot(target.path()).unwrap(),
        );
    }
    let reads = env.content.reads();
    let layers: usize = Compression::ALL
        .iter()
        .map(|c| fixtures::mixed(*c).unwrap().layers().len())
        .sum();
    assert_eq!(reads.len(), layers, "one Read stream per layer");
    assert!(
        reads.iter().all(|ns| ns.as_deref() == Some("ns-2x")),
        "{reads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_namespace_header_the_fallback_is_used() {
    // Like containerd 1.7 calling Apply; this store cannot list namespaces (Unimplemented),
    // so only the configured fallback can help.
    let content = FakeContent {
        require_namespace: true,
        ..Default::default()
    };
    let layer = Layer::new(tree![file("a/b", "hello")], Compression::Gzip).unwrap();
    store(&content, std::slice::from_ref(&layer));

    let mut env = start(content.clone(), Some("default")).await;
    let target = tempfile::tempdir().unwrap();
    env.client
        .apply(request(&layer, target.path(), None))
        .await
        .unwrap();
    assert_trees_equal(&layer.tree().unwrap(), &snapshot(target.path()).unwrap());
    assert_eq!(env.content.reads(), vec![Some("default".to_string())]);

    // Without a fallback the store's own answer comes back, and it is not Unimplemented
    // (which would hide the problem behind containerd's walking differ).
    let mut env = start(content, None).await;
    let target = tempfile::tempdir().unwrap();
    let err = env
        .client
        .apply(request(&layer, target.path(), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_media_types_fall_through_without_reading() {
    let content = FakeContent::default();
    let mut layer = Layer::new(tree![file("a", "a")], Compression::Gzip).unwrap();
    layer.media_type = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted".into();
    store(&content, std::slice::from_ref(&layer));
    let mut env = start(content, None).await;
    let target = tempfile::tempdir().unwrap();
    let err = env
        .client
        .apply(request(&layer, target.path(), Some("default")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    assert!(env.content.calls.lock().unwrap().is_empty());
    // Diff too: an output type strata does not write goes to the next differ, before any
    // mount or content call.
    let err = env
        .client
        .diff(Request::new(DiffRequest {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip+encrypted".into(),
            right: vec![bind(target.path())],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    let err = env
        .client
        .diff(Request::new(DiffRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(env.content.calls.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_that_does_not_match_its_digest_fails() {
    // Every compression: a plain layer's diffID is its verified digest, not hashed again, so
    // the check on the blob is all that stands between an impostor and a wrong diffID.
    for c in Compression::ALL {
        let content = FakeContent::default();
        let layer = Layer::new(tree![file("a", "the real one")], c).unwrap();
        let impostor = Layer::new(tree![file("a", "an impostor!")], c).unwrap();
        content
            .blobs
            .lock()
            .unwrap()
            .insert(layer.digest.clone(), impostor.blob_bytes().unwrap());
        let mut env = start(content, None).await;
        let target = tempfile::tempdir().unwrap();
        let mut req = request(&layer, target.path(), Some("default"));
        req.get_mut().diff.as_mut().unwrap().size = impostor.size as i64;
        let err = env.client.apply(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{c}: {err:?}");
        assert!(err.message().contains("digest mismatch"), "{c}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_under_the_content_root_are_read_from_disk_and_still_verified() {
    let root = tempfile::tempdir().unwrap();
    let blobs = root.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let file_of = |l: &Layer| blobs.join(l.digest.strip_prefix("sha256:").unwrap());
    let on_disk = Layer::new(tree![file("disk", "from the file")], Compression::Zstd).unwrap();
    std::fs::write(file_of(&on_disk), on_disk.blob_bytes().unwrap()).unwrap();
    // Not on disk: read through the content service.
    let remote = Layer::new(tree![file("remote", "from the service")], Compression::Gzip).unwrap();
    let content = FakeContent::default();
    store(&content, std::slice::from_ref(&remote));
    let mut env = start_with(content, None, Some(root.path())).await;

    let target = tempfile::tempdir().unwrap();
    let applied = env
        .client
        .apply(request(&on_disk, target.path(), Some("ns")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.applied.unwrap().digest, on_disk.diff_id);
    assert!(
        env.content.calls.lock().unwrap().is_empty(),
        "no content call for a file"
    );
    assert_eq!(
        std::fs::read(target.path().join("disk")).unwrap(),
        b"from the file"
    );

    env.client
        .apply(request(&remote, target.path(), Some("ns")))
        .await
        .unwrap();
    assert_eq!(env.content.reads().len(), 1);

    // A damaged file fails the digest check like a damaged stream.
    let mut bad = on_disk.blob_bytes().unwrap();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    std::fs::write(file_of(&on_disk), bad).unwrap();
    let err = env
        .client
        .apply(request(
            &on_disk,
            tempfile::tempdir().unwrap().path(),
            Some("ns"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
}
