//! Shared by the integration tests: a store served on a temporary socket, a tonic client, and
//! a Write-stream helper speaking the protocol one request/response at a time as containerd's
//! proxy writer does.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::Digest as _;
use strata_common::client::unix_channel;
use strata_common::serve::{Listener, Running, spawn};
use strata_content::backend::{S3Backend, s3::S3Config};
use strata_content::{ContentService, ContentStore, SERVICE_NAME};
use strata_proto::content::content_client::ContentClient;
use strata_proto::content::{
    ReadContentRequest, WriteAction, WriteContentRequest, WriteContentResponse,
};
use strata_tests::garage::GarageCluster;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

pub type Client = ContentClient<Channel>;

pub struct Server {
    pub socket: PathBuf,
    running: Running,
}

/// Where a test's store keeps its blobs.
pub enum Backend {
    Local,
    S3(Box<S3Config>),
}

impl Backend {
    /// The s3 backend on `cluster`, under a prefix of its own (`case` and a unique suffix),
    /// so cases sharing the cluster share nothing.
    pub fn s3(cluster: &GarageCluster, case: &str) -> Backend {
        Backend::S3(Box::new(s3_config(cluster, case)))
    }
}

/// A config for `cluster` (node 1's endpoint), its own prefix per call.
pub fn s3_config(cluster: &GarageCluster, case: &str) -> S3Config {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    S3Config {
        endpoint: cluster.endpoint(0),
        region: cluster.region().to_string(),
        bucket: cluster.bucket().to_string(),
        prefix: format!("{case}-{}-{n}/", std::process::id()),
        path_style: true,
        allow_http: true,
        credentials_file: Some(cluster.credentials_file().to_path_buf()),
        node_id: "test".into(),
        request_timeout_secs: 10,
        retry_timeout_secs: 10,
        ..S3Config::default()
    }
}

/// Starts a Garage cluster from async code.
pub async fn garage() -> GarageCluster {
    tokio::task::spawn_blocking(GarageCluster::start)
        .await
        .unwrap()
        .unwrap()
}

/// Defines each listed `async fn case(Backend)` as a test against the local backend, and one
/// test running them all against the s3 backend on one Garage cluster (a cluster per case
/// would cost more than the cases).
#[macro_export]
macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::Local).await
                }
            )*
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn every_case_on_s3_backend_on_garage() {
            let cluster = garage().await;
            $(
                eprintln!("s3 backend: {}", stringify!($name));
                $name(Backend::s3(&cluster, stringify!($name))).await;
            )*
            tokio::task::spawn_blocking(move || drop(cluster)).await.unwrap();
        }
    };
}

impl Server {
    /// Serves a local store rooted at `root` on `dir/content.sock`.
    pub async fn start(root: &Path, dir: &Path) -> Server {
        Server::start_with(root, dir, &Backend::Local).await
    }

    /// Serves a store rooted at `root` with `backend` on `dir/content.sock`.
    pub async fn start_with(root: &Path, dir: &Path, backend: &Backend) -> Server {
        let socket = dir.join("content.sock");
        let listener = Listener::bind(&socket, 0o600, None).unwrap();
        let store = match backend {
            Backend::Local => ContentStore::open_local(root).unwrap(),
            Backend::S3(cfg) => {
                let b = S3Backend::open(root, cfg).unwrap();
                ContentStore::open(root, Box::new(b)).unwrap()
            }
        };
        let server = ContentService::new(store).into_server();
        let running = spawn(
            listener,
            &[SERVICE_NAME],
            move |r| r.add_service(server),
            Duration::from_secs(2),
        );
        Server { socket, running }
    }

    pub fn client(&self) -> Client {
        client(&self.socket)
    }

    pub async fn stop(self) {
        self.running.stop().await.unwrap();
    }
}

