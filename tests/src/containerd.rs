//! A private containerd daemon of a given version: its own root, state, sockets and log in a
//! scratch dir, with CRI and NRI off, so several (of either version) can run at once.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::config::{config_toml, layout};
use crate::ctr::{self, Ctr};
use crate::error::{Error, Result};
use crate::ids::unique_name;
use crate::install::{daemon_path, ensure_installed};
use crate::logs;
use crate::process::{self, command_line, run_with_timeout};
use crate::tmp::TestDir;
use crate::version::Version;

/// How long containerd gets to answer `ctr version` after start.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long containerd gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(20);
/// Bound of each ctr call made while tearing down.
const TEARDOWN_CTR_TIMEOUT: Duration = Duration::from_secs(30);

/// The scratch dir of one private containerd, reserved before the daemon starts so its socket
/// path can be handed to others (e.g. the differ's `--content-address`) first.
#[derive(Debug)]
pub struct ContainerdDir {
    dir: TestDir,
}

impl ContainerdDir {
    pub fn new() -> Result<ContainerdDir> {
        Ok(ContainerdDir {
            dir: TestDir::new("strata-ctd")?,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The gRPC socket (what `ctr --address` takes).
    pub fn socket(&self) -> PathBuf {
        self.dir.join(layout::SOCKET)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join(layout::CONFIG)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(layout::LOG)
    }

    /// containerd's `root` (content, metadata, snapshots of built-in snapshotters).
    pub fn root(&self) -> PathBuf {
        self.dir.join(layout::ROOT)
    }

    /// containerd's `state` (task bundles and their rootfs mounts).
    pub fn state(&self) -> PathBuf {
        self.dir.join(layout::STATE)
    }
}

/// How to start a [`Containerd`].
#[derive(Clone, Debug)]
pub struct ContainerdOptions {
    pub version: Version,
    /// Tables appended to the config, typically [`crate::ProxyPlugins::toml`].
    pub proxy_toml: String,
    /// Plugin ids disabled on top of CRI and NRI, e.g. the built-in content store when
    /// strata-content is wired ([`crate::ProxyPlugins::disabled_plugins`]).
    pub disabled_plugins: Vec<String>,
    /// The namespace ctr commands use; `None` picks a unique one, so that two daemons running
    /// containers at once don't share runc state, fifos or cgroup paths.
    pub namespace: Option<String>,
    pub log_level: String,
    /// Other logs (name, path) to show when a ctr command or the start fails, e.g. the
    /// plugins'.
    pub extra_logs: Vec<(String, PathBuf)>,
}

impl ContainerdOptions {
    pub fn new(version: Version) -> Self {
        ContainerdOptions {
            version,
            proxy_toml: String::new(),
            disabled_plugins: Vec::new(),
            namespace: None,
            log_level: "debug".to_string(),
            extra_logs: Vec::new(),
        }
    }
}

/// A running private containerd. Dropping it kills its tasks, stops the daemon (only the pid
/// it started), unmounts whatever is left below its dir and removes the dir.
#[derive(Debug)]
pub struct Containerd {
    version: Version,
    release: String,
    bin_dir: PathBuf,
    child: Child,
    ctr: Ctr,
    // last, so it is removed after Drop::drop has stopped the daemon
    dir: ContainerdDir,
}

impl Containerd {
    /// containerd `version` with `proxy_toml` appended to its config.
    pub fn start(version: Version, proxy_toml: &str) -> Result<Containerd> {
        let mut options = ContainerdOptions::new(version);
        options.proxy_toml = proxy_toml.to_string();
        Containerd::start_with(options)
    }

    pub fn start_with(options: ContainerdOptions) -> Result<Containerd> {
        Containerd::start_in(ContainerdDir::new()?, options)
    }

    /// Starts in a dir reserved earlier with [`ContainerdDir::new`].
    pub fn start_in(dir: ContainerdDir, options: ContainerdOptions) -> Result<Containerd> {
        let version = options.version;
        let bin_dir = ensure_installed(version)?;
        let containerd = bin_dir.join("containerd");
        let release = release_of(&containerd)?;
        if !version.matches_release(&release) {
            return Err(Error::new(format!(
                "{} is containerd {release}, not {version}: remove {} to reinstall",
                containerd.display(),
                bin_dir.display()
            )));
        }
        for sub in [dir.root(), dir.state()] {
            std::fs::create_dir_all(&sub)
                .map_err(|e| Error::io(format!("creating {}", sub.display()), e))?;
        }
        let config = config_toml(
            version,
            dir.path(),
            &options.log_level,
            &options.disabled_plugins,
            &options.proxy_toml,
        );
        let config_path = dir.config_path();
        std::fs::write(&config_path, &config)
            .map_err(|e| Error::io(format!("writing {}", config_path.display()), e))?;
        let log_path = dir.log_path();
        let log = File::create(&log_path)
            .map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io(format!("duplicating {}", log_path.display()), e))?;
        let args = [
            OsStr::new("--config"),
            config_path.as_os_str(),
            OsStr::new("--log-level"),
            OsStr::new(&options.log_level),
        ];
        let line = command_line(containerd.as_os_str(), &args);
        let child = Command::new(&containerd)
            .args(args)
            .env("PATH", daemon_path(&bin_dir))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| Error::io(format!("starting {line}"), e))?;
        let mut logs = vec![(format!("containerd {release}"), log_path.clone())];
        logs.extend(options.extra_logs.iter().cloned());
        let namespace = options.namespace.clone().unwrap_or_else(|| {
            unique_name(&format!(
                "{NAMESPACE_PREFIX}{}",
                version.key().replace('.', "")
            ))
        });
        let ctr = Ctr {
            binary: bin_dir.join("ctr"),
            address: dir.socket(),
            namespace,
            logs,
        };
        let mut ctd = Containerd {
            version,
            release,
            bin_dir,
            child,
            ctr,
            dir,
        };
        if let Err(e) = ctd.wait_ready() {
            return Err(e
                .with_details(format!("command: {line}\n---- config.toml ----\n{config}"))
                .with_details(ctd.ctr.log_tails()));
        }
        Ok(ctd)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(|e| Error::io("waiting for containerd", e))?
            {
                return Err(Error::new(format!(
                    "containerd {} exited during startup: {status}",
                    self.release
                )));
            }
            let out = self.ctr.run(&["version"], Duration::from_secs(10));
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::new(format!(
                    "containerd {} did not answer `ctr version` within {START_TIMEOUT:?}: {}",
                    self.release,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The exact release, e.g. `1.7.24~ds1` or `2.1.9+unknown`.
    pub fn release(&self) -> &str {
        &self.release
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.socket()
    }

    pub fn dir(&self) -> &ContainerdDir {
        &self.dir
    }

    /// The namespace ctr commands use unless given `-n`.
    pub fn namespace(&self) -> &str {
        &self.ctr.namespace
    }

    /// The daemon's whole log so far (debug level), e.g. to assert which differ ran.
    pub fn log(&self) -> String {
        logs::read_all(&self.dir.log_path())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        logs::tail(&self.dir.log_path(), lines)
    }

    /// Adds a log (e.g. a plugin's) to those shown when a ctr command fails.
    pub fn add_log(&mut self, name: impl Into<String>, path: impl Into<PathBuf>) {
        self.ctr.logs.push((name.into(), path.into()));
    }

    /// The tails of containerd's log and of every added log.
    pub fn log_tails(&self) -> String {
        self.ctr.log_tails()
    }

    pub fn ctr_handle(&self) -> &Ctr {
        &self.ctr
    }

    /// Runs this daemon's ctr with `args` (bounded by [`ctr::DEFAULT_TIMEOUT`]).
    pub fn ctr<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.ctr.run(args, ctr::DEFAULT_TIMEOUT)
    }

    pub fn ctr_timeout<S: AsRef<OsStr>>(&self, args: &[S], timeout: Duration) -> Output {
        self.ctr.run(args, timeout)
    }

    /// Runs ctr and returns its stdout, or an error carrying the command, its output and the
    /// log tails.
    pub fn try_ctr_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        self.ctr.run_ok(args, ctr::DEFAULT_TIMEOUT)
    }

    /// Runs ctr and returns its stdout; panics with the command, its output and the log
    /// tails when it fails. For tests.
    #[track_caller]
    pub fn ctr_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        match self.try_ctr_ok(args) {
            Ok(out) => out,
            Err(e) => panic!("{e}"),
        }
    }

    /// Kills and deletes every task in every namespace, so no shim, runc state or cgroup
    /// outlives the daemon. Returns the namespaces it found.
    pub fn kill_tasks(&self) -> Vec<String> {
        let t = TEARDOWN_CTR_TIMEOUT;
        let Ok(namespaces) = self.ctr.run_ok(&["namespaces", "ls", "-q"], t) else {
            return Vec::new();
        };
        let namespaces: Vec<String> = namespaces
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        for ns in &namespaces {
            let ns = ns.as_str();
            let Ok(tasks) = self.ctr.run_ok(&["-n", ns, "tasks", "ls", "-q"], t) else {
                continue;
            };
            for id in tasks.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let _ = self
                    .ctr
                    .run(&["-n", ns, "tasks", "kill", "-s", "SIGKILL", id], t);
                // `delete -f` kills too, but gives the task time to exit first
                std::thread::sleep(Duration::from_millis(200));
                let _ = self.ctr.run(&["-n", ns, "tasks", "delete", "-f", id], t);
            }
        }
        namespaces
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let mut namespaces = vec![self.ctr.namespace.clone()];
        if let Ok(None) = self.child.try_wait() {
            namespaces.extend(self.kill_tasks());
        }
        if process::terminate(&mut self.child, STOP_GRACE).is_none() {
            eprintln!(
                "strata-tests: could not stop containerd pid {}",
                self.child.id()
            );
        }
        namespaces.sort();
        namespaces.dedup();
        for ns in namespaces
            .iter()
            .filter(|ns| ns.starts_with(NAMESPACE_PREFIX))
        {
            remove_namespace_leftovers(ns);
        }
        // the dir (field) is unmounted and removed after this
    }
}

