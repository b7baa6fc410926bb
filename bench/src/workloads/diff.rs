//! Diff through containerd's diff service, as `ctr snapshots diff` and a container commit
//! call it: the built-in `walking` against strata-differ.
//!
//! Each stack imports a base image into its snapshotter (`overlayfs`, or strata's), prepares
//! an active snapshot on it and gets a change written through the snapshot's overlay mount
//! (not timed). Then, turn by turn, a client on containerd's socket calls Diff (a View of the
//! parent as the lower mounts, the active snapshot's mounts as the upper) once per output
//! type, after a `sync`; the blob's lease is deleted with `--sync` after each call, so the
//! garbage collection happens outside the timing.
//!
//! Changes: `small`, 20,000 new files of 0.5-8 KiB in 200 directories (what a container's
//! commit meets most); `big`, four 128 MiB files (compression dominates); `tiny@smallfiles`,
//! 100 files of 4 KiB on the 50,000-file `smallfiles` image (a Diff should cost in proportion
//! to the change, not to the image under it). The machine's limits on the same upperdir are
//! reference rows.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use strata_common::client::unix_channel;
use strata_common::mount::{mount, unmount};
use strata_common::namespace::RequestContext;
use strata_proto::diff::DiffRequest;
use strata_proto::diff::diff_client::DiffClient;
use strata_proto::snapshots::snapshots_client::SnapshotsClient;
use strata_proto::snapshots::{PrepareSnapshotRequest, ViewSnapshotRequest};
use strata_proto::types::Mount;
use strata_testkit::Compression;
use strata_testkit::fixtures;
use strata_testkit::image::Image;
use strata_tests::bench::{have, sync, timed};
use strata_tests::stack::DIFFER_MADE_LOG;
use strata_tests::{PluginKind, Stack, unique_name};

use super::import::Fixture;
use super::{Ctx, Result};
use crate::report::{Reference, Row, Section, Unit};
use crate::side::Side;

/// The layer types asked for: (label, media type).
const TYPES: [(&str, &str); 3] = [
    ("tar", "application/vnd.oci.image.layer.v1.tar"),
    ("gzip", "application/vnd.oci.image.layer.v1.tar+gzip"),
    ("zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
];

/// What is written into the active snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    /// 100 files of 0.5-8 KiB in each of `dirs` directories.
    Small { dirs: u64 },
    /// `files` files of `mib` MiB.
    Big { files: u64, mib: u64 },
    /// 100 files of 4 KiB.
    Tiny,
}

/// A change and the image it is written on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Case {
    change: Change,
    /// On `smallfiles` (at the run's scale) instead of busybox.
    on_smallfiles: bool,
}

impl Case {
    /// What a row calls the change of `files` files and `bytes` bytes: short, as the plot
    /// shows it.
    fn describe(self, files: u64, bytes: u64, smallfiles: usize) -> String {
        let mib = bytes as f64 / (1 << 20) as f64;
        match (self.change, self.on_smallfiles) {
            (Change::Small { .. }, false) => format!("{files} small files ({mib:.0} MiB)"),
            (Change::Big { .. }, false) => format!("{files} big files ({mib:.0} MiB)"),
            (_, false) => format!("{files} files ({mib:.1} MiB)"),
            (_, true) => format!("{files} files on a {smallfiles}-file image"),
        }
    }
}

/// The cases of a run: the 20,000 files and one small change in the 50,000-file
/// image, plus big files; in quick mode a tenth of the files and 8 MiB files, on a
/// `smallfiles` scaled as the import's.
fn cases(quick: bool) -> [Case; 3] {
    let (dirs, files, mib) = if quick { (20, 2, 8) } else { (200, 4, 128) };
    [
        Case {
            change: Change::Small { dirs },
            on_smallfiles: false,
        },
        Case {
            change: Change::Big { files, mib },
            on_smallfiles: false,
        },
        Case {
            change: Change::Tiny,
            on_smallfiles: true,
        },
    ]
}

