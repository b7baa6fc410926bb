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

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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

/// Starts `kind` on `dir` (its root persists across cycles) with `args`, armed for `death`.
pub fn start(
    kind: PluginKind,
    dir: &Path,
    args: &[OsString],
    death: Option<&Death>,
) -> StrataProcess {
    let spec;
    let mut env = Vec::new();
    if let Some(Death::At(point, n)) = death {
        spec = format!("{point}@{n}");
        env.push((strata_common::crashpoint::ENV, spec.as_str()));
    }
    StrataProcess::start_with_env(kind, dir, args, &env).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether the log of a process killed in a cycle says it died at its crash point.
pub fn died_at(p: &StrataProcess, point: &str) -> bool {
    p.log().contains(&format!("crash point {point}@"))
}

/// Concurrent clients of the workload.
pub const CLIENTS: usize = 4;

/// What a client of the workload hands back: an error other than the server going away.
pub type Worker = tokio::task::JoinHandle<Result<(), String>>;

/// One server's cycles.
pub struct Cycles<'a> {
    pub kind: PluginKind,
    pub dir: &'a Path,
    pub args: Vec<OsString>,
    pub points: &'static [&'static str],
    /// Whether the check reaches a crash point (then it runs on an unarmed start first).
    pub check_writes: bool,
    /// How long a cycle armed with a crash point may take to reach it.
    pub reach_within: Duration,
}

impl Cycles<'_> {
    /// Runs the cycles: start (armed), `check` the server against what the workload left,
    /// run [`CLIENTS`] clients (`client` spawns one with its seed) until the death, SIGKILL.
    /// Returns with the server down.
    pub fn run(
        &self,
        rt: &tokio::runtime::Runtime,
        rng: &mut rng::Rng,
        check: impl Fn(&StrataProcess) -> Result<(), String>,
        client: impl Fn(&StrataProcess, Arc<AtomicBool>, u64) -> Worker,
    ) {
        for (cycle, death) in deaths(self.points, rng).iter().enumerate() {
            let fail = |what: String, p: &StrataProcess| -> ! {
                panic!("cycle {cycle} ({death:?}): {what}\n{}", p.log_tail(60))
            };
            let mut p = if self.check_writes {
                let mut unarmed = start(self.kind, self.dir, &self.args, None);
                check(&unarmed).unwrap_or_else(|e| fail(e, &unarmed));
                unarmed.stop();
                start(self.kind, self.dir, &self.args, Some(death))
            } else {
                let p = start(self.kind, self.dir, &self.args, Some(death));
                check(&p).unwrap_or_else(|e| fail(e, &p));
                p
            };
            let stop = Arc::new(AtomicBool::new(false));
            let running: Vec<Worker> = (0..CLIENTS)
                .map(|_| client(&p, stop.clone(), rng.next()))
                .collect();
            let deadline = Instant::now()
                + match death {
                    Death::After(d) => *d,
                    Death::At(..) => self.reach_within,
                };
            while Instant::now() < deadline && p.still_running().is_ok() {
                std::thread::sleep(Duration::from_millis(5));
            }
            let status = p.kill().unwrap();
            stop.store(true, Ordering::SeqCst);
            let failures: Vec<String> = rt.block_on(async {
                let mut out = Vec::new();
                for w in running {
                    let r = tokio::time::timeout(Duration::from_secs(60), w)
                        .await
                        .expect("a client hung after the server died")
                        .unwrap();
                    out.extend(r.err());
                }
                out
            });
            if !failures.is_empty() {
                fail(format!("{failures:#?}"), &p);
            }
            if let Death::At(point, _) = death
                && !died_at(&p, point)
            {
                fail(format!("crash point {point} not reached ({status})"), &p);
            }
        }
    }
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
