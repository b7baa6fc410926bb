//! The Snapshots API through containerd's socket, call by call: the built-in `overlayfs`
//! against strata-snapshotter, both behind containerd's metadata layer.
//!
//! Both stacks run side by side for the whole workload and take turns call round by call
//! round (the order flips every round), so drift (page cache, other load) hits both alike.
//! Every snapshot carries a `containerd.io/gc.root` label, so containerd's garbage collector
//! leaves it alone until the workload removes it. Commit against layer size writes the files
//! straight into the active snapshot's directory (the bench runs as root on containerd's
//! machine). The same per-call rounds straight on a strata-snapshotter's socket are reference
//! rows: its ceiling, and what containerd's proxy hop costs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata_common::client::unix_channel;
use strata_common::namespace::RequestContext;
use strata_proto::snapshots as pb;
use strata_proto::snapshots::snapshots_client::SnapshotsClient;
use strata_proto::types::Mount;
use strata_tests::bench::sync;
use strata_tests::metrics::Scrape;
use strata_tests::tmp::TestDir;
use strata_tests::{PluginKind, StrataProcess};
use tonic::transport::Channel;

use super::{Ctx, Result};
use crate::report::{Reference, Row, Section, Unit};
use crate::side::Side;
use crate::stats::summary;

/// The calls of one round, in the order they are made.
const OPS: [&str; 8] = [
    "Prepare (on a committed parent)",
    "Mounts",
    "Stat (active)",
    "Usage (active)",
    "Commit (empty layer)",
    "View",
    "Stat (committed)",
    "Remove (a view)",
];

/// How much of each measurement a run makes.
#[derive(Clone, Debug, PartialEq)]
struct Sizes {
    /// Rounds of [`OPS`] per stack and run.
    rounds: usize,
    /// Snapshots listed by List.
    listed: usize,
    /// List calls per stack and run.
    lists: usize,
    /// Files of the layers committed in Commit against layer size.
    files: Vec<usize>,
    /// Quiet time before each of those commits.
    settle: Duration,
}

fn sizes(quick: bool) -> Sizes {
    if quick {
        Sizes {
            rounds: 10,
            listed: 50,
            lists: 3,
            files: vec![100, 1000],
            settle: Duration::from_millis(200),
        }
    } else {
        Sizes {
            rounds: 200,
            listed: 1000,
            lists: 10,
            files: vec![1000, 10_000, 100_000],
            settle: Duration::from_secs(2),
        }
    }
}

fn gc_root() -> HashMap<String, String> {
    HashMap::from([(
        "containerd.io/gc.root".to_string(),
        "strata-bench".to_string(),
    )])
}

/// A Snapshots client for one snapshotter on one socket (containerd's, or a snapshotter's
/// own), each call's failure an error naming it.
pub struct Snaps {
    client: SnapshotsClient<Channel>,
    cx: RequestContext,
    snapshotter: String,
}

impl Snaps {
    /// Call it inside the tokio runtime.
    pub fn new(socket: &Path, cx: RequestContext, snapshotter: &str) -> Snaps {
        Snaps {
            client: SnapshotsClient::new(unix_channel(socket)).max_decoding_message_size(16 << 20),
            cx,
            snapshotter: snapshotter.to_string(),
        }
    }

    fn req<T>(&self, m: T) -> Result<tonic::Request<T>> {
        self.cx.request(m).map_err(|e| e.to_string())
    }

