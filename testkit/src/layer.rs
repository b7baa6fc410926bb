//! Tar layers built from a list of changes.
//!
//! [`tar()`] turns a change list into an uncompressed, deterministic layer tar: entries sorted
//! (an opaque marker right after its directory, then whiteouts, then the directory's other
//! entries), mtimes fixed to [`crate::DEFAULT_MTIME`] unless given, owners numeric only,
//! xattrs as `SCHILY.xattr.*` PAX records, long names as PAX `path`/`linkpath` (or GNU
//! `././@LongLink`), hard links as `Link` entries, deletions as OCI whiteouts. [`Layer`] wraps
//! the compressed blob with both digests. [`RawEntry`] writes whatever a hostile layer needs.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::Compression;
use crate::tarw::{Header, TarWriter};
use crate::tree::{Change, Content, Entry, EntryKind, Timestamp, Tree, clean, clean_nonroot};

pub use crate::tarw::TarFormat;

/// Entry order of a built tar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Order {
    /// Sorted by path components; within a directory the opaque marker comes first, then
    /// whiteouts, then the rest (what OCI recommends and containerd's differ produces).
    #[default]
    Sorted,
    /// Exactly the order of the change list (to reproduce a given tar byte for byte). The
    /// list then also decides what extractors see first: put a `remove` before an entry
    /// that re-creates the same path and a hard link after its target.
    AsGiven,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TarOptions {
    pub format: TarFormat,
    pub order: Order,
}

impl TarOptions {
    pub fn as_given(mut self) -> Self {
        self.order = Order::AsGiven;
        self
    }

    pub fn gnu(mut self) -> Self {
        self.format = TarFormat::Gnu;
        self
    }
}

#[derive(Clone)]
enum Item {
    Entry(Entry),
    Whiteout(PathBuf),
    Opaque(PathBuf),
}

fn not_in_layer(what: &str, p: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{what} {}: a tar layer carries whole entries only; add the entry itself earlier \
             in the same change list",
            p.display()
        ),
    )
}

/// Resolves the list into tar items: paths cleaned, metadata changes folded into the entry
/// added earlier in the list.
fn plan(changes: &[Change]) -> io::Result<Vec<Item>> {
    let mut items: Vec<Item> = Vec::with_capacity(changes.len());
    let mut added: HashMap<PathBuf, usize> = HashMap::new();
    for c in changes {
        let target = |added: &HashMap<PathBuf, usize>, p: &Path, what: &str| {
            let p = clean(p)?;
            added.get(&p).copied().ok_or_else(|| not_in_layer(what, &p))
        };
        match c {
            Change::Add(e) => {
                let mut e = e.clone();
                e.path = clean_nonroot(&e.path)?;
                if let EntryKind::Hardlink(t) = &e.kind {
                    e.kind = EntryKind::Hardlink(clean_nonroot(t)?);
                }
                added.insert(e.path.clone(), items.len());
                items.push(Item::Entry(e));
            }
            Change::Remove(p) => items.push(Item::Whiteout(clean_nonroot(p)?)),
            Change::Opaque(d) => items.push(Item::Opaque(clean(d)?)),
            Change::Chmod(p, mode) => {
                let i = target(&added, p, "chmod")?;
                if let Item::Entry(e) = &mut items[i] {
                    e.mode = *mode;
                }
            }
            Change::Chown(p, uid, gid) => {
                let i = target(&added, p, "chown")?;
                if let Item::Entry(e) = &mut items[i] {
                    e.uid = *uid;
                    e.gid = *gid;
                }
            }
            Change::SetXattr(p, name, value) => {
                let i = target(&added, p, "xattr")?;
                if let Item::Entry(e) = &mut items[i] {
                    e.set_xattr(name.clone(), value.clone());
                }
            }
            Change::SetMtime(p, t) => {
                let i = target(&added, p, "mtime")?;
                if let Item::Entry(e) = &mut items[i] {
                    e.mtime = Some(*t);
                }
            }
        }
    }
    Ok(items)
}

fn components(p: &Path) -> Vec<(u8, &[u8])> {
    p.iter().map(|c| (2u8, c.as_bytes())).collect()
}

fn sort_key(item: &Item) -> Vec<(u8, &[u8])> {
    let comps = components;
    match item {
        Item::Entry(e) => comps(&e.path),
        Item::Whiteout(p) => {
            let mut k = comps(p.parent().unwrap_or(Path::new("")));
            k.push((1, p.file_name().map(OsStr::as_bytes).unwrap_or_default()));
            k
        }
        Item::Opaque(d) => {
            let mut k = comps(d);
            k.push((0, b""));
            k
        }
    }
}