/// Text-like bytes (compressing about 3:1, as source trees and binaries mixed do), fast to
/// make, so that neither compressor meets data it can skip nor data it cannot shrink.
fn fill(buf: &mut [u8], seed: u64) {
    const WORDS: [&[u8]; 8] = [
        b"container ",
        b"layer ",
        b"snapshot ",
        b"0x7f3a ",
        b"return; ",
        b"\n\t",
        b"strata ",
        b"{ }",
    ];
    let mut x = seed | 1;
    let mut i = 0;
    while i < buf.len() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let word = x.to_le_bytes();
        let piece: &[u8] = if x.is_multiple_of(4) {
            &word
        } else {
            WORDS[(x >> 8) as usize % WORDS.len()]
        };
        let n = piece.len().min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&piece[..n]);
        i += n;
    }
}

fn io_err(what: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", what.display())
}

/// Writes `change` under `root`: (files, bytes) written.
fn write_change(root: &Path, change: Change) -> Result<(u64, u64)> {
    let (mut files, mut bytes) = (0u64, 0u64);
    match change {
        Change::Small { dirs } => {
            let mut buf = vec![0u8; 8192];
            for d in 0..dirs {
                let dir = root.join(format!("app/d{d:03}"));
                std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                for f in 0..100u64 {
                    let seed = d * 1000 + f;
                    let len = 512 + (seed * 2_654_435_761 % 7680) as usize;
                    fill(&mut buf[..len], seed);
                    let path = dir.join(format!("f{f:03}.dat"));
                    std::fs::write(&path, &buf[..len]).map_err(io_err(&path))?;
                    files += 1;
                    bytes += len as u64;
                }
            }
        }
        Change::Big { files: n, mib } => {
            let mut buf = vec![0u8; 1 << 20];
            let dir = root.join("data");
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            for i in 0..n {
                let path = dir.join(format!("big{i}.bin"));
                let mut f = std::fs::File::create(&path).map_err(io_err(&path))?;
                for c in 0..mib {
                    fill(&mut buf, i * 1000 + c);
                    f.write_all(&buf).map_err(io_err(&path))?;
                }
                files += 1;
                bytes += mib << 20;
            }
        }
        Change::Tiny => {
            let mut buf = vec![0u8; 4096];
            let dir = root.join("tiny");
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            for f in 0..100u64 {
                fill(&mut buf, 7_000_000 + f);
                let path = dir.join(format!("f{f:03}.dat"));
                std::fs::write(&path, &buf).map_err(io_err(&path))?;
                files += 1;
                bytes += buf.len() as u64;
            }
        }
    }
    Ok((files, bytes))
}

/// The `upperdir=` of the single overlay mount of an active snapshot on a parent.
fn upperdir(mounts: &[Mount]) -> Result<&Mount> {
    match mounts {
        [m] if m.options.iter().any(|o| o.starts_with("upperdir=")) => Ok(m),
        _ => Err(format!(
            "one overlay mount with an upperdir expected: {mounts:?}"
        )),
    }
}

/// One stack set up for a case: a change written in an active snapshot on the base image.
struct Target {
    side: Side,
    stack: Stack,
    /// Carries the lease each Diff's blob lives under, deleted after each call.
    cx: RequestContext,
    lease: String,
    lower: Vec<Mount>,
    upper: Vec<Mount>,
    upperdir: PathBuf,
}

