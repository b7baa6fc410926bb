//! Shared by the integration tests: a strata snapshotter served on a temporary socket, a gRPC
//! client to it, real mounts of what it hands out, and a small tree vocabulary (apply changes,
//! capture a tree, compare).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use strata_common::client::unix_channel;
use strata_common::serve::{Listener, Running, spawn};
use strata_proto::snapshots as pb;
use strata_proto::snapshots::snapshots_client::SnapshotsClient;
use strata_snapshotter::config::SnapshotterConfig;
use strata_snapshotter::mounts::{Mount, MountGuard};
use strata_snapshotter::probe::Features;
use strata_snapshotter::{SERVICE_NAME, Service, Snapshotter};
use tonic::transport::Channel;

pub type Client = SnapshotsClient<Channel>;

/// A snapshotter served over a unix socket in this process; stops when dropped.
pub struct Server {
    // First, so dropping a Server stops serving before its directory goes.
    running: Running,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub snapshotter: Snapshotter,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(SnapshotterConfig::default(), None).await
    }

    /// `features` replaces the kernel probe when given.
    pub async fn start_with(config: SnapshotterConfig, features: Option<Features>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let snapshotter = match features {
            Some(f) => Snapshotter::open_with(&root, config, f).unwrap(),
            None => Snapshotter::open(&root, config).unwrap(),
        };
        let socket = dir.path().join("snapshotter.sock");
        let listener = Listener::bind(&socket, 0o600, None).unwrap();
        let server = Service::new(snapshotter.clone()).into_server();
        let running = spawn(
            listener,
            &[SERVICE_NAME],
            move |r| r.add_service(server),
            Duration::from_secs(5),
        );
        Server {
            running,
            dir,
            socket,
            snapshotter,
        }
    }

    pub fn client(&self) -> Client {
        SnapshotsClient::new(unix_channel(&self.socket))
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A fresh empty directory for mounting or building trees.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join("work").join(name);
        std::fs::create_dir_all(&p).unwrap();
        // Snapshot roots are 0755; so is every tree they are compared with.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    pub async fn stop(self) {
        self.running.stop().await.unwrap();
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn gc_root() -> HashMap<String, String> {
    labels(&[("containerd.io/gc.root", "2026-01-01T00:00:00Z")])
}

pub fn from_proto(ms: Vec<strata_proto::types::Mount>) -> Vec<Mount> {
    ms.into_iter()
        .map(|m| Mount {
            kind: m.r#type,
            source: m.source,
            target: m.target,
            options: m.options,
        })
        .collect()
}

pub async fn prepare(c: &mut Client, key: &str, parent: &str) -> Result<Vec<Mount>, tonic::Status> {
    let r = c
        .prepare(pb::PrepareSnapshotRequest {
            snapshotter: "strata".into(),
            key: key.into(),
            parent: parent.into(),
            labels: gc_root(),
        })
        .await?;
    Ok(from_proto(r.into_inner().mounts))
}

pub async fn view(c: &mut Client, key: &str, parent: &str) -> Result<Vec<Mount>, tonic::Status> {
    let r = c
        .view(pb::ViewSnapshotRequest {
            snapshotter: "strata".into(),
            key: key.into(),
            parent: parent.into(),
            labels: gc_root(),
        })
        .await?;
    Ok(from_proto(r.into_inner().mounts))
}

pub async fn mounts(c: &mut Client, key: &str) -> Result<Vec<Mount>, tonic::Status> {
    let r = c
        .mounts(pb::MountsRequest {
            snapshotter: "strata".into(),
            key: key.into(),
        })
        .await?;
    Ok(from_proto(r.into_inner().mounts))
}

pub async fn commit(c: &mut Client, name: &str, key: &str) -> Result<(), tonic::Status> {
    commit_with(c, name, key, gc_root(), "").await
}

pub async fn commit_with(
    c: &mut Client,
    name: &str,
    key: &str,
    labels: HashMap<String, String>,
    parent: &str,
) -> Result<(), tonic::Status> {
    c.commit(pb::CommitSnapshotRequest {
        snapshotter: "strata".into(),
        name: name.into(),
        key: key.into(),
        labels,
        parent: parent.into(),
    })
    .await?;
    Ok(())
}

pub async fn remove(c: &mut Client, key: &str) -> Result<(), tonic::Status> {
    c.remove(pb::RemoveSnapshotRequest {
        snapshotter: "strata".into(),
        key: key.into(),
    })
    .await?;
    Ok(())
}

pub async fn stat(c: &mut Client, key: &str) -> Result<pb::Info, tonic::Status> {
    let r = c
        .stat(pb::StatSnapshotRequest {
            snapshotter: "strata".into(),
            key: key.into(),
        })
        .await?;
    Ok(r.into_inner().info.unwrap())
}

pub async fn usage(c: &mut Client, key: &str) -> Result<(i64, i64), tonic::Status> {
    let r = c
        .usage(pb::UsageRequest {
            snapshotter: "strata".into(),
            key: key.into(),
        })
        .await?
        .into_inner();
    Ok((r.size, r.inodes))
}

/// All List messages, so batching is visible.
pub async fn list_batches(
    c: &mut Client,
    filters: &[&str],
) -> Result<Vec<Vec<pb::Info>>, tonic::Status> {
    let mut stream = c
        .list(pb::ListSnapshotsRequest {
            snapshotter: "strata".into(),
            filters: filters.iter().map(|s| s.to_string()).collect(),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await? {
        out.push(msg.info);
    }
    Ok(out)
}

pub async fn list_names(c: &mut Client, filters: &[&str]) -> Result<Vec<String>, tonic::Status> {
    let mut names: Vec<String> = list_batches(c, filters)
        .await?
        .into_iter()
        .flatten()
        .map(|i| i.name)
        .collect();
    names.sort();
    Ok(names)
}

pub async fn cleanup(c: &mut Client) -> Result<(), tonic::Status> {
    c.cleanup(pb::CleanupRequest {
        snapshotter: "strata".into(),
    })
    .await?;
    Ok(())
}

pub fn assert_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: tonic::Code, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, got Ok({v:?})"),
        Err(s) => assert_eq!(s.code(), code, "{what}: {s:?}"),
    }
}

/// Mounts `m` on `target` until the guard drops.
pub fn mount(m: &[Mount], target: &Path) -> MountGuard {
    MountGuard::mount(m, target)
        .unwrap_or_else(|e| panic!("mount {m:?} on {}: {e}", target.display()))
}

/// A change to a tree, in the spirit of continuity's `fstest` appliers.
#[derive(Clone, Debug)]
pub enum Op {
    File(&'static str, Vec<u8>, u32),
    Dir(&'static str, u32),
    RemoveAll(&'static str),
    Link(&'static str, &'static str),
    Symlink(&'static str, &'static str),
    Chown(&'static str, u32, u32),
    Rename(&'static str, &'static str),
}

pub fn file(p: &'static str, content: &str, mode: u32) -> Op {
    Op::File(p, content.as_bytes().to_vec(), mode)
}

pub fn apply(root: &Path, ops: &[Op]) {
    for op in ops {
        let at = |p: &str| root.join(p.trim_start_matches('/'));
        match op {
            Op::File(p, content, mode) => {
                std::fs::write(at(p), content).unwrap();
                std::fs::set_permissions(at(p), std::fs::Permissions::from_mode(*mode)).unwrap();
            }
            Op::Dir(p, mode) => {
                std::fs::create_dir(at(p)).unwrap();
                std::fs::set_permissions(at(p), std::fs::Permissions::from_mode(*mode)).unwrap();
            }
            Op::RemoveAll(p) => {
                let path = at(p);
                match std::fs::symlink_metadata(&path) {
                    Ok(md) if md.is_dir() => std::fs::remove_dir_all(&path).unwrap(),
                    Ok(_) => std::fs::remove_file(&path).unwrap(),
                    Err(_) => {}
                }
            }
            Op::Link(old, new) => std::fs::hard_link(at(old), at(new)).unwrap(),
            Op::Symlink(target, link) => std::os::unix::fs::symlink(target, at(link)).unwrap(),
            Op::Chown(p, uid, gid) => {
                std::os::unix::fs::lchown(at(p), Some(*uid), Some(*gid)).unwrap()
            }
            Op::Rename(a, b) => std::fs::rename(at(a), at(b)).unwrap(),
        }
    }
}

/// What a tree looks like: every path with its type, mode, owner and contents.
pub fn capture(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let md = e.path().symlink_metadata().unwrap();
        let ft = md.file_type();
        let body = if ft.is_symlink() {
            format!(
                "symlink -> {}",
                std::fs::read_link(e.path()).unwrap().display()
            )
        } else if ft.is_file() {
            format!(
                "file {:?}",
                String::from_utf8_lossy(&std::fs::read(e.path()).unwrap())
            )
        } else if ft.is_dir() {
            "dir".to_string()
        } else {
            format!("special rdev={}", md.rdev())
        };
        // Directory mtimes and link counts differ legitimately between an overlay and a
        // flat copy (see the facts file on hardlinks through overlay); compare the rest.
        out.insert(
            format!("/{rel}"),
            format!(
                "{body} mode={:o} uid={} gid={}",
                md.mode() & 0o7777,
                md.uid(),
                md.gid()
            ),
        );
    }
    out
}

pub fn assert_same_tree(expected: &Path, actual: &Path, what: &str) {
    let a = capture(expected);
    let b = capture(actual);
    if a != b {
        let mut diff = String::new();
        for (k, v) in &a {
            match b.get(k) {
                None => diff.push_str(&format!("  missing {k}: {v}\n")),
                Some(w) if w != v => diff.push_str(&format!("  differs {k}: want {v}, got {w}\n")),
                _ => {}
            }
        }
        for (k, v) in &b {
            if !a.contains_key(k) {
                diff.push_str(&format!("  extra {k}: {v}\n"));
            }
        }
        panic!("{what}: trees differ\n{diff}");
    }
}
