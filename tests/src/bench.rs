//! What the benchmarks share: medians, a sync before each timed step, timing a command,
//! whether a tool is installed, the knobs read from the environment, and the containerd the
//! differ benchmarks compare.

use std::process::{Command, Stdio};
use std::time::Instant;

use crate::{PluginSet, Stack, StackOptions, Version};

/// The median (upper middle for an even count); NaN for no samples.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Flushes every file system, so writeback of one step does not land on the next.
pub fn sync() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Runs `cmd` after a [`sync`], stdout to /dev/null; its wall time. Panics if it fails.
pub fn timed(cmd: &mut Command) -> f64 {
    sync();
    let t = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let d = t.elapsed().as_secs_f64();
    assert!(status.success(), "{cmd:?}: {status}");
    d
}

/// Whether `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The containerd release `STRATA_BENCH_VERSION` names: `1.7`, else 2.x.
pub fn version_from_env() -> Version {
    match std::env::var("STRATA_BENCH_VERSION").as_deref() {
        Ok("1.7") => Version::V1_7,
        _ => Version::V2,
    }
}

/// The environment variable `name` parsed as a `T`, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A containerd of `version` with only the built-ins (`walking`), or with strata-differ wired
/// ahead of them (`strata`). `STRATA_BENCH_BLOB_FILES=1` gives strata-differ containerd's
/// content directory (`content_root`). Panics if it does not start.
pub fn differ_stack(version: Version, strata: bool) -> Stack {
    let set = if strata {
        PluginSet {
            differ: true,
            ..PluginSet::NONE
        }
    } else {
        PluginSet::NONE
    };
    let options = StackOptions {
        differ_reads_blob_files: std::env::var("STRATA_BENCH_BLOB_FILES").as_deref() == Ok("1"),
        plugin_args: Vec::new(),
        ..StackOptions::only(set)
    };
    Stack::start(version, &options).expect("starting the stack")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(&[]).is_nan());
        assert!(have("sh"));
        assert!(!have("strata-no-such-tool"));
    }
}