fn bytes_of(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

fn marker(dir: &Path, name: &[u8]) -> Vec<u8> {
    let mut out = bytes_of(dir);
    if !out.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

/// Sorting can put a hard link before the entry it points to, which no extractor can
/// follow; like a differ walking the tree, let the first name in tar order carry the
/// contents and link every other name of the inode to it.
fn links_after_targets(items: &mut [Item]) {
    let mut pos: HashMap<PathBuf, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if let Item::Entry(e) = item {
            pos.insert(e.path.clone(), i);
        }
    }
    let link_target = |item: &Item| match item {
        Item::Entry(Entry {
            kind: EntryKind::Hardlink(t),
            ..
        }) => Some(t.clone()),
        _ => None,
    };
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, item) in items.iter().enumerate() {
        let Some(mut target) = link_target(item) else {
            continue;
        };
        // Follow links to links (bounded, a cycle has no root) down to the real entry.
        for _ in 0..items.len() {
            let Some(&j) = pos.get(&target) else { break };
            match link_target(&items[j]) {
                Some(next) => target = next,
                None => {
                    groups.entry(j).or_default().push(i);
                    break;
                }
            }
        }
    }
    for (root, links) in groups {
        let leader = links.iter().copied().fold(root, usize::min);
        let Item::Entry(root_entry) = items[root].clone() else {
            continue;
        };
        let Item::Entry(leader_entry) = &items[leader] else {
            continue;
        };
        let leader_path = leader_entry.path.clone();
        if leader != root {
            let mut moved = root_entry.clone();
            moved.path = leader_path.clone();
            items[leader] = Item::Entry(moved);
            let mut demoted = root_entry;
            demoted.kind = EntryKind::Hardlink(leader_path.clone());
            items[root] = Item::Entry(demoted);
        }
        for l in links {
            if l != leader
                && let Item::Entry(e) = &mut items[l]
            {
                e.kind = EntryKind::Hardlink(leader_path.clone());
            }
        }
    }
}

/// The uncompressed layer tar for `changes` (sorted, PAX).
pub fn tar(changes: &[Change]) -> io::Result<Vec<u8>> {
    tar_with(changes, &TarOptions::default())
}

pub fn tar_with(changes: &[Change], opts: &TarOptions) -> io::Result<Vec<u8>> {
    write_tar(changes, opts, Vec::new())
}

/// Streams the layer tar for `changes` into `w` (contents are read as they are written, so
/// generated contents never sit in memory as a whole).
pub fn write_tar<W: Write>(changes: &[Change], opts: &TarOptions, w: W) -> io::Result<W> {
    let mut items = plan(changes)?;
    if opts.order == Order::Sorted {
        items.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
        links_after_targets(&mut items);
    }
    // Hard link headers repeat the target's metadata when it is in this layer, so an
    // extractor that applies link headers' owner and times (containerd does) changes nothing.
    let mut meta: HashMap<PathBuf, (u32, u32, u32, Timestamp)> = HashMap::new();
    for item in &items {
        if let Item::Entry(e) = item
            && !matches!(e.kind, EntryKind::Hardlink(_))
        {
            meta.insert(e.path.clone(), (e.mode, e.uid, e.gid, e.effective_mtime()));
        }
    }
    let mut tw = TarWriter::new(w, opts.format);
    let default_time = Timestamp::secs(crate::DEFAULT_MTIME);
    let empty = Content::bytes(Vec::new());
    for item in &items {
        let (name, content, mut h_mode, mut uid, mut gid, mut t);
        let mut typeflag = b'0';
        let mut link = Vec::new();
        let (mut major, mut minor) = (0u64, 0u64);
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        match item {
            Item::Whiteout(p) => {
                let parent = p.parent().unwrap_or(Path::new(""));
                let mut wh = b".wh.".to_vec();
                wh.extend_from_slice(p.file_name().map(OsStr::as_bytes).unwrap_or_default());
                name = marker(parent, &wh);
                content = &empty;
                (h_mode, uid, gid, t) = (0o644, 0, 0, default_time);
            }
            Item::Opaque(d) => {
                name = marker(d, b".wh..wh..opq");
                content = &empty;
                (h_mode, uid, gid, t) = (0o644, 0, 0, default_time);
            }
            Item::Entry(e) => {
                let mut n = bytes_of(&e.path);
                (h_mode, uid, gid, t) = (e.mode, e.uid, e.gid, e.effective_mtime());
                content = match &e.kind {
                    EntryKind::File(c) => c,
                    _ => &empty,
                };
                match &e.kind {
                    EntryKind::File(_) => {}
                    EntryKind::Dir => {
                        typeflag = b'5';
                        n.push(b'/');
                    }
                    EntryKind::Symlink(target) => {
                        typeflag = b'2';
                        link = bytes_of(target);
                    }
                    EntryKind::Hardlink(target) => {
                        typeflag = b'1';
                        link = bytes_of(target);
                        if let Some(&m) = meta.get(target) {
                            (h_mode, uid, gid, t) = m;
                        }
                    }
                    EntryKind::Fifo => typeflag = b'6',
                    EntryKind::CharDev { major: a, minor: b } => {
                        typeflag = b'3';
                        (major, minor) = (u64::from(*a), u64::from(*b));
                    }
                    EntryKind::BlockDev { major: a, minor: b } => {
                        typeflag = b'4';
                        (major, minor) = (u64::from(*a), u64::from(*b));
                    }
                }
                if !matches!(e.kind, EntryKind::Hardlink(_)) {
                    for (k, v) in &e.xattrs {
                        pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
                    }
                }
                name = n;
            }
        }
        let h = Header {
            name: &name,
            typeflag,
            mode: h_mode,
            uid: u64::from(uid),
            gid: u64::from(gid),
            size: content.len(),
            mtime: t.secs,
            mtime_nanos: t.nanos,
            linkname: &link,
            devmajor: major,
            devminor: minor,
            pax: &pax,
        };
        tw.append(&h, &mut content.reader())?;
    }
    tw.finish()
}

