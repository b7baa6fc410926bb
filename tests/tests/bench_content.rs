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
use std::time::{Duration, Instant};

use strata_common::client::unix_channel;
use strata_common::namespace::RequestContext;
use strata_proto::content::content_client::ContentClient;
use strata_proto::content::{
    DeleteContentRequest, ReadContentRequest, WriteAction, WriteContentRequest,
};
use strata_testkit::Compression;
use strata_tests::bench::{env_or, median, version_from_env};
use strata_tests::{PluginSet, Stack, StackOptions, Version};
use tonic::codegen::tokio_stream::{self, StreamExt};
use tonic::transport::Channel;

const MIB: usize = 1 << 20;
const ROUNDS: usize = 3;

struct Figures {
    ingest: Vec<f64>,
    read_1m: Vec<f64>,
    read_32k: Vec<f64>,
    import: Vec<f64>,
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn payload(n: usize) -> Vec<u8> {
    // Incompressible and not all-equal, so no layer can shortcut it.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// The messages of an ingest of `data` (digest `digest`) under `r`: built before the clock
/// starts, so that the figure is the store's and not this client's copying.
fn ingest_messages(r: &str, data: &[u8], digest: &str) -> Vec<WriteContentRequest> {
    let digest = digest.to_string();
    let total = data.len() as i64;
    let mut msgs = vec![WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: r.to_string(),
        total,
        expected: digest.clone(),
        ..Default::default()
    }];
    let chunks: Vec<&[u8]> = data.chunks(MIB).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        msgs.push(WriteContentRequest {
            action: if last {
                WriteAction::Commit
            } else {
                WriteAction::Write
            } as i32,
            offset: (i * MIB) as i64,
            data: chunk.to_vec(),
            total: if last { total } else { 0 },
            expected: if last { digest.clone() } else { String::new() },
            ..Default::default()
        });
    }
    msgs
}

async fn ingest(
    c: &mut ContentClient<Channel>,
    cx: &RequestContext,
    digest: &str,
    msgs: Vec<WriteContentRequest>,
) {
    // containerd answers each request before reading the next, so a bounded channel keeps
    // the client one message ahead, as a streaming writer would be.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let sender = tokio::spawn(async move {
        for m in msgs {
            if tx.send(m).await.is_err() {
                break;
            }
        }
    });
    let req = cx
        .request(tokio_stream::wrappers::ReceiverStream::new(rx))
        .unwrap();
    let mut resp = c.write(req).await.unwrap().into_inner();
    let mut last = None;
    while let Some(m) = resp.next().await {
        let m = m.unwrap();
        if m.action == WriteAction::Commit as i32 {
            last = Some(m);
            break;
        }
    }
    sender.await.unwrap();
    let last = last.expect("commit answered");
    assert_eq!(last.digest, digest);
}

async fn read_all(
    c: &mut ContentClient<Channel>,
    cx: &RequestContext,
    d: &str,
    off: i64,
    size: i64,
) -> usize {
    let req = cx
        .request(ReadContentRequest {
            digest: d.to_string(),
            offset: off,
            size,
        })
        .unwrap();
    let mut s = c.read(req).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(m) = s.message().await.unwrap() {
        n += m.data.len();
    }
    n
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
            let mut c = ContentClient::new(unix_channel(ctd.socket()))
                .max_decoding_message_size(64 * MIB)
                .max_encoding_message_size(64 * MIB);
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
    // The harness starts strata at `--log-level debug`, which as a tracing filter also turns
    // on h2's dump of every HTTP/2 frame it sends and receives (a log line per 16 KiB of
    // payload, written to a file), which no deployment (`info`) pays and containerd's own
    // debug level has no equivalent of. Keep strata's own debug events, drop the frame dumps, unless
    // the caller chose RUST_LOG.
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: set before this test starts any thread or process, and this binary has no
        // other test that could read the environment meanwhile.
        unsafe { std::env::set_var("RUST_LOG", "debug,h2=info,hyper=info") };
    }
    let data = payload(mib * MIB);
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
