//! Snapshot metadata in SQLite: containerd's `core/snapshots/storage` (a bolt database in
//! containerd) with the same rules and error classes.
//!
//! One row per snapshot. Active keys, view keys and committed names share the `name` column,
//! so they share one namespace. A snapshot refers to its parent by id, which never changes:
//! committing renames the row in place and keeps its id, so children stay attached and the
//! snapshot's directory (named by the id) never moves.
//!
//! Usage is `NULL` until measured: Commit does not walk the upper dir (see
//! [`crate::usage`]), a background worker fills it in afterwards.
//!
//! Every function here runs inside the caller's transaction; the caller decides where it
//! begins and ends so directory renames can sit between the row change and the commit.

use std::collections::{BTreeMap, HashSet};
use std::time::SystemTime;

use strata_common::time::{from_nanos, to_nanos};

use rusqlite::{Connection, OptionalExtension, params};
use strata_common::fieldpath::{UpdateTarget, apply_label_update, validate_labels};
use strata_common::{Error, Result};

use crate::idmap::{self, RemapLabels};

/// containerd's snapshot kinds, with its numbering (`snapshots.Kind` and the proto enum).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    View = 1,
    Active = 2,
    Committed = 3,
}

impl Kind {
    fn from_i64(v: i64) -> Result<Kind> {
        match v {
            1 => Ok(Kind::View),
            2 => Ok(Kind::Active),
            3 => Ok(Kind::Committed),
            other => Err(Error::internal(format!(
                "metadata holds unknown snapshot kind {other}"
            ))),
        }
    }

    /// The word containerd's filters and `ctr` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// A snapshot's metadata as the API reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    /// The parent's name, empty for none.
    pub parent: String,
    pub kind: Kind,
    pub created: SystemTime,
    pub updated: SystemTime,
    pub labels: BTreeMap<String, String>,
}

/// Disk use: bytes in allocated blocks and distinct inodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

/// What mounts need: the id, the ids of the parent chain (nearest first), the id-mapping
/// labels, and the shifted copy of the parent chain that stands in for it, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub id: u64,
    pub kind: Kind,
    pub parent_ids: Vec<u64>,
    pub remap: RemapLabels,
    /// The id of the row in `remaps` whose copy is this snapshot's only lower layer.
    pub remap_copy: Option<u64>,
}

/// What [`remove`] deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Removed {
    pub id: u64,
    pub kind: Kind,
    /// A shifted copy no snapshot uses any more; its row went in the same transaction.
    pub remap_copy: Option<u64>,
}

/// Version 2 added `remaps`, one row per shifted copy of a parent chain (`remap_method =
/// "copy"`), and the column naming the copy a snapshot stands on.
const SCHEMA_VERSION: i64 = 2;

/// Opens (creating if needed) the database at `path` in WAL mode with the schema in place.
pub fn open(path: &std::path::Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(db(format!("open {}", path.display())))?;
    // WAL: a crash leaves the last committed transaction, readers never block the writer.
    // synchronous=FULL: a transaction reported committed survives power loss too, as bolt's
    // fsync per transaction does for containerd.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 10000;",
    )
    .map_err(db("configure database"))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db("read schema version"))?;
    match version {
        0 => conn
            .execute_batch(
                "BEGIN IMMEDIATE;
                 CREATE TABLE snapshots (
                     id        INTEGER PRIMARY KEY AUTOINCREMENT,
                     name      TEXT NOT NULL UNIQUE,
                     kind      INTEGER NOT NULL,
                     parent_id INTEGER REFERENCES snapshots(id),
                     created   INTEGER NOT NULL,
                     updated   INTEGER NOT NULL,
                     labels    TEXT NOT NULL,
                     size      INTEGER,
                     inodes    INTEGER
                 );
                 CREATE INDEX snapshots_parent ON snapshots(parent_id);
                 PRAGMA user_version = 1;
                 COMMIT;",
            )
            .map_err(db("create schema"))?,
        1 | SCHEMA_VERSION => {}
        other => {
            return Err(Error::failed_precondition(format!(
                "{} has schema version {other}; this strata-snapshotter knows {SCHEMA_VERSION}",
                path.display()
            )));
        }
    }
    if version < SCHEMA_VERSION {
        // The version is read again inside the transaction: another connection of this
        // process may have migrated meanwhile.
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(db("begin migration"))?;
        let migrated = (|| {
            let now: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if now < 2 {
                conn.execute_batch(
                    "CREATE TABLE remaps (
                         id        INTEGER PRIMARY KEY AUTOINCREMENT,
                         parent_id INTEGER NOT NULL REFERENCES snapshots(id),
                         uidmap    TEXT NOT NULL,
                         gidmap    TEXT NOT NULL,
                         UNIQUE (parent_id, uidmap, gidmap)
                     );
                     ALTER TABLE snapshots ADD COLUMN remap_id INTEGER REFERENCES remaps(id);
                     CREATE INDEX snapshots_remap ON snapshots(remap_id);
                     PRAGMA user_version = 2;",
                )?;
            }
            conn.execute_batch("COMMIT")
        })();
        if let Err(e) = migrated {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(db("migrate schema to version 2")(e));
        }
    }
    Ok(conn)
}

