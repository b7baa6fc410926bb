//! Running and stopping child processes with bounded waits, signalling only pids we spawned.

use std::ffi::OsStr;
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const POLL: Duration = Duration::from_millis(20);

/// Waits up to `timeout` for `child` to exit; `Ok(None)` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL);
    }
}

/// Sends `signal` to `child` unless it has already been reaped. Until we reap it the pid
/// cannot be reused, so this never hits an unrelated process.
pub fn signal(child: &mut Child, signal: Signal) -> std::io::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    let pid = i32::try_from(child.id()).map_err(std::io::Error::other)?;
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// SIGTERM, up to `grace` to exit, then SIGKILL; reaps the child. Returns its exit status if
/// it could be collected.
pub fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = signal(child, Signal::SIGTERM);
    if let Ok(Some(status)) = wait_timeout(child, grace) {
        return Some(status);
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Runs `cmd` to completion with stdin closed and stdout/stderr captured, killing it after
/// `timeout`. A timed-out run returns the killed process's status with a note appended to
/// stderr, so callers report it like any other failure.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> std::io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Pipes must be drained while waiting, or a chatty child blocks on a full pipe.
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let (status, timed_out) = match wait_timeout(&mut child, timeout)? {
        Some(status) => (status, false),
        None => {
            let _ = child.kill();
            (child.wait()?, true)
        }
    };
    let stdout = out.join().unwrap_or_default();
    let mut stderr = err.join().unwrap_or_default();
    if timed_out {
        stderr.extend_from_slice(
            format!(
                "\n[harness: killed after {} s timeout]\n",
                timeout.as_secs()
            )
            .as_bytes(),
        );
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// A shell-like rendering of a command line, for messages.
pub fn command_line<S: AsRef<OsStr>>(program: &OsStr, args: &[S]) -> String {
    let mut s = program.to_string_lossy().into_owned();
    for a in args {
        let a = a.as_ref().to_string_lossy();
        s.push(' ');
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            s.push('\'');
            s.push_str(&a.replace('\'', r"'\''"));
            s.push('\'');
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// `COMMAND` / exit status / stdout / stderr, for failure messages.
pub fn describe_output(command: &str, output: &Output) -> String {
    format!(
        "command: {command}\nstatus: {}\n---- stdout ----\n{}\n---- stderr ----\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim_end(),
        String::from_utf8_lossy(&output.stderr).trim_end()
    )
}
