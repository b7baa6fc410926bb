//! The snapshotter: containerd's `snapshots.Snapshotter` over [`crate::metadata`] and
//! [`crate::layout`], in overlayfs or native mode.
//!
//! Every method blocks (SQLite, file system): the gRPC adaptor calls them on blocking threads.
//!
//! Crash safety: a method's metadata change is one SQLite transaction. A new snapshot's
//! directory is built under a temporary name and renamed to its id inside the transaction
//! that inserts its row, just before the commit; a crash before the commit leaves a directory
//! without a row, which start-up deletes. A power loss can also undo the rename of an overlay
//! snapshot's (empty) directory while its row survives; start-up recreates it. Removal
//! deletes the row first and the directory after (at once, or in Cleanup when removal is
//! asynchronous), so a crash in between leaves only an orphan directory, never a row without
//! its directory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak, mpsc};
use std::time::SystemTime;

use rusqlite::Connection;
use strata_common::filter::{FieldMap, Filter};
use strata_common::{Error, Result};
use tracing::{debug, info, warn};

use crate::config::{Durability, Mode, RemapMethod, SnapshotterConfig};
use crate::idmap::{IdMap, RemapLabels};
use crate::layout::{self, Layout};
use crate::metadata::{self, Info, Kind, Snapshot, Usage};
use crate::mounts::{self, Mount};
use crate::probe::Features;
use crate::quota::{self, Quotas};
use crate::usage::disk_usage;

/// A snapshotter rooted at one directory. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Snapshotter {
    inner: Arc<Inner>,
}

struct Inner {
    layout: Layout,
    config: SnapshotterConfig,
    /// Options for overlay mounts: detected ones, then configured ones.
    overlay_options: Vec<String>,
    /// What id-mapping labels do beyond giving the root directory to the mapped root.
    remap: Remap,
    /// Options for the read-only overlay a shifted copy is read from (`userxattr` where
    /// overlay needs it).
    copy_mount_options: Vec<String>,
    /// One turn per (parent, uid mapping, gid mapping) whose shifted copy is being made, so
    /// two creates with the same mapping make it once.
    copy_turns: Mutex<HashMap<CopyKey, Arc<Mutex<()>>>>,
    /// Project quotas of the file system under `snapshots/`, when it enforces them (overlayfs
    /// mode only): what size limits need.
    quotas: Option<Quotas>,
    db: Mutex<Connection>,
    /// A second connection for calls that only read: under WAL they see the last committed
    /// state without waiting for a writer's fsync.
    reader: Mutex<Connection>,
    /// Where measured usage is stored, without an fsync per write: a figure lost in a crash
    /// is measured again at start-up, and the metadata writers never queue behind it.
    usage_db: Mutex<Connection>,
    /// `snapshots/`, open for fsync.
    snapshots_fd: std::fs::File,
    temp_seq: AtomicU64,
    /// Temporary directories being built right now, which Cleanup must not take for orphans.
    building: Mutex<HashSet<String>>,
    measure: Mutex<mpsc::Sender<u64>>,
}

/// How snapshots with id-mapping labels get their ownership shifted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Remap {
    /// Not at all (`remap_ids = false`): containerd's client shifts a copy itself.
    Off,
    /// `uidmap=`/`gidmap=` mount options.
    Idmap,
    /// A chowned copy of the parent chain as the one lower layer.
    Copy,
}

/// A shifted copy's identity: its parent's id and the uid and gid mapping labels as given.
type CopyKey = (u64, String, String);

/// A shifted copy a create stands on: found, or built for it in the create's temp dir.
struct CopyPlan {
    parent_id: u64,
    uidmap: String,
    gidmap: String,
    /// `<temp>/copy`, holding the copy this create built (none when one existed).
    built: Option<PathBuf>,
}

/// What [`Snapshotter::usage_lookup`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageLookup {
    Known(Usage),
    Walk(Walk),
}

/// A snapshot whose usage has to be measured on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    id: u64,
    /// A committed snapshot's figure is kept; an active one's changes with every write.
    store: bool,
}

/// Where, inside a create's `copy/` dir, the parent chain is mounted to be copied.
const MERGED: &str = "merged";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave SQLite half-written (the transaction
    // rolls back when dropped), so the data is still good.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    // Internal, whatever the OS said: an AlreadyExists or NotFound here is about our own
    // directories, and containerd would take those codes as statements about the snapshot.
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(|e| Error::internal(format!("create {}: {e}", path.display())).with_source(e))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // The umask may have narrowed what mkdir gave.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("chmod {}", path.display()), e))
}

impl Snapshotter {
    /// Opens the snapshotter at `root`, probing the kernel's overlayfs (overlayfs mode).
    pub fn open(root: &Path, config: SnapshotterConfig) -> Result<Snapshotter> {
        std::fs::create_dir_all(root)
            .map_err(|e| Error::io(format!("create {}", root.display()), e))?;
        let features = match config.mode {
            Mode::Overlayfs => Features::detect(root)?,
            Mode::Native => Features::default(),
        };
        Snapshotter::open_with(root, config, features)
    }

    /// Opens the snapshotter at `root` with the given kernel features. Deletes orphan
    /// directories left by a crash, recreates those a power loss took from their rows, and
    /// queues unmeasured committed snapshots for measuring.
    pub fn open_with(
        root: &Path,
        config: SnapshotterConfig,
        features: Features,
    ) -> Result<Snapshotter> {
        let layout = Layout::new(root);
        std::fs::create_dir_all(root)
            .map_err(|e| Error::io(format!("create {}", root.display()), e))?;
        let snapshots = layout.snapshots_dir();
        if !snapshots.exists() {
            mkdir(&snapshots, 0o700)?;
        }
        let conn = metadata::open(&layout.metadata_db())?;
        if config.durability == Durability::Process {
            conn.execute_batch("PRAGMA synchronous = NORMAL")
                .map_err(|e| Error::internal(format!("configure metadata connection: {e}")))?;
        }
        let reader = metadata::open(&layout.metadata_db())?;
        let usage_db = metadata::open(&layout.metadata_db())?;
        usage_db
            .execute_batch("PRAGMA synchronous = NORMAL")
            .map_err(|e| Error::internal(format!("configure usage connection: {e}")))?;
        if let Err(e) = metadata::preallocate_wal(&layout.metadata_db(), metadata::WAL_PREALLOCATE)
        {
            // Only slower commits until SQLite has grown the WAL itself.
            warn!(error = %e.chain(), "cannot preallocate the metadata WAL");
        }
        let snapshots_fd = std::fs::File::open(&snapshots)
            .map_err(|e| Error::io(format!("open {}", snapshots.display()), e))?;
        let (tx, rx) = mpsc::channel();
        let overlay_options = match config.mode {
            Mode::Overlayfs => features.options(&config.mount_options),
            Mode::Native => Vec::new(),
        };
        let remap = if config.remap_ids {
            // Never hand out snapshots whose mapping nobody honours: containerd would then
            // give the container an unshifted root file system.
            if config.mode == Mode::Native {
                return Err(Error::failed_precondition(
                    "remap_ids needs mode = \"overlayfs\"",
                ));
            }
            let remap = match config.remap_method {
                RemapMethod::Idmap if !features.idmapped_mounts => {
                    return Err(Error::failed_precondition(
                        "remap_method = \"idmap\", but this kernel has no id-mapped mounts for \
                         overlayfs (Linux 5.19+); use remap_method = \"copy\" or \"auto\"",
                    ));
                }
                RemapMethod::Idmap => Remap::Idmap,
                RemapMethod::Auto if features.idmapped_mounts => Remap::Idmap,
                RemapMethod::Auto | RemapMethod::Copy => Remap::Copy,
            };
            if remap == Remap::Idmap {
                info!(
                    "id-mapped snapshots: mapping labels become uidmap=/gidmap= options; \
                     containerd must declare capabilities = [\"remap-ids\"] for this snapshotter"
                );
            } else {
                info!(
                    kernel_idmapped_mounts = features.idmapped_mounts,
                    "id-mapped snapshots: a chowned copy of the parent per mapping is the lower \
                     layer; containerd must declare capabilities = [\"remap-ids\"] for this \
                     snapshotter"
                );
            }
            remap
        } else {
            Remap::Off
        };
        if remap == Remap::Off && features.idmapped_mounts && config.mode == Mode::Overlayfs {
            info!(
                "id-mapped snapshots: off (remap_ids = false); this kernel could id-map layers: \
                 set remap_ids = true and declare capabilities = [\"remap-ids\"] in containerd"
            );
        }
        let quotas = match config.mode {
            // The base itself is no snapshot's project (ids start at 1): a free probe.
            Mode::Overlayfs => Quotas::detect(&snapshots, config.project_id_base),
            Mode::Native => Err("native mode has no size limits".to_string()),
        };
        let quotas = match quotas {
            Ok(q) => {
                info!(
                    root = %snapshots.display(),
                    "size limits: project quotas enforced; snapshots may carry {}",
                    quota::LABEL_MAX_SIZE
                );
                Some(q)
            }
            Err(why) if config.max_size > 0 => {
                return Err(Error::failed_precondition(format!(
                    "max_size = {} needs project quotas: {why}",
                    config.max_size
                )));
            }
            Err(why) => {
                warn!(
                    "size limits unavailable: {why}; snapshots with a {} label are refused",
                    quota::LABEL_MAX_SIZE
                );
                None
            }
        };
        let inner = Arc::new(Inner {
            layout,
            config,
            overlay_options,
            remap,
            copy_mount_options: if features.userxattr {
                vec!["userxattr".to_string()]
            } else {
                Vec::new()
            },
            copy_turns: Mutex::new(HashMap::new()),
            quotas,
            db: Mutex::new(conn),
            reader: Mutex::new(reader),
            usage_db: Mutex::new(usage_db),
            snapshots_fd,
            temp_seq: AtomicU64::new(0),
            building: Mutex::new(HashSet::new()),
            measure: Mutex::new(tx),
        });
        let s = Snapshotter { inner };
        let reaped = s.cleanup()?;
        if reaped > 0 {
            warn!(
                reaped,
                "removed orphan snapshot directories left by an earlier run"
            );
        }
        let restored = s.restore_missing_dirs()?;
        if restored > 0 {
            warn!(
                restored,
                "recreated empty snapshot directories whose creation a power loss undid"
            );
        }
        let pending = metadata::unmeasured_committed(&lock(&s.inner.db))?;
        let weak = Arc::downgrade(&s.inner);
        std::thread::Builder::new()
            .name("strata-usage".into())
            .spawn(move || measure_worker(weak, rx))
            .map_err(|e| Error::io("start usage worker", e))?;
        for id in pending {
            s.queue_measure(id);
        }
        Ok(s)
    }

