//! `ctr images import` (with unpack into the stack's snapshotter) of each fixture, then the
//! same image unpacked again into new snapshots through containerd's services (unpack alone:
//! no content ingest). Each run starts both stacks afresh, so every import is cold.

use std::ffi::OsStr;

use strata_testkit::Compression;
use strata_testkit::fixtures::{self, Params};
use strata_testkit::image::Image;
use strata_tests::bench::CpuSampler;

use super::unpack::unpack;
use super::{Ctx, Result, RssFigures, phases, timed_ctr};
use crate::report::{Reference, Row, Section, Unit};
use crate::side::{Side, check_strata_applied};

/// A fixture of `strata_testkit::fixtures` in one compression.
#[derive(Clone, Copy, Debug)]
pub struct Fixture {
    pub name: &'static str,
    pub compression: Compression,
}

impl Fixture {
    pub fn label(self) -> String {
        format!("{}:{}", self.name, self.compression.name())
    }

    /// Builds the image, spooling big blobs into `ctx.scratch`.
    pub fn image(self, ctx: &Ctx) -> Result<Image> {
        let params = Params::new(self.compression)
            .scale(ctx.scale())
            .spool_dir(&ctx.scratch);
        fixtures::build(self.name, &params).map_err(|e| format!("building {}: {e}", self.label()))
    }
}

/// The fixtures a run imports: every shape (small files, big files, a 6-layer image) in gzip,
/// zstd and plain; in quick mode one of each shape, scaled down; only those `ctx` names, if
/// it names any.
pub fn fixtures(ctx: &Ctx) -> Vec<Fixture> {
    all_fixtures(ctx.quick)
        .into_iter()
        .filter(|f| ctx.only_fixtures.is_empty() || ctx.only_fixtures.contains(&f.label()))
        .collect()
}

/// Every fixture a run of this mode knows.
pub fn all_fixtures(quick: bool) -> Vec<Fixture> {
    use Compression::{Gzip, None, Zstd};
    let all: &[(&str, Compression)] = if quick {
        &[("smallfiles", Gzip), ("bigfiles", Zstd), ("mixed", Gzip)]
    } else {
        &[
            ("smallfiles", Gzip),
            ("smallfiles", Zstd),
            ("smallfiles", None),
            ("bigfiles", Gzip),
            ("bigfiles", Zstd),
            ("bigfiles", None),
            ("mixed", Gzip),
            ("mixed", Zstd),
        ]
    };
    all.iter()
        .map(|&(name, compression)| Fixture { name, compression })
        .collect()
}

/// What the issue asks of a whole import: at least the built-ins everywhere, and on big
/// files (where Apply leads) at least 1.2x on a quiet machine.
fn import_target(f: Fixture, contended: bool) -> f64 {
    if f.name == "bigfiles" && !contended {
        1.2
    } else {
        1.0
    }
}