/// The size [`preallocate_wal`] gives the WAL: room for SQLite's automatic checkpoint interval
/// (1000 pages of 4 KiB plus frame headers) and the transaction that crosses it.
pub const WAL_PREALLOCATE: u64 = 8 << 20;

/// Extends the WAL of the database at `db_path` (an open connection must have created it) to
/// at least `size` bytes of written zeros, and makes that durable.
///
/// Why: a commit that appends to the WAL changes its size, and syncing a size change costs a
/// file system journal commit; a commit that overwrites blocks the file already has costs only
/// a data flush (with fdatasync, see `.cargo/config.toml`). SQLite reuses its WAL from the
/// start after each checkpoint but deletes it when the last connection closes, so without this
/// every start would append through the first few hundred transactions again. Zeros (not
/// fallocate: writing into unwritten extents is a metadata change too) beyond the last valid
/// frame are what SQLite already expects there: recovery stops at the first frame whose salt
/// or checksum does not match. Only bytes past the current end are written, never a frame.
pub fn preallocate_wal(db_path: &std::path::Path, size: u64) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut name = db_path.as_os_str().to_owned();
    name.push("-wal");
    let path = std::path::PathBuf::from(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let len = f
        .metadata()
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
        .len();
    if len >= size {
        return Ok(());
    }
    let zeros = vec![0u8; 1 << 20];
    f.seek(SeekFrom::Start(len))
        .map_err(|e| Error::io(format!("seek {}", path.display()), e))?;
    let mut at = len;
    while at < size {
        let n = usize::try_from((size - at).min(zeros.len() as u64)).unwrap_or(zeros.len());
        f.write_all(&zeros[..n])
            .map_err(|e| Error::io(format!("extend {}", path.display()), e))?;
        at += n as u64;
    }
    f.sync_all()
        .map_err(|e| Error::io(format!("sync {}", path.display()), e))
}

fn db<S: Into<String>>(what: S) -> impl FnOnce(rusqlite::Error) -> Error {
    move |e| Error::internal(format!("{}: {e}", what.into())).with_source(e)
}

fn encode_labels(labels: &BTreeMap<String, String>) -> Result<String> {
    serde_json::to_string(labels).map_err(|e| Error::internal(format!("encode labels: {e}")))
}

fn decode_labels(text: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(text).map_err(|e| Error::internal(format!("decode labels: {e}")))
}

fn to_id(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn from_id(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

struct Row {
    id: u64,
    kind: Kind,
    parent_id: Option<u64>,
}

fn row(conn: &Connection, name: &str) -> Result<Option<Row>> {
    let mut stmt = conn
        .prepare_cached("SELECT id, kind, parent_id FROM snapshots WHERE name = ?1")
        .map_err(db("prepare lookup"))?;
    let found = stmt
        .query_row([name], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })
        .optional()
        .map_err(db(format!("look up snapshot {name:?}")))?;
    found
        .map(|(id, kind, parent)| {
            Ok(Row {
                id: to_id(id),
                kind: Kind::from_i64(kind)?,
                parent_id: parent.map(to_id),
            })
        })
        .transpose()
}

fn not_exist(key: &str) -> Error {
    Error::not_found(format!("snapshot {key:?} does not exist"))
}

/// The ids from `id` up its parent chain, `id` first.
fn chain(conn: &Connection, id: u64) -> Result<Vec<u64>> {
    let mut stmt = conn
        .prepare_cached(
            "WITH RECURSIVE chain(id, parent_id, depth) AS (
                 SELECT id, parent_id, 0 FROM snapshots WHERE id = ?1
                 UNION ALL
                 SELECT s.id, s.parent_id, c.depth + 1
                 FROM snapshots s JOIN chain c ON s.id = c.parent_id
             )
             SELECT id FROM chain ORDER BY depth",
        )
        .map_err(db("prepare parent chain"))?;
    let ids = stmt
        .query_map([from_id(id)], |r| r.get::<_, i64>(0))
        .map_err(db("read parent chain"))?
        .map(|r| r.map(to_id))
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db("read parent chain"))?;
    Ok(ids)
}

// The parent's name comes from a scalar subquery, not a LEFT JOIN of the table with itself:
// SQLite re-prepares that join's statement on every run once `s.name` is bound (the cached
// statement then parsed and planned each Stat, ~8 us of a ~9 us call), which it does not for
// the subquery (~1 us). `no_statement_is_reprepared` below holds every statement to that.
const INFO_SELECT: &str = "SELECT s.name, \
     COALESCE((SELECT p.name FROM snapshots p WHERE p.id = s.parent_id), ''), s.kind, \
     s.created, s.updated, s.labels, s.id, s.size, s.inodes FROM snapshots s";

