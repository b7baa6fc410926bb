//! strata's own plugin binaries, started on temporary sockets and stopped on drop.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::health;
use crate::logs;
use crate::process;
use crate::proxy::ProxyPlugins;
use crate::tmp::TestDir;

/// How long a plugin gets to answer its first health check. Generous: a loaded CI machine
/// with two cores may be building or running other tests at the same time.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a plugin gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PluginKind {
    Snapshotter,
    Content,
    Differ,
}

impl PluginKind {
    pub const ALL: [PluginKind; 3] = [
        PluginKind::Snapshotter,
        PluginKind::Content,
        PluginKind::Differ,
    ];

    /// The binary's file name.
    pub fn binary_name(self) -> &'static str {
        match self {
            PluginKind::Snapshotter => "strata-snapshotter",
            PluginKind::Content => "strata-content",
            PluginKind::Differ => "strata-differ",
        }
    }

    /// A short name for files in the scratch dir.
    pub fn short(self) -> &'static str {
        match self {
            PluginKind::Snapshotter => "snapshotter",
            PluginKind::Content => "content",
            PluginKind::Differ => "differ",
        }
    }
}

/// A subset of the three plugins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PluginSet {
    pub snapshotter: bool,
    pub content: bool,
    pub differ: bool,
}

impl PluginSet {
    pub const NONE: PluginSet = PluginSet {
        snapshotter: false,
        content: false,
        differ: false,
    };
    pub const ALL: PluginSet = PluginSet {
        snapshotter: true,
        content: true,
        differ: true,
    };
    /// Snapshotter and differ: what works with containerd's built-in content store.
    pub const SNAPSHOTTER_DIFFER: PluginSet = PluginSet {
        snapshotter: true,
        content: false,
        differ: true,
    };

    pub fn contains(self, kind: PluginKind) -> bool {
        match kind {
            PluginKind::Snapshotter => self.snapshotter,
            PluginKind::Content => self.content,
            PluginKind::Differ => self.differ,
        }
    }
}

/// Where the plugin binaries are: `$STRATA_BIN_DIR`, else the cargo profile dir this test
/// executable was built into (`target/<profile>/deps/<test>-<hash>` → `target/<profile>`).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("STRATA_BIN_DIR").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let exe =
        std::env::current_exe().map_err(|e| Error::io("finding the current test executable", e))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| Error::new(format!("{} has no parent dir", exe.display())))?;
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir = dir.parent().unwrap_or(dir);
    }
    Ok(dir.to_path_buf())
}

/// The path of `kind`'s binary, checked to exist.
pub fn binary(kind: PluginKind) -> Result<PathBuf> {
    let dir = bin_dir()?;
    let path = dir.join(kind.binary_name());
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::new(format!(
            "{} not found in {} (set STRATA_BIN_DIR, or run `cargo build --workspace --bins` \
             first with the same profile as the tests)",
            kind.binary_name(),
            dir.display()
        )))
    }
}

/// One running strata plugin binary.
#[derive(Debug)]
pub struct StrataProcess {
    kind: PluginKind,
    child: Child,
    socket: PathBuf,
    root: PathBuf,
    log: PathBuf,
    stopped: bool,
}

impl StrataProcess {
    /// Starts `kind` with `--address DIR/KIND.sock --root DIR/KIND-root --log-level debug`
    /// plus `extra_args`, stdout and stderr to `DIR/KIND.log`, and waits until its socket
    /// answers the health check with SERVING.
    pub fn start(kind: PluginKind, dir: &Path, extra_args: &[OsString]) -> Result<StrataProcess> {
        Self::start_with_env(kind, dir, extra_args, &[])
    }