/// One hand-written tar entry, written verbatim: any name (`../x`, `/abs`, invalid UTF-8),
/// any type flag, any link target, extra PAX records. For layers the safe builders refuse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    pub name: Vec<u8>,
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub link: Vec<u8>,
    pub devmajor: u64,
    pub devminor: u64,
    /// PAX records written before the derived ones (`SCHILY.xattr.*`, or even `path`).
    pub pax: Vec<(String, Vec<u8>)>,
    pub data: Vec<u8>,
}

impl RawEntry {
    fn new(name: impl AsRef<[u8]>, typeflag: u8, mode: u32) -> RawEntry {
        RawEntry {
            name: name.as_ref().to_vec(),
            typeflag,
            mode,
            uid: 0,
            gid: 0,
            mtime: crate::DEFAULT_MTIME,
            link: Vec::new(),
            devmajor: 0,
            devminor: 0,
            pax: Vec::new(),
            data: Vec::new(),
        }
    }

    pub fn file(name: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> RawEntry {
        let mut e = RawEntry::new(name, b'0', 0o644);
        e.data = data.as_ref().to_vec();
        e
    }

    /// A directory entry; the name is kept as given (add the trailing `/` if wanted).
    pub fn dir(name: impl AsRef<[u8]>) -> RawEntry {
        RawEntry::new(name, b'5', 0o755)
    }

    pub fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> RawEntry {
        let mut e = RawEntry::new(name, b'2', 0o777);
        e.link = target.as_ref().to_vec();
        e
    }

    pub fn hardlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> RawEntry {
        let mut e = RawEntry::new(name, b'1', 0o644);
        e.link = target.as_ref().to_vec();
        e
    }

    pub fn fifo(name: impl AsRef<[u8]>) -> RawEntry {
        RawEntry::new(name, b'6', 0o644)
    }

    pub fn char_dev(name: impl AsRef<[u8]>, major: u64, minor: u64) -> RawEntry {
        let mut e = RawEntry::new(name, b'3', 0o644);
        (e.devmajor, e.devminor) = (major, minor);
        e
    }

    pub fn block_dev(name: impl AsRef<[u8]>, major: u64, minor: u64) -> RawEntry {
        let mut e = RawEntry::new(name, b'4', 0o644);
        (e.devmajor, e.devminor) = (major, minor);
        e
    }

    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        (self.uid, self.gid) = (uid, gid);
        self
    }

    pub fn mtime(mut self, secs: i64) -> Self {
        self.mtime = secs;
        self
    }

    pub fn typeflag(mut self, typeflag: u8) -> Self {
        self.typeflag = typeflag;
        self
    }

    pub fn xattr(self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.pax(format!("SCHILY.xattr.{name}"), value)
    }

    pub fn pax(mut self, key: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.pax.push((key.into(), value.as_ref().to_vec()));
        self
    }
}

/// A tar of exactly these entries, in this order.
pub fn raw_tar(entries: &[RawEntry], format: TarFormat) -> io::Result<Vec<u8>> {
    let mut tw = TarWriter::new(Vec::new(), format);
    for e in entries {
        let h = Header {
            name: &e.name,
            typeflag: e.typeflag,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            size: e.data.len() as u64,
            mtime: e.mtime,
            mtime_nanos: 0,
            linkname: &e.link,
            devmajor: e.devmajor,
            devminor: e.devminor,
            pax: &e.pax,
        };
        tw.append(&h, &mut &e.data[..])?;
    }
    tw.finish()
}