impl Target {
    /// Starts `side`'s stack, imports `base` and writes `change` into a snapshot on it:
    /// the target and (files, bytes) written.
    fn start(ctx: &Ctx, side: Side, base: &Image, change: Change) -> Result<(Target, u64, u64)> {
        let stack = side.start(ctx.version).map_err(|e| e.to_string())?;
        let snapshotter = side.snapshotter();
        stack
            .import(base, &["--snapshotter", snapshotter])
            .map_err(|e| e.to_string())?;
        let parent = base
            .chain_ids()
            .last()
            .cloned()
            .ok_or("the base image has no layer")?;
        // The snapshots live under a lease of their own, for as long as the stack.
        let (_, snap_cx) = stack.lease("snaps").map_err(|e| e.to_string())?;
        let (lease, cx) = stack.lease("bench").map_err(|e| e.to_string())?;
        let failed = |what: &str, e: tonic::Status| format!("{what}: {e}\n{}", stack.log_tails());
        let (lower, upper) = ctx.rt.block_on(async {
            let mut snaps = SnapshotsClient::new(unix_channel(stack.containerd.socket()));
            let prepare = snap_cx
                .request(PrepareSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    key: unique_name("work"),
                    parent: parent.clone(),
                    labels: HashMap::new(),
                })
                .map_err(|e| e.to_string())?;
            let upper = snaps
                .prepare(prepare)
                .await
                .map_err(|e| failed("Prepare", e))?
                .into_inner()
                .mounts;
            let view = snap_cx
                .request(ViewSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    key: unique_name("lower"),
                    parent,
                    labels: HashMap::new(),
                })
                .map_err(|e| e.to_string())?;
            let lower = snaps
                .view(view)
                .await
                .map_err(|e| failed("View", e))?
                .into_inner()
                .mounts;
            Ok::<_, String>((lower, upper))
        })?;
        let m = upperdir(&upper)?;
        let dir = m
            .options
            .iter()
            .find_map(|o| o.strip_prefix("upperdir="))
            .map(PathBuf::from)
            .ok_or("no upperdir")?;
        let target = stack.containerd.dir().path().join("work-mnt");
        std::fs::create_dir_all(&target).map_err(io_err(&target))?;
        mount(&m.r#type, &m.source, &m.options, &target).map_err(io_err(&target))?;
        let written = write_change(&target, change);
        unmount(&target).map_err(io_err(&target))?;
        let (files, bytes) = written?;
        let t = Target {
            side,
            stack,
            cx,
            lease,
            lower,
            upper,
            upperdir: dir,
        };
        Ok((t, files, bytes))
    }

    /// Layers strata-differ logged as made so far (0 on the built-ins' side).
    fn made(&self) -> usize {
        self.stack
            .plugins
            .get(PluginKind::Differ)
            .map(|p| p.log().matches(DIFFER_MADE_LOG).count())
            .unwrap_or(0)
    }

    /// One timed Diff to `media_type`, its blob collected afterwards; `None` when the
    /// built-in does not make that type (1.7's `walking` makes no zstd).
    fn diff(&self, rt: &tokio::runtime::Runtime, media_type: &str) -> Result<Option<f64>> {
        let before = self.made();
        sync();
        let secs = rt.block_on(async {
            let mut diff = DiffClient::new(unix_channel(self.stack.containerd.socket()));
            let req = self
                .cx
                .request(DiffRequest {
                    left: self.lower.clone(),
                    right: self.upper.clone(),
                    media_type: media_type.into(),
                    ..Default::default()
                })
                .map_err(|e| e.to_string())?;
            let t = Instant::now();
            match diff.diff(req).await {
                Ok(_) => Ok(Some(t.elapsed().as_secs_f64())),
                Err(e) if e.code() == tonic::Code::Unimplemented && self.side == Side::Builtin => {
                    Ok(None)
                }
                Err(e) => Err(format!(
                    "Diff to {media_type}: {e}\n{}",
                    self.stack.log_tails()
                )),
            }
        })?;
        if secs.is_some() && self.side == Side::Strata && self.made() != before + 1 {
            return Err(format!(
                "strata-differ logged no `{DIFFER_MADE_LOG}` for a Diff to {media_type}: \
                 containerd used another differ"
            ));
        }
        let ctd = &self.stack.containerd;
        ctd.try_ctr_ok(&["leases", "delete", "--sync", &self.lease])
            .and_then(|_| ctd.try_ctr_ok(&["leases", "create", "--id", &self.lease]))
            .map_err(|e| e.to_string())?;
        Ok(secs)
    }
}

