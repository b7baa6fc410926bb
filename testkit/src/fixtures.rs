//! The standard images the tests and benchmarks use: a port of mkimage.py's recipes.
//!
//! The same trees, in the same entry order, with the same generated contents (CPython's
//! random generator is reproduced bit for bit), so the uncompressed layers, and their
//! diff_ids, are byte-identical to what mkimage.py writes for the same seed and scale.
//! Compressed blobs differ from mkimage.py's (different gzip/zstd implementations) but are
//! deterministic too.
//!
//! | name         | layers | what                                                                    |
//! |--------------|--------|-------------------------------------------------------------------------|
//! | `busybox`    | 1      | the host's static busybox + applet symlinks + /etc files; runs `ctr run` |
//! | `mixed`      | 6      | every whiteout kind, opaque dirs, hard links, symlinks, xattrs, long and unicode names, owners, setuid/setgid/sticky, a fifo, dir<->file replacement, an empty layer |
//! | `smallfiles` | 1      | 50k files of 0.5-8 KiB (~107 MB of content, ~140 MiB tar)               |
//! | `bigfiles`   | 1      | 4 files of 256 MiB (two compressible text, two random)                  |
//!
//! Every image's expected unpacked tree is [`Image::expected_tree`].

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Compression;
use crate::image::{Image, ImageBuilder};
use crate::layer::{Layer, TarOptions};
use crate::rng::{PyRandom, text_bytes, words_for};
use crate::tree::{Change, Content, dir, fifo, file, file_mode, hardlink, opaque, remove, symlink};

/// The fixture names, for command lines and loops.
pub const NAMES: [&str; 4] = ["busybox", "mixed", "smallfiles", "bigfiles"];

/// mkimage.py's default reference prefix: images are named `localhost/bench/<name>:<compression>`.
pub const REF_PREFIX: &str = "localhost/bench";

/// mkimage.py's default seed.
pub const SEED: u64 = 1;

const MB: usize = 1 << 20;

/// How to build a fixture; [`Params::new`] gives mkimage.py's defaults.
#[derive(Clone, Debug)]
pub struct Params {
    pub compression: Compression,
    /// Scales smallfiles' file count and bigfiles' file sizes (mkimage.py's `--scale`).
    pub scale: f64,
    pub seed: u64,
    pub ref_prefix: String,
    /// Where the blobs of `smallfiles` and `bigfiles` are spooled (temporary files deleted
    /// with the image); `None` means the system temporary directory.
    pub spool_dir: Option<PathBuf>,
    /// The static busybox to copy: `$BUSYBOX`, else `/bin/busybox` (Debian's
    /// `busybox-static`).
    pub busybox: PathBuf,
}

impl Params {
    pub fn new(compression: Compression) -> Params {
        Params {
            compression,
            scale: 1.0,
            seed: SEED,
            ref_prefix: REF_PREFIX.to_string(),
            spool_dir: None,
            busybox: std::env::var_os("BUSYBOX")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/bin/busybox")),
        }
    }

    pub fn scale(mut self, scale: f64) -> Params {
        self.scale = scale;
        self
    }

    pub fn seed(mut self, seed: u64) -> Params {
        self.seed = seed;
        self
    }

    pub fn spool_dir(mut self, dir: impl Into<PathBuf>) -> Params {
        self.spool_dir = Some(dir.into());
        self
    }
}

/// `<prefix>/<fixture>:<compression>`, the name mkimage.py gives its images.
pub fn ref_name(prefix: &str, fixture: &str, c: Compression) -> String {
    format!("{prefix}/{fixture}:{}", c.name())
}

/// busybox-static as the whole rootfs: `/bin/busybox` plus applet links, enough for `ctr run`.
pub fn busybox(compression: Compression) -> io::Result<Image> {
    build("busybox", &Params::new(compression))
}

/// Six layers exercising everything an unpacker must get right.
pub fn mixed(compression: Compression) -> io::Result<Image> {
    build("mixed", &Params::new(compression))
}

/// 50k small files in one layer (blob spooled to a temporary file).
pub fn smallfiles(compression: Compression) -> io::Result<Image> {
    build("smallfiles", &Params::new(compression))
}