type InfoRow = (Info, u64, Option<Usage>);

/// One row of [`INFO_SELECT`], as stored.
type RawInfo = (
    String,
    String,
    i64,
    i64,
    i64,
    String,
    i64,
    Option<i64>,
    Option<i64>,
);

fn info_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawInfo> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ))
}

fn build_info(raw: RawInfo) -> Result<InfoRow> {
    let (name, parent, kind, created, updated, labels, id, size, inodes) = raw;
    let usage = match (size, inodes) {
        (Some(size), Some(inodes)) => Some(Usage { size, inodes }),
        _ => None,
    };
    Ok((
        Info {
            name,
            parent,
            kind: Kind::from_i64(kind)?,
            created: from_nanos(created),
            updated: from_nanos(updated),
            labels: decode_labels(&labels)?,
        },
        to_id(id),
        usage,
    ))
}

/// A snapshot's info, id and stored usage (`None` while not measured; always `None`-or-zero
/// for active snapshots, which are measured on demand).
pub fn get_info(conn: &Connection, key: &str) -> Result<(Info, u64, Option<Usage>)> {
    let mut stmt = conn
        .prepare_cached(&format!("{INFO_SELECT} WHERE s.name = ?1"))
        .map_err(db("prepare stat"))?;
    let raw = stmt
        .query_row([key], info_row)
        .optional()
        .map_err(db(format!("stat snapshot {key:?}")))?
        .ok_or_else(|| not_exist(key))?;
    build_info(raw)
}

/// The mountable snapshot `key` (active or view), with its parent chain and its id-mapping
/// labels (read now, so an Update of them shows in the next Mounts, as in containerd).
pub fn get_snapshot(conn: &Connection, key: &str) -> Result<Snapshot> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, kind, parent_id, labels, remap_id FROM snapshots WHERE name = ?1",
        )
        .map_err(db("prepare lookup"))?;
    let (id, kind, parent_id, labels, remap_id) = stmt
        .query_row([key], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })
        .optional()
        .map_err(db(format!("look up snapshot {key:?}")))?
        .ok_or_else(|| not_exist(key))?;
    let kind = Kind::from_i64(kind)?;
    if kind == Kind::Committed {
        return Err(Error::failed_precondition(format!(
            "requested snapshot {key:?} not active or view"
        )));
    }
    let parent_ids = match parent_id {
        Some(p) => chain(conn, to_id(p))?,
        None => Vec::new(),
    };
    // Most snapshots have no mapping: skip decoding their labels.
    let remap =
        if labels.contains(idmap::LABEL_UID_MAPPING) || labels.contains(idmap::LABEL_GID_MAPPING) {
            RemapLabels::from_labels(&decode_labels(&labels)?)
        } else {
            RemapLabels::default()
        };
    Ok(Snapshot {
        id: to_id(id),
        kind,
        parent_ids,
        remap,
        remap_copy: remap_id.map(to_id),
    })
}

/// Inserts an active or view snapshot `key` on the committed `parent` (empty for none),
/// standing on the shifted copy `remap_copy` (a row of `remaps`) if given.
pub fn create(
    conn: &Connection,
    kind: Kind,
    key: &str,
    parent: &str,
    labels: &BTreeMap<String, String>,
    now: SystemTime,
    remap_copy: Option<u64>,
) -> Result<Snapshot> {
    if kind == Kind::Committed {
        return Err(Error::invalid_argument(
            "only snapshots of type active or view can be created",
        ));
    }
    if key.is_empty() {
        return Err(Error::invalid_argument("snapshot key must not be empty"));
    }
    validate_labels(labels).map_err(|e| Error::invalid_argument(e.to_string()))?;
    let parent_row = if parent.is_empty() {
        None
    } else {
        let p = row(conn, parent)?
            .ok_or_else(|| Error::not_found(format!("missing parent {parent:?}")))?;
        if p.kind != Kind::Committed {
            return Err(Error::invalid_argument(format!(
                "parent {parent:?} is not committed snapshot"
            )));
        }
        Some(p)
    };
    if row(conn, key)?.is_some() {
        return Err(Error::already_exists(format!("snapshot {key:?}")));
    }
    let t = to_nanos(now);
    let labels: BTreeMap<String, String> = labels
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    conn.prepare_cached(
        "INSERT INTO snapshots (name, kind, parent_id, created, updated, labels, remap_id) \
         VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            key,
            kind as i64,
            parent_row.as_ref().map(|p| from_id(p.id)),
            t,
            encode_labels(&labels).unwrap_or_else(|_| "{}".into()),
            remap_copy.map(from_id)
        ])
    })
    .map_err(db(format!("insert snapshot {key:?}")))?;
    let id = to_id(conn.last_insert_rowid());
    let parent_ids = match &parent_row {
        Some(p) => chain(conn, p.id)?,
        None => Vec::new(),
    };
    Ok(Snapshot {
        id,
        kind,
        parent_ids,
        remap: RemapLabels::from_labels(&labels),
        remap_copy,
    })
}

