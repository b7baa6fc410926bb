//! Diff without gRPC: trees made with testkit, compared, written as layers, applied back with
//! strata's own Apply, and the overlay fast path held to the bytes of the full comparison.
//! Needs root (overlay mounts, owners, devices, `trusted.*` xattrs).

use std::io::Cursor;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use strata_common::mount::{mount, unmount};
use strata_proto::types::Mount;
use strata_testkit::fixtures;
use strata_testkit::layer::read_raw;
use strata_testkit::prelude::*;

use crate::apply::apply_reader;
use crate::apply::target;
use crate::diff::changes::{self, Kind, OverlayError};
use crate::diff::compare::{self, Method};
use crate::diff::compress::Levels;
use crate::diff::layer::LayerOptions;
use crate::media;

fn bind(dir: &Path) -> Mount {
    Mount::bind(dir, false)
}

fn overlay(upper: &Path, work: &Path, lower: &Path) -> Mount {
    Mount::overlay(Some((upper, work)), &[lower])
}

/// The layer (uncompressed) from `lower` to `upper` mounts, and how it was found.
fn layer(lower: &[Mount], upper: &[Mount], opts: &LayerOptions) -> (Vec<u8>, Method) {
    let scratch = tempfile::tempdir().unwrap();
    let mut tar = Vec::new();
    let (diff_id, _, method) = compare::write_diff(
        lower,
        upper,
        scratch.path(),
        opts,
        media::Compression::None,
        Levels::default(),
        &mut tar,
    )
    .unwrap();
    assert_eq!(
        diff_id, None,
        "an uncompressed layer's diffID is its digest"
    );
    (tar, method)
}

/// Applies an uncompressed layer onto `dir` with strata's Apply.
fn apply_tar(tar: Vec<u8>, dir: &Path) {
    let scratch = tempfile::tempdir().unwrap();
    apply_reader(
        Cursor::new(tar),
        media::Compression::None,
        &[bind(dir)],
        scratch.path(),
        false,
    )
    .unwrap();
}

/// What a layer can carry: the diff keeps only `security.capability` (as containerd's walking
/// differ does) and mtimes to the second.
fn comparison() -> Compare {
    Compare::strict()
        .mtimes_to_the_second()
        .ignore_root()
        .ignore_xattr("user.")
        .ignore_xattr("trusted.")
}

/// A copy of `dir` with every time, owner, mode, xattr and link kept (`cp -a`): implicit
/// directories made by two separate materializations would differ in mtime.
fn copy_of(dir: &Path) -> tempfile::TempDir {
    let target = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", dir.display()))
        .arg(target.path())
        .status()
        .unwrap();
    assert!(status.success());
    target
}

fn materialize(dir: &Path, layers: &[&[Change]]) {
    for l in layers {
        apply(dir, l).unwrap();
    }
}

#[test]
fn every_mixed_layer_round_trips_through_a_double_walk() {
    // mixed's six layers hold every whiteout kind, hardlinks, long names, devices.
    let layers = fixtures::mixed_layers(1);
    for k in 1..layers.len() {
        let below: Vec<&[Change]> = layers[..k].iter().map(|(_, c)| c.as_slice()).collect();
        let lower = tempfile::tempdir().unwrap();
        materialize(lower.path(), &below);
        // Copies, so what layer k leaves alone is identical to the second in all three.
        let upper = copy_of(lower.path());
        apply(upper.path(), &layers[k].1).unwrap();
        let target = copy_of(lower.path());
        let (tar, method) = layer(
            &[bind(lower.path())],
            &[bind(upper.path())],
            &LayerOptions::default(),
        );
        assert_eq!(method, Method::DoubleWalk);
        apply_tar(tar, target.path());
        let want = snapshot(upper.path()).unwrap();
        let got = snapshot(target.path()).unwrap();
        assert_trees_equal_with(&want, &got, &comparison());
    }
}