    pub fn root(&self) -> &Path {
        self.inner.layout.root()
    }

    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// The options overlay mounts carry (detected, then configured).
    pub fn overlay_options(&self) -> &[String] {
        &self.inner.overlay_options
    }

    fn queue_measure(&self, id: u64) {
        // The worker only stops when the snapshotter is gone; then nobody needs the figure.
        let _ = lock(&self.inner.measure).send(id);
    }

    fn mounts_for(&self, s: &Snapshot) -> Vec<Mount> {
        match self.inner.config.mode {
            Mode::Overlayfs => mounts::overlay_mounts(
                &self.inner.layout,
                s,
                &self.inner.overlay_options,
                self.inner.remap == Remap::Idmap,
            ),
            Mode::Native => mounts::native_mounts(&self.inner.layout, s),
        }
    }

    /// An active snapshot `key` on `parent` (empty for none); returns its mounts.
    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels)
    }

    /// A read-only view `key` of `parent`; returns its mounts.
    pub fn view(
        &self,
        key: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels)
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(Error::invalid_argument("snapshot key must not be empty"));
        }
        let n = self.inner.temp_seq.fetch_add(1, Ordering::Relaxed);
        let temp = self.inner.layout.temp_dir(n);
        let temp_name = Layout::temp_name(n);
        lock(&self.inner.building).insert(temp_name.clone());
        let result = self.create_in(kind, key, parent, labels, &temp);
        if result.is_err() {
            let _ = self.remove_snapshot_dir(&temp);
        }
        lock(&self.inner.building).remove(&temp_name);
        result.map(|s| self.mounts_for(&s))
    }

    fn create_in(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
        temp: &Path,
    ) -> Result<Snapshot> {
        let layout = &self.inner.layout;
        let native = self.inner.config.mode == Mode::Native;
        let remap = RemapLabels::from_labels(labels);
        // As containerd's overlayfs snapshotter, which refuses such labels with these
        // messages (unclassified there; InvalidArgument here, as they are the caller's).
        // containerd's native snapshotter ignores them, and so does native mode.
        let mapped_root = if native {
            None
        } else {
            remap.root_owner().map_err(|e| match e {
                crate::idmap::IdMapError::Unmapped(_) => {
                    Error::invalid_argument(format!("failed to find root pair: {e}"))
                }
                _ => Error::invalid_argument(format!(
                    "failed to unmarshal snapshot ID mapped labels: {e}"
                )),
            })?
        };
        let limit = self.size_limit(kind, key, labels)?;
        self.make_snapshot_dir(temp, kind)?;
        let fs = temp.join("fs");
        // The copy can take long: do it before taking the metadata lock, and check in the
        // transaction that the parent is still the one copied.
        let copied_from = if native && !parent.is_empty() {
            let (info, id, _) = metadata::get_info(&lock(&self.inner.reader), parent)?;
            if info.kind == Kind::Committed {
                crate::copy::copy_dir(&layout.fs(id), &fs)
                    .map_err(|e| Error::io(format!("copy parent {parent:?}"), e))?;
            }
            Some(id)
        } else {
            None
        };
        // The shifted copy too, under the turn of its parent and mapping: a second create
        // with the same mapping waits for the first and then finds the copy in place.
        let copy_key = match (self.inner.remap, mapped_root, parent.is_empty()) {
            (Remap::Copy, Some(_), false) => {
                metadata::committed_chain(&lock(&self.inner.reader), parent)?.map(|(id, chain)| {
                    let uid = remap.uidmap.clone().unwrap_or_default();
                    let gid = remap.gidmap.clone().unwrap_or_default();
                    ((id, uid, gid), chain)
                })
            }
            _ => None,
        };
        let turn = copy_key.as_ref().map(|(k, _)| self.copy_turn(k));
        let _turn = turn.as_deref().map(lock);
        let plan = match copy_key {
            Some(((parent_id, uidmap, gidmap), chain)) => {
                let found =
                    metadata::find_remap(&lock(&self.inner.reader), parent_id, &uidmap, &gidmap)?;
                let built = match found {
                    Some(_) => None,
                    None => {
                        let dir = temp.join("copy");
                        self.build_shifted_copy(&chain, &remap, &dir)?;
                        // Its data on disk now, outside the metadata lock: a journal commit
                        // (the fsync of `snapshots/` below) does not write delayed data.
                        sync_file_system(&dir)
                            .map_err(|e| Error::io("sync the shifted copy", e))?;
                        Some(dir)
                    }
                };
                Some(CopyPlan {
                    parent_id,
                    uidmap,
                    gidmap,
                    built,
                })
            }
            None => None,
        };
        let mut conn = lock(&self.inner.db);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| Error::internal(format!("begin transaction: {e}")))?;
        // The copy's row, found or new; a new one's directory goes into place once the
        // snapshot's row is in.
        let (remap_copy, placing) = match &plan {
            Some(p) => match metadata::find_remap(&tx, p.parent_id, &p.uidmap, &p.gidmap)? {
                Some(rid) => (Some(rid), None),
                None => {
                    let Some(built) = &p.built else {
                        // Its last user went between the look-up and this transaction.
                        return Err(Error::aborted(format!(
                            "the shifted copy of {parent:?} was removed meanwhile; try again"
                        )));
                    };
                    let rid = metadata::insert_remap(&tx, p.parent_id, &p.uidmap, &p.gidmap)?;
                    (Some(rid), Some((built.clone(), rid)))
                }
            },
            None => (None, None),
        };
        let s = metadata::create(
            &tx,
            kind,
            key,
            parent,
            labels,
            SystemTime::now(),
            remap_copy,
        )?;
        if let (Some(copied), Some(first)) = (copied_from, s.parent_ids.first())
            && copied != *first
        {
            return Err(Error::aborted(format!(
                "parent {parent:?} changed while copying it"
            )));
        }
        if let (Some(p), Some(first)) = (&plan, s.parent_ids.first())
            && p.parent_id != *first
        {
            return Err(Error::aborted(format!(
                "parent {parent:?} changed while shifting a copy of it"
            )));
        }
        if plan.as_ref().is_some_and(|p| p.built.is_some()) && placing.is_none() {
            // Another create put the same copy in place first; this one is not needed.
            let _ = std::fs::remove_dir_all(temp.join("copy"));
        }
        let placed = match placing {
            Some((built, rid)) => {
                let to = layout.remap_dir(rid);
                std::fs::rename(&built, &to)
                    .map_err(|e| Error::io(format!("rename {} into place", built.display()), e))?;
                // Always on disk before the row that names it, whatever the durability: it is
                // no empty directory that start-up could make up again. Its files were synced
                // after the copy; this makes the rename durable.
                if let Err(e) = self.sync_snapshots_dir() {
                    let _ = std::fs::remove_dir_all(&to);
                    return Err(e);
                }
                Some(to)
            }
            None => None,
        };
        let result = self.finish_create(&s, tx, parent, mapped_root, limit, temp, native);
        if result.is_err()
            && let Some(to) = placed
        {
            let _ = std::fs::remove_dir_all(to);
        }
        result.map(|()| s)
    }

    /// The part of a create after its row is in: the root's owner, the size limit, the
    /// directory renamed into place and the commit.
    #[allow(clippy::too_many_arguments)]
    fn finish_create(
        &self,
        s: &Snapshot,
        tx: rusqlite::Transaction<'_>,
        parent: &str,
        mapped_root: Option<(u32, u32)>,
        limit: Option<u64>,
        temp: &Path,
        native: bool,
    ) -> Result<()> {
        let fs = temp.join("fs");
        if let Some((uid, gid)) = mapped_root {
            // The upper dir is not id-mapped: its root must belong to the host ids of the
            // container's root, as containerd's overlayfs snapshotter does it.
            std::os::unix::fs::lchown(&fs, Some(uid), Some(gid))
                .map_err(|e| Error::io("give snapshot root the mapped root's ids", e))?;
        } else if !native && let Some(first) = s.parent_ids.first() {
            self.own_like_parent(&fs, *first)
                .map_err(|e| Error::io(format!("give snapshot root the owner of {parent:?}"), e))?;
        }
        if let Some(bytes) = limit {
            self.limit_size(temp, s.id, bytes)?;
        }
        let dir = self.inner.layout.snapshot_dir(s.id);
        std::fs::rename(temp, &dir)
            .map_err(|e| Error::io(format!("rename {} into place", temp.display()), e))?;
        strata_common::crashpoint::hit("snapshotter.create.renamed");
        let committed = self.make_dir_durable().and_then(|()| {
            tx.commit()
                .map_err(|e| Error::internal(format!("commit transaction: {e}")))
        });
        if let Err(e) = committed {
            // The id is not used up (the row rolled back), so the next create would meet
            // this directory.
            let _ = self.remove_snapshot_dir(&dir);
            return Err(e);
        }
        Ok(())
    }

    /// The turn of the shifted copy `key` (parent id, uid and gid mapping labels).
    fn copy_turn(&self, key: &CopyKey) -> Arc<Mutex<()>> {
        let mut turns = lock(&self.inner.copy_turns);
        // Forget the turns nobody holds, so the map stays as small as the creates running.
        turns.retain(|_, t| Arc::strong_count(t) > 1);
        turns.entry(key.clone()).or_default().clone()
    }

    /// Builds in `dir` (`dir/fs`) the copy of the merged tree of `chain` (nearest first) with
    /// every owner shifted by `remap`, as containerd's client chowns its copy of an image.
    /// One layer is read as it is; several through a read-only overlay of them, which
    /// applies their whiteouts and opaque directories as the container's mount would.
    fn build_shifted_copy(&self, chain: &[u64], remap: &RemapLabels, dir: &Path) -> Result<()> {
        let map: IdMap = remap
            .id_map()
            .map_err(|e| Error::invalid_argument(e.to_string()))?;
        let layout = &self.inner.layout;
        mkdir(dir, 0o700)?;
        let fs = dir.join("fs");
        mkdir(&fs, 0o755)?;
        let shifted = |src: &Path| {
            crate::copy::copy_dir_shifted(src, &fs, &map).map_err(|e| match e {
                crate::copy::CopyError::Unmapped { path, source } => {
                    Error::invalid_argument(format!(
                        "cannot shift the owner of {} for this mapping: {source}",
                        path.display()
                    ))
                }
                other => Error::internal(format!("shift a copy of the parent: {other}")),
            })
        };
        match chain {
            [] => Ok(()),
            [only] => shifted(&layout.fs(*only)),
            _ => {
                let merged = dir.join(MERGED);
                mkdir(&merged, 0o700)?;
                let lower: Vec<String> = chain
                    .iter()
                    .map(|id| layout.fs(*id).to_string_lossy().into_owned())
                    .collect();
                let mut options = vec![format!("lowerdir={}", lower.join(":"))];
                options.extend(self.inner.copy_mount_options.iter().cloned());
                let m = Mount {
                    kind: "overlay".into(),
                    source: "overlay".into(),
                    target: String::new(),
                    options,
                };
                let guard = mounts::MountGuard::mount(&[m], &merged)
                    .map_err(|e| Error::io("mount the parent chain to copy it", e))?;
                let copied = shifted(guard.path());
                guard
                    .unmount()
                    .map_err(|e| Error::io("unmount the parent chain's copy source", e))?;
                copied?;
                std::fs::remove_dir(&merged)
                    .map_err(|e| Error::io(format!("remove {}", merged.display()), e))
            }
        }
    }

    /// The size limit a new snapshot gets: its `containerd.io/snapshot/max-size` label, else
    /// the configured default for active snapshots other than containerd's unpacking ones
    /// (keys `extract-...`, whose layers may be any size) and the chowned copies of an image its
    /// client makes for a user namespace (keys `...-remap`, as big as the image). Views are read-only: a limit has
    /// nothing to bound. A limit without project quotas is refused, never ignored.
    fn size_limit(
        &self,
        kind: Kind,
        key: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<u64>> {
        let label = labels
            .get(quota::LABEL_MAX_SIZE)
            .filter(|v| !v.is_empty())
            .map(|v| quota::parse_size(v))
            .transpose()
            .map_err(|e| Error::invalid_argument(e.to_string()))?;
        if kind != Kind::Active {
            return Ok(None);
        }
        // containerd's metadata store hands proxies `<namespace>/<seq>/<key>`.
        let own_key = key.splitn(3, '/').nth(2).unwrap_or(key);
        let default = self.inner.config.max_size;
        let limit = match label {
            Some(n) => n,
            None if default > 0
                && !own_key.starts_with("extract-")
                && !own_key.ends_with("-remap") =>
            {
                default
            }
            None => return Ok(None),
        };
        if self.inner.quotas.is_none() {
            return Err(Error::failed_precondition(format!(
                "snapshot size limit {limit} asked for, but {} has no project quotas \
                 (ext4 with the project feature or xfs, mounted with prjquota)",
                self.inner.layout.snapshots_dir().display()
            )));
        }
        Ok(Some(limit))
    }

    /// Puts the snapshot being built in `temp` into its own project, limited to `bytes`.
    fn limit_size(&self, temp: &Path, id: u64, bytes: u64) -> Result<()> {
        let Some(quotas) = &self.inner.quotas else {
            return Err(Error::failed_precondition("no project quotas"));
        };
        let project = u32::try_from(id)
            .ok()
            .and_then(|id| self.inner.config.project_id_base.checked_add(id))
            .ok_or_else(|| Error::out_of_range(format!("no project id left for snapshot {id}")))?;
        // The limit first: a directory in the project is then never unbounded.
        quotas
            .set_limit(project, bytes)
            .map_err(|e| Error::io(format!("set the limit of project {project}"), e))?;
        for dir in [temp.to_path_buf(), temp.join("fs"), temp.join("work")] {
            match quota::set_project(&dir, project) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("put {} in project {project}", dir.display()),
                        e,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Deletes a snapshot's directory and, when it was limited, clears its project's limit
    /// (its usage went with the files).
    fn remove_snapshot_dir(&self, dir: &Path) -> std::io::Result<()> {
        let is_temp = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(layout::TEMP_PREFIX));
        if is_temp {
            // A create that died while copying a parent chain may have left it mounted: the
            // read-only overlay would fail the removal (and keep the mount) forever.
            let merged = dir.join("copy").join(MERGED);
            if merged.exists() {
                let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let project = match &self.inner.quotas {
            Some(_) => quota::project_of(dir)
                .ok()
                .filter(|p| *p > self.inner.config.project_id_base),
            None => None,
        };
        std::fs::remove_dir_all(dir)?;
        if let (Some(q), Some(p)) = (&self.inner.quotas, project)
            && let Err(e) = q.set_limit(p, 0)
        {
            warn!(project = p, error = %e, "failed to clear a removed snapshot's size limit");
        }
        Ok(())
    }

    /// Builds the empty directory of a new snapshot of `kind` at `dir`.
    fn make_snapshot_dir(&self, dir: &Path, kind: Kind) -> Result<()> {
        mkdir(dir, 0o700)?;
        let fs = dir.join("fs");
        mkdir(&fs, 0o755)?;
        set_mode(&fs, 0o755)?;
        if kind != Kind::View && self.inner.config.mode == Mode::Overlayfs {
            mkdir(&dir.join("work"), 0o711)?;
        }
        Ok(())
    }

    /// As containerd: a new upper dir's root belongs to whoever owns the parent's root, so a
    /// non-root image's top directory keeps its owner.
    fn own_like_parent(&self, fs: &Path, parent: u64) -> std::io::Result<()> {
        let md = std::fs::metadata(self.inner.layout.fs(parent))?;
        std::os::unix::fs::lchown(fs, Some(md.uid()), Some(md.gid()))
    }

    /// Gives back the directory of every overlay snapshot whose row outlived it. A new
    /// directory's rename is not synced before its row (see [`Snapshotter::create_in`]), so
    /// after a power loss the row can be on disk without it. Nothing created inside the
    /// directory can have survived either: a journaling file system commits operations in
    /// order, and every creation inside came after the rename. So an empty directory is
    /// exactly what was there. Returns how many were restored.
    fn restore_missing_dirs(&self) -> Result<usize> {
        if self.inner.config.mode == Mode::Native {
            // A native snapshot's copy is synced before its row; it is never missing.
            return Ok(0);
        }
        let layout = &self.inner.layout;
        let mut shapes = metadata::dir_shapes(&lock(&self.inner.db))?;
        // Parents first, so a restored child can take its restored parent's owner.
        shapes.sort_by_key(|s| s.id);
        let mut restored = 0;
        for metadata::DirShape {
            id,
            kind,
            parent,
            remap,
            name,
            labels,
        } in shapes
        {
            let dir = layout.snapshot_dir(id);
            match std::fs::symlink_metadata(&dir) {
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("stat {}", dir.display()), e)),
            }
            let n = self.inner.temp_seq.fetch_add(1, Ordering::Relaxed);
            let temp = layout.temp_dir(n);
            self.make_snapshot_dir(&temp, kind)?;
            // Owned as create made it: by the mapped root, else like the parent.
            let owned = match remap.root_owner() {
                Ok(Some((uid, gid))) => {
                    std::os::unix::fs::lchown(temp.join("fs"), Some(uid), Some(gid))
                }
                _ => match parent {
                    Some(parent) => self.own_like_parent(&temp.join("fs"), parent),
                    None => Ok(()),
                },
            };
            if let Err(e) = owned {
                warn!(id, error = %e, "restored snapshot root keeps root as its owner");
            }
            // And in its project again, limited as create made it.
            match self.size_limit(kind, &name, &labels) {
                Ok(Some(bytes)) => {
                    if let Err(e) = self.limit_size(&temp, id, bytes) {
                        warn!(id, error = %e.chain(), "restored snapshot has no size limit");
                    }
                }
                Ok(None) => {}
                Err(e) => warn!(id, error = %e.chain(), "restored snapshot has no size limit"),
            }
            std::fs::rename(&temp, &dir)
                .map_err(|e| Error::io(format!("rename {} into place", temp.display()), e))?;
            restored += 1;
        }
        if restored > 0 {
            self.sync_snapshots_dir()?;
        }
        Ok(restored)
    }

    /// The mounts of the active or view snapshot `key`.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(Error::invalid_argument("snapshot key must not be empty"));
        }
        let s = metadata::get_snapshot(&lock(&self.inner.reader), key)?;
        Ok(self.mounts_for(&s))
    }

    /// Commits the active snapshot `key` as `name`. `parent`, when not empty, rebases a
    /// snapshot prepared without a parent onto `parent`. Does not measure the snapshot (see
    /// [`crate::usage`]): its latency does not depend on the layer's size.
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: &BTreeMap<String, String>,
        parent: &str,
    ) -> Result<()> {
        let id = {
            let mut conn = lock(&self.inner.db);
            metadata::write(&mut conn, |tx| {
                let id = metadata::commit(tx, key, name, labels, parent, SystemTime::now());
                strata_common::crashpoint::hit("snapshotter.commit.in_transaction");
                id
            })?
        };
        strata_common::crashpoint::hit("snapshotter.commit.done");
        self.queue_measure(id);
        Ok(())
    }

    /// Removes `key`; its directory goes now or in the next Cleanup (`async_remove`).
    pub fn remove(&self, key: &str) -> Result<()> {
        let metadata::Removed { id, remap_copy, .. } = {
            let mut conn = lock(&self.inner.db);
            metadata::write(&mut conn, |tx| {
                let removed = metadata::remove(tx, key);
                strata_common::crashpoint::hit("snapshotter.remove.in_transaction");
                removed
            })?
        };
        strata_common::crashpoint::hit("snapshotter.remove.row_deleted");
        if !self.inner.config.async_remove {
            self.make_durable(&lock(&self.inner.db))?;
            let dir = self.inner.layout.snapshot_dir(id);
            // The snapshot is gone either way; a directory left behind is Cleanup's.
            if let Err(e) = self.remove_snapshot_dir(&dir) {
                warn!(path = %dir.display(), error = %e, "failed to remove snapshot directory");
            }
            // The last snapshot standing on a shifted copy took it along.
            if let Some(rid) = remap_copy {
                let dir = self.inner.layout.remap_dir(rid);
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    warn!(path = %dir.display(), error = %e, "failed to remove shifted copy");
                }
            }
        }
        Ok(())
    }

    pub fn stat(&self, key: &str) -> Result<Info> {
        if key.is_empty() {
            return Err(Error::invalid_argument("snapshot key must not be empty"));
        }
        Ok(metadata::get_info(&lock(&self.inner.reader), key)?.0)
    }

    /// Updates labels (containerd's field paths `labels`, `labels.<key>`; none means all).
    pub fn update(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Info> {
        let mut conn = lock(&self.inner.db);
        metadata::write(&mut conn, |tx| {
            metadata::update(tx, name, labels, paths, SystemTime::now())
        })
    }

    /// Measured now for an active snapshot; the stored figure for a committed one (measured
    /// now if the background worker has not got to it yet).
    pub fn usage(&self, key: &str) -> Result<Usage> {
        match self.usage_lookup(key)? {
            UsageLookup::Known(u) => Ok(u),
            UsageLookup::Walk(w) => self.measure(w),
        }
    }

    /// The metadata half of [`Snapshotter::usage`]: the figure when the metadata has it (views,
    /// measured committed snapshots), else what [`Snapshotter::measure`] must walk. One SQLite
    /// read and no file system access, so it can run on an async worker.
    pub fn usage_lookup(&self, key: &str) -> Result<UsageLookup> {
        if key.is_empty() {
            return Err(Error::invalid_argument("snapshot key must not be empty"));
        }
        let (info, id, stored) = metadata::get_info(&lock(&self.inner.reader), key)?;
        Ok(match (info.kind, stored) {
            (Kind::Active, _) => UsageLookup::Walk(Walk { id, store: false }),
            (Kind::Committed, None) => UsageLookup::Walk(Walk { id, store: true }),
            (_, stored) => UsageLookup::Known(stored.unwrap_or_default()),
        })
    }

    /// The file system half of [`Snapshotter::usage`]: walks the snapshot's directory (and
    /// stores the figure of a committed snapshot). Blocks for as long as the tree is big.
    pub fn measure(&self, w: Walk) -> Result<Usage> {
        let u = disk_usage(&self.inner.layout.fs(w.id))?;
        if w.store {
            store_usage(&self.inner, w.id, u)?;
        }
        Ok(u)
    }

    /// The snapshots matching `filters` (containerd's filter language; any of the strings may
    /// match), in name order.
    pub fn list(&self, filters: &[String]) -> Result<Vec<Info>> {
        let filter =
            Filter::parse_all(filters).map_err(|e| Error::invalid_argument(e.to_string()))?;
        let all = metadata::list(&lock(&self.inner.reader))?;
        Ok(all
            .into_iter()
            .filter(|i| {
                let fields = FieldMap::new()
                    .with_field("name", &i.name)
                    .with_field("parent", &i.parent)
                    .with_field("kind", i.kind.as_str())
                    .with_labels(&i.labels);
                filter.matches(&fields)
            })
            .collect())
    }

    /// With full durability, puts a new native snapshot's directory, the copy of its parent,
    /// on disk before the row that names it: that row must never survive a power loss
    /// without its content. One fsync of `snapshots/` commits the file system journal up to
    /// the rename, which on a journaling file system includes the copy before it.
    ///
    /// An overlay snapshot's new directory is empty, so its row may go first: start-up
    /// recreates a directory whose rename was lost ([`Snapshotter::restore_missing_dirs`]).
    /// That saves a journal commit and a flush per Prepare and View, which containerd's
    /// overlayfs snapshotter does not pay either (it never syncs its directories).
    fn make_dir_durable(&self) -> Result<()> {
        if self.inner.config.durability == Durability::Full
            && self.inner.config.mode == Mode::Native
        {
            self.sync_snapshots_dir()?;
        }
        Ok(())
    }

    fn sync_snapshots_dir(&self) -> Result<()> {
        self.inner
            .snapshots_fd
            .sync_all()
            .map_err(|e| Error::io("sync snapshots directory", e))
    }

    /// Makes every committed transaction durable before directories they freed are deleted
    /// (only needed when transactions are not fsynced one by one).
    fn make_durable(&self, conn: &Connection) -> Result<()> {
        if self.inner.config.durability == Durability::Process {
            // A checkpoint syncs the WAL first, whatever `synchronous` says.
            conn.execute_batch("PRAGMA wal_checkpoint(FULL)")
                .map_err(|e| Error::internal(format!("checkpoint metadata: {e}")))?;
        }
        Ok(())
    }

    /// Deletes every directory under `snapshots/` that no snapshot owns (removed snapshots
    /// when removal is asynchronous, leftovers of crashes) and every shifted copy no snapshot
    /// stands on any more; returns how many.
    pub fn cleanup(&self) -> Result<usize> {
        let snapshots = self.inner.layout.snapshots_dir();
        let orphans: Vec<PathBuf> = {
            // Under the metadata lock no directory is renamed in or out, so the listing and
            // the ids agree.
            let conn = lock(&self.inner.db);
            self.make_durable(&conn)?;
            let ids = metadata::ids(&conn)?;
            let copies = metadata::remap_ids(&conn)?;
            let building = lock(&self.inner.building);
            let entries = std::fs::read_dir(&snapshots)
                .map_err(|e| Error::io(format!("read {}", snapshots.display()), e))?;
            let mut out = Vec::new();
            for entry in entries {
                let entry =
                    entry.map_err(|e| Error::io(format!("read {}", snapshots.display()), e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let owned = layout::parse_id(&name).is_some_and(|id| ids.contains(&id))
                    || layout::parse_remap_id(&name).is_some_and(|id| copies.contains(&id));
                if !owned && !building.contains(&name) {
                    out.push(entry.path());
                }
            }
            out
        };
        let mut removed = 0;
        for dir in orphans {
            match self.remove_snapshot_dir(&dir) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(path = %dir.display(), error = %e, "failed to remove orphan directory")
                }
            }
        }
        Ok(removed)
    }
}

