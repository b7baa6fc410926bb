//! A Diff result written through a content gRPC service (containerd's own, so that its
//! metadata knows the blob), as containerd's `content.Writer` does: one Write stream opened
//! with a STAT of the ref, WRITEs of 1 MiB, a COMMIT with size, digest and labels.
//!
//! The WRITEs are sent from the blocking thread that makes the layer ([`BlobSink`]) while the
//! async side reads the server's replies ([`PendingWrite`]), so no write waits for a round
//! trip.

use std::collections::HashMap;
use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use strata_common::error::{Error, ErrorKind, Result};
use strata_common::namespace::RequestContext;
use strata_proto::content::content_client::ContentClient;
use strata_proto::content::{
    AbortRequest, Info, InfoRequest, UpdateRequest, WriteAction, WriteContentRequest,
    WriteContentResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::diff::blob_file::PlacedBlob;
use crate::diff::layer::Restart;
use crate::diff::unique_id;

/// Bytes per WRITE message (containerd's own writers send up to 1 MiB).
const MESSAGE: usize = 1 << 20;
const MAX_MESSAGE: usize = 16 << 20;
/// WRITE messages in flight between the layer thread and the gRPC stream.
const IN_FLIGHT: usize = 4;

/// The label containerd keeps a compressed layer's diffID in.
pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";
/// The label that lets containerd's GC drop a lease at a time.
const EXPIRE_LABEL: &str = "containerd.io/gc.expire";
/// How long a lease strata takes for a Diff result protects it (the Go client's default).
const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

/// containerd's leases API, declared by hand: only `Create` is needed.
mod leases {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CreateRequest {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(map = "string, string", tag = "3")]
        pub labels: std::collections::HashMap<String, String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Lease {
        #[prost(string, tag = "1")]
        pub id: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CreateResponse {
        #[prost(message, optional, tag = "1")]
        pub lease: Option<Lease>,
    }

    pub const CREATE_PATH: &str = "/containerd.services.leases.v1.Leases/Create";
}

/// Writes blobs into a content service.
#[derive(Clone, Debug)]
pub struct Uploader {
    channel: Channel,
}

impl Uploader {
    pub fn new(channel: Channel) -> Uploader {
        Uploader { channel }
    }

    fn client(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// `ctx` with a lease: the caller's, or a new one that expires in a day, so the blob is
    /// not collected before whoever asked for the diff references it. A content service
    /// without leases (strata-content itself) gets `ctx` unchanged.
    pub async fn leased(&self, ctx: &RequestContext) -> Result<RequestContext> {
        if ctx.lease.is_some() {
            return Ok(ctx.clone());
        }
        let id = unique_id("strata-diff");
        let expire = strata_common::time::to_rfc3339(SystemTime::now() + LEASE_TTL);
        let req = ctx.request(leases::CreateRequest {
            id: id.clone(),
            labels: HashMap::from([(EXPIRE_LABEL.to_string(), expire)]),
        })?;
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| Error::unavailable(format!("content service: {e}")))?;
        let codec =
            tonic_prost::ProstCodec::<leases::CreateRequest, leases::CreateResponse>::default();
        let path = http::uri::PathAndQuery::from_static(leases::CREATE_PATH);
        match grpc.unary(req, path, codec).await {
            Ok(_) => Ok(RequestContext {
                namespace: ctx.namespace.clone(),
                lease: Some(id),
            }),
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(ctx.clone()),
            Err(s) => {
                let e = Error::from_status(&s);
                Err(Error::new(
                    e.kind(),
                    format!("create a lease for the diff: {}", e.message()),
                ))
            }
        }
    }

    /// Opens the ingest `r#ref`: fails (Unavailable) when another writer holds it.
    pub async fn open(
        &self,
        ctx: &RequestContext,
        r#ref: &str,
    ) -> Result<(BlobSink, PendingWrite)> {
        let stat = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: r#ref.to_string(),
            ..Default::default()
        };
        match self.start(ctx, stat).await? {
            Ok((_, sink, pending)) => Ok((sink, pending)),
            Err(s) => Err(Error::from_status(&s)),
        }
    }

    /// Opens a Write stream with `stat`: the service's answer to it and the two ends, or the
    /// status the service refused it with.
    async fn start(
        &self,
        ctx: &RequestContext,
        stat: WriteContentRequest,
    ) -> Result<std::result::Result<(WriteContentResponse, BlobSink, PendingWrite), tonic::Status>>
    {
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        tx.send(stat)
            .await
            .map_err(|_| Error::internal("write stream closed before it opened"))?;
        let req = ctx.request(ReceiverStream::new(rx))?;
        let mut responses = match self.client().write(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Ok(Err(s)),
        };
        let first = match responses.message().await {
            Ok(Some(first)) => first,
            Ok(None) => return Err(Error::unavailable("content service ended the write stream")),
            Err(s) => return Ok(Err(s)),
        };
        let (cancel, cancelled) = watch::channel(false);
        let sink = BlobSink {
            tx,
            cancelled,
            handle: tokio::runtime::Handle::current(),
            buf: Vec::with_capacity(MESSAGE),
            offset: 0,
            hasher: Sha256::new(),
        };
        Ok(Ok((first, sink, PendingWrite { responses, cancel })))
    }

    /// Records `blob`, already in the store behind the content service (see
    /// [`crate::diff::blob_file`]), as the ingest `r#ref` with `labels`. The Write is opened with the
    /// blob's digest and size: containerd (default content sharing policy) then finds the
    /// blob in its store, reports it whole, and commits it without data. A service that
    /// reports less (isolated sharing, or a store that is not the one the blob went into)
    /// is sent the blob's bytes from `blob.file`, as [`Uploader::open`]'s writers do.
    /// A service that answers AlreadyExists for a blob that only this Diff put in the store
    /// (a content store called directly, without containerd's metadata in front) gets
    /// `labels` set afterwards, as a commit would have. Returns what was committed and
    /// whether the bytes had to be sent.
    pub async fn commit_present(
        &self,
        ctx: &RequestContext,
        r#ref: &str,
        blob: PlacedBlob,
        labels: HashMap<String, String>,
    ) -> Result<(Committed, bool)> {
        let committed = Committed {
            digest: blob.digest.clone(),
            size: blob.size,
        };
        let stat = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: r#ref.to_string(),
            total: blob.size as i64,
            expected: blob.digest.clone(),
            ..Default::default()
        };
        let (first, mut sink, pending) = match self.start(ctx, stat).await? {
            Ok(opened) => opened,
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                if blob.new {
                    self.set_labels(ctx, &committed.digest, &labels).await?;
                }
                return Ok((committed, false));
            }
            Err(s) => return Err(Error::from_status(&s)),
        };
        let whole = u64::try_from(first.offset).ok() == Some(blob.size);
        let (digest, size, new) = (blob.digest.clone(), blob.size, blob.new);
        let commit_labels = labels.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let labels = commit_labels;
            if whole {
                return sink.commit_as(&digest, size, labels);
            }
            let mut file = blob.file;
            io::copy(&mut file, &mut sink)?;
            let sent = sink.commit(labels)?;
            if sent.digest != digest || sent.size != size {
                return Err(io::Error::other(format!(
                    "{digest} changed while it was sent: read back {} bytes, {}",
                    sent.size, sent.digest
                )));
            }
            Ok(())
        });
        let replied = pending.committed().await;
        let written = writer
            .await
            .map_err(|e| Error::internal(format!("blob writer: {e}")))?;
        match (written, replied) {
            (Ok(()), Ok(_)) => Ok((committed, !whole)),
            (Ok(()), Err(e)) if e.is(ErrorKind::AlreadyExists) => {
                if new {
                    self.set_labels(ctx, &committed.digest, &labels).await?;
                }
                Ok((committed, !whole))
            }
            (Err(e), _) => Err(Error::io("write the layer through the content service", e)),
            (Ok(()), Err(e)) => Err(e),
        }
    }

    pub async fn info(&self, ctx: &RequestContext, digest: &str) -> Result<Info> {
        let req = ctx.request(InfoRequest {
            digest: digest.to_string(),
        })?;
        let resp = self
            .client()
            .info(req)
            .await
            .map_err(|s| Error::from_status(&s))?;
        resp.into_inner()
            .info
            .ok_or_else(|| Error::internal(format!("no info for {digest}")))
    }

    /// Sets `labels` on a blob, leaving its others alone.
    pub async fn set_labels(
        &self,
        ctx: &RequestContext,
        digest: &str,
        labels: &HashMap<String, String>,
    ) -> Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        let req = ctx.request(UpdateRequest {
            info: Some(Info {
                digest: digest.to_string(),
                labels: labels.clone(),
                ..Default::default()
            }),
            update_mask: Some(strata_proto::prost_types::FieldMask {
                paths: labels.keys().map(|k| format!("labels.{k}")).collect(),
            }),
        })?;
        self.client()
            .update(req)
            .await
            .map(drop)
            .map_err(|s| Error::from_status(&s))
    }

    pub async fn abort(&self, ctx: &RequestContext, r#ref: &str) -> Result<()> {
        let req = ctx.request(AbortRequest {
            r#ref: r#ref.to_string(),
        })?;
        self.client()
            .abort(req)
            .await
            .map(drop)
            .map_err(|s| Error::from_status(&s))
    }
}

