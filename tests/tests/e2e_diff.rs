//! strata-differ's Diff behind a private containerd 1.7 and 2.x: `ctr snapshots diff` of a
//! changed snapshot goes through strata-diff (counted in its log), the layer lands in
//! containerd's content store labelled with its diffID, and layers cross over: one made by
//! strata, applied by containerd's walking differ, rebuilds the changed tree, and one made by
//! walking, applied by strata, does too.
//!
//! Needs root, runc, busybox-static and the plugin binaries (`cargo build --workspace --bins`).

use strata_common::client::unix_channel;
use strata_common::namespace::RequestContext;
use strata_proto::diff::DiffRequest;
use strata_proto::diff::diff_client::DiffClient;
use strata_proto::snapshots::snapshots_client::SnapshotsClient;
use strata_proto::snapshots::{MountsRequest, ViewSnapshotRequest};
use strata_testkit::Compression;
use strata_testkit::fixtures;
use strata_testkit::image::{Image, ImageBuilder};
use strata_testkit::layer::{Blob, Layer};
use strata_testkit::tree::{
    Change, Compare, Tree, apply, assert_trees_equal_with, char_dev, chmod, dir, fifo, file,
    file_mode, hardlink, owner, remove, snapshot, symlink, xattr,
};
use strata_tests::logs::{field, last_line_with};
use strata_tests::stack::DIFFER_MADE_LOG;
use strata_tests::{PluginSet, Stack, StackOptions, Version, unique_name};

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const PLAIN: &str = "application/vnd.oci.image.layer.v1.tar";

fn made(stack: &Stack) -> usize {
    stack
        .plugins
        .get(strata_tests::PluginKind::Differ)
        .map(|p| p.log().matches(DIFFER_MADE_LOG).count())
        .unwrap_or(0)
}

