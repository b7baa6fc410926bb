//! strata-content's `s3` backend on a private 3-node Garage cluster on loopback (replication
//! factor 3) against its `local` backend, on the same machine and file system. The compared
//! columns are both strata-content: local backend, then S3 backend. Issue 11's targets: warm
//! reads and import within 1.05x of local, cold-cache import within 1.5x.
//!
//! 1. Straight to strata-content's socket: an ingest (1 MiB WRITEs, commit with size and
//!    digest) and a whole-blob Read on a local node and on s3 node A (its commit uploads; the
//!    read comes from A's cache: warm); then s3 node B (same prefix, empty cache) reads the
//!    blob: cold, downloaded from Garage. Each run ingests other bytes, so no commit finds its
//!    blob already in the bucket.
//! 2. `ctr images import` through containerd (strata-content its only content store) on fresh
//!    stacks per run: local; s3 cold (node A on a fresh prefix uploads every blob); s3 shared
//!    (node B on A's prefix: containerd's importer does not name digests up front, so B
//!    ingests each blob and finds it in the bucket at the commit); and the same archive
//!    imported again into a new namespace on the local stack and on A (warm).
//!
//! Reference rows: Garage's latency for the small requests around every commit, Garage's own
//! speed for a commit's multipart upload (the ceiling of the s3 ingest and the cold import),
//! and the peak RSS of each strata-content over the direct ingest and cold read (issue 11:
//! bounded memory).

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::time::{Duration, Instant};

use strata_common::namespace::RequestContext;
use strata_proto::content::DeleteContentRequest;
use strata_proto::content::content_client::ContentClient;
use strata_testkit::Compression;
use strata_testkit::image::{Image, ImageBuilder};
use strata_tests::bench::{
    CpuSampler, MIB, content_client, ingest, ingest_messages, mbps, payload, peak_rss, read_all,
    reset_peak_rss, sync,
};
use strata_tests::tmp::TestDir;
use strata_tests::wait::until;
use strata_tests::{
    Bucket, GarageCluster, PluginKind, PluginSet, Stack, StackOptions, StrataProcess, Version,
    unique_name,
};
use tonic::transport::Channel;

use super::{Ctx, Result};
use crate::report::{Reference, Row, Section, Unit};
use crate::side::Side;

const LOCAL: &str = "local backend";
const S3: &str = "S3 backend (Garage)";
/// Issue 11's targets as ratios of local's figure to s3's (above 1: s3 is faster).
const WARM_TARGET: f64 = 1.0 / 1.05;
const COLD_TARGET: f64 = 1.0 / 1.5;

/// The Garage cluster and strata-content configs for nodes on it.
struct Fleet {
    cluster: GarageCluster,
    dir: TestDir,
}

impl Fleet {
    /// `--config FILE` for strata-content as node `node` of the fleet under `prefix`, talking
    /// to Garage node `garage_node`. No sweeper (nothing is deleted from the bucket during the
    /// run) and no cache limit.
    fn config_args(&self, garage_node: usize, prefix: &str, node: &str) -> Result<Vec<OsString>> {
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
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(vec!["--config".into(), path.into()])
    }

    /// The Garage servers' process ids (found by their config files on their command lines).
    fn garage_pids(&self) -> Vec<u32> {
        let configs: Vec<String> = (0..strata_tests::garage::NODES)
            .map(|i| self.cluster.config_path(i).display().to_string())
            .collect();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(" server") && configs.iter().any(|c| cmdline.contains(c)) {
                pids.push(pid);
            }
        }
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
    fn start(name: &str, args: &[OsString]) -> Result<Node> {
        let dir = TestDir::new(&format!("bench-{name}")).map_err(|e| e.to_string())?;
        let process = StrataProcess::start(PluginKind::Content, dir.path(), args)
            .map_err(|e| format!("strata-content ({name}): {e}"))?;
        let client = content_client(process.socket());
        Ok(Node {
            process,
            _dir: dir,
            client,
        })
    }
}

/// A sync, then waits (at most 15 s) until the Garage servers are idle (under 5% of a core
/// over half a second): Garage goes on working for a while after a large upload, and that
/// should not land on the next step's clock.
fn settle(garage: &[u32]) {
    sync();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        let cpu = CpuSampler::start(garage);
        std::thread::sleep(Duration::from_millis(500));
        if cpu.stop().values().sum::<f64>() < 0.025 {
            return;
        }
    }
}

