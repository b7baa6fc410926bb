//! strata-differ under kill cycles: four clients apply layers (read through strata-content,
//! which stays up) and diff overlay snapshots, whose lower layers the differ mounts on its
//! scratch directory, while the differ is killed. After each restart: no mount and no
//! directory of the dead process is left under its root, an Apply gives the same tree as
//! before, and every blob its Diffs committed reads back whole.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use strata_common::client::unix_channel;
use strata_proto::content::ListContentRequest;
use strata_proto::content::content_client::ContentClient;
use strata_proto::diff::diff_client::DiffClient;
use strata_proto::diff::{ApplyRequest, DiffRequest};
use strata_proto::types::{Descriptor, Mount};
use strata_testkit::Compression;
use strata_testkit::layer::Layer;
use strata_testkit::prelude::{Compare, Tree, assert_trees_equal_with, snapshot};
use strata_tests::bench::{read_blob, write_blob};
use strata_tests::tmp::TestDir;
use strata_tests::{PluginKind, StrataProcess};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::rng::Rng;
use crate::{Cycles, start};

const POINTS: &[&str] = &["differ.temp_mount.mounted"];

fn descriptor(l: &Layer) -> Descriptor {
    Descriptor {
        media_type: l.media_type.clone(),
        digest: l.digest.clone(),
        size: l.size as i64,
        annotations: Default::default(),
    }
}

async fn apply(c: &mut DiffClient<Channel>, l: &Layer, target: &Path) -> Result<(), Status> {
    c.apply(ApplyRequest {
        diff: Some(descriptor(l)),
        mounts: vec![Mount::bind(target, false)],
        payloads: Default::default(),
        sync_fs: false,
    })
    .await
    .map(drop)
}

/// The two reference layers applied, each on its own directory: the lower layers of every
/// snapshot diffed.
struct Base {
    layers: Vec<Layer>,
    dirs: Vec<PathBuf>,
    trees: Vec<Tree>,
}

impl Base {
    /// A read-only overlay of both layers, as containerd's View of the snapshot gives it.
    fn lower(&self) -> Mount {
        Mount::overlay(None, &[&self.dirs[1], &self.dirs[0]])
    }

    /// An active snapshot on both layers with a few files in `upper`.
    fn upper(&self, upper: &Path, work: &Path) -> Mount {
        Mount::overlay(Some((upper, work)), &[&self.dirs[1], &self.dirs[0]])
    }
}

fn mounts_under(root: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = root.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&root))
        .map(str::to_string)
        .collect()
}

pub fn run() {
    let mut rng = Rng::from_env("differ kill cycles");
    let dir = TestDir::new("kc-diff").unwrap();
    let content = StrataProcess::start(PluginKind::Content, dir.path(), &[]).unwrap();
    let csock = content.socket().to_path_buf();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let work = dir.path().join("work");
    let layers: Vec<Layer> = [(Compression::Gzip, 1), (Compression::Zstd, 2)]
        .into_iter()
        .map(|(c, seed)| {
            let p = strata_testkit::fixtures::Params::new(c)
                .scale(0.01)
                .seed(seed);
            let img = strata_testkit::fixtures::build("smallfiles", &p).unwrap();
            img.layers()[0].clone()
        })
        .collect();
    let args: Vec<OsString> = vec!["--content-address".into(), csock.clone().into()];
    let base = {
        let mut p = start(PluginKind::Differ, dir.path(), &args, None);
        let mut dirs = Vec::new();
        let mut trees = Vec::new();
        rt.block_on(async {
            let mut cc = ContentClient::new(unix_channel(&csock));
            let mut dc = DiffClient::new(unix_channel(p.socket()));
            for (k, l) in layers.iter().enumerate() {
                let d = write_blob(&mut cc, &format!("layer-{k}"), &l.blob_bytes().unwrap())
                    .await
                    .unwrap();
                assert_eq!(d, l.digest);
                let d = work.join(format!("base-{k}"));
                std::fs::create_dir_all(&d).unwrap();
                apply(&mut dc, l, &d).await.unwrap();
                trees.push(snapshot(&d).unwrap());
                dirs.push(d);
            }
        });
        p.stop();
        Arc::new(Base {
            layers,
            dirs,
            trees,
        })
    };
    let seq = Arc::new(AtomicU64::new(0));
    let cycles = Cycles {
        kind: PluginKind::Differ,
        dir: dir.path(),
        args: args.clone(),
        points: POINTS,
        // Apply onto a bind target mounts nothing: the check reaches no crash point.
        check_writes: false,
        reach_within: Duration::from_secs(30),
    };
    cycles.run(
        &rt,
        &mut rng,
        |p| {
            // The clients' snapshots of the last cycle (nothing mounted on them now).
            let _ = std::fs::remove_dir_all(work.join("scratch"));
            rt.block_on(check(p.socket(), p.root(), &csock, &base, &work, &seq))
        },
        |p, stop, seed| {
            let socket = p.socket().to_path_buf();
            let (base, work, seq) = (base.clone(), work.clone(), seq.clone());
            rt.spawn(async move { worker(&socket, &stop, &base, &work, &seq, seed).await })
        },
    );
    let mut p = start(PluginKind::Differ, dir.path(), &args, None);
    rt.block_on(check(p.socket(), p.root(), &csock, &base, &work, &seq))
        .unwrap_or_else(|e| panic!("after the last cycle: {e}\n{}", p.log_tail(60)));
    p.stop();
    eprintln!(
        "differ kill cycles: {} operations started",
        seq.load(Ordering::SeqCst)
    );
}

