//! The comparable in-memory form of a directory tree, and the OCI layer semantics that turn a
//! change list into one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::{Change, EntryKind, Look, Timestamp, clean, clean_nonroot, resolve_in_root};

/// What a path is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    File {
        size: u64,
        digest: String,
    },
    /// `opaque` is only ever set when a snapshot converts overlay or OCI opaque markers
    /// ([`super::SnapshotOptions`]) or by hand.
    Dir {
        opaque: bool,
    },
    Symlink {
        target: PathBuf,
    },
    Fifo,
    Socket,
    CharDev {
        major: u64,
        minor: u64,
    },
    BlockDev {
        major: u64,
        minor: u64,
    },
    /// A deletion marker (overlay 0/0 char device or OCI `.wh.` file, once converted).
    Whiteout,
}

impl NodeKind {
    pub fn name(&self) -> &'static str {
        match self {
            NodeKind::File { .. } => "file",
            NodeKind::Dir { .. } => "dir",
            NodeKind::Symlink { .. } => "symlink",
            NodeKind::Fifo => "fifo",
            NodeKind::Socket => "socket",
            NodeKind::CharDev { .. } => "char device",
            NodeKind::BlockDev { .. } => "block device",
            NodeKind::Whiteout => "whiteout",
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self, NodeKind::Dir { .. })
    }
}

/// Everything compared about one inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    /// Permission bits including setuid/setgid/sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// `None`: the expectation does not know it (a directory whose children changed without
    /// the change list setting its time, an implied parent); never compared.
    pub mtime: Option<Timestamp>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl Node {
    pub fn new(kind: NodeKind, mode: u32) -> Node {
        Node {
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: None,
            xattrs: BTreeMap::new(),
        }
    }

    fn implied_dir() -> Node {
        Node::new(NodeKind::Dir { opaque: false }, 0o755)
    }
}

type Ino = u64;

/// A directory tree: relative path -> inode, inodes shared by hard links.
///
/// The root is stored under the empty path when known (snapshots); trees computed from
/// change lists leave it out, since the root's metadata belongs to whoever made the
/// directory, and comparisons skip it then.
#[derive(Clone, Default)]
pub struct Tree {
    paths: BTreeMap<PathBuf, Ino>,
    inodes: HashMap<Ino, Node>,
    links: HashMap<Ino, usize>,
    next: Ino,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// The tree a change list produces on an empty directory.
    pub fn from_changes(changes: &[Change]) -> io::Result<Tree> {
        let mut t = Tree::new();
        t.apply_changes(changes)?;
        Ok(t)
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    pub fn get(&self, path: impl AsRef<Path>) -> Option<&Node> {
        let ino = self.paths.get(path.as_ref())?;
        self.inodes.get(ino)
    }

    pub fn contains(&self, path: impl AsRef<Path>) -> bool {
        self.paths.contains_key(path.as_ref())
    }

    /// All paths in sorted order with their nodes (hard links appear once per path).
    pub fn iter(&self) -> impl Iterator<Item = (&Path, &Node)> {
        self.paths
            .iter()
            .filter_map(|(p, ino)| self.inodes.get(ino).map(|n| (p.as_path(), n)))
    }

    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.paths.keys().map(PathBuf::as_path)
    }

    /// Sets of two or more paths sharing an inode, each sorted, in path order.
    pub fn hardlink_groups(&self) -> Vec<Vec<PathBuf>> {
        let mut groups: BTreeMap<Ino, Vec<PathBuf>> = BTreeMap::new();
        for (p, ino) in &self.paths {
            if self.links.get(ino).copied().unwrap_or(0) > 1 {
                groups.entry(*ino).or_default().push(p.clone());
            }
        }
        let mut out: Vec<Vec<PathBuf>> = groups.into_values().collect();
        out.sort();
        out
    }

    /// Adds `node` at `path` as a new inode (replacing any previous path there, not its
    /// children). For hand-written expectations.
    pub fn insert(&mut self, path: impl AsRef<Path>, node: Node) {
        let ino = self.new_inode(node);
        self.set_path(path.as_ref().to_path_buf(), ino);
    }

