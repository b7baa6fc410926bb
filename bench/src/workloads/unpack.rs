//! Unpacking an imported image as containerd's unpacker does, through containerd's own
//! Snapshots and Diff services: per layer Prepare on the previous one, Apply (the diff
//! service picks the differ), Commit. Only the steps are timed, not the `sync` before each.

use std::collections::HashMap;
use std::time::Instant;

use strata_common::client::unix_channel;
use strata_common::namespace::RequestContext;
use strata_proto::diff::ApplyRequest;
use strata_proto::diff::diff_client::DiffClient;
use strata_proto::snapshots::snapshots_client::SnapshotsClient;
use strata_proto::snapshots::{CommitSnapshotRequest, PrepareSnapshotRequest};
use strata_proto::types::Descriptor;
use strata_testkit::image::Image;
use strata_tests::Stack;
use strata_tests::bench::sync;

use super::Result;

/// Seconds an unpack took: all its calls, and its Applies alone.
#[derive(Clone, Copy, Debug)]
pub struct Unpacked {
    pub total: f64,
    pub apply: f64,
}

/// Unpacks `image` (already in `stack`'s content store) into new snapshots `TAG-c0...` of
/// `snapshotter`, in the lease `cx` carries; the seconds its Prepares, Applies and Commits
/// took. Fails if an applied layer's digest is not its diffID.
pub fn unpack(
    rt: &tokio::runtime::Runtime,
    stack: &Stack,
    cx: &RequestContext,
    snapshotter: &str,
    image: &Image,
    tag: &str,
) -> Result<Unpacked> {
    let socket = stack.containerd.socket();
    rt.block_on(async {
        let ch = unix_channel(&socket);
        let mut snaps = SnapshotsClient::new(ch.clone());
        let mut diff = DiffClient::new(ch);
        let mut parent = String::new();
        let mut took = Unpacked {
            total: 0.0,
            apply: 0.0,
        };
        let failed = |what: &str, e: tonic::Status| format!("{what}: {e}\n{}", stack.log_tails());
        for (i, layer) in image.layers().iter().enumerate() {
            sync();
            let key = format!("{tag}-a{i}");
            let name = format!("{tag}-c{i}");
            let t = Instant::now();
            let prepare = cx
                .request(PrepareSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    key: key.clone(),
                    parent: parent.clone(),
                    labels: HashMap::new(),
                })
                .map_err(|e| e.to_string())?;
            let mounts = snaps
                .prepare(prepare)
                .await
                .map_err(|e| failed("Prepare", e))?
                .into_inner()
                .mounts;
            let apply = cx
                .request(ApplyRequest {
                    diff: Some(Descriptor {
                        media_type: layer.media_type.clone(),
                        digest: layer.digest.clone(),
                        size: layer.size as i64,
                        annotations: HashMap::new(),
                    }),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                })
                .map_err(|e| e.to_string())?;
            let applying = Instant::now();
            let applied = diff
                .apply(apply)
                .await
                .map_err(|e| failed("Apply", e))?
                .into_inner();
            took.apply += applying.elapsed().as_secs_f64();
            let commit = cx
                .request(CommitSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    name: name.clone(),
                    key,
                    labels: HashMap::new(),
                    parent: String::new(),
                })
                .map_err(|e| e.to_string())?;
            snaps
                .commit(commit)
                .await
                .map_err(|e| failed("Commit", e))?;
            took.total += t.elapsed().as_secs_f64();
            let got = applied.applied.map(|d| d.digest).unwrap_or_default();
            if got != layer.diff_id {
                return Err(format!(
                    "layer {i} applied as {got}, its diffID is {}",
                    layer.diff_id
                ));
            }
            parent = name;
        }
        Ok(took)
    })
}
