//! Benchmark (not a timed test; run it explicitly): strata-differ's Apply against containerd's
//! built-in `walking` differ, through the same containerd release, in one run.
//!
//! Two private containerds of the same release run side by side, identical but for the diff
//! service's differ order: one has only the built-ins (`walking`), the other has strata-differ
//! wired in `[proxy_plugins]` ahead of it (`default = ["strata-diff", "walking"]`). Both use
//! the built-in `overlayfs` snapshotter and content store, so only the differ changes.
//!
//! Each fixture is imported with `ctr images import --no-unpack` (not timed). Then, for every
//! round and each containerd in turn (the order alternates between rounds), a Rust client on
//! containerd's socket unpacks the image's layers itself: Snapshots Prepare, Diff Apply (the
//! diff service picks the differ, exactly as an unpack does), Snapshots Commit. Apply is
//! timed alone and together with Prepare and Commit ("unpack"). `sync` runs before every
//! timed step, so writeback of the previous one doesn't land on it.
//!
//! The machine's limits are measured in the same rounds on the same file system: `tar -xf` of
//! the uncompressed layer into an empty dir, and the decompressor alone to /dev/null (`igzip
//! -dc` for gzip, `zstd -dc` for zstd; `unpigz -dc` shown for reference). strata-differ's peak
//! RSS is its `VmHWM`, reset through `/proc/<pid>/clear_refs` before each Apply. CPU time of
//! containerd (with its igzip/unpigz children) and of strata-differ is read from
//! `/proc/<pid>/stat` around the Apply calls.
//!
//! ```sh
//! cargo build --release --bins
//! B=/mnt/strata-differ-bench
//! tests/scripts/containerd-env.sh loopfs-up /var/tmp/strata-differ-bench.img $B 30G
//! STRATA_TEST_TMPDIR=$B cargo test --release -p strata-tests --test bench_differ -- \
//!     --ignored --nocapture
//! tests/scripts/containerd-env.sh loopfs-down $B && rm /var/tmp/strata-differ-bench.img
//! ```
//! Scratch dirs (containerd roots, strata's root, spooled fixtures, tar targets) all go to
//! `$STRATA_TEST_TMPDIR`: put it on a journaled file system (the root ext4 here has no
//! journal, see the facts notes). `STRATA_BENCH_VERSION=1.7` benchmarks containerd 1.7;
//! `STRATA_BENCH_ROUNDS` (default 3); `STRATA_BENCH_FIXTURES`, a comma list of
//! `fixture:compression` (default `mixed:gzip,mixed:zstd,smallfiles:gzip,smallfiles:zstd,
//! smallfiles:none,bigfiles:gzip,bigfiles:zstd,bigfiles:none`); `STRATA_BENCH_SCALE` scales
//! smallfiles and bigfiles (default 1). containerd finds `igzip` (2.x) or `unpigz` on PATH and
//! pipes gzip through it; `CONTAINERD_DISABLE_IGZIP=1` in the environment makes 2.x's walking
//! differ use `unpigz` instead. `STRATA_BENCH_BLOB_FILES=1` gives strata-differ containerd's
//! content directory (`--content-root`), so it reads layers from disk instead of through the
//! content service.
// Benchmark code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use strata_common::client::unix_channel;
use strata_common::namespace::RequestContext;
use strata_proto::diff::ApplyRequest;
use strata_proto::diff::diff_client::DiffClient;
use strata_proto::snapshots::snapshots_client::SnapshotsClient;
use strata_proto::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use strata_proto::types::Descriptor;
use strata_testkit::Compression;
use strata_testkit::fixtures::{self, Params};
use strata_testkit::image::Image;
use strata_tests::bench::{differ_stack, env_or, have, median, sync, timed, version_from_env};
use strata_tests::{PluginKind, Stack, Version, unique_name};

const SNAPSHOTTER: &str = "overlayfs";
const DEFAULT_FIXTURES: &str = "mixed:gzip,mixed:zstd,smallfiles:gzip,smallfiles:zstd,\
                                smallfiles:none,bigfiles:gzip,bigfiles:zstd,bigfiles:none";

fn compression(name: &str) -> Compression {
    match name {
        "gzip" => Compression::Gzip,
        "zstd" => Compression::Zstd,
        "none" | "plain" => Compression::None,
        other => panic!("unknown compression {other:?} (gzip, zstd, none)"),
    }
}

/// Peak RSS of `pid` since the last reset, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// CPU time of `pid` and of its waited-for children (e.g. containerd's igzip), in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').expect("comm in /proc/<pid>/stat") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // fields 14-17 of proc(5): utime stime cutime cstime; `after` starts at field 3
    let ticks: u64 = fields[11..15]
        .iter()
        .map(|f| f.parse::<u64>().unwrap())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / hz as f64
}