#[test]
fn no_parent_means_everything_is_added() {
    let upper = tempfile::tempdir().unwrap();
    let changes = tree![
        dir("d", 0o750).owner(3, 4),
        file("d/f", "x"),
        hardlink("d/g", "d/f"),
        symlink("s", "d/f"),
        fifo("p"),
        char_dev("c", 1, 3),
    ];
    apply(upper.path(), &changes).unwrap();
    let (tar, _) = layer(&[], &[bind(upper.path())], &LayerOptions::default());
    let target = tempfile::tempdir().unwrap();
    apply_tar(tar.clone(), target.path());
    assert_trees_equal_with(
        &snapshot(upper.path()).unwrap(),
        &snapshot(target.path()).unwrap(),
        &comparison(),
    );
    let names: Vec<_> = read_raw(&tar[..])
        .unwrap()
        .into_iter()
        .map(|e| (String::from_utf8(e.name).unwrap(), e.typeflag))
        .collect();
    assert_eq!(
        names,
        [
            ("c".to_string(), b'3'),
            ("d/".into(), b'5'),
            ("d/f".into(), b'0'),
            ("d/g".into(), b'1'),
            ("p".into(), b'6'),
            ("s".into(), b'2'),
        ]
    );
}

/// A lower tree, an overlay on it changed through the merged view, then unmounted.
struct OverlayCase {
    _dir: tempfile::TempDir,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
}

