//! Bad requests: one table of malformed or impossible calls on every RPC of the three real
//! servers (strata-snapshotter, strata-content, strata-differ), each row with the gRPC code
//! containerd's own built-ins give (overlay + metadata snapshotter, local + metadata content
//! store, walking differ; `errdefs` mapping). Each answer must carry that code and a non-empty
//! message, and after the whole table each server's `--root` tree (paths, sizes, modes) and its
//! API listings (snapshots, content, ingest statuses) must be as they were before it.
//!
//! `cargo test -p strata-tests --test bad_requests -- --nocapture` prints one line per service.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use strata_common::client::unix_channel;
use strata_proto::content::content_client::ContentClient;
use strata_proto::content::{
    AbortRequest, DeleteContentRequest, InfoRequest, ListContentRequest, ListStatusesRequest,
    ReadContentRequest, StatusRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use strata_proto::diff::diff_client::DiffClient;
use strata_proto::diff::{ApplyRequest, DiffRequest};
use strata_proto::prost_types::FieldMask;
use strata_proto::snapshots::snapshots_client::SnapshotsClient;
use strata_proto::snapshots::{
    CommitSnapshotRequest, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, UpdateSnapshotRequest, UsageRequest,
    ViewSnapshotRequest,
};
use strata_proto::types::{Descriptor, Mount};
use strata_testkit::tree::{Compare, Node, NodeKind, Tree, snapshot};
use strata_tests::bench::write_blob;
use strata_tests::tmp::TestDir;
use strata_tests::{PluginKind, StrataProcess};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Any one call slower than this is a hang.
const CALL_BOUND: Duration = Duration::from_secs(60);
/// The namespace every row sends unless it is about the namespace.
const NS: &str = "bad-requests";
const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Well-formed and absent.
const ABSENT: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// The malformed digests every digest-taking RPC is tried with.
const MALFORMED: [(&str, &str); 5] = [
    (
        "digest without algorithm",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ),
    (
        "digest with bad hex",
        "sha256:zzb0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ),
    ("digest of wrong length", "sha256:e3b0c442"),
    (
        "digest of unknown algorithm",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
    ),
    (
        "digest with NUL",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8\0",
    ),
];

#[derive(Clone)]
struct Clients {
    snap: SnapshotsClient<Channel>,
    content: ContentClient<Channel>,
    diff: DiffClient<Channel>,
}

type Answer = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// One row: which service and RPC, what is wrong, the call, the code containerd gives
/// (`Ok` for the odd request containerd takes as it comes, such as a negative Read offset).
struct Case {
    service: &'static str,
    rpc: &'static str,
    name: String,
    expect: Code,
    call: Box<dyn FnOnce(Clients) -> Answer>,
}

/// Rows are added with the call written as an async block over a clone of the clients.
#[derive(Default)]
struct Table(Vec<Case>);

impl Table {
    fn add<F, Fut>(
        &mut self,
        service: &'static str,
        rpc: &'static str,
        name: &str,
        expect: Code,
        f: F,
    ) where
        F: FnOnce(Clients) -> Fut + 'static,
        Fut: Future<Output = Result<(), Status>> + Send + 'static,
    {
        self.0.push(Case {
            service,
            rpc,
            name: name.to_string(),
            expect,
            call: Box::new(move |c| Box::pin(f(c))),
        });
    }
}

/// `m` in the test namespace.
fn ns<T>(m: T) -> Request<T> {
    in_ns(m, Some(NS))
}

/// `m` with `namespace` as its containerd-namespace header, or none.
fn in_ns<T>(m: T, namespace: Option<&str>) -> Request<T> {
    let mut r = Request::new(m);
    if let Some(n) = namespace {
        r.metadata_mut()
            .insert("containerd-namespace", n.parse().unwrap());
    }
    r
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The label sets containerd's `labels.Validate` refuses: key + value over 4096 bytes.
fn bad_label_sets() -> Vec<(&'static str, HashMap<String, String>)> {
    let long = "v".repeat(4097);
    let key = "k".repeat(4097);
    let half = "x".repeat(2048);
    vec![
        ("label value over 4096 bytes", labels(&[("k", &long)])),
        ("label key over 4096 bytes", labels(&[(&key, "v")])),
        (
            "label key + value over 4096 bytes",
            labels(&[(&half, &format!("{half}yy"))]),
        ),
    ]
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

/// Drains a server stream, so that an error after the first message counts too.
async fn drain<T>(s: tonic::Response<tonic::Streaming<T>>) -> Result<(), Status> {
    let mut s = s.into_inner();
    while s.message().await?.is_some() {}
    Ok(())
}

/// Sends `msgs` on one Write stream and reads every answer.
async fn write(
    mut c: ContentClient<Channel>,
    msgs: Vec<WriteContentRequest>,
) -> Result<(), Status> {
    let r = msgs.first().map(|m| m.r#ref.clone()).unwrap_or_default();
    let answer = match c.write(ns(tokio_stream::iter(msgs))).await {
        Ok(answers) => drain(answers).await,
        Err(e) => Err(e),
    };
    // containerd keeps a refused ingest for the client to resume or abort; abort it so that
    // the table leaves nothing behind. The server lets go of the ingest once it has seen the
    // stream end: retry until the abort goes through or there is nothing to abort.
    if !r.is_empty() {
        abort(c, &r).await;
    }
    answer
}

/// Aborts ingest `r` if it is there, retrying while its writer is still held.
async fn abort(mut c: ContentClient<Channel>, r: &str) {
    for _ in 0..100 {
        match c.abort(ns(AbortRequest { r#ref: r.into() })).await {
            Ok(_) => return,
            Err(e) if e.code() == Code::NotFound => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    panic!("could not abort ingest {r:?}");
}

fn wmsg(action: WriteAction, r: &str) -> WriteContentRequest {
    WriteContentRequest {
        action: action as i32,
        r#ref: r.to_string(),
        ..Default::default()
    }
}

/// `root` as a tree (contents, modes, owners, xattrs). SQLite's -wal/-shm/-journal files come
/// and go with reads and checkpoints, so they are left out, and a database file keeps only its
/// presence, mode and owner: SQLite rewrites its pages as it sees fit (the metadata in them is
/// compared through the API instead).
fn disk(root: &Path) -> Tree {
    let mut tree = snapshot(root).unwrap();
    let name_ends = |p: &Path, ends: &[&str]| {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        ends.iter().any(|e| name.ends_with(e))
    };
    tree.retain(|p, _| !name_ends(p, &["-wal", "-shm", "-journal"]));
    let databases: Vec<(PathBuf, Node)> = tree
        .iter()
        .filter(|(p, _)| name_ends(p, &[".db", ".sqlite"]))
        .map(|(p, n)| (p.to_path_buf(), n.clone()))
        .collect();
    for (p, mut n) in databases {
        n.kind = NodeKind::File {
            size: 0,
            digest: String::new(),
        };
        tree.insert(p, n);
    }
    tree
}

/// What the APIs list: snapshots (name, parent, kind, labels), blobs (digest, size, labels),
/// ingests (ref, offset, total, expected).
async fn listings(c: &Clients) -> Vec<String> {
    let mut out = Vec::new();
    let mut s = c
        .snap
        .clone()
        .list(ns(ListSnapshotsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    while let Some(m) = s.message().await.unwrap() {
        for i in m.info {
            let l: BTreeMap<_, _> = i.labels.into_iter().collect();
            out.push(format!(
                "snapshot {} <- {} kind {} {l:?}",
                i.name, i.parent, i.kind
            ));
        }
    }
    let mut s = c
        .content
        .clone()
        .list(ns(ListContentRequest::default()))
        .await
        .unwrap()
        .into_inner();
    while let Some(m) = s.message().await.unwrap() {
        for i in m.info {
            let l: BTreeMap<_, _> = i.labels.into_iter().collect();
            out.push(format!("blob {} {} {l:?}", i.digest, i.size));
        }
    }
    let st = c
        .content
        .clone()
        .list_statuses(ns(ListStatusesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    for s in st.statuses {
        out.push(format!(
            "ingest {} {}/{} {}",
            s.r#ref, s.offset, s.total, s.expected
        ));
    }
    out.sort();
    out
}

fn snapshotter_cases(t: &mut Table) {
    const S: &str = "snapshots";
    let big = "k".repeat(64 << 10);
    // Keys every key-taking RPC is tried with, and what containerd answers for a key that
    // names nothing.
    let keys: Vec<(&str, String)> = vec![
        ("empty key", String::new()),
        ("64 KiB key", big.clone()),
        ("key with NUL", "a\0b".into()),
        ("missing key", "no-such-snapshot".into()),
    ];

    // Prepare / View: an empty key is invalid; the new key names nothing, so the parent is
    // what is looked up.
    for rpc in ["Prepare", "View"] {
        let call = move |c: Clients, key: String, parent: String, l: HashMap<String, String>| async move {
            let mut s = c.snap;
            if rpc == "Prepare" {
                s.prepare(ns(PrepareSnapshotRequest {
                    key,
                    parent,
                    labels: l,
                    ..Default::default()
                }))
                .await?;
            } else {
                s.view(ns(ViewSnapshotRequest {
                    key,
                    parent,
                    labels: l,
                    ..Default::default()
                }))
                .await?;
            }
            Ok(())
        };
        t.add(S, rpc, "empty key", Code::InvalidArgument, move |c| {
            call(c, String::new(), String::new(), HashMap::new())
        });
        t.add(S, rpc, "missing parent", Code::NotFound, move |c| {
            call(c, "bad-new".into(), "no-such-parent".into(), HashMap::new())
        });
        t.add(S, rpc, "parent with NUL", Code::NotFound, move |c| {
            call(c, "bad-new".into(), "base\0".into(), HashMap::new())
        });
        t.add(S, rpc, "active parent", Code::InvalidArgument, move |c| {
            call(c, "bad-new".into(), "active".into(), HashMap::new())
        });
        t.add(S, rpc, "existing key", Code::AlreadyExists, move |c| {
            call(c, "active".into(), String::new(), HashMap::new())
        });
        t.add(
            S,
            rpc,
            "existing committed key",
            Code::AlreadyExists,
            move |c| call(c, "base".into(), String::new(), HashMap::new()),
        );
        for (name, l) in bad_label_sets() {
            t.add(S, rpc, name, Code::InvalidArgument, move |c| {
                call(c, "bad-new".into(), String::new(), l)
            });
        }
    }

    for (name, key) in &keys {
        let expect = if key.is_empty() {
            Code::InvalidArgument
        } else {
            Code::NotFound
        };
        let k = key.clone();
        t.add(S, "Mounts", name, expect, move |c| async move {
            c.snap
                .clone()
                .mounts(ns(MountsRequest {
                    key: k,
                    ..Default::default()
                }))
                .await?;
            Ok(())
        });
        let k = key.clone();
        t.add(S, "Stat", name, expect, move |c| async move {
            c.snap
                .clone()
                .stat(ns(StatSnapshotRequest {
                    key: k,
                    ..Default::default()
                }))
                .await?;
            Ok(())
        });
        let k = key.clone();
        t.add(S, "Usage", name, expect, move |c| async move {
            c.snap
                .clone()
                .usage(ns(UsageRequest {
                    key: k,
                    ..Default::default()
                }))
                .await?;
            Ok(())
        });
        let k = key.clone();
        t.add(S, "Remove", name, expect, move |c| async move {
            c.snap
                .clone()
                .remove(ns(RemoveSnapshotRequest {
                    key: k,
                    ..Default::default()
                }))
                .await?;
            Ok(())
        });
        let k = key.clone();
        t.add(
            S,
            "Commit",
            &format!("{name} (active)"),
            expect,
            move |c| async move {
                c.snap
                    .clone()
                    .commit(ns(CommitSnapshotRequest {
                        name: "bad-commit".into(),
                        key: k,
                        ..Default::default()
                    }))
                    .await?;
                Ok(())
            },
        );
    }
    t.add(
        S,
        "Remove",
        "committed snapshot with a child",
        Code::FailedPrecondition,
        |c| async move {
            c.snap
                .clone()
                .remove(ns(RemoveSnapshotRequest {
                    key: "base".into(),
                    ..Default::default()
                }))
                .await?;
            Ok(())
        },
    );
    let commit = |name: &str, key: &str, l: HashMap<String, String>| {
        let (name, key) = (name.to_string(), key.to_string());
        move |c: Clients| async move {
            c.snap
                .clone()
                .commit(ns(CommitSnapshotRequest {
                    name,
                    key,
                    labels: l,
                    ..Default::default()
                }))
                .await?;
            Ok(())
        }
    };
    t.add(
        S,
        "Commit",
        "empty name",
        Code::InvalidArgument,
        commit("", "active", HashMap::new()),
    );
    t.add(
        S,
        "Commit",
        "name taken",
        Code::AlreadyExists,
        commit("base", "active", HashMap::new()),
    );
    t.add(
        S,
        "Commit",
        "a committed key",
        Code::FailedPrecondition,
        commit("bad-commit", "base", HashMap::new()),
    );
    for (name, l) in bad_label_sets() {
        t.add(
            S,
            "Commit",
            name,
            Code::InvalidArgument,
            commit("bad-commit", "active", l),
        );
    }

    let update = |name: &str, paths: &[&str], l: HashMap<String, String>| {
        let name = name.to_string();
        let m = mask(paths);
        move |c: Clients| async move {
            let info = strata_proto::snapshots::Info {
                name,
                labels: l,
                ..Default::default()
            };
            c.snap
                .clone()
                .update(ns(UpdateSnapshotRequest {
                    info: Some(info),
                    update_mask: m,
                    ..Default::default()
                }))
                .await?;
            Ok(())
        }
    };
    t.add(
        S,
        "Update",
        "no info",
        Code::InvalidArgument,
        |c| async move {
            c.snap
                .clone()
                .update(ns(UpdateSnapshotRequest::default()))
                .await?;
            Ok(())
        },
    );
    t.add(
        S,
        "Update",
        "empty name",
        Code::InvalidArgument,
        update("", &["labels.a"], labels(&[("a", "b")])),
    );
    t.add(
        S,
        "Update",
        "missing key",
        Code::NotFound,
        update("no-such-snapshot", &["labels.a"], labels(&[("a", "b")])),
    );
    t.add(
        S,
        "Update",
        "64 KiB key",
        Code::NotFound,
        update(&big, &["labels.a"], labels(&[("a", "b")])),
    );
    t.add(
        S,
        "Update",
        "key with NUL",
        Code::NotFound,
        update("a\0b", &["labels.a"], labels(&[("a", "b")])),
    );
    t.add(
        S,
        "Update",
        "field path name",
        Code::InvalidArgument,
        update("base", &["name"], HashMap::new()),
    );
    t.add(
        S,
        "Update",
        "field path parent",
        Code::InvalidArgument,
        update("base", &["parent"], HashMap::new()),
    );
    t.add(
        S,
        "Update",
        "unknown field path",
        Code::InvalidArgument,
        update("base", &["bogus"], HashMap::new()),
    );
    for (name, l) in bad_label_sets() {
        t.add(
            S,
            "Update",
            name,
            Code::InvalidArgument,
            update("base", &[], l),
        );
    }

    for (name, filter) in [
        ("filter with unclosed quote", "name==\"base"),
        ("filter with bad operator", "name>>base"),
        ("filter with bad regexp", "name~=\"[\""),
        ("filter that is only an operator", "=="),
    ] {
        t.add(
            S,
            "List",
            name,
            Code::InvalidArgument,
            move |c| async move {
                let s = c
                    .snap
                    .clone()
                    .list(ns(ListSnapshotsRequest {
                        filters: vec![filter.into()],
                        ..Default::default()
                    }))
                    .await?;
                drain(s).await
            },
        );
    }
    // The snapshotter is a proxy backend: containerd's metadata layer has already put the
    // namespace into the key, and overlay does not read the header. A missing or invalid
    // namespace changes nothing: the missing key is still NotFound.
    for (name, n) in [("no namespace", None), ("invalid namespace", Some("-bad-"))] {
        t.add(
            S,
            "Stat",
            &format!("{name}, missing key"),
            Code::NotFound,
            move |c| async move {
                c.snap
                    .clone()
                    .stat(in_ns(
                        StatSnapshotRequest {
                            key: "no-such-snapshot".into(),
                            ..Default::default()
                        },
                        n,
                    ))
                    .await?;
                Ok(())
            },
        );
    }
}

fn content_cases(t: &mut Table, blob: &'static str, blob_len: i64) {
    const C: &str = "content";
    let big = "r".repeat(64 << 10);
    let mut digests: Vec<(String, String, Code)> = vec![
        ("empty digest".into(), String::new(), Code::InvalidArgument),
        ("unknown digest".into(), ABSENT.into(), Code::NotFound),
    ];
    for (name, d) in MALFORMED {
        digests.push((name.into(), d.into(), Code::InvalidArgument));
    }
    for (name, d, expect) in &digests {
        let d2 = d.clone();
        t.add(C, "Info", name, *expect, move |c| async move {
            c.content
                .clone()
                .info(ns(InfoRequest { digest: d2 }))
                .await?;
            Ok(())
        });
        let d2 = d.clone();
        t.add(C, "Delete", name, *expect, move |c| async move {
            c.content
                .clone()
                .delete(ns(DeleteContentRequest { digest: d2 }))
                .await?;
            Ok(())
        });
        let d2 = d.clone();
        t.add(C, "Read", name, *expect, move |c| async move {
            let s = c
                .content
                .clone()
                .read(ns(ReadContentRequest {
                    digest: d2,
                    offset: 0,
                    size: 0,
                }))
                .await?;
            drain(s).await
        });
        let d2 = d.clone();
        t.add(C, "Update", name, *expect, move |c| async move {
            let info = strata_proto::content::Info {
                digest: d2,
                labels: labels(&[("a", "b")]),
                ..Default::default()
            };
            c.content
                .clone()
                .update(ns(UpdateRequest {
                    info: Some(info),
                    update_mask: mask(&["labels.a"]),
                }))
                .await?;
            Ok(())
        });
    }
    let read = |offset: i64, size: i64| {
        move |c: Clients| async move {
            let s = c
                .content
                .clone()
                .read(ns(ReadContentRequest {
                    digest: blob.into(),
                    offset,
                    size,
                }))
                .await?;
            drain(s).await
        }
    };
    t.add(
        C,
        "Read",
        "negative offset (read as 0)",
        Code::Ok,
        read(-1, 0),
    );
    t.add(
        C,
        "Read",
        "negative size (read as to the end)",
        Code::Ok,
        read(0, -1),
    );
    t.add(
        C,
        "Read",
        "offset past the end",
        Code::OutOfRange,
        read(blob_len + 1, 0),
    );
    t.add(
        C,
        "Read",
        "offset i64::MAX",
        Code::OutOfRange,
        read(i64::MAX, 1),
    );

    let update = |paths: &[&str], l: HashMap<String, String>| {
        let m = mask(paths);
        move |c: Clients| async move {
            let info = strata_proto::content::Info {
                digest: blob.into(),
                labels: l,
                ..Default::default()
            };
            c.content
                .clone()
                .update(ns(UpdateRequest {
                    info: Some(info),
                    update_mask: m,
                }))
                .await?;
            Ok(())
        }
    };
    t.add(
        C,
        "Update",
        "no info",
        Code::InvalidArgument,
        |c| async move {
            c.content
                .clone()
                .update(ns(UpdateRequest::default()))
                .await?;
            Ok(())
        },
    );
    t.add(
        C,
        "Update",
        "field path size",
        Code::InvalidArgument,
        update(&["size"], HashMap::new()),
    );
    t.add(
        C,
        "Update",
        "field path digest",
        Code::InvalidArgument,
        update(&["digest"], HashMap::new()),
    );
    t.add(
        C,
        "Update",
        "unknown field path",
        Code::InvalidArgument,
        update(&["bogus"], HashMap::new()),
    );
    for (name, l) in bad_label_sets() {
        t.add(C, "Update", name, Code::InvalidArgument, update(&[], l));
    }

    for (name, filter) in [
        ("filter with unclosed quote", "digest==\"sha256"),
        ("filter with bad operator", "digest>>x"),
        ("filter with bad regexp", "digest~=\"[\""),
        ("filter that is only an operator", "=="),
    ] {
        t.add(
            C,
            "List",
            name,
            Code::InvalidArgument,
            move |c| async move {
                let s = c
                    .content
                    .clone()
                    .list(ns(ListContentRequest {
                        filters: vec![filter.into()],
                    }))
                    .await?;
                drain(s).await
            },
        );
        t.add(
            C,
            "ListStatuses",
            name,
            Code::InvalidArgument,
            move |c| async move {
                c.content
                    .clone()
                    .list_statuses(ns(ListStatusesRequest {
                        filters: vec![filter.into()],
                    }))
                    .await?;
                Ok(())
            },
        );
    }

    for (name, r) in [
        ("empty ref", String::new()),
        ("64 KiB ref", big.clone()),
        ("ref with NUL", "a\0b".to_string()),
        ("missing ref", "no-such-ingest".to_string()),
    ] {
        // containerd looks an empty ref up like any other (local store: the ingest dir
        // named by the ref's hash) and finds nothing.
        let expect = Code::NotFound;
        let r2 = r.clone();
        t.add(C, "Status", name, expect, move |c| async move {
            c.content
                .clone()
                .status(ns(StatusRequest { r#ref: r2 }))
                .await?;
            Ok(())
        });
        let r2 = r.clone();
        t.add(C, "Abort", name, expect, move |c| async move {
            c.content
                .clone()
                .abort(ns(AbortRequest { r#ref: r2 }))
                .await?;
            Ok(())
        });
    }

    // Write: each row aborts the ingest it may have opened (see `write`).
    t.add(
        C,
        "Write",
        "empty ref",
        Code::InvalidArgument,
        |c| async move { write(c.content, vec![wmsg(WriteAction::Stat, "")]).await },
    );
    t.add(
        C,
        "Write",
        "unknown action",
        Code::InvalidArgument,
        |c| async move {
            let mut m = wmsg(WriteAction::Stat, "bad-write-action");
            m.action = 42;
            write(c.content, vec![m]).await
        },
    );
    t.add(
        C,
        "Write",
        "negative total",
        Code::InvalidArgument,
        |c| async move {
            let mut m = wmsg(WriteAction::Stat, "bad-write-total");
            m.total = -1;
            write(c.content, vec![m]).await
        },
    );
    for (name, d) in MALFORMED {
        t.add(
            C,
            "Write",
            &format!("expected {name}"),
            Code::InvalidArgument,
            move |c| async move {
                let mut m = wmsg(WriteAction::Stat, "bad-write-expected");
                m.expected = d.into();
                write(c.content, vec![m]).await
            },
        );
    }
    t.add(
        C,
        "Write",
        "expected digest already stored",
        Code::AlreadyExists,
        move |c| async move {
            let mut m = wmsg(WriteAction::Stat, "bad-write-exists");
            m.expected = blob.into();
            write(c.content, vec![m]).await
        },
    );
    // Commits that do not match.
    let bad_commit = |r: &'static str, total: i64, expected: &'static str, commit_size: i64| {
        move |c: Clients| async move {
            let mut w = wmsg(WriteAction::Write, r);
            w.data = b"hello".to_vec();
            w.total = total;
            let mut m = wmsg(WriteAction::Commit, r);
            m.total = commit_size;
            m.expected = expected.into();
            m.offset = 5;
            write(c.content.clone(), vec![w, m]).await
        }
    };
    t.add(
        C,
        "Write",
        "commit with wrong expected digest",
        Code::FailedPrecondition,
        bad_commit("bad-commit-digest", 0, ABSENT, 5),
    );
    t.add(
        C,
        "Write",
        "commit with wrong size",
        Code::FailedPrecondition,
        bad_commit("bad-commit-size", 0, "", 6),
    );
    t.add(
        C,
        "Write",
        "write at a wrong offset",
        Code::OutOfRange,
        |c| async move {
            let mut w = wmsg(WriteAction::Write, "bad-write-offset");
            w.data = b"hello".to_vec();
            w.offset = 100;
            write(c.content.clone(), vec![w]).await
        },
    );
    for (name, l) in bad_label_sets() {
        t.add(
            C,
            "Write",
            &format!("commit with {name}"),
            Code::InvalidArgument,
            move |c| async move {
                let mut w = wmsg(WriteAction::Write, "bad-write-labels");
                w.data = b"hello".to_vec();
                let mut m = wmsg(WriteAction::Commit, "bad-write-labels");
                m.offset = 5;
                m.labels = l;
                write(c.content.clone(), vec![w, m]).await
            },
        );
    }
    // The content store is a proxy backend too: the namespace header is not read.
    for (name, n) in [("no namespace", None), ("invalid namespace", Some("-bad-"))] {
        t.add(
            C,
            "Info",
            &format!("{name}, unknown digest"),
            Code::NotFound,
            move |c| async move {
                c.content
                    .clone()
                    .info(in_ns(
                        InfoRequest {
                            digest: ABSENT.into(),
                        },
                        n,
                    ))
                    .await?;
                Ok(())
            },
        );
    }
}

fn differ_cases(t: &mut Table, empty_dir: &'static str, blob: &'static str, blob_len: i64) {
    const D: &str = "diff";
    let bind = move || vec![Mount::new("bind", empty_dir, &["rbind", "rw"])];
    let apply = move |desc: Option<Descriptor>, mounts: Vec<Mount>, n: Option<&'static str>| {
        move |c: Clients| async move {
            c.diff
                .clone()
                .apply(in_ns(
                    ApplyRequest {
                        diff: desc,
                        mounts,
                        ..Default::default()
                    },
                    n,
                ))
                .await?;
            Ok(())
        }
    };
    let desc = |media: &str, digest: &str, size: i64| {
        Some(Descriptor {
            media_type: media.into(),
            digest: digest.into(),
            size,
            ..Default::default()
        })
    };
    t.add(
        D,
        "Apply",
        "no descriptor",
        Code::InvalidArgument,
        apply(None, bind(), Some(NS)),
    );
    t.add(
        D,
        "Apply",
        "unknown media type",
        Code::Unimplemented,
        apply(
            desc("application/x-bogus", blob, blob_len),
            bind(),
            Some(NS),
        ),
    );
    t.add(
        D,
        "Apply",
        "empty media type",
        Code::Unimplemented,
        apply(desc("", blob, blob_len), bind(), Some(NS)),
    );
    t.add(
        D,
        "Apply",
        "encrypted media type",
        Code::Unimplemented,
        apply(
            desc(
                "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
                blob,
                blob_len,
            ),
            bind(),
            Some(NS),
        ),
    );
    t.add(
        D,
        "Apply",
        "unknown digest",
        Code::NotFound,
        apply(desc(LAYER_TAR, ABSENT, 1024), bind(), Some(NS)),
    );
    for (name, d) in MALFORMED {
        // Like containerd's, strata's differ cannot verify a digest of another algorithm:
        // Unimplemented, which sends containerd on to its next differ.
        let expect = if name == "digest of unknown algorithm" {
            Code::Unimplemented
        } else {
            Code::InvalidArgument
        };
        t.add(
            D,
            "Apply",
            name,
            expect,
            apply(desc(LAYER_GZIP, d, 1024), bind(), Some(NS)),
        );
    }
    t.add(
        D,
        "Apply",
        "empty digest",
        Code::InvalidArgument,
        apply(desc(LAYER_TAR, "", 1024), bind(), Some(NS)),
    );
    t.add(
        D,
        "Apply",
        "no namespace, unknown digest",
        Code::NotFound,
        apply(desc(LAYER_TAR, ABSENT, 1024), bind(), None),
    );
    t.add(
        D,
        "Apply",
        "invalid namespace",
        Code::InvalidArgument,
        apply(desc(LAYER_TAR, blob, blob_len), bind(), Some("-bad-")),
    );
    t.add(
        D,
        "Apply",
        "mount of unknown type",
        // The kernel refuses the type (ENODEV). containerd's mount.All passes the errno up
        // unclassified, which goes out as Unknown; strata classes a failed mount(2) Internal.
        Code::Internal,
        apply(
            desc(LAYER_TAR, blob, blob_len),
            vec![Mount::new("bogusfs", empty_dir, &[])],
            Some(NS),
        ),
    );

    let diff = move |left: Vec<Mount>,
                     right: Vec<Mount>,
                     media: &'static str,
                     l: HashMap<String, String>,
                     n: Option<&'static str>| {
        // Like containerd's walking differ, strata's aborts the ingest of a failed Diff only
        // when it made up the ref; this one is the client's, so the row aborts it.
        move |c: Clients| async move {
            let answer = c
                .diff
                .clone()
                .diff(in_ns(
                    DiffRequest {
                        left,
                        right,
                        media_type: media.into(),
                        r#ref: "bad-diff".into(),
                        labels: l,
                        ..Default::default()
                    },
                    n,
                ))
                .await;
            abort(c.content, "bad-diff").await;
            answer.map(drop)
        }
    };
    t.add(
        D,
        "Diff",
        "unknown media type",
        Code::Unimplemented,
        diff(
            bind(),
            bind(),
            "application/x-bogus",
            HashMap::new(),
            Some(NS),
        ),
    );
    t.add(
        D,
        "Diff",
        "no namespace, unknown media type",
        Code::Unimplemented,
        diff(bind(), bind(), "application/x-bogus", HashMap::new(), None),
    );
    t.add(
        D,
        "Diff",
        "invalid namespace",
        Code::InvalidArgument,
        diff(bind(), bind(), LAYER_TAR, HashMap::new(), Some("-bad-")),
    );
    t.add(
        D,
        "Diff",
        "left mount of unknown type",
        Code::Internal,
        diff(
            vec![Mount::new("bogusfs", empty_dir, &[])],
            bind(),
            LAYER_TAR,
            HashMap::new(),
            Some(NS),
        ),
    );
    t.add(
        D,
        "Diff",
        "right mount of unknown type",
        Code::Internal,
        diff(
            bind(),
            vec![Mount::new("bogusfs", empty_dir, &[])],
            LAYER_TAR,
            HashMap::new(),
            Some(NS),
        ),
    );
    for (name, l) in bad_label_sets() {
        t.add(
            D,
            "Diff",
            name,
            Code::InvalidArgument,
            diff(bind(), bind(), LAYER_TAR, l, Some(NS)),
        );
    }
}

fn start(kind: PluginKind, dir: &Path, args: &[OsString]) -> StrataProcess {
    StrataProcess::start(kind, dir, args).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_rpc_refuses_bad_requests_with_containerds_code() {
    let dir = TestDir::new("bad-requests").unwrap();
    let content = start(PluginKind::Content, dir.path(), &[]);
    let snap = start(PluginKind::Snapshotter, dir.path(), &[]);
    let differ = start(
        PluginKind::Differ,
        dir.path(),
        &["--content-address".into(), content.socket().into()],
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let empty: &'static str = Box::leak(empty.display().to_string().into_boxed_str());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_rt = rt.enter();
    let clients = Clients {
        snap: SnapshotsClient::new(unix_channel(snap.socket())),
        content: ContentClient::new(unix_channel(content.socket())),
        diff: DiffClient::new(unix_channel(differ.socket())),
    };

    // What the rows refer to: a committed snapshot "base", an active "active" on it, and one
    // blob (an empty layer tar: 1024 zero bytes) in the content store.
    let layer = vec![0u8; 1024];
    let blob: &'static str = Box::leak(
        rt.block_on(async {
            let mut c = clients.clone();
            c.snap
                .prepare(ns(PrepareSnapshotRequest {
                    key: "base-active".into(),
                    ..Default::default()
                }))
                .await
                .unwrap();
            c.snap
                .commit(ns(CommitSnapshotRequest {
                    name: "base".into(),
                    key: "base-active".into(),
                    ..Default::default()
                }))
                .await
                .unwrap();
            c.snap
                .prepare(ns(PrepareSnapshotRequest {
                    key: "active".into(),
                    parent: "base".into(),
                    ..Default::default()
                }))
                .await
                .unwrap();
            let blob = write_blob(&mut c.content, "bad-requests-layer", &layer)
                .await
                .unwrap();
            // One good Apply and one good Diff (of two empty trees: the same empty layer), so
            // the differ's scratch dirs exist before the table.
            c.diff
                .diff(ns(DiffRequest {
                    left: vec![Mount::new("bind", empty, &["rbind", "ro"])],
                    right: vec![Mount::new("bind", empty, &["rbind", "ro"])],
                    media_type: LAYER_TAR.into(),
                    ..Default::default()
                }))
                .await
                .unwrap();
            c.diff
                .apply(ns(ApplyRequest {
                    diff: Some(Descriptor {
                        media_type: LAYER_TAR.into(),
                        digest: blob.clone(),
                        size: layer.len() as i64,
                        ..Default::default()
                    }),
                    mounts: vec![Mount::new("bind", empty, &["rbind", "rw"])],
                    ..Default::default()
                }))
                .await
                .unwrap();
            blob
        })
        .into_boxed_str(),
    );

    let mut table = Table::default();
    snapshotter_cases(&mut table);
    content_cases(&mut table, blob, layer.len() as i64);
    differ_cases(&mut table, empty, blob, layer.len() as i64);

    let roots = [
        ("strata-snapshotter", snap.root().to_path_buf()),
        ("strata-content", content.root().to_path_buf()),
        ("strata-differ", differ.root().to_path_buf()),
    ];
    let disk_before: Vec<_> = roots.iter().map(|(_, r)| disk(r)).collect();
    let api_before = rt.block_on(listings(&clients));

    let mut wrong = Vec::new();
    let mut tried: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    let mut taken: BTreeMap<&str, usize> = BTreeMap::new();
    for case in std::mem::take(&mut table.0) {
        if case.expect == Code::Ok {
            *taken.entry(case.service).or_default() += 1;
        }
        *tried
            .entry(case.service)
            .or_default()
            .entry(case.rpc)
            .or_default() += 1;
        let answer = rt
            .block_on(async {
                tokio::time::timeout(CALL_BOUND, (case.call)(clients.clone())).await
            })
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer: a hang")));
        let what = format!("{} {} [{}]", case.service, case.rpc, case.name);
        match answer {
            // A few rows are requests containerd takes in its stride (its answer is no
            // error): strata must take them too.
            Ok(()) if case.expect == Code::Ok => {}
            Ok(()) => wrong.push(format!("{what}: accepted, expected {:?}", case.expect)),
            Err(s) if s.code() != case.expect => wrong.push(format!(
                "{what}: {:?} {:?}, expected {:?}",
                s.code(),
                s.message(),
                case.expect
            )),
            Err(s) if s.message().trim().is_empty() => {
                wrong.push(format!("{what}: {:?} with an empty message", s.code()))
            }
            Err(_) => {}
        }
    }

    let api_after = rt.block_on(listings(&clients));
    if api_before != api_after {
        wrong.push(format!(
            "the APIs list something else after the bad requests:\nbefore {api_before:?}\nafter  {api_after:?}"
        ));
    }
    for ((name, root), before) in roots.iter().zip(&disk_before) {
        let mut after = disk(root);
        if *name == "strata-differ" && !before.contains("mounts") {
            // The differ makes its scratch dir for temporary mount points on the first
            // mount it needs (here: the refused unknown-type ones). The dir itself is no
            // change; a mount point left in it would be, and stays in the tree.
            after.retain(|p, _| p != Path::new("mounts"));
        }
        let changed = before.diff_with(&after, &Compare::strict().ignore_mtimes());
        if !changed.is_empty() {
            wrong.push(format!(
                "{name}'s --root {} changed:\n{}",
                root.display(),
                changed.join("\n")
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} problems with the bad requests:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    for (service, rpcs) in &tried {
        let n: usize = rpcs.values().sum();
        let per: Vec<String> = rpcs.iter().map(|(r, k)| format!("{r} {k}")).collect();
        let ok = taken.get(service).copied().unwrap_or(0);
        let ok = if ok > 0 {
            format!(" ({ok} of them taken as containerd takes them)")
        } else {
            String::new()
        };
        println!(
            "{service}: {n} bad requests{ok} [{}], all answered with the expected code and a message; nothing changed on disk",
            per.join(", ")
        );
    }
}
