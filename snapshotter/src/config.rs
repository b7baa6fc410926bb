//! strata-snapshotter's config file.
//!
//! ```toml
//! [server]
//! # ... (shared by every strata server)
//!
//! [snapshotter]
//! mode = "overlayfs"        # or "native": full copies and bind mounts, for filesystems
//!                           # overlayfs cannot use as an upper layer
//! async_remove = true       # Remove drops metadata only; Cleanup (containerd's GC) frees disk
//! mount_options = []        # appended to every overlay mount, as containerd's `mount_options`
//! durability = "full"       # or "process": no sync per call, see [`Durability`]
//! remap_ids = false         # true: snapshots with id-mapping labels get shifted ownership;
//!                           # declare capabilities = ["remap-ids"] in containerd with it
//! remap_method = "auto"     # "idmap": uidmap=/gidmap= mount options (Linux 5.19+); "copy": a
//!                           # chowned copy of the parent; "auto": idmap where the kernel can
//! max_size = 0              # bytes; a size limit for containers' snapshots without the
//!                           # containerd.io/snapshot/max-size label (0: none)
//! project_id_base = 1000000 # project quota ids are this plus the snapshot id
//! ```

use serde::{Deserialize, Serialize};
use strata_common::cli::ServerConfig;

/// The name the server goes by: socket `/run/strata/snapshotter.sock`, state
/// `/var/lib/strata/snapshotter`, config `/etc/strata/snapshotter.toml`.
pub const NAME: &str = "snapshotter";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Optional: a file may hold only `[snapshotter]`, the flags naming socket and root.
    #[serde(default = "server_defaults")]
    pub server: ServerConfig,
    #[serde(default)]
    pub snapshotter: SnapshotterConfig,
}

fn server_defaults() -> ServerConfig {
    ServerConfig::defaults_for(NAME)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: server_defaults(),
            snapshotter: SnapshotterConfig::default(),
        }
    }
}

// One async worker: the calls on it are short (SQLite point reads, hand-offs to blocking
// threads), and with a second worker each request also woke the idle one, which on the
// hop containerd waits for cost 7-15 us per call (Stat through containerd 2.1: 121-134 us
// with two workers, 106-124 us with one; Prepare, View and List gained alike).
strata_common::plugin_config!(Config, NAME, worker_threads = 1);

/// How snapshots are stacked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each snapshot is an overlay upper dir; parents are lower dirs.
    #[default]
    Overlayfs,
    /// Each snapshot is a full copy of its parent, handed out as a bind mount (containerd's
    /// `native` snapshotter).
    Native,
}

/// What an acknowledged call survives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every acknowledged call survives a power loss: each transaction is synced
    /// (fdatasync), as containerd's bolt database is. containerd's own metadata refers to our
    /// snapshots, so this is what keeps the two in step. A new overlay snapshot's directory
    /// is empty and is recreated at start-up if a power loss undid its creation; a native
    /// snapshot's copy is fsynced before its row.
    #[default]
    Full,
    /// Acknowledged calls survive a crash of the process (SIGKILL, OOM) but the last ones may
    /// roll back on power loss; no directory is deleted before the removal that freed it is on
    /// disk. Saves a data flush per call that changes metadata.
    Process,
}

/// How a snapshot with id-mapping labels gets its shifted ownership (with `remap_ids`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemapMethod {
    /// `idmap` where the kernel has id-mapped mounts for overlayfs, else `copy`.
    #[default]
    Auto,
    /// `uidmap=`/`gidmap=` mount options, from which containerd 2.x's mount code id-maps the
    /// lower layers; refused at start-up on a kernel without id-mapped mounts.
    Idmap,
    /// A chowned copy of the parent chain's merged tree, shared by every snapshot with the
    /// same parent and mapping, as the single lower layer; plain mount options.
    Copy,
}