pub fn run(ctx: &Ctx, rss: &mut RssFigures) -> Result<Section> {
    let mut rows = Vec::new();
    let mut references = Vec::new();
    for fixture in fixtures(ctx) {
        let image = fixture.image(ctx)?;
        let archive = ctx
            .scratch
            .join(format!("{}.tar", fixture.label().replace(':', "-")));
        image
            .write_archive(&archive)
            .map_err(|e| format!("writing {}: {e}", archive.display()))?;
        let layers = image.layers().len();
        let blob_mb: f64 = image.layers().iter().map(|l| l.size as f64).sum::<f64>() / 1e6;
        let label = format!(
            "{} ({layers} layer(s), {blob_mb:.0} MB of blobs)",
            fixture.label()
        );
        let mut import = Row::new(
            format!("import {label}"),
            Unit::Seconds,
            Some(import_target(fixture, ctx.contended)),
        );
        let mut ingest_phase = Row::new(
            format!("{}: import's ingest (import - unpack)", fixture.label()),
            Unit::Seconds,
            None,
        );
        let mut unpack_phase = Row::new(
            format!("{}: import's unpack (containerd's log)", fixture.label()),
            Unit::Seconds,
            None,
        );
        let mut cpu_total = Row::new(
            format!(
                "{}: CPU time of the import (ctr + containerd + strata's servers)",
                fixture.label()
            ),
            Unit::Seconds,
            None,
        );
        let mut cpu_containerd = Row::new(
            format!("{}: of which containerd's", fixture.label()),
            Unit::Seconds,
            None,
        );
        let mut cpu_servers = Reference::new(
            format!(
                "{}: CPU time of strata's servers in the import",
                fixture.label()
            ),
            Unit::Seconds,
        );
        let mut applied = Row::new(
            format!("Apply alone {}", fixture.label()),
            Unit::Seconds,
            None,
        );
        let mut unpacked = Row::new(
            format!("unpack alone {}", fixture.label()),
            Unit::Seconds,
            None,
        );
        for run in 0..ctx.runs {
            for side in Side::order(run) {
                let stack = side.start(ctx.version).map_err(|e| e.to_string())?;
                let before = stack.differ_applied();
                let servers: Vec<u32> = Side::servers(&stack).iter().map(|&(_, p)| p).collect();
                let containerd_pid = stack.containerd.pid();
                let ctr_before = children_cpu_secs();
                let sampler = CpuSampler::start(&[&[containerd_pid][..], &servers[..]].concat());
                let import_secs = timed_ctr(
                    &stack,
                    &[
                        OsStr::new("images"),
                        OsStr::new("import"),
                        OsStr::new("--snapshotter"),
                        OsStr::new(side.snapshotter()),
                        archive.as_os_str(),
                    ],
                )?;
                import.push(side, import_secs);
                let by_thread = sampler.stop();
                let of = |pids: &[u32]| -> f64 {
                    by_thread
                        .iter()
                        .filter(|((pid, _), _)| pids.contains(pid))
                        .map(|(_, secs)| secs)
                        .sum()
                };
                let (containerd_cpu, servers_cpu) = (of(&[containerd_pid]), of(&servers));
                cpu_total.push(
                    side,
                    children_cpu_secs() - ctr_before + containerd_cpu + servers_cpu,
                );
                cpu_containerd.push(side, containerd_cpu);
                if side == Side::Strata {
                    cpu_servers.samples.push(servers_cpu);
                }
                let mut threads: Vec<_> = by_thread.iter().filter(|(_, s)| **s >= 0.1).collect();
                threads.sort_by(|a, b| b.1.total_cmp(a.1));
                let threads: Vec<String> = threads
                    .iter()
                    .map(|((pid, name), secs)| format!("{pid}/{name} {secs:.1}"))
                    .collect();
                eprintln!(
                    "  {} run {run} {side:?}: import CPU by thread (s): {}",
                    fixture.label(),
                    threads.join(", ")
                );
                if let Some(u) = phases::unpack_secs(&stack.containerd.log()) {
                    unpack_phase.push(side, u);
                    ingest_phase.push(side, import_secs - u);
                }
                let (_lease, cx) = stack.lease("bench").map_err(|e| e.to_string())?;
                let again = unpack(&ctx.rt, &stack, &cx, side.snapshotter(), &image, "again")?;
                unpacked.push(side, again.total);
                applied.push(side, again.apply);
                if side == Side::Strata {
                    check_strata_applied(&stack, before, 2 * layers)?;
                }
                rss.sample(&stack, side);
                eprintln!(
                    "  {} run {run} {side:?}: import {import_secs:.2} s, unpack {:.2} s (Apply {:.2} s)",
                    fixture.label(),
                    again.total,
                    again.apply
                );
            }
        }
        std::fs::remove_file(&archive).map_err(|e| format!("{}: {e}", archive.display()))?;
        rows.push(import);
        // containerd 1.7 unpacks in ctr, which logs no phases.
        if !unpack_phase.builtin.is_empty() && !unpack_phase.strata.is_empty() {
            rows.push(ingest_phase);
            rows.push(unpack_phase);
        }
        rows.push(cpu_total);
        rows.push(cpu_containerd);
        references.push(cpu_servers);
        rows.push(unpacked);
        rows.push(applied);
    }
    Ok(Section {
        title: "Image import and unpack".into(),
        about: "`ctr images import --snapshotter S ARCHIVE` (content ingest through containerd, \
                then unpack: Prepare, Apply, Commit per layer) into a fresh containerd per run, \
                split (2.x) into its unpack, as containerd's unpacker logs it per layer, and the \
                rest (ctr streaming the archive, blobs written into the content store); \
                then \"unpack alone\": the same image unpacked again into new snapshots by a \
                client on containerd's socket (Prepare, Apply through containerd's diff \
                service, Commit), with no ingest, and its Apply calls alone. strata's side checks that strata-differ, not \
                the `walking` fallback, applied every layer. CPU rows: the CPU time (user + \
                system) ctr, containerd and strata's servers used during the import, sampled \
                from /proc, to tell work from waiting: two cores give an import twice its wall \
                time; strata's side pays a second gRPC hop inside containerd for every byte \
                (to strata-content) and unpacks in its own servers."
            .into(),
        rows,
        references,
    })
}

/// CPU seconds (user + system) of this process's children that have ended and been waited
/// for: ctr, the only child that ends while an import is timed.
fn children_cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid `who`.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
