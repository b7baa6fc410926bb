//! The machine's own limits on the fixtures' data, as reference rows: `tar -x` of the plain
//! layer, the decompressors alone (`igzip -dc` where installed, `zcat`, `zstd -dc`) and
//! `sha256sum` of the blob. An import can beat none of them by much: it runs all of them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use strata_testkit::Compression;
use strata_tests::bench::{have, timed};

use super::import::{Fixture, fixtures};
use super::{Ctx, Result};
use crate::report::{Reference, Section, Unit};

pub fn run(ctx: &Ctx) -> Result<Section> {
    let mut references = Vec::new();
    for fixture in fixtures(ctx) {
        let image = fixture.image(ctx)?;
        let [layer] = image.layers() else {
            continue;
        };
        let blob = match layer.blob.path() {
            Some(p) => p.to_path_buf(),
            None => {
                let p = ctx.scratch.join("reference-blob");
                let bytes = layer.blob.to_vec().map_err(|e| e.to_string())?;
                std::fs::write(&p, bytes).map_err(|e| format!("{}: {e}", p.display()))?;
                p
            }
        };
        let plain = ctx.scratch.join("reference.tar");
        decompress_to(fixture.compression, &blob, &plain)?;
        let mut rows = tools(fixture)
            .into_iter()
            .map(|(label, cmd)| {
                (
                    Reference::new(format!("{label} ({})", fixture.label()), Unit::Seconds),
                    cmd,
                )
            })
            .collect::<Vec<_>>();
        let mut tar = Reference::new(
            format!("`tar -xf` of the plain layer ({})", fixture.label()),
            Unit::Seconds,
        );
        for _ in 0..ctx.runs {
            let out = ctx.scratch.join("reference-x");
            std::fs::create_dir(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            tar.samples.push(timed(
                Command::new("tar")
                    .arg("-xf")
                    .arg(&plain)
                    .arg("-C")
                    .arg(&out),
            ));
            std::fs::remove_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            for (r, cmd) in &mut rows {
                r.samples
                    .push(timed(Command::new(&cmd[0]).args(&cmd[1..]).arg(&blob)));
            }
        }
        std::fs::remove_file(&plain).map_err(|e| format!("{}: {e}", plain.display()))?;
        references.push(tar);
        references.extend(rows.into_iter().map(|(r, _)| r));
    }
    Ok(Section {
        title: "The machine's limits".into(),
        about: "Each single-layer fixture's data handled by the standard tools on the same file \
                system, output to /dev/null (tar: into an empty dir). Not a comparison: a floor \
                for what an import of that layer can take."
            .into(),
        rows: Vec::new(),
        references,
    })
}

/// The tools measured on a blob of `fixture`: (label, command without the blob argument).
fn tools(fixture: Fixture) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut tool = |label: &str, cmd: &[&str]| {
        out.push((
            label.to_string(),
            cmd.iter().map(|s| s.to_string()).collect(),
        ));
    };
    match fixture.compression {
        Compression::Gzip => {
            if have("igzip") {
                tool("`igzip -dc`", &["igzip", "-dc"]);
            }
            tool("`zcat`", &["zcat"]);
        }
        Compression::Zstd => tool("`zstd -dc`", &["zstd", "-q", "-dc"]),
        Compression::None => {}
    }
    tool("`sha256sum` of the blob", &["sha256sum"]);
    out
}

/// Writes the uncompressed tar of `blob` to `out`.
fn decompress_to(c: Compression, blob: &Path, out: &PathBuf) -> Result<()> {
    let file = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut cmd = match c {
        Compression::Gzip => Command::new("zcat"),
        Compression::Zstd => {
            let mut c = Command::new("zstd");
            c.args(["-q", "-dc"]);
            c
        }
        Compression::None => Command::new("cat"),
    };
    let status = cmd
        .arg(blob)
        .stdout(Stdio::from(file))
        .status()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {status}"))
    }
}