/// The `[snapshotter]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotterConfig {
    pub mode: Mode,
    /// containerd's default: Remove only drops metadata and the directories go in Cleanup,
    /// which containerd's garbage collector calls. `false` removes them inside Remove.
    pub async_remove: bool,
    /// Extra options for overlay mounts (not bind mounts), after the detected ones.
    pub mount_options: Vec<String>,
    pub durability: Durability,
    /// Hand out id-mapped snapshots (`containerd.io/snapshot/uidmapping` and `gidmapping`
    /// labels) with their ownership shifted, as `remap_method` says. Must agree with
    /// `capabilities = ["remap-ids"]` in containerd's `[proxy_plugins]` entry, which containerd
    /// cannot learn from a proxy: without that capability containerd's client copies and
    /// chowns the layers itself and still sends the labels, which would then shift the ids
    /// twice. Needs overlayfs mode; the server refuses to start otherwise.
    pub remap_ids: bool,
    /// How `remap_ids` shifts ownership: kernel id-mapped mounts, a chowned copy, or the
    /// first where the kernel has it (the default).
    pub remap_method: RemapMethod,
    /// The size limit, in bytes, of every active snapshot that has no
    /// `containerd.io/snapshot/max-size` label, except those containerd unpacks layers into
    /// (keys `extract-...`) and the client's chowned image copies (keys `...-remap`); 0 for
    /// none. Enforced with project quotas: the server refuses to start when the file system of
    /// its root has none.
    pub max_size: u64,
    /// Limited snapshots get project id `project_id_base + snapshot id`; keep the range apart
    /// from other users of project quotas on the same file system.
    pub project_id_base: u32,
}

impl Default for SnapshotterConfig {
    fn default() -> Self {
        SnapshotterConfig {
            mode: Mode::Overlayfs,
            async_remove: true,
            mount_options: Vec::new(),
            durability: Durability::Full,
            remap_ids: false,
            remap_method: RemapMethod::Auto,
            max_size: 0,
            project_id_base: 1_000_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_common::cli::{ServerArgs, load};

    const SERVER: &str = "[server]\naddress = \"/a.sock\"\nroot = \"/r\"\nsocket_mode = \"0660\"\nlog_level = \"info\"\nlog_format = \"text\"\nshutdown_timeout_secs = 1\n";

    fn parse(text: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("snapshotter.toml");
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        let args = ServerArgs {
            config: Some(path),
            ..Default::default()
        };
        load(&args, Config::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_file_without_a_snapshotter_table_gets_the_defaults() {
        let c = parse(SERVER).unwrap();
        assert_eq!(c.snapshotter, SnapshotterConfig::default());
        assert!(c.snapshotter.async_remove);
        assert_eq!(c.snapshotter.mode, Mode::Overlayfs);
        assert_eq!(c.snapshotter.durability, Durability::Full);
        assert!(!c.snapshotter.remap_ids);
        assert_eq!(c.snapshotter.remap_method, RemapMethod::Auto);
    }

    #[test]
    fn mode_and_options_parse_and_unknown_keys_fail() {
        let c = parse(&format!(
            "{SERVER}[snapshotter]\nmode = \"native\"\nasync_remove = false\nmount_options = [\"volatile\"]\ndurability = \"process\"\nremap_ids = true\nremap_method = \"copy\"\n"
        ))
        .unwrap();
        assert_eq!(c.snapshotter.remap_method, RemapMethod::Copy);
        let err = parse(&format!(
            "{SERVER}[snapshotter]\nremap_method = \"chown\"\n"
        ))
        .unwrap_err();
        assert!(err.contains("chown"), "{err}");
        assert_eq!(c.snapshotter.mode, Mode::Native);
        assert!(!c.snapshotter.async_remove);
        assert_eq!(c.snapshotter.mount_options, ["volatile"]);
        assert_eq!(c.snapshotter.durability, Durability::Process);
        assert!(c.snapshotter.remap_ids);
        let err = parse(&format!("{SERVER}[snapshotter]\nmod = \"native\"\n")).unwrap_err();
        assert!(err.contains("mod"), "{err}");
    }

    #[test]
    fn the_server_table_is_optional() {
        let c = parse("[snapshotter]\nremap_ids = true\n").unwrap();
        assert!(c.snapshotter.remap_ids);
        let mut want = Config::default().server;
        want.worker_threads = c.server.worker_threads;
        assert_eq!(c.server, want);
    }
}