/// Reads a tar (uncompressed) with the `tar` crate into raw entries: long names and PAX
/// records resolved, each entry's own PAX records kept in `pax`.
pub fn read_raw<R: Read>(r: R) -> io::Result<Vec<RawEntry>> {
    let mut archive = tar::Archive::new(r);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let mut pax = Vec::new();
        if let Some(exts) = entry.pax_extensions()? {
            for ext in exts {
                let ext = ext?;
                pax.push((
                    String::from_utf8_lossy(ext.key_bytes()).into_owned(),
                    ext.value_bytes().to_vec(),
                ));
            }
        }
        let name = entry.path_bytes().into_owned();
        let link = entry
            .link_name_bytes()
            .map(|l| l.into_owned())
            .unwrap_or_default();
        let h = entry.header();
        // CPython leaves the device fields empty (NUL) unless the entry is a device, which
        // the tar crate refuses to parse as numbers.
        let (devmajor, devminor) = if matches!(h.entry_type().as_byte(), b'3' | b'4') {
            (
                h.device_major()?.map(u64::from).unwrap_or(0),
                h.device_minor()?.map(u64::from).unwrap_or(0),
            )
        } else {
            (0, 0)
        };
        let mut e = RawEntry {
            name,
            typeflag: h.entry_type().as_byte(),
            mode: h.mode()?,
            uid: h.uid()?,
            gid: h.gid()?,
            mtime: i64::try_from(h.mtime()?).unwrap_or(i64::MAX),
            link,
            devmajor,
            devminor,
            pax,
            data: Vec::new(),
        };
        entry.read_to_end(&mut e.data)?;
        out.push(e);
    }
    Ok(out)
}

fn parse_pax_time(v: &[u8]) -> Option<Timestamp> {
    let s = std::str::from_utf8(v).ok()?;
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = whole.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nanos: u32 = digits.parse().ok()?;
    if s.starts_with('-') && nanos > 0 {
        // "-1.25" is 1.25s before the epoch: floor to -2 and add 0.75s.
        return Some(Timestamp::new(secs - 1, 1_000_000_000 - nanos));
    }
    Some(Timestamp::new(secs, nanos))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads a layer tar back into the vocabulary: whiteouts become `remove`, opaque markers
/// `opaque`, xattrs and sub-second mtimes come from PAX records. Names with `..` are an error
/// (use [`read_raw`] for hostile tars).
pub fn read_changes<R: Read>(r: R) -> io::Result<Vec<Change>> {
    let mut out = Vec::new();
    for e in read_raw(r)? {
        if matches!(e.typeflag, b'g' | b'x' | b'X') {
            continue;
        }
        let shown = String::from_utf8_lossy(&e.name).into_owned();
        let path = clean(Path::new(OsStr::from_bytes(&e.name)))?;
        let name = path.file_name().map(OsStr::as_bytes).unwrap_or_default();
        let parent = path.parent().unwrap_or(Path::new("")).to_path_buf();
        if name == b".wh..wh..opq" {
            out.push(Change::Opaque(parent));
            continue;
        }
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            out.push(Change::Remove(parent.join(OsStr::from_bytes(hidden))));
            continue;
        }
        let kind = match e.typeflag {
            b'0' | 0 | b'7' => EntryKind::File(Content::bytes(e.data)),
            b'5' => EntryKind::Dir,
            b'2' => EntryKind::Symlink(PathBuf::from(OsStr::from_bytes(&e.link))),
            b'1' => EntryKind::Hardlink(PathBuf::from(OsStr::from_bytes(&e.link))),
            b'6' => EntryKind::Fifo,
            b'3' | b'4' => {
                let major = u32::try_from(e.devmajor)
                    .map_err(|_| invalid(format!("{shown}: device major too big")))?;
                let minor = u32::try_from(e.devminor)
                    .map_err(|_| invalid(format!("{shown}: device minor too big")))?;
                if e.typeflag == b'3' {
                    EntryKind::CharDev { major, minor }
                } else {
                    EntryKind::BlockDev { major, minor }
                }
            }
            t => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "{shown}: tar entry type {:?} has no tree equivalent",
                        t as char
                    ),
                ));
            }
        };
        let mut mtime = Timestamp::secs(e.mtime);
        let mut xattrs = Vec::new();
        for (k, v) in &e.pax {
            if let Some(x) = k.strip_prefix("SCHILY.xattr.") {
                xattrs.push((x.to_string(), v.clone()));
            } else if k == "mtime" {
                mtime =
                    parse_pax_time(v).ok_or_else(|| invalid(format!("{shown}: bad PAX mtime")))?;
            }
        }
        out.push(Change::Add(Entry {
            path,
            kind,
            mode: e.mode & 0o7777,
            uid: u32::try_from(e.uid).map_err(|_| invalid(format!("{shown}: uid too big")))?,
            gid: u32::try_from(e.gid).map_err(|_| invalid(format!("{shown}: gid too big")))?,
            mtime: Some(mtime),
            xattrs,
        }));
    }
    Ok(out)
}

/// A streaming compressor with a uniform `finish`.
pub enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    /// gzip level 6 with a zero header mtime and no name, zstd level 3 with a checksum (the
    /// `gzip`/`zstd` CLI defaults mkimage.py used); both single-threaded, so deterministic.
    pub fn new(w: W, c: Compression) -> io::Result<Self> {
        Ok(match c {
            Compression::None => Encoder::None(w),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::new(6),
            )),
            Compression::Zstd => {
                let mut z = zstd::stream::write::Encoder::new(w, 3)?;
                z.include_checksum(true)?;
                Encoder::Zstd(z)
            }
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(g) => g.finish(),
            Encoder::Zstd(z) => z.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(g) => g.write(buf),
            Encoder::Zstd(z) => z.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(g) => g.flush(),
            Encoder::Zstd(z) => z.flush(),
        }
    }
}

