//! strata-content under kill cycles: four clients write (some abandon their ingest half-way,
//! others resume such ingests), commit, read and delete blobs of 1 KiB to 4 MiB while the
//! server is killed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_common::client::unix_channel;
use strata_proto::content::content_client::ContentClient;
use strata_proto::content::{
    DeleteContentRequest, InfoRequest, ListContentRequest, ListStatusesRequest, WriteAction,
    WriteContentRequest, WriteContentResponse,
};
use strata_tests::PluginKind;
use strata_tests::bench::read_blob;
use strata_tests::tmp::TestDir;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::rng::{Rng, data};
use crate::{Cycles, start};

type Client = ContentClient<Channel>;

const POINTS: &[&str] = &[
    "content.ingest.dir_created",
    "content.ingest.written",
    "content.commit.synced",
    "content.put.renamed",
    "content.commit.stored",
    "content.commit.ingest_removed",
    "content.delete.blob_gone",
];
const CHUNK: usize = 1 << 20;
/// strata_content::append::UNWRITTEN_MAX_BYTES: a kill may take back this much of what an open
/// ingest acknowledged (its queued messages); the ingest resumes from its Status offset.
const UNWRITTEN_MAX_BYTES: i64 = 5 << 20;

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// Being written or committed; unknown after a crash.
    Committing,
    /// Written up to `acked` and left: an ingest that must be there to resume.
    Abandoned,
    /// Commit acknowledged.
    Stored,
    /// Delete sent; unknown after a crash.
    Deleting,
    /// Delete acknowledged.
    Deleted,
    /// Never got far enough to leave anything.
    Lost,
}

#[derive(Clone, Debug)]
struct Blob {
    seed: u64,
    len: usize,
    digest: String,
    state: State,
    /// Bytes of the ingest acknowledged (Abandoned).
    acked: u64,
}

impl Blob {
    fn data(&self) -> Vec<u8> {
        data(self.seed, self.len)
    }
}

fn ref_of(id: usize) -> String {
    format!("kill-cycle-{id}")
}

fn id_of(r: &str) -> Option<usize> {
    r.strip_prefix("kill-cycle-")?.parse().ok()
}

#[derive(Default)]
struct Model {
    blobs: Vec<Blob>,
}

type Shared = Arc<Mutex<Model>>;