    pub async fn prepare(&mut self, key: &str, parent: &str) -> Result<Vec<Mount>> {
        let r = self.req(pb::PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
            parent: parent.into(),
            labels: gc_root(),
        })?;
        Ok(self
            .client
            .prepare(r)
            .await
            .map_err(|e| format!("Prepare {key}: {e}"))?
            .into_inner()
            .mounts)
    }

    pub async fn view(&mut self, key: &str, parent: &str) -> Result<()> {
        let r = self.req(pb::ViewSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
            parent: parent.into(),
            labels: gc_root(),
        })?;
        self.client
            .view(r)
            .await
            .map_err(|e| format!("View {key}: {e}"))?;
        Ok(())
    }

    pub async fn commit(&mut self, name: &str, key: &str) -> Result<()> {
        let r = self.req(pb::CommitSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            name: name.into(),
            key: key.into(),
            labels: gc_root(),
            parent: String::new(),
        })?;
        self.client
            .commit(r)
            .await
            .map_err(|e| format!("Commit {key}: {e}"))?;
        Ok(())
    }

    pub async fn remove(&mut self, key: &str) -> Result<()> {
        let r = self.req(pb::RemoveSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
        })?;
        self.client
            .remove(r)
            .await
            .map_err(|e| format!("Remove {key}: {e}"))?;
        Ok(())
    }

    pub async fn stat(&mut self, key: &str) -> Result<()> {
        let r = self.req(pb::StatSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
        })?;
        self.client
            .stat(r)
            .await
            .map_err(|e| format!("Stat {key}: {e}"))?;
        Ok(())
    }

    pub async fn mounts(&mut self, key: &str) -> Result<()> {
        let r = self.req(pb::MountsRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
        })?;
        self.client
            .mounts(r)
            .await
            .map_err(|e| format!("Mounts {key}: {e}"))?;
        Ok(())
    }

    pub async fn usage(&mut self, key: &str) -> Result<()> {
        let r = self.req(pb::UsageRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
        })?;
        self.client
            .usage(r)
            .await
            .map_err(|e| format!("Usage {key}: {e}"))?;
        Ok(())
    }

    /// Every snapshot, as one List stream read to its end: how many there are.
    pub async fn list(&mut self) -> Result<usize> {
        let r = self.req(pb::ListSnapshotsRequest {
            snapshotter: self.snapshotter.clone(),
            filters: Vec::new(),
        })?;
        let mut s = self
            .client
            .list(r)
            .await
            .map_err(|e| format!("List: {e}"))?
            .into_inner();
        let mut n = 0;
        while let Some(m) = s.message().await.map_err(|e| format!("List: {e}"))? {
            n += m.info.len();
        }
        Ok(n)
    }

    /// One round of [`OPS`] on a new snapshot `PREFIX-a` on `base`: each call's seconds.
    async fn round(&mut self, prefix: &str, base: &str) -> Result<[f64; OPS.len()]> {
        let key = format!("{prefix}-a");
        let view = format!("{prefix}-v");
        let mut secs = [0.0; OPS.len()];
        let mut t = Instant::now();
        let mut lap = |i: usize| {
            secs[i] = t.elapsed().as_secs_f64();
            t = Instant::now();
        };
        self.prepare(&key, base).await?;
        lap(0);
        self.mounts(&key).await?;
        lap(1);
        self.stat(&key).await?;
        lap(2);
        self.usage(&key).await?;
        lap(3);
        self.commit(prefix, &key).await?;
        lap(4);
        self.view(&view, prefix).await?;
        lap(5);
        self.stat(prefix).await?;
        lap(6);
        self.remove(&view).await?;
        lap(7);
        self.remove(prefix).await?;
        Ok(secs)
    }
}

/// Where an active snapshot without parent keeps its files: the bind mount's source, or the
/// overlay's upperdir.
fn own_dir(mounts: &[Mount]) -> Result<PathBuf> {
    let m = mounts.first().ok_or("no mounts")?;
    if m.r#type == "bind" {
        return Ok(PathBuf::from(&m.source));
    }
    m.options
        .iter()
        .find_map(|o| o.strip_prefix("upperdir="))
        .map(PathBuf::from)
        .ok_or_else(|| format!("no upperdir in {m:?}"))
}

