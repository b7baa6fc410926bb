//! Benchmark (not a timed test; run it explicitly): strata-differ's Diff against containerd's
//! built-in `walking` differ, through the same containerd release, in one run.
//!
//! Two private containerds of the same release run side by side, identical but for the diff
//! service's differ order (only `walking`, or `strata-diff` then `walking`), both on the
//! built-in `overlayfs` snapshotter and content store. In each, busybox is imported and an
//! active snapshot on it gets a workload written through its overlay mount (not timed). Then,
//! for every round and each containerd in turn (the order alternates between rounds), a Rust
//! client on containerd's socket calls the diff service's Diff (what `ctr snapshots diff`
//! does: a View of the parent as the lower mounts, the active snapshot's mounts as the upper)
//! for each output type; `sync` runs before each call, and the blob is garbage-collected after
//! it, outside the timing.
//!
//! Workloads: `small`, 20,000 new files of 0.5-8 KiB in 200 directories (the case containerd's
//! commit of a container hits most); `big`, four 128 MiB files (where compression dominates);
//! `tiny`, 100 new files of 4 KiB (a small change). They are written on busybox, or on the
//! `smallfiles` image (50,000 files, 140 MiB) when named `<workload>@smallfiles`: a Diff should
//! cost in proportion to the change, not to the image under it.
//! The machine's limits are measured on the same upperdir in the same rounds: `tar -c` alone,
//! and piped into `gzip -6`, `pigz -6` and `zstd -3 -T0`.
//!
//! ```sh
//! cargo build --release --bins
//! B=/mnt/strata-diff-bench
//! tests/scripts/containerd-env.sh loopfs-up /var/tmp/strata-diff-bench.img $B 20G
//! STRATA_TEST_TMPDIR=$B cargo test --release -p strata-tests --test bench_diff -- \
//!     --ignored --nocapture
//! tests/scripts/containerd-env.sh loopfs-down $B && rm /var/tmp/strata-diff-bench.img
//! ```
//! `STRATA_BENCH_VERSION=1.7` benchmarks containerd 1.7 (whose Diff requests carry no
//! namespace: strata uses containerd's only one); `STRATA_BENCH_ROUNDS` (default 3);
//! `STRATA_BENCH_WORKLOADS` (default `small,big`); `STRATA_BENCH_BLOB_FILES=1` gives
//! strata-differ containerd's content directory (`content_root`), so it writes layers there
//! and containerd only records them.
// Benchmark code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use strata_common::client::unix_channel;
use strata_common::mount::{mount, unmount};
use strata_common::namespace::RequestContext;
use strata_proto::diff::DiffRequest;
use strata_proto::diff::diff_client::DiffClient;
use strata_proto::snapshots::snapshots_client::SnapshotsClient;
use strata_proto::snapshots::{MountsRequest, PrepareSnapshotRequest, ViewSnapshotRequest};
use strata_proto::types::Mount;
use strata_testkit::Compression;
use strata_testkit::fixtures;
use strata_tests::bench::{differ_stack, env_or, have, median, sync, timed, version_from_env};
use strata_tests::{Stack, Version, unique_name};

const SNAPSHOTTER: &str = "overlayfs";
const TYPES: [(&str, &str); 3] = [
    ("tar", "application/vnd.oci.image.layer.v1.tar"),
    ("gzip", "application/vnd.oci.image.layer.v1.tar+gzip"),
    ("zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
];

/// Text-like bytes (compress about 3:1, as source trees and binaries mixed do), fast to make.
fn fill(buf: &mut [u8], seed: u64) {
    const WORDS: [&[u8]; 8] = [
        b"container ",
        b"layer ",
        b"snapshot ",
        b"0x7f3a ",
        b"return; ",
        b"\n\t",
        b"strata ",
        b"{ }",
    ];
    let mut x = seed | 1;
    let mut i = 0;
    while i < buf.len() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let piece: &[u8] = if x.is_multiple_of(4) {
            &x.to_le_bytes()
        } else {
            WORDS[(x >> 8) as usize % WORDS.len()]
        };
        let n = piece.len().min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&piece[..n]);
        i += n;
    }
}

