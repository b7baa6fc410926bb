//! Benchmark (not a timed test) of strata-content alone, with no containerd in between: the
//! part of the proxied figures in `docs/benchmarks.md` that strata itself costs.
//! `cargo test --release -p strata-content --test direct_bench -- --ignored --nocapture`
// Benchmark code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Instant;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
async fn direct_throughput() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("root"), tmp.path()).await;
    let mut c = server.client();
    let data = bytes(256 << 20, 7);
    let t = Instant::now();
    let d = ingest(&mut c, "bench", &data, 1 << 20).await.unwrap();
    let mbps = |n: usize, t: Instant| n as f64 / 1e6 / t.elapsed().as_secs_f64();
    println!("ingest 1 MiB writes: {:.0} MB/s", mbps(data.len(), t));
    let t = Instant::now();
    assert_eq!(read(&mut c, &d, 0, 0).await.unwrap().len(), data.len());
    println!("one Read stream: {:.0} MB/s", mbps(data.len(), t));
    let t = Instant::now();
    let n = 5000;
    for _ in 0..n {
        c.info(strata_proto::content::InfoRequest { digest: d.clone() })
            .await
            .unwrap();
    }
    println!(
        "Info: {:.1} us per call",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    for piece in [1usize << 20, 32 << 10] {
        let total = (64usize << 20).min(data.len());
        let t = Instant::now();
        let mut off = 0;
        while off < total {
            off += read(&mut c, &d, off as i64, piece as i64)
                .await
                .unwrap()
                .len();
        }
        println!(
            "one Read stream per {} KiB: {:.0} MB/s",
            piece >> 10,
            mbps(total, t)
        );
    }
}