    /// [`StrataProcess::start`] with `env` added to the process's environment.
    pub fn start_with_env(
        kind: PluginKind,
        dir: &Path,
        extra_args: &[OsString],
        env: &[(&str, &str)],
    ) -> Result<StrataProcess> {
        let binary = binary(kind)?;
        let socket = dir.join(format!("{}.sock", kind.short()));
        let root = dir.join(format!("{}-root", kind.short()));
        let log = dir.join(format!("{}.log", kind.short()));
        std::fs::create_dir_all(&root)
            .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        let _ = std::fs::remove_file(&socket);
        let log_file =
            File::create(&log).map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
        let log_file2 = log_file
            .try_clone()
            .map_err(|e| Error::io(format!("duplicating {}", log.display()), e))?;
        let mut args: Vec<OsString> = vec![
            "--address".into(),
            socket.clone().into(),
            "--root".into(),
            root.clone().into(),
            "--log-level".into(),
            "debug".into(),
        ];
        args.extend(extra_args.iter().cloned());
        let command = process::command_line(binary.as_os_str(), &args);
        let child = Command::new(&binary)
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_file2)
            .spawn()
            .map_err(|e| Error::io(format!("starting {command}"), e))?;
        let mut p = StrataProcess {
            kind,
            child,
            socket,
            root,
            log,
            stopped: false,
        };
        let socket = p.socket.clone();
        let waited = health::wait_serving(&socket, START_TIMEOUT, || p.still_running());
        if let Err(e) = waited {
            p.stop();
            return Err(Error::new(format!(
                "{} did not come up: {e}\ncommand: {command}\n{}",
                kind.binary_name(),
                logs::titled_tail(kind.binary_name(), &p.log, 60)
            )));
        }
        Ok(p)
    }

    pub fn kind(&self) -> PluginKind {
        self.kind
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        logs::read_all(&self.log)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        logs::titled_tail(self.kind.binary_name(), &self.log, lines)
    }

    /// Ok while the process runs; an error with its exit status once it has exited.
    pub fn still_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::new(format!(
                "{} (pid {}) exited: {status}",
                self.kind.binary_name(),
                self.child.id()
            ))),
            Err(e) => Err(Error::io(
                format!("waiting for {}", self.kind.binary_name()),
                e,
            )),
        }
    }

    /// One health check; Ok only for SERVING.
    pub fn check_health(&self) -> Result<()> {
        health::check(&self.socket, Duration::from_secs(10))
            .map_err(|e| e.with_details(self.log_tail(40)))
    }

    /// SIGKILL, as a crash would (unless the process has exited already); its exit status.
    pub fn kill(&mut self) -> Result<std::process::ExitStatus> {
        self.stopped = true;
        if let Ok(Some(status)) = self.child.try_wait() {
            return Ok(status);
        }
        let _ = self.child.kill();
        self.child
            .wait()
            .map_err(|e| Error::io(format!("waiting for {}", self.kind.binary_name()), e))
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]. Idempotent.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if self.stopped {
            return self.child.try_wait().ok().flatten();
        }
        self.stopped = true;
        process::terminate(&mut self.child, STOP_GRACE)
    }
}

impl Drop for StrataProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What [`Plugins::start`] starts.
#[derive(Clone, Debug)]
pub struct PluginsOptions {
    pub start: PluginSet,
    /// The differ's `--content-address`: the content service it reads layers from and writes
    /// diffs through. containerd's own socket in end-to-end tests (a diff must go through
    /// containerd's content service to be known to its metadata); the socket need not exist
    /// yet, since the differ dials lazily. Required when the differ is started.
    pub content_address: Option<PathBuf>,
    /// Extra arguments per plugin, after the standard ones.
    pub extra_args: Vec<(PluginKind, Vec<OsString>)>,
    /// Give the differ strata-content's root as `--content-root` (it is started first), as
    /// `deploy/strata/differ.toml` does when strata-content is the store.
    pub differ_reads_strata_blobs: bool,
}

impl PluginsOptions {
    pub fn new(start: PluginSet) -> Self {
        PluginsOptions {
            start,
            content_address: None,
            extra_args: Vec::new(),
            differ_reads_strata_blobs: false,
        }
    }

    pub fn content_address(mut self, socket: impl Into<PathBuf>) -> Self {
        self.content_address = Some(socket.into());
        self
    }
}