/// `smallfiles` with `50000 * scale` files.
pub fn smallfiles_scaled(compression: Compression, scale: f64) -> io::Result<Image> {
    build("smallfiles", &Params::new(compression).scale(scale))
}

/// 1 GiB in 4 files in one layer, generated and compressed as a stream into a temporary
/// file, so memory stays bounded.
pub fn bigfiles(compression: Compression) -> io::Result<Image> {
    build("bigfiles", &Params::new(compression))
}

/// `bigfiles` with files of `256 MiB * scale`.
pub fn bigfiles_scaled(compression: Compression, scale: f64) -> io::Result<Image> {
    build("bigfiles", &Params::new(compression).scale(scale))
}

/// Builds the fixture called `name` (one of [`NAMES`]).
pub fn build(name: &str, p: &Params) -> io::Result<Image> {
    let c = p.compression;
    let as_given = TarOptions::default().as_given();
    let in_memory = |(comment, changes): (&str, Vec<Change>)| {
        Layer::with_options(changes, c, &as_given).map(|l| l.with_comment(comment))
    };
    let spool = p.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
    let spooled = |(comment, changes): (String, Vec<Change>)| {
        Layer::new_in(&spool, changes, c, &as_given).map(|l| l.with_comment(comment))
    };
    let layers = match name {
        "busybox" => vec![in_memory(("busybox rootfs", busybox_changes(&p.busybox)?))?],
        "mixed" => mixed_layers(p.seed)
            .into_iter()
            .map(in_memory)
            .collect::<io::Result<Vec<_>>>()?,
        "smallfiles" => {
            let changes = smallfiles_changes(p.seed, p.scale);
            let files = changes
                .iter()
                .filter(|c| {
                    matches!(
                        c.entry().map(|e| &e.kind),
                        Some(crate::tree::EntryKind::File(_))
                    )
                })
                .count();
            vec![spooled((format!("{files} small files"), changes))?]
        }
        "bigfiles" => vec![spooled((
            "4 big files".to_string(),
            bigfiles_changes(p.seed, p.scale),
        ))?],
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown fixture {other:?} (one of {})", NAMES.join(", ")),
            ));
        }
    };
    ImageBuilder::new(ref_name(&p.ref_prefix, name, c))
        .layers(layers)
        .cmd(["/bin/sh"])
        .created_by(format!("strata-mkimage {name}"))
        .build()
}

/// Builds fixture `name` and writes its archive to `out`; big blobs are spooled next to
/// `out` unless `p.spool_dir` says otherwise. Returns the image (digests, expected tree).
pub fn write_archive(name: &str, p: &Params, out: &Path) -> io::Result<Image> {
    let mut p = p.clone();
    if p.spool_dir.is_none() {
        let parent = out.parent().filter(|d| !d.as_os_str().is_empty());
        p.spool_dir = Some(parent.unwrap_or(Path::new(".")).to_path_buf());
    }
    let image = build(name, &p)?;
    image.write_archive(out)?;
    Ok(image)
}

/// mkimage.py's `sorted_tree` order: by path components.
fn sort_like_mkimage<T>(entries: &mut [(String, T)]) {
    entries.sort_by(|a, b| a.0.split('/').cmp(b.0.split('/')));
}