/// The writing end of an ingest, used from a blocking thread: bytes written become WRITE
/// messages; [`BlobSink::commit`] sends the COMMIT.
pub struct BlobSink {
    tx: mpsc::Sender<WriteContentRequest>,
    /// Set when the stream failed: a send must not wait for room that will never come.
    cancelled: watch::Receiver<bool>,
    handle: tokio::runtime::Handle,
    buf: Vec<u8>,
    offset: u64,
    hasher: Sha256,
}

/// What was committed: the blob's digest and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub digest: String,
    pub size: u64,
}

impl BlobSink {
    fn send(&mut self, req: WriteContentRequest) -> io::Result<()> {
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "the write stream closed");
        let (tx, cancelled) = (&self.tx, &mut self.cancelled);
        self.handle.block_on(async {
            tokio::select! {
                sent = tx.send(req) => sent.map_err(|_| closed()),
                _ = cancelled.wait_for(|c| *c) => Err(closed()),
            }
        })
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(MESSAGE));
        let req = WriteContentRequest {
            action: WriteAction::Write as i32,
            // The first WRITE at offset 0 truncates an ingest left under a reused ref.
            offset: self.offset as i64,
            ..Default::default()
        };
        self.offset += data.len() as u64;
        self.send(WriteContentRequest { data, ..req })
    }

    /// Starts the blob over: the next WRITE goes at offset 0, which truncates the ingest.
    pub fn restart(&mut self) {
        self.buf.clear();
        self.offset = 0;
        self.hasher = Sha256::new();
    }

    /// Sends the COMMIT of a blob the service has whole: at its end (a COMMIT at offset 0
    /// would truncate), with its size and digest.
    fn commit_as(
        &mut self,
        digest: &str,
        size: u64,
        labels: HashMap<String, String>,
    ) -> io::Result<()> {
        self.send(WriteContentRequest {
            action: WriteAction::Commit as i32,
            offset: size as i64,
            total: size as i64,
            expected: digest.to_string(),
            labels,
            ..Default::default()
        })
    }

    /// Sends what is buffered and the COMMIT (size, digest, `labels`).
    pub fn commit(mut self, labels: HashMap<String, String>) -> io::Result<Committed> {
        self.send_buffered()?;
        let digest = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        let size = self.offset;
        self.commit_as(&digest, size, labels)?;
        Ok(Committed { digest, size })
    }
}