    /// Makes `path` another name of `existing`'s inode. Returns false if `existing` is absent.
    pub fn link(&mut self, path: impl AsRef<Path>, existing: impl AsRef<Path>) -> bool {
        match self.paths.get(existing.as_ref()).copied() {
            Some(ino) => {
                self.set_path(path.as_ref().to_path_buf(), ino);
                true
            }
            None => false,
        }
    }

    /// Removes `path` and everything under it; returns whether it existed.
    pub fn remove(&mut self, path: impl AsRef<Path>) -> bool {
        let path = path.as_ref();
        let existed = self.paths.contains_key(path);
        let doomed: Vec<PathBuf> = self
            .paths
            .range(path.to_path_buf()..)
            .take_while(|(p, _)| p.starts_with(path))
            .map(|(p, _)| p.clone())
            .collect();
        for p in doomed {
            self.unset_path(&p);
        }
        existed
    }

    /// Keeps only the paths for which `keep` is true (children of dropped directories are not
    /// dropped implicitly).
    pub fn retain(&mut self, mut keep: impl FnMut(&Path, &Node) -> bool) {
        let doomed: Vec<PathBuf> = self
            .iter()
            .filter(|(p, n)| !keep(p, n))
            .map(|(p, _)| p.to_path_buf())
            .collect();
        for p in doomed {
            self.unset_path(&p);
        }
    }

    /// Mutable access to a path's inode (shared with its hard links).
    pub fn get_mut(&mut self, path: impl AsRef<Path>) -> Option<&mut Node> {
        let ino = self.paths.get(path.as_ref())?;
        self.inodes.get_mut(ino)
    }

    pub(crate) fn new_inode(&mut self, node: Node) -> Ino {
        self.next += 1;
        self.inodes.insert(self.next, node);
        self.next
    }

    pub(crate) fn set_path(&mut self, path: PathBuf, ino: Ino) {
        self.unset_path(&path);
        self.paths.insert(path, ino);
        *self.links.entry(ino).or_default() += 1;
    }