/// True when the ELF file asks for a program interpreter (is dynamically linked); `None`
/// when it is not an ELF file this check understands.
fn elf_is_dynamic(data: &[u8]) -> Option<bool> {
    if data.get(..4)? != b"\x7fELF" {
        return None;
    }
    let wide = *data.get(4)? == 2;
    let little = *data.get(5)? == 1;
    let read = |off: usize, len: usize| -> Option<u64> {
        let b = data.get(off..off.checked_add(len)?)?;
        let mut v = 0u64;
        for i in 0..len {
            let byte = if little { b[len - 1 - i] } else { b[i] };
            v = (v << 8) | u64::from(byte);
        }
        Some(v)
    };
    let (phoff, phentsize, phnum) = if wide {
        (read(0x20, 8)?, read(0x36, 2)?, read(0x38, 2)?)
    } else {
        (read(0x1c, 4)?, read(0x2a, 2)?, read(0x2c, 2)?)
    };
    for i in 0..phnum {
        let off = usize::try_from(phoff.checked_add(i.checked_mul(phentsize)?)?).ok()?;
        const PT_INTERP: u64 = 3;
        if read(off, 4)? == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

/// The busybox rootfs as one layer's changes, from the static binary at `busybox`.
pub fn busybox_changes(busybox: &Path) -> io::Result<Vec<Change>> {
    let data = std::fs::read(busybox).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "busybox binary {} not readable ({e}); install Debian's busybox-static \
                 (apt-get install -y busybox-static) or set BUSYBOX",
                busybox.display()
            ),
        )
    })?;
    if elf_is_dynamic(&data) != Some(false) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a statically linked ELF binary; the image has no libc, so it needs \
                 busybox-static",
                busybox.display()
            ),
        ));
    }
    let out = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{} --list-full failed: {}",
            busybox.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let applets: Vec<&str> = listing.split_whitespace().collect();

    enum Kind {
        Dir,
        Tmp,
        Busybox,
        Applet,
        Text(&'static [u8]),
    }
    let mut dirs: BTreeSet<String> = [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "root", "var",
        "var/tmp", "run", "home",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for a in &applets {
        let parts: Vec<&str> = a.split('/').collect();
        for i in 1..parts.len() {
            dirs.insert(parts[..i].join("/"));
        }
    }
    let mut entries: Vec<(String, Kind)> = dirs.into_iter().map(|d| (d, Kind::Dir)).collect();
    entries.push(("tmp".into(), Kind::Tmp));
    entries.push(("bin/busybox".into(), Kind::Busybox));
    for a in &applets {
        if *a != "bin/busybox" {
            entries.push((a.to_string(), Kind::Applet));
        }
    }
    entries.push((
        "etc/passwd".into(),
        Kind::Text(
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
    ));
    entries.push((
        "etc/group".into(),
        Kind::Text(b"root:x:0:\nnogroup:x:65534:\n"),
    ));
    entries.push(("etc/hostname".into(), Kind::Text(b"bench\n")));
    sort_like_mkimage(&mut entries);
    let bb = Content::bytes(data);
    Ok(entries
        .into_iter()
        .map(|(path, kind)| match kind {
            Kind::Dir if path == "root" => dir(path, 0o700),
            Kind::Dir => dir(path, 0o755),
            Kind::Tmp => dir(path, 0o1777),
            Kind::Busybox => file_mode(path, bb.clone(), 0o755),
            Kind::Applet => symlink(path, "/bin/busybox"),
            Kind::Text(t) => file(path, t),
        })
        .collect())
}

struct Gen {
    seed: u64,
    words: Arc<Vec<Vec<u8>>>,
}

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen {
            seed,
            words: Arc::new(words_for(seed)),
        }
    }

    /// mkimage.py's `txt(n, *k)`: text from `rng_for(seed, "mixed", *k)`.
    fn txt(&self, n: usize, key: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        text_bytes(
            &mut PyRandom::keyed(self.seed, key),
            &self.words,
            n,
            &mut out,
        );
        out
    }

    /// mkimage.py's `rnd(n, *k)`.
    fn rnd(&self, n: usize, key: &str) -> Vec<u8> {
        PyRandom::keyed(self.seed, key).randbytes(n)
    }
}

