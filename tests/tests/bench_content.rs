//! Benchmark (not a timed test; run it explicitly): containerd's content API served by
//! strata-content against containerd's built-in local store, through the same containerd
//! release, in one run. A client moving 1 MiB per call talks to containerd's socket (as `ctr`
//! would, but without ctr's 32 KiB pieces): 1 GiB ingest, whole-blob reads (containerd sends
//! 1 MiB messages), reads in 32 KiB pieces, and `ctr images import` of an image.
//!
//! ```sh
//! cargo build --release --bins
//! cargo test --release -p strata-tests --test bench_content -- --ignored --nocapture
//! ```
//! `STRATA_BENCH_VERSION=1.7` benchmarks containerd 1.7 instead of 2.x;
//! `STRATA_BENCH_MIB` sets the ingest size (default 1024); `STRATA_BIN_DIR` runs another
//! build of strata-content (e.g. the previous commit's) against the same built-in.
// Benchmark code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::time::Instant;

use strata_common::namespace::RequestContext;
use strata_proto::content::DeleteContentRequest;
use strata_testkit::Compression;
use strata_tests::bench::{
    MIB, content_client, env_or, ingest, ingest_messages, mbps, median, payload, quiet_debug_logs,
    read_all, version_from_env,
};
use strata_tests::{PluginSet, Stack, StackOptions, Version};

const ROUNDS: usize = 3;

struct Figures {
    ingest: Vec<f64>,
    read_1m: Vec<f64>,
    read_32k: Vec<f64>,
    import: Vec<f64>,
}

struct Target {
    stack: Stack,
    cx: RequestContext,
    lease: String,
    figures: Figures,
}

impl Target {
    fn start(version: Version, strata: bool) -> Target {
        let wire = if strata {
            PluginSet {
                content: true,
                ..PluginSet::NONE
            }
        } else {
            PluginSet::NONE
        };
        let stack = Stack::start(version, &StackOptions::only(wire)).expect("starting the stack");
        let (lease, cx) = stack.lease("bench").expect("creating a lease");
        Target {
            stack,
            cx,
            lease,
            figures: Figures {
                ingest: vec![],
                read_1m: vec![],
                read_32k: vec![],
                import: vec![],
            },
        }
    }

    /// One round of every measurement.
    fn round(
        &mut self,
        rt: &tokio::runtime::Runtime,
        round: usize,
        data: &[u8],
        image_archive: &std::path::Path,
        image_name: &str,
    ) {
        let ctd = &self.stack.containerd;
        let (cx, f) = (&self.cx, &mut self.figures);
        let digest = strata_testkit::sha256_digest(data);
        let small_read = (128 * MIB).min(data.len());
        rt.block_on(async {
            let mut c = content_client(ctd.socket());
            let msgs = ingest_messages(&format!("bench-{round}"), data, &digest);
            let t = Instant::now();
            ingest(&mut c, cx, &digest, msgs).await;
            f.ingest.push(mbps(data.len(), t.elapsed()));

            let t = Instant::now();
            assert_eq!(read_all(&mut c, cx, &digest, 0, 0).await, data.len());
            f.read_1m.push(mbps(data.len(), t.elapsed()));

            let t = Instant::now();
            let mut off = 0;
            while off < small_read {
                let n = read_all(&mut c, cx, &digest, off as i64, 32 << 10).await;
                assert!(n > 0, "empty read at {off}");
                off += n;
            }
            f.read_32k.push(mbps(small_read, t.elapsed()));

            let req = cx
                .request(DeleteContentRequest {
                    digest: digest.clone(),
                })
                .unwrap();
            c.delete(req).await.unwrap();
        });
        ctd.ctr_ok(&["leases", "delete", "--sync", &self.lease]);
        ctd.ctr_ok(&["leases", "create", "--id", &self.lease]);

        let t = Instant::now();
        ctd.ctr_ok(&[
            OsStr::new("images"),
            OsStr::new("import"),
            image_archive.as_os_str(),
        ]);
        f.import.push(t.elapsed().as_secs_f64());
        ctd.ctr_ok(&["images", "rm", "--sync", image_name]);
    }
}

#[test]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
fn content_store_throughput() {
    let version = version_from_env();
    let mib: usize = env_or("STRATA_BENCH_MIB", 1024);
    quiet_debug_logs();
    let data = payload(mib * MIB, 0);
    let dir = tempfile::tempdir().unwrap();
    let image = strata_testkit::fixtures::bigfiles_scaled(Compression::Zstd, 0.25).unwrap();
    let archive = dir.path().join("image.tar");
    image.write_archive(&archive).unwrap();
    // Both stores side by side, rounds interleaved, so load from elsewhere on the machine
    // hits both alike.
    let mut targets = [Target::start(version, false), Target::start(version, true)];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for round in 0..ROUNDS {
        for t in &mut targets {
            t.round(&rt, round, &data, &archive, &image.name);
        }
    }
    let [builtin, strata] = targets;
    let rows = [
        ("built-in", builtin.figures),
        ("strata-content", strata.figures),
    ];
    println!(
        "\ncontainerd {}, {mib} MiB ingest, medians of {ROUNDS} interleaved rounds:\n",
        version.key()
    );
    println!(
        "| store | ingest MB/s | read 1 MiB MB/s | read 32 KiB MB/s | import {} s |",
        image.name
    );
    println!("|---|---|---|---|---|");
    for (name, f) in &rows {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.2} |",
            median(&f.ingest),
            median(&f.read_1m),
            median(&f.read_32k),
            median(&f.import)
        );
    }
    let (b, s) = (&rows[0].1, &rows[1].1);
    println!(
        "| ratio | {:.2}x | {:.2}x | {:.2}x | {:.2}x |",
        median(&s.ingest) / median(&b.ingest),
        median(&s.read_1m) / median(&b.read_1m),
        median(&s.read_32k) / median(&b.read_32k),
        median(&s.import) / median(&b.import)
    );
    println!("\nEach round (ingest MB/s, read 1 MiB MB/s, read 32 KiB MB/s, import s):");
    for (name, f) in &rows {
        let rounds: Vec<String> = (0..ROUNDS)
            .map(|i| {
                format!(
                    "{:.0}/{:.0}/{:.0}/{:.2}",
                    f.ingest[i], f.read_1m[i], f.read_32k[i], f.import[i]
                )
            })
            .collect();
        println!("  {name}: {}", rounds.join("  "));
    }
}