    fn unset_path(&mut self, path: &Path) {
        if let Some(ino) = self.paths.remove(path) {
            let n = self.links.entry(ino).or_default();
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.links.remove(&ino);
                self.inodes.remove(&ino);
            }
        }
    }

    fn children(&self, dir: &Path) -> Vec<PathBuf> {
        self.paths
            .range(dir.to_path_buf()..)
            .take_while(|(p, _)| p.starts_with(dir))
            .filter(|(p, _)| p.as_path() != dir && p.parent() == Some(dir))
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn look(&self, p: &Path) -> Look {
        match self.get(p) {
            None => Look::Missing,
            Some(Node {
                kind: NodeKind::Symlink { target },
                ..
            }) => Look::Symlink(target.clone()),
            Some(_) => Look::Other,
        }
    }

    fn resolve(&self, p: &Path, follow_last: bool) -> io::Result<PathBuf> {
        resolve_in_root(p, follow_last, |q| Ok(self.look(q)))
    }

    /// Creates missing directories down to `dir` (already resolved); a non-directory in the
    /// way is an error, as it would be for `mkdir -p`.
    fn ensure_dirs(&mut self, dir: &Path, touched: &mut Vec<PathBuf>) -> io::Result<()> {
        let mut cur = PathBuf::new();
        for c in dir.components() {
            let parent = cur.clone();
            cur.push(c);
            match self.get(&cur) {
                Some(n) if n.kind.is_dir() => {}
                Some(n) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{}: is a {}, not a directory", cur.display(), n.kind.name()),
                    ));
                }
                None => {
                    self.insert(&cur, Node::implied_dir());
                    touched.push(parent);
                }
            }
        }
        Ok(())
    }

    /// Applies a change list with OCI layer semantics: `remove` and `opaque` first (they act
    /// on what existed before the list), then additions and metadata changes in order.
    /// Directories whose children change without the list setting their own mtime get an
    /// unknown (`None`) mtime, because real appliers leave the current time there.
    pub fn apply_changes(&mut self, changes: &[Change]) -> io::Result<()> {
        let mut dated_dirs: HashSet<PathBuf> = HashSet::new();
        for c in changes {
            if let Change::Add(e) = c
                && matches!(e.kind, EntryKind::Dir)
            {
                dated_dirs.insert(clean(&e.path)?);
            }
        }
        let mut touched: Vec<PathBuf> = Vec::new();

        for c in changes {
            match c {
                Change::Remove(p) => {
                    let p = clean_nonroot(p)?;
                    let (parent, name) = split(&p);
                    let parent = self.resolve(parent, true)?;
                    let target = parent.join(name);
                    if self.remove(&target) {
                        touched.push(parent);
                    }
                }
                Change::Opaque(d) => {
                    let d = self.resolve(&clean(d)?, true)?;
                    if self.get(&d).is_some_and(|n| n.kind.is_dir()) || d.as_os_str().is_empty() {
                        for child in self.children(&d) {
                            self.remove(&child);
                        }
                        touched.push(d);
                    }
                }
                _ => {}
            }
        }

        for c in changes {
            match c {
                Change::Remove(_) => {}
                Change::Opaque(d) => {
                    // The marker implies the directory exists in the layer.
                    let d = self.resolve(&clean(d)?, true)?;
                    if let Some(parent) = d.parent() {
                        self.ensure_dirs(parent, &mut touched)?;
                    }
                    if !d.as_os_str().is_empty() && self.get(&d).is_none() {
                        self.insert(&d, Node::implied_dir());
                        touched.push(d.parent().map(Path::to_path_buf).unwrap_or_default());
                    }
                }
                Change::Add(e) => {
                    let p = clean_nonroot(&e.path)?;
                    let (parent, name) = split(&p);
                    let parent = self.resolve(parent, true)?;
                    self.ensure_dirs(&parent, &mut touched)?;
                    let path = parent.join(name);
                    let existing = self.get(&path).map(|n| n.kind.is_dir());
                    if let EntryKind::Hardlink(target) = &e.kind {
                        let target = self.resolve(&clean_nonroot(target)?, false)?;
                        let ino = match self.paths.get(&target) {
                            Some(ino) if !self.inodes.get(ino).is_some_and(|n| n.kind.is_dir()) => {
                                *ino
                            }
                            Some(_) => {
                                return Err(io::Error::new(
                                    io::ErrorKind::InvalidInput,
                                    format!("{}: hard link to a directory", p.display()),
                                ));
                            }
                            None => {
                                return Err(io::Error::new(
                                    io::ErrorKind::NotFound,
                                    format!(
                                        "{}: hard link target {} does not exist",
                                        p.display(),
                                        target.display()
                                    ),
                                ));
                            }
                        };
                        if path == target {
                            continue;
                        }
                        if existing.is_some() {
                            self.remove(&path);
                        }
                        self.set_path(path, ino);
                        touched.push(parent);
                        continue;
                    }
                    let kind = match &e.kind {
                        EntryKind::File(content) => NodeKind::File {
                            size: content.len(),
                            digest: content.digest()?,
                        },
                        EntryKind::Dir => NodeKind::Dir { opaque: false },
                        EntryKind::Symlink(t) => NodeKind::Symlink { target: t.clone() },
                        EntryKind::Fifo => NodeKind::Fifo,
                        EntryKind::CharDev { major, minor } => NodeKind::CharDev {
                            major: u64::from(*major),
                            minor: u64::from(*minor),
                        },
                        EntryKind::BlockDev { major, minor } => NodeKind::BlockDev {
                            major: u64::from(*major),
                            minor: u64::from(*minor),
                        },
                        EntryKind::Hardlink(_) => unreachable!("handled above"),
                    };
                    let is_symlink = matches!(kind, NodeKind::Symlink { .. });
                    let mtime = Some(e.effective_mtime());
                    if existing == Some(true) && kind.is_dir() {
                        // Existing directories are kept (their children too); extractors
                        // set the new metadata and add xattrs without removing old ones.
                        if let Some(n) = self.get_mut(&path) {
                            n.mode = e.mode;
                            n.uid = e.uid;
                            n.gid = e.gid;
                            n.mtime = mtime;
                            for (k, v) in &e.xattrs {
                                n.xattrs.insert(k.clone(), v.clone());
                            }
                        }
                        continue;
                    }
                    if existing.is_some() {
                        self.remove(&path);
                    }
                    let node = Node {
                        kind,
                        // Linux symlinks are always 0777 whatever the header says.
                        mode: if is_symlink { 0o777 } else { e.mode },
                        uid: e.uid,
                        gid: e.gid,
                        mtime,
                        xattrs: e.xattrs.iter().cloned().collect(),
                    };
                    self.insert(&path, node);
                    touched.push(parent);
                }
                Change::Chmod(p, mode) => {
                    let n = self.modify(p, "chmod")?;
                    if matches!(n.kind, NodeKind::Symlink { .. }) {
                        return Err(io::Error::new(
                            io::ErrorKind::Unsupported,
                            format!("chmod {}: Linux cannot chmod a symlink", p.display()),
                        ));
                    }
                    n.mode = *mode;
                }
                Change::Chown(p, uid, gid) => {
                    let n = self.modify(p, "chown")?;
                    n.uid = *uid;
                    n.gid = *gid;
                    // As the kernel does: chown drops setuid, setgid-with-group-exec and file
                    // capabilities of non-directories.
                    if !n.kind.is_dir() && !matches!(n.kind, NodeKind::Symlink { .. }) {
                        n.mode &= !0o4000;
                        if n.mode & 0o010 != 0 {
                            n.mode &= !0o2000;
                        }
                        n.xattrs.remove("security.capability");
                    }
                }
                Change::SetXattr(p, name, value) => {
                    let n = self.modify(p, "xattr")?;
                    n.xattrs.insert(name.clone(), value.clone());
                }
                Change::SetMtime(p, t) => {
                    let n = self.modify(p, "mtime")?;
                    n.mtime = Some(*t);
                }
            }
        }

        for dir in touched {
            if !dated_dirs.contains(&dir)
                && let Some(n) = self.get_mut(&dir)
            {
                n.mtime = None;
            }
        }
        Ok(())
    }

    fn modify(&mut self, p: &Path, what: &str) -> io::Result<&mut Node> {
        let path = self.resolve(&clean(p)?, false)?;
        if path.as_os_str().is_empty() && !self.contains("") {
            // The root of a computed tree is unknown; make it known so the change shows.
            self.insert("", Node::implied_dir());
        }
        self.get_mut(&path).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{what} {}: no such path", p.display()),
            )
        })
    }

    /// Differences to `actual`, strictly (see [`Compare`] for what can be relaxed).
    pub fn diff(&self, actual: &Tree) -> Vec<String> {
        self.diff_with(actual, &Compare::default())
    }

    /// Human-readable differences between this (expected) tree and `actual`, one per line,
    /// empty when they match.
    pub fn diff_with(&self, actual: &Tree, opts: &Compare) -> Vec<String> {
        let mut out = Vec::new();
        let mut a = self.iter().peekable();
        let mut b = actual.iter().peekable();
        loop {
            let order = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((pa, _)), Some((pb, _))) => pa.cmp(pb),
            };
            match order {
                std::cmp::Ordering::Less => {
                    if let Some((p, n)) = a.next()
                        && !p.as_os_str().is_empty()
                    {
                        out.push(format!("missing: {} ({})", show(p), n.kind.name()));
                    }
                }
                std::cmp::Ordering::Greater => {
                    if let Some((p, n)) = b.next()
                        && !p.as_os_str().is_empty()
                    {
                        out.push(format!("unexpected: {} ({})", show(p), n.kind.name()));
                    }
                }
                std::cmp::Ordering::Equal => {
                    if let (Some((p, x)), Some((_, y))) = (a.next(), b.next()) {
                        if p.as_os_str().is_empty() && opts.ignore_root {
                            continue;
                        }
                        compare_nodes(p, x, y, opts, &mut out);
                    }
                }
            }
        }
        if !opts.ignore_hardlinks {
            let want: BTreeSet<Vec<PathBuf>> = self.hardlink_groups().into_iter().collect();
            let got: BTreeSet<Vec<PathBuf>> = actual.hardlink_groups().into_iter().collect();
            for g in want.difference(&got) {
                out.push(format!(
                    "hard links missing: {} should share an inode",
                    list(g)
                ));
            }
            for g in got.difference(&want) {
                out.push(format!("unexpected hard links: {} share an inode", list(g)));
            }
        }
        out
    }
}