/// The six layers of `mixed` as (comment, changes), in mkimage.py's entry order.
pub fn mixed_layers(seed: u64) -> Vec<(&'static str, Vec<Change>)> {
    let g = Gen::new(seed);
    let mut r = PyRandom::keyed(seed, "mixed");
    let long_dir = format!("long/{}", "d".repeat(120));
    // A component over 100 bytes and a path over 255.
    let long_file = format!("{long_dir}/{}.txt", "f".repeat(200));
    let long_link_target = format!("../{}/target", "x".repeat(150));
    let mut layers = Vec::new();

    let mut l = Vec::new();
    for d in ["data", "empty1", "empty2", "empty2/nested-empty", "etc"] {
        let e = dir(d, 0o755);
        l.push(if d == "data" {
            e.xattr("user.dir", "data-dir")
        } else {
            e
        });
    }
    l.push(file("etc/config", "key=value\n".repeat(10)));
    for i in 0..200 {
        let n = r.randint(1024, 64 * 1024) as usize;
        let key = format!("mixed:f:{i}");
        let data = if i % 3 == 0 {
            g.rnd(n, &key)
        } else {
            g.txt(n, &key)
        };
        let mut f = file(format!("data/file-{i}"), data);
        if i == 2 {
            f = f
                .xattr("user.test", "hello")
                .xattr("user.bin", "\u{e9}t\u{e9}");
        }
        l.push(f);
    }
    for d in ["gone", "gone/sub", "gone/sub/deep"] {
        l.push(dir(d, 0o755));
    }
    for i in 0..50 {
        l.push(file(
            format!("gone/sub/deep/x{i}"),
            g.txt(2000, &format!("mixed:x:{i}")),
        ));
    }
    l.push(dir("keep", 0o755));
    l.push(file("keep/big.bin", g.rnd(8 * MB, "mixed:big0")));
    l.push(dir("links", 0o755));
    l.push(symlink("links/abs", "/etc/config"));
    l.push(symlink("links/rel", "../etc/config"));
    l.push(symlink("links/dangling", "/nonexistent/target"));
    l.push(symlink("links/dirlink", "../data"));
    l.push(hardlink("links/hard1", "data/file-1"));
    l.push(hardlink("links/hard2", "data/file-1"));
    l.push(dir("long", 0o755));
    l.push(dir(&long_dir, 0o755));
    l.push(file(&long_file, "long name\n"));
    l.push(symlink(
        format!("long/{}", "s".repeat(110)),
        &long_link_target,
    ));
    l.push(dir("modes", 0o755));
    l.push(file_mode("modes/setuid", "#!/bin/sh\n", 0o4755));
    l.push(file_mode("modes/setgid", "#!/bin/sh\n", 0o2755));
    l.push(file_mode("modes/ro", "read only\n", 0o444));
    l.push(file_mode("modes/exec", "#!/bin/sh\necho exec\n", 0o755));
    l.push(file_mode("modes/private", "secret\n", 0o600).owner(1000, 1000));
    l.push(dir("modes/sticky", 0o1777));
    l.push(dir("opq", 0o755));
    l.push(dir("opq/old", 0o755));
    for i in 0..50 {
        l.push(file(
            format!("opq/old/o{i}"),
            g.txt(1500, &format!("mixed:o:{i}")),
        ));
    }
    for i in 0..10 {
        l.push(file(
            format!("opq/top-{i}"),
            g.txt(800, &format!("mixed:ot:{i}")),
        ));
    }
    l.push(dir("special", 0o755));
    l.push(fifo("special/fifo0"));
    l.push(dir("uni", 0o755));
    l.push(file(
        "uni/\u{fc}n\u{ef}c\u{f8}d\u{e9}-\u{6587}\u{4ef6}-\u{1F642}.txt",
        "unicode \u{2713}\n",
    ));
    l.push(dir(
        "uni/\u{395}\u{3bb}\u{3bb}\u{3b7}\u{3bd}\u{3b9}\u{3ba}\u{3ac}",
        0o755,
    ));
    l.push(file(
        "uni/\u{395}\u{3bb}\u{3bb}\u{3b7}\u{3bd}\u{3b9}\u{3ba}\u{3ac}/\u{444}\u{430}\u{439}\u{43b}.txt",
        "greek/cyrillic\n",
    ));
    layers.push(("base", l));

    layers.push((
        "whiteouts+opaque+chmod/chown",
        crate::tree![
            dir("data", 0o750).xattr("user.dir", "changed"),
            remove("data/file-0"),
            remove("data/file-1"), // the hard links' first name
            file("data/file-2", g.txt(4096, "mixed:f:2")).xattr("user.test", "changed"),
            dir("data/file-3", 0o755), // file -> dir
            file("data/file-3/inside", "was a file\n"),
            symlink("data/file-4", "file-5"),     // file -> symlink
            file("empty1", "was an empty dir\n"), // dir -> file
            remove("gone/sub"),                   // a whole subtree
            dir("l2", 0o755),
            file("l2/a", g.txt(3000, "mixed:l2a")),
            hardlink("l2/b", "l2/a"),
            hardlink("l2/c", "l2/a"),
            symlink("l2/sym", "a"),
            file_mode("modes/exec", "#!/bin/sh\necho exec\n", 0o700).owner(1000, 1000),
            file_mode("modes/private", "secret\n", 0o640).owner(1001, 1001),
            file_mode("modes/ro", "read only\n", 0o644),
            dir("opq", 0o755),
            opaque("opq"),
            (0..10)
                .map(|i| file(format!("opq/new-{i}"), g.txt(900, &format!("mixed:on:{i}"))))
                .collect::<Vec<_>>(),
        ],
    ));

    layers.push((
        "recreate+edge whiteouts",
        crate::tree![
            file("data/file-0", g.txt(5000, "mixed:f0-new")), // re-create a deleted file
            remove("data/nothere"),                           // whiteout of nothing
            dir("fresh", 0o755),
            opaque("fresh"), // opaque on a new dir
            file("fresh/one", "1\n"),
            remove("l2/b"), // one of three hard links
            dir("uni", 0o755),
            file(
                format!(
                    "uni/\u{65e5}\u{672c}\u{8a9e}\u{306e}\u{30d5}\u{30a1}\u{30a4}\u{30eb}\u{540d}-{}",
                    "\u{e9}".repeat(60)
                ),
                "long unicode\n",
            ),
            dir("empty3", 0o755),
            dir("empty3/a", 0o755),
            dir("empty3/a/b", 0o755),
        ],
    ));

    layers.push((
        "modify big + many files",
        crate::tree![
            dir("data", 0o750).xattr("user.dir", "changed"),
            (10..100)
                .map(|i| {
                    let n = r.randint(1024, 16384) as usize;
                    file(
                        format!("data/file-{i}"),
                        g.txt(n, &format!("mixed:mod:{i}")),
                    )
                })
                .collect::<Vec<_>>(),
            dir("keep", 0o755),
            file("keep/big.bin", g.rnd(8 * MB, "mixed:big1")),
        ],
    ));

    layers.push(("empty layer", Vec::new()));

    let l = vec![
        remove("gone"),
        remove("links/dirlink"), // a symlink to a directory, not the directory
        dir("links", 0o755),
        dir("links/dirlink-new", 0o755),
        file("links/dirlink-new/file", "x\n"),
        file("\u{e9}t\u{e9}.txt", "root-level unicode\n"),
    ];
    layers.push(("top-level whiteout", l));
    layers
}

