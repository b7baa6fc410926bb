//! The gRPC adaptor: containerd's content API on top of [`ContentStore`]. Store calls block,
//! so each runs on a blocking thread; streaming and batching live here.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_common::error::ErrorKind;
use strata_common::filter::Filter;
use strata_common::rpc::{record_digest, record_key};
use strata_common::{Error, Result};
use strata_proto::content::content_server::{Content, ContentServer};
use strata_proto::content::{
    AbortRequest, DeleteContentRequest, InfoRequest, InfoResponse, ListContentRequest,
    ListContentResponse, ListStatusesRequest, ListStatusesResponse, ReadContentRequest,
    ReadContentResponse, StatusRequest, StatusResponse, UpdateRequest, UpdateResponse, WriteAction,
    WriteContentRequest, WriteContentResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, warn};

use crate::backend::BlobReader;
use crate::digest::Digest;
use crate::ingest::IngestStatus;
use crate::metrics::ContentMetrics;
use crate::store::{ContentStore, ContentWriter, Info};
use crate::time::to_timestamp;

/// Largest Read response, as containerd's content server sends.
pub const READ_CHUNK: usize = 1 << 20;
/// Largest message either way: containerd's own gRPC limit (`defaults.DefaultMaxRecvMessageSize`).
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;
/// Infos per List message, as containerd's content server batches them.
const LIST_BATCH: usize = 100;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub struct ContentService {
    store: ContentStore,
    metrics: Arc<ContentMetrics>,
}

impl ContentService {
    pub fn new(store: ContentStore) -> Self {
        ContentService {
            store,
            metrics: Arc::default(),
        }
    }

    /// Counts bytes ingested and read in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<ContentMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The tonic service with containerd's message size limits.
    pub fn into_server(self) -> ContentServer<Self> {
        ContentServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// Starts a task removing ingests idle for longer than `max_age`, checking every
    /// `max_age / 10` (at least each second, at most each ten minutes).
    pub fn spawn_ingest_expiry(
        store: ContentStore,
        max_age: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let period = (max_age / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.expire_ingests(max_age)).await {
                    Ok(Ok(refs)) if !refs.is_empty() => {
                        debug!(?refs, "expired stale ingests");
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn!(error = %e.chain(), "ingest expiry failed"),
                    Err(e) => warn!(error = %e, "ingest expiry task failed"),
                }
            }
        })
    }
}

/// Runs a short store call (a stat, a point query, one read of at most [`READ_CHUNK`]) on
/// this worker after handing its other tasks to another one: the same protection as a
/// blocking-pool thread without two thread wake-ups, which dominate a 32 KiB Read or an Info
/// (containerd opens a Read stream, and asks Info, for each 32 KiB ReadAt).
fn short_blocking<T>(f: impl FnOnce() -> Result<T>) -> Result<T, Status> {
    let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
    match flavor {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        // A current-thread runtime has no other worker to hand tasks to (and
        // block_in_place would panic there).
        _ => f(),
    }
    .map_err(Status::from)
}

/// Runs blocking store work off the async workers.
async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Status::from),
        Err(e) => Err(Status::internal(format!("store task failed: {e}"))),
    }
}

fn parse_filters(filters: &[String]) -> Result<Filter> {
    Filter::parse_all(filters).map_err(|e| Error::invalid_argument(e.to_string()))
}