fn split(p: &Path) -> (&Path, &std::ffi::OsStr) {
    let parent = p.parent().unwrap_or(Path::new(""));
    let name = p.file_name().unwrap_or_default();
    (parent, name)
}

fn show(p: &Path) -> String {
    if p.as_os_str().is_empty() {
        "/".to_string()
    } else {
        p.display().to_string()
    }
}

fn list(g: &[PathBuf]) -> String {
    g.iter().map(|p| show(p)).collect::<Vec<_>>().join(", ")
}

fn show_value(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n') => format!("{s:?}"),
        _ => format!("0x{}", crate::hex(v)),
    }
}

fn compare_nodes(p: &Path, x: &Node, y: &Node, opts: &Compare, out: &mut Vec<String>) {
    let p = show(p);
    match (&x.kind, &y.kind) {
        (
            NodeKind::File {
                size: s1,
                digest: d1,
            },
            NodeKind::File {
                size: s2,
                digest: d2,
            },
        ) => {
            if s1 != s2 || d1 != d2 {
                out.push(format!(
                    "{p}: content {d1} ({s1} bytes) != {d2} ({s2} bytes)"
                ));
            }
        }
        (NodeKind::Symlink { target: t1 }, NodeKind::Symlink { target: t2 }) => {
            if t1 != t2 {
                out.push(format!(
                    "{p}: symlink target {:?} != {:?}",
                    t1.display().to_string(),
                    t2.display().to_string()
                ));
            }
        }
        (NodeKind::Dir { opaque: o1 }, NodeKind::Dir { opaque: o2 }) => {
            if o1 != o2 {
                out.push(format!("{p}: opaque {o1} != {o2}"));
            }
        }
        (k1, k2) if k1.name() == k2.name() => {
            if k1 != k2 {
                out.push(format!("{p}: {k1:?} != {k2:?}"));
            }
        }
        (k1, k2) => {
            out.push(format!(
                "{p}: is a {} instead of a {}",
                k2.name(),
                k1.name()
            ));
            return;
        }
    }
    if matches!(x.kind, NodeKind::Whiteout) {
        return;
    }
    // Symlink permission bits are meaningless on Linux.
    if x.mode != y.mode && !matches!(x.kind, NodeKind::Symlink { .. }) {
        out.push(format!("{p}: mode {:04o} != {:04o}", x.mode, y.mode));
    }
    if (x.uid, x.gid) != (y.uid, y.gid) {
        out.push(format!(
            "{p}: owner {}:{} != {}:{}",
            x.uid, x.gid, y.uid, y.gid
        ));
    }
    let skip_mtime = opts.ignore_mtimes || (opts.ignore_dir_mtimes && x.kind.is_dir());
    let differ = |t1: Timestamp, t2: Timestamp| {
        if opts.mtimes_to_the_second {
            t1.secs != t2.secs
        } else {
            t1 != t2
        }
    };
    if !skip_mtime
        && let (Some(t1), Some(t2)) = (x.mtime, y.mtime)
        && differ(t1, t2)
    {
        out.push(format!("{p}: mtime {t1} != {t2}"));
    }
    let keep = |k: &String| {
        !opts
            .ignore_xattrs
            .iter()
            .any(|pre| k.starts_with(pre.as_str()))
    };
    let xs: BTreeMap<&String, &Vec<u8>> = x.xattrs.iter().filter(|(k, _)| keep(k)).collect();
    let ys: BTreeMap<&String, &Vec<u8>> = y.xattrs.iter().filter(|(k, _)| keep(k)).collect();
    for (k, v) in &xs {
        match ys.get(k) {
            None => out.push(format!("{p}: xattr {k} missing (want {})", show_value(v))),
            Some(w) if w != v => out.push(format!(
                "{p}: xattr {k} {} != {}",
                show_value(v),
                show_value(w)
            )),
            Some(_) => {}
        }
    }
    for (k, v) in &ys {
        if !xs.contains_key(k) {
            out.push(format!("{p}: unexpected xattr {k}={}", show_value(v)));
        }
    }
}

