//! strata-differ's Apply behind a private containerd 1.7 and 2.x: image imports unpack through
//! strata-diff (counted in its log), the unpacked snapshots hold exactly the images' trees and
//! what containerd's own walking differ builds, busybox runs, and a layer type strata does not
//! apply falls through to walking.
//!
//! How each version reaches the differ (see the facts notes):
//! - 1.7 `ctr images import` unpacks client-side through the diff service chain
//!   (`strata-diff`, then `walking`), without a namespace header: strata-differ has to find the
//!   namespace holding the layer itself;
//! - 2.x `ctr images import --local` uses the same chain (with the namespace); plain
//!   `ctr images import` goes through the transfer service, which uses the `unpack_config`
//!   differ of the snapshotter: `strata-diff` for `--snapshotter strata`, with no fallback.
//!
//! Needs root, runc, busybox-static and the plugin binaries (`cargo build --workspace --bins`).

use strata_testkit::Compression;
use strata_testkit::fixtures;
use strata_testkit::image::{Image, ImageBuilder};
use strata_testkit::layer::Layer;
use strata_testkit::tree::{Compare, Tree, assert_trees_equal_with, dir, file, symlink};
use strata_tests::stack::DIFFER_APPLIED_LOG;
use strata_tests::{PluginSet, Stack, StackOptions, Version, unique_name};

/// Through overlay a hard link whose sibling a later layer whited out still shows the lower
/// link count (facts notes): hard link groups are left out, everything else is compared.
fn through_overlay() -> Compare {
    Compare::strict().ignore_root().ignore_hardlinks()
}

/// Compares a view of the image's top layer with the image's expected tree: content, modes,
/// owners, times, xattrs, links.
fn assert_unpacked(stack: &Stack, image: &Image, snapshotter: &str) -> Tree {
    let got = stack
        .top_tree(image, snapshotter)
        .expect("the top layer's tree");
    let want = image.expected_tree().expect("expected tree");
    assert_trees_equal_with(&want, &got, &through_overlay());
    got
}

fn fixtures_for_test() -> Vec<Image> {
    vec![
        fixtures::busybox(Compression::Gzip).expect("busybox"),
        fixtures::mixed(Compression::Zstd).expect("mixed zstd"),
        // Different content from the others: equal diffIDs would share snapshots and skip the
        // unpack.
        fixtures::smallfiles_scaled(Compression::None, 0.05).expect("smallfiles plain"),
    ]
}

/// A plain tar under an OCI layer type with a suffix strata does not know: strata answers
/// Unimplemented, and containerd's walking differ (which reads an OCI layer type with an unknown
/// last suffix as an uncompressed tar) applies it. (`+encrypted` itself falls through too, but
/// walking then needs imgcrypt's `ctd-decoder`, which these machines lack.)
fn unknown_type_image() -> Image {
    let layer = Layer::new(
        vec![
            dir("enc", 0o755),
            file("enc/clear", "walking applied me"),
            symlink("enc/link", "clear"),
        ],
        Compression::None,
    )
    .expect("layer")
    .with_media_type("application/vnd.oci.image.layer.v1.tar+unknown");
    ImageBuilder::new(format!("localhost/strata/{}:latest", unique_name("enc")))
        .layer(layer)
        .build()
        .expect("image")
}

/// Layers strata-differ logged as read from a blob file rather than the content service.
fn applied_from_files(stack: &Stack) -> usize {
    stack
        .plugins
        .get(strata_tests::PluginKind::Differ)
        .map(|p| {
            p.log()
                .lines()
                .filter(|l| l.contains(DIFFER_APPLIED_LOG) && l.contains("source=\"blob_file\""))
                .count()
        })
        .unwrap_or(0)
}

/// `blob_files`: strata-differ gets containerd's content directory and reads layers from
/// disk; otherwise through containerd's content service.
fn chain_imports_unpack_through_strata(
    version: Version,
    extra: &[&str],
    blob_files: bool,
) -> Stack {
    // The same containerd with only its built-in walking differ, for the reference trees.
    let walking = Stack::start(
        version,
        &StackOptions {
            start: PluginSet::NONE,
            wire: PluginSet::NONE,
            disabled_plugins: Vec::new(),
            extra_toml: String::new(),
            differ_reads_blob_files: false,
            plugin_args: Vec::new(),
        },
    )
    .expect("starting a walking-only containerd");
    let options = StackOptions {
        differ_reads_blob_files: blob_files,
        ..StackOptions::smoke()
    };
    let stack = Stack::start(version, &options).expect("starting the stack");
    for image in fixtures_for_test() {
        let before = stack.differ_applied();
        let files_before = applied_from_files(&stack);
        stack.import(&image, extra).expect("import");
        let n = stack.differ_applied() - before;
        assert_eq!(
            n,
            image.layers().len(),
            "{}: layers applied by strata-differ\n{}",
            image.name,
            stack.log_tails()
        );
        assert_eq!(
            applied_from_files(&stack) - files_before,
            if blob_files { n } else { 0 },
            "{}: layers read from blob files",
            image.name
        );
        let ours = assert_unpacked(&stack, &image, "overlayfs");
        walking.import(&image, extra).expect("import");
        let theirs = walking
            .top_tree(&image, "overlayfs")
            .expect("the top layer's tree");
        // Directories a later layer adds to get the time of the apply in both: not compared.
        assert_trees_equal_with(&theirs, &ours, &through_overlay().ignore_dir_mtimes());
    }

    // Fall-through: nothing counted, walking unpacked it, the tree is still right.
    let enc = unknown_type_image();
    let before = stack.differ_applied();
    stack.import(&enc, extra).expect("import");
    assert_eq!(
        stack.differ_applied(),
        before,
        "strata must not apply +unknown"
    );
    assert_unpacked(&stack, &enc, "overlayfs");

    let busybox = &fixtures_for_test()[0];
    let id = unique_name(&format!("df{}", version.key().replace('.', "")));
    let out = stack.containerd.ctr_ok(&[
        "run",
        "--rm",
        &busybox.name,
        &id,
        "/bin/echo",
        "strata-differ-ran",
    ]);
    assert!(out.contains("strata-differ-ran"), "{out}");
    stack
}

#[test]
fn imports_unpack_through_strata_containerd_1_7() {
    chain_imports_unpack_through_strata(Version::V1_7, &[], false);
}

#[test]
fn imports_unpack_through_strata_containerd_2() {
    let stack = chain_imports_unpack_through_strata(Version::V2, &["--local"], true);

    // The transfer service: `unpack_config` names strata-diff for the strata snapshotter.
    let image = fixtures::mixed(Compression::Gzip).expect("mixed gzip");
    let before = stack.differ_applied();
    stack
        .import(&image, &["--snapshotter", "strata"])
        .expect("import");
    assert_eq!(
        stack.differ_applied() - before,
        image.layers().len(),
        "transfer unpack into strata must use strata-diff\n{}",
        stack.log_tails()
    );
    assert_unpacked(&stack, &image, "strata");
}