fn small_file_bytes(
    seed: u64,
    words: &[Vec<u8>],
    path: &str,
    random: bool,
    size: usize,
) -> (Vec<u8>, PyRandom) {
    let mut fr = PyRandom::keyed(seed, &format!("sf:{path}"));
    let mut data = Vec::with_capacity(size);
    if random {
        fr.fill_randbytes(&mut data, size);
    } else {
        text_bytes(&mut fr, words, size, &mut data);
    }
    (data, fr)
}

/// `smallfiles`' single layer: `50000 * scale` files of 0.5-8 KiB in a 16x8x8 tree plus
/// deeper chains. Contents are regenerated on demand rather than kept in memory.
pub fn smallfiles_changes(seed: u64, scale: f64) -> Vec<Change> {
    let words = Arc::new(words_for(seed));
    let mut r = PyRandom::keyed(seed, "smallfiles:tree");
    let nfiles = (50000.0 * scale) as usize;
    let mut dirs: Vec<String> = Vec::new();
    for a in 0..16 {
        dirs.push(format!("t{a:02}"));
        for b in 0..8 {
            dirs.push(format!("t{a:02}/d{b}"));
            for c in 0..8 {
                dirs.push(format!("t{a:02}/d{b}/e{c}"));
            }
        }
    }
    let mut deep = Vec::new();
    for i in 0..64 {
        let mut base = r.choice(&dirs).clone();
        for lvl in 0..r.randint(1, 4) {
            base = format!("{base}/deep{lvl}-{i}");
            deep.push(base.clone());
        }
    }
    dirs.extend(deep);
    // (path, None for a dir or Some((random?, size)))
    let mut entries: Vec<(String, Option<(bool, usize)>)> =
        dirs.iter().map(|d| (d.clone(), None)).collect();
    let exts = [".txt", ".c", ".h", ".py", ".json", ".md"];
    for i in 0..nfiles {
        let d = r.choice(&dirs).clone();
        let size = (512.0 * 16f64.powf(r.random().powf(1.6))) as usize;
        let random = r.random() < 0.25;
        let ext = if random { ".bin" } else { r.choice(&exts) };
        entries.push((format!("{d}/f{i:06}{ext}"), Some((random, size))));
    }
    sort_like_mkimage(&mut entries);
    entries
        .into_iter()
        .map(|(path, what)| match what {
            None => dir(path, 0o755),
            Some((random, size)) => {
                // The mode is drawn after the contents, so generate them once here.
                let (data, mut fr) = small_file_bytes(seed, &words, &path, random, size);
                let mode = if fr.random() < 0.9 { 0o644 } else { 0o755 };
                let digest = crate::sha256_digest(&data);
                drop(data);
                let (words, p) = (words.clone(), path.clone());
                let content = Content::lazy_with_digest(size as u64, digest, move || {
                    let (data, _) = small_file_bytes(seed, &words, &p, random, size);
                    Box::new(io::Cursor::new(data))
                });
                file_mode(path, content, mode)
            }
        })
        .collect()
}

