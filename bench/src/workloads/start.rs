//! Container start: `ctr run --rm` of busybox running `true`, on an image imported (not
//! timed) into a fresh containerd per run.

use std::ffi::OsStr;

use strata_testkit::Compression;
use strata_testkit::fixtures;
use strata_tests::unique_name;

use super::{Ctx, Result, timed_ctr};
use crate::report::{Row, Section, Unit};
use crate::side::Side;

/// Containers started per stack and run.
const STARTS: usize = 3;

pub fn run(ctx: &Ctx) -> Result<Section> {
    let image = fixtures::busybox(Compression::Gzip).map_err(|e| format!("busybox: {e}"))?;
    let mut row = Row::new("`ctr run --rm` busybox `true`", Unit::Seconds, Some(1.0));
    for run in 0..ctx.runs {
        for side in Side::order(run) {
            let stack = side.start(ctx.version).map_err(|e| e.to_string())?;
            stack
                .import(&image, &["--snapshotter", side.snapshotter()])
                .map_err(|e| e.to_string())?;
            for _ in 0..STARTS {
                let id = unique_name("start");
                let secs = timed_ctr(
                    &stack,
                    &[
                        OsStr::new("run"),
                        OsStr::new("--rm"),
                        OsStr::new("--snapshotter"),
                        OsStr::new(side.snapshotter()),
                        OsStr::new(&image.name),
                        OsStr::new(&id),
                        OsStr::new("true"),
                    ],
                )?;
                row.push(side, secs);
            }
        }
    }
    Ok(Section {
        title: "Container start".into(),
        about: format!(
            "`ctr run --rm --snapshotter S {} ID true`, {STARTS} containers per stack and run: \
             snapshot Prepare, mount, runc start and exit, snapshot Remove.",
            image.name
        ),
        rows: vec![row],
        references: Vec::new(),
    })
}
