//! A tar encoder that lays headers out byte for byte like CPython's `tarfile` (PAX_FORMAT,
//! or GNU_FORMAT), the library mkimage.py writes its layers with.
//!
//! The `tar` crate is used to read tars back; it is not used to write them because it
//! refuses the hostile names the differ tests need and formats the checksum field differently
//! from CPython, which would change every layer's diff_id.

use std::io::{self, Read, Write};

pub(crate) const BLOCK: usize = 512;
const RECORD: u64 = 20 * BLOCK as u64;
const POSIX_MAGIC: &[u8; 8] = b"ustar\x0000";
const GNU_MAGIC: &[u8; 8] = b"ustar  \x00";

/// How names too long for the 100-byte header field (and numbers too big for theirs) are
/// stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TarFormat {
    /// POSIX.1-2001: a PAX `x` header with `path`/`linkpath`/`uid`/`size`/... records.
    #[default]
    Pax,
    /// GNU: `././@LongLink` entries of type `L`/`K` for long names and base-256 numbers.
    /// Records only PAX can express (xattrs, sub-second mtimes) still get a PAX header.
    Gnu,
}

/// One tar header as the caller means it; extension headers are derived from it.
pub(crate) struct Header<'a> {
    pub name: &'a [u8],
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nanos: u32,
    pub linkname: &'a [u8],
    pub devmajor: u64,
    pub devminor: u64,
    /// Records written first in the PAX header, in this order (xattrs, custom records).
    pub pax: &'a [(String, Vec<u8>)],
}

impl Header<'static> {
    /// The header of an extension record (PAX `x`, GNU `L`/`K`): everything but the name,
    /// type and payload size zero, as Python's tarfile writes them.
    fn extension(name: &'static [u8], typeflag: u8, size: u64) -> Self {
        Header {
            name,
            typeflag,
            mode: 0,
            uid: 0,
            gid: 0,
            size,
            mtime: 0,
            mtime_nanos: 0,
            linkname: b"",
            devmajor: 0,
            devminor: 0,
            pax: &[],
        }
    }
}

pub(crate) struct TarWriter<W: Write> {
    w: W,
    offset: u64,
    format: TarFormat,
}

impl<W: Write> TarWriter<W> {
    pub(crate) fn new(w: W, format: TarFormat) -> Self {
        TarWriter {
            w,
            offset: 0,
            format,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.offset % BLOCK as u64) as usize;
        if rem != 0 {
            self.put(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    /// Writes `h` (with whatever extension headers it needs) and then `size` bytes from `data`.
    pub(crate) fn append(&mut self, h: &Header<'_>, data: &mut dyn Read) -> io::Result<()> {
        self.write_header(h)?;
        let copied = io::copy(&mut Read::take(&mut *data, h.size), &mut CountingPut(self))?;
        if copied != h.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: content ended after {copied} of {} bytes",
                    String::from_utf8_lossy(h.name),
                    h.size
                ),
            ));
        }
        self.pad()
    }

    fn write_header(&mut self, h: &Header<'_>) -> io::Result<()> {
        let mut pax: Vec<(String, Vec<u8>)> = h.pax.to_vec();
        let has = |pax: &[(String, Vec<u8>)], k: &str| pax.iter().any(|(key, _)| key == k);
        let gnu = self.format == TarFormat::Gnu;
        let mut name_field = h.name;
        let mut link_field = h.linkname;
        let (mut uid, mut gid, mut size, mut mtime) = (h.uid, h.gid, h.size, h.mtime);

        if !gnu {
            // CPython moves a name to PAX when it is not ASCII or longer than the field, and
            // then writes the ASCII-replaced, truncated name in the header anyway.
            if (!h.name.is_ascii() || h.name.len() > 100) && !has(&pax, "path") {
                pax.push(("path".into(), h.name.to_vec()));
            }
            if (!h.linkname.is_ascii() || h.linkname.len() > 100) && !has(&pax, "linkpath") {
                pax.push(("linkpath".into(), h.linkname.to_vec()));
            }
            for (key, value, digits) in [
                ("uid", &mut uid, 8u32),
                ("gid", &mut gid, 8),
                ("size", &mut size, 12),
            ] {
                if *value >= 8u64.pow(digits - 1) {
                    if !has(&pax, key) {
                        pax.push((key.into(), value.to_string().into_bytes()));
                    }
                    *value = 0;
                }
            }
        }
        let mtime_fits = (0..8i64.pow(11)).contains(&mtime);
        if h.mtime_nanos != 0 || (!gnu && !mtime_fits) {
            if !has(&pax, "mtime") {
                pax.push((
                    "mtime".into(),
                    pax_time(h.mtime, h.mtime_nanos).into_bytes(),
                ));
            }
            if !mtime_fits && !gnu {
                mtime = 0;
            }
        }

        if !pax.is_empty() {
            let records = pax_records(&pax);
            let xh = Header::extension(b"././@PaxHeader", b'x', records.len() as u64);
            let block = encode(&xh, b"././@PaxHeader", b"", POSIX_MAGIC, 0, 0, xh.size, 0);
            self.put(&block)?;
            self.put(&records)?;
            self.pad()?;
        }
        if gnu {
            for (kind, value) in [(b'L', h.name), (b'K', h.linkname)] {
                if value.len() > 100 {
                    let mut payload = value.to_vec();
                    payload.push(0);
                    let lh = Header::extension(b"././@LongLink", kind, payload.len() as u64);
                    let block = encode(&lh, b"././@LongLink", b"", GNU_MAGIC, 0, 0, lh.size, 0);
                    self.put(&block)?;
                    self.put(&payload)?;
                    self.pad()?;
                }
            }
            name_field = &h.name[..h.name.len().min(100)];
            link_field = &h.linkname[..h.linkname.len().min(100)];
        }
        let (name_field, link_field) = if gnu {
            (name_field.to_vec(), link_field.to_vec())
        } else {
            (ascii_replace(h.name), ascii_replace(h.linkname))
        };
        let magic = if gnu { GNU_MAGIC } else { POSIX_MAGIC };
        let block = encode(h, &name_field, &link_field, magic, uid, gid, size, mtime);
        self.put(&block)
    }

    /// Writes the end-of-archive marker and pads to a 10240-byte record like CPython (and
    /// `tar -b20`).
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.put(&[0u8; 2 * BLOCK])?;
        let rem = self.offset % RECORD;
        if rem != 0 {
            let zeros = vec![0u8; (RECORD - rem) as usize];
            self.put(&zeros)?;
        }
        self.w.flush()?;
        Ok(self.w)
    }
}

