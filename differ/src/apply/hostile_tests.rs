//! Hostile layers beyond containerd's TestBreakouts (in `tests.rs`): broken compressed streams
//! and tar headers whose digest matches (a registry serves what it likes, with the digest to
//! go with it), escapes through GNU long names and PAX records, links to whiteouts, trailing
//! data. Each case asserts that nothing outside the target changes and that the result is an
//! error or containerd's tree. Needs root, like `tests.rs`.

use std::path::Path;

use strata_common::error::Result;
use strata_testkit::TarFormat;
use strata_testkit::layer::{Layer, RawEntry, compress, raw_tar};
use strata_testkit::prelude::*;

use crate::apply::Applied;
use crate::apply::tests::{apply_blob, bind, contained};

/// What containerd does with the layer.
enum Expect {
    /// Fails (and so the snapshot is thrown away).
    Error,
    /// Applies, and the target then passes this check.
    Tree(fn(&Path)),
    /// Either, as long as nothing outside changes (containerd's outcome depends on details
    /// that do not matter for safety).
    Contained,
}

struct Case {
    name: &'static str,
    /// The layer's blob and media type compression; its digest is computed over the blob.
    blob: Vec<u8>,
    compression: Compression,
    expect: Expect,
}

fn layer_of(blob: &[u8], compression: Compression) -> Layer {
    let mut layer = Layer::from_tar(raw_tar(&[], TarFormat::Pax).unwrap(), compression).unwrap();
    layer.digest = strata_testkit::sha256_digest(blob);
    layer.size = blob.len() as u64;
    layer
}

fn apply_hostile(case: &Case, root: &Path) -> Result<Applied> {
    let layer = layer_of(&case.blob, case.compression);
    apply_blob(&layer, case.blob.clone(), &[bind(root)])
}

fn tar(entries: &[RawEntry]) -> Vec<u8> {
    raw_tar(entries, TarFormat::Pax).unwrap()
}

fn gnu_tar(entries: &[RawEntry]) -> Vec<u8> {
    raw_tar(entries, TarFormat::Gnu).unwrap()
}

/// Rewrites the first header's octal field at `offset` (`len` bytes) with `value` and fixes
/// the header checksum, as a forger would.
fn forge_header(mut tar: Vec<u8>, offset: usize, value: &[u8]) -> Vec<u8> {
    tar[offset..offset + value.len()].copy_from_slice(value);
    tar[148..156].copy_from_slice(b"        ");
    let sum: u32 = tar[..512].iter().map(|&b| u32::from(b)).sum();
    let field = format!("{sum:06o}\0 ");
    tar[148..156].copy_from_slice(field.as_bytes());
    tar
}

fn some_files() -> Vec<RawEntry> {
    vec![
        RawEntry::dir("etc/"),
        RawEntry::file("etc/hostname", "inside"),
        RawEntry::file("etc/big", vec![b'x'; 300_000]),
    ]
}

fn truncated(mut blob: Vec<u8>) -> Vec<u8> {
    blob.truncate(blob.len() * 2 / 3);
    blob
}

fn flipped(mut blob: Vec<u8>) -> Vec<u8> {
    let mid = blob.len() / 2;
    blob[mid] ^= 0x5a;
    blob
}

fn with_garbage(mut blob: Vec<u8>) -> Vec<u8> {
    blob.extend_from_slice(b"trailing garbage that is not a stream header at all");
    blob
}