impl OverlayCase {
    fn new(base: &[Change], change: impl FnOnce(&Path)) -> OverlayCase {
        let dir = tempfile::tempdir().unwrap();
        let [lower, upper, work, merged] =
            ["lower", "upper", "work", "merged"].map(|n| dir.path().join(n));
        for d in [&lower, &upper, &work, &merged] {
            std::fs::create_dir(d).unwrap();
        }
        apply(&lower, base).unwrap();
        let m = overlay(&upper, &work, &lower);
        mount(&m.r#type, &m.source, &m.options, &merged).unwrap();
        change(&merged);
        unmount(&merged).unwrap();
        OverlayCase {
            _dir: dir,
            lower,
            upper,
            work,
        }
    }

    fn upper_mount(&self) -> Mount {
        overlay(&self.upper, &self.work, &self.lower)
    }

    /// The layer by the fast path and by walking the merged view: they must be the same bytes.
    fn layers(&self, opts: &LayerOptions) -> Vec<u8> {
        let (fast, method) = layer(&[bind(&self.lower)], &[self.upper_mount()], opts);
        assert_eq!(method, Method::OverlayUpper);
        let walked = self.walked(opts);
        assert_eq!(
            entries(&fast),
            entries(&walked),
            "fast path and full walk disagree"
        );
        assert_eq!(fast, walked);
        fast
    }

    /// The same trees compared in full: the merged view walked against the lower tree.
    fn walked(&self, opts: &LayerOptions) -> Vec<u8> {
        let scratch = tempfile::tempdir().unwrap();
        let merged =
            target::TempMount::mount(&target::readonly(&[self.upper_mount()]), scratch.path())
                .unwrap();
        // A bind of the merged view is no overlay: write_diff walks both trees.
        let (walked, method) = layer(&[bind(&self.lower)], &[bind(merged.dir())], opts);
        assert_eq!(method, Method::DoubleWalk);
        merged.unmount().unwrap();
        walked
    }

    /// Applies `tar` onto a copy of the lower tree and compares it with the merged view.
    fn check_applies(&self, tar: Vec<u8>) {
        let target = copy_of(&self.lower);
        apply_tar(tar, target.path());
        let scratch = tempfile::tempdir().unwrap();
        let merged =
            target::TempMount::mount(&target::readonly(&[self.upper_mount()]), scratch.path())
                .unwrap();
        let want = snapshot(merged.dir()).unwrap();
        merged.unmount().unwrap();
        // Through an overlay a hardlink keeps the lower link count after a sibling is gone.
        assert_trees_equal_with(
            &want,
            &snapshot(target.path()).unwrap(),
            &comparison().ignore_hardlinks(),
        );
    }
}

fn entries(tar: &[u8]) -> Vec<String> {
    read_raw(tar)
        .unwrap()
        .into_iter()
        .map(|e| {
            format!(
                "{} {} {:o} {}:{} {}",
                e.typeflag as char,
                String::from_utf8_lossy(&e.name),
                e.mode,
                e.uid,
                e.gid,
                e.data.len()
            )
        })
        .collect()
}

fn base() -> Vec<Change> {
    tree![
        dir("etc", 0o755),
        file("etc/passwd", "root:x:0:0\n"),
        file("etc/hosts", "127.0.0.1 localhost\n"),
        file("etc/untouched", "same"),
        dir("var/lib/app", 0o755),
        file("var/lib/app/state", "1"),
        file("var/lib/app/cache", "c"),
        dir("opt/tool", 0o755),
        file("opt/tool/bin", "v1"),
        file("opt/tool/lib", "l"),
        file("bin/ls", "ls"),
        hardlink("bin/dir", "bin/ls"),
        symlink("lnk", "etc/hosts"),
        file("gone", "g"),
        dir("gone-dir/sub", 0o755),
        file("gone-dir/sub/f", "f"),
        file("file-to-dir", "f"),
        dir("dir-to-file", 0o755),
        file("dir-to-file/x", "x"),
    ]
}

#[test]
fn overlay_fast_path_equals_the_full_walk_for_every_kind_of_change() {
    let base = base();
    let case = OverlayCase::new(&base, |m| {
        use std::fs;
        fs::write(m.join("etc/passwd"), "root:x:0:0\nuser:x:1000:1000\n").unwrap();
        fs::write(m.join("etc/new"), "new").unwrap();
        fs::remove_file(m.join("gone")).unwrap();
        fs::remove_dir_all(m.join("gone-dir")).unwrap();
        // Removed and made again: overlay marks it opaque.
        fs::remove_dir_all(m.join("opt/tool")).unwrap();
        fs::create_dir(m.join("opt/tool")).unwrap();
        fs::write(m.join("opt/tool/bin"), "v2").unwrap();
        fs::remove_file(m.join("file-to-dir")).unwrap();
        fs::create_dir(m.join("file-to-dir")).unwrap();
        fs::write(m.join("file-to-dir/inside"), "i").unwrap();
        fs::remove_dir_all(m.join("dir-to-file")).unwrap();
        fs::write(m.join("dir-to-file"), "now a file").unwrap();
        std::os::unix::fs::chown(m.join("var/lib/app/state"), Some(5), Some(6)).unwrap();
        fs::set_permissions(
            m.join("var/lib/app"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        fs::hard_link(m.join("etc/new"), m.join("etc/new-link")).unwrap();
        std::os::unix::fs::symlink("etc/passwd", m.join("lnk2")).unwrap();
    });
    let tar = case.layers(&LayerOptions::default());
    let listed = entries(&tar);
    for want in [
        "0 etc/passwd",
        "0 etc/new ",
        "1 etc/new-link",
        "0 .wh.gone ",
        "0 .wh.gone-dir ",
        "0 opt/tool/.wh.lib",
        "5 file-to-dir/",
        "0 dir-to-file ",
        "0 var/lib/app/state",
        "5 var/lib/app/",
    ] {
        assert!(
            listed.iter().any(|l| l.starts_with(want)),
            "{want:?} not in {listed:#?}"
        );
    }
    assert!(
        !listed
            .iter()
            .any(|l| l.contains("untouched") || l.contains("gone-dir/")),
        "{listed:#?}"
    );
    case.check_applies(tar);
}

#[test]
fn copy_ups_that_change_nothing_are_not_in_the_layer() {
    let base = base();
    let case = OverlayCase::new(&base, |m| {
        // Each of these copies the file (or directory) up without changing it.
        let owner = std::fs::metadata(m.join("etc/hosts")).unwrap();
        std::os::unix::fs::chown(m.join("etc/hosts"), Some(owner.uid()), Some(owner.gid()))
            .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(m.join("var/lib/app/cache"))
            .unwrap();
        let d = std::fs::metadata(m.join("opt/tool")).unwrap();
        std::os::unix::fs::chown(m.join("opt/tool"), Some(d.uid()), Some(d.gid())).unwrap();
        std::fs::write(m.join("etc/only-change"), "1").unwrap();
    });
    // The copy-ups really are in the upperdir...
    for p in ["etc/hosts", "var/lib/app/cache", "opt/tool"] {
        assert!(
            case.upper.join(p).symlink_metadata().is_ok(),
            "{p} not copied up"
        );
    }
    // ...and not in the layer.
    let tar = case.layers(&LayerOptions::default());
    let names: Vec<String> = read_raw(&tar[..])
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .collect();
    // The parent goes with it, as containerd writes it.
    assert_eq!(names, ["etc/", "etc/only-change"]);
    case.check_applies(tar);
}

#[test]
fn a_fast_path_that_meets_a_redirect_halfway_starts_over_with_the_full_walk() {
    let base = base();
    let case = OverlayCase::new(&base, |m| {
        std::fs::write(m.join("etc/new"), "written before the redirect is met").unwrap();
        std::fs::create_dir(m.join("zzz")).unwrap();
        std::fs::write(m.join("zzz/f"), "f").unwrap();
    });
    // A redirect (to its own name, so the merged view does not change) on the last entry
    // the fast path reaches, after it has written others.
    set_xattr(&case.upper.join("zzz"), c"trusted.overlay.redirect", b"zzz");
    let (tar, method) = layer(
        &[bind(&case.lower)],
        &[case.upper_mount()],
        &LayerOptions::default(),
    );
    assert_eq!(method, Method::DoubleWalk);
    assert_eq!(tar, case.walked(&LayerOptions::default()));
    let names = entries(&tar);
    assert!(names.iter().any(|e| e.contains("etc/new")), "{names:#?}");
    assert!(names.iter().any(|e| e.contains("zzz/f")), "{names:#?}");
}

fn set_xattr(path: &Path, name: &std::ffi::CStr, value: &[u8]) {
    let p = crate::resolve::cstring(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: NUL-terminated strings and a valid buffer.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn overlay_features_the_walk_cannot_read_fall_back() {
    let dir = tempfile::tempdir().unwrap();
    let upper = dir.path().join("upper");
    std::fs::create_dir_all(upper.join("renamed")).unwrap();
    let path =
        crate::resolve::cstring(upper.join("renamed").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: NUL-terminated strings and a valid buffer.
    let r = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            c"trusted.overlay.redirect".as_ptr(),
            b"/old".as_ptr().cast(),
            4,
            0,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    match changes::overlay_upper(None, &upper, crate::whiteout::TRUSTED_OPAQUE) {
        Err(OverlayError::Unsupported(why)) => assert!(why.contains("redirect"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn layers_are_deterministic_and_source_date_epoch_clamps() {
    let upper = tempfile::tempdir().unwrap();
    apply(
        upper.path(),
        &tree![
            file("old", "o").mtime(1_000),
            file("new", "n").mtime_ns(2_000_000_000, 5),
            dir("d", 0o755).mtime(2_000_000_000),
        ],
    )
    .unwrap();
    let opts = LayerOptions {
        mtime_upper_bound: Some((1_500_000_000, 0)),
    };
    let (a, _) = layer(&[], &[bind(upper.path())], &opts);
    let (b, _) = layer(&[], &[bind(upper.path())], &opts);
    assert_eq!(a, b);
    let times: Vec<(String, i64)> = read_raw(&a[..])
        .unwrap()
        .into_iter()
        .map(|e| (String::from_utf8(e.name).unwrap(), e.mtime))
        .collect();
    assert_eq!(
        times,
        [
            ("d/".to_string(), 1_500_000_000),
            ("new".into(), 1_500_000_000),
            ("old".into(), 1_000)
        ]
    );
    // Compressed the same way twice, byte for byte.
    let scratch = tempfile::tempdir().unwrap();
    for comp in [media::Compression::Gzip, media::Compression::Zstd] {
        let run = || {
            let mut out = Vec::new();
            let (diff_id, _, _) = compare::write_diff(
                &[],
                &[bind(upper.path())],
                scratch.path(),
                &opts,
                comp,
                Levels::default(),
                &mut out,
            )
            .unwrap();
            (out, diff_id)
        };
        let (x, diff_id) = run();
        assert_eq!(diff_id, Some(strata_testkit::sha256_digest(&a)));
        assert_eq!(x, run().0, "{comp:?}");
        let tk = match comp {
            media::Compression::Gzip => Compression::Gzip,
            _ => Compression::Zstd,
        };
        assert_eq!(strata_testkit::layer::decompress(&x, tk).unwrap(), a);
    }
}

#[test]
fn a_hardlink_to_an_unchanged_file_carries_the_content() {
    // `a` is unchanged but gains a second name `z`: the layer must give `a` as a link to `z`
    // (containerd's order: the changed name carries the content).
    let (lower, upper) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let base = tree![file("a", "content").mtime(1_000)];
    apply(lower.path(), &base).unwrap();
    apply(upper.path(), &base).unwrap();
    std::fs::hard_link(upper.path().join("a"), upper.path().join("z")).unwrap();
    let changes = changes::double_walk(Some(lower.path()), upper.path()).unwrap();
    let kinds: Vec<_> = changes.iter().map(|c| (c.path.clone(), c.kind)).collect();
    assert_eq!(
        kinds,
        [
            (PathBuf::from("a"), Kind::Unmodified),
            (PathBuf::from("z"), Kind::Add)
        ]
    );
    let (tar, _) = layer(
        &[bind(lower.path())],
        &[bind(upper.path())],
        &LayerOptions::default(),
    );
    assert_eq!(entries(&tar), ["0 z 644 0:0 7", "1 a 644 0:0 0"]);
}