struct CountingPut<'a, W: Write>(&'a mut TarWriter<W>);

impl<W: Write> Write for CountingPut<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.put(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.w.flush()
    }
}

/// CPython's `str.encode("ascii", "replace")`: one `?` per non-ASCII character.
fn ascii_replace(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            out.push(if c.is_ascii() { c as u8 } else { b'?' });
        }
        out.extend(std::iter::repeat_n(b'?', chunk.invalid().len()));
    }
    out
}

fn pax_time(secs: i64, nanos: u32) -> String {
    if nanos == 0 {
        return secs.to_string();
    }
    let frac = format!("{nanos:09}");
    let frac = frac.trim_end_matches('0');
    if secs < 0 {
        // `secs` is floored, so -0.5s arrives as (-1, 500000000) and must print as "-0.5".
        let total = secs as i128 * 1_000_000_000 + nanos as i128;
        let (whole, rest) = (total / 1_000_000_000, (total % 1_000_000_000).abs());
        let sign = if total < 0 && whole == 0 { "-" } else { "" };
        return format!("{sign}{whole}.{rest:09}")
            .trim_end_matches('0')
            .to_string();
    }
    format!("{secs}.{frac}")
}

/// `"%d %s=%s\n"` records whose length prefix counts itself, as CPython computes it.
fn pax_records(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let l = key.len() + value.len() + 3;
        let mut p = 0usize;
        loop {
            let n = l + p.to_string().len();
            if n == p {
                break;
            }
            p = n;
        }
        out.extend_from_slice(p.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

/// Octal, zero-padded to `width - 1` digits and NUL-terminated (CPython's `itn`), or base-256
/// when it does not fit (only reachable in GNU format; PAX moved the value to a record).
fn number(field: &mut [u8], value: u64) {
    let width = field.len();
    if value < 8u64.pow(width as u32 - 1) {
        let s = format!("{value:0w$o}", w = width - 1);
        field[..width - 1].copy_from_slice(s.as_bytes());
        field[width - 1] = 0;
    } else {
        field.fill(0);
        let be = value.to_be_bytes();
        let n = be.len().min(width - 1);
        field[width - n..].copy_from_slice(&be[be.len() - n..]);
        field[0] = 0x80;
    }
}

fn signed_number(field: &mut [u8], value: i64) {
    if value >= 0 {
        number(field, value as u64);
    } else {
        // Base-256 two's complement, GNU's encoding for times before 1970.
        let be = value.to_be_bytes();
        let width = field.len();
        field.fill(0xff);
        let n = be.len().min(width);
        field[width - n..].copy_from_slice(&be[be.len() - n..]);
        field[0] = 0xff;
    }
}

fn text(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

#[allow(clippy::too_many_arguments)]
fn encode(
    h: &Header<'_>,
    name: &[u8],
    link: &[u8],
    magic: &[u8; 8],
    uid: u64,
    gid: u64,
    size: u64,
    mtime: i64,
) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    text(&mut b[0..100], name);
    number(&mut b[100..108], u64::from(h.mode & 0o7777));
    number(&mut b[108..116], uid);
    number(&mut b[116..124], gid);
    number(&mut b[124..136], size);
    signed_number(&mut b[136..148], mtime);
    b[148..156].fill(b' ');
    b[156] = h.typeflag;
    text(&mut b[157..257], link);
    b[257..265].copy_from_slice(magic);
    // uname and gname stay empty: ids are what the tests care about.
    if matches!(h.typeflag, b'3' | b'4') {
        number(&mut b[329..337], h.devmajor);
        number(&mut b[337..345], h.devminor);
    }
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    let s = format!("{sum:06o}\0");
    b[148..155].copy_from_slice(&s.as_bytes()[..7]);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_records(&[("path".into(), b"a".to_vec())]);
        assert_eq!(r, b"9 path=a\n");
        let long = vec![b'x'; 95];
        let r = pax_records(&[("path".into(), long)]);
        // 4 + 95 + 3 = 102 bytes, plus a 3-digit prefix that counts itself.
        assert_eq!(&r[..4], b"105 ");
        assert_eq!(r.len(), 105);
    }

    #[test]
    fn times() {
        assert_eq!(pax_time(5, 0), "5");
        assert_eq!(pax_time(5, 500_000_000), "5.5");
        assert_eq!(pax_time(-1, 500_000_000), "-0.5");
        assert_eq!(pax_time(-2, 250_000_000), "-1.75");
    }

    #[test]
    fn replace_non_ascii() {
        assert_eq!(ascii_replace("été/x".as_bytes()), b"?t?/x");
    }
}