/// The machine's limits on `upperdir`: (label, shell pipeline).
fn limits(upperdir: &Path) -> Vec<(&'static str, String)> {
    let dir = upperdir.display();
    // GNU tar skips reading the files when its output is /dev/null itself.
    let mut out = vec![
        ("`tar -c`", format!("tar -cf - -C '{dir}' . | cat")),
        (
            "`tar -c \\| gzip -6`",
            format!("tar -cf - -C '{dir}' . | gzip -6"),
        ),
    ];
    if have("pigz") {
        out.push((
            "`tar -c \\| pigz -6`",
            format!("tar -cf - -C '{dir}' . | pigz -6"),
        ));
    }
    if have("zstd") {
        out.push((
            "`tar -c \\| zstd -3 -T0`",
            format!("tar -cf - -C '{dir}' . | zstd -3 -T0 -c"),
        ));
    }
    out
}

/// `smallfiles`' file count at `ctx`'s scale (as `strata_testkit::fixtures` makes it).
fn smallfiles_count(ctx: &Ctx) -> usize {
    (50000.0 * ctx.scale()) as usize
}

pub fn run(ctx: &Ctx) -> Result<Section> {
    let mut rows = Vec::new();
    let mut references = Vec::new();
    let busybox = fixtures::busybox(Compression::Gzip).map_err(|e| format!("busybox: {e}"))?;
    for case in cases(ctx.quick) {
        let smallfiles;
        let base = if case.on_smallfiles {
            smallfiles = Fixture {
                name: "smallfiles",
                compression: Compression::Gzip,
            }
            .image(ctx)?;
            &smallfiles
        } else {
            &busybox
        };
        let (builtin, files, bytes) = Target::start(ctx, Side::Builtin, base, case.change)?;
        let (strata, _, _) = Target::start(ctx, Side::Strata, base, case.change)?;
        let what = case.describe(files, bytes, smallfiles_count(ctx));
        eprintln!("  diff: {what} written in both stacks");
        let mut case_rows: Vec<Row> = TYPES
            .iter()
            .map(|(t, _)| Row::new(format!("Diff of {what} to {t}"), Unit::Seconds, None))
            .collect();
        let limits = limits(&builtin.upperdir);
        let mut limit_refs: Vec<Reference> = limits
            .iter()
            .map(|(l, _)| Reference::new(format!("{l} of the upperdir with {what}"), Unit::Seconds))
            .collect();
        for run in 0..ctx.runs {
            for side in Side::order(run) {
                let t = if side == Side::Builtin {
                    &builtin
                } else {
                    &strata
                };
                for (row, (_, media_type)) in case_rows.iter_mut().zip(TYPES) {
                    if let Some(secs) = t.diff(&ctx.rt, media_type)? {
                        row.push(side, secs);
                    }
                }
            }
            for (r, (_, script)) in limit_refs.iter_mut().zip(&limits) {
                r.samples
                    .push(timed(Command::new("sh").arg("-c").arg(script)));
            }
        }
        for row in case_rows {
            if row.builtin.is_empty() {
                // Nothing to compare with: strata's figure stands alone.
                let mut r = Reference::new(
                    format!(
                        "{}, strata-differ (the built-in makes no such layer)",
                        row.label
                    ),
                    Unit::Seconds,
                );
                r.samples = row.strata;
                references.push(r);
            } else {
                rows.push(row);
            }
        }
        references.extend(limit_refs);
    }
    Ok(Section {
        title: "Diff".into(),
        about: "A client on containerd's socket calls the diff service's Diff (what `ctr \
                snapshots diff` does: a View of the parent as the lower mounts, an active \
                snapshot with the change written in it as the upper) once per output type. \
                Changes: small files of 0.5-8 KiB, 100 to a directory, and big files, both on \
                busybox, of text-like data that compresses about 3:1; 100 files of 4 KiB on \
                the `smallfiles` image (a Diff should cost in proportion to the change, not \
                to the image under it). The built-ins' side diffs `overlayfs` snapshots with \
                `walking`; strata's diffs strata-snapshotter's with strata-differ, which \
                writes the layer into strata-content's directory (checked in its log: no \
                `walking` fallback). The blob is collected after each call, outside the \
                timing. Reference rows: the standard tools on the same upperdir."
            .into(),
        rows,
        references,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_write_what_they_say() {
        let dir = strata_tests::tmp::TestDir::new("diff-change").expect("a scratch dir");
        let (files, bytes) = write_change(dir.path(), Change::Small { dirs: 2 }).expect("small");
        assert_eq!(files, 200);
        assert!((200 * 512..200 * 8192).contains(&bytes), "{bytes}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("app/d001"))
                .expect("d001")
                .count(),
            100
        );
        let (files, bytes) =
            write_change(dir.path(), Change::Big { files: 2, mib: 1 }).expect("big");
        assert_eq!((files, bytes), (2, 2 << 20));
        assert_eq!(
            std::fs::metadata(dir.path().join("data/big1.bin"))
                .expect("big1")
                .len(),
            1 << 20
        );
        let (files, bytes) = write_change(dir.path(), Change::Tiny).expect("tiny");
        assert_eq!((files, bytes), (100, 100 * 4096));
    }

    #[test]
    fn filled_bytes_are_text_like_and_seeded() {
        let (mut a, mut b, mut c) = (vec![0u8; 4096], vec![0u8; 4096], vec![0u8; 4096]);
        fill(&mut a, 1);
        fill(&mut b, 1);
        fill(&mut c, 2);
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Mostly the words, so compressible; some raw words, so not trivially.
        let printable = a
            .iter()
            .filter(|&&x| x.is_ascii_graphic() || x == b' ')
            .count();
        assert!(
            printable > a.len() / 2 && printable < a.len(),
            "{printable}"
        );
    }

    #[test]
    fn rows_name_the_change_briefly() {
        let [small, big, tiny] = cases(false);
        assert_eq!(
            small.describe(20_000, 90 << 20, 50_000),
            "20000 small files (90 MiB)"
        );
        assert_eq!(big.describe(4, 512 << 20, 50_000), "4 big files (512 MiB)");
        assert_eq!(
            tiny.describe(100, 100 * 4096, 50_000),
            "100 files on a 50000-file image"
        );
    }

    #[test]
    fn quick_cases_are_the_full_ones_scaled_down() {
        let full = cases(false);
        let quick = cases(true);
        assert_eq!(full.map(|c| c.on_smallfiles), [false, false, true]);
        assert_eq!(quick.map(|c| c.on_smallfiles), [false, false, true]);
        assert_eq!(full[0].change, Change::Small { dirs: 200 });
        assert_eq!(full[1].change, Change::Big { files: 4, mib: 128 });
        assert!(quick.iter().all(|c| match c.change {
            Change::Small { dirs } => dirs < 200,
            Change::Big { files, mib } => files * mib < 4 * 128,
            Change::Tiny => c.on_smallfiles,
        }));
    }

    #[test]
    fn the_upper_is_one_overlay_mount() {
        let overlay = Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "lowerdir=/l".into(),
                "upperdir=/u".into(),
                "workdir=/w".into(),
            ],
            ..Default::default()
        };
        assert!(upperdir(std::slice::from_ref(&overlay)).is_ok());
        let bind = Mount {
            r#type: "bind".into(),
            source: "/s".into(),
            options: vec!["rbind".into()],
            ..Default::default()
        };
        assert!(upperdir(&[bind]).is_err());
        assert!(upperdir(&[overlay.clone(), overlay]).is_err());
    }
}
