//! A list of [`Change`]s as a tar layer, the way containerd's `archive.ChangeWriter` writes it:
//! deletions as `.wh.<name>` entries with zero times, directories with a trailing `/`, the
//! parent directory of every entry written before it (once),
//! modification times truncated to the second (and clamped to `source_date_epoch`), access and
//! change times dropped, owners by number only, `security.capability` as a PAX xattr record,
//! sockets skipped, and a changed file's other names written as hardlinks to it.
//!
//! The bytes depend only on the trees: USTAR headers, PAX records only for what USTAR cannot
//! hold (long names, big numbers, xattrs), records sorted by key.

use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::diff::changes::{self, Change, Kind};
use crate::read_full::read_full;

const BLOCK: usize = 512;
const WHITEOUT_PREFIX: &[u8] = b".wh.";

/// Output a layer can be written into, and started over when the overlay fast path has to
/// give way to a full walk halfway through.
pub trait Restart {
    fn restart(&mut self) -> io::Result<()>;
}

impl Restart for Vec<u8> {
    fn restart(&mut self) -> io::Result<()> {
        self.clear();
        Ok(())
    }
}

/// What shapes a layer beyond the trees themselves.
#[derive(Clone, Copy, Debug, Default)]
pub struct LayerOptions {
    /// `source_date_epoch` in seconds: later modification times are clamped to it.
    pub mtime_upper_bound: Option<(i64, u32)>,
}

/// What a layer holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerStats {
    pub entries: u64,
    pub file_bytes: u64,
}

/// Writes changes into a tar stream one at a time, in the order they come.
pub struct LayerWriter<'a, W> {
    w: &'a mut W,
    upper: &'a Path,
    opts: LayerOptions,
    stats: LayerStats,
    /// The name a hardlinked inode's content went out under.
    inode_source: HashMap<(u64, u64), Vec<u8>>,
    /// Unchanged names of a hardlinked inode seen before any changed one.
    inode_refs: HashMap<(u64, u64), Vec<Vec<u8>>>,
    /// Directories written so far (without the trailing `/`).
    added_dirs: HashSet<Vec<u8>>,
    buf: Vec<u8>,
}

