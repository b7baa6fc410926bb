//! strata-snapshotter under kill cycles: four clients prepare (on committed parents), write a
//! marker file into the upper dir, commit, view and remove snapshots while the server is
//! killed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_common::client::unix_channel;
use strata_proto::snapshots::snapshots_client::SnapshotsClient;
use strata_proto::snapshots::{
    CleanupRequest, CommitSnapshotRequest, Kind, ListSnapshotsRequest, MountsRequest,
    PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest, UsageRequest,
    ViewSnapshotRequest,
};
use strata_proto::types::Mount;
use strata_tests::PluginKind;
use strata_tests::tmp::TestDir;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::rng::Rng;
use crate::{Cycles, start};

type Client = SnapshotsClient<Channel>;

const POINTS: &[&str] = &[
    "snapshotter.create.renamed",
    "snapshotter.commit.in_transaction",
    "snapshotter.commit.done",
    "snapshotter.remove.in_transaction",
    "snapshotter.remove.row_deleted",
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// Prepare or View sent; unknown after a crash.
    Creating,
    /// Active (or a view), acknowledged.
    Active,
    /// Commit sent (the snapshot is `key` or `name`); unknown after a crash.
    Committing,
    Committed,
    /// Remove sent; unknown after a crash.
    Removing,
    Removed,
}

#[derive(Clone, Debug)]
struct Snap {
    /// The key it was prepared under (its marker's name).
    key: String,
    /// Its name once committed.
    name: String,
    parent: String,
    view: bool,
    state: State,
    /// Whether the marker file was written into its upper dir.
    marked: bool,
}

impl Snap {
    /// The key or name it goes by in state `state`.
    fn id(&self) -> &str {
        match self.state {
            State::Committed => &self.name,
            _ => &self.key,
        }
    }
}

#[derive(Default)]
struct Model {
    snaps: Vec<Snap>,
    next: u64,
}

type Shared = Arc<Mutex<Model>>;

fn lock(m: &Shared) -> std::sync::MutexGuard<'_, Model> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn server_gone(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

pub fn run() {
    let mut rng = Rng::from_env("snapshotter kill cycles");
    let dir = TestDir::new("kc-snap").unwrap();
    let model: Shared = Arc::default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cycles = Cycles {
        kind: PluginKind::Snapshotter,
        dir: dir.path(),
        args: Vec::new(),
        points: POINTS,
        // The check makes and removes views.
        check_writes: true,
        reach_within: Duration::from_secs(5),
    };
    cycles.run(
        &rt,
        &mut rng,
        |p| rt.block_on(check(p.socket(), p.root(), &model)),
        |p, stop, seed| {
            let (socket, model) = (p.socket().to_path_buf(), model.clone());
            rt.spawn(async move { worker(&socket, &model, &stop, seed).await })
        },
    );
    let mut p = start(PluginKind::Snapshotter, dir.path(), &[], None);
    rt.block_on(check(p.socket(), p.root(), &model))
        .unwrap_or_else(|e| panic!("after the last cycle: {e}\n{}", p.log_tail(60)));
    p.stop();
    let m = lock(&model);
    let count = |s: State| m.snaps.iter().filter(|b| b.state == s).count();
    eprintln!(
        "snapshotter kill cycles: {} snapshots made, {} active, {} committed, {} removed",
        m.snaps.len(),
        count(State::Active),
        count(State::Committed),
        count(State::Removed)
    );
    assert!(
        count(State::Committed) > 0,
        "the workload committed nothing"
    );
}

/// The directory a snapshot's own files are in, from its mounts: the upper dir of an overlay,
/// else the bind mount's source (a snapshot without parents, or a view of one layer).
fn own_dir(mounts: &[Mount], view: bool) -> Option<PathBuf> {
    let m = mounts.first()?;
    if m.r#type == "overlay" {
        let key = if view { "lowerdir=" } else { "upperdir=" };
        let opt = m.options.iter().find_map(|o| o.strip_prefix(key))?;
        return Some(PathBuf::from(opt.split(':').next()?));
    }
    Some(PathBuf::from(&m.source))
}

fn every_dir(mounts: &[Mount]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for m in mounts {
        if m.r#type == "overlay" {
            for o in &m.options {
                for key in ["lowerdir=", "upperdir=", "workdir="] {
                    if let Some(v) = o.strip_prefix(key) {
                        out.extend(v.split(':').map(PathBuf::from));
                    }
                }
            }
        } else {
            out.push(PathBuf::from(&m.source));
        }
    }
    out
}