/// A version-2 `security.capability` granting CAP_NET_RAW.
fn cap_net_raw() -> Vec<u8> {
    let mut v = vec![0u8; 20];
    v[0..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    v[4..8].copy_from_slice(&(1u32 << 13).to_le_bytes());
    v
}

/// What a container might do to mixed's tree: add, modify, delete (files and whole
/// directories), empty a directory and refill it, change modes, owners, capabilities and
/// symlinks, link.
fn container_changes() -> Vec<Change> {
    vec![
        dir("app", 0o755),
        file("app/config", "port=8080\n"),
        file_mode("app/run", "#!/bin/sh\n", 0o4755),
        hardlink("app/run-again", "app/run"),
        symlink("app/current", "config"),
        fifo("app/pipe"),
        char_dev("app/null", 1, 3),
        file("etc/config", "key=changed\n"),
        remove("keep"),
        remove("data/file-2"),
        dir("empty3/a/b/c", 0o700),
        file("empty3/a/b/c/f", "f"),
        chmod("empty2", 0o711),
        remove("links/rel"),
        symlink("links/rel", "../etc/elsewhere"),
        // Removed and made again: overlay marks the new directory opaque.
        remove("opq"),
        dir("opq", 0o755),
        file("opq/only", "the only one left"),
        owner("etc/config", 10, 20),
        file("bin-ping", "ping").xattr("security.capability", cap_net_raw()),
        xattr("etc", "user.note", "dropped by layers, as walking drops it"),
    ]
}

/// Layers keep only `security.capability` and mtimes to the second, and through overlay a
/// hard link keeps its lower link count. Directories the layer does not list keep the time
/// their stack unpacked the base at, which differs between the two containerds compared here
/// (`differ/src/diff/tests.rs` checks directory times on one base).
fn layer_compare() -> Compare {
    Compare::strict()
        .ignore_root()
        .mtimes_to_the_second()
        .ignore_dir_mtimes()
        .ignore_hardlinks()
        .ignore_xattr("user.")
        .ignore_xattr("trusted.")
}

/// Prepares a snapshot on `base`'s top layer in `snapshotter`, makes `container_changes` in
/// it, and returns its key and the tree it now shows.
fn changed_snapshot(stack: &Stack, snapshotter: &str, base: &Image) -> (String, Tree) {
    let top = base.chain_ids().last().cloned().expect("a layer");
    let key = unique_name("work");
    {
        let m = stack
            .mount_snapshot(snapshotter, "prepare", &key, &top)
            .expect("prepare and mount");
        apply(m.path(), &container_changes()).expect("changing the snapshot");
    }
    let m = stack
        .mount_active(snapshotter, &key)
        .expect("mount the active snapshot");
    let tree = snapshot(m.path()).expect("reading the changed snapshot");
    (key, tree)
}

/// `ctr snapshots diff` of `key` against its parent: the layer (ctr prints the blob it got
/// back from the content store) and its digest.
fn ctr_diff(stack: &Stack, snapshotter: &str, key: &str, media_type: &str) -> (String, Vec<u8>) {
    let out = stack.containerd.ctr(&[
        "snapshots",
        "--snapshotter",
        snapshotter,
        "diff",
        "--keep",
        "--media-type",
        media_type,
        "--label",
        "strata.test/origin=e2e",
        key,
    ]);
    assert!(
        out.status.success(),
        "ctr snapshots diff: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        stack.log_tails()
    );
    (sha256(&out.stdout), out.stdout)
}

fn blob(stack: &Stack, digest: &str) -> Vec<u8> {
    let out = stack.containerd.ctr(&["content", "get", digest]);
    assert!(out.status.success(), "content get {digest}: {:?}", out);
    out.stdout
}

fn content_labels(stack: &Stack, digest: &str) -> String {
    let ls = stack.containerd.ctr_ok(&["content", "ls"]);
    ls.lines()
        .find(|l| l.starts_with(digest))
        .unwrap_or_else(|| panic!("{digest} not in content ls:\n{ls}"))
        .to_string()
}

/// A gzip layer's entries: type, name, mode, owner, link target and size.
fn entries(blob: &[u8]) -> Vec<String> {
    let tar = strata_testkit::layer::decompress(blob, Compression::Gzip).expect("gunzip");
    strata_testkit::layer::read_raw(&tar[..])
        .expect("read the tar")
        .into_iter()
        .map(|e| {
            format!(
                "{} {} {:o} {}:{} -> {} ({} bytes)",
                e.typeflag as char,
                String::from_utf8_lossy(&e.name),
                e.mode,
                e.uid,
                e.gid,
                String::from_utf8_lossy(&e.link),
                e.data.len()
            )
        })
        .collect()
}

fn sha256(data: &[u8]) -> String {
    strata_testkit::sha256_digest(data)
}

fn compression_of(media_type: &str) -> Compression {
    match media_type {
        GZIP => Compression::Gzip,
        ZSTD => Compression::Zstd,
        _ => Compression::None,
    }
}

/// An image of `base`'s layers plus the blob `digest` (of `media_type`) on top.
fn image_with(base: &Image, blob: Vec<u8>, media_type: &str) -> Image {
    let c = compression_of(media_type);
    let tar = strata_testkit::layer::decompress(&blob, c).expect("decompress the layer");
    let mut top = Layer::from_tar(tar, c).expect("layer");
    top.digest = sha256(&blob);
    top.size = blob.len() as u64;
    top.blob = Blob::Memory(blob.into());
    top.media_type = media_type.to_string();
    ImageBuilder::new(format!("localhost/strata/{}:latest", unique_name("diffed")))
        .layers(base.layers().iter().cloned())
        .layer(top)
        .build()
        .expect("image")
}

fn walking_only(version: Version) -> Stack {
    Stack::start(
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
    .expect("starting a walking-only containerd")
}

/// `in_store`: strata-differ is given containerd's content directory, writes its layers there
/// and has containerd only record them; otherwise it sends them through the content service.
fn diff_round_trips(version: Version, in_store: bool) {
    let options = StackOptions {
        differ_reads_blob_files: in_store,
        plugin_args: Vec::new(),
        ..StackOptions::smoke()
    };
    let stack = Stack::start(version, &options).expect("starting the stack");
    let walking = walking_only(version);
    let base = fixtures::mixed(Compression::Gzip).expect("mixed");
    stack
        .import(&base, &["--snapshotter", "strata"])
        .expect("import");
    walking.import(&base, &[]).expect("import");

    // strata makes the layer, from strata-snapshotter's overlay (the upperdir fast path).
    let (key, source) = changed_snapshot(&stack, "strata", &base);
    for media_type in [GZIP, ZSTD, PLAIN] {
        let before = made(&stack);
        let (digest, printed) = ctr_diff(&stack, "strata", &key, media_type);
        assert_eq!(
            made(&stack) - before,
            1,
            "{media_type}: the diff must be strata's\n{}",
            stack.log_tails()
        );
        let bytes = blob(&stack, &digest);
        assert_eq!(bytes, printed);
        let log = stack
            .plugins
            .get(strata_tests::PluginKind::Differ)
            .expect("differ")
            .log();
        let line = last_line_with(&log, DIFFER_MADE_LOG);
        // Measured: 1.7 sends Diff no namespace header (strata then uses containerd's only
        // namespace); 2.x sends it.
        assert_eq!(
            log.contains("no namespace in the diff request"),
            version == Version::V1_7,
            "{log}"
        );
        // (1.7 sends no namespace: strata then uses containerd's only one.)
        assert!(
            line.contains(&format!("namespace=\"{}\"", stack.containerd.namespace()))
                && line.contains("method=OverlayUpper"),
            "{line}"
        );
        let tar = strata_testkit::layer::decompress(&bytes, compression_of(media_type))
            .expect("the layer decompresses");
        let labels = content_labels(&stack, &digest);
        assert!(labels.contains("strata.test/origin=e2e"), "{labels}");
        if media_type != PLAIN {
            assert!(
                labels.contains(&format!("containerd.io/uncompressed={}", sha256(&tar))),
                "{labels}"
            );
        }
        // In the store, the layer's bytes never went through containerd's content service.
        let sent = field(line, "bytes_sent");
        if in_store {
            assert_eq!(sent, "0", "{line}");
        } else {
            assert_eq!(sent, bytes.len().to_string(), "{line}");
        }
        // The same snapshot diffed again: the same bytes.
        assert_eq!(ctr_diff(&stack, "strata", &key, media_type).0, digest);

        // Applied by walking on top of the same base, it rebuilds the changed tree.
        let image = image_with(&base, bytes, media_type);
        walking.import(&image, &[]).expect("import");
        let rebuilt = walking
            .top_tree(&image, "overlayfs")
            .expect("the top layer's tree");
        assert_trees_equal_with(&source, &rebuilt, &layer_compare());
    }

    // The other way: walking makes the layer from the built-in overlayfs snapshotter, strata
    // applies it.
    let (wkey, wsource) = changed_snapshot(&walking, "overlayfs", &base);
    let (_, walked) = ctr_diff(&walking, "overlayfs", &wkey, GZIP);
    // The same changes on the same base give the same entries from both differs (times
    // aside: the two snapshots were changed at different moments, and 1.7's walking dates
    // whiteouts where 2.x and strata write zero).
    let (_, ours) = ctr_diff(&stack, "strata", &key, GZIP);
    assert_eq!(entries(&ours), entries(&walked));
    let image = image_with(&base, walked, GZIP);
    let applied = stack.differ_applied();
    stack
        .import(&image, &["--snapshotter", "strata"])
        .expect("import");
    assert!(
        stack.differ_applied() > applied,
        "strata must apply walking's layer"
    );
    let rebuilt = stack
        .top_tree(&image, "strata")
        .expect("the top layer's tree");
    assert_trees_equal_with(&wsource, &rebuilt, &layer_compare());

    // A type strata does not write falls through to walking (which refuses it too).
    let before = made(&stack);
    let out = stack.containerd.ctr(&[
        "snapshots",
        "--snapshotter",
        "strata",
        "diff",
        "--media-type",
        "application/vnd.oci.image.layer.v1.tar+bzip2",
        &key,
    ]);
    assert!(!out.status.success());
    assert_eq!(made(&stack), before);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unsupported"), "{stderr}");

    // A Diff call without a lease (a client that does not take one, unlike ctr): strata takes
    // one for the blob, expiring in a day, so GC does not collect it before it is used.
    let digest = diff_without_lease(&stack, &key, &base);
    let leases = stack.containerd.ctr_ok(&["leases", "ls"]);
    let ours = leases
        .lines()
        .find(|l| l.starts_with("strata-diff-"))
        .unwrap_or_else(|| panic!("no strata-diff lease in\n{leases}"));
    assert!(ours.contains("containerd.io/gc.expire="), "{ours}");
    stack.containerd.ctr_ok(&["content", "get", &digest]);

    // With a second namespace, a 1.7 request (no namespace) cannot be placed: strata answers
    // Unimplemented and walking makes the diff; 2.x names the namespace and strata makes it.
    stack
        .containerd
        .ctr_ok(&["namespaces", "create", &unique_name("other")]);
    let before = made(&stack);
    let (_, bytes) = ctr_diff(&stack, "strata", &key, GZIP);
    assert!(!bytes.is_empty());
    let by_strata = if version == Version::V1_7 { 0 } else { 1 };
    assert_eq!(made(&stack) - before, by_strata, "{}", stack.log_tails());
}

/// Diff of the active snapshot `key` (on `base`'s top layer) through containerd's diff
/// service with a namespace but no lease; the layer's digest.
fn diff_without_lease(stack: &Stack, key: &str, base: &Image) -> String {
    let parent = base.chain_ids().last().cloned().expect("a layer");
    let cx = RequestContext::with_namespace(stack.containerd.namespace());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let channel = unix_channel(stack.containerd.socket());
        let mut snaps = SnapshotsClient::new(channel.clone());
        let upper = snaps
            .mounts(
                cx.request(MountsRequest {
                    snapshotter: "strata".into(),
                    key: key.to_string(),
                })
                .expect("request"),
            )
            .await
            .expect("mounts")
            .into_inner()
            .mounts;
        let lower = snaps
            .view(
                cx.request(ViewSnapshotRequest {
                    snapshotter: "strata".into(),
                    key: unique_name("lower"),
                    parent,
                    labels: Default::default(),
                })
                .expect("request"),
            )
            .await
            .expect("view")
            .into_inner()
            .mounts;
        let d = DiffClient::new(channel)
            .diff(
                cx.request(DiffRequest {
                    left: lower,
                    right: upper,
                    media_type: GZIP.into(),
                    ..Default::default()
                })
                .expect("request"),
            )
            .await
            .unwrap_or_else(|e| panic!("Diff: {e}\n{}", stack.log_tails()))
            .into_inner();
        d.diff.expect("a descriptor").digest
    })
}

#[test]
fn snapshots_diff_goes_through_strata_containerd_1_7() {
    diff_round_trips(Version::V1_7, false);
}

#[test]
fn snapshots_diff_goes_through_strata_containerd_2() {
    diff_round_trips(Version::V2, false);
}

#[test]
fn snapshots_diff_written_into_the_store_containerd_1_7() {
    diff_round_trips(Version::V1_7, true);
}

#[test]
fn snapshots_diff_written_into_the_store_containerd_2() {
    diff_round_trips(Version::V2, true);
}
