//! Kill cycles: each server runs a mixed workload from concurrent clients and dies by SIGKILL,
//! at a random moment or at one of its named crash points (`strata_common::crashpoint`: inside
//! the content store's fsync and rename windows, inside the snapshotter's Commit and Remove),
//! then starts again on the same root, where the invariants are checked before the next cycle:
//! everything acknowledged survives whole, nothing half-done is visible, metadata and
//! directories agree, and interrupted work resumes or is reported cleanly.
//!
//! `STRATA_KILL_CYCLES=N` sets the number of cycles per server (the full run: 200); by default
//! each crash point is taken once and as many random kills run between them.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "kill_cycles/content.rs"]
mod content;
#[path = "kill_cycles/differ.rs"]
mod differ;
#[path = "kill_cycles/rng.rs"]
mod rng;
#[path = "kill_cycles/snapshots.rs"]
mod snapshots;

use std::time::Duration;

use strata_tests::PluginKind;
use strata_tests::plugins::StrataProcess;

/// How the server of one cycle dies.
#[derive(Clone, Debug)]
pub enum Death {
    /// SIGKILL from outside after this long.
    After(Duration),
    /// `STRATA_CRASH_AT=point@n`; SIGKILL from outside if not reached within the deadline.
    At(&'static str, u32),
}

/// Which death each of `n` cycles gets: every crash point in turn (at its first to third
/// hit), with random kills between them.
pub fn deaths(points: &[&'static str], rng: &mut rng::Rng) -> Vec<Death> {
    let n = std::env::var("STRATA_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2 * points.len());
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                let p = points[(i / 2) % points.len()];
                Death::At(p, 1 + rng.below(3) as u32)
            } else {
                Death::After(Duration::from_millis(20 + rng.below(600)))
            }
        })
        .collect()
}

/// Starts `kind` on `dir` (its root persists across cycles), armed for `death`.
pub fn start(kind: PluginKind, dir: &std::path::Path, death: Option<&Death>) -> StrataProcess {
    let spec;
    let mut env = Vec::new();
    if let Some(Death::At(point, n)) = death {
        spec = format!("{point}@{n}");
        env.push((strata_common::crashpoint::ENV, spec.as_str()));
    }
    StrataProcess::start_with_env(kind, dir, &[], &env).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether the log of a process killed in a cycle says it died at its crash point.
pub fn died_at(p: &StrataProcess, point: &str) -> bool {
    p.log().contains(&format!("crash point {point}@"))
}

#[test]
fn content_store_survives_kill_cycles() {
    content::run();
}

#[test]
fn snapshotter_survives_kill_cycles() {
    snapshots::run();
}

#[test]
fn differ_survives_kill_cycles() {
    differ::run();
}