async fn check(
    socket: &Path,
    root: &Path,
    csock: &Path,
    base: &Base,
    work: &Path,
    seq: &AtomicU64,
) -> Result<(), String> {
    let left = mounts_under(root);
    if !left.is_empty() {
        return Err(format!("mounts left under the differ's root: {left:?}"));
    }
    let scratch = root.join("mounts");
    let entries = std::fs::read_dir(&scratch)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if !entries.is_empty() {
        return Err(format!("left in {}: {entries:?}", scratch.display()));
    }
    let mut dc = DiffClient::new(unix_channel(socket));
    for (k, l) in base.layers.iter().enumerate() {
        let d = work.join(format!("check-{}", seq.fetch_add(1, Ordering::SeqCst)));
        std::fs::create_dir_all(&d).unwrap();
        apply(&mut dc, l, &d)
            .await
            .map_err(|e| format!("Apply after restart: {e}"))?;
        // The root is the test's fresh directory; the layer sets no time on it.
        let opts = Compare {
            ignore_root: true,
            ..Default::default()
        };
        assert_trees_equal_with(&base.trees[k], &snapshot(&d).unwrap(), &opts);
        std::fs::remove_dir_all(&d).unwrap();
    }
    let mut cc = ContentClient::new(unix_channel(csock));
    let mut s = cc
        .list(ListContentRequest::default())
        .await
        .map_err(|e| format!("List: {e}"))?
        .into_inner();
    let mut digests = Vec::new();
    while let Some(m) = s.message().await.map_err(|e| format!("List: {e}"))? {
        digests.extend(m.info.into_iter().map(|i| i.digest));
    }
    for d in digests {
        let data = read_blob(&mut cc, &d)
            .await
            .map_err(|e| format!("Read {d}: {e}"))?;
        if strata_testkit::sha256_digest(&data) != d {
            return Err(format!("blob {d} reads back other bytes"));
        }
    }
    Ok(())
}

fn gone(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

/// Applies and diffs until told to stop or the differ dies; an error other than the differ
/// going away is the result.
async fn worker(
    socket: &Path,
    stop: &AtomicBool,
    base: &Base,
    work: &Path,
    seq: &AtomicU64,
    seed: u64,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let mut c = DiffClient::new(unix_channel(socket));
    while !stop.load(Ordering::SeqCst) {
        let n = seq.fetch_add(1, Ordering::SeqCst);
        let d = work.join("scratch").join(n.to_string());
        let (upper, wdir) = (d.join("upper"), d.join("work"));
        for p in [&upper, &wdir] {
            std::fs::create_dir_all(p).map_err(|e| e.to_string())?;
        }
        let r = if rng.chance(50) {
            let l = &base.layers[rng.below(base.layers.len() as u64) as usize];
            apply(&mut c, l, &upper).await
        } else {
            for f in 0..10 {
                std::fs::write(upper.join(format!("new-{f}")), format!("{n}-{f}"))
                    .map_err(|e| e.to_string())?;
            }
            c.diff(DiffRequest {
                left: vec![base.lower()],
                right: vec![base.upper(&upper, &wdir)],
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                r#ref: format!("kill-cycle-diff-{n}"),
                ..Default::default()
            })
            .await
            .map(drop)
        };
        match r {
            Ok(()) => {
                let _ = std::fs::remove_dir_all(&d);
            }
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(format!("operation {n}: {e}")),
        }
    }
    Ok(())
}
