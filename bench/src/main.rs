//! `strata-bench`: see the crate docs (`lib.rs`) and README.md's "Benchmarks".

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use strata_bench::report::{Reference, Row, Section, Unit, missed};
use strata_bench::scratch::Scratch;
use strata_bench::workloads::{self, Ctx, RssFigures};
use strata_bench::{hog, machine, plot};
use strata_tests::Version;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "strata's plugins against containerd's built-ins, in one run"
)]
struct Args {
    /// containerd releases to run, comma-separated: 2 (Debian's 2.x) and/or 1.7.
    #[arg(long, value_delimiter = ',', default_value = "2,1.7")]
    containerd: Vec<Version>,
    /// Small fixtures, one run, every workload: under 5 minutes, to keep the command working
    /// (CI runs it); says nothing about speed.
    #[arg(long)]
    quick: bool,
    /// Runs per workload, each stack once per run, alternating which goes first
    /// (default 3; 1 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Workloads to run, comma-separated (default all): import, start, content, diff,
    /// snapshots, reference.
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Only these image fixtures, comma-separated `name:compression` (smallfiles, bigfiles,
    /// mixed; gzip, zstd, none), for import and the machine's limits.
    #[arg(long, value_delimiter = ',')]
    fixtures: Vec<String>,
    /// Run one CPU-bound process per core alongside, as a busy node would.
    #[arg(long)]
    contention: bool,
    /// Keep the stacks' data in this dir instead of a journaled loop ext4 made for the run.
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Write benchmarks.md and benchmarks.svg into this dir (default: the workspace's docs/
    /// after a complete run: all workloads and fixtures, at least 3 runs, not --quick).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("strata-bench: {e}");
        std::process::exit(1);
    }
}

/// The command line a user types to get these figures again.
fn command_line(args: &Args) -> String {
    let mut cmd = String::from("cargo run --release -p strata-bench --");
    let versions: Vec<String> = args
        .containerd
        .iter()
        .map(|v| v.key().to_string())
        .collect();
    cmd.push_str(&format!(" --containerd {}", versions.join(",")));
    if args.quick {
        cmd.push_str(" --quick");
    }
    if let Some(r) = args.runs {
        cmd.push_str(&format!(" --runs {r}"));
    }
    if !args.workloads.is_empty() {
        cmd.push_str(&format!(" --workloads {}", args.workloads.join(",")));
    }
    if !args.fixtures.is_empty() {
        cmd.push_str(&format!(" --fixtures {}", args.fixtures.join(",")));
    }
    if args.contention {
        cmd.push_str(" --contention");
    }
    cmd
}

/// Under `cargo run`, builds the three servers in the same profile first, so that the one
/// command measures the code in the tree (a no-op when they are up to date).
fn build_servers() -> Result<(), String> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let release = exe.parent().and_then(Path::file_name) == Some("release".as_ref());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--locked", "--bins"]);
    for p in ["strata-snapshotter", "strata-content", "strata-differ"] {
        cmd.args(["-p", p]);
    }
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("{cmd:?}: {status}"))
}