/// `files` small files under `dir`, 1000 to a subdirectory.
fn write_files(dir: &Path, files: usize) -> Result<()> {
    const PER_DIR: usize = 1000;
    for d in 0..files.div_ceil(PER_DIR) {
        let sub = dir.join(format!("d{d}"));
        std::fs::create_dir(&sub).map_err(|e| format!("{}: {e}", sub.display()))?;
        for f in 0..PER_DIR.min(files - d * PER_DIR) {
            let path = sub.join(format!("f{f}"));
            std::fs::write(&path, b"strata bench file\n")
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// The median of each op's samples: one run's figure per op.
fn medians(samples: &[Vec<f64>; OPS.len()]) -> [f64; OPS.len()] {
    std::array::from_fn(|i| summary(&samples[i]).median)
}

pub fn run(ctx: &Ctx) -> Result<Section> {
    let sizes = sizes(ctx.quick);
    let stacks = [Side::Builtin, Side::Strata]
        .map(|side| side.start(ctx.version).map_err(|e| e.to_string()));
    let [builtin, strata] = stacks;
    let (builtin, strata) = (builtin?, strata?);
    // A strata-snapshotter of its own for the reference rows: containerd's garbage collector
    // would remove what a client makes behind its back on the stack's one.
    let alone_dir = TestDir::new("snapshotter-alone").map_err(|e| e.to_string())?;
    let alone_server = StrataProcess::start(PluginKind::Snapshotter, alone_dir.path(), &[])
        .map_err(|e| e.to_string())?;
    // And one with a metrics endpoint, whose rounds alternate with the first's: what metrics
    // cost per call (issue 14).
    let metered_dir = TestDir::new("snapshotter-metered").map_err(|e| e.to_string())?;
    let metrics_socket = metered_dir.join("metrics.sock");
    let metered_server = StrataProcess::start(
        PluginKind::Snapshotter,
        metered_dir.path(),
        &["--metrics-address".into(), metrics_socket.clone().into()],
    )
    .map_err(|e| e.to_string())?;
    let stack = |side| {
        if side == Side::Builtin {
            &builtin
        } else {
            &strata
        }
    };

    let mut ops: Vec<Row> = OPS
        .iter()
        .map(|op| Row::new(*op, Unit::Seconds, None))
        .collect();
    let mut direct: Vec<Reference> = OPS
        .iter()
        .map(|op| {
            Reference::new(
                format!("{op}, strata-snapshotter alone on its socket"),
                Unit::Seconds,
            )
        })
        .collect();
    let mut metered: Vec<Row> = OPS
        .iter()
        .map(|op| {
            Row::new(
                format!("{op}, strata-snapshotter alone"),
                Unit::Seconds,
                None,
            )
            .between("metrics off", "metrics on")
        })
        .collect();
    let mut list = Row::new(format!("List of {}", sizes.listed), Unit::Seconds, None);
    let mut commits: Vec<Row> = sizes
        .files
        .iter()
        .map(|n| {
            Row::new(
                format!("Commit of a layer of {n} files"),
                Unit::Seconds,
                None,
            )
        })
        .collect();

    ctx.rt.block_on(async {
        let mut clients = [Side::Builtin, Side::Strata].map(|side| {
            let s = stack(side);
            let cx = RequestContext::with_namespace(s.containerd.namespace());
            Snaps::new(&s.containerd.socket(), cx, side.snapshotter())
        });
        let mut alone = Snaps::new(alone_server.socket(), RequestContext::default(), "");
        let mut with_metrics = Snaps::new(metered_server.socket(), RequestContext::default(), "");

        // A committed base each, so that Prepare and View have a parent, as in real use.
        for side in [Side::Builtin, Side::Strata] {
            let c = &mut clients[side as usize];
            c.prepare("base-a", "").await?;
            c.commit("base", "base-a").await?;
        }
        for c in [&mut alone, &mut with_metrics] {
            c.prepare("base-a", "").await?;
            c.commit("base", "base-a").await?;
        }

        for run in 0..ctx.runs {
            let mut samples: [[Vec<f64>; OPS.len()]; 2] = Default::default();
            let mut alone_samples: [Vec<f64>; OPS.len()] = Default::default();
            let mut metered_samples: [Vec<f64>; OPS.len()] = Default::default();
            for i in 0..sizes.rounds {
                for side in Side::order(run + i) {
                    let got = clients[side as usize]
                        .round(&format!("r{run}-{i}"), "base")
                        .await?;
                    for (v, s) in got.into_iter().zip(&mut samples[side as usize]) {
                        s.push(v);
                    }
                }
                for metrics in Side::order(run + i) {
                    let (c, samples) = match metrics {
                        Side::Builtin => (&mut alone, &mut alone_samples),
                        Side::Strata => (&mut with_metrics, &mut metered_samples),
                    };
                    let got = c.round(&format!("r{run}-{i}"), "base").await?;
                    for (v, s) in got.into_iter().zip(samples) {
                        s.push(v);
                    }
                }
            }
            for side in [Side::Builtin, Side::Strata] {
                for (row, m) in ops.iter_mut().zip(medians(&samples[side as usize])) {
                    row.push(side, m);
                }
            }
            let off = medians(&alone_samples);
            for (r, m) in direct.iter_mut().zip(off) {
                r.samples.push(m);
            }
            for ((row, off), on) in metered.iter_mut().zip(off).zip(medians(&metered_samples)) {
                row.push(Side::Builtin, off);
                row.push(Side::Strata, on);
            }
        }

        // List: containerd lists its own metadata and asks the snapshotter for each one.
        for side in [Side::Builtin, Side::Strata] {
            let c = &mut clients[side as usize];
            for i in 0..sizes.listed {
                c.prepare(&format!("list-{i}"), "").await?;
            }
        }
        for run in 0..ctx.runs {
            for side in Side::order(run) {
                let c = &mut clients[side as usize];
                let mut secs = Vec::new();
                for _ in 0..sizes.lists {
                    let t = Instant::now();
                    let n = c.list().await?;
                    secs.push(t.elapsed().as_secs_f64());
                    if n < sizes.listed {
                        return Err(format!(
                            "{side:?}: listed {n}, expected at least {}",
                            sizes.listed
                        ));
                    }
                }
                list.push(side, summary(&secs).median);
            }
        }
        for side in [Side::Builtin, Side::Strata] {
            let c = &mut clients[side as usize];
            for i in 0..sizes.listed {
                c.remove(&format!("list-{i}")).await?;
            }
        }

        // Commit against layer size. The committed layers stay until the stacks go: removing
        // one would have containerd's GC deleting its files under the next commit.
        for (row, &files) in commits.iter_mut().zip(&sizes.files) {
            for run in 0..ctx.runs {
                for side in Side::order(run) {
                    let c = &mut clients[side as usize];
                    let key = format!("files-{files}-{run}-a");
                    let dir = own_dir(&c.prepare(&key, "").await?)?;
                    write_files(&dir, files)?;
                    // Every commit starts from a quiet machine: not behind the files'
                    // writeback, nor beside strata's background measurement of the previous
                    // layer. Twice: on a loop device, the first sync's writeback dirties the
                    // backing file, maybe after that sync passed the file system under it.
                    sync();
                    sync();
                    tokio::time::sleep(sizes.settle).await;
                    let t = Instant::now();
                    c.commit(&format!("files-{files}-{run}"), &key).await?;
                    row.push(side, t.elapsed().as_secs_f64());
                }
            }
        }
        Ok::<_, String>(())
    })?;

    // The endpoint served what the calls did, or the "on" column measured nothing.
    let scrape = Scrape::unix(&metrics_socket);
    let prepares = scrape.value(
        "strata_snapshotter_requests_total",
        &[("method", "Prepare")],
    );
    if prepares.unwrap_or(0.0) < 1.0 {
        return Err(format!(
            "the metered strata-snapshotter counted no Prepare:\n{}",
            scrape.text
        ));
    }

    let mut rows = ops;
    rows.push(list);
    rows.extend(commits);
    rows.extend(metered);
    Ok(Section {
        title: "Snapshots".into(),
        about: format!(
            "A client on containerd's socket, seconds per call: rounds of Prepare on a \
             committed parent, Mounts, Stat, Usage, Commit, View of the commit, Stat of it, \
             Remove of the view ({} rounds per stack and run, the stacks alternating round by \
             round; a run's figure is its median); List of {} snapshots ({} calls per run, \
             median); Commit of a parentless layer of N one-line files written into the \
             snapshot's directory, after a sync and {:.1} s of quiet. Built-in: `overlayfs`. \
             Reference rows: the same rounds on the socket of a strata-snapshotter of its \
             own, with no containerd in between. The metrics rows: those rounds alternated \
             with the same on a second strata-snapshotter that serves a metrics endpoint \
             (`--metrics-address`, a unix socket, scraped at the end), to show what metrics \
             cost per call.",
            sizes.rounds,
            sizes.listed,
            sizes.lists,
            sizes.settle.as_secs_f64()
        ),
        rows,
        references: direct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_dir_is_the_bind_source_or_the_upperdir() {
        let bind = Mount {
            r#type: "bind".into(),
            source: "/snaps/1/fs".into(),
            options: vec!["rw".into(), "rbind".into()],
            ..Default::default()
        };
        assert_eq!(
            own_dir(&[bind]).expect("bind"),
            PathBuf::from("/snaps/1/fs")
        );
        let overlay = Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "lowerdir=/l".into(),
                "upperdir=/u/fs".into(),
                "workdir=/w".into(),
            ],
            ..Default::default()
        };
        assert_eq!(
            own_dir(&[overlay]).expect("overlay"),
            PathBuf::from("/u/fs")
        );
        assert!(own_dir(&[]).is_err());
        let odd = Mount {
            r#type: "overlay".into(),
            options: vec!["lowerdir=/l".into()],
            ..Default::default()
        };
        assert!(own_dir(&[odd]).is_err());
    }

    #[test]
    fn files_go_a_thousand_to_a_directory() {
        let dir = strata_tests::tmp::TestDir::new("snap-files").expect("a scratch dir");
        write_files(dir.path(), 2500).expect("writing");
        let count = |d: &str| {
            std::fs::read_dir(dir.path().join(d))
                .expect("a subdirectory")
                .count()
        };
        assert_eq!((count("d0"), count("d1"), count("d2")), (1000, 1000, 500));
        assert!(!dir.path().join("d3").exists());
    }

    #[test]
    fn run_medians_per_op() {
        let mut samples: [Vec<f64>; OPS.len()] = Default::default();
        samples[0] = vec![3.0, 1.0, 2.0];
        samples[7] = vec![5.0];
        let m = medians(&samples);
        assert_eq!((m[0], m[7]), (2.0, 5.0));
        assert!(m[1].is_nan());
    }

    #[test]
    fn quick_mode_is_small() {
        let (quick, full) = (sizes(true), sizes(false));
        assert!(quick.rounds * 10 <= full.rounds);
        assert!(quick.listed < full.listed && quick.lists <= full.lists);
        assert!(quick.files.iter().max() < full.files.iter().max());
        assert_eq!(full.files, vec![1000, 10_000, 100_000]);
        assert!(quick.settle < full.settle);
    }
}