/// The committed snapshot `name`'s id and the ids of its chain, its own first; `None` when
/// `name` is missing or not committed (the create that asked then fails on its own terms).
pub fn committed_chain(conn: &Connection, name: &str) -> Result<Option<(u64, Vec<u64>)>> {
    match row(conn, name)? {
        Some(r) if r.kind == Kind::Committed => Ok(Some((r.id, chain(conn, r.id)?))),
        _ => Ok(None),
    }
}

/// The shifted copy of the committed snapshot `parent_id`'s chain for the mapping labels
/// `uidmap` and `gidmap` (as given, `""` for an absent one), if one exists.
pub fn find_remap(
    conn: &Connection,
    parent_id: u64,
    uidmap: &str,
    gidmap: &str,
) -> Result<Option<u64>> {
    conn.prepare_cached(
        "SELECT id FROM remaps WHERE parent_id = ?1 AND uidmap = ?2 AND gidmap = ?3",
    )
    .and_then(|mut s| {
        s.query_row(params![from_id(parent_id), uidmap, gidmap], |r| {
            r.get::<_, i64>(0)
        })
        .optional()
    })
    .map(|id| id.map(to_id))
    .map_err(db("look up shifted copy"))
}

/// Records a new shifted copy; returns its id, which is never reused.
pub fn insert_remap(conn: &Connection, parent_id: u64, uidmap: &str, gidmap: &str) -> Result<u64> {
    conn.prepare_cached("INSERT INTO remaps (parent_id, uidmap, gidmap) VALUES (?1, ?2, ?3)")
        .and_then(|mut s| s.execute(params![from_id(parent_id), uidmap, gidmap]))
        .map_err(db("insert shifted copy"))?;
    Ok(to_id(conn.last_insert_rowid()))
}

/// Every shifted copy's id, for telling live copies from orphans.
pub fn remap_ids(conn: &Connection) -> Result<HashSet<u64>> {
    let mut stmt = conn
        .prepare_cached("SELECT id FROM remaps")
        .map_err(db("prepare remap ids"))?;
    let ids = stmt
        .query_map([], |r| r.get::<_, i64>(0))
        .map_err(db("list remap ids"))?
        .map(|r| r.map(to_id))
        .collect::<rusqlite::Result<HashSet<_>>>()
        .map_err(db("list remap ids"))?;
    Ok(ids)
}

/// Turns the active snapshot `key` into the committed snapshot `name`, keeping its id.
/// Labels are replaced, not inherited; created and updated are reset. A `parent` given here
/// rebases a snapshot prepared without one (containerd's `rebase` capability).
pub fn commit(
    conn: &Connection,
    key: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    parent: &str,
    now: SystemTime,
) -> Result<u64> {
    if name.is_empty() {
        return Err(Error::invalid_argument(
            "committed snapshot name must not be empty",
        ));
    }
    if key.is_empty() {
        return Err(Error::invalid_argument("snapshot key must not be empty"));
    }
    validate_labels(labels).map_err(|e| Error::invalid_argument(e.to_string()))?;
    // containerd creates the name's bucket first, so an existing name wins over the other
    // errors.
    if row(conn, name)?.is_some() {
        return Err(Error::already_exists(format!(
            "committed snapshot {name:?}"
        )));
    }
    let active = row(conn, key)?
        .ok_or_else(|| Error::not_found(format!("failed to get active snapshot {key:?}")))?;
    if active.kind != Kind::Active {
        return Err(Error::failed_precondition(format!(
            "snapshot {key:?} is not active"
        )));
    }
    let mut parent_id = active.parent_id;
    if !parent.is_empty() {
        let p = row(conn, parent)?.ok_or_else(|| {
            Error::not_found(format!("missing parent {parent:?} of snapshot {key:?}"))
        })?;
        match active.parent_id {
            None => parent_id = Some(p.id),
            Some(current) if current == p.id => {}
            Some(_) => {
                return Err(Error::invalid_argument(format!(
                    "cannot change parent of active snapshot {key:?} on commit"
                )));
            }
        }
        if p.kind != Kind::Committed {
            return Err(Error::failed_precondition(format!(
                "parent {parent:?} is not committed"
            )));
        }
    }
    let t = to_nanos(now);
    let labels: BTreeMap<String, String> = labels
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    conn.prepare_cached(
        "UPDATE snapshots SET name = ?1, kind = ?2, parent_id = ?3, created = ?4, updated = ?4, \
         labels = ?5, size = NULL, inodes = NULL WHERE id = ?6",
    )
    .and_then(|mut s| {
        s.execute(params![
            name,
            Kind::Committed as i64,
            parent_id.map(from_id),
            t,
            encode_labels(&labels).unwrap_or_else(|_| "{}".into()),
            from_id(active.id)
        ])
    })
    .map_err(db(format!("commit snapshot {key:?}")))?;
    Ok(active.id)
}