/// Resets `pid`'s peak RSS to its current RSS.
fn reset_hwm(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

#[derive(Default)]
struct Figures {
    apply: Vec<f64>,
    unpack: Vec<f64>,
    /// CPU seconds containerd (with its igzip/unpigz children) spent during the Applies.
    cpu: Vec<f64>,
    /// CPU seconds strata-differ spent during the Applies (strata only).
    cpu_differ: Vec<f64>,
    /// strata-differ's peak RSS during each Apply (KiB), strata only.
    hwm_kib: Vec<u64>,
}

struct Target {
    name: &'static str,
    stack: Stack,
    cx: RequestContext,
    lease: String,
    differ_pid: Option<u32>,
}

impl Target {
    fn start(version: Version, strata: bool) -> Target {
        let stack = differ_stack(version, strata);
        let (lease, cx) = stack.lease("bench").expect("creating a lease");
        let differ_pid = stack.plugins.get(PluginKind::Differ).map(|p| p.pid());
        Target {
            name: if strata { "strata-diff" } else { "walking" },
            stack,
            cx,
            lease,
            differ_pid,
        }
    }

    /// Unpacks `image` into fresh snapshots through containerd's Snapshots and Diff services,
    /// then removes them (and has GC clean up) outside the timing.
    fn unpack(&self, rt: &tokio::runtime::Runtime, image: &Image, round: usize, f: &mut Figures) {
        let ctd = &self.stack.containerd;
        let cx = &self.cx;
        let before = self.stack.differ_applied();
        let tag = unique_name(&format!("r{round}"));
        let committed = rt.block_on(async {
            let ch = unix_channel(ctd.socket());
            let mut snaps = SnapshotsClient::new(ch.clone());
            let mut diff = DiffClient::new(ch);
            let (mut apply, mut unpack, mut hwm) = (0.0, 0.0, 0u64);
            let (mut cpu, mut cpu_differ) = (0.0, 0.0);
            let cpu_now = || {
                (
                    cpu_secs(ctd.pid()),
                    self.differ_pid.map(cpu_secs).unwrap_or(0.0),
                )
            };
            let mut parent = String::new();
            let mut committed = Vec::new();
            for (i, layer) in image.layers().iter().enumerate() {
                sync();
                if let Some(pid) = self.differ_pid {
                    reset_hwm(pid);
                }
                let key = format!("{tag}-a{i}");
                let t0 = Instant::now();
                let mounts = snaps
                    .prepare(
                        cx.request(PrepareSnapshotRequest {
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
                let c1 = cpu_now();
                let t1 = Instant::now();
                let applied = diff
                    .apply(
                        cx.request(ApplyRequest {
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
                        .unwrap(),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{}: Apply: {e}\n{}", self.name, ctd.log_tails()))
                    .into_inner();
                let t2 = Instant::now();
                let c2 = cpu_now();
                cpu += c2.0 - c1.0;
                cpu_differ += c2.1 - c1.1;
                assert_eq!(
                    applied.applied.map(|d| d.digest).as_deref(),
                    Some(layer.diff_id.as_str()),
                    "{}: applied diffID",
                    self.name
                );
                let name = format!("{tag}-c{i}");
                snaps
                    .commit(
                        cx.request(CommitSnapshotRequest {
                            snapshotter: SNAPSHOTTER.into(),
                            name: name.clone(),
                            key,
                            labels: HashMap::new(),
                            parent: String::new(),
                        })
                        .unwrap(),
                    )
                    .await
                    .unwrap();
                let t3 = Instant::now();
                apply += (t2 - t1).as_secs_f64();
                unpack += (t3 - t0).as_secs_f64();
                if let Some(pid) = self.differ_pid {
                    hwm = hwm.max(vm_hwm_kib(pid));
                }
                committed.push(name.clone());
                parent = name;
            }
            f.apply.push(apply);
            f.unpack.push(unpack);
            f.cpu.push(cpu);
            f.cpu_differ.push(cpu_differ);
            if self.differ_pid.is_some() {
                f.hwm_kib.push(hwm);
            }
            committed
        });
        if self.differ_pid.is_some() {
            assert_eq!(
                self.stack.differ_applied() - before,
                image.layers().len(),
                "every layer must be applied by strata-differ, not walking"
            );
        }
        rt.block_on(async {
            let mut snaps = SnapshotsClient::new(unix_channel(ctd.socket()));
            for name in committed.iter().rev() {
                snaps
                    .remove(
                        cx.request(RemoveSnapshotRequest {
                            snapshotter: SNAPSHOTTER.into(),
                            key: name.clone(),
                        })
                        .unwrap(),
                    )
                    .await
                    .unwrap();
            }
        });
        // GC removes the snapshots' dirs now, not during the next measurement.
        ctd.ctr_ok(&["leases", "delete", "--sync", &self.lease]);
        ctd.ctr_ok(&["leases", "create", "--id", &self.lease]);
        sync();
    }
}

/// The machine's own figures for a one-layer image: `tar -xf` of the uncompressed layer and
/// the decompressors alone.
#[derive(Default)]
struct Limits {
    tar: Vec<f64>,
    decompress: Vec<f64>,
    unpigz: Vec<f64>,
}

impl Limits {
    fn measure(&mut self, blob: &Path, c: Compression, tar: &Path, scratch: &Path) {
        let out = scratch.join(unique_name("tarx"));
        std::fs::create_dir(&out).unwrap();
        self.tar.push(timed(
            Command::new("tar").arg("-xf").arg(tar).arg("-C").arg(&out),
        ));
        std::fs::remove_dir_all(&out).unwrap();
        match c {
            Compression::Gzip => {
                self.decompress
                    .push(timed(Command::new("igzip").arg("-dc").arg(blob)));
                if have("unpigz") {
                    self.unpigz
                        .push(timed(Command::new("unpigz").arg("-dc").arg(blob)));
                }
            }
            Compression::Zstd => self
                .decompress
                .push(timed(Command::new("zstd").args(["-q", "-dc"]).arg(blob))),
            Compression::None => {}
        }
        sync();
    }

    /// The slower of tar and the decompressor: what the issue calls the machine's limit.
    fn limit(&self) -> Option<f64> {
        if self.tar.is_empty() {
            return None;
        }
        let t = median(&self.tar);
        Some(if self.decompress.is_empty() {
            t
        } else {
            t.max(median(&self.decompress))
        })
    }
}

struct Row {
    label: String,
    blob_mib: f64,
    tar_mib: f64,
    walking: Figures,
    strata: Figures,
    limits: Limits,
}

fn fmt_opt(v: Option<f64>, unit: &str) -> String {
    v.filter(|v| v.is_finite())
        .map(|v| format!("{v:.2}{unit}"))
        .unwrap_or_else(|| "-".into())
}

#[test]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
fn differ_apply_against_walking() {
    let version = version_from_env();
    let rounds: usize = env_or("STRATA_BENCH_ROUNDS", 3);
    let scale: f64 = env_or("STRATA_BENCH_SCALE", 1.0);
    let wanted = std::env::var("STRATA_BENCH_FIXTURES").unwrap_or_else(|_| DEFAULT_FIXTURES.into());
    for tool in ["tar", "igzip", "zstd"] {
        assert!(
            have(tool),
            "{tool} not on PATH (apt-get install -y isal zstd)"
        );
    }
    let scratch_dir = strata_tests::tmp::TestDir::new("strata-bench-differ").unwrap();
    let scratch = scratch_dir.path().to_path_buf();
    let started = Instant::now();
    // walking first, strata second; the order alternates between rounds below
    let targets = [Target::start(version, false), Target::start(version, true)];
    let release = targets[0].stack.containerd.release().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for spec in wanted.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, comp) = spec.split_once(':').expect("fixture:compression");
        let c = compression(comp);
        let mut p = Params::new(c).spool_dir(&scratch);
        if name != "mixed" && name != "busybox" {
            p = p.scale(scale);
        }
        let t = Instant::now();
        let image = fixtures::build(name, &p).unwrap();
        let archive = scratch.join(format!("{name}-{comp}.tar"));
        image.write_archive(&archive).unwrap();
        for target in &targets {
            target.stack.containerd.ctr_ok(&[
                OsStr::new("images"),
                OsStr::new("import"),
                OsStr::new("--no-unpack"),
                archive.as_os_str(),
            ]);
        }
        std::fs::remove_file(&archive).unwrap();
        // The uncompressed layer, for `tar -xf` (one-layer images with a spooled blob).
        let single: Option<(PathBuf, PathBuf)> = match image.layers() {
            [layer] => layer.blob.path().map(|blob| {
                let tar = if c == Compression::None {
                    blob.to_path_buf()
                } else {
                    let tar = scratch.join(format!("{name}-{comp}.layer.tar"));
                    let mut out = std::fs::File::create(&tar).unwrap();
                    std::io::copy(&mut layer.open_tar().unwrap(), &mut out).unwrap();
                    tar
                };
                (blob.to_path_buf(), tar)
            }),
            _ => None,
        };
        let blob_bytes: u64 = image.layers().iter().map(|l| l.size).sum();
        let tar_bytes: u64 = match &single {
            Some((_, tar)) => std::fs::metadata(tar).unwrap().len(),
            None => image
                .layers()
                .iter()
                .map(|l| l.tar_bytes().unwrap().len() as u64)
                .sum(),
        };
        eprintln!(
            "bench_differ: {spec}: {} layer(s), {:.1} MiB blob, {:.1} MiB tar, prepared in {:.1} s",
            image.layers().len(),
            blob_bytes as f64 / 1048576.0,
            tar_bytes as f64 / 1048576.0,
            t.elapsed().as_secs_f64()
        );
        let (mut walking, mut strata, mut limits) =
            (Figures::default(), Figures::default(), Limits::default());
        for round in 0..rounds {
            let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let f = if i == 0 { &mut walking } else { &mut strata };
                targets[i].unpack(&rt, &image, round, f);
            }
            if let Some((blob, tar)) = &single {
                limits.measure(blob, c, tar, &scratch);
            }
            eprintln!(
                "bench_differ: {spec} round {round}: walking {:.2} s, strata {:.2} s, tar {}",
                walking.apply.last().unwrap(),
                strata.apply.last().unwrap(),
                fmt_opt(limits.tar.last().copied(), " s"),
            );
        }
        for target in &targets {
            target
                .stack
                .containerd
                .ctr_ok(&["images", "rm", "--sync", &image.name]);
        }
        if let Some((_, tar)) = &single
            && c != Compression::None
        {
            std::fs::remove_file(tar).unwrap();
        }
        rows.push(Row {
            label: spec.to_string(),
            blob_mib: blob_bytes as f64 / 1048576.0,
            tar_mib: tar_bytes as f64 / 1048576.0,
            walking,
            strata,
            limits,
        });
        drop(image);
    }

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\ncontainerd {release}, snapshotter {SNAPSHOTTER}, medians of {rounds} interleaved rounds, \
         scale {scale}, {:.0} s in all, load average at the end: {}",
        started.elapsed().as_secs_f64(),
        load.trim()
    );
    println!(
        "gzip helper for walking: {}\n",
        if std::env::var_os("CONTAINERD_DISABLE_IGZIP").is_some() {
            "igzip disabled (CONTAINERD_DISABLE_IGZIP), unpigz"
        } else {
            "igzip (2.x) / unpigz (1.7) from PATH"
        }
    );
    println!(
        "| fixture | blob / tar MiB | walking Apply | strata Apply | speed-up | walking unpack | \
         strata unpack | tar -x | decompressor | limit | strata / limit | strata peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let (w, s) = (median(&r.walking.apply), median(&r.strata.apply));
        let limit = r.limits.limit();
        let peak = r.strata.hwm_kib.iter().max().copied().unwrap_or(0);
        println!(
            "| {} | {:.0} / {:.0} | {w:.2} s | {s:.2} s | {:.2}x | {:.2} s | {:.2} s | {} | {} | {} | \
             {} | {:.0} MiB |",
            r.label,
            r.blob_mib,
            r.tar_mib,
            w / s,
            median(&r.walking.unpack),
            median(&r.strata.unpack),
            fmt_opt(
                (!r.limits.tar.is_empty()).then(|| median(&r.limits.tar)),
                " s"
            ),
            fmt_opt(
                (!r.limits.decompress.is_empty()).then(|| median(&r.limits.decompress)),
                " s"
            ),
            fmt_opt(limit, " s"),
            fmt_opt(limit.map(|l| s / l), "x"),
            peak as f64 / 1024.0,
        );
    }
    let pigz: Vec<String> = rows
        .iter()
        .filter(|r| !r.limits.unpigz.is_empty())
        .map(|r| format!("{} {:.2} s", r.label, median(&r.limits.unpigz)))
        .collect();
    if !pigz.is_empty() {
        println!("\nunpigz -dc alone: {}", pigz.join(", "));
    }
    println!(
        "\nCPU seconds during Apply (containerd incl. its igzip/unpigz children; strata-differ):"
    );
    for r in &rows {
        println!(
            "{}: walking: containerd {:.2}; strata: containerd {:.2} + strata-differ {:.2}",
            r.label,
            median(&r.walking.cpu),
            median(&r.strata.cpu),
            median(&r.strata.cpu_differ)
        );
    }
    println!("\nraw seconds (walking apply | strata apply | tar | decompressor):");
    for r in &rows {
        println!(
            "{}: {:?} | {:?} | {:?} | {:?}",
            r.label, r.walking.apply, r.strata.apply, r.limits.tar, r.limits.decompress
        );
    }
    drop(targets);
    drop(scratch_dir);
}