impl<'a, W: Write> LayerWriter<'a, W> {
    /// Reads upper files under `upper`.
    pub fn new(w: &'a mut W, upper: &'a Path, opts: &LayerOptions) -> LayerWriter<'a, W> {
        LayerWriter {
            w,
            upper,
            opts: *opts,
            stats: LayerStats::default(),
            inode_source: HashMap::new(),
            inode_refs: HashMap::new(),
            added_dirs: HashSet::new(),
            buf: vec![0u8; 1 << 20],
        }
    }

    /// Ends the archive (two zero blocks).
    pub fn finish(self) -> io::Result<LayerStats> {
        self.w.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.stats)
    }

    pub fn change(&mut self, c: &Change) -> io::Result<()> {
        let path = changes::path_bytes(&c.path);
        match c.kind {
            Kind::Delete => {
                let (dir, base) = split_parent(path);
                let name = [dir, WHITEOUT_PREFIX, base].concat();
                self.marker(&name)
            }
            Kind::Add | Kind::Modify | Kind::Unmodified => {
                let Some(meta) = &c.meta else {
                    return Err(io::Error::other(format!(
                        "change of {} without metadata",
                        c.path.display()
                    )));
                };
                self.entry(c, path, meta)
            }
        }
    }

    /// A whiteout: an empty regular file, times zero (containerd 2.x).
    fn marker(&mut self, name: &[u8]) -> io::Result<()> {
        let h = Header {
            name,
            typeflag: b'0',
            ..Header::default()
        };
        self.header(&h)
    }

    fn entry(&mut self, c: &Change, path: &[u8], meta: &Metadata) -> io::Result<()> {
        let ft = meta.file_type();
        if ft.is_socket() {
            return Ok(());
        }
        let full = self.upper.join(&c.path);
        let link = if ft.is_symlink() {
            changes::path_bytes(&std::fs::read_link(&full)?).to_vec()
        } else {
            Vec::new()
        };
        let mut name = path.to_vec();
        if ft.is_dir() {
            name.push(b'/');
        }
        let (typeflag, size) = if ft.is_dir() {
            (b'5', 0)
        } else if ft.is_symlink() {
            (b'2', 0)
        } else if ft.is_char_device() {
            (b'3', 0)
        } else if ft.is_block_device() {
            (b'4', 0)
        } else if ft.is_fifo() {
            (b'6', 0)
        } else {
            (b'0', meta.size())
        };
        let mut h = Header {
            name: &name,
            mode: meta.mode() & 0o7777,
            uid: u64::from(meta.uid()),
            gid: u64::from(meta.gid()),
            size,
            mtime: self.mtime(meta),
            typeflag,
            linkname: &link,
            devmajor: 0,
            devminor: 0,
            xattrs: Vec::new(),
        };
        if ft.is_char_device() || ft.is_block_device() {
            h.devmajor = libc::major(meta.rdev());
            h.devminor = libc::minor(meta.rdev());
        }

        let mut additional = Vec::new();
        let mut source = Vec::new();
        if changes::is_linked(meta) {
            let key = (meta.dev(), meta.ino());
            if let Some(src) = self.inode_source.get(&key) {
                source = src.clone();
                h.typeflag = b'1';
                h.size = 0;
            } else {
                if c.kind == Kind::Unmodified {
                    self.inode_refs.entry(key).or_default().push(name);
                    return Ok(());
                }
                self.inode_source.insert(key, name.clone());
                additional = self.inode_refs.remove(&key).unwrap_or_default();
            }
        } else if c.kind == Kind::Unmodified {
            return Ok(());
        }
        if !source.is_empty() {
            h.linkname = &source;
        }
        if let Some(cap) = changes::capability(&full)? {
            h.xattrs.push((changes::CAPABILITY.to_vec(), cap));
        }
        self.header(&h)?;
        if h.typeflag == b'0' && h.size > 0 {
            self.content(&full, h.size)?;
        }
        for extra in &additional {
            let l = Header {
                name: extra,
                typeflag: b'1',
                linkname: &name,
                size: 0,
                xattrs: h.xattrs.clone(),
                ..h
            };
            self.header(&l)?;
        }
        Ok(())
    }

    fn mtime(&self, meta: &Metadata) -> i64 {
        let (s, ns) = (meta.mtime(), meta.mtime_nsec());
        match self.opts.mtime_upper_bound {
            Some((bs, bns)) if (s, ns) > (bs, i64::from(bns)) => bs,
            _ => s,
        }
    }

    fn content(&mut self, path: &Path, size: u64) -> io::Result<()> {
        let mut f = changes::open_nofollow(path)?;
        let mut left = size;
        while left > 0 {
            let want = left.min(self.buf.len() as u64) as usize;
            let n = read_full(&mut f, &mut self.buf[..want])?;
            if n == 0 {
                return Err(changed(path));
            }
            self.w.write_all(&self.buf[..n])?;
            left -= n as u64;
        }
        // A file that grew while it was read would not match its header either.
        if f.read(&mut [0u8; 1])? != 0 {
            return Err(changed(path));
        }
        self.stats.file_bytes += size;
        let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
        self.w.write_all(&[0u8; BLOCK][..pad])
    }

    fn header(&mut self, h: &Header<'_>) -> io::Result<()> {
        let name = h.name.strip_suffix(b"/").unwrap_or(h.name);
        self.include_parent(name)?;
        if h.typeflag == b'5' {
            self.added_dirs.insert(name.to_vec());
        }
        self.stats.entries += 1;
        write_header(self.w, h)
    }

    /// Writes the parent directory of `name` first if no entry for it went out yet, as
    /// containerd's ChangeWriter does (`includeParents`): the layer then carries the
    /// metadata (mtime above all) of every directory it changes something in.
    fn include_parent(&mut self, name: &[u8]) -> io::Result<()> {
        let (parent, _) = split_parent(name);
        let Some(parent) = parent.strip_suffix(b"/") else {
            return Ok(());
        };
        if !self.added_dirs.insert(parent.to_vec()) {
            return Ok(());
        }
        let path = Path::new(std::ffi::OsStr::from_bytes(parent));
        let meta = std::fs::symlink_metadata(self.upper.join(path))?;
        let c = Change {
            kind: Kind::Modify,
            path: path.to_path_buf(),
            meta: Some(meta.clone()),
        };
        self.entry(&c, parent, &meta)
    }
}