/// Deletes `key`'s row; a snapshot that is some other snapshot's parent stays. The row of the
/// shifted copy it stood on goes too when no other snapshot stands on it.
pub fn remove(conn: &Connection, key: &str) -> Result<Removed> {
    if key.is_empty() {
        return Err(Error::invalid_argument("snapshot key must not be empty"));
    }
    let r = row(conn, key)?.ok_or_else(|| Error::not_found(format!("snapshot {key}")))?;
    let has_child: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM snapshots WHERE parent_id = ?1)")
        .and_then(|mut s| s.query_row([from_id(r.id)], |row| row.get(0)))
        .map_err(db("look for children"))?;
    if has_child {
        return Err(Error::failed_precondition(format!(
            "cannot remove snapshot {key:?} with child"
        )));
    }
    let remap_id: Option<i64> = conn
        .prepare_cached("DELETE FROM snapshots WHERE id = ?1 RETURNING remap_id")
        .and_then(|mut s| s.query_row([from_id(r.id)], |row| row.get(0)))
        .map_err(db(format!("remove snapshot {key:?}")))?;
    let remap_copy = match remap_id {
        Some(rid) => {
            let freed = conn
                .prepare_cached(
                    "DELETE FROM remaps WHERE id = ?1 \
                     AND NOT EXISTS (SELECT 1 FROM snapshots WHERE remap_id = ?1)",
                )
                .and_then(|mut s| s.execute([rid]))
                .map_err(db("release shifted copy"))?;
            (freed > 0).then(|| to_id(rid))
        }
        None => None,
    };
    Ok(Removed {
        id: r.id,
        kind: r.kind,
        remap_copy,
    })
}

/// Applies an Update (labels only, containerd's field-path rules) and sets `updated`.
pub fn update(
    conn: &Connection,
    name: &str,
    labels: &BTreeMap<String, String>,
    paths: &[String],
    now: SystemTime,
) -> Result<Info> {
    if name.is_empty() {
        return Err(Error::invalid_argument("snapshot name must not be empty"));
    }
    let (mut info, id, _) = get_info(conn, name)?;
    apply_label_update(
        UpdateTarget::Snapshot(name),
        &mut info.labels,
        labels,
        paths,
    )
    .map_err(|e| Error::invalid_argument(e.to_string()))?;
    info.updated = now;
    conn.prepare_cached("UPDATE snapshots SET labels = ?1, updated = ?2 WHERE id = ?3")
        .and_then(|mut s| {
            s.execute(params![
                encode_labels(&info.labels).unwrap_or_else(|_| "{}".into()),
                to_nanos(now),
                from_id(id)
            ])
        })
        .map_err(db(format!("update snapshot {name:?}")))?;
    Ok(info)
}

/// Every snapshot's info, in name order.
pub fn list(conn: &Connection) -> Result<Vec<Info>> {
    let mut stmt = conn
        .prepare_cached(&format!("{INFO_SELECT} ORDER BY s.name"))
        .map_err(db("prepare list"))?;
    let raws = stmt
        .query_map([], info_row)
        .map_err(db("list snapshots"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db("list snapshots"))?;
    raws.into_iter()
        .map(|r| build_info(r).map(|(i, _, _)| i))
        .collect()
}

/// Every snapshot id, for telling live directories from orphans.
pub fn ids(conn: &Connection) -> Result<HashSet<u64>> {
    let mut stmt = conn
        .prepare_cached("SELECT id FROM snapshots")
        .map_err(db("prepare ids"))?;
    let ids = stmt
        .query_map([], |r| r.get::<_, i64>(0))
        .map_err(db("list ids"))?
        .map(|r| r.map(to_id))
        .collect::<rusqlite::Result<HashSet<_>>>()
        .map_err(db("list ids"))?;
    Ok(ids)
}

/// What a snapshot's directory holds: its id, its kind, its parent's id, its id-mapping
/// labels (which decide who owns its root), and its name and labels (which decide its size
/// limit).
pub fn dir_shapes(conn: &Connection) -> Result<Vec<DirShape>> {
    let mut stmt = conn
        .prepare_cached("SELECT id, kind, parent_id, labels, name FROM snapshots")
        .map_err(db("prepare shapes"))?;
    let raws = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })
        .map_err(db("list shapes"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db("list shapes"))?;
    raws.into_iter()
        .map(|(id, kind, parent, labels, name)| {
            let labels = decode_labels(&labels)?;
            Ok(DirShape {
                id: to_id(id),
                kind: Kind::from_i64(kind)?,
                parent: parent.map(to_id),
                remap: RemapLabels::from_labels(&labels),
                name,
                labels,
            })
        })
        .collect()
}

/// One row of [`dir_shapes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirShape {
    pub id: u64,
    pub kind: Kind,
    pub parent: Option<u64>,
    pub remap: RemapLabels,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Active snapshots (id, kind) and committed ones whose usage is not measured yet.