fn write_workload(root: &Path, workload: &str) -> (u64, u64) {
    let (mut files, mut bytes) = (0u64, 0u64);
    match workload {
        "small" => {
            let mut buf = vec![0u8; 8192];
            for d in 0..200u64 {
                let dir = root.join(format!("app/d{d:03}"));
                std::fs::create_dir_all(&dir).unwrap();
                for f in 0..100u64 {
                    let seed = d * 1000 + f;
                    let len = 512 + (seed * 2_654_435_761 % 7680) as usize;
                    fill(&mut buf[..len], seed);
                    std::fs::write(dir.join(format!("f{f:03}.dat")), &buf[..len]).unwrap();
                    files += 1;
                    bytes += len as u64;
                }
            }
        }
        "big" => {
            let mut buf = vec![0u8; 1 << 20];
            std::fs::create_dir_all(root.join("data")).unwrap();
            for i in 0..4u64 {
                let mut f = std::fs::File::create(root.join(format!("data/big{i}.bin"))).unwrap();
                for c in 0..128u64 {
                    fill(&mut buf, i * 1000 + c);
                    f.write_all(&buf).unwrap();
                }
                files += 1;
                bytes += 128 << 20;
            }
        }
        "tiny" => {
            let mut buf = vec![0u8; 4096];
            std::fs::create_dir_all(root.join("tiny")).unwrap();
            for f in 0..100u64 {
                fill(&mut buf, 7_000_000 + f);
                std::fs::write(root.join(format!("tiny/f{f:03}.dat")), &buf).unwrap();
                files += 1;
                bytes += buf.len() as u64;
            }
        }
        other => panic!("unknown workload {other}"),
    }
    (files, bytes)
}

/// The image a workload is written on: `busybox` unless the workload says `@<base>`.
fn base_image(workload: &str) -> (&str, strata_testkit::image::Image) {
    let (change, base) = workload.split_once('@').unwrap_or((workload, "busybox"));
    let image = match base {
        "busybox" => fixtures::busybox(Compression::Gzip),
        "smallfiles" => fixtures::smallfiles(Compression::Gzip),
        other => panic!("unknown base image {other}"),
    };
    (change, image.unwrap())
}

struct Target {
    name: &'static str,
    stack: Stack,
    cx: RequestContext,
    lease: String,
    lower: Vec<Mount>,
    upper: Vec<Mount>,
    upperdir: String,
}

