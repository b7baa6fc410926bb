//! strata's plugins plus a private containerd wired to them: what an end-to-end test starts.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_testkit::image::Image;
use strata_testkit::tree::{Tree, snapshot};

use crate::containerd::{Containerd, ContainerdDir, ContainerdOptions};
use crate::error::{Error, Result};
use crate::plugins::{PluginKind, PluginSet, Plugins, PluginsOptions};
use crate::proxy::ProxyPlugins;
use crate::version::Version;

/// What [`Stack::start`] starts and wires.
#[derive(Clone, Debug)]
pub struct StackOptions {
    /// Which plugins to run.
    pub start: PluginSet,
    /// Which of the running plugins to put in `[proxy_plugins]`. Wiring strata-content also
    /// disables containerd's built-in content store.
    pub wire: PluginSet,
    /// More plugin ids to disable.
    pub disabled_plugins: Vec<String>,
    /// More TOML tables for containerd's config, after the proxy wiring.
    pub extra_toml: String,
    /// Give strata-differ the content store's directory (`--content-root`: containerd's, or
    /// strata-content's when that is wired), so Apply reads layer blobs from disk instead of
    /// through the content service.
    pub differ_reads_blob_files: bool,
    /// More arguments per plugin, after the standard ones (e.g. strata-content's
    /// `--config FILE`).
    pub plugin_args: Vec<(PluginKind, Vec<OsString>)>,
}

impl StackOptions {
    /// Run all three plugins, wire the snapshotter and the differ: the configuration that
    /// works while strata-content doesn't serve the content API yet.
    pub fn smoke() -> Self {
        StackOptions {
            start: PluginSet::ALL,
            wire: PluginSet::SNAPSHOTTER_DIFFER,
            disabled_plugins: Vec::new(),
            extra_toml: String::new(),
            differ_reads_blob_files: false,
            plugin_args: Vec::new(),
        }
    }

    /// Run and wire exactly `set` (benchmarks compare one plugin against the built-in).
    pub fn only(set: PluginSet) -> Self {
        StackOptions {
            start: set,
            wire: set,
            disabled_plugins: Vec::new(),
            extra_toml: String::new(),
            differ_reads_blob_files: false,
            plugin_args: Vec::new(),
        }
    }

    /// Run and wire all three plugins.
    pub fn full() -> Self {
        StackOptions {
            start: PluginSet::ALL,
            wire: PluginSet::ALL,
            disabled_plugins: Vec::new(),
            extra_toml: String::new(),
            differ_reads_blob_files: false,
            plugin_args: Vec::new(),
        }
    }

    /// These options with `args` added to `kind`'s command line.
    pub fn with_plugin_args(
        mut self,
        kind: PluginKind,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Self {
        self.plugin_args
            .push((kind, args.into_iter().map(Into::into).collect()));
        self
    }
}

/// What strata-differ logs once per layer it applied (`differ/src/apply/mod.rs`).
pub const DIFFER_APPLIED_LOG: &str = "strata-differ applied layer";
/// What strata-differ logs once per layer a Diff made (`differ/src/diff/compare.rs`).
pub const DIFFER_MADE_LOG: &str = "strata-differ made a layer";

/// Running plugins and the containerd that uses them. containerd is declared first so it is
/// stopped first, while the plugins it talks to are still up.
#[derive(Debug)]
pub struct Stack {
    pub containerd: Containerd,
    pub plugins: Plugins,
    pub proxy: ProxyPlugins,
}

impl Stack {
    pub fn start(version: Version, options: &StackOptions) -> Result<Stack> {
        Stack::start_with_capabilities(version, options, &[])
    }

    /// [`Stack::start`], declaring `snapshotter_capabilities` for strata-snapshotter in
    /// containerd's `[proxy_plugins]` entry.
    pub fn start_with_capabilities(
        version: Version,
        options: &StackOptions,
        snapshotter_capabilities: &[&str],
    ) -> Result<Stack> {
        // Reserve containerd's dir first: the differ needs its socket path, and dials lazily.
        let dir = ContainerdDir::new()?;
        let mut plugin_options = PluginsOptions::new(options.start).content_address(dir.socket());
        plugin_options.differ_reads_strata_blobs =
            options.differ_reads_blob_files && options.wire.content;
        if options.differ_reads_blob_files && !options.wire.content {
            plugin_options.extra_args.push((
                PluginKind::Differ,
                vec![
                    "--content-root".into(),
                    dir.root().join("io.containerd.content.v1.content").into(),
                ],
            ));
        }
        plugin_options
            .extra_args
            .extend(options.plugin_args.iter().cloned());
        let plugins = Plugins::start(&plugin_options)?;
        let proxy = plugins.proxy(options.wire);
        let mut ctd_options = ContainerdOptions::new(version);
        ctd_options.proxy_toml = proxy.toml_with_capabilities(snapshotter_capabilities);
        if !options.extra_toml.is_empty() {
            ctd_options.proxy_toml.push('\n');
            ctd_options.proxy_toml.push_str(&options.extra_toml);
        }
        ctd_options.disabled_plugins = proxy.disabled_plugins();
        ctd_options
            .disabled_plugins
            .extend(options.disabled_plugins.iter().cloned());
        ctd_options.extra_logs = plugins.log_files();
        let containerd = Containerd::start_in(dir, ctd_options)?;
        Ok(Stack {
            containerd,
            plugins,
            proxy,
        })
    }