/// What a comparison may ignore. The default compares everything the trees know; each
/// relaxation is a named flag so a test states what it tolerates.
#[derive(Clone, Debug, Default)]
pub struct Compare {
    /// Directories' mtimes (they change whenever an entry is added or removed inside).
    pub ignore_dir_mtimes: bool,
    pub ignore_mtimes: bool,
    /// Compare mtimes to the second only: layers written as containerd writes them (and
    /// strata's Diff) truncate them.
    pub mtimes_to_the_second: bool,
    /// The root directory's own metadata.
    pub ignore_root: bool,
    /// Extended attributes whose names start with one of these prefixes (e.g.
    /// `trusted.overlay.` on an upper directory, `security.selinux`).
    pub ignore_xattrs: Vec<String>,
    pub ignore_hardlinks: bool,
}

impl Compare {
    pub fn strict() -> Compare {
        Compare::default()
    }

    pub fn ignore_dir_mtimes(mut self) -> Compare {
        self.ignore_dir_mtimes = true;
        self
    }

    pub fn ignore_mtimes(mut self) -> Compare {
        self.ignore_mtimes = true;
        self
    }

    pub fn mtimes_to_the_second(mut self) -> Compare {
        self.mtimes_to_the_second = true;
        self
    }

    pub fn ignore_root(mut self) -> Compare {
        self.ignore_root = true;
        self
    }