/// Waits until strata-content (root `root`) has `digest` in its cache: a download is moved
/// there after its last bytes reached the reader, and after an fsync of the whole file.
fn wait_cached(root: &Path, digest: &str) -> Result<()> {
    let path = root
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    until(
        &format!("{} in the cache", path.display()),
        Duration::from_secs(60),
        || path.is_file(),
    )
    .map_err(|e| e.to_string())
}

/// Part 1: straight to strata-content's socket. Rows: ingest, warm read, cold read.
fn direct(
    ctx: &Ctx,
    fleet: &Fleet,
    garage: &[u32],
    bytes: usize,
    rows: &mut [Row; 3],
    rss: &mut [Reference; 3],
) -> Result<()> {
    let _entered = ctx.rt.enter();
    let prefix = format!("{}/", unique_name("bench-direct"));
    let mut local = Node::start("local", &[])?;
    let mut a = Node::start("s3a", &fleet.config_args(0, &prefix, "a")?)?;
    let mut b = Node::start("s3b", &fleet.config_args(1, &prefix, "b")?)?;
    let cx = RequestContext::default();
    for run in 0..ctx.runs {
        let data = payload(bytes, run as u64 + 1);
        let digest = strata_testkit::sha256_digest(&data);
        for s3 in [false, true] {
            let node = if s3 { &mut a } else { &mut local };
            let msgs = ingest_messages(&format!("bench-{run}"), &data, &digest);
            settle(garage);
            reset_peak_rss(node.process.pid());
            let t = Instant::now();
            ctx.rt
                .block_on(ingest(&mut node.client, &cx, &digest, msgs));
            let ingested = mbps(bytes, t.elapsed());
            rss[usize::from(s3)]
                .samples
                .push(peak_rss(node.process.pid()) as f64 / MIB as f64);
            settle(garage);
            let t = Instant::now();
            let n = ctx
                .rt
                .block_on(read_all(&mut node.client, &cx, &digest, 0, 0));
            if n != bytes {
                return Err(format!("read {n} bytes of {bytes}"));
            }
            let read = mbps(bytes, t.elapsed());
            // The local backend is the first column (`builtin`), s3 the second.
            let side = if s3 { Side::Strata } else { Side::Builtin };
            rows[0].push(side, ingested);
            rows[1].push(side, read);
            if !s3 {
                // Cold reads compare with the same local read.
                rows[2].builtin.push(read);
            }
        }

        settle(garage);
        reset_peak_rss(b.process.pid());
        let t = Instant::now();
        let n = ctx.rt.block_on(read_all(&mut b.client, &cx, &digest, 0, 0));
        if n != bytes {
            return Err(format!("node B read {n} bytes of {bytes}"));
        }
        rows[2].strata.push(mbps(bytes, t.elapsed()));
        rss[2]
            .samples
            .push(peak_rss(b.process.pid()) as f64 / MIB as f64);
        // Its fsync and move into the cache, before anything else is timed.
        wait_cached(b.process.root(), &digest)?;

        for node in [&mut local, &mut a, &mut b] {
            let req = cx
                .request(DeleteContentRequest {
                    digest: digest.clone(),
                })
                .map_err(|e| e.to_string())?;
            ctx.rt
                .block_on(node.client.delete(req))
                .map_err(|e| format!("Delete: {e}"))?;
        }
    }
    Ok(())
}

/// The import's image: `mixed`'s six layers under `bigfiles` at a quarter of the run's
/// scale, zstd.
fn import_image(ctx: &Ctx) -> Result<Image> {
    let mixed = strata_testkit::fixtures::mixed(Compression::Zstd).map_err(|e| e.to_string())?;
    let big = strata_testkit::fixtures::bigfiles_scaled(Compression::Zstd, ctx.scale() * 0.25)
        .map_err(|e| e.to_string())?;
    ImageBuilder::new("localhost/bench/s3-import:zstd")
        .layers(mixed.layers().iter().cloned())
        .layers(big.layers().iter().cloned())
        .cmd(["/bin/sh"])
        .created_by("strata-bench s3")
        .build()
        .map_err(|e| e.to_string())
}

/// A containerd whose only content store is strata-content with `content_args`.
fn import_stack(version: Version, content_args: Vec<OsString>) -> Result<Stack> {
    let options = StackOptions::only(PluginSet {
        content: true,
        ..PluginSet::NONE
    })
    .with_plugin_args(PluginKind::Content, content_args);
    Stack::start(version, &options).map_err(|e| format!("starting the stack: {e}"))
}

