//! Writes the seed corpora under `fuzz/corpus/<target>/`: a few small, meaningful inputs per
//! target (layers built with strata-testkit, filters, update masks, encoded requests), each
//! named after what it is. Run from `fuzz/` after changing an input format:
//!
//! ```sh
//! cargo run --example seeds
//! ```
//!
//! Existing files of the same name are overwritten; other files are left alone.

use std::collections::HashMap;
use std::path::Path;

use prost::Message;
use strata_fuzz::{apply, content as cop, op, snapshots as sop};
use strata_proto::content::{
    AbortRequest, DeleteContentRequest, Info, InfoRequest, ListContentRequest, ListStatusesRequest,
    ReadContentRequest, StatusRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use strata_proto::snapshots as pb;
use strata_testkit::TarFormat;
use strata_testkit::layer::{Layer, RawEntry, raw_tar};
use strata_testkit::prelude::*;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn write(target: &str, name: &str, data: &[u8]) -> Result {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), data)?;
    Ok(())
}

/// A plain tar without the zero padding after its end-of-archive marker (the marker's two
/// zero blocks stay); compressed blobs as they are.
fn trim(blob: &[u8]) -> &[u8] {
    const BLOCK: usize = 512;
    if !blob.len().is_multiple_of(BLOCK) {
        return blob;
    }
    let used = blob
        .chunks(BLOCK)
        .rposition(|b| b.iter().any(|x| *x != 0))
        .map_or(0, |i| (i + 1) * BLOCK);
    &blob[..(used + 2 * BLOCK).min(blob.len())]
}

fn apply_seed(name: &str, mode: u8, blob: &[u8]) -> Result {
    let mut data = vec![mode];
    data.extend_from_slice(trim(blob));
    write("apply_tar", name, &data)
}