fn run(args: &Args) -> Result<(), String> {
    strata_tests::install::require_root().map_err(|e| e.to_string())?;
    build_servers()?;
    // Before any thread starts (the environment is process-wide). The servers log at `info`,
    // as deployed; the harness would start them at `debug`.
    // SAFETY: single-threaded here; nothing reads the environment concurrently.
    unsafe {
        if std::env::var_os("RUST_LOG").is_none() {
            std::env::set_var("RUST_LOG", "info");
        }
    }
    let scratch = match &args.scratch {
        Some(dir) => Scratch::existing(dir),
        None => Scratch::loop_ext4(if args.quick { 8 } else { 40 })?,
    };
    // SAFETY: as above; the harness reads it for every scratch dir it makes.
    unsafe { std::env::set_var("STRATA_TEST_TMPDIR", scratch.path()) };
    let names: Vec<String> = if args.workloads.is_empty() {
        workloads::ALL.iter().map(|s| s.to_string()).collect()
    } else {
        args.workloads.clone()
    };
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 3 });
    let known: Vec<String> = workloads::import::all_fixtures(args.quick)
        .iter()
        .map(|f| f.label())
        .collect();
    if let Some(f) = args.fixtures.iter().find(|f| !known.contains(f)) {
        return Err(format!(
            "unknown fixture {f:?} (one of {})",
            known.join(", ")
        ));
    }
    let hogs = if args.contention {
        Some(hog::Hogs::start(hog::cpus()).map_err(|e| format!("starting the CPU hogs: {e}"))?)
    } else {
        None
    };
    let started = now();
    let mut results: Vec<(Version, String, Vec<Section>)> = Vec::new();
    let mut rss = RssFigures::default();
    for &version in &args.containerd {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let ctx = Ctx {
            version,
            runs,
            quick: args.quick,
            contended: args.contention,
            only_fixtures: args.fixtures.clone(),
            scratch: scratch.path().to_path_buf(),
            rt,
        };
        let mut sections = Vec::new();
        for name in &names {
            eprintln!("containerd {version}: {name}");
            let section = workloads::run(name, &ctx, &mut rss)
                .map_err(|e| format!("containerd {version}, {name}: {e}"))?;
            println!("{}", section.markdown(3));
            sections.push(section);
        }
        results.push((version, machine::containerd(version), sections));
    }
    let finished = now();
    let memory = memory_section(&rss);
    let stem = stem(args);
    let doc = document(
        args,
        &scratch,
        &results,
        &memory,
        hogs.as_ref(),
        &started,
        &finished,
    );
    drop(hogs);
    // Only a complete run may replace the figures in docs/ unasked; under contention the
    // import alone is complete (its target is what that mode is for), and it has a file of
    // its own.
    let all_workloads = args.workloads.is_empty()
        || (args.contention && args.workloads.iter().all(|w| w == "import"));
    let complete = !args.quick
        && all_workloads
        && args.fixtures.is_empty()
        && args.runs.is_none_or(|r| r >= 3);
    let out = args
        .out
        .clone()
        .or_else(|| complete.then(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")));
    let lost = missed_by_version(&results);
    if let Some(dir) = out {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let md = dir.join(format!("{stem}.md"));
        std::fs::write(&md, doc).map_err(|e| format!("{}: {e}", md.display()))?;
        let rows: Vec<(String, &Row)> = results
            .iter()
            .flat_map(|(v, _, sections)| {
                sections
                    .iter()
                    .flat_map(|s| &s.rows)
                    .filter(|r| r.columns.is_none())
                    .map(move |r| (format!("{v}: {}", r.label), r))
            })
            .collect();
        let title = format!(
            "strata vs containerd's built-ins{}",
            if args.contention {
                ", cores contended"
            } else {
                ""
            }
        );
        plot::ratios(&rows, &title, &dir.join(format!("{stem}.svg")))?;
        eprintln!("wrote {} and {stem}.svg", md.display());
    } else {
        println!("{}", memory.markdown(2));
    }
    if lost.is_empty() {
        eprintln!("every target met");
    } else {
        eprintln!("targets missed: {}", lost.join("; "));
    }
    Ok(())
}

/// The servers' memory over the import workload, as reference rows.
fn memory_section(rss: &RssFigures) -> Section {
    let mut references = Vec::new();
    for server in ["strata-snapshotter", "strata-content", "strata-differ"] {
        let mut peak = Reference::new(format!("{server} peak RSS"), Unit::Mebibytes);
        let mut idle = Reference::new(format!("{server} RSS after 2 s idle"), Unit::Mebibytes);
        for &(_, p, i) in rss.samples.iter().filter(|s| s.0 == server) {
            peak.samples.push(p as f64 / (1 << 20) as f64);
            idle.samples.push(i as f64 / (1 << 20) as f64);
        }
        if !peak.samples.is_empty() {
            references.push(peak);
            references.push(idle);
        }
    }
    Section {
        title: "Memory of strata's servers".into(),
        about: "Per server and stack started for an import (every fixture, every run): its \
                peak RSS over the import and unpack (`VmHWM`), and its RSS after 2 s idle."
            .into(),
        rows: Vec::new(),
        references,
    }
}

/// The rows that miss their targets, each named with its containerd release.
fn missed_by_version(results: &[(Version, String, Vec<Section>)]) -> Vec<String> {
    results
        .iter()
        .flat_map(|(v, _, sections)| {
            missed(sections)
                .into_iter()
                .map(move |m| format!("{v}: {m}"))
        })
        .collect()
}

fn now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The name of the files a run writes: a contended run keeps its own.
fn stem(args: &Args) -> &'static str {
    if args.contention {
        "benchmarks-contended"
    } else {
        "benchmarks"
    }
}

fn document(
    args: &Args,
    scratch: &Scratch,
    results: &[(Version, String, Vec<Section>)],
    memory: &Section,
    hogs: Option<&hog::Hogs>,
    started: &str,
    finished: &str,
) -> String {
    let mut doc = String::from("# Benchmarks\n\n");
    doc.push_str(
        "Written by `strata-bench` from one run; the next run writes this file afresh (past \
         runs are in git). strata's three plugins (strata-snapshotter, strata-content, \
         strata-differ reading blobs from strata-content's directory, all wired in \
         `[proxy_plugins]`) against containerd's built-ins (`overlayfs`, the local content \
         store, `walking`), each in a private containerd of the same release; the two take \
         turns (A B, then B A). Cells: median (min-max) over the runs; ratio: how many times \
         faster strata's median is (above 1: strata is faster). What the figures mean and \
         where the time goes: [performance.md](performance.md).\n\n",
    );
    doc.push_str(&format!("```sh\n{}\n```\n\n", command_line(args)));
    doc.push_str(&format!("- when: {started} to {finished}\n"));
    doc.push_str(&format!("- machine: {}\n", machine::describe()));
    doc.push_str(&format!("- strata: {}\n", machine::strata()));
    for (v, release, _) in results {
        doc.push_str(&format!("- containerd {v}: {release}\n"));
    }
    doc.push_str(&format!("- data: {}\n", scratch.describe()));
    doc.push_str(&format!(
        "- load: {}\n\n",
        match hogs {
            Some(h) => format!(
                "{} CPU-bound processes competing for the cores (`--contention`)",
                h.count()
            ),
            None => "none added (other work on the machine is not controlled)".into(),
        }
    ));
    let lost = missed_by_version(results);
    doc.push_str("## Targets\n\n");
    if lost.is_empty() {
        doc.push_str("Every row with a target meets it.\n\n");
    } else {
        doc.push_str("Missed:\n\n");
        for l in &lost {
            doc.push_str(&format!("- {l}\n"));
        }
        doc.push('\n');
    }
    doc.push_str(&format!(
        "![strata's speed relative to the built-ins]({}.svg)\n\n",
        stem(args)
    ));
    if !args.contention {
        doc.push_str(
            "The same imports with one CPU-bound process per core competing (`--contention \
             --workloads import`): [benchmarks-contended.md](benchmarks-contended.md).\n\n",
        );
    }
    for (v, release, sections) in results {
        doc.push_str(&format!("## containerd {v} ({release})\n\n"));
        for s in sections {
            doc.push_str(&s.markdown(3));
        }
    }
    doc.push_str(&memory.markdown(2));
    doc
}
