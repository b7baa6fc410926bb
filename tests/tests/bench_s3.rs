//! Benchmark (not a timed test; run it explicitly): strata-content's `s3` backend, on a
//! private 3-node Garage cluster on loopback (replication factor 3), against its `local`
//! backend, in one run on one machine. Every data root (strata's, containerd's, Garage's) is a
//! scratch dir under `/tmp`, so both backends write to the same file system.
//!
//! 1. Straight to strata-content's socket, no containerd: a 1 GiB ingest (1 MiB WRITEs, commit
//!    with size and digest) and a whole-blob Read (1 MiB messages) on the local backend and on
//!    s3 node A (the commit uploads; the read right after it comes from A's cache: warm); then
//!    s3 node B (same bucket and prefix, empty cache) reads it: cold, downloaded from Garage.
//!    Peak RSS of A over the ingest and of B over the cold read. Each round ingests other bytes,
//!    so no commit finds its blob already in the bucket.
//! 2. Through containerd (strata-content its only content store; built-in snapshotter and
//!    differ): `ctr images import` of a 7-layer image (`mixed`'s six small layers and
//!    `bigfiles` at scale 0.25, zstd) on fresh stacks each round: local; s3 cold (node A on a
//!    fresh prefix uploads every blob); s3 shared (node B on A's prefix: containerd's importer
//!    writes every blob without naming its digest, so B ingests each one, finds it in the
//!    bucket at the commit and uploads nothing); and warm: the same archive imported again
//!    into a new namespace on the local stack and on node A, which hold every blob already
//!    (each commit finds its blob stored).
//!
//! ```sh
//! cargo build --release --bins
//! cargo test --release -p strata-tests --test bench_s3 -- --ignored --nocapture
//! ```
//! `STRATA_BENCH_MIB` sets the ingest size (default 1024), `STRATA_BENCH_ROUNDS` the rounds
//! (default 3), `STRATA_BENCH_VERSION=1.7` containerd 1.7 for the imports.
// Benchmark code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use strata_common::namespace::RequestContext;
use strata_proto::content::DeleteContentRequest;
use strata_proto::content::content_client::ContentClient;
use strata_testkit::Compression;
use strata_testkit::image::{Image, ImageBuilder};
use strata_tests::bench::{
    CpuSampler, MIB, content_client, env_or, ingest, ingest_messages, mbps, median, payload,
    peak_rss, quiet_debug_logs, read_all, reset_peak_rss, sync, version_from_env,
};
use strata_tests::tmp::TestDir;
use strata_tests::wait::until;
use strata_tests::{
    GarageCluster, PluginKind, PluginSet, Stack, StackOptions, StrataProcess, Version, unique_name,
};
use tonic::transport::Channel;

/// What strata-content logs once per commit (`content-store/src/store.rs`), with `store_ms`:
/// for the s3 backend, the upload.
const COMMITTED_LOG: &str = "committed";
/// What the s3 backend logs when a commit finds its blob in the bucket and uploads nothing
/// (`content-store/src/backend/s3/mod.rs`).
const ALREADY_IN_BUCKET_LOG: &str = "already in the bucket";

/// The Garage cluster and strata-content configs for nodes on it.
struct Fleet {
    cluster: GarageCluster,
    dir: TestDir,
}

impl Fleet {
    /// `--config FILE` for strata-content as node `node` of the fleet under `prefix`, talking
    /// to Garage node `garage_node`. No sweeper (nothing is deleted from the bucket during the
    /// run) and no cache limit.
    fn config_args(&self, garage_node: usize, prefix: &str, node: &str) -> Vec<OsString> {
        let c = &self.cluster;
        let text = format!(
            "[content]\nbackend = \"s3\"\n[content.s3]\nendpoint = \"{}\"\nregion = \"{}\"\n\
             bucket = \"{}\"\nprefix = \"{prefix}\"\npath_style = true\nallow_http = true\n\
             credentials_file = \"{}\"\nnode_id = \"{node}\"\ncache_max_bytes = 0\n\
             gc_interval_secs = 0\n",
            c.endpoint(garage_node),
            c.region(),
            c.bucket(),
            c.credentials_file().display()
        );
        let path = self
            .dir
            .join(format!("{}.toml", unique_name(&format!("content-{node}"))));
        std::fs::write(&path, text).unwrap();
        vec!["--config".into(), path.into()]
    }

