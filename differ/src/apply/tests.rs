//! Apply without gRPC: testkit layers through [`apply_reader`] onto bind and overlay targets,
//! digest checks, and containerd's `pkg/archive` TestBreakouts ported to testkit's `RawEntry`.
//! Needs root (owners, devices, `trusted.*` and `security.capability` xattrs, overlay mounts).

use std::io::{Cursor, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use strata_common::error::{ErrorKind, Result};
use strata_proto::types::Mount;
use strata_testkit::fixtures;
use strata_testkit::layer::{Layer, RawEntry, TarOptions};
use strata_testkit::prelude::*;

use crate::apply::fetch::Verified;
use crate::apply::{Applied, apply_reader};
use crate::media;
use crate::resolve::{Root, openat2_in_root};

pub(crate) fn bind(dir: &Path) -> Mount {
    Mount::bind(dir, false)
}

fn overlay(upper: &Path, work: &Path, lowers: &[PathBuf]) -> Mount {
    let lowers: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
    Mount::overlay(Some((upper, work)), &lowers)
}

pub(crate) fn apply_blob(layer: &Layer, blob: Vec<u8>, mounts: &[Mount]) -> Result<Applied> {
    let scratch = tempfile::tempdir().unwrap();
    let verified = Verified::new(Cursor::new(blob), &layer.digest, layer.size)?;
    apply_reader(
        verified,
        media::compression_of(&layer.media_type)?,
        mounts,
        scratch.path(),
        true,
    )
}

fn apply_layer(layer: &Layer, mounts: &[Mount]) -> Result<Applied> {
    apply_blob(layer, layer.blob_bytes().unwrap(), mounts)
}

/// A version-2 `security.capability` granting CAP_NET_RAW (what `setcap cap_net_raw+ep`
/// writes); the kernel refuses malformed values.
fn cap_net_raw() -> Vec<u8> {
    let mut v = vec![0u8; 20];
    v[0..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    v[4..8].copy_from_slice(&(1u32 << 13).to_le_bytes());
    v
}

/// Everything containerd preserves, in one layer.
fn rich_changes() -> Vec<Change> {
    let long = format!("long/{}/{}.txt", "d".repeat(120), "f".repeat(200));
    tree![
        dir("bin", 0o755).mtime(1_600_000_000),
        file_mode("bin/su", "setuid", 0o4755),
        file_mode("bin/sg", "setgid", 0o2755).owner(0, 42),
        file_mode("bin/ping", "ping", 0o755).xattr("security.capability", cap_net_raw()),
        hardlink("bin/su-again", "bin/su"),
        symlink("bin/sh", "busybox"),
        symlink("abs", "/etc/owned"),
        dir("tmp", 0o1777),
        file("etc/owned", "owned").owner(1000, 1001),
        file("etc/user-xattr", "x")
            .xattr("user.one", "1")
            .xattr("trusted.two", "2"),
        file("etc/nanos", "n").mtime_ns(1_234_567_890, 123_456_789),
        dir("dev", 0o755),
        fifo("dev/fifo"),
        char_dev("dev/null", 1, 3),
        block_dev("dev/loop0", 7, 0),
        dir("private", 0o700).owner(7, 8).mtime(1_500_000_000),
        file(&long, "long names"),
        symlink("long-link", format!("../{}/target", "x".repeat(150))),
        file("empty", ""),
        file("big", vec![7u8; 3 << 20]),
    ]
}

#[test]
fn every_compression_and_name_preserves_everything() {
    let changes = rich_changes();
    let expected = Tree::from_changes(&changes).unwrap();
    for c in Compression::ALL {
        for (format, opts) in [
            ("pax", TarOptions::default()),
            ("gnu", TarOptions::default().gnu()),
        ] {
            for docker in [false, true] {
                let mut layer = Layer::with_options(changes.clone(), c, &opts).unwrap();
                if docker {
                    layer = layer.docker();
                }
                let dir = tempfile::tempdir().unwrap();
                let applied = apply_layer(&layer, &[bind(dir.path())])
                    .unwrap_or_else(|e| panic!("{c} {format} docker={docker}: {e}"));
                assert_eq!(applied.digest, layer.diff_id, "{c} {format}");
                assert_eq!(applied.size, layer.tar_bytes().unwrap().len() as u64);
                assert_eq!(applied.media_type, media::OCI_LAYER_TAR);
                assert_trees_equal(&expected, &snapshot(dir.path()).unwrap());
            }
        }
    }
}

#[test]
fn gnu_sparse_files_keep_their_holes() {
    // GNU tar writes the sparse format; testkit's writer has none.
    let src = tempfile::tempdir().unwrap();
    let f = src.path().join("sparse");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::File::create(&f).unwrap();
        file.write_all(b"head").unwrap();
        file.seek(SeekFrom::Start(64 << 20)).unwrap();
        file.write_all(b"tail").unwrap();
        file.set_len(80 << 20).unwrap();
    }
    let tar = src.path().join("l.tar");
    let st = std::process::Command::new("tar")
        .args(["--sparse", "--format=gnu", "-cf"])
        .arg(&tar)
        .arg("-C")
        .arg(src.path())
        .arg("sparse")
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = std::fs::read(&tar).unwrap();
    assert!(bytes.len() < 1 << 20, "tar did not write a sparse entry");
    let layer = Layer::from_tar(bytes, Compression::Zstd).unwrap();
    let dir = tempfile::tempdir().unwrap();
    apply_layer(&layer, &[bind(dir.path())]).unwrap();
    let out = dir.path().join("sparse");
    let md = std::fs::metadata(&out).unwrap();
    assert_eq!(md.len(), 80 << 20);
    assert!(
        md.blocks() * 512 < 1 << 20,
        "{} blocks allocated",
        md.blocks()
    );
    let data = std::fs::read(&out).unwrap();
    assert_eq!(&data[..4], b"head");
    assert_eq!(&data[64 << 20..(64 << 20) + 4], b"tail");
    assert!(data[4..64 << 20].iter().all(|b| *b == 0));
}

#[test]
fn pax_sparse_files_are_left_to_walking() {
    let layer = Layer::from_raw(
        &[RawEntry::file("GNUSparseFile.0/f", "map+data")
            .pax("GNU.sparse.major", "1")
            .pax("GNU.sparse.minor", "0")
            .pax("GNU.sparse.name", "f")],
        Compression::None,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = apply_layer(&layer, &[bind(dir.path())]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unimplemented, "{e}");
}

#[test]
fn digest_size_and_corruption_are_refused() {
    let layer = Layer::new(rich_changes(), Compression::Gzip).unwrap();
    let blob = layer.blob_bytes().unwrap();

    let mut wrong_digest = layer.clone();
    wrong_digest.digest = strata_testkit::sha256_digest(b"something else");
    let dir = tempfile::tempdir().unwrap();
    let e = apply_layer(&wrong_digest, &[bind(dir.path())]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    assert!(e.message().contains("digest mismatch"), "{e}");

    let mut wrong_size = layer.clone();
    wrong_size.size += 1;
    let dir = tempfile::tempdir().unwrap();
    let e = apply_layer(&wrong_size, &[bind(dir.path())]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");

    // A flipped byte in the middle breaks the gzip stream first; the digest is still what
    // gets reported.
    let mut corrupt = blob.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    let dir = tempfile::tempdir().unwrap();
    let e = apply_blob(&layer, corrupt, &[bind(dir.path())]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");

    let truncated = blob[..blob.len() - 100].to_vec();
    let dir = tempfile::tempdir().unwrap();
    let e = apply_blob(&layer, truncated, &[bind(dir.path())]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");

    // An uncompressed layer whose bytes were swapped for another valid tar.
    let plain = Layer::new(tree![file("a", "a")], Compression::None).unwrap();
    let other = strata_testkit::layer::tar(&tree![file("a", "b")]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = apply_blob(&plain, other, &[bind(dir.path())]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
}

#[test]
fn docker_plain_tar_type_detects_compression_like_containerd() {
    for c in Compression::ALL {
        let layer = Layer::new(tree![file("a", "a")], c)
            .unwrap()
            .with_media_type("application/vnd.docker.image.rootfs.diff.tar");
        let dir = tempfile::tempdir().unwrap();
        let applied = apply_layer(&layer, &[bind(dir.path())]).unwrap();
        assert_eq!(applied.digest, layer.diff_id, "{c}");
        assert_trees_equal(&layer.tree().unwrap(), &snapshot(dir.path()).unwrap());
    }
}

#[test]
fn unknown_media_types_are_unimplemented_before_reading() {
    let mut layer = Layer::new(tree![file("a", "a")], Compression::Gzip).unwrap();
    layer.media_type = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted".into();
    let dir = tempfile::tempdir().unwrap();
    let e = apply_layer(&layer, &[bind(dir.path())]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unimplemented);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn mixed_fixture_on_bind_with_oci_whiteouts() {
    for c in Compression::ALL {
        let image = fixtures::mixed(c).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for layer in image.layers() {
            let applied = apply_layer(layer, &[bind(dir.path())]).unwrap();
            assert_eq!(applied.digest, layer.diff_id);
        }
        assert_trees_equal(
            &image.expected_tree().unwrap(),
            &snapshot(dir.path()).unwrap(),
        );
    }
}

/// Unmounts on drop, so a failing assertion leaves nothing mounted.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn mixed_fixture_into_overlay_upperdirs() {
    let image = fixtures::mixed(Compression::Zstd).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut uppers: Vec<PathBuf> = Vec::new();
    for (i, layer) in image.layers().iter().enumerate() {
        let upper = tmp.path().join(format!("{i}/fs"));
        let work = tmp.path().join(format!("{i}/work"));
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let lowers: Vec<PathBuf> = uppers.iter().rev().cloned().collect();
        apply_layer(layer, &[overlay(&upper, &work, &lowers)]).unwrap();
        uppers.push(upper);
    }
    // Whiteouts must be overlay's own markers in the upperdirs, never OCI files.
    for upper in &uppers {
        let t = snapshot(upper).unwrap();
        for (p, _) in t.iter() {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            assert!(
                !name.unwrap_or_default().starts_with(".wh."),
                "OCI whiteout {} left in {}",
                p.display(),
                upper.display()
            );
        }
    }
    let lowers: Vec<&Path> = uppers.iter().rev().map(PathBuf::as_path).collect();
    let (merged, _guard) = merged(tmp.path(), "merged", &lowers);
    // Through overlay, a hard link whose sibling a later layer whited out still reports the
    // lower link count, and inode numbers of lower files are overlay's own: hard link groups
    // are checked on the bind target instead.
    assert_trees_equal_with(
        &image.expected_tree().unwrap(),
        &snapshot(&merged).unwrap(),
        &Compare::default().ignore_hardlinks(),
    );
}

#[test]
fn overlay_parents_copy_lower_metadata_and_userxattr_opaque() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    std::fs::create_dir(&lower).unwrap();
    apply(
        &lower,
        &tree![
            dir("a", 0o750).owner(5, 6).xattr("user.keep", "me"),
            dir("a/b", 0o711).mtime(1_400_000_000),
            file("a/b/old", "old"),
        ],
    )
    .unwrap();
    let upper = tmp.path().join("upper");
    let work = tmp.path().join("work");
    std::fs::create_dir(&upper).unwrap();
    std::fs::create_dir(&work).unwrap();
    // Only a/b/new in the layer: a and a/b are created in the upperdir as the lower has them.
    let layer = Layer::from_raw(
        &[
            RawEntry::file("a/b/new", "new"),
            RawEntry::dir("c/"),
            RawEntry::file("c/.wh..wh..opq", ""),
            RawEntry::file("a/.wh.gone", "").owner(3, 4),
        ],
        Compression::None,
    )
    .unwrap();
    let mut m = overlay(&upper, &work, std::slice::from_ref(&lower));
    m.options.push("userxattr".into());
    apply_layer(&layer, &[m]).unwrap();
    let a = std::fs::metadata(upper.join("a")).unwrap();
    assert_eq!((a.mode() & 0o7777, a.uid(), a.gid()), (0o750, 5, 6));
    assert_eq!(
        xattr_of(&upper.join("a"), "user.keep").as_deref(),
        Some(&b"me"[..])
    );
    let b = std::fs::metadata(upper.join("a/b")).unwrap();
    assert_eq!(b.mode() & 0o7777, 0o711);
    assert_eq!(
        xattr_of(&upper.join("c"), "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(xattr_of(&upper.join("c"), "trusted.overlay.opaque"), None);
    let gone = std::fs::symlink_metadata(upper.join("a/gone")).unwrap();
    assert_eq!(gone.mode() & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!((gone.rdev(), gone.uid(), gone.gid()), (0, 3, 4));
    assert!(
        !upper.join("a/b/old").exists(),
        "lower content must not be copied up"
    );
}

fn xattr_of(path: &Path, key: &str) -> Option<Vec<u8>> {
    let p = crate::resolve::cstring(path.as_os_str().as_encoded_bytes()).unwrap();
    crate::resolve::get_xattr(&p, key.as_bytes()).ok()
}

#[test]
fn oci_opaque_keeps_what_the_layer_wrote() {
    let dir = tempfile::tempdir().unwrap();
    apply(
        dir.path(),
        &tree![file("d/old", "old"), file("d/sub/x", "x")],
    )
    .unwrap();
    // Out of order on purpose: an entry written before the marker survives it.
    let layer = Layer::from_raw(
        &[
            RawEntry::dir("d/"),
            RawEntry::file("d/new", "new"),
            RawEntry::file("d/.wh..wh..opq", ""),
            RawEntry::file("d/newer", "newer"),
        ],
        Compression::Gzip,
    )
    .unwrap();
    apply_layer(&layer, &[bind(dir.path())]).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["new", "newer"]);
}

// ---- containerd's TestBreakouts, with testkit's RawEntry ----

const UNBROKEN: &str = "unbroken";

struct Case {
    name: &'static str,
    before: Vec<Change>,
    tar: Vec<RawEntry>,
    /// `Err(kind)`: the apply must fail with this class.
    expect: std::result::Result<fn(&Path), ErrorKind>,
}

/// (dev, ino) of `rel` resolved inside `root`, following symlinks as a container would.
fn inode(root: &Path, rel: &str) -> (u64, u64) {
    let r = Root::open(root).unwrap();
    let fd = openat2_in_root(r.fd(), rel.as_bytes(), libc::O_PATH)
        .unwrap_or_else(|e| panic!("{rel}: {e}"));
    let st = crate::resolve::fstat(fd.as_raw_fd()).unwrap();
    (st.st_dev, st.st_ino)
}

fn read_in(root: &Path, rel: &str) -> String {
    let r = Root::open(root).unwrap();
    let fd = openat2_in_root(r.fd(), rel.as_bytes(), libc::O_RDONLY)
        .unwrap_or_else(|e| panic!("{rel}: {e}"));
    let mut s = String::new();
    std::fs::File::from(fd).read_to_string(&mut s).unwrap();
    s
}

fn unbroken(root: &Path) {
    assert_eq!(read_in(root, "etc/unbroken"), UNBROKEN);
}

fn missing(root: &Path, rel: &str) -> bool {
    std::fs::symlink_metadata(root.join(rel)).is_err()
}

fn passwd() -> Vec<Change> {
    tree![dir("etc", 0o755), file("etc/passwd", "inside")]
}

fn breakout_cases(outside: &Path) -> Vec<Case> {
    let f = RawEntry::file;
    let d = RawEntry::dir;
    let s = RawEntry::symlink;
    let l = RawEntry::hardlink;
    let outside_target = outside.join("perm400").display().to_string();
    let outside_link = outside
        .join("also-exists-outside-root")
        .display()
        .to_string();
    vec![
        Case {
            name: "SymlinkAbsolute",
            before: vec![],
            tar: vec![
                d("etc"),
                s("localetc", "/etc"),
                f("/localetc/unbroken", UNBROKEN),
            ],
            expect: Ok(unbroken),
        },
        Case {
            name: "SymlinkUpAndOut",
            before: vec![],
            tar: vec![
                d("etc"),
                d("dummy"),
                s("localetc", "/dummy/../etc"),
                f("/localetc/unbroken", UNBROKEN),
            ],
            expect: Ok(unbroken),
        },
        Case {
            name: "SymlinkMultipleAbsolute",
            before: vec![],
            tar: vec![
                d("etc"),
                d("dummy"),
                s("/dummy/etc", "/etc"),
                s("localetc", "/dummy/etc"),
                f("/dummy/etc/unbroken", UNBROKEN),
            ],
            expect: Ok(unbroken),
        },
        Case {
            name: "SymlinkMultipleRelative",
            before: vec![],
            tar: vec![
                d("etc"),
                d("dummy"),
                s("/dummy/etc", "/etc"),
                s("localetc", "./dummy/etc"),
                f("/dummy/etc/unbroken", UNBROKEN),
            ],
            expect: Ok(unbroken),
        },
        Case {
            name: "SymlinkEmptyFile",
            before: vec![],
            tar: vec![
                d("etc"),
                f("etc/emptied", "notempty"),
                s("localetc", "/etc"),
                f("/localetc/emptied", ""),
            ],
            expect: Ok(|root| assert_eq!(read_in(root, "etc/emptied"), "")),
        },
        Case {
            name: "HardlinkRelative",
            before: vec![],
            tar: vec![
                d("etc"),
                f("/etc/passwd", "inside"),
                d("breakouts"),
                s("breakouts/d1", "../../etc"),
                l("breakouts/mypasswd", "/breakouts/d1/passwd"),
            ],
            expect: Ok(|root| {
                assert_eq!(inode(root, "breakouts/mypasswd"), inode(root, "etc/passwd"))
            }),
        },
        Case {
            name: "HardlinkDownAndOut",
            before: vec![],
            tar: vec![
                d("etc"),
                f("/etc/passwd", "inside"),
                d("breakouts"),
                d("downandout"),
                s("breakouts/d1", "../downandout/../../etc"),
                l("breakouts/mypasswd", "/breakouts/d1/passwd"),
            ],
            expect: Ok(|root| {
                assert_eq!(inode(root, "breakouts/mypasswd"), inode(root, "etc/passwd"))
            }),
        },
        Case {
            name: "HardlinkAbsolute",
            before: vec![],
            tar: vec![
                d("etc"),
                f("/etc/passwd", "inside"),
                s("localetc", "/etc"),
                l("localpasswd", "/localetc/passwd"),
            ],
            expect: Ok(|root| assert_eq!(inode(root, "localpasswd"), inode(root, "etc/passwd"))),
        },
        Case {
            name: "HardlinkRelativeLong",
            before: vec![],
            tar: vec![
                d("etc"),
                f("/etc/passwd", "inside"),
                s("localetc", "../../../../../../../etc"),
                l("localpasswd", "/localetc/passwd"),
            ],
            expect: Ok(|root| assert_eq!(inode(root, "localpasswd"), inode(root, "etc/passwd"))),
        },
        Case {
            name: "HardlinkRelativeUpAndOut",
            before: vec![],
            tar: vec![
                d("etc"),
                f("/etc/passwd", "inside"),
                s("localetc", "upandout/../../../etc"),
                l("localpasswd", "/localetc/passwd"),
            ],
            expect: Ok(|root| assert_eq!(inode(root, "localpasswd"), inode(root, "etc/passwd"))),
        },
        Case {
            name: "HardlinkDirectRelative",
            before: vec![],
            tar: vec![
                d("etc"),
                f("/etc/passwd", "inside"),
                l("localpasswd", "../../../../../etc/passwd"),
            ],
            expect: Ok(|root| assert_eq!(inode(root, "localpasswd"), inode(root, "etc/passwd"))),
        },
        Case {
            name: "HardlinkDirectAbsolute",
            before: vec![],
            tar: vec![
                d("etc"),
                f("/etc/passwd", "inside"),
                l("localpasswd", "/etc/passwd"),
            ],
            expect: Ok(|root| assert_eq!(inode(root, "localpasswd"), inode(root, "etc/passwd"))),
        },
        Case {
            name: "SymlinkParentDirectory",
            before: vec![],
            tar: vec![
                d("etc"),
                f("/etc/passwd", "inside"),
                s("..", "/etc/"),
                l("localpasswd", "/etc/passwd"),
            ],
            expect: Ok(|root| assert_eq!(inode(root, "localpasswd"), inode(root, "etc/passwd"))),
        },
        Case {
            name: "SymlinkEmptyFilename",
            before: vec![],
            tar: vec![
                d("etc"),
                f("/etc/passwd", "inside"),
                s("", "/etc/"),
                l("localpasswd", "/etc/passwd"),
            ],
            expect: Ok(|root| assert_eq!(inode(root, "localpasswd"), inode(root, "etc/passwd"))),
        },
        Case {
            name: "SymlinkParentRelative",
            before: vec![],
            tar: vec![
                d("etc"),
                f("/etc/passwd", "inside"),
                s("localetc/sub/..", "/etc/"),
                l("/localetc/localpasswd", "/etc/passwd"),
            ],
            expect: Ok(|root| {
                assert_eq!(
                    inode(root, "localetc/localpasswd"),
                    inode(root, "etc/passwd")
                )
            }),
        },
        Case {
            name: "SymlinkSlashEnded",
            before: vec![],
            tar: vec![
                d("etc"),
                f("/etc/passwd", "inside"),
                d("localetc/"),
                l("/localetc/localpasswd", "/etc/passwd"),
            ],
            expect: Ok(|root| {
                assert_eq!(
                    inode(root, "localetc/localpasswd"),
                    inode(root, "etc/passwd")
                )
            }),
        },
        Case {
            name: "SymlinkOverrideDirectory",
            before: tree![passwd(), dir("localetc", 0o755)],
            tar: vec![
                s("localetc", "/etc"),
                l("/localetc/localpasswd", "/etc/passwd"),
            ],
            expect: Ok(|root| {
                assert_eq!(
                    inode(root, "localetc/localpasswd"),
                    inode(root, "etc/passwd")
                )
            }),
        },
        Case {
            name: "SymlinkOverrideDirectoryRelative",
            before: tree![passwd(), dir("localetc", 0o755)],
            tar: vec![
                s("localetc", "../../etc"),
                l("/localetc/localpasswd", "/etc/passwd"),
            ],
            expect: Ok(|root| {
                assert_eq!(
                    inode(root, "localetc/localpasswd"),
                    inode(root, "etc/passwd")
                )
            }),
        },
        Case {
            name: "DirectoryOverrideSymlink",
            before: tree![passwd(), symlink("localetc", "/etc")],
            tar: vec![d("/localetc/"), l("/localetc/localpasswd", "/etc/passwd")],
            expect: Ok(|root| {
                assert!(
                    std::fs::symlink_metadata(root.join("localetc"))
                        .unwrap()
                        .is_dir()
                );
                assert_eq!(
                    inode(root, "localetc/localpasswd"),
                    inode(root, "etc/passwd")
                )
            }),
        },
        Case {
            name: "DirectoryOverrideSymlinkAndHardlink",
            before: tree![
                passwd(),
                symlink("localetc", "etc"),
                hardlink("etc/localpasswd", "etc/passwd")
            ],
            tar: vec![d("/localetc/"), f("/localetc/localpasswd", "different")],
            expect: Ok(|root| {
                assert_ne!(
                    inode(root, "localetc/localpasswd"),
                    inode(root, "etc/passwd")
                );
                assert_eq!(read_in(root, "etc/passwd"), "inside");
            }),
        },
        Case {
            name: "WhiteoutRootParent",
            before: passwd(),
            tar: vec![f(".wh...", "")],
            expect: Err(ErrorKind::InvalidArgument),
        },
        Case {
            name: "WhiteoutParent",
            before: passwd(),
            tar: vec![f("etc/.wh...", "")],
            expect: Err(ErrorKind::InvalidArgument),
        },
        Case {
            name: "WhiteoutRoot",
            before: passwd(),
            tar: vec![f(".wh..", "")],
            expect: Err(ErrorKind::InvalidArgument),
        },
        Case {
            name: "WhiteoutCurrentDirectory",
            before: passwd(),
            tar: vec![f("etc/.wh..", "")],
            expect: Err(ErrorKind::InvalidArgument),
        },
        Case {
            name: "WhiteoutSymlink",
            before: tree![passwd(), symlink("localetc", "/etc")],
            tar: vec![f(".wh.localetc", "")],
            expect: Ok(|root| {
                assert_eq!(read_in(root, "etc/passwd"), "inside");
                assert!(missing(root, "localetc"));
            }),
        },
        Case {
            name: "WhiteoutSymlinkPath",
            before: tree![
                passwd(),
                file("etc/whitedout", "w"),
                symlink("localetc", "/etc")
            ],
            tar: vec![f("localetc/.wh.whitedout", "")],
            expect: Ok(|root| {
                assert_eq!(read_in(root, "etc/passwd"), "inside");
                assert!(missing(root, "etc/whitedout"));
            }),
        },
        Case {
            name: "WhiteoutDirectoryName",
            before: tree![passwd(), symlink("localetc", "/etc")],
            tar: vec![f(".wh.etc/somefile", "non-empty")],
            expect: Ok(|root| {
                assert_eq!(read_in(root, "etc/passwd"), "inside");
                assert_eq!(read_in(root, ".wh.etc/somefile"), "non-empty");
            }),
        },
        Case {
            name: "WhiteoutDeadSymlinkParent",
            before: tree![passwd(), symlink("localetc", "/dne")],
            tar: vec![f("localetc/.wh.etc", "")],
            expect: Ok(|root| assert_eq!(read_in(root, "etc/passwd"), "inside")),
        },
        Case {
            name: "WhiteoutRelativePath",
            before: tree![passwd(), symlink("localetc", "/dne")],
            tar: vec![f("dne/../.wh.etc", "")],
            expect: Ok(|root| assert!(missing(root, "etc"))),
        },
        Case {
            name: "WhiteoutOutsideRoot",
            before: passwd(),
            tar: vec![f("../../outside/.wh.perm400", ""), f("/../.wh.outside", "")],
            expect: Ok(|root| assert_eq!(read_in(root, "etc/passwd"), "inside")),
        },
        Case {
            name: "HardlinkSymlinkBeforeCreateTarget",
            before: vec![],
            tar: vec![
                d("etc"),
                s("localpasswd", "/etc/passwd"),
                l("localpasswd-dup", "localpasswd"),
                f("/etc/passwd", "after"),
            ],
            expect: Ok(|root| {
                assert_eq!(inode(root, "localpasswd-dup"), inode(root, "etc/passwd"))
            }),
        },
        Case {
            name: "HardlinkSymlinkRelative",
            before: vec![],
            tar: vec![
                d("etc"),
                f("/etc/passwd", "inside"),
                s("passwdlink", "../../../../../etc/passwd"),
                l("localpasswd", "/passwdlink"),
            ],
            expect: Ok(|root| {
                let md = std::fs::symlink_metadata(root.join("localpasswd")).unwrap();
                assert!(md.file_type().is_symlink());
                assert_eq!(inode(root, "localpasswd"), inode(root, "etc/passwd"));
            }),
        },
        Case {
            name: "HardlinkSymlinkAbsolute",
            before: vec![],
            tar: vec![
                d("etc"),
                f("/etc/passwd", "inside"),
                s("passwdlink", "/etc/passwd"),
                l("localpasswd", "/passwdlink"),
            ],
            expect: Ok(|root| {
                let md = std::fs::symlink_metadata(root.join("localpasswd")).unwrap();
                assert!(md.file_type().is_symlink());
                assert_eq!(inode(root, "localpasswd"), inode(root, "etc/passwd"));
            }),
        },
        Case {
            name: "HardlinkSymlinkChmod",
            before: vec![],
            tar: vec![
                s(outside_link.as_str(), outside_target.as_str()),
                l("sketchylink", outside_link.as_str()).mode(0o777),
                f("/etc/../../escape", "x").mode(0o777),
            ],
            expect: Ok(|root| assert_eq!(read_in(root, "escape"), "x")),
        },
        Case {
            name: "DirectoryCreation",
            before: tree![dir("etc", 0o755)],
            tar: vec![
                d("/etc/subdir"),
                d("/etc/subdir2/"),
                d("/etc/subdir2/more"),
                d("/other/noparent-1/1"),
                d("/other/noparent-2/2/"),
            ],
            expect: Ok(|root| {
                for p in [
                    "etc/subdir",
                    "etc/subdir2/more",
                    "other/noparent-1/1",
                    "other/noparent-2/2",
                ] {
                    assert!(root.join(p).is_dir(), "{p}");
                }
            }),
        },
        Case {
            name: "DeviceAndFifoOutside",
            before: vec![],
            tar: vec![
                RawEntry::char_dev("../../null-outside", 1, 3),
                RawEntry::fifo("/../fifo-outside"),
            ],
            expect: Ok(|root| {
                assert!(!missing(root, "null-outside"));
                assert!(!missing(root, "fifo-outside"));
            }),
        },
    ]
}

/// Gives `run` a fresh `root` (holding `before`) beside a fresh `outside` (a 0400 file whose
/// mode must not change, a file whose presence shows nothing was deleted), both in `tmp`, and
/// asserts that nothing but `root` changed.
pub(crate) fn contained<T>(tmp: &Path, before: &[Change], run: impl FnOnce(&Path) -> T) -> T {
    let outside_only = || {
        let mut tree = snapshot(tmp).unwrap();
        tree.retain(|p, _| !p.starts_with("root"));
        tree
    };
    let (outside, root) = (tmp.join("outside"), tmp.join("root"));
    for d in [&outside, &root] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir(d).unwrap();
    }
    apply(
        &outside,
        &tree![file_mode("perm400", "...", 0o400), file("sentinel", "s")],
    )
    .unwrap();
    apply(&root, before).unwrap();
    let outside_before = outside_only();
    let out = run(&root);
    assert_trees_equal(&outside_before, &outside_only());
    out
}

#[test]
fn breakouts_never_leave_the_root() {
    for compression in [Compression::None, Compression::Gzip] {
        let tmp = tempfile::tempdir().unwrap();
        let cases = breakout_cases(&tmp.path().join("outside"));
        assert!(cases.len() >= 34, "{} cases", cases.len());
        for case in cases {
            let name = case.name;
            contained(tmp.path(), &case.before, |root| {
                let layer = Layer::from_raw(&case.tar, compression).unwrap();
                match (&case.expect, apply_layer(&layer, &[bind(root)])) {
                    (Ok(check), Ok(_)) => check(root),
                    (Err(kind), Err(e)) => assert_eq!(e.kind(), *kind, "{name}: {e}"),
                    (Ok(_), Err(e)) => panic!("{name}: apply failed: {e}"),
                    (Err(kind), Ok(_)) => panic!("{name}: applied, expected {kind:?}"),
                }
            });
        }
    }
}

/// containerd's `createTarFile` applies a hard link entry's owner, xattrs, mode and times to
/// the inode after `link`: whether the target came earlier in the same layer or from what
/// was there before (a lower layer applied to the same directory).
#[test]
fn hard_link_entries_set_the_shared_inodes_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    apply(&root, &tree![file_mode("lower", "l", 0o600)]).unwrap();
    let tar = vec![
        RawEntry::file("same", "s")
            .mode(0o644)
            .owner(0, 0)
            .mtime(1000),
        RawEntry::hardlink("same-link", "same")
            .mode(0o4777)
            .owner(1234, 5678)
            .mtime(2000)
            .xattr("user.from-link", "yes"),
        RawEntry::hardlink("lower-link", "lower")
            .mode(0o751)
            .owner(42, 43)
            .mtime(3000),
        // A link to a symlink: the symlink's owner changes, nothing is followed.
        RawEntry::symlink("sym", "same"),
        RawEntry::hardlink("sym-link", "sym")
            .mode(0o600)
            .owner(7, 8)
            .mtime(4000),
    ];
    let layer = Layer::from_raw(&tar, Compression::None).unwrap();
    apply_layer(&layer, &[bind(&root)]).unwrap();
    let md = |rel: &str| std::fs::symlink_metadata(root.join(rel)).unwrap();
    for name in ["same", "same-link"] {
        let m = md(name);
        assert_eq!(m.mode() & 0o7777, 0o4777, "{name}");
        assert_eq!((m.uid(), m.gid(), m.mtime()), (1234, 5678, 2000), "{name}");
        assert_eq!(m.nlink(), 2);
    }
    assert_eq!(
        xattr_of(&root.join("same"), "user.from-link").as_deref(),
        Some(&b"yes"[..])
    );
    let m = md("lower");
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
        (0o751, 42, 43, 3000)
    );
    let s = md("sym-link");
    assert!(s.file_type().is_symlink());
    assert_eq!((s.uid(), s.gid()), (7, 8));
    let target = md("same");
    assert_eq!(
        target.mode() & 0o7777,
        0o4777,
        "not chmodded through the symlink"
    );
    assert_eq!(target.mtime(), 2000, "no times through the symlink");
}

/// Merged view of `layers` (highest first), mounted read-only until the guard drops.
fn merged(tmp: &Path, name: &str, layers: &[&Path]) -> (PathBuf, Mounted) {
    let dir = tmp.join(name);
    std::fs::create_dir(&dir).unwrap();
    let lowers: Vec<String> = layers.iter().map(|p| p.display().to_string()).collect();
    nix::mount::mount(
        Some("overlay"),
        &dir,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(format!("lowerdir={}", lowers.join(":")).as_str()),
    )
    .unwrap();
    (dir.clone(), Mounted(dir))
}

/// containerd applies onto the mounted overlay, where linking to a file of a lower layer
/// makes the kernel copy it up first; writing the upperdir directly, strata copies it up
/// itself. The oracle: the same layer applied through a mounted overlay.
#[test]
fn hard_link_to_a_lower_layers_file_copies_it_up_as_overlay_does() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    std::fs::create_dir(&lower).unwrap();
    apply(
        &lower,
        &tree![
            dir("d", 0o755),
            file_mode("d/lower-file", "from the lower layer", 0o600)
                .owner(5, 6)
                .xattr("user.kept", "1")
                .mtime(1_500_000_000),
            symlink("d/lower-sym", "lower-file").owner(7, 8),
            file("gone", "whited out above"),
        ],
    )
    .unwrap();
    let layer = Layer::from_raw(
        &[
            RawEntry::hardlink("d/new-link", "d/lower-file")
                .mode(0o751)
                .owner(42, 43)
                .mtime(3000),
            RawEntry::hardlink("top-link", "d/lower-sym").owner(9, 9),
        ],
        Compression::None,
    )
    .unwrap();
    let dirs = |name: &str| {
        let (u, w) = (
            tmp.path().join(name).join("fs"),
            tmp.path().join(name).join("work"),
        );
        std::fs::create_dir_all(&u).unwrap();
        std::fs::create_dir_all(&w).unwrap();
        (u, w)
    };
    // strata: the upperdir written directly.
    let (upper, work) = dirs("strata");
    apply_layer(
        &layer,
        &[overlay(&upper, &work, std::slice::from_ref(&lower))],
    )
    .unwrap();
    let shared = |a: &str, b: &str| {
        let (a, b) = (upper.join(a), upper.join(b));
        std::fs::symlink_metadata(a).unwrap().ino() == std::fs::symlink_metadata(b).unwrap().ino()
    };
    assert!(
        shared("d/new-link", "d/lower-file"),
        "one inode in the upper"
    );
    assert!(shared("top-link", "d/lower-sym"));
    // The oracle: applied through the mounted overlay.
    let (oracle_upper, oracle_work) = dirs("oracle");
    let mounted = tmp.path().join("rw");
    std::fs::create_dir(&mounted).unwrap();
    nix::mount::mount(
        Some("overlay"),
        &mounted,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(
            format!(
                "index=off,lowerdir={},upperdir={},workdir={}",
                lower.display(),
                oracle_upper.display(),
                oracle_work.display()
            )
            .as_str(),
        ),
    )
    .unwrap();
    let rw = Mounted(mounted.clone());
    apply_layer(&layer, &[bind(&mounted)]).unwrap();
    drop(rw);
    let (ours, _g1) = merged(tmp.path(), "ours", &[&upper, &lower]);
    let (theirs, _g2) = merged(tmp.path(), "theirs", &[&oracle_upper, &lower]);
    // The directory holding the new link changed just now in both, at different moments.
    let opts = Compare {
        ignore_dir_mtimes: true,
        ..Default::default()
    };
    assert_trees_equal_with(
        &snapshot(&theirs).unwrap(),
        &snapshot(&ours).unwrap(),
        &opts,
    );

    // A layer between that deletes the file (an overlay whiteout) or hides its directory
    // (opaque): nothing to link to, as through the mounted overlay.
    let between = tmp.path().join("between");
    std::fs::create_dir_all(between.join("d")).unwrap();
    nix::sys::stat::mknod(
        &between.join("gone"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
        0,
    )
    .unwrap();
    let d = std::fs::File::open(between.join("d")).unwrap();
    crate::resolve::fsetxattr(d.as_raw_fd(), "trusted.overlay.opaque", b"y").unwrap();
    for target in ["gone", "d/lower-file"] {
        let layer = Layer::from_raw(
            &[RawEntry::hardlink("to-deleted", target)],
            Compression::None,
        )
        .unwrap();
        let (upper, work) = dirs(&format!("deleted-{}", target.replace('/', "-")));
        let lowers = [between.clone(), lower.clone()];
        let e = apply_layer(&layer, &[overlay(&upper, &work, &lowers)]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{target}: {e}");
    }
}
