//! Load: 64 concurrent clients per server, each with its own connection, run a fixed number
//! of mixed operations (content: write, commit, info, read, list, delete; snapshotter:
//! prepare, commit, view, stat, mounts, usage, list, remove; differ: apply gzip, zstd and
//! plain layers of 500 files, diff). Asserts no error at all, no hang (every call is
//! bounded), and RSS back near where it started; prints throughput, p50/p99 per call and RSS
//! start, peak, end.
//!
//! `STRATA_LOAD_ROUNDS=N` sets each client's rounds (default 3 in CI; the figures in
//! `docs/reliability.md` come from 20).
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_common::client::unix_channel;
use strata_proto::content::content_client::ContentClient;
use strata_proto::content::{DeleteContentRequest, InfoRequest, ListContentRequest};
use strata_proto::diff::diff_client::DiffClient;
use strata_proto::diff::{ApplyRequest, DiffRequest};
use strata_proto::snapshots::snapshots_client::SnapshotsClient;
use strata_proto::snapshots::{
    CommitSnapshotRequest, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, UsageRequest, ViewSnapshotRequest,
};
use strata_proto::types::{Descriptor, Mount};
use strata_testkit::Compression;
use strata_testkit::layer::Layer;
use strata_tests::bench::{read_blob, rss, write_blob};
use strata_tests::tmp::TestDir;
use strata_tests::{PluginKind, StrataProcess};
use tokio_stream::StreamExt;
use tonic::Status;

const CLIENTS: usize = 64;
/// Any one call slower than this is a hang.
const CALL_BOUND: Duration = Duration::from_secs(120);