    /// The Garage servers' process ids (found by their config files on their command lines).
    fn garage_pids(&self) -> Vec<u32> {
        let configs: Vec<String> = (0..strata_tests::garage::NODES)
            .map(|i| self.cluster.config_path(i).display().to_string())
            .collect();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(" server") && configs.iter().any(|c| cmdline.contains(c)) {
                pids.push(pid);
            }
        }
        assert_eq!(pids.len(), configs.len(), "garage servers: {pids:?}");
        pids
    }
}

/// A strata-content process on its own scratch dir, outside any containerd.
struct Node {
    process: StrataProcess,
    _dir: TestDir,
    client: ContentClient<Channel>,
}

impl Node {
    /// Call inside the runtime (the client's channel needs it).
    fn start(name: &str, args: &[OsString]) -> Node {
        let dir = TestDir::new(&format!("bench-{name}")).unwrap();
        let process = StrataProcess::start(PluginKind::Content, dir.path(), args).unwrap();
        let client = content_client(process.socket());
        Node {
            process,
            _dir: dir,
            client,
        }
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// A sync, then waits (at most 15 s) until the Garage servers `garage` are idle (under 5% of
/// a core over half a second): Garage goes on working for a while after a large upload, and
/// that should not land on the next step's clock.
fn settle(garage: &[u32]) {
    sync();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        let cpu = CpuSampler::start(garage);
        std::thread::sleep(Duration::from_millis(500));
        if cpu.stop().values().sum::<f64>() < 0.025 {
            if start.elapsed() > Duration::from_secs(1) {
                println!("(garage busy for {:.1} s)", start.elapsed().as_secs_f64());
            }
            return;
        }
    }
    println!("(garage still busy after 15 s)");
}

/// Where strata-content (root `root`) caches blob `digest`.
fn cache_file(root: &Path, digest: &str) -> PathBuf {
    root.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Waits until strata-content (root `root`) has `digest` in its cache: a download is moved
/// there after its last bytes reached the reader, and after an fsync of the whole file.
fn wait_cached(root: &Path, digest: &str) {
    let path = cache_file(root, digest);
    until(
        &format!("{} in the cache", path.display()),
        Duration::from_secs(60),
        || path.is_file(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// The numeric field `name=` of a log line.
fn log_field(line: &str, name: &str) -> Option<f64> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    line[at..]
        .split(|c: char| c.is_whitespace() || c == ',')
        .next()?
        .parse()
        .ok()
}

/// The log lines of `p`'s commits.
fn commits(p: &StrataProcess) -> Vec<String> {
    p.log()
        .lines()
        .filter(|l| l.contains(COMMITTED_LOG) && l.contains("store_ms="))
        .map(str::to_string)
        .collect()
}

/// Checks that every commit of `p` found its blob in the bucket (uploaded nothing); how many
/// commits there were.
fn assert_no_upload(p: &StrataProcess) -> usize {
    let committed = commits(p).len();
    let found = p.log().matches(ALREADY_IN_BUCKET_LOG).count();
    assert_eq!(
        found,
        committed,
        "{} uploaded blobs another node had already put in the bucket",
        p.log_path().display()
    );
    committed
}

/// CPU seconds over a span, summed by process label and thread name, one line per process.
fn describe_cpu(used: &BTreeMap<(u32, String), f64>, labels: &[(u32, &str)]) -> String {
    let mut by_label: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
    for ((pid, thread), secs) in used {
        let label = labels
            .iter()
            .find(|(p, _)| p == pid)
            .map_or("?", |(_, l)| l);
        *by_label
            .entry(label)
            .or_default()
            .entry(thread.as_str())
            .or_insert(0.0) += secs;
    }
    let mut out = Vec::new();
    for (label, threads) in by_label {
        let total: f64 = threads.values().sum();
        let mut threads: Vec<(&str, f64)> = threads.into_iter().filter(|t| t.1 >= 0.05).collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        let threads: Vec<String> = threads.iter().map(|(t, s)| format!("{t} {s:.2}")).collect();
        out.push(format!("{label} {total:.2} s ({})", threads.join(", ")));
    }
    out.join("; ")
}

#[derive(Default)]
struct DirectFigures {
    local_ingest: Vec<f64>,
    local_read: Vec<f64>,
    s3_ingest: Vec<f64>,
    s3_warm: Vec<f64>,
    s3_cold: Vec<f64>,
    /// A's peak RSS over each ingest, B's over each cold read, the local node's over each
    /// ingest (bytes).
    ingest_rss: Vec<f64>,
    cold_rss: Vec<f64>,
    local_ingest_rss: Vec<f64>,
}

fn mib(bytes: f64) -> f64 {
    bytes / MIB as f64
}

/// Latency of the small requests the s3 backend makes around every commit and adoption
/// (marker PUTs, HEADs of missing flags and of blobs), sent one at a time on one connection
/// from this process straight to Garage node 0: medians, and how many took over 20 ms.
fn request_latency(fleet: &Fleet, rt: &tokio::runtime::Runtime) {
    let c = &fleet.cluster;
    let store = AmazonS3Builder::new()
        .with_endpoint(c.endpoint(0))
        .with_region(c.region())
        .with_bucket_name(c.bucket())
        .with_access_key_id(c.access_key_id())
        .with_secret_access_key(c.secret_access_key())
        .with_allow_http(true)
        .build()
        .unwrap();
    let (there, missing) = (
        ObjectPath::from("latency/there"),
        ObjectPath::from("latency/none"),
    );
    let steps = ["HEAD missing", "HEAD", "PUT 0 B", "HEAD missing after PUT"];
    let mut times = vec![Vec::new(); steps.len()];
    rt.block_on(async {
        store.put(&there, PutPayload::new()).await.unwrap();
        for _ in 0..40 {
            for (i, ms) in times.iter_mut().enumerate() {
                let t = Instant::now();
                match i {
                    1 => drop(store.head(&there).await.unwrap()),
                    2 => drop(store.put(&there, PutPayload::new()).await.unwrap()),
                    _ => assert!(store.head(&missing).await.is_err()),
                }
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    });
    let each: Vec<String> = steps
        .iter()
        .zip(&times)
        .map(|(name, v)| {
            let slow = v.iter().filter(|&&ms| ms > 20.0).count();
            format!("{name} {:.1} ms ({slow}/{} over 20 ms)", median(v), v.len())
        })
        .collect();
    println!(
        "Garage request latency, one at a time: {}\n",
        each.join(", ")
    );
}

/// Part 1: straight to strata-content's socket.
fn direct(fleet: &Fleet, rt: &tokio::runtime::Runtime, bytes: usize, rounds: usize) {
    let _entered = rt.enter();
    let prefix = format!("{}/", unique_name("bench-direct"));
    let mut local = Node::start("local", &[]);
    let mut a = Node::start("s3a", &fleet.config_args(0, &prefix, "a"));
    let mut b = Node::start("s3b", &fleet.config_args(1, &prefix, "b"));
    let garage = fleet.garage_pids();
    let mut labels: Vec<(u32, &str)> = vec![(local.pid(), "local"), (a.pid(), "A"), (b.pid(), "B")];
    labels.extend(garage.iter().map(|&p| (p, "garage")));
    let cx = RequestContext::default();
    let mut f = DirectFigures::default();
    for round in 0..rounds {
        let data = payload(bytes, round as u64 + 1);
        let digest = strata_testkit::sha256_digest(&data);
        for s3 in [false, true] {
            let node = if s3 { &mut a } else { &mut local };
            let msgs = ingest_messages(&format!("bench-{round}"), &data, &digest);
            settle(&garage);
            reset_peak_rss(node.pid());
            let mut watched = vec![node.pid()];
            watched.extend(&garage);
            let cpu = CpuSampler::start(&watched);
            let t = Instant::now();
            rt.block_on(ingest(&mut node.client, &cx, &digest, msgs));
            let took = t.elapsed();
            let cpu = describe_cpu(&cpu.stop(), &labels);
            let rss = peak_rss(node.pid()) as f64;
            let commit = commits(&node.process).pop().unwrap_or_default();
            println!(
                "round {round} {} ingest: {:.2} s, commit fsync {:.0} ms, store {:.0} ms; CPU {cpu}",
                if s3 { "s3 A" } else { "local" },
                took.as_secs_f64(),
                log_field(&commit, "sync_ms").unwrap_or(f64::NAN),
                log_field(&commit, "store_ms").unwrap_or(f64::NAN),
            );
            let (ingested, rss_list) = if s3 {
                (&mut f.s3_ingest, &mut f.ingest_rss)
            } else {
                (&mut f.local_ingest, &mut f.local_ingest_rss)
            };
            ingested.push(mbps(bytes, took));
            rss_list.push(rss);

            settle(&garage);
            let cpu = CpuSampler::start(&watched);
            let t = Instant::now();
            let n = rt.block_on(read_all(&mut node.client, &cx, &digest, 0, 0));
            let took = t.elapsed();
            assert_eq!(n, bytes);
            // Garage's work after an upload may go on into this read.
            println!(
                "round {round} {} warm read: {:.2} s; CPU {}",
                if s3 { "s3 A" } else { "local" },
                took.as_secs_f64(),
                describe_cpu(&cpu.stop(), &labels)
            );
            if s3 {
                &mut f.s3_warm
            } else {
                &mut f.local_read
            }
            .push(mbps(bytes, took));
        }

        settle(&garage);
        reset_peak_rss(b.pid());
        let mut watched = vec![b.pid()];
        watched.extend(&garage);
        let cpu = CpuSampler::start(&watched);
        let t = Instant::now();
        let n = rt.block_on(read_all(&mut b.client, &cx, &digest, 0, 0));
        let took = t.elapsed();
        let cpu = describe_cpu(&cpu.stop(), &labels);
        assert_eq!(n, bytes);
        f.s3_cold.push(mbps(bytes, took));
        f.cold_rss.push(peak_rss(b.pid()) as f64);
        println!(
            "round {round} s3 B cold read: {:.2} s; CPU {cpu}",
            took.as_secs_f64()
        );
        // Its fsync and move into the cache, before anything else is timed.
        wait_cached(b.process.root(), &digest);

        for node in [&mut local, &mut a, &mut b] {
            let req = cx
                .request(DeleteContentRequest {
                    digest: digest.clone(),
                })
                .unwrap();
            rt.block_on(node.client.delete(req)).unwrap();
        }
    }

    println!(
        "\nstrata-content alone, {} MiB, medians of {rounds} interleaved rounds:\n",
        bytes / MIB
    );
    println!("| workload | local MB/s | s3 MB/s | s3/local |");
    println!("|---|---|---|---|");
    let row = |name: &str, l: &[f64], s: &[f64]| {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2}x |",
            median(l),
            median(s),
            median(s) / median(l)
        );
    };
    row("ingest (s3: with upload)", &f.local_ingest, &f.s3_ingest);
    row("read, warm (s3: A's cache)", &f.local_read, &f.s3_warm);
    row("read, cold (s3: B downloads)", &f.local_read, &f.s3_cold);
    println!(
        "\npeak RSS (MiB, median; rounds): local over the ingest {:.0} ({:.0?}); s3 A over the \
         ingest {:.0} ({:.0?}); s3 B over the cold read {:.0} ({:.0?})",
        mib(median(&f.local_ingest_rss)),
        f.local_ingest_rss
            .iter()
            .map(|&v| mib(v))
            .collect::<Vec<_>>(),
        mib(median(&f.ingest_rss)),
        f.ingest_rss.iter().map(|&v| mib(v)).collect::<Vec<_>>(),
        mib(median(&f.cold_rss)),
        f.cold_rss.iter().map(|&v| mib(v)).collect::<Vec<_>>(),
    );
    let each = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join("/")
    };
    println!(
        "each round (MB/s): local ingest {}, read {}; s3 ingest {}, warm {}, cold {}\n",
        each(&f.local_ingest),
        each(&f.local_read),
        each(&f.s3_ingest),
        each(&f.s3_warm),
        each(&f.s3_cold)
    );
}

/// The import benchmark's image: `mixed`'s six layers under `bigfiles` at scale 0.25, zstd.
fn import_image() -> Image {
    let mixed = strata_testkit::fixtures::mixed(Compression::Zstd).unwrap();
    let big = strata_testkit::fixtures::bigfiles_scaled(Compression::Zstd, 0.25).unwrap();
    ImageBuilder::new("localhost/bench/s3-import:zstd")
        .layers(mixed.layers().iter().cloned())
        .layers(big.layers().iter().cloned())
        .cmd(["/bin/sh"])
        .created_by("strata bench_s3")
        .build()
        .unwrap()
}

/// A containerd whose only content store is strata-content with `content_args`.
fn import_stack(version: Version, content_args: Vec<OsString>) -> Stack {
    let options = StackOptions::only(PluginSet {
        content: true,
        ..PluginSet::NONE
    })
    .with_plugin_args(PluginKind::Content, content_args);
    Stack::start(version, &options).expect("starting the stack")
}

fn content_process(stack: &Stack) -> &StrataProcess {
    stack.plugins.get(PluginKind::Content).unwrap()
}

/// `ctr images import ARCHIVE` once Garage (`garage`) is idle; its wall time in seconds.
fn timed_import(stack: &Stack, archive: &Path, garage: &[u32]) -> f64 {
    timed_import_in(stack, archive, garage, stack.containerd.namespace())
}

/// `ctr -n NAMESPACE images import ARCHIVE`, timed after the machine settles.
fn timed_import_in(stack: &Stack, archive: &Path, garage: &[u32], namespace: &str) -> f64 {
    settle(garage);
    let t = Instant::now();
    stack.containerd.ctr_ok(&[
        OsStr::new("-n"),
        OsStr::new(namespace),
        OsStr::new("images"),
        OsStr::new("import"),
        archive.as_os_str(),
    ]);
    t.elapsed().as_secs_f64()
}

#[derive(Default)]
struct ImportFigures {
    local: Vec<f64>,
    local_warm: Vec<f64>,
    cold: Vec<f64>,
    warm: Vec<f64>,
    shared: Vec<f64>,
    cold_rss: Vec<f64>,
}

/// Part 2: `ctr images import` through containerd.
fn imports(fleet: &Fleet, version: Version, rounds: usize) {
    let image = import_image();
    let archive = fleet.dir.join("image.tar");
    image.write_archive(&archive).unwrap();
    let layer_bytes: u64 = image.layers().iter().map(|l| l.size).sum();
    println!(
        "import image: {} layers, {:.1} MB of layer blobs",
        image.layers().len(),
        layer_bytes as f64 / 1e6
    );
    let garage = fleet.garage_pids();
    let mut f = ImportFigures::default();
    for round in 0..rounds {
        let local = import_stack(version, Vec::new());
        f.local.push(timed_import(&local, &archive, &garage));
        let again = unique_name("warm");
        f.local_warm
            .push(timed_import_in(&local, &archive, &garage, &again));
        drop(local);

        let prefix = format!("{}/", unique_name("bench-import"));
        let a = import_stack(version, fleet.config_args(0, &prefix, "a"));
        let cpu = CpuSampler::start(&[&[content_process(&a).pid()], &garage[..]].concat());
        f.cold.push(timed_import(&a, &archive, &garage));
        let labels: Vec<(u32, &str)> = std::iter::once((content_process(&a).pid(), "A"))
            .chain(garage.iter().map(|&p| (p, "garage")))
            .collect();
        let uploads = commits(content_process(&a));
        assert!(
            !content_process(&a).log().contains(ALREADY_IN_BUCKET_LOG),
            "node A found a blob in a fresh prefix"
        );
        let upload_ms: f64 = uploads
            .iter()
            .filter_map(|l| log_field(l, "store_ms"))
            .sum();
        let each: Vec<String> = uploads
            .iter()
            .map(|l| {
                format!(
                    "{:.0}@{:.0}",
                    log_field(l, "size").unwrap_or(f64::NAN),
                    log_field(l, "store_ms").unwrap_or(f64::NAN)
                )
            })
            .collect();
        println!(
            "round {round} s3 cold import: {:.2} s, {} commits, {upload_ms:.0} ms storing \
             (bytes@ms: {}); CPU {}",
            f.cold[round],
            uploads.len(),
            each.join(" "),
            describe_cpu(&cpu.stop(), &labels)
        );
        f.cold_rss.push(peak_rss(content_process(&a).pid()) as f64);
        let again = unique_name("warm");
        f.warm.push(timed_import_in(&a, &archive, &garage, &again));
        println!(
            "round {round} s3 warm import (A again, new namespace): {:.2} s; local warm {:.2} s",
            f.warm[round], f.local_warm[round]
        );

        let b = import_stack(version, fleet.config_args(1, &prefix, "b"));
        f.shared.push(timed_import(&b, &archive, &garage));
        // containerd's importer writes every blob of the archive without naming its digest,
        // so its content store cannot answer from the bucket before the bytes come (as it
        // does for a pull): B ingests each blob and, at the commit, finds it in the bucket
        // and uploads nothing.
        let b_commits = assert_no_upload(content_process(&b));
        let b_store_ms: f64 = commits(content_process(&b))
            .iter()
            .filter_map(|l| log_field(l, "store_ms"))
            .sum();
        println!(
            "round {round} s3 shared import: {:.2} s, {b_commits} commits, each found in the \
             bucket (no upload), {b_store_ms:.0} ms storing",
            f.shared[round]
        );
        drop(b);
        drop(a);
        println!(
            "round {round} imports (s): local {:.2}, s3 cold {:.2}, s3 shared {:.2}",
            f.local[round], f.cold[round], f.shared[round]
        );
    }
    println!(
        "\n`ctr images import` through containerd {}, medians of {rounds} interleaved rounds:\n",
        version.key()
    );
    println!("| store | import s | vs local |");
    println!("|---|---|---|");
    let l = median(&f.local);
    for (name, v) in [
        ("local", &f.local),
        ("s3 cold (A uploads every blob)", &f.cold),
        (
            "s3 shared (B: every blob found in the bucket at commit)",
            &f.shared,
        ),
    ] {
        println!("| {name} | {:.2} | {:.2}x |", median(v), median(v) / l);
    }
    let lw = median(&f.local_warm);
    println!("\nImported again into a new namespace (every blob already held):\n");
    println!("| store | import s | vs local |");
    println!("|---|---|---|");
    for (name, v) in [("local", &f.local_warm), ("s3 warm (A)", &f.warm)] {
        println!("| {name} | {:.2} | {:.2}x |", median(v), median(v) / lw);
    }
    println!(
        "\npeak RSS of A's strata-content over its whole life (the cold import): {:.0} MiB \
         (rounds {:.0?})",
        mib(median(&f.cold_rss)),
        f.cold_rss.iter().map(|&v| mib(v)).collect::<Vec<_>>()
    );
}

#[test]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
fn s3_backend_against_local() {
    quiet_debug_logs();
    let bytes = env_or("STRATA_BENCH_MIB", 1024usize) * MIB;
    let rounds = env_or("STRATA_BENCH_ROUNDS", 3usize).max(1);
    let version = version_from_env();
    let t = Instant::now();
    let fleet = Fleet {
        cluster: GarageCluster::start().expect("garage cluster"),
        dir: TestDir::new("bench-s3").unwrap(),
    };
    println!("garage cluster up in {:.1} s", t.elapsed().as_secs_f64());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before: {}", load().trim());
    request_latency(&fleet, &rt);
    direct(&fleet, &rt, bytes, rounds);
    imports(&fleet, version, rounds);
    println!("load average after: {}", load().trim());
}
