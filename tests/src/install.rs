//! Making sure a containerd of the wanted version (and runc) is on the machine, through
//! `scripts/containerd-env.sh ensure`, so `cargo test` on a fresh machine fetches them itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::process::{command_line, describe_output, run_with_timeout};
use crate::version::Version;

/// apt on a slow mirror plus a fresh package list can take minutes; anything longer is a hang.
const ENSURE_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The environment script shipped with this crate.
pub fn env_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/containerd-env.sh")
}

/// Fails unless the harness runs as root: containerd, runc and mounts all need it.
pub fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::new(
            "strata's end-to-end tests must run as root (containerd, runc and overlay mounts \
             need it); run them with sudo or as root",
        ))
    }
}

/// Installs (once per machine, cached) containerd `version` and the test prerequisites, and
/// returns the dir holding its `containerd`, `ctr` and `containerd-shim-runc-v2`.
pub fn ensure_installed(version: Version) -> Result<PathBuf> {
    static DONE: Mutex<Option<HashMap<Version, PathBuf>>> = Mutex::new(None);
    require_root()?;
    // Held across the script so parallel tests in this process don't race apt; other
    // processes are serialized by the script's own flock.
    let mut done = DONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let done = done.get_or_insert_with(HashMap::new);
    if let Some(dir) = done.get(&version) {
        return Ok(dir.clone());
    }
    let script = env_script();
    let args = ["ensure", version.key()];
    let mut cmd = Command::new("bash");
    cmd.arg(&script).args(args);
    let output = run_with_timeout(&mut cmd, ENSURE_TIMEOUT)
        .map_err(|e| Error::io(format!("running {}", script.display()), e))?;
    let line = command_line(script.as_os_str(), &args);
    if !output.status.success() {
        return Err(Error::new(format!(
            "could not install containerd {version} and the test prerequisites (root, network \
             access to the Debian archive for apt, runc):\n{}",
            describe_output(&line, &output)
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = stdout.lines().last().map(str::trim).unwrap_or_default();
    let dir = PathBuf::from(dir);
    for bin in ["containerd", "ctr", "containerd-shim-runc-v2"] {
        if !dir.join(bin).is_file() {
            return Err(Error::new(format!(
                "{line} reported bin dir {:?} but it has no {bin}:\n{}",
                dir.display(),
                describe_output(&line, &output)
            )));
        }
    }
    done.insert(version, dir.clone());
    Ok(dir)
}

/// PATH for daemons: our containerd's bin dir first so its own shim is used, then the
/// caller's PATH, then the sbin dirs where Debian puts runc (not always on a user's PATH).
pub fn daemon_path(bin_dir: &Path) -> std::ffi::OsString {
    let mut dirs = vec![bin_dir.to_path_buf()];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    for extra in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let extra = PathBuf::from(extra);
        if !dirs.contains(&extra) {
            dirs.push(extra);
        }
    }
    std::env::join_paths(dirs).unwrap_or_default()
}