impl Write for BlobSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(MESSAGE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.hasher.update(&data[..n]);
        if self.buf.len() == MESSAGE {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The replies of an open ingest.
pub struct PendingWrite {
    responses: Streaming<WriteContentResponse>,
    cancel: watch::Sender<bool>,
}

impl PendingWrite {
    /// Waits for the COMMIT's reply. AlreadyExists (the blob was there) is an error here for
    /// the caller to accept; a stream that ends without a COMMIT means the writing side gave
    /// up (its error says why).
    pub async fn committed(mut self) -> Result<WriteContentResponse> {
        let r = self.replies().await;
        if r.is_err() {
            // Whatever happens to the request stream now, the writing side stops.
            let _ = self.cancel.send(true);
        }
        r
    }

    async fn replies(&mut self) -> Result<WriteContentResponse> {
        loop {
            match self.responses.message().await {
                Ok(Some(r)) if r.action == WriteAction::Commit as i32 => return Ok(r),
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(Error::new(
                        ErrorKind::Aborted,
                        "the write stream ended without a commit",
                    ));
                }
                Err(s) => return Err(Error::from_status(&s)),
            }
        }
    }
}

impl Restart for BlobSink {
    fn restart(&mut self) -> io::Result<()> {
        BlobSink::restart(self);
        Ok(())
    }
}