/// Streams mkimage.py's `GenReader`: 1 MiB chunks of text or random bytes from one generator.
struct GenReader {
    rng: PyRandom,
    words: Arc<Vec<Vec<u8>>>,
    random: bool,
    left: usize,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for GenReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.left == 0 {
                return Ok(0);
            }
            let k = MB.min(self.left);
            self.buf.clear();
            if self.random {
                self.rng.fill_randbytes(&mut self.buf, k);
            } else {
                text_bytes(&mut self.rng, &self.words, k, &mut self.buf);
            }
            self.left -= k;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// `bigfiles`' single layer: `data/` with two text and two random files of
/// `256 MiB * scale` each, generated while they are written.
pub fn bigfiles_changes(seed: u64, scale: f64) -> Vec<Change> {
    let words = Arc::new(words_for(seed));
    let each = (256.0 * MB as f64 * scale) as usize;
    let mut out = vec![dir("data", 0o755)];
    for (path, random) in [
        ("data/text-0.txt", false),
        ("data/text-1.log", false),
        ("data/random-0.bin", true),
        ("data/random-1.bin", true),
    ] {
        let words = words.clone();
        let content = Content::lazy(each as u64, move || {
            Box::new(GenReader {
                rng: PyRandom::keyed(seed, &format!("big:{path}")),
                words: words.clone(),
                random,
                left: each,
                buf: Vec::new(),
                pos: 0,
            })
        });
        out.push(file(path, content));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::read_raw;
    use crate::tree::{Compare, NodeKind, assert_trees_equal, assert_trees_equal_with};

    // diff_ids printed by mkimage.py (CPython 3.11) with the default seed.
    const MIXED_DIFF_IDS: [&str; 6] = [
        "sha256:d269e46475ec6f7d4b612a818969b9bb24176ded1e65d2db7810fedc1ee79837",
        "sha256:4ece5b55fb8360749b0764eb2e5d9dcd5170bf79a49fe8d5a55657bba34762b3",
        "sha256:adf9d7ec00375d5fe528ad87b7b2083d6de5615d95e2e6ba45177d5d9fc30515",
        "sha256:cd177c89cbcbcd8020b004d823ecdb7ff973f43cf4fb03e46cadcb586d29fd40",
        "sha256:84ff92691f909a05b224e1c56abb4864f01b4f8e3c854e4bb4c7baf1d3f6d652",
        "sha256:df6f450bbdc4a5e41c1a72b3a3949f9cd25690be708ff8f687b3ba85e1321deb",
    ];

    #[test]
    fn mixed_layers_are_byte_identical_to_mkimage() {
        let img = mixed(Compression::Gzip).unwrap();
        assert_eq!(img.diff_ids(), MIXED_DIFF_IDS);
        assert_eq!(
            img.chain_ids().last().map(String::as_str),
            Some("sha256:46fe0be013ff4d8b079eddab4adcc70165ffc29d4998e6e0779bbcf7813b4cfb")
        );
        assert_eq!(img.name, "localhost/bench/mixed:gzip");
        assert_eq!(img.layers().len(), 6);
    }

    #[test]
    fn scaled_big_fixtures_match_mkimage() {
        let dir = tempfile::tempdir().unwrap();
        let p = Params::new(Compression::None).spool_dir(dir.path());
        let small = build("smallfiles", &p.clone().scale(0.02)).unwrap();
        assert_eq!(
            small.diff_ids(),
            ["sha256:5aafe900c2b1d6a5cc3591db3800a91e57475c88deb2d052feca8de54804aaff"]
        );
        let big = build("bigfiles", &p.clone().scale(0.0133)).unwrap();
        assert_eq!(
            big.diff_ids(),
            ["sha256:6049828b6ba4fc8bb2c2f800f6a59789c1ba86be077bb5b325a7216443321620"]
        );
        let t = big.expected_tree().unwrap();
        let each = (256.0 * MB as f64 * 0.0133) as u64;
        assert!(
            matches!(t.get("data/random-1.bin").map(|n| &n.kind), Some(NodeKind::File { size, .. }) if *size == each)
        );
        let ts = small.expected_tree().unwrap();
        assert_eq!(
            ts.iter()
                .filter(|(_, n)| matches!(n.kind, NodeKind::File { .. }))
                .count(),
            1000
        );
    }

    #[test]
    fn busybox_has_the_binary_and_applets() {
        let img = busybox(Compression::Gzip).unwrap();
        assert_eq!(img.name, "localhost/bench/busybox:gzip");
        let raw = read_raw(&img.layers()[0].tar_bytes().unwrap()[..]).unwrap();
        let find = |name: &str| raw.iter().find(|e| e.name == name.as_bytes());
        let bb = find("bin/busybox").expect("bin/busybox");
        assert_eq!((bb.typeflag, bb.mode), (b'0', 0o755));
        assert_eq!(bb.data, std::fs::read("/bin/busybox").unwrap());
        let sh = find("bin/sh").expect("bin/sh");
        assert_eq!(
            (sh.typeflag, sh.link.as_slice()),
            (b'2', b"/bin/busybox".as_slice())
        );
        assert_eq!(find("tmp/").map(|e| e.mode), Some(0o1777));
        assert_eq!(find("root/").map(|e| e.mode), Some(0o700));
        assert!(find("etc/passwd").is_some());
        let config: serde_json::Value = serde_json::from_slice(img.config()).unwrap();
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["/bin/sh"]));
        // Same host binary, same bytes.
        assert_eq!(
            img.diff_ids(),
            busybox(Compression::Gzip).unwrap().diff_ids()
        );
    }