fn non_negative(what: &str, v: i64) -> Result<u64> {
    u64::try_from(v)
        .map_err(|_| Error::invalid_argument(format!("{what} must not be negative: {v}")))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn info_to_proto(i: Info) -> strata_proto::content::Info {
    strata_proto::content::Info {
        digest: i.digest.to_string(),
        size: to_i64(i.size),
        created_at: Some(to_timestamp(i.created_at)),
        updated_at: Some(to_timestamp(i.updated_at)),
        labels: i.labels.into_iter().collect(),
    }
}

fn status_to_proto(s: IngestStatus) -> strata_proto::content::Status {
    strata_proto::content::Status {
        started_at: Some(to_timestamp(s.started_at)),
        updated_at: Some(to_timestamp(s.updated_at)),
        r#ref: s.r#ref,
        offset: to_i64(s.offset),
        total: to_i64(s.total),
        expected: s.expected,
    }
}

fn labels_from(map: HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

/// The length of the Read message starting at `offset`.
fn chunk_len(offset: u64, end: u64) -> usize {
    usize::try_from((end - offset).min(READ_CHUNK as u64)).unwrap_or(READ_CHUNK)
}

/// Fills `data[filled..]` from `offset + filled`, waiting for I/O as needed.
fn fill(
    r: &dyn BlobReader,
    digest: &Digest,
    data: &mut [u8],
    offset: u64,
    mut filled: usize,
) -> Result<()> {
    while filled < data.len() {
        let n = r
            .read_at(&mut data[filled..], offset + filled as u64)
            .map_err(|e| Error::io(format!("read content {digest}"), e))?;
        if n == 0 {
            return Err(Error::new(
                strata_common::error::ErrorKind::DataLoss,
                format!(
                    "content {digest} ended at {} while reading",
                    offset + filled as u64
                ),
            ));
        }
        filled += n;
    }
    Ok(())
}

/// Fills `data` from `offset` as far as the page cache serves it without waiting; returns
/// how much that was.
fn fill_cached(r: &dyn BlobReader, digest: &Digest, data: &mut [u8], offset: u64) -> Result<usize> {
    let mut filled = 0;
    while filled < data.len() {
        match r.read_at_cached(&mut data[filled..], offset + filled as u64) {
            Ok(Some(n)) if n > 0 => filled += n,
            // The end of the file (reported by `fill`) or data that is not cached.
            Ok(_) => break,
            Err(e) => return Err(Error::io(format!("read content {digest}"), e)),
        }
    }
    Ok(filled)
}

/// Reads `[offset, min(end, offset + READ_CHUNK))`.
fn read_chunk(
    r: &dyn BlobReader,
    digest: &Digest,
    offset: u64,
    end: u64,
) -> Result<ReadContentResponse> {
    let mut data = vec![0u8; chunk_len(offset, end)];
    fill(r, digest, &mut data, offset, 0)?;
    Ok(ReadContentResponse {
        offset: to_i64(offset),
        data,
    })
}

/// Opens `digest` and checks `[offset, offset + size)` against its length (size 0: to the
/// end); returns the reader and where the read ends.
fn open_range(
    store: &ContentStore,
    digest: &Digest,
    offset: u64,
    size: u64,
) -> Result<(Box<dyn BlobReader>, u64)> {
    let reader = store.reader(digest)?;
    let len = reader.size();
    if offset > len {
        return Err(Error::out_of_range(format!(
            "read past object length {len} bytes"
        )));
    }
    let end = if size == 0 {
        len
    } else {
        offset.saturating_add(size).min(len)
    };
    Ok((reader, end))
}

/// One Write stream's state, moved onto a blocking thread for each message.
struct WriteSession {
    store: ContentStore,
    r#ref: String,
    /// `None` once committed.
    writer: Option<ContentWriter>,
    total: u64,
    expected: Option<Digest>,
    /// The digest in this stream's latest WRITE answer that carried one: containerd's proxy
    /// writer keeps exactly that as its `Digest()`, and its metadata store reads it after a
    /// commit answered AlreadyExists to learn which blob the bytes were.
    announced: Option<Digest>,
}

impl WriteSession {
    fn open(store: ContentStore, first: &WriteContentRequest) -> Result<WriteSession> {
        if first.r#ref.is_empty() {
            return Err(Error::invalid_argument(
                "first message must have a reference",
            ));
        }
        let total = non_negative("total", first.total)?;
        let expected = match first.expected.as_str() {
            "" => None,
            e => Some(Digest::parse(e)?),
        };
        let writer = store.writer(&first.r#ref, total, expected.as_ref())?;
        Ok(WriteSession {
            store,
            r#ref: first.r#ref.clone(),
            writer: Some(writer),
            total,
            expected,
            announced: None,
        })
    }

    /// Whether handling `req` may do I/O. A STAT without `expected` reads only the writer's
    /// state (its digest only when no waiting is needed): containerd's content service sends
    /// one before every message it forwards.
    fn touches_storage(req: &WriteContentRequest) -> bool {
        req.action != WriteAction::Stat as i32 || !req.expected.is_empty()
    }

    /// One request, as containerd's content server handles it.
    fn handle(&mut self, req: WriteContentRequest) -> Result<WriteContentResponse> {
        let action = WriteAction::try_from(req.action)
            .map_err(|_| Error::invalid_argument(format!("unknown write action {}", req.action)))?;
        let Some(writer) = self.writer.as_mut() else {
            return Err(Error::not_found(format!(
                "ingest ref {:?} was committed; start a new write",
                self.r#ref
            )));
        };
        let mut msg = WriteContentResponse {
            action: req.action,
            offset: to_i64(writer.offset()),
            ..Default::default()
        };
        if !req.expected.is_empty() {
            let expected = Digest::parse(&req.expected)?;
            if self.store.info(&expected).is_ok() {
                // A commit of exactly these bytes must still tell the writer their digest
                // (see `announced`); anything else is refused at once, as containerd does.
                let answer = if action == WriteAction::Commit
                    && self.announced.as_ref() != Some(&expected)
                    && writer.digest()? == expected
                {
                    msg.digest = expected.to_string();
                    Ok(msg)
                } else {
                    Err(Error::already_exists(format!(
                        "blob with expected digest {expected} exists"
                    )))
                };
                // Release the ref before removing its ingest, as containerd does.
                self.writer = None;
                if let Err(e) = self.store.abort(&self.r#ref) {
                    debug!(r#ref = %self.r#ref, error = %e, "abort after existing blob");
                }
                return answer;
            }
            self.expected = Some(expected);
        }
        if req.total > 0 {
            self.total = non_negative("total", req.total)?;
        }
        match action {
            WriteAction::Stat => {
                let status = writer.status();
                // The digest is optional here too ("if present"), and containerd's content
                // service asks its writer's Status before every message it handles, which its
                // proxy writer forwards as a STAT whose offset and times are all it reads:
                // waiting for the writing thread would put the write and sha256 back on every round trip.
                if let Some(d) = writer.digest_if_ready() {
                    msg.digest = d.to_string();
                }
                msg.started_at = Some(to_timestamp(status.started_at));
                msg.updated_at = Some(to_timestamp(status.updated_at));
                msg.total = to_i64(if self.total > 0 {
                    self.total
                } else {
                    status.total
                });
            }
            WriteAction::Write | WriteAction::Commit => {
                let offset = non_negative("offset", req.offset)?;
                let current = writer.offset();
                if offset > 0 && offset != current {
                    return Err(Error::out_of_range(format!(
                        "write @{offset} must occur at current offset {current}"
                    )));
                }
                if offset == 0 && current > 0 {
                    writer.truncate()?;
                    msg.offset = 0;
                }
                if !req.data.is_empty() {
                    let n = req.data.len() as u64;
                    writer.write_bytes(bytes::Bytes::from(req.data))?;
                    msg.offset += to_i64(n);
                }
                if action == WriteAction::Commit {
                    let Some(writer) = self.writer.take() else {
                        return Err(Error::internal("writer vanished"));
                    };
                    // Committing waits for the hash anyway.
                    let exact = writer.digest()?;
                    match writer.commit(self.total, self.expected.as_ref(), labels_from(req.labels))
                    {
                        Ok(digest) => msg.digest = digest.to_string(),
                        // containerd's local writer answers AlreadyExists knowing its writer
                        // reports the exact digest; when our last WRITE answer could not carry
                        // it (hashing lagged), an error would leave containerd naming a blob
                        // that does not exist, so the commit answers with the digest instead:
                        // the outcome (blob stored, ingest gone) is the same.
                        Err(e)
                            if e.is(ErrorKind::AlreadyExists)
                                && self.announced.as_ref() != Some(&exact) =>
                        {
                            msg.digest = exact.to_string();
                        }
                        Err(e) => return Err(e),
                    }
                } else if let Some(d) = writer.digest_if_ready() {
                    // The API makes a WRITE's digest optional ("if present"), and containerd's
                    // proxy writer skips an empty one; waiting for the writing thread here
                    // would put the write and sha256 back on the critical path.
                    msg.digest = d.to_string();
                    self.announced = Some(d);
                }
            }
        }
        Ok(msg)
    }
}

async fn write_session(
    store: ContentStore,
    metrics: &ContentMetrics,
    mut inbound: Streaming<WriteContentRequest>,
    tx: &mpsc::Sender<Result<WriteContentResponse, Status>>,
) -> Result<(), Status> {
    let Some(first) = inbound.message().await? else {
        return Ok(());
    };
    record_key(&first.r#ref);
    // Each message is one write of at most a few MiB (or a commit; opening may re-hash a
    // resumed ingest): run in place, which saves two thread wake-ups per message on
    // containerd's lock-step writes while block_in_place moves this worker's other tasks away.
    let mut session = short_blocking(|| WriteSession::open(store, &first))?;
    let mut timing = WriteTiming::default();
    let mut req = first;
    loop {
        let t = Instant::now();
        let n = req.data.len();
        let resp = if WriteSession::touches_storage(&req) {
            short_blocking(|| session.handle(req))
        } else {
            // Half of containerd's messages: not worth handing this worker's tasks away.
            session.handle(req).map_err(Status::from)
        };
        timing.handled(n, t.elapsed());
        let resp = resp?;
        metrics.ingested_bytes.inc_by(n as u64);
        let t = Instant::now();
        if tx.send(Ok(resp)).await.is_err() {
            // The client went away; dropping the session releases the ref.
            return Ok(());
        }
        timing.answering += t.elapsed();
        let t = Instant::now();
        let next = inbound.message().await?;
        timing.waited += t.elapsed();
        req = match next {
            Some(r) => r,
            None => {
                timing.report(&session.r#ref);
                return Ok(());
            }
        };
    }
}

/// Where a Write stream's time went: containerd waits for each answer before sending the
/// next message, so the time spent handling messages adds up directly in its throughput,
/// while the time waiting for the next one is containerd's and the transfer's.
#[derive(Default)]
struct WriteTiming {
    messages: u64,
    bytes: u64,
    handling: Duration,
    answering: Duration,
    waited: Duration,
}

impl WriteTiming {
    fn handled(&mut self, bytes: usize, took: Duration) {
        self.messages += 1;
        self.bytes += bytes as u64;
        self.handling += took;
    }

    fn report(&self, r#ref: &str) {
        debug!(
            r#ref,
            messages = self.messages,
            bytes = self.bytes,
            handling_ms = self.handling.as_secs_f64() * 1e3,
            answering_ms = self.answering.as_secs_f64() * 1e3,
            waiting_ms = self.waited.as_secs_f64() * 1e3,
            "write stream ended"
        );
    }
}

#[tonic::async_trait]
impl Content for ContentService {
    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let digest = Digest::parse(&request.into_inner().digest)?;
        record_digest(&digest);
        let info = short_blocking(|| self.store.info(&digest))?;
        Ok(Response::new(InfoResponse {
            info: Some(info_to_proto(info)),
        }))
    }

    async fn update(
        &self,
        request: Request<UpdateRequest>,
    ) -> Result<Response<UpdateResponse>, Status> {
        let req = request.into_inner();
        let info = req
            .info
            .ok_or_else(|| Error::invalid_argument("update requires info"))?;
        let digest = Digest::parse(&info.digest)?;
        record_digest(&digest);
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let labels = labels_from(info.labels);
        let store = self.store.clone();
        let info = blocking(move || store.update(&digest, &labels, &paths)).await?;
        Ok(Response::new(UpdateResponse {
            info: Some(info_to_proto(info)),
        }))
    }

    type ListStream = BoxStream<ListContentResponse>;

    async fn list(
        &self,
        request: Request<ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let filter = parse_filters(&request.into_inner().filters)?;
        let store = self.store.clone();
        let infos = blocking(move || store.list(&filter)).await?;
        let mut batches = Vec::with_capacity(infos.len().div_ceil(LIST_BATCH));
        let mut it = infos.into_iter().peekable();
        while it.peek().is_some() {
            let info = it.by_ref().take(LIST_BATCH).map(info_to_proto).collect();
            batches.push(Ok(ListContentResponse { info }));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn delete(&self, request: Request<DeleteContentRequest>) -> Result<Response<()>, Status> {
        let digest = Digest::parse(&request.into_inner().digest)?;
        record_digest(&digest);
        let store = self.store.clone();
        blocking(move || store.delete(&digest)).await?;
        Ok(Response::new(()))
    }

    type ReadStream = BoxStream<ReadContentResponse>;

    async fn read(
        &self,
        request: Request<ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let req = request.into_inner();
        let digest = Digest::parse(&req.digest)?;
        record_digest(&digest);
        // containerd's content service reads a negative offset as 0 and a negative size as
        // "to the end"; only an offset past the end is refused (OutOfRange).
        let offset = u64::try_from(req.offset).unwrap_or(0);
        let size = u64::try_from(req.size).unwrap_or(0);
        // containerd opens a stream per ReadAt (often 32 KiB), so the first message is usually
        // the whole call, and almost always served from the page cache (containerd reads what
        // it just wrote or read): then it is read right here, as a blocking-pool hop or even
        // block_in_place's hand-over of this worker cost more than the read. Only what would
        // wait for the disk (or a backend that cannot tell) goes off the worker.
        let (reader, end) = if self.store.reader_is_cheap(&digest) {
            open_range(&self.store, &digest, offset, size)?
        } else {
            short_blocking(|| open_range(&self.store, &digest, offset, size))?
        };
        if offset >= end {
            return Ok(Response::new(Box::pin(tokio_stream::empty())));
        }
        let mut data = vec![0u8; chunk_len(offset, end)];
        let filled = fill_cached(&*reader, &digest, &mut data, offset)?;
        if filled < data.len() {
            short_blocking(|| fill(&*reader, &digest, &mut data, offset, filled))?;
        }
        let first = ReadContentResponse {
            offset: to_i64(offset),
            data,
        };
        let next = offset + first.data.len() as u64;
        self.metrics.read_bytes.inc_by(first.data.len() as u64);
        let head = tokio_stream::once(Ok(first));
        if next >= end {
            return Ok(Response::new(Box::pin(head)));
        }
        let (tx, rx) = mpsc::channel(2);
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let mut at = next;
            while at < end {
                let item = read_chunk(&*reader, &digest, at, end).map_err(Status::from);
                let stop = match &item {
                    Ok(chunk) => {
                        at += chunk.data.len() as u64;
                        metrics.read_bytes.inc_by(chunk.data.len() as u64);
                        false
                    }
                    Err(_) => true,
                };
                if tx.blocking_send(item).is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(head.chain(ReceiverStream::new(rx)))))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let r#ref = request.into_inner().r#ref;
        record_key(&r#ref);
        let store = self.store.clone();
        let status = blocking(move || store.status(&r#ref)).await?;
        Ok(Response::new(StatusResponse {
            status: Some(status_to_proto(status)),
        }))
    }

    async fn list_statuses(
        &self,
        request: Request<ListStatusesRequest>,
    ) -> Result<Response<ListStatusesResponse>, Status> {
        let filter = parse_filters(&request.into_inner().filters)?;
        let store = self.store.clone();
        let statuses = blocking(move || store.list_statuses(&filter)).await?;
        Ok(Response::new(ListStatusesResponse {
            statuses: statuses.into_iter().map(status_to_proto).collect(),
        }))
    }

    type WriteStream = BoxStream<WriteContentResponse>;

    async fn write(
        &self,
        request: Request<Streaming<WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(2);
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        // The session outlives this call's future: it keeps the call's span.
        tokio::spawn(
            async move {
                if let Err(status) = write_session(store, &metrics, inbound, &tx).await {
                    if status.code() != tonic::Code::AlreadyExists {
                        debug!(code = ?status.code(), message = status.message(), "write failed");
                    }
                    let _ = tx.send(Err(status)).await;
                }
            }
            .instrument(tracing::Span::current()),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn abort(&self, request: Request<AbortRequest>) -> Result<Response<()>, Status> {
        let r#ref = request.into_inner().r#ref;
        record_key(&r#ref);
        let store = self.store.clone();
        blocking(move || store.abort(&r#ref)).await?;
        Ok(Response::new(()))
    }
}