fn changed(path: &Path) -> io::Error {
    io::Error::other(format!(
        "{} changed size while the diff was being written",
        path.display()
    ))
}

/// `a/b/c` -> (`a/b/`, `c`); `c` -> (``, `c`).
fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => (&[], path),
    }
}

#[derive(Clone, Debug, Default)]
struct Header<'a> {
    name: &'a [u8],
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: i64,
    typeflag: u8,
    linkname: &'a [u8],
    devmajor: u32,
    devminor: u32,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

const MAX_OCTAL_7: u64 = 0o7777777;
const MAX_OCTAL_11: u64 = 0o77777777777;

/// Writes `h` as a USTAR header, preceded by a PAX extended header when USTAR cannot hold it.
fn write_header<W: Write>(w: &mut W, h: &Header<'_>) -> io::Result<()> {
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let split = ustar_split(h.name);
    if split.is_none() {
        records.push((b"path".to_vec(), h.name.to_vec()));
    }
    if h.linkname.len() > 100 {
        records.push((b"linkpath".to_vec(), h.linkname.to_vec()));
    }
    if h.uid > MAX_OCTAL_7 {
        records.push((b"uid".to_vec(), h.uid.to_string().into_bytes()));
    }
    if h.gid > MAX_OCTAL_7 {
        records.push((b"gid".to_vec(), h.gid.to_string().into_bytes()));
    }
    if h.size > MAX_OCTAL_11 {
        records.push((b"size".to_vec(), h.size.to_string().into_bytes()));
    }
    if h.mtime < 0 || h.mtime as u64 > MAX_OCTAL_11 {
        records.push((b"mtime".to_vec(), h.mtime.to_string().into_bytes()));
    }
    for (k, v) in &h.xattrs {
        records.push(([&b"SCHILY.xattr."[..], k].concat(), v.clone()));
    }
    if !records.is_empty() {
        records.sort();
        let body = pax_body(&records);
        let (dir, base) = split_parent(h.name.strip_suffix(b"/").unwrap_or(h.name));
        let mut pname = [dir, b"PaxHeaders.0/", base].concat();
        pname.truncate(100);
        let ph = Header {
            name: &pname,
            typeflag: b'x',
            size: body.len() as u64,
            ..Header::default()
        };
        w.write_all(&ustar_block(&ph, Some((&[], &pname))))?;
        w.write_all(&body)?;
        let pad = (BLOCK - body.len() % BLOCK) % BLOCK;
        w.write_all(&[0u8; BLOCK][..pad])?;
    }
    w.write_all(&ustar_block(h, split))
}

/// USTAR's prefix and name fields for `name`, if it fits them.
fn ustar_split(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= 100 {
        return Some((&[], name));
    }
    if name.len() > 256 {
        return None;
    }
    // The split must be at a `/` leaving at most 155 bytes before and 100 after it.
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    (0..trimmed.len().min(156))
        .rev()
        .filter(|&i| trimmed[i] == b'/')
        .map(|i| (&name[..i], &name[i + 1..]))
        .find(|(p, n)| p.len() <= 155 && n.len() <= 100 && !n.is_empty())
}

fn pax_body(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in records {
        // "<len> <key>=<value>\n", where <len> counts itself.
        let rest = k.len() + v.len() + 3;
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        body.extend_from_slice(len.to_string().as_bytes());
        body.push(b' ');
        body.extend_from_slice(k);
        body.push(b'=');
        body.extend_from_slice(v);
        body.push(b'\n');
    }
    body
}