pub fn client(socket: &Path) -> Client {
    ContentClient::new(unix_channel(socket))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// Deterministic test bytes.
pub fn bytes(n: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// One Write stream.
pub struct Writer {
    tx: mpsc::Sender<WriteContentRequest>,
    rx: Streaming<WriteContentResponse>,
}

impl Writer {
    /// Opens a stream and sends the first request (usually a STAT carrying the ref),
    /// returning the stream and the answer.
    pub async fn open(
        c: &mut Client,
        first: WriteContentRequest,
    ) -> Result<(Writer, WriteContentResponse), Status> {
        let (tx, rx) = mpsc::channel(4);
        tx.send(first).await.unwrap();
        let rx = c.write(ReceiverStream::new(rx)).await?.into_inner();
        let mut w = Writer { tx, rx };
        let resp = w.recv().await?;
        Ok((w, resp))
    }

    pub async fn stat(c: &mut Client, r: &str) -> Result<(Writer, WriteContentResponse), Status> {
        Writer::open(c, stat_req(r, 0, "")).await
    }

    async fn recv(&mut self) -> Result<WriteContentResponse, Status> {
        match self.rx.message().await? {
            Some(m) => Ok(m),
            None => Err(Status::unknown("stream ended without a response")),
        }
    }

    pub async fn send(&mut self, req: WriteContentRequest) -> Result<WriteContentResponse, Status> {
        if self.tx.send(req).await.is_err() {
            // The server ended the stream: its status is waiting on the receive side.
            return self.recv().await;
        }
        self.recv().await
    }

    pub async fn write(
        &mut self,
        offset: i64,
        data: &[u8],
    ) -> Result<WriteContentResponse, Status> {
        self.send(WriteContentRequest {
            action: WriteAction::Write as i32,
            offset,
            data: data.to_vec(),
            ..Default::default()
        })
        .await
    }

    pub async fn commit(
        &mut self,
        offset: i64,
        total: i64,
        expected: &str,
    ) -> Result<WriteContentResponse, Status> {
        self.send(WriteContentRequest {
            action: WriteAction::Commit as i32,
            offset,
            total,
            expected: expected.to_string(),
            ..Default::default()
        })
        .await
    }

    /// Ends the stream as containerd's writer Close does (CloseSend).
    pub async fn close(self) {
        drop(self.tx);
        let mut rx = self.rx;
        while let Ok(Some(_)) = rx.message().await {}
    }
}

pub fn stat_req(r: &str, total: i64, expected: &str) -> WriteContentRequest {
    WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: r.to_string(),
        total,
        expected: expected.to_string(),
        ..Default::default()
    }
}

/// Writes `data` under `r` in `chunk`-sized WRITEs and commits with its size and digest.
pub async fn ingest(c: &mut Client, r: &str, data: &[u8], chunk: usize) -> Result<String, Status> {
    let digest = sha256(data);
    let (mut w, resp) = Writer::open(c, stat_req(r, data.len() as i64, &digest)).await?;
    let mut off = resp.offset;
    let start = usize::try_from(off).unwrap();
    for piece in data[start..].chunks(chunk.max(1)) {
        off = w.write(off, piece).await?.offset;
    }
    let resp = w.commit(off, data.len() as i64, &digest).await?;
    assert_eq!(resp.digest, digest);
    assert_eq!(resp.offset, data.len() as i64);
    w.close().await;
    Ok(digest)
}

/// Reads `[offset, offset+size)` (size 0: to the end), checking that responses are in order.
pub async fn read(c: &mut Client, digest: &str, offset: i64, size: i64) -> Result<Vec<u8>, Status> {
    let mut s = c
        .read(ReadContentRequest {
            digest: digest.to_string(),
            offset,
            size,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        assert_eq!(m.offset, offset + out.len() as i64, "responses in order");
        assert!(m.data.len() <= strata_content::service::READ_CHUNK);
        out.extend_from_slice(&m.data);
    }
    Ok(out)
}

/// Retries `f` while it answers Unavailable (the server has not noticed a dropped stream
/// yet), as containerd's OpenWriter does, but only for a bounded time.
pub async fn retry_unavailable<T, F, Fut>(mut f: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match f().await {
            Err(s)
                if s.code() == tonic::Code::Unavailable
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}
