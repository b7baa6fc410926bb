//! A fleet of two nodes on one bucket, on containerd 1.7 and 2.x: each node a private
//! containerd with strata's three plugins, its strata-content on the `s3` backend (same bucket
//! and prefix on a 3-node Garage cluster, its own cache and node id). An image pulled from a
//! local registry by node A is not downloaded again by node B (containerd's shared content
//! policy asks strata-content, which answers from the bucket); A letting go of it leaves B's
//! copy whole; once B lets go too, the sweepers empty the bucket. The image reaches the
//! registry through its HTTP API (no containerd involved), and the registry's access log
//! tells what each pull fetched.
//!
//! Needs root, runc, busybox-static, docker-registry, Garage
//! (`scripts/install-deps.sh`) and the plugin binaries (`cargo build --workspace --bins`).
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata_testkit::Compression;
use strata_testkit::image::{Image, ImageBuilder};
use strata_testkit::layer::Layer;
use strata_testkit::tree::file;
use strata_tests::metrics::Scrape;
use strata_tests::registry::{Registry, Request};
use strata_tests::tmp::TestDir;
use strata_tests::wait::until;
use strata_tests::{Bucket, GarageCluster, PluginKind, Stack, StackOptions, Version, unique_name};

#[test]
fn fleet_containerd_1_7() {
    fleet(Version::V1_7);
}

#[test]
fn fleet_containerd_2() {
    fleet(Version::V2);
}

/// Short on purpose: the test waits for the sweepers.
const GC_GRACE_SECS: u64 = 2;
const GC_INTERVAL_SECS: u64 = 1;
/// Where the test image's second layer puts the token the containers print.
const TOKEN_FILE: &str = "strata-fleet";

/// strata-content's config for node `node` of the fleet under `prefix`, talking to Garage
/// node `garage_node`.
fn content_config(cluster: &GarageCluster, garage_node: usize, prefix: &str, node: &str) -> String {
    format!(
        "[content]\nbackend = \"s3\"\n[content.s3]\nendpoint = \"{}\"\nregion = \"{}\"\n\
         bucket = \"{}\"\nprefix = \"{prefix}\"\npath_style = true\nallow_http = true\n\
         credentials_file = \"{}\"\nnode_id = \"{node}\"\ngc_grace_secs = {GC_GRACE_SECS}\n\
         gc_interval_secs = {GC_INTERVAL_SECS}\n",
        cluster.endpoint(garage_node),
        cluster.region(),
        cluster.bucket(),
        cluster.credentials_file().display()
    )
}

/// containerd `version` with strata's snapshotter, content store and differ, the content
/// store being fleet node `node`.
fn start_node(
    version: Version,
    cluster: &GarageCluster,
    dir: &Path,
    prefix: &str,
    node: &str,
    garage_node: usize,
) -> Stack {
    let config = dir.join(format!("content-{node}.toml"));
    std::fs::write(&config, content_config(cluster, garage_node, prefix, node)).unwrap();
    let options = StackOptions::full().with_plugin_args(
        PluginKind::Content,
        [
            OsString::from("--config"),
            config.into_os_string(),
            OsString::from("--metrics-address"),
            metrics_socket(dir, node).into_os_string(),
        ],
    );
    Stack::start(version, &options).unwrap_or_else(|e| panic!("starting node {node}: {e}"))
}

/// Where node `node`'s strata-content serves its metrics.
fn metrics_socket(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("content-{node}-metrics.sock"))
}

/// busybox (gzip) plus a zstd layer holding `token` in `/strata-fleet`.
fn fleet_image(token: &str) -> Image {
    let busybox = strata_testkit::fixtures::busybox(Compression::Gzip).unwrap();
    let extra = Layer::new(vec![file(TOKEN_FILE, token)], Compression::Zstd).unwrap();
    ImageBuilder::new("localhost/strata/fleet:latest")
        .layers(busybox.layers().iter().cloned())
        .layer(extra)
        .cmd(["/bin/sh"])
        .created_by("strata e2e_fleet")
        .build()
        .unwrap()
}

/// The image's blobs as the registry serves them: (digest, bytes), layers first.
fn image_blobs(image: &Image) -> Vec<(String, Vec<u8>)> {
    let mut blobs: Vec<(String, Vec<u8>)> = image
        .layers()
        .iter()
        .map(|l| (l.digest.clone(), l.blob.to_vec().unwrap()))
        .collect();
    blobs.push((image.config_digest(), image.config().to_vec()));
    blobs.push((image.manifest_digest(), image.manifest().to_vec()));
    blobs
}

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