async fn stat(c: &mut Client, key: &str) -> Result<Option<(Kind, String)>, Status> {
    match c
        .stat(StatSnapshotRequest {
            key: key.to_string(),
            ..Default::default()
        })
        .await
    {
        Ok(r) => {
            let i = r.into_inner().info.unwrap_or_default();
            Ok(Some((i.kind(), i.parent)))
        }
        Err(e) if e.code() == Code::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Checks the snapshotter against the model after a restart and settles what was in flight.
async fn check(socket: &Path, root: &Path, model: &Shared) -> Result<(), String> {
    let mut c = SnapshotsClient::new(unix_channel(socket));
    let snaps = lock(model).snaps.clone();
    let mut settled = Vec::with_capacity(snaps.len());
    for (i, s) in snaps.iter().enumerate() {
        let by_key = stat(&mut c, &s.key)
            .await
            .map_err(|e| format!("Stat {}: {e}", s.key))?;
        let by_name = if s.name.is_empty() {
            None
        } else {
            stat(&mut c, &s.name)
                .await
                .map_err(|e| format!("Stat {}: {e}", s.name))?
        };
        let want_kind = if s.view { Kind::View } else { Kind::Active };
        let state = match (s.state, &by_key, &by_name) {
            (_, Some(_), Some(_)) => {
                return Err(format!("snapshot {i} is there as {} and {}", s.key, s.name));
            }
            (State::Active, None, _) => return Err(format!("active {} lost", s.key)),
            (State::Committed, _, None) => return Err(format!("committed {} lost", s.name)),
            (State::Removed, Some(_), _) | (State::Removed, _, Some(_)) => {
                return Err(format!("removed snapshot {i} is back"));
            }
            (
                State::Creating | State::Active | State::Committing | State::Removing,
                Some(k),
                None,
            ) => {
                if k.0 != want_kind {
                    return Err(format!("{} is {:?}, not {want_kind:?}", s.key, k.0));
                }
                State::Active
            }
            (State::Committing | State::Committed | State::Removing, None, Some(k)) => {
                if k.0 != Kind::Committed {
                    return Err(format!("{} is {:?}, not committed", s.name, k.0));
                }
                State::Committed
            }
            (State::Creating, None, Some(_)) => {
                return Err(format!("{} never committed, yet named", s.key));
            }
            (
                State::Creating | State::Committing | State::Removing | State::Removed,
                None,
                None,
            ) => State::Removed,
        };
        let (_, parent) = by_key.or(by_name).unwrap_or((Kind::Unknown, String::new()));
        if state != State::Removed && parent != s.parent {
            return Err(format!(
                "snapshot {i} has parent {parent:?}, not {:?}",
                s.parent
            ));
        }
        settled.push(Snap { state, ..s.clone() });
    }
    // Files and directories agree with the metadata.
    for s in &settled {
        let mounts = match s.state {
            State::Active => {
                c.mounts(MountsRequest {
                    key: s.key.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("Mounts {}: {e}", s.key))?
                .into_inner()
                .mounts
            }
            State::Committed => {
                let key = format!("check-{}", s.name);
                let m = c
                    .view(ViewSnapshotRequest {
                        key: key.clone(),
                        parent: s.name.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| format!("View {}: {e}", s.name))?
                    .into_inner()
                    .mounts;
                c.remove(RemoveSnapshotRequest {
                    key,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("Remove view of {}: {e}", s.name))?;
                m
            }
            _ => continue,
        };
        for d in every_dir(&mounts) {
            if !d.is_dir() {
                return Err(format!("{} mounts missing {}", s.id(), d.display()));
            }
        }
        let own = own_dir(&mounts, s.state == State::Committed || s.view)
            .ok_or_else(|| format!("{}: no own dir in {mounts:?}", s.id()))?;
        let marker = own.join(format!("marker-{}", s.key));
        if s.marked && std::fs::read_to_string(&marker).ok().as_deref() != Some(s.key.as_str()) {
            return Err(format!("{}: marker missing in {}", s.id(), own.display()));
        }
        c.usage(UsageRequest {
            key: s.id().to_string(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("Usage {}: {e}", s.id()))?;
    }
    let mut listed = BTreeMap::new();
    let mut stream = c
        .list(ListSnapshotsRequest::default())
        .await
        .map_err(|e| format!("List: {e}"))?
        .into_inner();
    while let Some(m) = stream.message().await.map_err(|e| format!("List: {e}"))? {
        for i in m.info {
            listed.insert(i.name.clone(), i.kind());
        }
    }
    let live: BTreeMap<String, Kind> = settled
        .iter()
        .filter_map(|s| match s.state {
            State::Active if s.view => Some((s.key.clone(), Kind::View)),
            State::Active => Some((s.key.clone(), Kind::Active)),
            State::Committed => Some((s.name.clone(), Kind::Committed)),
            _ => None,
        })
        .collect();
    if listed != live {
        return Err(format!(
            "List disagrees with the model:\n{listed:?}\n{live:?}"
        ));
    }
    // Cleanup reaps what crashes left; then every directory belongs to a snapshot.
    c.cleanup(CleanupRequest::default())
        .await
        .map_err(|e| format!("Cleanup: {e}"))?;
    let dirs = std::fs::read_dir(root.join("snapshots"))
        .map_err(|e| format!("read snapshots/: {e}"))?
        .count();
    if dirs != live.len() {
        return Err(format!(
            "{dirs} directories under snapshots/ after Cleanup for {} snapshots",
            live.len()
        ));
    }
    let mut m = lock(model);
    m.snaps = settled;
    Ok(())
}

async fn worker(socket: &Path, model: &Shared, stop: &AtomicBool, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let mut c = SnapshotsClient::new(unix_channel(socket));
    while !stop.load(Ordering::SeqCst) {
        // Removals outpace creations once there are enough snapshots, so that checking them
        // after each restart stays quick over hundreds of cycles.
        let crowded = lock(model)
            .snaps
            .iter()
            .filter(|s| !matches!(s.state, State::Removed))
            .count()
            > 300;
        let op = match rng.below(100) {
            0..40 if crowded => 80,
            op => op,
        };
        let done = match op {
            0..40 => prepare(&mut c, model, &mut rng, false).await,
            40..50 => prepare(&mut c, model, &mut rng, true).await,
            50..75 => commit(&mut c, model, &mut rng).await,
            _ => remove(&mut c, model, &mut rng).await,
        };
        match done {
            Ok(()) => {}
            Err(e) if server_gone(&e) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// Prepares (or views) a new snapshot on a random committed parent (or none) and writes its
/// marker into its upper dir.
async fn prepare(c: &mut Client, model: &Shared, rng: &mut Rng, view: bool) -> Result<(), Status> {
    let (i, key, parent) = {
        let mut m = lock(model);
        let parents: Vec<String> = m
            .snaps
            .iter()
            .filter(|s| s.state == State::Committed)
            .map(|s| s.name.clone())
            .collect();
        if view && parents.is_empty() {
            return Ok(());
        }
        let parent = if parents.is_empty() || (!view && rng.chance(20)) {
            String::new()
        } else {
            parents[rng.below(parents.len() as u64) as usize].clone()
        };
        m.next += 1;
        let key = format!("{}-{}", if view { "view" } else { "active" }, m.next);
        m.snaps.push(Snap {
            key: key.clone(),
            name: String::new(),
            parent: parent.clone(),
            view,
            state: State::Creating,
            marked: false,
        });
        (m.snaps.len() - 1, key, parent)
    };
    let mounts = if view {
        c.view(ViewSnapshotRequest {
            key: key.clone(),
            parent,
            ..Default::default()
        })
        .await?
        .into_inner()
        .mounts
    } else {
        c.prepare(PrepareSnapshotRequest {
            key: key.clone(),
            parent,
            ..Default::default()
        })
        .await?
        .into_inner()
        .mounts
    };
    lock(model).snaps[i].state = State::Active;
    if !view {
        let own = own_dir(&mounts, false)
            .ok_or_else(|| Status::internal(format!("{key}: no upper dir in {mounts:?}")))?;
        std::fs::write(own.join(format!("marker-{key}")), &key)
            .map_err(|e| Status::internal(format!("{key}: writing its marker: {e}")))?;
        lock(model).snaps[i].marked = true;
    }
    Ok(())
}

async fn commit(c: &mut Client, model: &Shared, rng: &mut Rng) -> Result<(), Status> {
    let (i, key, name) = {
        let mut m = lock(model);
        let ids: Vec<usize> = (0..m.snaps.len())
            .filter(|&i| m.snaps[i].state == State::Active && !m.snaps[i].view && m.snaps[i].marked)
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let i = ids[rng.below(ids.len() as u64) as usize];
        m.next += 1;
        let name = format!("committed-{}", m.next);
        m.snaps[i].name = name.clone();
        m.snaps[i].state = State::Committing;
        (i, m.snaps[i].key.clone(), name)
    };
    c.commit(CommitSnapshotRequest {
        name,
        key,
        ..Default::default()
    })
    .await?;
    lock(model).snaps[i].state = State::Committed;
    Ok(())
}

/// Removes a random snapshot that has no children (in the model: none being created on it).
async fn remove(c: &mut Client, model: &Shared, rng: &mut Rng) -> Result<(), Status> {
    let (i, id) = {
        let mut m = lock(model);
        let parents: std::collections::HashSet<String> = m
            .snaps
            .iter()
            .filter(|s| s.state != State::Removed)
            .map(|s| s.parent.clone())
            .collect();
        let ids: Vec<usize> = (0..m.snaps.len())
            .filter(|&i| {
                let s = &m.snaps[i];
                s.state == State::Active
                    || (s.state == State::Committed && !parents.contains(&s.name))
            })
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let i = ids[rng.below(ids.len() as u64) as usize];
        let id = m.snaps[i].id().to_string();
        m.snaps[i].state = State::Removing;
        (i, id)
    };
    c.remove(RemoveSnapshotRequest {
        key: id,
        ..Default::default()
    })
    .await?;
    lock(model).snaps[i].state = State::Removed;
    Ok(())
}