pub fn unmeasured_committed(conn: &Connection) -> Result<Vec<u64>> {
    let mut stmt = conn
        .prepare_cached("SELECT id FROM snapshots WHERE kind = 3 AND size IS NULL")
        .map_err(db("prepare unmeasured"))?;
    let ids = stmt
        .query_map([], |r| r.get::<_, i64>(0))
        .map_err(db("list unmeasured"))?
        .map(|r| r.map(to_id))
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db("list unmeasured"))?;
    Ok(ids)
}

/// Stores the measured usage of committed snapshot `id` (no-op if it is gone or was
/// re-measured).
pub fn set_usage(conn: &Connection, id: u64, usage: Usage) -> Result<()> {
    conn.prepare_cached(
        "UPDATE snapshots SET size = ?1, inodes = ?2 WHERE id = ?3 AND kind = 3 AND size IS NULL",
    )
    .and_then(|mut s| s.execute(params![usage.size, usage.inodes, from_id(id)]))
    .map_err(db("store usage"))?;
    Ok(())
}

/// Runs `f` in one write transaction (`BEGIN IMMEDIATE`): committed if `f` succeeds, rolled
/// back otherwise.
pub fn write<T>(conn: &mut Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db("begin transaction"))?;
    let out = f(&tx)?;
    tx.commit().map_err(db("commit transaction"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use strata_common::error::ErrorKind;

    fn store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("metadata.db")).unwrap();
        (dir, conn)
    }

    #[test]
    fn a_version_1_database_gains_the_shifted_copies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE snapshots (
                     id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
                     kind INTEGER NOT NULL, parent_id INTEGER REFERENCES snapshots(id),
                     created INTEGER NOT NULL, updated INTEGER NOT NULL, labels TEXT NOT NULL,
                     size INTEGER, inodes INTEGER);
                 INSERT INTO snapshots (name, kind, created, updated, labels)
                     VALUES ('old', 2, 0, 0, '{}');
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let conn = open(&path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let s = get_snapshot(&conn, "old").unwrap();
        assert_eq!(s.remap_copy, None);
        // A second connection finds it migrated.
        open(&path).unwrap();
    }

    #[test]
    fn a_shifted_copys_row_goes_with_its_last_user() {
        let (_d, conn) = store();
        let now = SystemTime::now();
        let none = labels(&[]);
        create(&conn, Kind::Active, "l-a", "", &none, now, None).unwrap();
        commit(&conn, "l-a", "l", &none, "", now).unwrap();
        let parent = committed_chain(&conn, "l").unwrap().unwrap();
        assert_eq!(parent, (1, vec![1]));
        assert_eq!(committed_chain(&conn, "missing").unwrap(), None);
        assert_eq!(find_remap(&conn, 1, "0:1:1", "").unwrap(), None);
        let rid = insert_remap(&conn, 1, "0:1:1", "").unwrap();
        assert_eq!(find_remap(&conn, 1, "0:1:1", "").unwrap(), Some(rid));
        assert_eq!(find_remap(&conn, 1, "0:1:1", "0:1:1").unwrap(), None);
        let a = create(&conn, Kind::Active, "a", "l", &none, now, Some(rid)).unwrap();
        assert_eq!(a.remap_copy, Some(rid));
        assert_eq!(get_snapshot(&conn, "a").unwrap().remap_copy, Some(rid));
        create(&conn, Kind::View, "b", "l", &none, now, Some(rid)).unwrap();
        assert_eq!(
            remove(&conn, "a").unwrap().remap_copy,
            None,
            "b still uses it"
        );
        assert_eq!(remap_ids(&conn).unwrap(), HashSet::from([rid]));
        let gone = remove(&conn, "b").unwrap();
        assert_eq!((gone.kind, gone.remap_copy), (Kind::View, Some(rid)));
        assert!(remap_ids(&conn).unwrap().is_empty());
        // The layer can go now.
        remove(&conn, "l").unwrap();
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Every statement prepared on `conn` so far, with how often SQLite re-prepared it.
    fn reprepared(conn: &Connection) -> Vec<(String, i32)> {
        use rusqlite::ffi;
        let mut out = Vec::new();
        // SAFETY: the handle stays valid while `conn` is borrowed; sqlite3_next_stmt,
        // sqlite3_sql and sqlite3_stmt_status only read the connection's statement list,
        // and nothing else uses the connection meanwhile.
        unsafe {
            let db = conn.handle();
            let mut stmt = ffi::sqlite3_next_stmt(db, std::ptr::null_mut());
            while !stmt.is_null() {
                let sql = std::ffi::CStr::from_ptr(ffi::sqlite3_sql(stmt))
                    .to_string_lossy()
                    .into_owned();
                let n = ffi::sqlite3_stmt_status(stmt, ffi::SQLITE_STMTSTATUS_REPREPARE, 0);
                out.push((sql, n));
                stmt = ffi::sqlite3_next_stmt(db, stmt);
            }
        }
        out
    }

    #[test]
    fn no_statement_is_reprepared() {
        // A cached statement that SQLite re-prepares on each run costs a parse and a plan per
        // call: Stat took 9 us instead of 1 us that way. Run every query twice with other
        // bindings and check that none was re-prepared.
        let (_d, mut conn) = store();
        let now = SystemTime::now();
        for round in 0..2 {
            let (p, a, c, v) = (
                format!("p{round}"),
                format!("a{round}"),
                format!("c{round}"),
                format!("v{round}"),
            );
            write(&mut conn, |tx| {
                create(tx, Kind::Active, &p, "", &labels(&[]), now, None)?;
                commit(tx, &p, &c, &labels(&[("k", "v")]), "", now)?;
                create(tx, Kind::Active, &a, &c, &labels(&[]), now, None)?;
                create(tx, Kind::View, &v, &c, &labels(&[]), now, None)?;
                update(tx, &c, &labels(&[("k", "w")]), &[], now)?;
                Ok(())
            })
            .unwrap();
            for key in [&a, &c, &v] {
                get_info(&conn, key).unwrap();
            }
            get_snapshot(&conn, &a).unwrap();
            get_snapshot(&conn, &v).unwrap();
            list(&conn).unwrap();
            ids(&conn).unwrap();
            dir_shapes(&conn).unwrap();
            let id = get_info(&conn, &c).unwrap().1;
            set_usage(&conn, id, Usage::default()).unwrap();
            unmeasured_committed(&conn).unwrap();
            write(&mut conn, |tx| {
                remove(tx, &v)?;
                remove(tx, &a)?;
                Ok(())
            })
            .unwrap();
        }
        let all = reprepared(&conn);
        assert!(all.len() >= 10, "statements seen: {all:?}");
        let bad: Vec<_> = all.into_iter().filter(|(_, n)| *n > 0).collect();
        assert!(bad.is_empty(), "re-prepared on every run: {bad:?}");
    }

    #[test]
    fn keys_and_names_share_one_namespace_and_ids_survive_commit() {
        let (_d, conn) = store();
        let now = SystemTime::now();
        let a = create(&conn, Kind::Active, "a", "", &labels(&[]), now, None).unwrap();
        let id = commit(&conn, "a", "c", &labels(&[("x", "1")]), "", now).unwrap();
        assert_eq!(id, a.id);
        let err = create(&conn, Kind::View, "c", "", &labels(&[]), now, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        let child = create(&conn, Kind::Active, "b", "c", &labels(&[]), now, None).unwrap();
        assert_eq!(child.parent_ids, vec![a.id]);
        assert_eq!(get_info(&conn, "b").unwrap().0.parent, "c");
        assert_eq!(
            get_info(&conn, "c").unwrap().0.labels,
            labels(&[("x", "1")])
        );
        assert_eq!(
            get_info(&conn, "a").unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn error_classes_match_containerds_storage() {
        let (_d, conn) = store();
        let now = SystemTime::now();
        let none = labels(&[]);
        create(&conn, Kind::Active, "a", "", &none, now, None).unwrap();
        create(&conn, Kind::View, "v", "", &none, now, None).unwrap();
        let kind = |e: Error| e.kind();
        assert_eq!(
            kind(create(&conn, Kind::Active, "", "", &none, now, None).unwrap_err()),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(create(&conn, Kind::Active, "x", "missing", &none, now, None).unwrap_err()),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind(create(&conn, Kind::Active, "x", "a", &none, now, None).unwrap_err()),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(commit(&conn, "v", "c", &none, "", now).unwrap_err()),
            ErrorKind::FailedPrecondition
        );
        assert_eq!(
            kind(commit(&conn, "nope", "c", &none, "", now).unwrap_err()),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind(commit(&conn, "a", "v", &none, "", now).unwrap_err()),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            kind(commit(&conn, "a", "", &none, "", now).unwrap_err()),
            ErrorKind::InvalidArgument
        );
        commit(&conn, "a", "c", &none, "", now).unwrap();
        assert_eq!(
            kind(get_snapshot(&conn, "c").unwrap_err()),
            ErrorKind::FailedPrecondition
        );
        create(&conn, Kind::Active, "child", "c", &none, now, None).unwrap();
        assert_eq!(
            kind(remove(&conn, "c").unwrap_err()),
            ErrorKind::FailedPrecondition
        );
        assert_eq!(
            kind(remove(&conn, "gone").unwrap_err()),
            ErrorKind::NotFound
        );
        remove(&conn, "child").unwrap();
        remove(&conn, "c").unwrap();
        let big = labels(&[("k", &"v".repeat(5000))]);
        assert_eq!(
            kind(create(&conn, Kind::Active, "big", "", &big, now, None).unwrap_err()),
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn commit_with_parent_rebases_only_a_parentless_snapshot() {
        let (_d, conn) = store();
        let now = SystemTime::now();
        let none = labels(&[]);
        let base = create(&conn, Kind::Active, "base-a", "", &none, now, None).unwrap();
        commit(&conn, "base-a", "base", &none, "", now).unwrap();
        create(&conn, Kind::Active, "other-a", "", &none, now, None).unwrap();
        commit(&conn, "other-a", "other", &none, "", now).unwrap();
        create(&conn, Kind::Active, "layer", "", &none, now, None).unwrap();
        let e = commit(&conn, "layer", "l", &none, "nope", now).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        commit(&conn, "layer", "l", &none, "base", now).unwrap();
        assert_eq!(get_info(&conn, "l").unwrap().0.parent, "base");
        create(&conn, Kind::Active, "top", "l", &none, now, None).unwrap();
        let s = get_snapshot(&conn, "top").unwrap();
        assert_eq!(s.parent_ids.len(), 2);
        assert_eq!(s.parent_ids[1], base.id);
        // Same parent again is fine; a different one is not.
        create(&conn, Kind::Active, "x", "base", &none, now, None).unwrap();
        assert_eq!(
            commit(&conn, "x", "xc", &none, "other", now)
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidArgument
        );
        commit(&conn, "x", "xc", &none, "base", now).unwrap();
        // A parent that is not committed.
        create(&conn, Kind::Active, "y", "", &none, now, None).unwrap();
        create(&conn, Kind::Active, "z", "", &none, now, None).unwrap();
        assert_eq!(
            commit(&conn, "y", "yc", &none, "z", now)
                .unwrap_err()
                .kind(),
            ErrorKind::FailedPrecondition
        );
    }

    #[test]
    fn update_changes_labels_and_updated_only() {
        let (_d, conn) = store();
        let t0 = SystemTime::now();
        create(
            &conn,
            Kind::Active,
            "a",
            "",
            &labels(&[("a", "1"), ("b", "2")]),
            t0,
            None,
        )
        .unwrap();
        let t1 = t0 + Duration::from_secs(5);
        let info = update(
            &conn,
            "a",
            &labels(&[("a", "9"), ("c", "3")]),
            &["labels.a".into(), "labels.b".into()],
            t1,
        )
        .unwrap();
        assert_eq!(info.labels, labels(&[("a", "9")]));
        assert_eq!(info.created, from_nanos(to_nanos(t0)));
        assert_eq!(info.updated, t1);
        assert_eq!(
            get_info(&conn, "a").unwrap().0,
            Info {
                updated: from_nanos(to_nanos(t1)),
                ..info
            }
        );
        let e = update(&conn, "a", &labels(&[]), &["parent".into()], t1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert_eq!(
            update(&conn, "b", &labels(&[]), &[], t1)
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn usage_is_stored_once_for_committed_snapshots() {
        let (_d, conn) = store();
        let now = SystemTime::now();
        let none = labels(&[]);
        let a = create(&conn, Kind::Active, "a", "", &none, now, None).unwrap();
        commit(&conn, "a", "c", &none, "", now).unwrap();
        assert_eq!(unmeasured_committed(&conn).unwrap(), vec![a.id]);
        assert_eq!(get_info(&conn, "c").unwrap().2, None);
        set_usage(
            &conn,
            a.id,
            Usage {
                size: 4096,
                inodes: 2,
            },
        )
        .unwrap();
        set_usage(&conn, a.id, Usage { size: 1, inodes: 1 }).unwrap();
        assert_eq!(
            get_info(&conn, "c").unwrap().2,
            Some(Usage {
                size: 4096,
                inodes: 2
            })
        );
        assert!(unmeasured_committed(&conn).unwrap().is_empty());
    }

    #[test]
    fn a_preallocated_wal_keeps_committed_transactions() {
        let (dir, mut conn) = store();
        let db = dir.path().join("metadata.db");
        let now = SystemTime::now();
        write(&mut conn, |tx| {
            create(tx, Kind::Active, "a", "", &labels(&[]), now, None)
        })
        .unwrap();
        preallocate_wal(&db, WAL_PREALLOCATE).unwrap();
        let wal = dir.path().join("metadata.db-wal");
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), WAL_PREALLOCATE);
        write(&mut conn, |tx| {
            create(tx, Kind::Active, "b", "", &labels(&[]), now, None)
        })
        .unwrap();
        // What a crash leaves: the WAL as it is, recovered by the next connection.
        let other = open(&db).unwrap();
        assert_eq!(ids(&other).unwrap().len(), 2);
        drop(other);
        std::mem::forget(conn);
        let reopened = open(&db).unwrap();
        assert!(get_info(&reopened, "b").is_ok());
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), WAL_PREALLOCATE);
    }

    #[test]
    fn a_failed_transaction_leaves_nothing() {
        let (_d, mut conn) = store();
        let now = SystemTime::now();
        let r: Result<()> = write(&mut conn, |tx| {
            create(tx, Kind::Active, "a", "", &labels(&[]), now, None)?;
            Err(Error::internal("boom"))
        });
        assert!(r.is_err());
        assert!(ids(&conn).unwrap().is_empty());
    }
}