fn rounds() -> usize {
    std::env::var("STRATA_LOAD_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// Latencies per call, shared by the clients.
#[derive(Default, Clone)]
struct Timings(Arc<Mutex<BTreeMap<&'static str, Vec<Duration>>>>);

impl Timings {
    /// Runs `call`, bounded by [`CALL_BOUND`], and records how long it took under `name`.
    async fn time<T>(
        &self,
        name: &'static str,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> T {
        let t = Instant::now();
        let out = tokio::time::timeout(CALL_BOUND, call)
            .await
            .unwrap_or_else(|_| panic!("{name} took over {CALL_BOUND:?}: a hang"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let took = t.elapsed();
        self.0.lock().unwrap().entry(name).or_default().push(took);
        out
    }

    fn report(&self, server: &str, wall: Duration, rss: &Rss) -> String {
        let all = self.0.lock().unwrap();
        let calls: usize = all.values().map(Vec::len).sum();
        let mut out = format!(
            "{server}: {CLIENTS} clients, {calls} calls in {:.2} s = {:.0} calls/s; RSS start {} MiB, peak {} MiB, end {} MiB\n",
            wall.as_secs_f64(),
            calls as f64 / wall.as_secs_f64(),
            rss.start >> 20,
            rss.peak >> 20,
            rss.end >> 20
        );
        for (name, v) in all.iter() {
            let mut v = v.clone();
            v.sort();
            let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
            out += &format!(
                "  {name:<10} {:>6} calls  p50 {:>8.2} ms  p99 {:>8.2} ms\n",
                v.len(),
                q(0.5),
                q(0.99)
            );
        }
        out
    }
}

#[derive(Default, Debug)]
struct Rss {
    start: u64,
    peak: u64,
    end: u64,
}

/// Runs `load` against the server `pid`, sampling its RSS every 10 ms; the end figure is
/// taken after two seconds of rest (servers trim their heap within a second of going idle).
fn measured<F: std::future::Future<Output = ()>>(
    rt: &tokio::runtime::Runtime,
    pid: u32,
    load: F,
) -> (Duration, Rss) {
    let start = rss(pid);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                peak = peak.max(rss(pid));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let t = Instant::now();
    rt.block_on(load);
    let wall = t.elapsed();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let peak = sampler.join().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let end = rss(pid);
    (
        wall,
        Rss {
            start,
            peak: peak.max(end),
            end,
        },
    )
}

/// The server's memory after the run stays within what its working set explains: what it
/// held before plus a bounded amount the allocator keeps for reuse.
fn assert_flat(server: &str, rss: &Rss) {
    assert!(
        rss.end <= rss.start + (96 << 20),
        "{server}: RSS grew from {} to {} MiB",
        rss.start >> 20,
        rss.end >> 20
    );
}

fn data(client: usize, round: usize, len: usize) -> Vec<u8> {
    let mut x = (client as u64 + 1) * 0x9e37_79b9 + round as u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn start(kind: PluginKind, dir: &Path, args: &[OsString]) -> StrataProcess {
    StrataProcess::start(kind, dir, args).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn content_store_under_64_clients() {
    let dir = TestDir::new("load-content").unwrap();
    let p = start(PluginKind::Content, dir.path(), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = Timings::default();
    let socket = p.socket().to_path_buf();
    let n = rounds();
    let (wall, rss) = measured(&rt, p.pid(), async {
        let clients = (0..CLIENTS).map(|i| {
            let (t, socket) = (t.clone(), socket.clone());
            tokio::spawn(async move {
                let mut c = ContentClient::new(unix_channel(&socket));
                for r in 0..n {
                    // Mostly 16-256 KiB; every fourth client's every round writes 4 MiB.
                    let len = if i % 4 == 0 {
                        4 << 20
                    } else {
                        (16 << 10) << (r % 5)
                    };
                    let blob = data(i, r, len);
                    let d = t
                        .time("Write", write_blob(&mut c, &format!("load-{i}-{r}"), &blob))
                        .await;
                    let info = t
                        .time("Info", c.info(InfoRequest { digest: d.clone() }))
                        .await;
                    assert_eq!(info.into_inner().info.unwrap().size, len as i64);
                    let got = t.time("Read", read_blob(&mut c, &d)).await;
                    assert!(got == blob, "client {i} round {r} read other bytes");
                    if r % 2 == 0 {
                        let mut s = t
                            .time("List", c.list(ListContentRequest::default()))
                            .await
                            .into_inner();
                        while let Some(m) = s.next().await {
                            m.unwrap();
                        }
                    }
                    if r % 2 == 1 {
                        t.time("Delete", c.delete(DeleteContentRequest { digest: d }))
                            .await;
                    }
                }
            })
        });
        for c in clients.collect::<Vec<_>>() {
            c.await.unwrap();
        }
    });
    let report = t.report("strata-content", wall, &rss);
    eprintln!("{report}");
    assert_flat("strata-content", &rss);
}

fn own_upper(mounts: &[Mount]) -> PathBuf {
    let m = &mounts[0];
    if m.r#type == "overlay" {
        let up = m
            .options
            .iter()
            .find_map(|o| o.strip_prefix("upperdir="))
            .expect("an upper dir");
        return PathBuf::from(up);
    }
    PathBuf::from(&m.source)
}

#[test]
fn snapshotter_under_64_clients() {
    let dir = TestDir::new("load-snap").unwrap();
    let p = start(PluginKind::Snapshotter, dir.path(), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = Timings::default();
    let socket = p.socket().to_path_buf();
    let n = rounds();
    // A shared base layer every client's snapshots sit on.
    rt.block_on(async {
        let mut c = SnapshotsClient::new(unix_channel(&socket));
        let m = c
            .prepare(PrepareSnapshotRequest {
                key: "base-active".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .mounts;
        std::fs::write(own_upper(&m).join("base"), b"base").unwrap();
        c.commit(CommitSnapshotRequest {
            name: "base".into(),
            key: "base-active".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let (wall, rss) = measured(&rt, p.pid(), async {
        let clients = (0..CLIENTS).map(|i| {
            let (t, socket) = (t.clone(), socket.clone());
            tokio::spawn(async move {
                let mut c = SnapshotsClient::new(unix_channel(&socket));
                for r in 0..n {
                    let (key, name, view) = (
                        format!("a-{i}-{r}"),
                        format!("c-{i}-{r}"),
                        format!("v-{i}-{r}"),
                    );
                    let m = t
                        .time(
                            "Prepare",
                            c.prepare(PrepareSnapshotRequest {
                                key: key.clone(),
                                parent: "base".into(),
                                ..Default::default()
                            }),
                        )
                        .await
                        .into_inner()
                        .mounts;
                    let upper = own_upper(&m);
                    for f in 0..20 {
                        std::fs::write(upper.join(format!("f{f}")), data(i, f, 4096)).unwrap();
                    }
                    t.time(
                        "Usage",
                        c.usage(UsageRequest {
                            key: key.clone(),
                            ..Default::default()
                        }),
                    )
                    .await;
                    t.time(
                        "Commit",
                        c.commit(CommitSnapshotRequest {
                            name: name.clone(),
                            key,
                            ..Default::default()
                        }),
                    )
                    .await;
                    t.time(
                        "View",
                        c.view(ViewSnapshotRequest {
                            key: view.clone(),
                            parent: name.clone(),
                            ..Default::default()
                        }),
                    )
                    .await;
                    t.time(
                        "Stat",
                        c.stat(StatSnapshotRequest {
                            key: name.clone(),
                            ..Default::default()
                        }),
                    )
                    .await;
                    t.time(
                        "Mounts",
                        c.mounts(MountsRequest {
                            key: view.clone(),
                            ..Default::default()
                        }),
                    )
                    .await;
                    if r % 2 == 0 {
                        let mut s = t
                            .time("List", c.list(ListSnapshotsRequest::default()))
                            .await
                            .into_inner();
                        while let Some(m) = s.next().await {
                            m.unwrap();
                        }
                    }
                    for key in [view, name] {
                        t.time(
                            "Remove",
                            c.remove(RemoveSnapshotRequest {
                                key,
                                ..Default::default()
                            }),
                        )
                        .await;
                    }
                }
            })
        });
        for c in clients.collect::<Vec<_>>() {
            c.await.unwrap();
        }
    });
    let report = t.report("strata-snapshotter", wall, &rss);
    eprintln!("{report}");
    assert_flat("strata-snapshotter", &rss);
}

#[test]
fn differ_under_64_clients() {
    let dir = TestDir::new("load-diff").unwrap();
    let content = start(PluginKind::Content, dir.path(), &[]);
    let p = start(
        PluginKind::Differ,
        dir.path(),
        &["--content-address".into(), content.socket().into()],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = Timings::default();
    let n = rounds();
    // Three layers, one per compression, in the content store the differ reads.
    let layers: Vec<Layer> = [Compression::Gzip, Compression::Zstd, Compression::None]
        .into_iter()
        .map(|c| {
            // 500 small files (about 2 MiB): the shape of a typical application layer.
            let img = strata_testkit::fixtures::smallfiles_scaled(c, 0.01).unwrap();
            img.layers()[0].clone()
        })
        .collect();
    rt.block_on(async {
        let mut c = ContentClient::new(unix_channel(content.socket()));
        for (k, l) in layers.iter().enumerate() {
            let d = write_blob(&mut c, &format!("layer-{k}"), &l.blob_bytes().unwrap())
                .await
                .unwrap();
            assert_eq!(d, l.digest);
        }
    });
    let work = dir.path().join("trees");
    let empty = work.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (socket, layers) = (p.socket().to_path_buf(), Arc::new(layers));
    let (wall, rss) = measured(&rt, p.pid(), async {
        let clients = (0..CLIENTS).map(|i| {
            let (t, socket, layers) = (t.clone(), socket.clone(), layers.clone());
            let (work, empty) = (work.clone(), empty.clone());
            tokio::spawn(async move {
                let mut c = DiffClient::new(unix_channel(&socket));
                for r in 0..n {
                    let l = &layers[(i + r) % layers.len()];
                    let target = work.join(format!("t-{i}-{r}"));
                    std::fs::create_dir_all(&target).unwrap();
                    t.time(
                        "Apply",
                        c.apply(ApplyRequest {
                            diff: Some(Descriptor {
                                media_type: l.media_type.clone(),
                                digest: l.digest.clone(),
                                size: l.size as i64,
                                annotations: Default::default(),
                            }),
                            mounts: vec![Mount::bind(&target, false)],
                            payloads: Default::default(),
                            sync_fs: false,
                        }),
                    )
                    .await;
                    let d = t
                        .time(
                            "Diff",
                            c.diff(DiffRequest {
                                left: vec![Mount::bind(&empty, true)],
                                right: vec![Mount::bind(&target, true)],
                                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                                ..Default::default()
                            }),
                        )
                        .await
                        .into_inner()
                        .diff
                        .expect("a descriptor");
                    assert!(d.size > 0);
                    std::fs::remove_dir_all(&target).unwrap();
                }
            })
        });
        for c in clients.collect::<Vec<_>>() {
            c.await.unwrap();
        }
    });
    let report = t.report("strata-differ", wall, &rss);
    eprintln!("{report}");
    assert_flat("strata-differ", &rss);
}