pub fn compress(data: &[u8], c: Compression) -> io::Result<Vec<u8>> {
    let mut e = Encoder::new(Vec::new(), c)?;
    e.write_all(data)?;
    e.finish()
}

/// A reader that undoes `c`.
pub fn decoder<'a, R: Read + Send + 'a>(
    r: R,
    c: Compression,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

pub fn decompress(data: &[u8], c: Compression) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    decoder(data, c)?.read_to_end(&mut out)?;
    Ok(out)
}

/// Hashes and counts what passes through.
pub(crate) struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Hashing<W> {
    pub(crate) fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The inner writer, `sha256:<hex>` and the byte count.
    pub(crate) fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            format!("sha256:{}", crate::hex(&self.hasher.finalize())),
            self.count,
        )
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Where a layer's (compressed) bytes are.
#[derive(Clone)]
pub enum Blob {
    Memory(Arc<[u8]>),
    /// A temporary file, deleted when the last clone is dropped (big fixtures).
    File(Arc<tempfile::TempPath>),
}

impl Blob {
    pub fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        Ok(match self {
            Blob::Memory(b) => Box::new(&b[..]),
            Blob::File(p) => Box::new(io::BufReader::new(
                std::fs::File::open(p.as_ref() as &Path)?,
            )),
        })
    }

    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        match self {
            Blob::Memory(b) => Ok(b.to_vec()),
            Blob::File(p) => std::fs::read(p.as_ref() as &Path),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            Blob::Memory(_) => None,
            Blob::File(p) => Some(p.as_ref()),
        }
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blob::Memory(b) => write!(f, "Blob::Memory(<{} bytes>)", b.len()),
            Blob::File(p) => write!(f, "Blob::File({})", p.display()),
        }
    }
}

/// A layer blob with its descriptor data: `digest` of the blob as stored, `diff_id` of the
/// uncompressed tar. Fields are public so tests can corrupt them on purpose.
#[derive(Clone)]
pub struct Layer {
    pub blob: Blob,
    pub media_type: String,
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    pub compression: Compression,
    /// Goes into the image config's history (`created_by`).
    pub comment: String,
    changes: Option<Arc<Vec<Change>>>,
}

impl fmt::Debug for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layer")
            .field("media_type", &self.media_type)
            .field("digest", &self.digest)
            .field("diff_id", &self.diff_id)
            .field("size", &self.size)
            .field("blob", &self.blob)
            .field("comment", &self.comment)
            .finish()
    }
}