impl Target {
    fn start(
        rt: &tokio::runtime::Runtime,
        version: Version,
        strata: bool,
        workload: &str,
    ) -> Target {
        let stack = differ_stack(version, strata);
        let (change, base) = base_image(workload);
        let archive = stack.containerd.dir().path().join("base.tar");
        base.write_archive(&archive).unwrap();
        stack
            .containerd
            .ctr_ok(&["images", "import", archive.to_str().unwrap()]);
        let parent = base.chain_ids().last().cloned().unwrap();
        // The snapshots live under one lease; each diff's blob under another, dropped (and
        // collected) after every call.
        let (_, snap_cx) = stack.lease("snaps").expect("creating a lease");
        let (lease, cx) = stack.lease("bench").expect("creating a lease");
        let key = unique_name("work");
        let (lower, upper) = rt.block_on(async {
            let mut snaps = SnapshotsClient::new(unix_channel(stack.containerd.socket()));
            let upper = snaps
                .prepare(
                    snap_cx
                        .request(PrepareSnapshotRequest {
                            snapshotter: SNAPSHOTTER.into(),
                            key: key.clone(),
                            parent: parent.clone(),
                            labels: HashMap::new(),
                        })
                        .unwrap(),
                )
                .await
                .unwrap()
                .into_inner()
                .mounts;
            let lower = snaps
                .view(
                    snap_cx
                        .request(ViewSnapshotRequest {
                            snapshotter: SNAPSHOTTER.into(),
                            key: unique_name("lower"),
                            parent,
                            labels: HashMap::new(),
                        })
                        .unwrap(),
                )
                .await
                .unwrap()
                .into_inner()
                .mounts;
            let again = snaps
                .mounts(
                    snap_cx
                        .request(MountsRequest {
                            snapshotter: SNAPSHOTTER.into(),
                            key,
                        })
                        .unwrap(),
                )
                .await
                .unwrap()
                .into_inner()
                .mounts;
            assert_eq!(again, upper);
            (lower, upper)
        });
        let target = stack.containerd.dir().path().join("work-mnt");
        std::fs::create_dir_all(&target).unwrap();
        let [m] = &upper[..] else {
            panic!("one overlay mount expected: {upper:?}")
        };
        mount(&m.r#type, &m.source, &m.options, &target).unwrap();
        let (files, bytes) = write_workload(&target, change);
        unmount(&target).unwrap();
        eprintln!(
            "{}: {workload}: {files} files, {:.1} MiB written into the active snapshot",
            if strata { "strata-diff" } else { "walking" },
            bytes as f64 / (1 << 20) as f64
        );
        let upperdir = m
            .options
            .iter()
            .find_map(|o| o.strip_prefix("upperdir="))
            .unwrap()
            .to_string();
        Target {
            name: if strata { "strata-diff" } else { "walking" },
            stack,
            cx,
            lease,
            lower,
            upper,
            upperdir,
        }
    }

    fn made(&self) -> usize {
        self.stack
            .plugins
            .get(strata_tests::PluginKind::Differ)
            .map(|p| p.log().matches("strata-differ made a layer").count())
            .unwrap_or(0)
    }

    /// One timed Diff (`None` when this differ does not make `media_type`: 1.7's walking has
    /// no zstd); the blob is collected afterwards.
    fn diff(&self, rt: &tokio::runtime::Runtime, media_type: &str) -> Option<(f64, i64)> {
        let before = self.made();
        sync();
        let (secs, size) = rt.block_on(async {
            let mut diff = DiffClient::new(unix_channel(self.stack.containerd.socket()));
            let t = Instant::now();
            let d = diff
                .diff(
                    self.cx
                        .request(DiffRequest {
                            left: self.lower.clone(),
                            right: self.upper.clone(),
                            media_type: media_type.into(),
                            ..Default::default()
                        })
                        .unwrap(),
                )
                .await;
            let d = match d {
                Ok(d) => d.into_inner(),
                Err(e) if e.code() == tonic::Code::Unimplemented && self.name == "walking" => {
                    return None;
                }
                Err(e) => panic!("{}: Diff: {e}", self.name),
            };
            Some((
                t.elapsed().as_secs_f64(),
                d.diff.map(|d| d.size).unwrap_or(0),
            ))
        })?;
        if self.name == "strata-diff" {
            assert_eq!(self.made() - before, 1, "the diff must be strata's");
        }
        let ctd = &self.stack.containerd;
        ctd.ctr_ok(&["leases", "delete", "--sync", &self.lease]);
        ctd.ctr_ok(&["leases", "create", "--id", &self.lease]);
        Some((secs, size))
    }
}

/// Wall time of `sh -c script` (stdout to /dev/null), after a sync.
fn timed_sh(script: &str) -> f64 {
    timed(Command::new("sh").arg("-c").arg(script))
}

#[test]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
fn differ_diff_against_walking() {
    let version = version_from_env();
    let rounds: usize = env_or("STRATA_BENCH_ROUNDS", 3);
    let workloads =
        std::env::var("STRATA_BENCH_WORKLOADS").unwrap_or_else(|_| "small,big".to_string());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut report = Vec::new();
    for workload in workloads.split(',').filter(|w| !w.is_empty()) {
        let targets = [
            Target::start(&rt, version, false, workload),
            Target::start(&rt, version, true, workload),
        ];
        let mut times: HashMap<(&str, &str), Vec<f64>> = HashMap::new();
        let mut sizes: HashMap<(&str, &str), i64> = HashMap::new();
        let upperdir = targets[0].upperdir.clone();
        let mut limits: Vec<(&str, String)> = vec![
            // GNU tar skips reading files when its output is /dev/null itself.
            ("tar -c", format!("tar -cf - -C {upperdir} . | cat")),
            (
                "tar -c | gzip -6",
                format!("tar -cf - -C {upperdir} . | gzip -6"),
            ),
        ];
        if have("pigz") {
            limits.push((
                "tar -c | pigz -6",
                format!("tar -cf - -C {upperdir} . | pigz -6"),
            ));
        }
        if have("zstd") {
            limits.push((
                "tar -c | zstd -3 -T0",
                format!("tar -cf - -C {upperdir} . | zstd -3 -T0 -c"),
            ));
        }
        let mut limit_times: HashMap<&str, Vec<f64>> = HashMap::new();
        for round in 0..rounds {
            let order: Vec<&Target> = if round % 2 == 0 {
                targets.iter().collect()
            } else {
                targets.iter().rev().collect()
            };
            for t in order {
                for (label, media_type) in TYPES {
                    if let Some((secs, size)) = t.diff(&rt, media_type) {
                        times.entry((t.name, label)).or_default().push(secs);
                        sizes.insert((t.name, label), size);
                    }
                }
            }
            for (label, script) in &limits {
                limit_times.entry(label).or_default().push(timed_sh(script));
            }
            eprintln!("{workload}: round {} of {rounds} done", round + 1);
        }
        report.push(format!(
            "\n### {workload} (containerd {}, medians of {rounds})\n\n| output | walking | strata-diff | ratio (walking / strata) | size walking / strata |\n|---|---|---|---|---|",
            targets[0].stack.containerd.release()
        ));
        let mib = |k| {
            sizes
                .get(&k)
                .map(|s| format!("{:.1}", *s as f64 / (1 << 20) as f64))
        };
        for (label, _) in TYPES {
            let s = median(&times[&("strata-diff", label)]);
            let strata_size = mib(("strata-diff", label)).unwrap_or_default();
            match times.get(&("walking", label)) {
                Some(w) => {
                    let w = median(w);
                    report.push(format!(
                        "| {label} | {w:.3} s | {s:.3} s | {:.2}x | {} / {strata_size} MiB |",
                        w / s,
                        mib(("walking", label)).unwrap_or_default(),
                    ));
                }
                None => report.push(format!(
                    "| {label} | unsupported | {s:.3} s | - | - / {strata_size} MiB |"
                )),
            }
        }
        report.push("\n| machine limit (same upperdir) | time |\n|---|---|".to_string());
        for (label, _) in &limits {
            report.push(format!(
                "| `{label}` | {:.3} s |",
                median(&limit_times[label])
            ));
        }
    }
    println!("{}", report.join("\n"));
}
