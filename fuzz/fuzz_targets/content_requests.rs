//! Arbitrary bytes as requests to strata-content's gRPC service: the input is cut into
//! requests ([`strata_fuzz::ops`]), each payload decoded with prost as the request its tag
//! names, and each decoded request handed to the real `ContentService` in process (the tonic
//! trait methods, on a current-thread runtime, over a local store in a temporary directory).
//! A Write's payload is the length-delimited messages of one Write stream.
//!
//! Invariant: no panic (errors are fine), and every response stream ends. One store serves
//! the whole process; after each input it is put back to its fixture (one blob with labels,
//! no ingests), so an input does the same whatever ran before it.

#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use strata_common::filter::Filter;
use strata_content::{ContentService, ContentStore, Digest};
use strata_fuzz::content as op;
use strata_proto::content::content_server::Content;
use strata_proto::content::{
    AbortRequest, DeleteContentRequest, InfoRequest, ListContentRequest, ListStatusesRequest,
    ReadContentRequest, StatusRequest, UpdateRequest, WriteContentRequest, WriteContentResponse,
};
use tokio_stream::{Stream, StreamExt};
use tonic::codec::Codec;
use tonic::{Request, Response, Status};

struct State {
    rt: tokio::runtime::Runtime,
    store: ContentStore,
    service: ContentService,
    fixture: Digest,
    labels: BTreeMap<String, String>,
    _dir: tempfile::TempDir,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        let (rt, dir) = strata_fuzz::runtime_and_dir("content");
        let root: PathBuf = dir.path().join("content");
        let store = ContentStore::open_local(&root).expect("open the store");
        let labels = strata_fuzz::labels(op::FIXTURE_LABELS);
        let state = State {
            rt,
            service: ContentService::new(store.clone()),
            store,
            fixture: Digest::sha256_of(op::FIXTURE),
            labels,
            _dir: dir,
        };
        reset(&state);
        Mutex::new(state)
    })
}

/// Back to the fixture: only the fixture blob, with its labels, and no ingests.
fn reset(s: &State) {
    let all = Filter::default();
    for info in s.store.list(&all).expect("list blobs") {
        if info.digest != s.fixture {
            s.store.delete(&info.digest).expect("delete a blob");
        }
    }
    for status in s.store.list_statuses(&all).expect("list ingests") {
        s.store.abort(&status.r#ref).expect("abort an ingest");
    }
    match s.store.info(&s.fixture) {
        Ok(info) if info.labels == s.labels => {}
        Ok(_) => {
            s.store
                .update(&s.fixture, &s.labels, &[])
                .expect("restore the fixture's labels");
        }
        Err(_) => {
            let mut w = s.store.writer("fixture", 0, None).expect("fixture writer");
            w.write(op::FIXTURE).expect("write the fixture");
            w.commit(op::FIXTURE.len() as u64, Some(&s.fixture), s.labels.clone())
                .expect("commit the fixture");
        }
    }
}

/// Drains a response stream, as a client reading to the end would.
async fn drain<T, S>(r: Result<Response<S>, Status>)
where
    S: Stream<Item = Result<T, Status>> + Unpin,
{
    if let Ok(r) = r {
        let mut stream = r.into_inner();
        // To the end, errors included: the stream ends once the call's work is done.
        while stream.next().await.is_some() {}
    }
}

/// The messages of a Write payload, framed as gRPC frames in one request body.
fn write_stream(mut payload: &[u8]) -> tonic::Streaming<WriteContentRequest> {
    let mut body = BytesMut::new();
    while !payload.is_empty() {
        let Ok(msg) = WriteContentRequest::decode_length_delimited(&mut payload) else {
            break;
        };
        let bytes = msg.encode_to_vec();
        body.put_u8(0);
        body.put_u32(bytes.len() as u32);
        body.put_slice(&bytes);
    }
    let mut codec = tonic_prost::ProstCodec::<WriteContentResponse, WriteContentRequest>::new();
    tonic::Streaming::new_request(
        codec.decoder(),
        http_body_util::Full::new(body.freeze()),
        None,
        None,
    )
}

async fn handle(svc: &ContentService, tag: u8, payload: &[u8]) {
    match tag % op::COUNT {
        op::INFO => {
            if let Ok(r) = InfoRequest::decode(payload) {
                let _ = svc.info(Request::new(r)).await;
            }
        }
        op::UPDATE => {
            if let Ok(r) = UpdateRequest::decode(payload) {
                let _ = svc.update(Request::new(r)).await;
            }
        }
        op::LIST => {
            if let Ok(r) = ListContentRequest::decode(payload) {
                drain(svc.list(Request::new(r)).await).await;
            }
        }
        op::DELETE => {
            if let Ok(r) = DeleteContentRequest::decode(payload) {
                let _ = svc.delete(Request::new(r)).await;
            }
        }
        op::READ => {
            if let Ok(r) = ReadContentRequest::decode(payload) {
                drain(svc.read(Request::new(r)).await).await;
            }
        }
        op::STATUS => {
            if let Ok(r) = StatusRequest::decode(payload) {
                let _ = svc.status(Request::new(r)).await;
            }
        }
        op::LIST_STATUSES => {
            if let Ok(r) = ListStatusesRequest::decode(payload) {
                let _ = svc.list_statuses(Request::new(r)).await;
            }
        }
        op::ABORT => {
            if let Ok(r) = AbortRequest::decode(payload) {
                let _ = svc.abort(Request::new(r)).await;
            }
        }
        _ => {
            drain(svc.write(Request::new(write_stream(payload))).await).await;
        }
    }
}

fn run(data: &[u8]) {
    let s = state().lock().unwrap_or_else(|p| p.into_inner());
    let ops = strata_fuzz::ops(data);
    s.rt.block_on(async {
        for (tag, payload) in ops {
            handle(&s.service, tag, payload).await;
        }
    });
    reset(&s);
}

fuzz_target!(|data: &[u8]| run(data));
