//! What the fuzz targets and the seed generator (`examples/seeds.rs`) share: how an input is
//! cut into requests, the fixtures the service targets start every input from, and the
//! directory their stores live in.

use std::path::PathBuf;

/// The first byte of an `apply_tar` input picks the compression (low two bits) and the target.
pub mod apply {
    /// Low two bits: how the rest of the input is read, as the Apply path's `Compression`.
    pub const PLAIN: u8 = 0;
    pub const GZIP: u8 = 1;
    pub const ZSTD: u8 = 2;
    /// Docker's plain-tar media types: gzip or zstd detected by magic number.
    pub const DETECT: u8 = 3;
    /// Bit 2: write into an overlay upperdir (overlay whiteouts, a lowerdir for the metadata
    /// of created parents) instead of a bind mount's source (OCI whiteouts).
    pub const OVERLAY: u8 = 4;
}

/// Longest payload one request may have in an input.
pub const MAX_OP: usize = u16::MAX as usize;

/// Cuts an input into requests: each is a tag byte, a little-endian u16 length and that many
/// payload bytes (fewer when the input ends first).
pub fn ops(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let Some((&tag, rest)) = data.split_first() {
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
            _ => (0, &[][..]),
        };
        let len = len.min(rest.len());
        out.push((tag, &rest[..len]));
        data = &rest[len..];
    }
    out
}

/// One request in the form [`ops`] reads.
pub fn op(tag: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= MAX_OP, "payload too long for one op");
    let mut out = Vec::with_capacity(payload.len() + 3);
    out.push(tag);
    out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Content requests, by the tag (modulo their count) that selects them.
pub mod content {
    pub const INFO: u8 = 0;
    pub const UPDATE: u8 = 1;
    pub const LIST: u8 = 2;
    pub const DELETE: u8 = 3;
    pub const READ: u8 = 4;
    pub const STATUS: u8 = 5;
    pub const LIST_STATUSES: u8 = 6;
    pub const ABORT: u8 = 7;
    /// Payload: length-delimited `WriteContentRequest`s, the messages of one Write stream.
    pub const WRITE: u8 = 8;
    pub const COUNT: u8 = 9;

    /// The blob every input starts with, and its labels.
    pub const FIXTURE: &[u8] = b"hello strata\n";
    pub const FIXTURE_LABELS: &[(&str, &str)] = &[
        ("containerd.io/gc.root", "2024-01-01T00:00:00Z"),
        ("a", "b"),
    ];
}

/// Snapshots requests, by the tag (modulo their count) that selects them.
pub mod snapshots {
    pub const PREPARE: u8 = 0;
    pub const VIEW: u8 = 1;
    pub const MOUNTS: u8 = 2;
    pub const COMMIT: u8 = 3;
    pub const REMOVE: u8 = 4;
    pub const STAT: u8 = 5;
    pub const UPDATE: u8 = 6;
    pub const LIST: u8 = 7;
    pub const USAGE: u8 = 8;
    pub const CLEANUP: u8 = 9;
    pub const COUNT: u8 = 10;

    /// The snapshots every input starts with: a committed one, an active one and a view on
    /// it, each with [`LABELS`].
    pub const BASE: &str = "base";
    pub const ACTIVE: &str = "work";
    pub const VIEW_KEY: &str = "ro";
    pub const LABELS: &[(&str, &str)] = &[("containerd.io/snapshot.ref", "sha256:0"), ("a", "b")];
}

/// The `fieldpath` target's input: text, one item a line.
///
/// ```text
/// S <name>          the update is a snapshot's (`B <digest>`: a blob's); the last such line wins
/// c <key>=<value>   a stored label (`*N` after the value repeats it N times, up to 8 KiB)
/// n <key>=<value>   a label of the request
/// p <path>          a path of the update mask
/// ```
///
/// Other lines are ignored.
pub mod fieldpath {
    use std::collections::BTreeMap;

    /// Longest label value a `*N` repetition makes.
    const MAX_REPEATED: usize = 8 << 10;

    #[derive(Debug, Default)]
    pub struct Input {
        pub snapshot: bool,
        pub name: String,
        pub current: BTreeMap<String, String>,
        pub new: BTreeMap<String, String>,
        pub paths: Vec<String>,
    }

    fn label(s: &str) -> (String, String) {
        let (key, value) = s.split_once('=').unwrap_or((s, ""));
        let value = match value.rsplit_once('*') {
            Some((v, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                let n: usize = n.parse().unwrap_or(usize::MAX);
                if v.len().saturating_mul(n) <= MAX_REPEATED {
                    v.repeat(n)
                } else {
                    v.to_owned()
                }
            }
            _ => value.to_owned(),
        };
        (key.to_owned(), value)
    }

    impl Input {
        pub fn parse(text: &str) -> Input {
            let mut input = Input::default();
            for line in text.split('\n') {
                let Some((kind, rest)) = line.split_at_checked(2) else {
                    continue;
                };
                match kind {
                    "S " | "B " => {
                        input.snapshot = kind == "S ";
                        input.name = rest.to_owned();
                    }
                    "c " => {
                        let (k, v) = label(rest);
                        input.current.insert(k, v);
                    }
                    "n " => {
                        let (k, v) = label(rest);
                        input.new.insert(k, v);
                    }
                    "p " => input.paths.push(rest.to_owned()),
                    _ => {}
                }
            }
            input
        }
    }
}

/// Where a target keeps the stores it makes: `$STRATA_FUZZ_TMP`, else `/dev/shm` (tmpfs, where
/// the stores' fsyncs cost nothing), else the temp directory.
pub fn scratch_base() -> PathBuf {
    if let Some(dir) = std::env::var_os("STRATA_FUZZ_TMP") {
        return PathBuf::from(dir);
    }
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() && tempfile::tempdir_in(&shm).is_ok() {
        return shm;
    }
    std::env::temp_dir()
}

/// What every server target keeps across inputs: a single-threaded runtime and a scratch
/// directory named after `what` under [`scratch_base`].
pub fn runtime_and_dir(what: &str) -> (tokio::runtime::Runtime, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("strata-fuzz-{what}-"))
        .tempdir_in(scratch_base())
        .expect("temp dir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    (rt, dir)
}

/// A label map from static pairs.
pub fn labels(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