    /// A new lease in containerd (so what a client writes survives GC until the lease goes)
    /// and the request context that carries it and the stack's namespace.
    pub fn lease(
        &self,
        prefix: &str,
    ) -> Result<(String, strata_common::namespace::RequestContext)> {
        let lease = crate::ids::unique_name(prefix);
        self.containerd
            .try_ctr_ok(&["leases", "create", "--id", &lease])?;
        let cx = strata_common::namespace::RequestContext {
            namespace: Some(self.containerd.namespace().to_string()),
            lease: Some(lease.clone()),
        };
        Ok((lease, cx))
    }

    /// Runs containerd's garbage collection now and waits for it: deleting a lease with
    /// `--sync` does that.
    pub fn collect_garbage(&self) -> Result<()> {
        let id = crate::ids::unique_name("gc");
        self.containerd
            .try_ctr_ok(&["leases", "create", "--id", &id])?;
        self.containerd
            .try_ctr_ok(&["leases", "delete", "--sync", &id])
            .map(drop)
    }

    /// How many layers strata-differ logged as applied so far (0 when it does not run): the
    /// proof that an unpack went through strata rather than falling through to walking.
    pub fn differ_applied(&self) -> usize {
        self.plugins
            .get(PluginKind::Differ)
            .map(|p| {
                p.log()
                    .lines()
                    .filter(|l| l.contains(DIFFER_APPLIED_LOG))
                    .count()
            })
            .unwrap_or(0)
    }

    /// `ctr images import EXTRA... ARCHIVE` of `image`, written to an archive in containerd's
    /// dir first.
    pub fn import(&self, image: &Image, extra: &[&str]) -> Result<()> {
        let archive = self
            .containerd
            .dir()
            .path()
            .join(format!("{}.tar", crate::ids::unique_name("img")));
        image
            .write_archive(&archive)
            .map_err(|e| Error::io(format!("writing {}", archive.display()), e))?;
        let mut args: Vec<&OsStr> = vec![OsStr::new("images"), OsStr::new("import")];
        args.extend(extra.iter().map(OsStr::new));
        args.push(archive.as_os_str());
        self.containerd.try_ctr_ok(&args).map(drop)
    }

    /// `ctr snapshots --snapshotter S VERB -t DIR KEY PARENT` (`view` or `prepare`), and the
    /// mount command it prints run: the snapshot mounted on a new dir.
    pub fn mount_snapshot(
        &self,
        snapshotter: &str,
        verb: &str,
        key: &str,
        parent: &str,
    ) -> Result<Mounted> {
        let target = self.mount_point()?;
        let t = target.to_string_lossy().into_owned();
        let args = [
            "snapshots",
            "--snapshotter",
            snapshotter,
            verb,
            "-t",
            &t,
            key,
            parent,
        ];
        self.run_printed_mount(&args, target)
    }

    /// The tree a read-only view of `image`'s top layer in `snapshotter` shows (the view is
    /// removed afterwards).
    pub fn top_tree(&self, image: &Image, snapshotter: &str) -> Result<Tree> {
        let top = image
            .chain_ids()
            .last()
            .cloned()
            .ok_or_else(|| Error::new(format!("{} has no layer", image.name)))?;
        let key = crate::ids::unique_name("view");
        let mounted = self.mount_snapshot(snapshotter, "view", &key, &top)?;
        let tree = snapshot(mounted.path())
            .map_err(|e| Error::io(format!("reading {}", mounted.path().display()), e));
        drop(mounted);
        let _ = self
            .containerd
            .ctr(&["snapshots", "--snapshotter", snapshotter, "rm", &key]);
        tree
    }

    /// The active snapshot `key` mounted again on a new dir (`ctr snapshots mounts`).
    pub fn mount_active(&self, snapshotter: &str, key: &str) -> Result<Mounted> {
        let target = self.mount_point()?;
        let t = target.to_string_lossy().into_owned();
        let args = ["snapshots", "--snapshotter", snapshotter, "mounts", &t, key];
        self.run_printed_mount(&args, target)
    }

    fn mount_point(&self) -> Result<PathBuf> {
        let target = self
            .containerd
            .dir()
            .path()
            .join(crate::ids::unique_name("mnt"));
        std::fs::create_dir_all(&target)
            .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
        Ok(target)
    }

    fn run_printed_mount(&self, args: &[&str], target: PathBuf) -> Result<Mounted> {
        let line = self.containerd.try_ctr_ok(args)?;
        let status = Command::new("sh")
            .arg("-c")
            .arg(line.trim())
            .status()
            .map_err(|e| Error::io(format!("running {line}"), e))?;
        if !status.success() {
            return Err(Error::new(format!("{} failed: {status}", line.trim())));
        }
        Ok(Mounted(target))
    }

    /// Every log tail (containerd's and the plugins'), for assertion messages.
    pub fn log_tails(&self) -> String {
        self.containerd.log_tails()
    }
}

/// A mounted snapshot, unmounted when dropped (so a failed assertion leaves nothing mounted).
#[derive(Debug)]
pub struct Mounted(PathBuf);

impl Mounted {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
