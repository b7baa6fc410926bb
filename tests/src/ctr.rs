//! Running `ctr` against one private containerd, with timeouts and failure messages that carry
//! the daemons' log tails.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::logs;
use crate::process::{command_line, describe_output, run_with_timeout};

/// Default bound for one ctr command: long enough for an import on a loaded two-core machine,
/// short enough that a hang (e.g. a content store answering Unavailable forever) fails the test.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Lines of each log included in a failure message.
pub const LOG_TAIL_LINES: usize = 80;

/// How to run the `ctr` matching one daemon.
#[derive(Clone, Debug)]
pub struct Ctr {
    pub binary: PathBuf,
    pub address: PathBuf,
    /// Passed as `CONTAINERD_NAMESPACE`, so an explicit `-n` in the arguments still wins.
    pub namespace: String,
    /// (name, path) of logs to show when a command fails: containerd's first.
    pub logs: Vec<(String, PathBuf)>,
}

impl Ctr {
    fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> (Command, String) {
        let mut full: Vec<OsString> = vec!["--address".into(), self.address.clone().into()];
        full.extend(args.iter().map(|a| a.as_ref().to_os_string()));
        let line = format!(
            "CONTAINERD_NAMESPACE={} {}",
            self.namespace,
            command_line(self.binary.as_os_str(), &full)
        );
        let mut cmd = Command::new(&self.binary);
        cmd.args(&full)
            .env("CONTAINERD_NAMESPACE", &self.namespace)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_SNAPSHOTTER");
        (cmd, line)
    }

    /// Runs ctr with `args`; a spawn failure or timeout shows up as a failed Output.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S], timeout: Duration) -> Output {
        let (mut cmd, line) = self.command(args);
        match run_with_timeout(&mut cmd, timeout) {
            Ok(out) => out,
            Err(e) => Output {
                status: failed_status(),
                stdout: Vec::new(),
                stderr: format!("[harness: could not run {line}: {e}]").into_bytes(),
            },
        }
    }

    /// Runs ctr with `args` and returns its stdout, or an error with the command, its output
    /// and the log tails.
    pub fn run_ok<S: AsRef<OsStr>>(&self, args: &[S], timeout: Duration) -> Result<String> {
        let (_, line) = self.command(args);
        let out = self.run(args, timeout);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(Error::new(format!(
                "ctr failed\n{}\n{}",
                describe_output(&line, &out),
                self.log_tails()
            )))
        }
    }

    pub fn log_tails(&self) -> String {
        self.logs
            .iter()
            .map(|(name, path)| logs::titled_tail(name, path, LOG_TAIL_LINES))
            .collect()
    }
}

fn failed_status() -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    // exit code 127, like a shell that could not run the command
    std::process::ExitStatus::from_raw(127 << 8)
}
