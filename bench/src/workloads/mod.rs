//! What the benchmark measures, one module per workload. Each returns a [`Section`] of rows
//! with samples from both stacks.

pub mod content;
pub mod diff;
pub mod import;
pub mod phases;
pub mod reference;
pub mod s3;
pub mod snapshots;
pub mod start;
pub mod unpack;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Instant;

use strata_tests::bench::sync;
use strata_tests::{Stack, Version};

use crate::report::Section;
use crate::side::Side;

/// Everything a workload needs to know about the run.
pub struct Ctx {
    pub version: Version,
    pub runs: usize,
    pub quick: bool,
    /// CPU-bound processes compete for the cores during the run (`--contention`).
    pub contended: bool,
    /// Only these fixtures (`name:compression`), if any (`--fixtures`).
    pub only_fixtures: Vec<String>,
    /// Where fixtures and spooled blobs go (the scratch file system).
    pub scratch: PathBuf,
    pub rt: tokio::runtime::Runtime,
}

impl Ctx {
    /// Size scale of the `smallfiles` and `bigfiles` fixtures (1: 1 GiB of big files).
    pub fn scale(&self) -> f64 {
        if self.quick { 0.02 } else { 1.0 }
    }
}

/// A benchmark failure: what was being done and what went wrong.
pub type Result<T> = std::result::Result<T, String>;

/// Workloads by name, in the order a full run takes them.
pub const ALL: [&str; 7] = [
    "import",
    "start",
    "content",
    "s3",
    "diff",
    "snapshots",
    "reference",
];

/// Runs the workload `name`.
pub fn run(name: &str, ctx: &Ctx, rss: &mut RssFigures) -> Result<Section> {
    match name {
        "import" => import::run(ctx, rss),
        "start" => start::run(ctx),
        "content" => content::run(ctx),
        "s3" => s3::run(ctx),
        "diff" => diff::run(ctx),
        "snapshots" => snapshots::run(ctx),
        "reference" => reference::run(ctx),
        other => Err(format!(
            "unknown workload {other:?} (one of {})",
            ALL.join(", ")
        )),
    }
}

/// `ctr ARGS` on `stack`'s containerd after a `sync`, so that writeback of the previous step
/// does not land on it; its wall time in seconds.
pub fn timed_ctr(stack: &Stack, args: &[&OsStr]) -> Result<f64> {
    sync();
    let t = Instant::now();
    stack
        .containerd
        .try_ctr_ok(args)
        .map_err(|e| format!("ctr {args:?}: {e}\n{}", stack.log_tails()))?;
    Ok(t.elapsed().as_secs_f64())
}

/// Peak and idle RSS of each strata server over the import workload, in bytes.
#[derive(Default)]
pub struct RssFigures {
    /// (server, peak during an import and unpack, RSS after 2 s idle), one per stack started.
    pub samples: Vec<(&'static str, u64, u64)>,
}

impl RssFigures {
    /// Samples every strata server of `stack` (none on the built-ins' side): its peak so far,
    /// then its RSS once it has been idle for 2 s.
    pub fn sample(&mut self, stack: &Stack, side: Side) {
        if side != Side::Strata {
            return;
        }
        let servers = Side::servers(stack);
        let peaks: Vec<u64> = servers
            .iter()
            .map(|&(_, pid)| strata_tests::bench::peak_rss(pid))
            .collect();
        std::thread::sleep(std::time::Duration::from_secs(2));
        for (&(name, pid), peak) in servers.iter().zip(peaks) {
            self.samples
                .push((name, peak, strata_tests::bench::rss(pid)));
        }
    }
}