/// Prefix of the namespaces the harness makes up; only those are cleaned up machine-wide.
const NAMESPACE_PREFIX: &str = "strata-";

/// runc deletes a container's own state dir and cgroups but leaves their per-namespace parents
/// (`/run/containerd/runc/<ns>`, `<cgroup mount>/<ns>`), which are global to the machine and
/// would pile up with one unique namespace per test. rmdir removes them only when empty.
fn remove_namespace_leftovers(ns: &str) {
    let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(ns));
    let cgroup_root = Path::new("/sys/fs/cgroup");
    let _ = std::fs::remove_dir(cgroup_root.join(ns));
    if let Ok(entries) = std::fs::read_dir(cgroup_root) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_dir(entry.path().join(ns));
        }
    }
}

/// The version field of `containerd --version`
/// (`containerd github.com/containerd/containerd 1.7.24~ds1 <revision>`).
fn release_of(containerd: &Path) -> Result<String> {
    let mut cmd = Command::new(containerd);
    cmd.arg("--version");
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30))
        .map_err(|e| Error::io(format!("running {} --version", containerd.display()), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(2)
        .map(str::to_string)
        .filter(|_| out.status.success())
        .ok_or_else(|| {
            Error::new(format!(
                "unexpected `{} --version` output: {text:?} ({})",
                containerd.display(),
                out.status
            ))
        })
}
