//! `strata-mkimage NAME [--compression gzip|zstd|none] [--out FILE] [--scale F] [--seed N]
//! [--ref-prefix P]`: writes one of the testkit fixtures as an OCI archive for
//! `ctr images import` and prints a JSON summary (name, digests, diff_ids, chain ids) on
//! stdout, so shell scripts (demo, benchmarks) use the same images as the Rust tests.

use std::path::PathBuf;
use std::process::ExitCode;

use strata_testkit::Compression;
use strata_testkit::fixtures::{self, NAMES, Params};

const USAGE: &str = "usage: strata-mkimage NAME [--compression gzip|zstd|none] [--out FILE] \
                     [--scale F] [--seed N] [--ref-prefix P]\n  NAME: busybox, mixed, \
                     smallfiles, bigfiles";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-mkimage: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut name: Option<String> = None;
    let mut compression = Compression::Gzip;
    let mut out: Option<PathBuf> = None;
    let mut scale = 1.0f64;
    let mut seed = fixtures::SEED;
    let mut prefix = fixtures::REF_PREFIX.to_string();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "-c" | "--compression" => {
                compression = value(&arg)?.parse().map_err(|e| format!("{e}"))?;
            }
            "-o" | "--out" => out = Some(PathBuf::from(value(&arg)?)),
            "--scale" => {
                let v = value(&arg)?;
                scale = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| format!("--scale {v:?}: want a positive number"))?;
            }
            "--seed" => {
                let v = value(&arg)?;
                seed = v
                    .parse()
                    .map_err(|_| format!("--seed {v:?}: want an integer"))?;
            }
            "--ref-prefix" => prefix = value(&arg)?,
            a if a.starts_with('-') => return Err(format!("unknown option {a}\n{USAGE}")),
            a if name.is_none() => name = Some(a.to_string()),
            a => return Err(format!("unexpected argument {a}\n{USAGE}")),
        }
    }
    let name = name.ok_or_else(|| USAGE.to_string())?;
    if !NAMES.contains(&name.as_str()) {
        return Err(format!("unknown fixture {name:?}\n{USAGE}"));
    }
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}-{}.tar", compression.name())));
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let mut params = Params::new(compression).scale(scale).seed(seed);
    params.ref_prefix = prefix;
    let started = std::time::Instant::now();
    let image =
        fixtures::write_archive(&name, &params, &out).map_err(|e| format!("{name}: {e}"))?;
    let layers: Vec<serde_json::Value> = image
        .layers()
        .iter()
        .map(|l| {
            serde_json::json!({
                "mediaType": l.media_type,
                "digest": l.digest,
                "size": l.size,
                "diff_id": l.diff_id,
                "comment": l.comment,
            })
        })
        .collect();
    let summary = serde_json::json!({
        "fixture": name,
        "compression": compression.name(),
        "ref": image.name,
        "archive": out.display().to_string(),
        "archive_size": std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0),
        "manifest_digest": image.manifest_digest(),
        "config_digest": image.config_digest(),
        "layers": layers,
        "diff_ids": image.diff_ids(),
        "chain_ids": image.chain_ids(),
        "seed": seed,
        "scale": scale,
    });
    let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
    println!("{text}");
    eprintln!(
        "{}: {} ({:.1}s)",
        image.name,
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