fn lock(m: &Shared) -> std::sync::MutexGuard<'_, Model> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The error ends a worker quietly when the server is gone (or a ref is briefly locked).
fn server_gone(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

pub fn run() {
    let mut rng = Rng::from_env("content kill cycles");
    let dir = TestDir::new("kc-content").unwrap();
    let model: Shared = Arc::default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cycles = Cycles {
        kind: PluginKind::Content,
        dir: dir.path(),
        args: Vec::new(),
        points: POINTS,
        check_writes: false,
        reach_within: Duration::from_secs(5),
    };
    cycles.run(
        &rt,
        &mut rng,
        |p| rt.block_on(check(p.socket(), &model, false)),
        |p, stop, seed| {
            let (socket, model) = (p.socket().to_path_buf(), model.clone());
            rt.spawn(async move { worker(&socket, &model, &stop, seed).await })
        },
    );
    // The last start: every interrupted ingest resumes to its blob.
    let mut p = start(PluginKind::Content, dir.path(), &[], None);
    rt.block_on(check(p.socket(), &model, true))
        .unwrap_or_else(|e| panic!("after the last cycle: {e}\n{}", p.log_tail(60)));
    p.stop();
    let m = lock(&model);
    let count = |s: State| m.blobs.iter().filter(|b| b.state == s).count();
    eprintln!(
        "content kill cycles: {} blobs written, {} stored, {} deleted, {} lost in flight",
        m.blobs.len(),
        count(State::Stored),
        count(State::Deleted),
        count(State::Lost)
    );
    assert!(count(State::Stored) > 0, "the workload stored nothing");
}

/// Checks the store against the model after a restart and settles what was in flight:
/// acknowledged blobs read back whole, deleted ones are gone, blobs in flight are whole or
/// absent, List and ListStatuses name nothing unknown, abandoned ingests are there at their
/// acknowledged offset. `resume_all` then finishes every ingest left.
async fn check(socket: &Path, model: &Shared, resume_all: bool) -> Result<(), String> {
    let mut c = ContentClient::new(unix_channel(socket));
    let statuses: BTreeMap<String, i64> = c
        .list_statuses(ListStatusesRequest::default())
        .await
        .map_err(|e| format!("ListStatuses: {e}"))?
        .into_inner()
        .statuses
        .into_iter()
        .map(|s| (s.r#ref, s.offset))
        .collect();
    let mut listed = BTreeMap::new();
    let mut s = c
        .list(ListContentRequest::default())
        .await
        .map_err(|e| format!("List: {e}"))?
        .into_inner();
    while let Some(m) = s.message().await.map_err(|e| format!("List: {e}"))? {
        for i in m.info {
            listed.insert(i.digest, i.size);
        }
    }
    let blobs = lock(model).blobs.clone();
    let mut settled = Vec::with_capacity(blobs.len());
    for (id, b) in blobs.iter().enumerate() {
        let info = c
            .info(InfoRequest {
                digest: b.digest.clone(),
            })
            .await;
        let present = match &info {
            Ok(_) => true,
            Err(e) if e.code() == Code::NotFound => false,
            Err(e) => return Err(format!("Info {}: {e}", b.digest)),
        };
        if present {
            let got = read_blob(&mut c, &b.digest)
                .await
                .map_err(|e| format!("Read {}: {e}", b.digest))?;
            if strata_testkit::sha256_digest(&got) != b.digest || got.len() != b.len {
                return Err(format!(
                    "blob {} ({:?}) reads back other bytes",
                    id, b.state
                ));
            }
            if listed.get(&b.digest) != Some(&(b.len as i64)) {
                return Err(format!("blob {id} readable but not listed with its size"));
            }
        } else if listed.contains_key(&b.digest) {
            return Err(format!("blob {id} listed but Info says NotFound"));
        }
        let ingest = statuses.get(&ref_of(id));
        let state = match (b.state, present) {
            (State::Stored, false) => return Err(format!("acknowledged blob {id} lost")),
            (State::Deleted, true) => return Err(format!("deleted blob {id} is back")),
            (State::Committing, false)
                if b.acked > 0 && ingest < Some(&(b.acked as i64 - UNWRITTEN_MAX_BYTES)) =>
            {
                return Err(format!(
                    "ingest of blob {id} acknowledged up to {} but listed at {ingest:?}",
                    b.acked
                ));
            }
            (State::Abandoned, _)
                if !ingest.is_some_and(|o| {
                    (b.acked as i64 - UNWRITTEN_MAX_BYTES..=b.acked as i64).contains(o)
                }) =>
            {
                return Err(format!(
                    "ingest of blob {id} acknowledged at {} but listed at {ingest:?}",
                    b.acked
                ));
            }
            (State::Abandoned | State::Committing, true) if ingest.is_some() => {
                // A crash after the blob was stored but before its ingest was removed: the
                // resume below finds the blob there.
                State::Abandoned
            }
            (State::Stored | State::Committing | State::Deleting, true) => State::Stored,
            (State::Abandoned | State::Committing, false) if ingest.is_some() => State::Abandoned,
            (State::Committing, false) => State::Lost,
            (State::Deleting | State::Deleted, false) => State::Deleted,
            (s, _) => s,
        };
        let acked = ingest.map_or(0, |o| *o as u64);
        settled.push(Blob {
            state,
            acked,
            ..b.clone()
        });
    }
    for (r, offset) in &statuses {
        match id_of(r).and_then(|id| settled.get(id)) {
            Some(b) if b.state == State::Abandoned && *offset as usize <= b.len => {}
            _ => return Err(format!("unexpected ingest {r} at {offset}")),
        }
    }
    if listed.len() != settled.iter().filter(|b| b.state == State::Stored).count() {
        return Err(format!(
            "List names {} blobs, the model {}",
            listed.len(),
            settled.iter().filter(|b| b.state == State::Stored).count()
        ));
    }
    {
        let mut m = lock(model);
        m.blobs.truncate(0);
        m.blobs.extend(settled);
    }
    if resume_all {
        let ids: Vec<usize> = lock(model)
            .blobs
            .iter()
            .enumerate()
            .filter(|(_, b)| b.state == State::Abandoned)
            .map(|(id, _)| id)
            .collect();
        for id in ids {
            lock(model).blobs[id].state = State::Committing;
            write_blob(&mut c, model, id, false)
                .await
                .map_err(|e| format!("resuming blob {id}: {e}"))?;
            if lock(model).blobs[id].state != State::Stored {
                return Err(format!("blob {id} did not resume to a stored blob"));
            }
        }
    }
    Ok(())
}

async fn worker(socket: &Path, model: &Shared, stop: &AtomicBool, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let mut c = ContentClient::new(unix_channel(socket));
    while !stop.load(Ordering::SeqCst) {
        // Deletes outpace writes once the store holds enough, so that checking it after each
        // restart stays quick over hundreds of cycles.
        let crowded = lock(model)
            .blobs
            .iter()
            .filter(|b| b.state == State::Stored)
            .count()
            > 150;
        let op = match rng.below(100) {
            20..50 if crowded => 65,
            op => op,
        };
        let done = match op {
            0..50 => {
                let len = if rng.chance(70) {
                    1 + rng.below(64 << 10) as usize
                } else {
                    (1 << 20) + rng.below(3 << 20) as usize
                };
                let id = {
                    let mut m = lock(model);
                    m.blobs.push(Blob {
                        seed: rng.next(),
                        len,
                        digest: String::new(),
                        state: State::Committing,
                        acked: 0,
                    });
                    let b = m.blobs.last_mut().unwrap();
                    b.digest = strata_testkit::sha256_digest(&b.data());
                    m.blobs.len() - 1
                };
                write_blob(&mut c, model, id, rng.chance(20)).await
            }
            50..65 => {
                let Some(id) = pick(model, &mut rng, State::Stored, State::Stored) else {
                    continue;
                };
                let b = lock(model).blobs[id].clone();
                match read_blob(&mut c, &b.digest).await {
                    Ok(got) if strata_testkit::sha256_digest(&got) == b.digest => Ok(()),
                    Ok(_) => return Err(format!("blob {id} read back other bytes")),
                    // Deleted meanwhile by another worker.
                    Err(e)
                        if e.code() == Code::NotFound
                            && lock(model).blobs[id].state != State::Stored =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            65..80 => {
                let Some(id) = pick(model, &mut rng, State::Stored, State::Deleting) else {
                    continue;
                };
                let digest = lock(model).blobs[id].digest.clone();
                c.delete(DeleteContentRequest { digest })
                    .await
                    .map(|_| lock(model).blobs[id].state = State::Deleted)
            }
            _ => {
                // A lost blob's ref may have a broken ingest left (a crash before its status
                // was written): writing it again must work all the same.
                let from = if rng.chance(70) {
                    State::Abandoned
                } else {
                    State::Lost
                };
                let Some(id) = pick(model, &mut rng, from, State::Committing) else {
                    continue;
                };
                write_blob(&mut c, model, id, false).await
            }
        };
        match done {
            Ok(()) => {}
            Err(e) if server_gone(&e) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// A random blob in state `from`, moved to `to` under the lock (so no two workers take it).
fn pick(model: &Shared, rng: &mut Rng, from: State, to: State) -> Option<usize> {
    let mut m = lock(model);
    let ids: Vec<usize> = (0..m.blobs.len())
        .filter(|&i| m.blobs[i].state == from)
        .collect();
    if ids.is_empty() {
        return None;
    }
    let id = ids[rng.below(ids.len() as u64) as usize];
    m.blobs[id].state = to;
    Some(id)
}

struct WriteStream {
    tx: mpsc::Sender<WriteContentRequest>,
    rx: tonic::Streaming<WriteContentResponse>,
}

impl WriteStream {
    async fn send(&mut self, req: WriteContentRequest) -> Result<WriteContentResponse, Status> {
        self.tx
            .send(req)
            .await
            .map_err(|_| Status::unavailable("write stream closed"))?;
        self.rx
            .message()
            .await?
            .ok_or_else(|| Status::unavailable("write stream ended"))
    }
}

/// Writes blob `id` (from where its ingest stands, as containerd resumes) and commits it, or
/// stops half-way and leaves the ingest when `abandon`.
async fn write_blob(
    c: &mut Client,
    model: &Shared,
    id: usize,
    abandon: bool,
) -> Result<(), Status> {
    let b = lock(model).blobs[id].clone();
    let data = b.data();
    let (tx, rx) = mpsc::channel(1);
    tx.send(WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: ref_of(id),
        total: b.len as i64,
        expected: b.digest.clone(),
        ..Default::default()
    })
    .await
    .map_err(|_| Status::unavailable("write stream closed"))?;
    let mut rx = match c.write(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => return back_to_abandoned(model, id, &b, e),
    };
    let first = match rx.message().await {
        Ok(Some(m)) => m,
        Ok(None) => return Err(Status::unavailable("write stream ended")),
        Err(e) => return back_to_abandoned(model, id, &b, e),
    };
    let mut w = WriteStream { tx, rx };
    let mut offset = first.offset;
    if b.acked > 0 && offset as u64 != b.acked {
        return Err(Status::internal(format!(
            "ingest of blob {id} left at {} resumes at {offset}",
            b.acked
        )));
    }
    if offset as usize > b.len {
        return Err(Status::internal(format!(
            "ingest of blob {id} resumes at {offset}, past its {} bytes",
            b.len
        )));
    }
    let stop_at = if abandon { b.len / 2 } else { b.len };
    while (offset as usize) < stop_at {
        let end = (offset as usize + CHUNK).min(stop_at);
        let resp = w
            .send(WriteContentRequest {
                action: WriteAction::Write as i32,
                offset,
                data: data[offset as usize..end].to_vec(),
                ..Default::default()
            })
            .await?;
        offset = resp.offset;
        lock(model).blobs[id].acked = offset as u64;
    }
    if abandon {
        let mut m = lock(model);
        m.blobs[id].state = State::Abandoned;
        m.blobs[id].acked = offset as u64;
        return Ok(());
    }
    match w
        .send(WriteContentRequest {
            action: WriteAction::Commit as i32,
            offset,
            total: b.len as i64,
            expected: b.digest.clone(),
            ..Default::default()
        })
        .await
    {
        Ok(resp) if resp.digest == b.digest => {}
        Ok(resp) => {
            return Err(Status::internal(format!(
                "commit of blob {id} answered digest {:?}",
                resp.digest
            )));
        }
        // Stored by a commit that crashed before removing its ingest.
        Err(e) if e.code() == Code::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    lock(model).blobs[id].state = State::Stored;
    Ok(())
}

/// A resume refused at once (its ref still locked by the stream that left it, or the server
/// gone) leaves the ingest as it was; a locked ref is tried again later.
fn back_to_abandoned(model: &Shared, id: usize, b: &Blob, e: Status) -> Result<(), Status> {
    if b.acked > 0 {
        lock(model).blobs[id].state = State::Abandoned;
    }
    if e.code() == Code::Unavailable && e.message().contains("locked") {
        return Ok(());
    }
    Err(e)
}