/// A set of running strata plugins sharing one scratch dir. Dropping it stops them (before the
/// dir goes away, thanks to field order).
#[derive(Debug)]
pub struct Plugins {
    snapshotter: Option<StrataProcess>,
    content: Option<StrataProcess>,
    differ: Option<StrataProcess>,
    dir: TestDir,
}

impl Plugins {
    pub fn start(options: &PluginsOptions) -> Result<Plugins> {
        // Check all binaries first so a missing build is reported before anything starts.
        for kind in PluginKind::ALL {
            if options.start.contains(kind) {
                binary(kind)?;
            }
        }
        let dir = TestDir::new("strata")?;
        let mut plugins = Plugins {
            snapshotter: None,
            content: None,
            differ: None,
            dir,
        };
        for kind in PluginKind::ALL {
            if !options.start.contains(kind) {
                continue;
            }
            let mut args: Vec<OsString> = Vec::new();
            if kind == PluginKind::Differ {
                let content = options.content_address.as_ref().ok_or_else(|| {
                    Error::new("PluginsOptions::content_address is required to start the differ")
                })?;
                args.push("--content-address".into());
                args.push(content.clone().into());
                if options.differ_reads_strata_blobs {
                    let store = plugins.content.as_ref().ok_or_else(|| {
                        Error::new("the differ reads strata-content's blobs: start strata-content")
                    })?;
                    args.push("--content-root".into());
                    args.push(store.root().into());
                }
            }
            for (k, extra) in &options.extra_args {
                if *k == kind {
                    args.extend(extra.iter().cloned());
                }
            }
            let p = StrataProcess::start(kind, plugins.dir.path(), &args)?;
            *plugins.slot(kind) = Some(p);
        }
        Ok(plugins)
    }

    /// All three plugins, the differ reading and writing through `content_address`.
    pub fn start_all(content_address: &Path) -> Result<Plugins> {
        Plugins::start(&PluginsOptions::new(PluginSet::ALL).content_address(content_address))
    }

    fn slot(&mut self, kind: PluginKind) -> &mut Option<StrataProcess> {
        match kind {
            PluginKind::Snapshotter => &mut self.snapshotter,
            PluginKind::Content => &mut self.content,
            PluginKind::Differ => &mut self.differ,
        }
    }

    pub fn get(&self, kind: PluginKind) -> Option<&StrataProcess> {
        match kind {
            PluginKind::Snapshotter => self.snapshotter.as_ref(),
            PluginKind::Content => self.content.as_ref(),
            PluginKind::Differ => self.differ.as_ref(),
        }
    }

    pub fn get_mut(&mut self, kind: PluginKind) -> Option<&mut StrataProcess> {
        self.slot(kind).as_mut()
    }

    pub fn running(&self) -> impl Iterator<Item = &StrataProcess> {
        PluginKind::ALL.into_iter().filter_map(|k| self.get(k))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `[proxy_plugins]` wiring of those of `wire` that are running.
    pub fn proxy(&self, wire: PluginSet) -> ProxyPlugins {
        let sock = |kind| {
            self.get(kind)
                .filter(|_| wire.contains(kind))
                .map(|p| p.socket().to_path_buf())
        };
        ProxyPlugins {
            snapshotter: sock(PluginKind::Snapshotter),
            content: sock(PluginKind::Content),
            differ: sock(PluginKind::Differ),
            platform: None,
        }
    }

    /// Health-checks every running plugin; the error names each one that failed.
    pub fn check_health(&self) -> Result<()> {
        let failures: Vec<String> = self
            .running()
            .filter_map(|p| p.check_health().err().map(|e| e.to_string()))
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::new(failures.join("\n")))
        }
    }

    /// (name, log path) of every plugin started, for failure reports.
    pub fn log_files(&self) -> Vec<(String, PathBuf)> {
        self.running()
            .map(|p| {
                (
                    p.kind().binary_name().to_string(),
                    p.log_path().to_path_buf(),
                )
            })
            .collect()
    }

    pub fn log_tails(&self, lines: usize) -> String {
        self.running().map(|p| p.log_tail(lines)).collect()
    }
}