fn encode_into<W: Write>(
    out: W,
    c: Compression,
    body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<(W, String, String, u64)> {
    let mut tar = Hashing::new(Encoder::new(Hashing::new(out), c)?);
    body(&mut tar)?;
    let (enc, diff_id, _) = tar.finish();
    let (out, digest, size) = enc.finish()?.finish();
    Ok((out, diff_id, digest, size))
}

impl Layer {
    /// A layer of `changes` (sorted PAX tar), blob in memory.
    pub fn new(changes: impl Into<Vec<Change>>, c: Compression) -> io::Result<Layer> {
        Layer::with_options(changes, c, &TarOptions::default())
    }

    pub fn with_options(
        changes: impl Into<Vec<Change>>,
        c: Compression,
        opts: &TarOptions,
    ) -> io::Result<Layer> {
        let changes = changes.into();
        let (blob, diff_id, digest, size) =
            encode_into(Vec::new(), c, |w| write_tar(&changes, opts, w).map(|_| ()))?;
        Ok(Layer::assemble(
            Blob::Memory(blob.into()),
            c,
            diff_id,
            digest,
            size,
            Some(changes),
        ))
    }

    /// Like [`Layer::with_options`] but the blob streams into a temporary file in `dir`, so
    /// memory stays bounded whatever the layer's size.
    pub fn new_in(
        dir: &Path,
        changes: impl Into<Vec<Change>>,
        c: Compression,
        opts: &TarOptions,
    ) -> io::Result<Layer> {
        let changes = changes.into();
        let file = tempfile::Builder::new()
            .prefix(".strata-layer-")
            .tempfile_in(dir)?;
        let (buf, diff_id, digest, size) =
            encode_into(BufWriter::with_capacity(1 << 20, file), c, |w| {
                write_tar(&changes, opts, w).map(|_| ())
            })?;
        let file = buf.into_inner().map_err(|e| e.into_error())?;
        file.as_file().sync_data()?;
        Ok(Layer::assemble(
            Blob::File(Arc::new(file.into_temp_path())),
            c,
            diff_id,
            digest,
            size,
            Some(changes),
        ))
    }

    /// A layer of an arbitrary uncompressed tar (hand-made, truncated, garbage...).
    pub fn from_tar(tar: impl Into<Vec<u8>>, c: Compression) -> io::Result<Layer> {
        let tar = tar.into();
        let (blob, diff_id, digest, size) = encode_into(Vec::new(), c, |w| w.write_all(&tar))?;
        Ok(Layer::assemble(
            Blob::Memory(blob.into()),
            c,
            diff_id,
            digest,
            size,
            None,
        ))
    }

    /// A layer of hand-written entries, see [`RawEntry`].
    pub fn from_raw(entries: &[RawEntry], c: Compression) -> io::Result<Layer> {
        Layer::from_tar(raw_tar(entries, TarFormat::Pax)?, c)
    }

    fn assemble(
        blob: Blob,
        c: Compression,
        diff_id: String,
        digest: String,
        size: u64,
        changes: Option<Vec<Change>>,
    ) -> Layer {
        Layer {
            blob,
            media_type: c.media_type().to_string(),
            digest,
            diff_id,
            size,
            compression: c,
            comment: String::new(),
            changes: changes.map(Arc::new),
        }
    }

    pub fn with_comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = comment.into();
        self
    }

    /// Switches to the Docker schema 2 media type for this compression.
    pub fn docker(mut self) -> Self {
        self.media_type = self.compression.docker_media_type().to_string();
        self
    }

    pub fn with_media_type(mut self, media_type: impl Into<String>) -> Self {
        self.media_type = media_type.into();
        self
    }

    /// The OCI descriptor (`mediaType`, `digest`, `size`) as it appears in the manifest.
    pub fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        })
    }

    pub fn blob_bytes(&self) -> io::Result<Vec<u8>> {
        self.blob.to_vec()
    }

    /// The uncompressed tar, streaming.
    pub fn open_tar(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        decoder(self.blob.open()?, self.compression)
    }

    pub fn tar_bytes(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_tar()?.read_to_end(&mut out)?;
        Ok(out)
    }

    /// The change list the layer was built from, if it was built from one.
    pub fn source_changes(&self) -> Option<&[Change]> {
        self.changes.as_deref().map(Vec::as_slice)
    }

    /// The layer's changes: the source list, or the tar read back.
    pub fn changes(&self) -> io::Result<Vec<Change>> {
        match &self.changes {
            Some(c) => Ok(c.as_ref().clone()),
            None => read_changes(self.open_tar()?),
        }
    }

    /// What this layer alone unpacks to on an empty directory.
    pub fn tree(&self) -> io::Result<Tree> {
        match &self.changes {
            Some(c) => Tree::from_changes(c),
            None => Tree::from_changes(&self.changes()?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::*;

    fn names(tar: &[u8]) -> Vec<String> {
        read_raw(tar)
            .unwrap()
            .iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect()
    }

    #[test]
    fn reads_back_with_the_tar_crate() {
        let long = format!("long/{}/{}", "d".repeat(120), "f".repeat(200));
        let long_target = format!("../{}/target", "x".repeat(150));
        let changes = crate::tree![
            dir("long", 0o755),
            file(&long, "long name\n").owner(1000, 1001),
            symlink("s", &long_target),
            file("x", "data")
                .xattr("user.a", "1")
                .xattr("trusted.b", [0u8, 255]),
            hardlink("x2", "x"),
            char_dev("dev/null", 1, 3).mode(0o666),
            block_dev("dev/loop0", 7, 0),
            fifo("p").mode(0o600),
            file("big-uid", "").owner(3_000_000, 5),
            file("ns", "").mtime_ns(5, 250_000_000),
            file("ünï", "u"),
        ];
        let tar = tar(&changes).unwrap();
        assert_eq!(tar.len() % 10240, 0);
        let mut ar = ::tar::Archive::new(&tar[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let h = e.header().clone();
            match path.as_str() {
                p if p == long => {
                    assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (1000, 1001));
                    let mut s = String::new();
                    e.read_to_string(&mut s).unwrap();
                    assert_eq!(s, "long name\n");
                }
                "s" => assert_eq!(
                    e.link_name().unwrap().unwrap().display().to_string(),
                    long_target
                ),
                "x" => {
                    let exts: Vec<(String, Vec<u8>)> = e
                        .pax_extensions()
                        .unwrap()
                        .unwrap()
                        .map(|x| {
                            let x = x.unwrap();
                            (x.key().unwrap().to_string(), x.value_bytes().to_vec())
                        })
                        .collect();
                    assert_eq!(
                        exts,
                        vec![
                            ("SCHILY.xattr.user.a".to_string(), b"1".to_vec()),
                            ("SCHILY.xattr.trusted.b".to_string(), vec![0, 255]),
                        ]
                    );
                }
                "x2" => {
                    assert_eq!(h.entry_type(), ::tar::EntryType::Link);
                    assert_eq!(e.link_name().unwrap().unwrap().to_str(), Some("x"));
                }
                "dev/null" => {
                    assert_eq!(h.entry_type(), ::tar::EntryType::Char);
                    assert_eq!(
                        (h.device_major().unwrap(), h.device_minor().unwrap()),
                        (Some(1), Some(3))
                    );
                    assert_eq!(h.mode().unwrap(), 0o666);
                }
                "dev/loop0" => assert_eq!(h.entry_type(), ::tar::EntryType::Block),
                "p" => assert_eq!(h.entry_type(), ::tar::EntryType::Fifo),
                "big-uid" => {
                    let exts = e.pax_extensions().unwrap().unwrap();
                    let uid = exts
                        .map(|x| x.unwrap())
                        .find(|x| x.key() == Ok("uid"))
                        .map(|x| x.value().unwrap().to_string());
                    assert_eq!(uid.as_deref(), Some("3000000"));
                }
                _ => {}
            }
            seen.push(path);
        }
        assert_eq!(
            seen,
            [
                "big-uid",
                "dev/loop0",
                "dev/null",
                "long/",
                long.as_str(),
                "ns",
                "p",
                "s",
                "x",
                "x2",
                "ünï"
            ]
        );
        // And through the vocabulary: the same tree comes back.
        let back = read_changes(&tar[..]).unwrap();
        assert_trees_equal(
            &Tree::from_changes(&changes).unwrap(),
            &Tree::from_changes(&back).unwrap(),
        );
    }

    #[test]
    fn gnu_long_names() {
        let long = "n".repeat(150);
        let target = "t".repeat(150);
        let tar = tar_with(
            &crate::tree![file(&long, "x"), symlink("l", &target)],
            &TarOptions::default().gnu(),
        )
        .unwrap();
        assert!(tar.windows(13).any(|w| w == b"././@LongLink"));
        assert!(!tar.windows(14).any(|w| w == b"././@PaxHeader"));
        let raw = read_raw(&tar[..]).unwrap();
        assert_eq!(raw[0].name, b"l");
        assert_eq!(raw[0].link, target.as_bytes());
        assert_eq!(raw[1].name, long.as_bytes());
    }

    #[test]
    fn whiteouts_and_order() {
        let changes = crate::tree![
            file("d/z", "z"),
            dir("d", 0o755),
            remove("d/gone"),
            opaque("d"),
            file("d/-dash", "x"),
            remove("top"),
            opaque(""),
        ];
        let sorted = tar(&changes).unwrap();
        assert_eq!(
            names(&sorted),
            [
                ".wh..wh..opq",
                ".wh.top",
                "d/",
                "d/.wh..wh..opq",
                "d/.wh.gone",
                "d/-dash",
                "d/z"
            ]
        );
        let given = tar_with(&changes, &TarOptions::default().as_given()).unwrap();
        assert_eq!(
            names(&given),
            [
                "d/z",
                "d/",
                "d/.wh.gone",
                "d/.wh..wh..opq",
                "d/-dash",
                ".wh.top",
                ".wh..wh..opq"
            ]
        );
        let back = read_changes(&sorted[..]).unwrap();
        assert!(matches!(&back[0], Change::Opaque(p) if p.as_os_str().is_empty()));
        assert!(matches!(&back[1], Change::Remove(p) if p == Path::new("top")));
        assert!(matches!(&back[4], Change::Remove(p) if p == Path::new("d/gone")));
    }

    #[test]
    fn metadata_changes_fold_into_entries() {
        let tar = tar(&crate::tree![
            file("a", "x"),
            chmod("a", 0o600),
            owner("a", 1, 2),
            xattr("a", "user.k", "v"),
            mtime("a", 7)
        ])
        .unwrap();
        let raw = read_raw(&tar[..]).unwrap();
        assert_eq!(raw.len(), 1);
        assert_eq!(
            (raw[0].mode, raw[0].uid, raw[0].gid, raw[0].mtime),
            (0o600, 1, 2, 7)
        );
        let err = super::tar(&crate::tree![chmod("elsewhere", 0o600)]).unwrap_err();
        assert!(err.to_string().contains("whole entries"), "{err}");
        assert!(super::tar(&crate::tree![file("../x", "")]).is_err());
    }

    #[test]
    fn hardlink_headers_copy_the_target() {
        let tar = tar(&crate::tree![
            file("a", "x").owner(5, 6).mode(0o751).mtime(9),
            hardlink("b", "a")
        ])
        .unwrap();
        let raw = read_raw(&tar[..]).unwrap();
        assert_eq!(
            (raw[1].mode, raw[1].uid, raw[1].gid, raw[1].mtime),
            (0o751, 5, 6, 9)
        );
    }

    #[test]
    fn hardlinks_never_precede_their_target() {
        let changes = crate::tree![
            file("z", "data").mode(0o600),
            hardlink("a", "z"),
            hardlink("b", "a"),
            hardlink("y", "z"),
        ];
        let tar = tar(&changes).unwrap();
        let raw = read_raw(&tar[..]).unwrap();
        let summary: Vec<(String, u8, String)> = raw
            .iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(&e.name).into_owned(),
                    e.typeflag,
                    String::from_utf8_lossy(&e.link).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("a".to_string(), b'0', String::new()),
                ("b".to_string(), b'1', "a".to_string()),
                ("y".to_string(), b'1', "a".to_string()),
                ("z".to_string(), b'1', "a".to_string()),
            ]
        );
        assert_eq!(raw[0].data, b"data");
        assert_eq!(raw[0].mode, 0o600);
        assert_trees_equal(
            &Tree::from_changes(&changes).unwrap(),
            &Tree::from_changes(&read_changes(&tar[..]).unwrap()).unwrap(),
        );
    }

    #[test]
    fn deterministic() {
        let changes = crate::tree![file("a", "x"), dir("b", 0o700), symlink("b/c", "/etc")];
        for c in Compression::ALL {
            let l1 = Layer::new(changes.clone(), c).unwrap();
            let l2 = Layer::new(changes.clone(), c).unwrap();
            assert_eq!(l1.digest, l2.digest, "{c}");
            assert_eq!(l1.diff_id, l2.diff_id);
            assert_eq!(l1.blob_bytes().unwrap(), l2.blob_bytes().unwrap());
            assert_eq!(l1.media_type, c.media_type());
            assert_eq!(l1.size, l1.blob_bytes().unwrap().len() as u64);
            assert_eq!(crate::sha256_digest(&l1.blob_bytes().unwrap()), l1.digest);
            assert_eq!(crate::sha256_digest(&l1.tar_bytes().unwrap()), l1.diff_id);
        }
        let none = Layer::new(changes.clone(), Compression::None).unwrap();
        assert_eq!(none.digest, none.diff_id);
        let gz = Layer::new(changes, Compression::Gzip).unwrap().docker();
        assert_eq!(
            gz.media_type,
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }

    #[test]
    fn compression_round_trips() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in Compression::ALL {
            let z = compress(&data, c).unwrap();
            if c != Compression::None {
                assert!(z.len() < data.len() / 2, "{c} did not compress");
            }
            assert_eq!(decompress(&z, c).unwrap(), data, "{c}");
        }
        assert_eq!(
            &compress(b"x", Compression::Gzip).unwrap()[..2],
            &[0x1f, 0x8b]
        );
        assert_eq!(
            &compress(b"x", Compression::Zstd).unwrap()[..4],
            &[0x28, 0xb5, 0x2f, 0xfd]
        );
    }

    #[test]
    fn raw_entries_stay_hostile() {
        let layer = Layer::from_raw(
            &[
                RawEntry::file("../escape", "x"),
                RawEntry::file("/abs/file", "y"),
                RawEntry::symlink("out", "/etc/passwd"),
                RawEntry::hardlink("hl", "../../etc/shadow"),
                RawEntry::file(b"bad-\xff-utf8".as_slice(), "z").owner(0, 0),
                RawEntry::dir("d/").xattr("user.x", "1"),
            ],
            Compression::Gzip,
        )
        .unwrap();
        let raw = read_raw(&layer.tar_bytes().unwrap()[..]).unwrap();
        let names: Vec<&[u8]> = raw.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(
            names,
            [
                b"../escape".as_slice(),
                b"/abs/file",
                b"out",
                b"hl",
                b"bad-\xff-utf8",
                b"d/"
            ]
        );
        assert_eq!(raw[3].link, b"../../etc/shadow");
        assert!(layer.changes().is_err(), "the safe reader refuses `..`");
        assert!(layer.source_changes().is_none());
    }

    #[test]
    fn layer_to_file() {
        let dir = tempfile::tempdir().unwrap();
        let changes = crate::tree![file("big", Content::zeros(3 << 20)), file("small", "s")];
        let on_disk = Layer::new_in(
            dir.path(),
            changes.clone(),
            Compression::Zstd,
            &TarOptions::default(),
        )
        .unwrap();
        let in_mem = Layer::new(changes, Compression::Zstd).unwrap();
        assert_eq!(on_disk.digest, in_mem.digest);
        assert_eq!(on_disk.diff_id, in_mem.diff_id);
        let path = on_disk.blob.path().unwrap().to_path_buf();
        assert!(path.exists());
        let t = on_disk.tree().unwrap();
        assert_eq!(
            t.get("big").map(|n| n.kind.clone()),
            Some(NodeKind::File {
                size: 3 << 20,
                digest: Content::zeros(3 << 20).digest().unwrap()
            })
        );
        drop(on_disk);
        assert!(!path.exists(), "temporary blob removed with the layer");
    }

    #[test]
    fn pax_times_parse() {
        assert_eq!(
            parse_pax_time(b"5.25"),
            Some(Timestamp::new(5, 250_000_000))
        );
        assert_eq!(
            parse_pax_time(b"-1.25"),
            Some(Timestamp::new(-2, 750_000_000))
        );
        assert_eq!(parse_pax_time(b"7"), Some(Timestamp::secs(7)));
        assert_eq!(parse_pax_time(b"x"), None);
    }
}