    #[test]
    fn busybox_refuses_a_dynamic_binary() {
        let err = busybox_changes(Path::new("/bin/ls")).unwrap_err();
        assert!(err.to_string().contains("statically linked"), "{err}");
        let err = busybox_changes(Path::new("/nonexistent/busybox")).unwrap_err();
        assert!(err.to_string().contains("busybox-static"), "{err}");
    }

    #[test]
    fn unknown_fixture_is_an_error() {
        assert!(build("nope", &Params::new(Compression::None)).is_err());
    }

    /// A deliberately small extractor with OCI whiteout semantics, independent of
    /// `tree::apply` and `Tree::apply_changes`: each layer's whiteouts first, then its
    /// entries, directory times last.
    fn reference_unpack(root: &Path, tar: &[u8]) {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let entries = read_raw(tar).unwrap();
        let rel = |name: &[u8]| {
            String::from_utf8(name.to_vec())
                .unwrap()
                .trim_end_matches('/')
                .to_string()
        };
        let rm = |p: &Path| {
            if let Ok(md) = std::fs::symlink_metadata(p) {
                if md.is_dir() {
                    std::fs::remove_dir_all(p).unwrap()
                } else {
                    std::fs::remove_file(p).unwrap()
                }
            }
        };
        for e in &entries {
            let name = rel(&e.name);
            let (parent, base) = name.rsplit_once('/').unwrap_or(("", &name));
            if base == ".wh..wh..opq" {
                for c in std::fs::read_dir(root.join(parent)).into_iter().flatten() {
                    rm(&c.unwrap().path());
                }
            } else if let Some(hidden) = base.strip_prefix(".wh.") {
                rm(&root.join(parent).join(hidden));
            }
        }
        let mut dir_times = Vec::new();
        for e in &entries {
            let name = rel(&e.name);
            let base = name.rsplit('/').next().unwrap();
            if base.starts_with(".wh.") {
                continue;
            }
            let p = root.join(&name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            let existing = std::fs::symlink_metadata(&p).ok();
            if !(e.typeflag == b'5' && existing.as_ref().is_some_and(|m| m.is_dir())) {
                rm(&p);
            }
            match e.typeflag {
                b'5' => {
                    let _ = std::fs::create_dir(&p);
                }
                b'0' => std::fs::write(&p, &e.data).unwrap(),
                b'2' => symlink(String::from_utf8(e.link.clone()).unwrap(), &p).unwrap(),
                b'1' => {
                    std::fs::hard_link(root.join(rel(&e.link)), &p).unwrap();
                    continue;
                }
                b'6' => nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .unwrap(),
                t => panic!("unexpected type {t}"),
            }
            std::os::unix::fs::lchown(&p, Some(e.uid as u32), Some(e.gid as u32)).unwrap();
            if e.typeflag != b'2' {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode)).unwrap();
            }
            for (k, v) in &e.pax {
                if let Some(x) = k.strip_prefix("SCHILY.xattr.") {
                    xattr_set(&p, x, v);
                }
            }
            let t = nix::sys::time::TimeSpec::new(e.mtime, 0);
            if e.typeflag == b'5' {
                dir_times.push((p, t));
            } else {
                set_mtime(&p, t);
            }
        }
        for (p, t) in dir_times {
            set_mtime(&p, t);
        }
    }

    fn set_mtime(p: &Path, t: nix::sys::time::TimeSpec) {
        nix::sys::stat::utimensat(
            None,
            p,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    fn xattr_set(p: &Path, name: &str, value: &[u8]) {
        use std::os::unix::ffi::OsStrExt;
        let cp = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        let cn = std::ffi::CString::new(name).unwrap();
        // SAFETY: valid C strings and slice for the duration of the call.
        let r = unsafe {
            libc::lsetxattr(
                cp.as_ptr(),
                cn.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(
            r,
            0,
            "setxattr {name} on {}: {}",
            p.display(),
            io::Error::last_os_error()
        );
    }

    #[test]
    fn mixed_expected_tree_matches_a_reference_unpack() {
        crate::testutil::require_root();
        let img = mixed(Compression::Zstd).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for l in img.layers() {
            reference_unpack(dir.path(), &l.tar_bytes().unwrap());
        }
        let expected = img.expected_tree().unwrap();
        let actual = crate::tree::snapshot(dir.path()).unwrap();
        assert_trees_equal(&expected, &actual);
        // Spot checks that the expectation really says what mkimage.py meant.
        assert!(!expected.contains("gone"));
        assert!(!expected.contains("data/file-1"));
        assert!(!expected.contains("opq/old"));
        assert!(expected.contains("opq/new-9"));
        assert_eq!(expected.get("modes/setuid").unwrap().mode, 0o4755);
        assert_eq!(expected.get("modes/sticky").unwrap().mode, 0o1777);
        assert_eq!(expected.get("modes/private").unwrap().uid, 1001);
        assert_eq!(
            expected
                .get("data")
                .unwrap()
                .xattrs
                .get("user.dir")
                .unwrap(),
            b"changed"
        );
        assert!(expected.get("data/file-3").unwrap().kind.is_dir());
        assert!(matches!(
            expected.get("special/fifo0").unwrap().kind,
            NodeKind::Fifo
        ));
        let groups = expected.hardlink_groups();
        assert!(
            groups
                .iter()
                .any(|g| g.len() == 2 && g[0].ends_with("links/hard1"))
        );
        assert!(
            groups
                .iter()
                .any(|g| g.len() == 2 && g[0].ends_with("l2/a") && g[1].ends_with("l2/c"))
        );
        // Every layer's own tree is what the reference unpacker makes of that layer alone.
        for l in img.layers() {
            let alone = tempfile::tempdir().unwrap();
            reference_unpack(alone.path(), &l.tar_bytes().unwrap());
            let want = l.tree().unwrap();
            let got = crate::tree::snapshot(alone.path()).unwrap();
            // Whiteouts of paths under missing parents leave nothing; compare what exists.
            assert_trees_equal_with(&want, &got, &Compare::strict().ignore_dir_mtimes());
        }
    }
}