/// Where a node's strata-content caches blob `digest`.
fn cached(stack: &Stack, digest: &str) -> PathBuf {
    let root = stack.plugins.get(PluginKind::Content).unwrap().root();
    root.join("blobs/sha256").join(hex(digest))
}

/// What a pull asked the registry: every request after the first `before`, and the GETs of
/// each blob among them.
struct Fetched {
    requests: Vec<Request>,
}

impl Fetched {
    fn since(registry: &Registry, before: usize) -> Fetched {
        Fetched {
            requests: registry.settled_requests().split_off(before),
        }
    }

    fn blob_gets(&self, digest: &str) -> usize {
        self.requests
            .iter()
            .filter(|r| r.is_blob_get(digest))
            .count()
    }

    fn describe(&self) -> String {
        self.requests
            .iter()
            .map(|r| format!("  {} {} {}\n", r.method, r.path, r.status))
            .collect()
    }
}

fn fleet(version: Version) {
    let t0 = Instant::now();
    let v = version.key().replace('.', "");
    let cluster = GarageCluster::start().expect("garage cluster");
    eprintln!("garage cluster up in {:?}", t0.elapsed());
    let dir = TestDir::new("fleet").unwrap();
    let prefix = format!("{}/", unique_name(&format!("fleet{v}")));
    let bucket = Bucket::garage(&cluster, 2).unwrap();
    let keys = || bucket.keys(&prefix).unwrap();
    let blob_key = |d: &str| format!("{prefix}blobs/sha256/{}", hex(d));
    let ref_key = |d: &str, node: &str| format!("{prefix}refs/sha256/{}/{node}", hex(d));

    let registry = Registry::start(dir.path()).unwrap();
    let token = format!("strata-fleet-{}", unique_name(&v));
    let image = fleet_image(&token);
    let blobs = image_blobs(&image);
    let layers: Vec<String> = image.layers().iter().map(|l| l.digest.clone()).collect();
    let remote = registry.push("strata/fleet", &v, &image).unwrap();

    let a = start_node(version, &cluster, dir.path(), &prefix, "a", 0);
    let b = start_node(version, &cluster, dir.path(), &prefix, "b", 1);
    eprintln!(
        "containerd {} nodes a ({}) and b ({}) up at {:?}, prefix {prefix}",
        a.containerd.release(),
        a.containerd.dir().path().display(),
        b.containerd.dir().path().display(),
        t0.elapsed()
    );
    let tails = || {
        format!(
            "---- node a ----\n{}\n---- node b ----\n{}\n{}",
            a.log_tails(),
            b.log_tails(),
            registry.log_tail(40)
        )
    };
    let pull = ["images", "pull", "--plain-http", "--snapshotter", "strata"];
    let run = |node: &Stack, name: &str| {
        let id = unique_name(&format!("fleet{v}{name}"));
        let out = node.containerd.ctr_ok(&[
            "run",
            "--rm",
            "--snapshotter",
            "strata",
            &remote,
            &id,
            "/bin/cat",
            &format!("/{TOKEN_FILE}"),
        ]);
        assert!(
            out.lines().any(|l| l.trim() == token),
            "node {name}'s container printed {out:?}, not {token:?}\n{}",
            tails()
        );
    };

    // 1. A pulls from the registry (every blob fetched, uploaded to the bucket) and runs it.
    let before = registry.settled_requests().len();
    let applied = a.differ_applied();
    let mut args = pull.to_vec();
    args.push(&remote);
    a.containerd.ctr_ok(&args);
    let fetched_a = Fetched::since(&registry, before);
    eprintln!(
        "node a's pull at {:?}: {} requests\n{}",
        t0.elapsed(),
        fetched_a.requests.len(),
        fetched_a.describe()
    );
    for l in &layers {
        assert!(
            fetched_a.blob_gets(l) >= 1,
            "node a did not fetch layer {l}:\n{}",
            fetched_a.describe()
        );
    }
    assert_eq!(
        a.differ_applied() - applied,
        layers.len(),
        "node a's unpack went through strata-diff\n{}",
        tails()
    );
    let in_bucket = keys();
    for (d, _) in &blobs {
        for key in [blob_key(d), ref_key(d, "a")] {
            assert!(
                in_bucket.contains(&key),
                "{key} not in the bucket after node a's pull: {in_bucket:#?}\n{}",
                tails()
            );
        }
    }
    run(&a, "a");

    // 2. B pulls the same image: the registry serves no layer (B's strata-content answers
    // from the bucket); B unpacks it from the bucket and runs it.
    let before = registry.settled_requests().len();
    let applied = b.differ_applied();
    b.containerd.ctr_ok(&args);
    let fetched_b = Fetched::since(&registry, before);
    eprintln!(
        "node b's pull at {:?}: {} requests\n{}",
        t0.elapsed(),
        fetched_b.requests.len(),
        fetched_b.describe()
    );
    for l in &layers {
        assert_eq!(
            fetched_b.blob_gets(l),
            0,
            "node b downloaded layer {l} node a had put in the bucket:\n{}\n{}",
            fetched_b.describe(),
            tails()
        );
    }
    assert_eq!(
        b.differ_applied() - applied,
        layers.len(),
        "node b's unpack went through strata-diff\n{}",
        tails()
    );
    let in_bucket = keys();
    for (d, _) in &blobs {
        let key = ref_key(d, "b");
        assert!(
            in_bucket.contains(&key),
            "{key} not in the bucket after node b's pull: {in_bucket:#?}\n{}",
            tails()
        );
    }
    run(&b, "b");

    // Each node's metrics tell the same story: A uploaded the blobs, B downloaded them into
    // its cache.
    let metrics_a = Scrape::unix(&metrics_socket(dir.path(), "a"));
    metrics_a.assert_positive(
        "strata_content_object_store_requests_total",
        &[("op", "PUT")],
    );
    metrics_a.assert_positive("strata_content_object_store_uploaded_bytes_total", &[]);
    let metrics_b = Scrape::unix(&metrics_socket(dir.path(), "b"));
    metrics_b.assert_positive(
        "strata_content_object_store_requests_total",
        &[("op", "GET")],
    );
    metrics_b.assert_positive("strata_content_object_store_downloaded_bytes_total", &[]);
    metrics_b.assert_positive("strata_content_cache_bytes", &[]);

    // 3. A lets go of the image: its cache and markers go, the blobs stay for B, also past
    // the grace period.
    a.containerd.ctr_ok(&["images", "rm", "--sync", &remote]);
    a.collect_garbage().unwrap();
    until(
        "node a to let go of every blob",
        Duration::from_secs(30),
        || {
            let in_bucket = keys();
            blobs
                .iter()
                .all(|(d, _)| !cached(&a, d).exists() && !in_bucket.contains(&ref_key(d, "a")))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nbucket: {:#?}\n{}", keys(), tails()));
    std::thread::sleep(Duration::from_secs(GC_GRACE_SECS + 2 * GC_INTERVAL_SECS));
    let in_bucket = keys();
    for (d, _) in &blobs {
        for key in [blob_key(d), ref_key(d, "b")] {
            assert!(
                in_bucket.contains(&key),
                "{key} gone from the bucket while node b holds it: {in_bucket:#?}\n{}",
                tails()
            );
        }
    }
    assert!(
        !in_bucket
            .iter()
            .any(|k| k.starts_with(&format!("{prefix}gc/"))),
        "a blob node b holds is flagged for deletion: {in_bucket:#?}\n{}",
        tails()
    );
    run(&b, "b");
    for (d, data) in &blobs {
        let out = b.containerd.ctr(&["content", "get", d]);
        assert!(
            out.status.success(),
            "ctr content get {d} on node b: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            tails()
        );
        assert_eq!(
            strata_testkit::sha256_digest(&out.stdout),
            *d,
            "node b read {d} back wrong ({} bytes, {} expected)\n{}",
            out.stdout.len(),
            data.len(),
            tails()
        );
    }

    // 4. B lets go too: the sweepers delete every blob, and nothing is left under the prefix.
    b.containerd.ctr_ok(&["images", "rm", "--sync", &remote]);
    b.collect_garbage().unwrap();
    let t = Instant::now();
    until("the bucket to be empty", Duration::from_secs(30), || {
        keys().is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}\nbucket: {:#?}\n{}", keys(), tails()));
    eprintln!(
        "bucket empty {:?} after node b's GC, at {:?}",
        t.elapsed(),
        t0.elapsed()
    );
    for (d, _) in &blobs {
        assert!(!cached(&b, d).exists(), "{d} still in node b's cache");
    }
    for node in [&a, &b] {
        node.plugins
            .check_health()
            .unwrap_or_else(|e| panic!("{e}\n{}", tails()));
    }
    eprintln!(
        "registry requests: node a's pull {}, node b's pull {} (layer GETs {:?} vs {:?})",
        fetched_a.requests.len(),
        fetched_b.requests.len(),
        layers
            .iter()
            .map(|l| fetched_a.blob_gets(l))
            .collect::<Vec<_>>(),
        layers
            .iter()
            .map(|l| fetched_b.blob_gets(l))
            .collect::<Vec<_>>(),
    );
}
