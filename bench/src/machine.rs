//! What docs/benchmarks.md says about the machine and the builds a run measured.

use std::process::Command;

use strata_tests::install::ensure_installed;
use strata_tests::plugins::binary;
use strata_tests::{PluginKind, Version};

/// First line of `cmd`'s stdout, or `unknown`.
fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `/proc/cpuinfo`'s model name, the CPUs, memory and kernel, as one line.
pub fn describe() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .map_or("unknown CPU", str::trim)
        .to_string();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / (1 << 20) as f64);
    format!(
        "{} CPUs ({model}), {mem_gib:.0} GiB, Linux {}",
        crate::hog::cpus(),
        first_line(Command::new("uname").arg("-r"))
    )
}

/// `containerd --version` of the build the harness runs for `version`.
pub fn containerd(version: Version) -> String {
    match ensure_installed(version) {
        Ok(dir) => first_line(Command::new(dir.join("containerd")).arg("--version")),
        Err(e) => format!("unknown ({e})"),
    }
}

/// `strata-content --version`: strata's version and the commit it was built from.
pub fn strata() -> String {
    match binary(PluginKind::Content) {
        Ok(bin) => first_line(Command::new(bin).arg("--version")),
        Err(e) => format!("unknown ({e})"),
    }
}