fn ustar_block(h: &Header<'_>, split: Option<(&[u8], &[u8])>) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    let (prefix, name) = split.unwrap_or((&[], &h.name[..h.name.len().min(100)]));
    b[..name.len()].copy_from_slice(name);
    octal(&mut b[100..108], u64::from(h.mode));
    octal(
        &mut b[108..116],
        if h.uid > MAX_OCTAL_7 { 0 } else { h.uid },
    );
    octal(
        &mut b[116..124],
        if h.gid > MAX_OCTAL_7 { 0 } else { h.gid },
    );
    octal(
        &mut b[124..136],
        if h.size > MAX_OCTAL_11 { 0 } else { h.size },
    );
    let mtime = if h.mtime < 0 || h.mtime as u64 > MAX_OCTAL_11 {
        0
    } else {
        h.mtime as u64
    };
    octal(&mut b[136..148], mtime);
    b[156] = h.typeflag;
    let link = &h.linkname[..h.linkname.len().min(100)];
    b[157..157 + link.len()].copy_from_slice(link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    if h.typeflag == b'3' || h.typeflag == b'4' {
        octal(&mut b[329..337], u64::from(h.devmajor));
        octal(&mut b[337..345], u64::from(h.devminor));
    }
    b[345..345 + prefix.len()].copy_from_slice(prefix);
    b[148..156].fill(b' ');
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
    octal(&mut b[148..155], sum);
    b[155] = b' ';
    b
}

/// Zero-padded octal filling all but the last byte of `field`, which stays NUL.
fn octal(field: &mut [u8], v: u64) {
    let width = field.len() - 1;
    let s = format!("{v:0width$o}");
    let s = s.as_bytes();
    let s = &s[s.len().saturating_sub(width)..];
    field[..width].copy_from_slice(s);
    field[width] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_as_ustar_allows() {
        assert_eq!(ustar_split(b"a/b"), Some((&b""[..], &b"a/b"[..])));
        let long = [vec![b'd'; 120], b"/".to_vec(), vec![b'f'; 50]].concat();
        assert_eq!(ustar_split(&long), Some((&long[..120], &long[121..])));
        assert_eq!(ustar_split(&[b'x'; 101]), None);
        let too_long_tail = [vec![b'd'; 10], b"/".to_vec(), vec![b'f'; 101]].concat();
        assert_eq!(ustar_split(&too_long_tail), None);
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        let body = pax_body(&[(b"path".to_vec(), vec![b'a'; 94])]);
        // 3 digits + space + "path=" + 94 + newline = 104.
        assert_eq!(&body[..4], b"104 ");
        assert_eq!(body.len(), 104);
        let body = pax_body(&[(b"k".to_vec(), b"v".to_vec())]);
        assert_eq!(body, b"6 k=v\n");
    }

    #[test]
    fn headers_read_back_with_the_tar_crate() {
        let long = [vec![b'n'; 150], b"/".to_vec(), vec![b'm'; 150]].concat();
        let mut out = Vec::new();
        for h in [
            Header {
                name: b"dir/",
                mode: 0o4755,
                uid: 3_000_000,
                gid: 7,
                mtime: 1_700_000_000,
                typeflag: b'5',
                ..Header::default()
            },
            Header {
                name: &long,
                typeflag: b'2',
                linkname: &long,
                mtime: -5,
                xattrs: vec![(b"security.capability".to_vec(), vec![1, 0, 0, 2])],
                ..Header::default()
            },
            Header {
                name: b"dev",
                typeflag: b'3',
                devmajor: 4,
                devminor: 1_000_000,
                ..Header::default()
            },
        ] {
            write_header(&mut out, &h).unwrap();
        }
        out.extend_from_slice(&[0u8; 1024]);
        let mut ar = tar::Archive::new(&out[..]);
        let mut entries = ar.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(&*e.path_bytes(), b"dir/");
        assert_eq!(e.header().mode().unwrap(), 0o4755);
        assert_eq!(e.header().gid().unwrap(), 7);
        let uid = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|r| r.unwrap())
            .find(|r| r.key_bytes() == b"uid")
            .map(|r| r.value_bytes().to_vec());
        assert_eq!(uid.as_deref(), Some(&b"3000000"[..]));
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(&*e.path_bytes(), &long[..]);
        assert_eq!(&*e.link_name_bytes().unwrap(), &long[..]);
        let caps: Vec<_> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|r| r.unwrap().key().unwrap().to_string())
            .collect();
        assert_eq!(
            caps,
            [
                "SCHILY.xattr.security.capability",
                "linkpath",
                "mtime",
                "path"
            ]
        );
        let e = entries.next().unwrap().unwrap();
        assert_eq!(e.header().device_major().unwrap(), Some(4));
        assert_eq!(e.header().device_minor().unwrap(), Some(1_000_000));
        assert!(entries.next().is_none());
    }
}
