//! Apply throughput against the machine's own limits (not a timed test: `#[ignore]`, run by
//! hand with `--release -- --ignored --nocapture`). `STRATA_BENCH_DIR` should be a fresh,
//! journaled filesystem (the facts notes explain why the root ext4 of these machines lies).
//!
//! Per fixture and compression, medians of three runs of:
//! - `tar -xf` of the uncompressed layer (the filesystem's limit),
//! - `<decompressor> -dc blob | tar -x` (what containerd's walking differ could at best do),
//! - strata's `apply_reader` from the blob on disk (decompress, hash, verify, write).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use strata_differ::apply::fetch::Verified;
use strata_differ::{apply_reader, media};
use strata_proto::types::Mount;
use strata_testkit::Compression;
use strata_testkit::fixtures;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn fresh(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    Command::new("sync").status().unwrap();
}

fn sh(cmd: &str) -> Duration {
    let t = Instant::now();
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
    t.elapsed()
}

#[test]
#[ignore = "benchmark: run by hand in release mode"]
fn apply_against_tar() {
    let base = std::env::var_os("STRATA_BENCH_DIR").expect("STRATA_BENCH_DIR");
    let base = Path::new(&base);
    let cases = [
        ("smallfiles", Compression::Gzip),
        ("smallfiles", Compression::Zstd),
        ("smallfiles", Compression::None),
        ("bigfiles", Compression::Gzip),
        ("bigfiles", Compression::Zstd),
    ];
    // `STRATA_BENCH_ONLY=bigfiles:zstd` runs one case.
    let only = std::env::var("STRATA_BENCH_ONLY").ok();
    for (name, c) in cases {
        if only.as_deref().is_some_and(|o| o != format!("{name}:{c}")) {
            continue;
        }
        let params = fixtures::Params::new(c).spool_dir(base);
        let image = fixtures::build(name, &params).unwrap();
        let layer = &image.layers()[0];
        let blob = base.join("blob");
        let tar = base.join("layer.tar");
        std::fs::File::create(&blob)
            .unwrap()
            .write_all(&layer.blob_bytes().unwrap())
            .unwrap();
        let mut t = std::fs::File::create(&tar).unwrap();
        std::io::copy(&mut layer.open_tar().unwrap(), &mut t).unwrap();
        drop(t);
        let out = base.join("out");
        let (mut tar_x, mut piped, mut strata) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            fresh(&out);
            tar_x.push(sh(&format!(
                "tar -xf {} -C {} --numeric-owner",
                tar.display(),
                out.display()
            )));
            fresh(&out);
            let dec = match c {
                Compression::Gzip => "gzip -dc",
                Compression::Zstd => "zstd -dc",
                Compression::None => "cat",
            };
            piped.push(sh(&format!(
                "{dec} {} | tar -x -C {} --numeric-owner",
                blob.display(),
                out.display()
            )));
            fresh(&out);
            let t = Instant::now();
            let f = std::fs::File::open(&blob).unwrap();
            let v = Verified::new(f, &layer.digest, layer.size).unwrap();
            let mount = Mount {
                r#type: "bind".into(),
                source: out.display().to_string(),
                target: String::new(),
                options: vec!["rbind".into()],
            };
            let applied = apply_reader(
                v,
                media::compression_of(&layer.media_type).unwrap(),
                &[mount],
                &base.join("scratch"),
                false,
            )
            .unwrap();
            strata.push(t.elapsed());
            assert_eq!(applied.digest, layer.diff_id);
        }
        fresh(&out);
        println!(
            "{name:<10} {c:<4} blob {:>6.1} MiB  tar -x {:>6.2} s  {}|tar -x {:>6.2} s  strata {:>6.2} s",
            layer.size as f64 / (1 << 20) as f64,
            median(tar_x).as_secs_f64(),
            c,
            median(piped).as_secs_f64(),
            median(strata).as_secs_f64(),
        );
    }
}