fn apply_tar() -> Result {
    // Everything a well-formed layer carries, small.
    let rich = tree![
        dir("bin", 0o755).mtime(1_600_000_000),
        file_mode("bin/su", "setuid", 0o4755),
        file("etc/owned", "owned").owner(1000, 1001),
        file("etc/x", "x").xattr("user.one", "1"),
        file("etc/nanos", "n").mtime_ns(1_234_567_890, 123_456_789),
        hardlink("bin/su-again", "bin/su"),
        symlink("bin/sh", "busybox"),
        symlink("abs", "/etc/owned"),
        dir("tmp", 0o1777),
        fifo("dev/fifo"),
        char_dev("dev/null", 1, 3),
        file(format!("long/{}", "n".repeat(120)), "long name"),
    ];
    let layer = Layer::new(rich.clone(), Compression::None)?;
    apply_seed("plain-rich", apply::PLAIN, &layer.blob_bytes()?)?;
    let gnu = Layer::with_options(rich, Compression::None, &TarOptions::default().gnu())?;
    apply_seed("plain-gnu", apply::PLAIN, &gnu.blob_bytes()?)?;

    // Deletions: OCI whiteouts and an opaque directory, into a bind target and an upperdir
    // (the root holds `d/f`, the lowerdir `d/sub` and `d/f`).
    let deletions = tree![
        remove("d/f"),
        opaque("d"),
        file("d/new", "new"),
        remove("up")
    ];
    let layer = Layer::new(deletions, Compression::None)?;
    apply_seed("plain-whiteouts", apply::PLAIN, &layer.blob_bytes()?)?;
    apply_seed(
        "overlay-whiteouts",
        apply::PLAIN | apply::OVERLAY,
        &layer.blob_bytes()?,
    )?;
    let parents = tree![file("d/sub/deep/f", "in a parent from the lowerdir")];
    let layer = Layer::new(parents, Compression::None)?;
    apply_seed(
        "overlay-parents",
        apply::PLAIN | apply::OVERLAY,
        &layer.blob_bytes()?,
    )?;

    // Compressed: each decoder, and detection by magic number.
    let small = tree![dir("a", 0o755), file("a/b", "hello"), symlink("c", "a/b")];
    for (c, mode, name) in [
        (Compression::Gzip, apply::GZIP, "gzip"),
        (Compression::Zstd, apply::ZSTD, "zstd"),
    ] {
        let layer = Layer::new(small.clone(), c)?;
        apply_seed(name, mode, &layer.blob_bytes()?)?;
        apply_seed(
            &format!("detect-{name}"),
            apply::DETECT,
            &layer.blob_bytes()?,
        )?;
    }

    // Hostile entries: out of the root by name, through the root's symlinks into the
    // sentinel, hard links out, a symlink then a file through it, a PAX path override.
    let hostile: &[(&str, Vec<RawEntry>)] = &[
        (
            "escape-dotdot",
            vec![
                RawEntry::file("../sentinel/secret", "pwned"),
                RawEntry::file("a/../../escape", "pwned"),
            ],
        ),
        (
            "escape-symlinks",
            vec![
                RawEntry::file("up/secret", "pwned"),
                RawEntry::file("abs/d/f", "pwned"),
                RawEntry::file("secret", "replaced, not followed"),
                RawEntry::dir("low/"),
            ],
        ),
        (
            "escape-new-symlink",
            vec![
                RawEntry::symlink("l", "../../sentinel"),
                RawEntry::file("l/secret", "pwned"),
                RawEntry::symlink("m", "/"),
                RawEntry::dir("m/d/"),
            ],
        ),
        (
            "escape-hardlink",
            vec![
                RawEntry::hardlink("h", "../sentinel/secret").mode(0o777),
                RawEntry::hardlink("h2", "up/secret"),
                RawEntry::hardlink("h3", "abs/d/f").owner(5, 5),
            ],
        ),
        (
            "pax-path",
            vec![
                RawEntry::file("innocent", "pwned")
                    .pax("path", "../sentinel/secret")
                    .pax("mtime", "-1.5")
                    .pax("uid", "4294967296"),
                RawEntry::symlink("s", "x").pax("linkpath", "../../sentinel"),
            ],
        ),
        (
            // Once an overflow in the PAX time parser (differ/src/apply/unpack.rs).
            "pax-time-limits",
            vec![
                RawEntry::file("t", "x")
                    .pax("mtime", "-9223372036854775808.5")
                    .pax("atime", "9223372036854775807.999999999"),
                RawEntry::dir("d/").pax("mtime", "-0.000000001"),
            ],
        ),
        (
            "whiteout-escape",
            vec![
                RawEntry::file("up/.wh.secret", ""),
                RawEntry::file("../.wh.sentinel", ""),
                RawEntry::dir("up/.wh..wh..opq"),
            ],
        ),
        (
            "devices-xattrs",
            vec![
                RawEntry::block_dev("dev/sda", 8, 0),
                RawEntry::char_dev("dev/wh", 0, 0),
                RawEntry::file("x", "x")
                    .xattr("trusted.overlay.opaque", "y")
                    .xattr("security.capability", [1u8, 2, 3]),
                RawEntry::file("odd-type", "?").typeflag(b'Z'),
            ],
        ),
    ];
    for (name, entries) in hostile {
        apply_seed(name, apply::PLAIN, &raw_tar(entries, TarFormat::Pax)?)?;
    }
    let gnu_long = raw_tar(
        &[RawEntry::file(
            format!("{}/../../sentinel/secret", "x/".repeat(60)),
            "pwned",
        )],
        TarFormat::Gnu,
    )?;
    apply_seed("gnu-longname-escape", apply::PLAIN, &gnu_long)?;
    apply_seed(
        "overlay-escape-symlinks",
        apply::PLAIN | apply::OVERLAY,
        &raw_tar(&hostile[1].1, TarFormat::Pax)?,
    )?;
    let zst = Layer::from_raw(&hostile[2].1, Compression::Zstd)?;
    apply_seed("zstd-escape-new-symlink", apply::ZSTD, &zst.blob_bytes()?)?;
    // Once a panic in the gzip decoder (differ/src/apply/inflate.rs): corrupt deflate data on which
    // ISA-L reported more input left than it was given.
    apply_seed("gzip-corrupt-lookback", apply::GZIP, GZIP_CORRUPT_LOOKBACK)?;
    // A truncated gzip stream.
    let gz = Layer::new(small, Compression::Gzip)?.blob_bytes()?;
    apply_seed("gzip-truncated", apply::GZIP, &gz[..gz.len() / 2])?;
    Ok(())
}

/// Found by apply_tar; also `FUZZ_CORRUPT_MEMBER` in differ/src/apply/inflate.rs's tests.
const GZIP_CORRUPT_LOOKBACK: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xec, 0xd4, 0x41, 0x0a, 0x02, 0x31,
    0x0c, 0x85, 0xe1, 0x1c, 0xa5, 0x37, 0x98, 0xd8, 0x69, 0x9a, 0xf3, 0x54, 0x11, 0x5c, 0x0c, 0x08,
    0x6a, 0xef, 0x2f, 0x76, 0x39, 0x0b, 0xc1, 0x45, 0x3b, 0x48, 0xff, 0x6f, 0x93, 0xd2, 0x4d, 0x03,
    0x8f, 0xbe, 0xb2, 0x48, 0x77, 0xaa, 0xaa, 0x6e, 0xd6, 0xa6, 0xaa, 0xee, 0x67, 0x3b, 0x9f, 0x92,
    0xc5, 0xe4, 0xae, 0xa9, 0xdd, 0xe7, 0x18, 0x5d, 0x30, 0x30, 0x30, 0x30, 0x36, 0x34, 0x34, 0x00,
    0x82, 0xf5, 0x5f, 0x4d, 0xa4, 0x3e, 0x5f, 0xe5,
];