fn read(root: &Path, rel: &str) -> Vec<u8> {
    std::fs::read(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn cases() -> Vec<Case> {
    let plain = tar(&some_files());
    let gzip = compress(&plain, Compression::Gzip).unwrap();
    let zstd = compress(&plain, Compression::Zstd).unwrap();
    let long = format!("../../{}/escape-long", "d".repeat(110));
    let one_file = tar(&[RawEntry::file("f", "0123456789")]);
    vec![
        Case {
            name: "GzipTruncated",
            blob: truncated(gzip.clone()),
            compression: Compression::Gzip,
            expect: Expect::Error,
        },
        Case {
            name: "GzipCorrupt",
            blob: flipped(gzip.clone()),
            compression: Compression::Gzip,
            expect: Expect::Error,
        },
        Case {
            // Go's gzip reader reads on to a next member, finds no header and fails; containerd
            // drains the stream after the tar's end, so it sees that.
            name: "GzipTrailingGarbage",
            blob: with_garbage(gzip),
            compression: Compression::Gzip,
            expect: Expect::Error,
        },
        Case {
            name: "ZstdTruncated",
            blob: truncated(zstd.clone()),
            compression: Compression::Zstd,
            expect: Expect::Error,
        },
        Case {
            name: "ZstdCorrupt",
            blob: flipped(zstd.clone()),
            compression: Compression::Zstd,
            expect: Expect::Error,
        },
        Case {
            name: "ZstdTrailingGarbage",
            blob: with_garbage(zstd),
            compression: Compression::Zstd,
            expect: Expect::Error,
        },
        Case {
            name: "PlainTruncatedInsideAFile",
            blob: truncated(plain.clone()),
            compression: Compression::None,
            expect: Expect::Error,
        },
        Case {
            // After the end-of-archive blocks the bytes are read (for the digest), not parsed.
            name: "PlainTrailingGarbage",
            blob: with_garbage(plain),
            compression: Compression::None,
            expect: Expect::Tree(|root| assert_eq!(read(root, "etc/hostname"), b"inside")),
        },
        Case {
            name: "SizeBeyondTheStream",
            blob: forge_header(one_file.clone(), 124, b"77777777777\0"),
            compression: Compression::None,
            expect: Expect::Error,
        },
        Case {
            // Base-256 with the sign bit set: a negative size.
            name: "SizeNegative",
            blob: forge_header(
                one_file.clone(),
                124,
                &[
                    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xf6,
                ],
            ),
            compression: Compression::None,
            expect: Expect::Error,
        },
        Case {
            name: "SizeNotOctal",
            blob: forge_header(one_file.clone(), 124, b"0000000z012\0"),
            compression: Compression::None,
            expect: Expect::Error,
        },
        Case {
            name: "ChecksumWrong",
            blob: {
                let mut t = one_file;
                t[150] ^= 1;
                t
            },
            compression: Compression::None,
            expect: Expect::Error,
        },
        Case {
            // A `././@LongLink` name climbing out: cleaned to a name under the root.
            name: "GnuLongNameUpAndOut",
            blob: gnu_tar(&[RawEntry::file(&long, "long")]),
            compression: Compression::None,
            expect: Expect::Tree(|root| {
                let name = format!("{}/escape-long", "d".repeat(110));
                assert_eq!(read(root, &name), b"long");
            }),
        },
        Case {
            name: "GnuLongLinkHardlinkOut",
            blob: gnu_tar(&[RawEntry::hardlink(
                "inside-link",
                format!("../../{}/../../outside/sentinel", "e".repeat(110)),
            )]),
            compression: Compression::None,
            expect: Expect::Contained,
        },
        Case {
            // A PAX `path` record overriding the header's name.
            name: "PaxPathUpAndOut",
            blob: tar(&[RawEntry::file("harmless", "pax").pax("path", "../../../pax-escape")]),
            compression: Compression::None,
            expect: Expect::Tree(|root| assert_eq!(read(root, "pax-escape"), b"pax")),
        },
        Case {
            name: "PaxAbsolutePath",
            blob: tar(&[RawEntry::file("harmless", "abs").pax("path", "/etc/pax-abs")]),
            compression: Compression::None,
            expect: Expect::Tree(|root| assert_eq!(read(root, "etc/pax-abs"), b"abs")),
        },
        Case {
            name: "PaxLinkpathHardlinkOut",
            blob: tar(&[
                RawEntry::hardlink("hl", "harmless").pax("linkpath", "../../outside/sentinel")
            ]),
            compression: Compression::None,
            expect: Expect::Contained,
        },
        Case {
            name: "PaxLinkpathSymlinkThenWrite",
            blob: tar(&[
                RawEntry::symlink("sl", "harmless").pax("linkpath", "../../outside"),
                RawEntry::file("sl/written-through", "x"),
            ]),
            compression: Compression::None,
            expect: Expect::Contained,
        },
        Case {
            // A whiteout is a deletion, never a file: linking to it finds nothing.
            name: "HardlinkToWhiteout",
            blob: tar(&[
                RawEntry::file(".wh.gone", ""),
                RawEntry::hardlink("to-whiteout", ".wh.gone"),
            ]),
            compression: Compression::None,
            expect: Expect::Contained,
        },
        Case {
            name: "HardlinkToOpaqueMarker",
            blob: tar(&[
                RawEntry::dir("d/"),
                RawEntry::file("d/.wh..wh..opq", ""),
                RawEntry::hardlink("to-opaque", "d/.wh..wh..opq"),
            ]),
            compression: Compression::None,
            expect: Expect::Contained,
        },
        Case {
            name: "DeviceNodesWithHugeNumbers",
            blob: tar(&[
                RawEntry::char_dev("dev/huge", 0o7777777, 0o7777777),
                RawEntry::block_dev("../../dev-escape", 7, 0),
            ]),
            compression: Compression::None,
            expect: Expect::Contained,
        },
    ]
}

#[test]
fn hostile_layers_error_or_give_containerds_tree_and_never_touch_the_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = cases();
    assert!(cases.len() >= 20, "{} cases", cases.len());
    for case in cases {
        let name = case.name;
        contained(tmp.path(), &[], |root| {
            match (&case.expect, apply_hostile(&case, root)) {
                (Expect::Error, Err(_)) | (Expect::Contained, _) => {}
                (Expect::Tree(check), Ok(_)) => check(root),
                (Expect::Error, Ok(_)) => panic!("{name}: applied, containerd fails"),
                (Expect::Tree(_), Err(e)) => panic!("{name}: failed, containerd applies: {e}"),
            }
        });
    }
}