/// syncfs(2) of the file system holding `path`.
fn sync_file_system(path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)?;
    // SAFETY: a valid open descriptor.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Stores a measured usage. Holding the writer's lock meanwhile keeps the two connections from
/// meeting on SQLite's file lock, whose busy handler would sleep for milliseconds.
fn store_usage(inner: &Inner, id: u64, u: Usage) -> Result<()> {
    let _writer = lock(&inner.db);
    metadata::set_usage(&lock(&inner.usage_db), id, u)
}

fn measure_worker(inner: Weak<Inner>, rx: mpsc::Receiver<u64>) {
    while let Ok(id) = rx.recv() {
        let Some(inner) = inner.upgrade() else { return };
        match disk_usage(&inner.layout.fs(id)) {
            Ok(u) => {
                if let Err(e) = store_usage(&inner, id, u) {
                    warn!(id, error = %e, "failed to store snapshot usage");
                }
            }
            // Removed before we got to it.
            Err(e) => debug!(id, error = %e, "snapshot not measured"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_common::error::ErrorKind;

    fn open(async_remove: bool) -> (tempfile::TempDir, Snapshotter) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SnapshotterConfig {
            async_remove,
            ..Default::default()
        };
        let s = Snapshotter::open_with(
            dir.path(),
            cfg,
            Features {
                index: true,
                userxattr: false,
                idmapped_mounts: true,
            },
        )
        .unwrap();
        (dir, s)
    }

    fn none() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn entries(s: &Snapshotter) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(s.layout().snapshots_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn directories_follow_rows_and_async_remove_waits_for_cleanup() {
        let (_d, s) = open(true);
        s.prepare("a", "", &none()).unwrap();
        assert_eq!(entries(&s), ["1"]);
        assert!(s.layout().work(1).is_dir());
        s.remove("a").unwrap();
        assert_eq!(entries(&s), ["1"], "async: directory stays until Cleanup");
        assert_eq!(s.cleanup().unwrap(), 1);
        assert!(entries(&s).is_empty());
    }

    #[test]
    fn sync_remove_deletes_at_once() {
        let (_d, s) = open(false);
        s.view("v", "", &none()).unwrap();
        assert!(!s.layout().work(1).exists(), "views have no work dir");
        s.remove("v").unwrap();
        assert!(entries(&s).is_empty());
    }

    #[test]
    fn process_durability_checkpoints_before_deleting_directories() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SnapshotterConfig {
            async_remove: false,
            durability: Durability::Process,
            ..Default::default()
        };
        let s = Snapshotter::open_with(dir.path(), cfg, Features::default()).unwrap();
        let sync: i64 = lock(&s.inner.db)
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "NORMAL");
        s.prepare("a", "", &none()).unwrap();
        s.remove("a").unwrap();
        assert!(entries(&s).is_empty());
        // The checkpoint emptied the WAL into the database file.
        let wal = dir.path().join("metadata.db-wal");
        let frames: (i64, i64, i64) = lock(&s.inner.db)
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(
            frames.1, frames.2,
            "every WAL frame is checkpointed ({wal:?})"
        );
    }

    #[test]
    fn a_failed_create_leaves_no_directory() {
        let (_d, s) = open(true);
        s.prepare("a", "", &none()).unwrap();
        assert_eq!(
            s.prepare("a", "", &none()).unwrap_err().kind(),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            s.prepare("b", "missing", &none()).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(entries(&s), ["1"]);
    }

    #[test]
    fn restart_recreates_directories_a_power_loss_took_from_their_rows() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let features = Features::default();
        {
            let s =
                Snapshotter::open_with(dir.path(), SnapshotterConfig::default(), features).unwrap();
            s.prepare("base-a", "", &none()).unwrap();
            std::os::unix::fs::lchown(s.layout().fs(1), Some(1234), Some(5678)).unwrap();
            s.commit("base", "base-a", &none(), "").unwrap();
            s.prepare("top-a", "base", &none()).unwrap();
            s.commit("top", "top-a", &none(), "").unwrap();
            s.prepare("active", "top", &none()).unwrap();
            s.view("view", "top", &none()).unwrap();
            // A power loss after the rows but before the renames reached the disk: the
            // directories of the committed `top` (2), `active` (3) and `view` (4) are gone.
            for id in [2, 3, 4] {
                std::fs::remove_dir_all(s.layout().snapshot_dir(id)).unwrap();
            }
        }
        let s = Snapshotter::open_with(dir.path(), SnapshotterConfig::default(), features).unwrap();
        assert_eq!(entries(&s), ["1", "2", "3", "4"]);
        for id in [2, 3, 4] {
            let fs = s.layout().fs(id);
            let md = std::fs::metadata(&fs).unwrap();
            assert_eq!(md.permissions().mode() & 0o7777, 0o755, "{id}: fs mode");
            assert_eq!(
                (md.uid(), md.gid()),
                (1234, 5678),
                "{id}: owner of the parent"
            );
            assert_eq!(
                std::fs::read_dir(&fs).unwrap().count(),
                0,
                "{id}: fs is empty"
            );
        }
        assert!(
            s.layout().work(2).is_dir(),
            "a committed snapshot keeps its work dir"
        );
        assert!(
            s.layout().work(3).is_dir(),
            "an active snapshot needs its work dir"
        );
        assert!(!s.layout().work(4).exists(), "views have no work dir");
        // The restored snapshots work: a child of `top`, and `active` commits.
        s.commit("top2", "active", &none(), "").unwrap();
        s.prepare("next", "top2", &none()).unwrap();
        assert_eq!(s.mounts("next").unwrap().len(), 1);
    }

    #[test]
    fn native_snapshots_are_never_made_up_empty() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SnapshotterConfig {
            mode: Mode::Native,
            ..Default::default()
        };
        {
            let s = Snapshotter::open_with(dir.path(), cfg.clone(), Features::default()).unwrap();
            s.prepare("a", "", &none()).unwrap();
            std::fs::remove_dir_all(s.layout().snapshot_dir(1)).unwrap();
        }
        let s = Snapshotter::open_with(dir.path(), cfg, Features::default()).unwrap();
        assert!(
            entries(&s).is_empty(),
            "a native copy cannot be made up empty"
        );
    }

    #[test]
    fn restart_reaps_orphans_and_measures_what_was_left_unmeasured() {
        let dir = tempfile::tempdir().unwrap();
        let features = Features::default();
        {
            let s =
                Snapshotter::open_with(dir.path(), SnapshotterConfig::default(), features).unwrap();
            s.prepare("a", "", &none()).unwrap();
            std::fs::write(s.layout().fs(1).join("f"), vec![1u8; 9000]).unwrap();
            s.commit("c", "a", &none(), "").unwrap();
            // What a crash leaves: a half-built temp dir and a dir whose row never committed.
            std::fs::create_dir_all(s.layout().temp_dir(7).join("fs")).unwrap();
            std::fs::create_dir_all(s.layout().snapshot_dir(99).join("fs")).unwrap();
            // Undo any measurement so the restart has to do it.
            lock(&s.inner.db)
                .execute("UPDATE snapshots SET size = NULL, inodes = NULL", [])
                .unwrap();
        }
        let s = Snapshotter::open_with(dir.path(), SnapshotterConfig::default(), features).unwrap();
        assert_eq!(entries(&s), ["1"]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if metadata::get_info(&lock(&s.inner.db), "c")
                .unwrap()
                .2
                .is_some()
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "worker never measured c"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(s.usage("c").unwrap().size >= 9000);
    }

    fn mapping(uid: &str, gid: &str) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        l.insert(crate::idmap::LABEL_UID_MAPPING.to_string(), uid.to_string());
        l.insert(crate::idmap::LABEL_GID_MAPPING.to_string(), gid.to_string());
        l
    }

    fn owner(p: &Path) -> (u32, u32) {
        let md = std::fs::symlink_metadata(p).unwrap();
        (md.uid(), md.gid())
    }

    fn open_remapping() -> (tempfile::TempDir, Snapshotter) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SnapshotterConfig {
            remap_ids: true,
            ..Default::default()
        };
        let features = Features {
            idmapped_mounts: true,
            ..Default::default()
        };
        let s = Snapshotter::open_with(dir.path(), cfg, features).unwrap();
        (dir, s)
    }

    #[test]
    fn remap_methods_follow_the_kernel_and_need_overlayfs() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = |remap_method| SnapshotterConfig {
            remap_ids: true,
            remap_method,
            ..Default::default()
        };
        let with_idmap = Features {
            idmapped_mounts: true,
            ..Default::default()
        };
        let e = Snapshotter::open_with(dir.path(), cfg(RemapMethod::Idmap), Features::default())
            .err()
            .expect("idmap without id-mapped mounts: refused");
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        assert!(e.to_string().contains("id-mapped mounts"), "{e}");
        for (method, features, want) in [
            (RemapMethod::Auto, Features::default(), Remap::Copy),
            (RemapMethod::Auto, with_idmap, Remap::Idmap),
            (RemapMethod::Idmap, with_idmap, Remap::Idmap),
            (RemapMethod::Copy, with_idmap, Remap::Copy),
            (RemapMethod::Copy, Features::default(), Remap::Copy),
        ] {
            let s = Snapshotter::open_with(dir.path(), cfg(method), features).unwrap();
            assert_eq!(s.inner.remap, want, "{method:?} {features:?}");
        }
        let s =
            Snapshotter::open_with(dir.path(), SnapshotterConfig::default(), with_idmap).unwrap();
        assert_eq!(s.inner.remap, Remap::Off);
        let native = SnapshotterConfig {
            mode: Mode::Native,
            ..cfg(RemapMethod::Auto)
        };
        let e = Snapshotter::open_with(dir.path(), native, with_idmap)
            .err()
            .expect("native: refused");
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
    }

    fn open_copying(async_remove: bool) -> (tempfile::TempDir, Snapshotter) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SnapshotterConfig {
            remap_ids: true,
            remap_method: RemapMethod::Copy,
            async_remove,
            ..Default::default()
        };
        let s = Snapshotter::open_with(dir.path(), cfg, Features::default()).unwrap();
        (dir, s)
    }

    fn set_xattr(p: &Path, name: &str, value: &[u8]) {
        let cp = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let cn = std::ffi::CString::new(name).unwrap();
        // SAFETY: test setup with valid buffers.
        let r = unsafe {
            libc::lsetxattr(
                cp.as_ptr(),
                cn.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(r, 0, "setxattr {name} on {}", p.display());
    }

    fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
        let cp = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let cn = std::ffi::CString::new(name).unwrap();
        let mut buf = vec![0u8; 256];
        // SAFETY: valid buffers.
        let n = unsafe {
            libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        };
        (n >= 0).then(|| {
            buf.truncate(usize::try_from(n).unwrap());
            buf
        })
    }

    /// Two layers: `l1` with owners, modes, links and xattrs; `l2` on it with a whiteout, an
    /// opaque directory and a file of its own.
    fn two_layers(s: &Snapshotter) {
        use std::os::unix::fs::PermissionsExt;
        s.prepare("l1-a", "", &none()).unwrap();
        let l1 = s.layout().fs(1);
        std::fs::create_dir(l1.join("data")).unwrap();
        std::os::unix::fs::lchown(l1.join("data"), Some(1000), Some(1000)).unwrap();
        std::fs::write(l1.join("data/f"), b"user file\n").unwrap();
        std::os::unix::fs::lchown(l1.join("data/f"), Some(1000), Some(1001)).unwrap();
        std::fs::write(l1.join("suid"), b"#!").unwrap();
        std::fs::set_permissions(l1.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::hard_link(l1.join("suid"), l1.join("suid-link")).unwrap();
        std::os::unix::fs::symlink("data/f", l1.join("sym")).unwrap();
        std::os::unix::fs::lchown(l1.join("sym"), Some(7), Some(8)).unwrap();
        set_xattr(&l1.join("data/f"), "user.k", b"v");
        // Revision 2 capabilities (cap_net_bind_service, effective).
        let mut caps = vec![0u8; 20];
        caps[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
        caps[4..8].copy_from_slice(&0x400u32.to_le_bytes());
        std::fs::write(l1.join("capped"), b"x").unwrap();
        set_xattr(&l1.join("capped"), "security.capability", &caps);
        std::fs::write(l1.join("gone"), b"x").unwrap();
        std::fs::create_dir(l1.join("opq")).unwrap();
        std::fs::write(l1.join("opq/old"), b"x").unwrap();
        s.commit("l1", "l1-a", &none(), "").unwrap();
        s.prepare("l2-a", "l1", &none()).unwrap();
        let l2 = s.layout().fs(2);
        nix::sys::stat::mknod(
            &l2.join("gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        std::fs::create_dir(l2.join("opq")).unwrap();
        set_xattr(&l2.join("opq"), "trusted.overlay.opaque", b"y");
        std::fs::write(l2.join("opq/new"), b"x").unwrap();
        std::fs::write(l2.join("top"), b"x").unwrap();
        std::os::unix::fs::lchown(l2.join("top"), Some(5), Some(5)).unwrap();
        s.commit("l2", "l2-a", &none(), "").unwrap();
    }

    fn lowerdir(m: &[Mount]) -> String {
        m[0].options
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="))
            .unwrap_or_else(|| panic!("no lowerdir in {m:?}"))
            .to_string()
    }

    #[test]
    fn copy_method_shifts_a_merged_copy_of_the_chain() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, s) = open_copying(true);
        two_layers(&s);
        let labels = mapping("0:100000:65536", "0:100000:65536");
        let m = s.prepare("c", "l2", &labels).unwrap();
        assert_eq!(m[0].kind, "overlay");
        assert!(
            !m[0].options.iter().any(|o| o.contains("idmap=")),
            "{:?}",
            m[0].options
        );
        let copy = s.layout().remap_fs(1);
        assert_eq!(lowerdir(&m), copy.to_string_lossy());
        assert_eq!(s.mounts("c").unwrap(), m);
        // Owners shifted, modes, links, times and xattrs kept; whiteouts applied.
        let r = 100000;
        assert_eq!(owner(&copy), (r, r));
        assert_eq!(owner(&copy.join("data")), (r + 1000, r + 1000));
        assert_eq!(owner(&copy.join("data/f")), (r + 1000, r + 1001));
        assert_eq!(owner(&copy.join("sym")), (r + 7, r + 8));
        assert_eq!(owner(&copy.join("top")), (r + 5, r + 5));
        assert_eq!(
            std::fs::read_link(copy.join("sym")).unwrap(),
            Path::new("data/f")
        );
        let md = |p: &str| std::fs::symlink_metadata(copy.join(p)).unwrap();
        assert_eq!(md("suid").permissions().mode() & 0o7777, 0o4755);
        assert_eq!(md("suid").ino(), md("suid-link").ino(), "hardlink kept");
        let l1 = s.layout().fs(1);
        assert_eq!(
            md("data/f").mtime(),
            std::fs::metadata(l1.join("data/f")).unwrap().mtime()
        );
        assert_eq!(get_xattr(&copy.join("data/f"), "user.k").unwrap(), b"v");
        let caps = get_xattr(&copy.join("capped"), "security.capability").unwrap();
        assert_eq!(caps.len(), 24, "revision 3");
        assert_eq!(caps[20..], r.to_le_bytes(), "rooted at the mapped root");
        assert!(!copy.join("gone").exists(), "whiteout applied");
        assert!(!copy.join("opq/old").exists(), "opaque dir applied");
        assert!(copy.join("opq/new").exists());
        assert_eq!(
            std::fs::read_dir(s.layout().remap_dir(1))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>(),
            ["fs"],
            "no mount point left"
        );
        // The layers are untouched, and an unmapped snapshot uses them.
        assert_eq!(owner(&l1.join("data/f")), (1000, 1001));
        assert_eq!(
            get_xattr(&l1.join("capped"), "security.capability")
                .unwrap()
                .len(),
            20
        );
        let plain = s.prepare("p", "l2", &none()).unwrap();
        assert_eq!(
            lowerdir(&plain),
            format!("{}:{}", s.layout().fs(2).display(), l1.display())
        );
        // The upper dir belongs to the mapped root.
        assert_eq!(owner(&s.layout().fs(3)), (r, r));
    }

    #[test]
    fn one_copy_per_parent_and_mapping_reaped_with_its_last_user() {
        let (_d, s) = open_copying(true);
        two_layers(&s);
        let a = mapping("0:100000:65536", "0:100000:65536");
        let b = mapping("0:200000:65536", "0:200000:65536");
        let m1 = s.prepare("c1", "l2", &a).unwrap();
        let m2 = s.prepare("c2", "l2", &a).unwrap();
        assert_eq!(lowerdir(&m1), lowerdir(&m2), "the copy is shared");
        let v = s.view("v", "l2", &a).unwrap();
        assert_eq!(v[0].kind, "bind");
        assert_eq!(v[0].source, lowerdir(&m1));
        assert_eq!(v[0].options, ["ro", "rbind"]);
        let other = s.prepare("o", "l2", &b).unwrap();
        assert_eq!(lowerdir(&other), s.layout().remap_fs(2).to_string_lossy());
        assert_eq!(
            owner(&s.layout().remap_fs(2).join("data/f")),
            (201000, 201001)
        );
        // A mapped snapshot on one layer copies that layer, whiteouts and all.
        let one = s.prepare("one", "l1", &a).unwrap();
        assert_eq!(lowerdir(&one), s.layout().remap_fs(3).to_string_lossy());
        assert!(s.layout().remap_fs(3).join("gone").exists());
        // A parentless mapped snapshot needs no copy.
        let bare = s.prepare("bare", "", &a).unwrap();
        assert_eq!(bare[0].options, ["rw", "rbind"]);
        let copies = |s: &Snapshotter| {
            entries(s)
                .into_iter()
                .filter(|e| e.starts_with('r'))
                .collect::<Vec<_>>()
        };
        assert_eq!(copies(&s), ["r1", "r2", "r3"]);
        s.remove("c1").unwrap();
        s.remove("c2").unwrap();
        s.cleanup().unwrap();
        assert_eq!(
            copies(&s),
            ["r1", "r2", "r3"],
            "the view still stands on r1"
        );
        s.remove("v").unwrap();
        s.remove("o").unwrap();
        assert_eq!(copies(&s), ["r1", "r2", "r3"], "async: until Cleanup");
        s.cleanup().unwrap();
        assert_eq!(copies(&s), ["r3"]);
        // A new user after the reaping gets a new copy, never an old id.
        let again = s.prepare("again", "l2", &a).unwrap();
        assert_eq!(lowerdir(&again), s.layout().remap_fs(4).to_string_lossy());
    }

    #[test]
    fn sync_remove_takes_the_copy_at_once_and_restarts_keep_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SnapshotterConfig {
            remap_ids: true,
            remap_method: RemapMethod::Copy,
            async_remove: false,
            ..Default::default()
        };
        let a = mapping("0:100000:65536", "0:100000:65536");
        {
            let s = Snapshotter::open_with(dir.path(), cfg.clone(), Features::default()).unwrap();
            two_layers(&s);
            s.prepare("c1", "l2", &a).unwrap();
            s.prepare("c2", "l1", &a).unwrap();
            s.remove("c2").unwrap();
            assert!(
                !s.layout().remap_dir(2).exists(),
                "sync: gone with its last user"
            );
            // What a crash leaves: a copy whose row never committed, and a create's temp dir
            // with the chain still mounted.
            std::fs::create_dir_all(s.layout().remap_fs(9)).unwrap();
            let merged = s.layout().temp_dir(77).join("copy").join(MERGED);
            std::fs::create_dir_all(&merged).unwrap();
            let m = Mount {
                kind: "bind".into(),
                source: s.layout().fs(1).to_string_lossy().into_owned(),
                target: String::new(),
                options: vec!["ro".into(), "rbind".into()],
            };
            mounts::mount_all(&[m], &merged).unwrap();
        }
        let s = Snapshotter::open_with(dir.path(), cfg, Features::default()).unwrap();
        assert!(
            s.layout().remap_fs(1).join("data/f").exists(),
            "in use: kept"
        );
        assert!(!s.layout().remap_dir(9).exists(), "orphan copy reaped");
        assert_eq!(entries(&s), ["1", "2", "3", "r1"]);
        assert_eq!(
            owner(&s.layout().fs(1).join("data/f")),
            (1000, 1001),
            "the unmounted layer is intact"
        );
        s.remove("c1").unwrap();
        assert_eq!(entries(&s), ["1", "2"]);
    }

    #[test]
    fn a_chain_too_long_for_one_mount_page_is_copied_too() {
        let (_d, s) = open_copying(true);
        let mut parent = String::new();
        // 150 lower dirs of `<tmp>/snapshots/<id>/fs` overflow a page of mount options: the
        // chain is mounted with paths relative to `snapshots/`, as containerd does.
        for i in 1..=150u32 {
            let key = format!("l{i}-a");
            s.prepare(&key, &parent, &none()).unwrap();
            let f = s.layout().fs(u64::from(i)).join(format!("f{i}"));
            std::fs::write(&f, b"x").unwrap();
            std::os::unix::fs::lchown(&f, Some(i), Some(i)).unwrap();
            parent = format!("l{i}");
            s.commit(&parent, &key, &none(), "").unwrap();
        }
        let m = s
            .prepare("c", &parent, &mapping("0:100000:65536", "0:100000:65536"))
            .unwrap();
        let copy = s.layout().remap_fs(1);
        assert_eq!(lowerdir(&m), copy.to_string_lossy());
        for i in [1u32, 75, 150] {
            assert_eq!(owner(&copy.join(format!("f{i}"))), (100000 + i, 100000 + i));
        }
        assert_eq!(std::fs::read_dir(&copy).unwrap().count(), 150);
    }

    #[test]
    fn owners_outside_the_mapping_are_refused_like_containerds_chown() {
        let (_d, s) = open_copying(true);
        s.prepare("l-a", "", &none()).unwrap();
        std::fs::write(s.layout().fs(1).join("far"), b"x").unwrap();
        std::os::unix::fs::lchown(s.layout().fs(1).join("far"), Some(70000), Some(70000)).unwrap();
        s.commit("l", "l-a", &none(), "").unwrap();
        let e = s
            .prepare("c", "l", &mapping("0:100000:65536", "0:100000:65536"))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(
            e.to_string()
                .contains("/far for this mapping: container ID 70000 cannot be mapped"),
            "{e}"
        );
        assert_eq!(entries(&s), ["1"], "nothing left behind");
        assert!(s.stat("c").is_err());
        // The image itself still serves an unmapped snapshot.
        s.prepare("p", "l", &none()).unwrap();
    }

    #[test]
    fn mapped_snapshots_get_a_shifted_root_and_idmap_options() {
        let (_d, s) = open_remapping();
        s.prepare("base-a", "", &none()).unwrap();
        std::fs::write(s.layout().fs(1).join("f"), b"x").unwrap();
        s.commit("base", "base-a", &none(), "").unwrap();
        let labels = mapping("0:100000:65536", "0:200000:65536");
        let m = s.prepare("c", "base", &labels).unwrap();
        assert_eq!(m[0].kind, "overlay");
        assert_eq!(
            m[0].options[..2],
            ["uidmap=0:100000:65536", "gidmap=0:200000:65536"]
        );
        assert_eq!(s.mounts("c").unwrap(), m, "Mounts repeats Prepare's answer");
        assert_eq!(owner(&s.layout().fs(2)), (100000, 200000));
        // The shared layer is untouched.
        assert_eq!(owner(&s.layout().fs(1)), (0, 0));
        assert_eq!(owner(&s.layout().fs(1).join("f")), (0, 0));
        // The same layer without a mapping: plain mounts, root owned like the parent.
        let plain = s.prepare("p", "base", &none()).unwrap();
        assert!(!plain[0].options.iter().any(|o| o.contains("idmap=")));
        assert_eq!(owner(&s.layout().fs(3)), (0, 0));
        // Views and parentless snapshots carry the mapping too, as in containerd.
        let v = s.view("v", "base", &labels).unwrap();
        assert_eq!(
            v[0].options,
            [
                "uidmap=0:100000:65536",
                "gidmap=0:200000:65536",
                "ro",
                "rbind"
            ]
        );
        let b = s.prepare("bare", "", &labels).unwrap();
        assert_eq!(b[0].kind, "bind");
        assert_eq!(owner(&s.layout().fs(5)), (100000, 200000));
        // An Update of the labels shows in the next Mounts (containerd reads them each time).
        let mut changed = labels.clone();
        changed.insert(
            crate::idmap::LABEL_UID_MAPPING.into(),
            "0:300000:65536".into(),
        );
        s.update("c", &changed, &[]).unwrap();
        assert_eq!(
            s.mounts("c").unwrap()[0].options[0],
            "uidmap=0:300000:65536"
        );
    }

    #[test]
    fn malformed_or_rootless_mappings_are_refused_before_anything_is_made() {
        let (_d, s) = open_remapping();
        for (uid, gid, message) in [
            ("0:1000", "0:1000:1", "unparsable"),
            ("0:1000:1", "x", "unparsable"),
            ("0:-1:1", "0:1:1", "invalid mapping"),
            ("0:1:1,", "0:1:1", "unparsable"),
            ("1:1000:10", "0:1000:10", "container ID 0 cannot be mapped"),
        ] {
            let e = s.prepare("a", "", &mapping(uid, gid)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{uid} {gid}: {e}");
            assert!(e.to_string().contains(message), "{uid} {gid}: {e}");
            let e = s.view("a", "", &mapping(uid, gid)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{uid} {gid}: {e}");
        }
        assert!(entries(&s).is_empty());
        assert!(s.stat("a").is_err());
        // One label alone is accepted, the other side mapping root to itself.
        let mut only_uid = BTreeMap::new();
        only_uid.insert(crate::idmap::LABEL_UID_MAPPING.to_string(), "0:7:1".into());
        let m = s.prepare("u", "", &only_uid).unwrap();
        assert_eq!(m[0].options, ["uidmap=0:7:1", "rw", "rbind"]);
        assert_eq!(owner(&s.layout().fs(1)), (7, 0));
    }

    #[test]
    fn without_remap_ids_labels_only_shift_the_root() {
        // containerd's client has copied and chowned the layers (no `remap-ids` capability):
        // the mount must not map them again. The root still goes to the mapped root, as in
        // containerd's overlayfs snapshotter.
        let (_d, s) = open(true);
        let e = s.prepare("bad", "", &mapping("0:1:1", "junk")).unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::InvalidArgument,
            "labels are still checked"
        );
        s.prepare("base-a", "", &none()).unwrap();
        s.commit("base", "base-a", &none(), "").unwrap();
        let m = s
            .prepare("c", "base", &mapping("0:100000:65536", "0:100000:65536"))
            .unwrap();
        assert!(
            m[0].options[0].starts_with("workdir="),
            "{:?}",
            m[0].options
        );
        assert_eq!(owner(&s.layout().fs(2)), (100000, 100000));
    }

    #[test]
    fn restart_restores_a_mapped_snapshots_root_owner() {
        let dir = tempfile::tempdir().unwrap();
        let features = Features::default();
        {
            let s =
                Snapshotter::open_with(dir.path(), SnapshotterConfig::default(), features).unwrap();
            s.prepare("base-a", "", &none()).unwrap();
            s.commit("base", "base-a", &none(), "").unwrap();
            s.prepare("c", "base", &mapping("0:4000:10", "0:5000:10"))
                .unwrap();
            std::fs::remove_dir_all(s.layout().snapshot_dir(2)).unwrap();
        }
        let s = Snapshotter::open_with(dir.path(), SnapshotterConfig::default(), features).unwrap();
        assert_eq!(owner(&s.layout().fs(2)), (4000, 5000));
    }

    #[test]
    fn native_mode_copies_the_parent() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SnapshotterConfig {
            mode: Mode::Native,
            ..Default::default()
        };
        let s = Snapshotter::open(dir.path(), cfg).unwrap();
        s.prepare("a", "", &none()).unwrap();
        std::fs::write(s.layout().fs(1).join("f"), b"one").unwrap();
        s.commit("c", "a", &none(), "").unwrap();
        let m = s.prepare("b", "c", &none()).unwrap();
        assert_eq!(m[0].kind, "bind");
        assert_eq!(m[0].source, s.layout().fs(2).to_string_lossy());
        assert_eq!(std::fs::read(s.layout().fs(2).join("f")).unwrap(), b"one");
        let v = s.view("v", "c", &none()).unwrap();
        assert_eq!(v[0].options, ["ro", "rbind"]);
        assert_eq!(std::fs::read(s.layout().fs(3).join("f")).unwrap(), b"one");
    }
}