/// `ctr -n NAMESPACE images import ARCHIVE` once Garage is idle; its wall time in seconds.
fn timed_import(stack: &Stack, archive: &Path, garage: &[u32], namespace: &str) -> Result<f64> {
    settle(garage);
    let t = Instant::now();
    stack
        .containerd
        .try_ctr_ok(&[
            OsStr::new("-n"),
            OsStr::new(namespace),
            OsStr::new("images"),
            OsStr::new("import"),
            archive.as_os_str(),
        ])
        .map_err(|e| format!("ctr images import: {e}\n{}", stack.log_tails()))?;
    Ok(t.elapsed().as_secs_f64())
}

/// Part 2: `ctr images import` through containerd. Rows: cold, shared, warm.
fn imports(ctx: &Ctx, fleet: &Fleet, garage: &[u32], rows: &mut [Row; 3]) -> Result<()> {
    let image = import_image(ctx)?;
    let archive = fleet.dir.join("image.tar");
    image
        .write_archive(&archive)
        .map_err(|e| format!("{}: {e}", archive.display()))?;
    let bucket = Bucket::garage(&fleet.cluster, 2).map_err(|e| e.to_string())?;
    for _ in 0..ctx.runs {
        let local = import_stack(ctx.version, Vec::new())?;
        let ns = local.containerd.namespace().to_string();
        let first = timed_import(&local, &archive, garage, &ns)?;
        rows[0].builtin.push(first);
        rows[1].builtin.push(first);
        rows[2].builtin.push(timed_import(
            &local,
            &archive,
            garage,
            &unique_name("warm"),
        )?);
        drop(local);

        let prefix = format!("{}/", unique_name("bench-import"));
        let a = import_stack(ctx.version, fleet.config_args(0, &prefix, "a")?)?;
        let ns = a.containerd.namespace().to_string();
        rows[0]
            .strata
            .push(timed_import(&a, &archive, garage, &ns)?);
        rows[2]
            .strata
            .push(timed_import(&a, &archive, garage, &unique_name("warm"))?);

        let blobs = format!("{prefix}blobs");
        let before = ctx
            .rt
            .block_on(bucket.list_versions(&blobs))
            .map_err(|e| e.to_string())?;
        let b = import_stack(ctx.version, fleet.config_args(1, &prefix, "b")?)?;
        let ns = b.containerd.namespace().to_string();
        rows[1]
            .strata
            .push(timed_import(&b, &archive, garage, &ns)?);
        // The row's claim: B's commits found every blob in the bucket and stored none again.
        let after = ctx
            .rt
            .block_on(bucket.list_versions(&blobs))
            .map_err(|e| e.to_string())?;
        if before.is_empty() || after != before {
            return Err(format!(
                "node B's import changed the bucket's blobs under {blobs}: {before:?} -> {after:?}"
            ));
        }
    }
    Ok(())
}