    pub fn ignore_xattr(mut self, prefix: impl Into<String>) -> Compare {
        self.ignore_xattrs.push(prefix.into());
        self
    }

    pub fn ignore_hardlinks(mut self) -> Compare {
        self.ignore_hardlinks = true;
        self
    }
}

/// Panics with every difference if the trees differ (`expected` first).
#[track_caller]
pub fn assert_trees_equal(expected: &Tree, actual: &Tree) {
    assert_trees_equal_with(expected, actual, &Compare::default());
}

#[track_caller]
pub fn assert_trees_equal_with(expected: &Tree, actual: &Tree, opts: &Compare) {
    let diffs = expected.diff_with(actual, opts);
    if !diffs.is_empty() {
        let shown = diffs.len().min(200);
        panic!(
            "trees differ ({} difference(s), expected vs actual, {opts:?}):\n  {}{}",
            diffs.len(),
            diffs[..shown].join("\n  "),
            if shown < diffs.len() { "\n  ..." } else { "" }
        );
    }
}

impl fmt::Display for Tree {
    /// One `ls -l`-like line per path, for debugging output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (p, n) in self.iter() {
            let what = match &n.kind {
                NodeKind::File { size, digest } => {
                    format!("file {size} {}", &digest[..digest.len().min(19)])
                }
                NodeKind::Dir { opaque: true } => "dir (opaque)".to_string(),
                NodeKind::Symlink { target } => format!("-> {}", target.display()),
                NodeKind::CharDev { major, minor } => format!("char {major},{minor}"),
                NodeKind::BlockDev { major, minor } => format!("block {major},{minor}"),
                k => k.name().to_string(),
            };
            let mtime = n.mtime.map(|t| t.to_string()).unwrap_or_else(|| "?".into());
            write!(
                f,
                "{:04o} {}:{} {mtime} {} {what}",
                n.mode,
                n.uid,
                n.gid,
                show(p)
            )?;
            for (k, v) in &n.xattrs {
                write!(f, " {k}={}", show_value(v))?;
            }
            writeln!(f)?;
        }
        for g in self.hardlink_groups() {
            writeln!(f, "hard links: {}", list(&g))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::*;

    #[test]
    fn oci_semantics_in_memory() {
        let mut t = Tree::from_changes(&crate::tree![
            dir("d", 0o755),
            file("d/a", "a"),
            file("d/b", "b"),
            dir("o", 0o700),
            file("o/x", "x"),
            file("h", "h"),
            hardlink("h2", "h"),
            symlink("l", "d"),
        ])
        .unwrap();
        assert_eq!(
            t.hardlink_groups(),
            vec![vec![PathBuf::from("h"), PathBuf::from("h2")]]
        );
        t.apply_changes(&crate::tree![
            // Opaque comes after an addition into the same dir: it still only hides the old.
            file("o/new", "n"),
            opaque("o"),
            remove("d/a"),
            remove("h"),
            // Writes through the in-root symlink, like extractors do.
            file("l/c", "c"),
            file("d/b", "b2").mode(0o600),
            owner("h2", 7, 8),
        ])
        .unwrap();
        let paths: Vec<_> = t.paths().map(|p| p.display().to_string()).collect();
        assert_eq!(paths, ["d", "d/b", "d/c", "h2", "l", "o", "o/new"]);
        assert_eq!(
            t.get("d").unwrap().mtime,
            None,
            "children changed, time unknown"
        );
        assert_eq!(t.get("o").unwrap().mtime, None);
        assert_eq!(t.get("d/b").unwrap().mode, 0o600);
        assert_eq!((t.get("h2").unwrap().uid, t.get("h2").unwrap().gid), (7, 8));
        assert!(t.hardlink_groups().is_empty());
    }

    #[test]
    fn diff_reports_each_difference() {
        let a = Tree::from_changes(&crate::tree![
            file("f", "one").xattr("user.a", "1"),
            dir("d", 0o755),
            symlink("s", "x"),
            file("g", "g"),
            hardlink("g2", "g"),
        ])
        .unwrap();
        let b = Tree::from_changes(&crate::tree![
            file("f", "two").mode(0o600).xattr("user.b", "2"),
            dir("d", 0o755).mtime(1),
            symlink("s", "y"),
            file("g", "g"),
            file("g2", "g"),
            fifo("p"),
        ])
        .unwrap();
        let d = a.diff(&b);
        let joined = d.join("\n");
        for want in [
            "f: content",
            "f: mode 0644 != 0600",
            "f: xattr user.a missing",
            "f: unexpected xattr user.b",
            "d: mtime 1700000000 != 1",
            "s: symlink target",
            "unexpected: p (fifo)",
            "hard links missing: g, g2",
        ] {
            assert!(joined.contains(want), "{want:?} not in:\n{joined}");
        }
        assert!(a.diff(&a).is_empty());
        let relaxed = Compare::strict().ignore_dir_mtimes().ignore_hardlinks();
        assert!(!a.diff_with(&b, &relaxed).join("\n").contains("mtime"));
        assert!(!a.diff_with(&b, &relaxed).join("\n").contains("hard links"));

        let x = Tree::from_changes(&crate::tree![file("f", "f").mtime_ns(5, 999)]).unwrap();
        let y = Tree::from_changes(&crate::tree![file("f", "f").mtime(5)]).unwrap();
        let z = Tree::from_changes(&crate::tree![file("f", "f").mtime(6)]).unwrap();
        assert!(!x.diff(&y).is_empty());
        let seconds = Compare::strict().mtimes_to_the_second();
        assert!(x.diff_with(&y, &seconds).is_empty());
        assert!(!x.diff_with(&z, &seconds).is_empty());
    }

    #[test]
    #[should_panic(expected = "missing: x (file)")]
    fn assert_panics_with_list() {
        let a = Tree::from_changes(&crate::tree![file("x", "")]).unwrap();
        assert_trees_equal(&a, &Tree::new());
    }

    #[test]
    fn dir_over_dir_keeps_children_and_merges_xattrs() {
        let mut t = Tree::from_changes(&crate::tree![
            dir("d", 0o755).xattr("user.a", "1").xattr("user.b", "1"),
            file("d/f", "")
        ])
        .unwrap();
        t.apply_changes(&crate::tree![dir("d", 0o700).xattr("user.a", "2")])
            .unwrap();
        let d = t.get("d").unwrap();
        assert_eq!(d.mode, 0o700);
        assert_eq!(d.xattrs.get("user.a").unwrap(), b"2");
        assert_eq!(d.xattrs.get("user.b").unwrap(), b"1");
        assert!(t.contains("d/f"));
        // A file replaces a dir, children and all.
        t.apply_changes(&crate::tree![file("d", "now a file")])
            .unwrap();
        assert_eq!(t.len(), 1);
    }
}
