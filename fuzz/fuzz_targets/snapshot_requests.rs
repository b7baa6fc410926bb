//! Arbitrary bytes as requests to strata-snapshotter's gRPC service: the input is cut into
//! requests ([`strata_fuzz::ops`]), each payload decoded with prost as the request its tag
//! names, and each decoded request handed to the real `Service` in process (the tonic trait
//! methods, on a current-thread runtime), over a snapshotter in `native` mode (copies, no
//! mounts) in a temporary directory.
//!
//! Invariant: no panic (errors are fine), and every List stream ends. One snapshotter serves
//! the whole process; after each input it is put back to its fixture (a committed snapshot,
//! an active one and a view on it, with labels), so an input does the same whatever ran
//! before it.

#![no_main]

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use strata_fuzz::snapshots as op;
use strata_proto::snapshots as pb;
use strata_proto::snapshots::snapshots_server::Snapshots;
use strata_snapshotter::config::{Durability, Mode, SnapshotterConfig};
use strata_snapshotter::{Kind, Service, Snapshotter};
use tokio_stream::StreamExt;
use tonic::Request;

struct State {
    rt: tokio::runtime::Runtime,
    snapshotter: Snapshotter,
    service: Service,
    labels: BTreeMap<String, String>,
    _dir: tempfile::TempDir,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        let (rt, dir) = strata_fuzz::runtime_and_dir("snapshots");
        let config = SnapshotterConfig {
            mode: Mode::Native,
            durability: Durability::Process,
            ..SnapshotterConfig::default()
        };
        let snapshotter =
            Snapshotter::open(&dir.path().join("snapshots"), config).expect("open snapshotter");
        let labels = strata_fuzz::labels(op::LABELS);
        let state = State {
            rt,
            service: Service::new(snapshotter.clone()),
            snapshotter,
            labels,
            _dir: dir,
        };
        reset(&state);
        Mutex::new(state)
    })
}

const FIXTURES: [(&str, Kind, &str); 3] = [
    (op::BASE, Kind::Committed, ""),
    (op::ACTIVE, Kind::Active, op::BASE),
    (op::VIEW_KEY, Kind::View, op::BASE),
];

/// Removes every snapshot `keep` does not name, children before parents.
fn remove_all_but(s: &Snapshotter, keep: &[&str]) {
    loop {
        let all = s.list(&[] as &[String]).expect("list snapshots");
        let doomed: Vec<_> = all
            .iter()
            .filter(|i| !keep.contains(&i.name.as_str()))
            .collect();
        if doomed.is_empty() {
            break;
        }
        let removed = doomed.iter().filter(|i| s.remove(&i.name).is_ok()).count();
        assert!(removed > 0, "no snapshot could be removed: {doomed:?}");
    }
}

/// Back to the fixture: exactly [`FIXTURES`], with their labels.
fn reset(s: &State) {
    let sn = &s.snapshotter;
    let intact = FIXTURES.iter().all(|(name, kind, parent)| {
        sn.stat(name)
            .is_ok_and(|i| i.kind == *kind && i.parent == *parent)
    });
    if intact {
        remove_all_but(sn, &FIXTURES.map(|(name, _, _)| name));
    } else {
        remove_all_but(sn, &[]);
        let key = "fixture-base";
        let mounts = sn
            .prepare(key, "", &BTreeMap::new())
            .expect("prepare the base");
        let root = std::path::Path::new(&mounts[0].source);
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::write(root.join("etc/hostname"), b"strata\n").expect("write");
        sn.commit(op::BASE, key, &s.labels, "")
            .expect("commit the base");
        sn.prepare(op::ACTIVE, op::BASE, &s.labels)
            .expect("prepare the active");
        sn.view(op::VIEW_KEY, op::BASE, &s.labels)
            .expect("view the base");
    }
    for (name, _, _) in FIXTURES {
        if sn.stat(name).expect("stat a fixture").labels != s.labels {
            sn.update(name, &s.labels, &[])
                .expect("restore a fixture's labels");
        }
    }
    sn.cleanup().expect("cleanup");
}

async fn handle(svc: &Service, tag: u8, payload: &[u8]) {
    // Each request type: decoded, then called; errors are answers like any other.
    macro_rules! call {
        ($msg:ty, $method:ident) => {
            if let Ok(r) = <$msg>::decode(payload) {
                let _ = svc.$method(Request::new(r)).await;
            }
        };
    }
    match tag % op::COUNT {
        op::PREPARE => call!(pb::PrepareSnapshotRequest, prepare),
        op::VIEW => call!(pb::ViewSnapshotRequest, view),
        op::MOUNTS => call!(pb::MountsRequest, mounts),
        op::COMMIT => call!(pb::CommitSnapshotRequest, commit),
        op::REMOVE => call!(pb::RemoveSnapshotRequest, remove),
        op::STAT => call!(pb::StatSnapshotRequest, stat),
        op::UPDATE => call!(pb::UpdateSnapshotRequest, update),
        op::LIST => {
            if let Ok(r) = pb::ListSnapshotsRequest::decode(payload)
                && let Ok(resp) = svc.list(Request::new(r)).await
            {
                let mut stream = resp.into_inner();
                while stream.next().await.is_some() {}
            }
        }
        op::USAGE => call!(pb::UsageRequest, usage),
        _ => call!(pb::CleanupRequest, cleanup),
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