/// Latency of the small requests the s3 backend makes around every commit and adoption
/// (marker PUTs, HEADs of missing flags and of blobs), one at a time on one connection from
/// this process to Garage node 0: one reference row per kind, a sample per request.
fn request_latency(ctx: &Ctx, fleet: &Fleet) -> Result<Vec<Reference>> {
    let bucket = Bucket::garage(&fleet.cluster, 0).map_err(|e| e.to_string())?;
    let there = format!("{}/there", unique_name("latency"));
    let missing = format!("{there}-not");
    let mut rows = [
        "HEAD of a missing object",
        "HEAD of an object",
        "PUT of 0 bytes",
    ]
    .map(|k| Reference::new(format!("Garage {k}, one request at a time"), Unit::Seconds));
    let n = if ctx.quick { 5 } else { 40 };
    ctx.rt
        .block_on(async {
            bucket.put(&there, Vec::new()).await?;
            for _ in 0..n {
                for (i, row) in rows.iter_mut().enumerate() {
                    let t = Instant::now();
                    let found = match i {
                        0 => !bucket.exists(&missing).await?,
                        1 => bucket.exists(&there).await?,
                        _ => bucket.put(&there, Vec::new()).await.map(|()| true)?,
                    };
                    row.samples.push(t.elapsed().as_secs_f64());
                    if !found {
                        return Err(strata_tests::Error::new(format!(
                            "HEAD answered wrong ({i})"
                        )));
                    }
                }
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    Ok(rows.into())
}

/// Garage's own speed for the upload a commit makes (strata-content's default parts: 8 MiB,
/// 4 at once), from this process straight to Garage: the ceiling of the s3 ingest row and of
/// a cold import on this machine.
fn garage_upload(ctx: &Ctx, fleet: &Fleet, garage: &[u32], bytes: usize) -> Result<Reference> {
    let bucket = Bucket::garage(&fleet.cluster, 0).map_err(|e| e.to_string())?;
    let mut row = Reference::new(
        format!(
            "Garage alone: multipart PUT of {} MiB (8 MiB parts, 4 at once)",
            bytes / MIB
        ),
        Unit::MegabytesPerSecond,
    );
    for run in 0..ctx.runs {
        let data = payload(bytes, 1000 + run as u64);
        let key = format!("{}/blob", unique_name("bench-put"));
        settle(garage);
        let t = Instant::now();
        ctx.rt
            .block_on(bucket.put_multipart(&key, &data, 8 * MIB, 4))
            .map_err(|e| e.to_string())?;
        row.samples.push(mbps(bytes, t.elapsed()));
    }
    Ok(row)
}

pub fn run(ctx: &Ctx) -> Result<Section> {
    // Names scripts/install-deps.sh when Garage is not built: no silent skip.
    strata_tests::garage::garage_binary().map_err(|e| format!("the s3 workload: {e}"))?;
    let mib = if ctx.quick { 16 } else { 1024 };
    let fleet = Fleet {
        cluster: GarageCluster::start().map_err(|e| format!("garage cluster: {e}"))?,
        dir: TestDir::new("bench-s3").map_err(|e| e.to_string())?,
    };
    let garage = fleet.garage_pids();
    if garage.len() != strata_tests::garage::NODES {
        return Err(format!("garage servers not found: {garage:?}"));
    }
    let mbs = Unit::MegabytesPerSecond;
    let mut references = request_latency(ctx, &fleet)?;
    let mut direct_rows = [
        Row::new(format!("ingest {mib} MiB (s3: commit uploads)"), mbs, None),
        Row::new("Read, warm (s3: node A's cache)", mbs, Some(WARM_TARGET)),
        Row::new("Read, cold (s3: node B downloads)", mbs, None),
    ];
    let mut rss = [
        Reference::new(
            format!("local: peak RSS over the {mib} MiB ingest"),
            Unit::Mebibytes,
        ),
        Reference::new(
            format!("s3 node A: peak RSS over the {mib} MiB ingest and upload"),
            Unit::Mebibytes,
        ),
        Reference::new(
            format!("s3 node B: peak RSS over the {mib} MiB cold read"),
            Unit::Mebibytes,
        ),
    ];
    direct(ctx, &fleet, &garage, mib * MIB, &mut direct_rows, &mut rss)?;
    references.push(garage_upload(ctx, &fleet, &garage, mib * MIB)?);
    let secs = Unit::Seconds;
    let mut import_rows = [
        Row::new(
            "import, cold (node A uploads every blob)",
            secs,
            Some(COLD_TARGET),
        ),
        Row::new(
            "import, shared (node B: blobs already in the bucket)",
            secs,
            Some(COLD_TARGET),
        ),
        Row::new(
            "import again, new namespace (warm)",
            secs,
            Some(WARM_TARGET),
        ),
    ];
    imports(ctx, &fleet, &garage, &mut import_rows)?;
    references.extend(rss);
    let rows = direct_rows
        .into_iter()
        .chain(import_rows)
        .map(|r| r.between(LOCAL, S3))
        .collect();
    Ok(Section {
        title: "Content store on S3 (Garage)".into(),
        about: format!(
            "strata-content's `s3` backend on a private 3-node Garage cluster on loopback \
             (replication factor 3) against its `local` backend; both columns are strata-content \
             (ratio: local's time over s3's, above 1: s3 is faster). Direct rows: {mib} MiB on \
             strata-content's socket, no containerd; a cold read is node B (same bucket and \
             prefix, empty cache) downloading what node A uploaded. Import rows: `ctr images \
             import` of `mixed`'s six layers and `bigfiles` at a quarter scale (zstd) through \
             containerd with strata-content as its only content store; cold: node A on a fresh \
             prefix; shared: node B on A's prefix, whose commits find every blob in the bucket \
             (checked: the bucket's blob objects are unchanged by B's import); \
             warm: the same archive again into a new namespace. Targets (issue 11): warm within \
             1.05x of local, cold-cache import within 1.5x."
        ),
        rows,
        references,
    })
}