fn filter_parse() -> Result {
    let seeds: &[(&str, &str)] = &[
        ("labels-and-regexp", r#"labels."a"==b,name~=x"#),
        ("presence", "name==foo,labels.a"),
        ("two-filters", "kind==committed\nparent!=\"\""),
        ("quoted-key", r#"labels."containerd.io/gc.root""#),
        ("regexp-slashes", r"digest~=/^sha256:[0-9a-f]+$/"),
        ("regexp-bars", r"labels.a~=|^b$|,ref==ingest-1"),
        ("escapes", r#"labels."a.b"=="c\x41\u00e9\101""#),
        ("unicode", "labels.ünï==cödé"),
        ("dotted-path", "labels.a.b==c"),
        ("bad-space", "name==foo bar"),
        ("bad-operator", "name>=x"),
        ("bad-quote", r#"labels."a"#),
        ("bad-regexp", "name~=("),
        ("empty-string", ""),
    ];
    for (name, text) in seeds {
        write("filter_parse", name, text.as_bytes())?;
    }
    Ok(())
}

fn fieldpath() -> Result {
    let seeds: &[(&str, &str)] = &[
        (
            "set-and-delete",
            "S snap\nc a=1\nc b=2\nn b=20\nn c=3\np labels.b\np labels.c\np labels.a\n",
        ),
        ("replace-all", "B sha256:0123\nc a=1\nn x=y\nn e=\n"),
        ("labels-path", "S snap\nc a=1\nn b=2\np labels\n"),
        ("immutable", "S snap\nc a=1\np name\np labels.a\n"),
        ("dotted-key", "B sha256:0123\nn a.b.c=d\np labels.a.b.c\n"),
        ("too-big", "S snap\nn big=x*4096\np labels.big\n"),
        (
            "too-big-stored",
            "B sha256:0123\nc big=xy*3000\np labels.other\n",
        ),
        ("odd-quote", "S \"\u{7}snap\u{1F600}\nc a=1\np size\n"),
    ];
    for (name, text) in seeds {
        write("fieldpath", name, text.as_bytes())?;
    }
    Ok(())
}

/// Requests of one input: tag and encoded payload.
type Requests = Vec<(u8, Vec<u8>)>;

fn ops(list: &[(u8, Vec<u8>)]) -> Vec<u8> {
    list.iter().flat_map(|(tag, p)| op(*tag, p)).collect()
}

/// At most one label, so that the encoding is the same every time (prost writes a map in the
/// order a `HashMap` iterates).
fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    assert!(pairs.len() <= 1, "seeds carry at most one label a message");
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

fn write_stream(msgs: &[WriteContentRequest]) -> Vec<u8> {
    msgs.iter()
        .flat_map(Message::encode_length_delimited_to_vec)
        .collect()
}

fn content_requests() -> Result {
    let fixture = format!(
        "sha256:{}",
        strata_content::Digest::sha256_of(cop::FIXTURE).hex()
    );
    let hello = format!(
        "sha256:{}",
        strata_content::Digest::sha256_of(b"hello").hex()
    );
    let info = |d: &str| InfoRequest { digest: d.into() }.encode_to_vec();
    let read = |offset, size| {
        ReadContentRequest {
            digest: fixture.clone(),
            offset,
            size,
        }
        .encode_to_vec()
    };
    let update = |labels_: &[(&str, &str)], paths: &[&str]| {
        UpdateRequest {
            info: Some(Info {
                digest: fixture.clone(),
                labels: labels(labels_),
                ..Default::default()
            }),
            update_mask: mask(paths),
        }
        .encode_to_vec()
    };
    let list = |filters: &[&str]| {
        ListContentRequest {
            filters: filters.iter().map(|f| (*f).to_owned()).collect(),
        }
        .encode_to_vec()
    };
    let w = |r: &str, action: WriteAction, total, offset, data: &[u8], expected: &str| {
        WriteContentRequest {
            action: action as i32,
            r#ref: r.into(),
            total,
            expected: expected.into(),
            offset,
            data: data.to_vec(),
            labels: HashMap::new(),
        }
    };
    let seeds: Vec<(&str, Requests)> = vec![
        (
            "info",
            vec![(cop::INFO, info(&fixture)), (cop::INFO, info("sha256:zz"))],
        ),
        (
            "update",
            vec![
                (
                    cop::UPDATE,
                    update(&[("a", "c")], &["labels.a", "labels.n"]),
                ),
                (cop::UPDATE, update(&[("x", "y")], &["labels"])),
                (cop::UPDATE, update(&[], &["size"])),
                (cop::UPDATE, update(&[("z", "1")], &[])),
            ],
        ),
        (
            "list",
            vec![
                (cop::LIST, list(&[])),
                (cop::LIST, list(&[r#"labels."a"==b"#, "digest~=^sha256"])),
                (cop::LIST, list(&["name=="])),
            ],
        ),
        (
            "read",
            vec![
                (cop::READ, read(0, 0)),
                (cop::READ, read(5, 3)),
                (cop::READ, read(100, 0)),
                (cop::READ, read(-1, 0)),
            ],
        ),
        (
            "write-commit",
            vec![
                (
                    cop::WRITE,
                    write_stream(&[
                        w("r1", WriteAction::Stat, 5, 0, b"", ""),
                        w("r1", WriteAction::Write, 5, 0, b"hel", ""),
                        w("r1", WriteAction::Commit, 5, 3, b"lo", &hello),
                    ]),
                ),
                (cop::INFO, info(&hello)),
                (
                    cop::DELETE,
                    DeleteContentRequest {
                        digest: hello.clone(),
                    }
                    .encode_to_vec(),
                ),
            ],
        ),
        (
            "write-resume-abort",
            vec![
                (
                    cop::WRITE,
                    write_stream(&[w("r2", WriteAction::Write, 0, 0, b"part", "")]),
                ),
                (
                    cop::STATUS,
                    StatusRequest { r#ref: "r2".into() }.encode_to_vec(),
                ),
                (
                    cop::LIST_STATUSES,
                    ListStatusesRequest {
                        filters: vec!["ref==r2".into()],
                    }
                    .encode_to_vec(),
                ),
                (
                    cop::WRITE,
                    write_stream(&[
                        w("r2", WriteAction::Write, 0, 9, b"x", ""),
                        w("r2", WriteAction::Write, 0, 4, b"ial", ""),
                    ]),
                ),
                (
                    cop::ABORT,
                    AbortRequest { r#ref: "r2".into() }.encode_to_vec(),
                ),
            ],
        ),
        (
            "write-existing",
            vec![(
                cop::WRITE,
                write_stream(&[w("r3", WriteAction::Write, 0, 0, b"", &fixture)]),
            )],
        ),
        (
            "write-mismatch",
            vec![(
                cop::WRITE,
                write_stream(&[
                    w("r4", WriteAction::Write, 0, 0, b"abc", ""),
                    w("r4", WriteAction::Commit, 7, 3, b"", &hello),
                ]),
            )],
        ),
        (
            "delete-fixture",
            vec![
                (
                    cop::DELETE,
                    DeleteContentRequest {
                        digest: fixture.clone(),
                    }
                    .encode_to_vec(),
                ),
                (cop::INFO, info(&fixture)),
            ],
        ),
    ];
    for (name, list) in seeds {
        write("content_requests", name, &ops(&list))?;
    }
    Ok(())
}

fn snapshot_requests() -> Result {
    let l = || labels(&[("containerd.io/gc.ref.snapshot.x", "y")]);
    let prepare = |key: &str, parent: &str| {
        pb::PrepareSnapshotRequest {
            snapshotter: "strata".into(),
            key: key.into(),
            parent: parent.into(),
            labels: l(),
        }
        .encode_to_vec()
    };
    let view = |key: &str, parent: &str| {
        pb::ViewSnapshotRequest {
            snapshotter: "strata".into(),
            key: key.into(),
            parent: parent.into(),
            labels: l(),
        }
        .encode_to_vec()
    };
    let commit = |name: &str, key: &str, parent: &str| {
        pb::CommitSnapshotRequest {
            snapshotter: "strata".into(),
            name: name.into(),
            key: key.into(),
            labels: l(),
            parent: parent.into(),
        }
        .encode_to_vec()
    };
    let key = |k: &str| k.to_owned();
    let mounts = |k: &str| {
        pb::MountsRequest {
            snapshotter: "strata".into(),
            key: key(k),
        }
        .encode_to_vec()
    };
    let remove = |k: &str| {
        pb::RemoveSnapshotRequest {
            snapshotter: "strata".into(),
            key: key(k),
        }
        .encode_to_vec()
    };
    let stat = |k: &str| {
        pb::StatSnapshotRequest {
            snapshotter: "strata".into(),
            key: key(k),
        }
        .encode_to_vec()
    };
    let usage = |k: &str| {
        pb::UsageRequest {
            snapshotter: "strata".into(),
            key: key(k),
        }
        .encode_to_vec()
    };
    let list = |filters: &[&str]| {
        pb::ListSnapshotsRequest {
            snapshotter: "strata".into(),
            filters: filters.iter().map(|f| (*f).to_owned()).collect(),
        }
        .encode_to_vec()
    };
    let update = |name: &str, labels_: &[(&str, &str)], paths: &[&str]| {
        pb::UpdateSnapshotRequest {
            snapshotter: "strata".into(),
            info: Some(pb::Info {
                name: name.into(),
                labels: labels(labels_),
                ..Default::default()
            }),
            update_mask: mask(paths),
        }
        .encode_to_vec()
    };
    let cleanup = pb::CleanupRequest {
        snapshotter: "strata".into(),
    }
    .encode_to_vec();
    let seeds: Vec<(&str, Requests)> = vec![
        (
            "lifecycle",
            vec![
                (sop::PREPARE, prepare("k1", sop::BASE)),
                (sop::MOUNTS, mounts("k1")),
                (sop::USAGE, usage("k1")),
                (sop::COMMIT, commit("c1", "k1", "")),
                (sop::STAT, stat("c1")),
                (sop::USAGE, usage("c1")),
                (sop::LIST, list(&[])),
                (sop::REMOVE, remove("c1")),
                (sop::CLEANUP, cleanup.clone()),
            ],
        ),
        (
            "view",
            vec![
                (sop::VIEW, view("v1", sop::BASE)),
                (sop::MOUNTS, mounts("v1")),
                (sop::USAGE, usage(sop::VIEW_KEY)),
                (sop::REMOVE, remove("v1")),
            ],
        ),
        (
            "update",
            vec![
                (
                    sop::UPDATE,
                    update(sop::ACTIVE, &[("a", "c")], &["labels.a"]),
                ),
                (sop::UPDATE, update(sop::BASE, &[("x", "y")], &["labels"])),
                (sop::UPDATE, update(sop::BASE, &[], &["name"])),
                (sop::UPDATE, update("missing", &[("x", "y")], &[])),
                (sop::STAT, stat(sop::ACTIVE)),
            ],
        ),
        (
            "list-filters",
            vec![
                (sop::LIST, list(&["kind==active"])),
                (
                    sop::LIST,
                    list(&[r#"parent==base,labels."a"==b"#, "name~=^r"]),
                ),
                (sop::LIST, list(&["name=="])),
            ],
        ),
        (
            "errors",
            vec![
                (sop::PREPARE, prepare("", "")),
                (sop::PREPARE, prepare(sop::ACTIVE, sop::BASE)),
                (sop::PREPARE, prepare("k", sop::ACTIVE)),
                (sop::REMOVE, remove(sop::BASE)),
                (sop::COMMIT, commit("c", sop::VIEW_KEY, "")),
                (sop::STAT, stat("")),
                (sop::USAGE, usage("missing")),
            ],
        ),
        (
            "commit-rebase-chain",
            vec![
                (sop::PREPARE, prepare("k2", "")),
                (sop::COMMIT, commit("c2", "k2", sop::BASE)),
                (sop::PREPARE, prepare("k3", "c2")),
                (sop::COMMIT, commit("c3", "k3", "")),
                (sop::COMMIT, commit("c4", sop::ACTIVE, "")),
                (sop::REMOVE, remove("c2")),
                (sop::REMOVE, remove("c3")),
                (sop::REMOVE, remove("c2")),
                (sop::CLEANUP, cleanup),
            ],
        ),
        (
            "remove-everything",
            vec![
                (sop::REMOVE, remove(sop::ACTIVE)),
                (sop::REMOVE, remove(sop::VIEW_KEY)),
                (sop::REMOVE, remove(sop::BASE)),
                (sop::LIST, list(&[])),
            ],
        ),
    ];
    for (name, list) in seeds {
        write("snapshot_requests", name, &ops(&list))?;
    }
    Ok(())
}

fn main() -> Result {
    apply_tar()?;
    filter_parse()?;
    fieldpath()?;
    content_requests()?;
    snapshot_requests()?;
    Ok(())
}
