//! strata-content as the content store of a private containerd 1.7 and 2.x (built-in content
//! plugin disabled, containerd's own snapshotter and differ): images imported, run and
//! exported byte for byte through strata; `ctr content` subcommands; garbage collection
//! deleting blobs through strata.
//!
//! Needs root, runc, busybox-static and the plugin binaries (`cargo build --workspace --bins`).
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use strata_testkit::Compression;
use strata_testkit::image::Image;
use strata_testkit::layer::read_raw;
use strata_tests::process::wait_timeout;
use strata_tests::proxy::{BUILTIN_CONTENT_PLUGIN, CONTENT_NAME, CONTENT_PLUGIN_TYPE};
use strata_tests::registry::Registry;
use strata_tests::wait::until;
use strata_tests::{PluginKind, PluginSet, Stack, StackOptions, Version, unique_name};

#[test]
fn content_store_containerd_1_7() {
    content_store(Version::V1_7);
}

#[test]
fn content_store_containerd_2() {
    content_store(Version::V2);
}

const GC_ONLY_ON_DEMAND: &str = r#"
[plugins."io.containerd.gc.v1.scheduler"]
  pause_threshold = 0.0001
  deletion_threshold = 1000000
  mutation_threshold = 1000000
  startup_delay = "1h"
"#;

const CONTENT_ONLY: PluginSet = PluginSet {
    snapshotter: false,
    content: true,
    differ: false,
};

fn sha256(data: &[u8]) -> String {
    strata_testkit::sha256_digest(data)
}

/// Where strata keeps blob `digest`.
fn blob_path(root: &Path, digest: &str) -> PathBuf {
    root.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// The `blobs/sha256/*` entries of an OCI archive, by digest.
fn archive_blobs(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
    read_raw(archive)
        .unwrap()
        .into_iter()
        .filter_map(|e| {
            let name = String::from_utf8_lossy(&e.name).into_owned();
            let hex = name.strip_prefix("blobs/sha256/")?;
            (!hex.is_empty()).then(|| (format!("sha256:{hex}"), e.data))
        })
        .collect()
}

/// `ctr content ingest` fed from `data` on stdin; returns (success, stderr).
fn ctr_ingest(stack: &Stack, r: &str, data: &[u8], size: usize, digest: &str) -> (bool, String) {
    let ctr = stack.containerd.ctr_handle();
    let input = stack.containerd.dir().path().join(format!("{r}.in"));
    std::fs::write(&input, data).unwrap();
    let mut child = Command::new(&ctr.binary)
        .arg("--address")
        .arg(&ctr.address)
        .args(["content", "ingest", "--expected-size", &size.to_string()])
        .args(["--expected-digest", digest, r])
        .env("CONTAINERD_NAMESPACE", &ctr.namespace)
        .stdin(File::open(&input).unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(120)).unwrap();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "ctr content ingest {r} hung (Unavailable loop?)\n{}",
            stack.log_tails()
        );
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).unwrap();
    }
    (status.success(), err)
}

fn import(stack: &Stack, image: &Image, content_root: &Path) {
    let ctd = &stack.containerd;
    let archive = ctd.dir().path().join(format!("{}.tar", unique_name("img")));
    image.write_archive(&archive).unwrap();
    ctd.ctr_ok(&[
        OsStr::new("images"),
        OsStr::new("import"),
        archive.as_os_str(),
    ]);
    // Every blob went to strata, byte for byte.
    let original = std::fs::read(&archive).unwrap();
    for (digest, data) in archive_blobs(&original) {
        let stored = std::fs::read(blob_path(content_root, &digest)).unwrap_or_else(|e| {
            panic!(
                "{digest} not in strata's store ({e})\n{}",
                stack.log_tails()
            )
        });
        assert!(stored == data, "{digest} stored differently");
    }
    // `ctr images export` reads everything back through strata.
    let out = ctd
        .dir()
        .path()
        .join(format!("{}.tar", unique_name("export")));
    ctd.ctr_ok(&[
        OsStr::new("images"),
        OsStr::new("export"),
        out.as_os_str(),
        OsStr::new(&image.name),
    ]);
    let exported = archive_blobs(&std::fs::read(&out).unwrap());
    for (digest, data) in archive_blobs(&original) {
        let got = exported
            .get(&digest)
            .unwrap_or_else(|| panic!("export lacks {digest}"));
        assert!(*got == data, "exported {digest} differs");
    }
}

/// containerd with strata-content as its only content store, and strata-content's root.
fn content_stack(version: Version) -> (Stack, PathBuf) {
    let options = StackOptions {
        start: CONTENT_ONLY,
        wire: CONTENT_ONLY,
        disabled_plugins: Vec::new(),
        // `ctr content ingest` takes no lease, so its blob is garbage the moment it is
        // committed: keep the scheduler from collecting on its own (the first run an hour
        // away, later ones at least 50 s apart), and collect explicitly.
        extra_toml: GC_ONLY_ON_DEMAND.to_string(),
        differ_reads_blob_files: false,
        plugin_args: Vec::new(),
    };
    let stack = Stack::start(version, &options).expect("starting strata-content and containerd");
    let content_root = stack
        .plugins
        .get(PluginKind::Content)
        .expect("content plugin started")
        .root()
        .to_path_buf();
    (stack, content_root)
}

fn content_store(version: Version) {
    let (stack, content_root) = content_stack(version);
    let ctd = &stack.containerd;
    eprintln!(
        "containerd {} in {}, strata-content root {}",
        ctd.release(),
        ctd.dir().path().display(),
        content_root.display()
    );

    // The proxy is loaded and the built-in store is not.
    let plugins = ctd.ctr_ok(&["plugins", "ls"]);
    let line = |id: &str| {
        plugins
            .lines()
            .find(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                c.first() == Some(&CONTENT_PLUGIN_TYPE) && c.get(1) == Some(&id)
            })
            .map(str::to_string)
    };
    let proxy = line(CONTENT_NAME).unwrap_or_else(|| panic!("no {CONTENT_NAME}:\n{plugins}"));
    assert_eq!(proxy.split_whitespace().last(), Some("ok"), "{proxy}");
    let builtin_id = BUILTIN_CONTENT_PLUGIN.rsplit('.').next().unwrap();
    if let Some(l) = line(builtin_id) {
        assert!(
            !l.ends_with("ok"),
            "built-in content store still enabled: {l}"
        );
    }

    // Images: import, run, export.
    let busybox = strata_testkit::fixtures::busybox(Compression::Gzip).unwrap();
    import(&stack, &busybox, &content_root);
    let mixed = strata_testkit::fixtures::mixed(Compression::Zstd).unwrap();
    import(&stack, &mixed, &content_root);
    // The two big fixtures, scaled down to keep this test quick (same shapes: 1000 small
    // files; 4 files of 2.5 MiB), uncompressed and gzip.
    let smallfiles = strata_testkit::fixtures::smallfiles_scaled(Compression::None, 0.02).unwrap();
    import(&stack, &smallfiles, &content_root);
    let bigfiles = strata_testkit::fixtures::bigfiles_scaled(Compression::Gzip, 0.01).unwrap();
    import(&stack, &bigfiles, &content_root);
    // The same images into other namespaces: every blob is already stored, so each commit
    // finds it there and containerd must still learn which digest its bytes were.
    let archive = ctd
        .dir()
        .path()
        .join(format!("{}.tar", unique_name("again")));
    bigfiles.write_archive(&archive).unwrap();
    for ns in ["strata-again-1", "strata-again-2", "strata-again-3"] {
        let out = ctd.ctr(&[
            OsStr::new("-n"),
            OsStr::new(ns),
            OsStr::new("images"),
            OsStr::new("import"),
            archive.as_os_str(),
        ]);
        assert!(
            out.status.success(),
            "import into {ns}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            stack.log_tails()
        );
        let images = ctd.ctr_ok(&["-n", ns, "images", "ls", "-q"]);
        assert!(images.lines().any(|l| l == bigfiles.name), "{ns}: {images}");
    }
    let id = unique_name(&format!("content{}", version.key().replace('.', "")));
    let token = format!("strata-content-{id}");
    let out = ctd.ctr_ok(&["run", "--rm", &busybox.name, &id, "/bin/echo", &token]);
    assert!(
        out.lines().any(|l| l.trim() == token),
        "{out}\n{}",
        stack.log_tails()
    );

    // ctr content ingest / get / ls / label / active / rm.
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i * 7 + i / 1000) as u8)
        .collect();
    let digest = sha256(&data);
    let half = &data[..1_234_567];
    let (ok, err) = ctr_ingest(&stack, "strata-e2e-ref", half, data.len(), &digest);
    assert!(!ok, "a short ingest must fail");
    // ctr notices the short input itself; the ingest stays for a resume.
    assert!(err.contains("unexpected EOF"), "{err}");
    let active = ctd.ctr_ok(&["content", "active"]);
    assert!(
        active.contains("strata-e2e-ref"),
        "ctr content active:\n{active}"
    );
    assert!(
        !blob_path(&content_root, &digest).exists(),
        "nothing committed"
    );
    // Resumes from the offset strata reports (ctr skips what is already there).
    let (ok, err) = ctr_ingest(&stack, "strata-e2e-ref", &data, data.len(), &digest);
    assert!(ok, "ingest: {err}\n{}", stack.log_tails());
    let active = ctd.ctr_ok(&["content", "active"]);
    assert!(!active.contains("strata-e2e-ref"), "{active}");
    assert!(std::fs::read(blob_path(&content_root, &digest)).unwrap() == data);
    let got = ctd.ctr(&["content", "get", &digest]);
    assert!(
        got.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&got.stderr),
        stack.log_tails()
    );
    assert!(got.stdout == data, "ctr content get returned other bytes");
    let ls = ctd.ctr_ok(&["content", "ls"]);
    assert!(ls.contains(&digest), "{ls}");
    ctd.ctr_ok(&["content", "label", &digest, "strata.test/label=yes"]);
    let ls = ctd.ctr_ok(&["content", "ls"]);
    let row = ls.lines().find(|l| l.contains(&digest)).unwrap();
    assert!(row.contains("strata.test/label=yes"), "{row}");
    // A digest ingested again is recognised as already there.
    let (ok, err) = ctr_ingest(&stack, "strata-e2e-again", &data, data.len(), &digest);
    assert!(ok, "re-ingest of existing content: {err}");

    // rm drops containerd's record; GC then deletes the blob through strata.
    ctd.ctr_ok(&["content", "rm", &digest]);
    assert!(!ctd.ctr_ok(&["content", "ls"]).contains(&digest));
    stack.collect_garbage().unwrap();
    until(
        "GC to delete the removed blob",
        Duration::from_secs(30),
        || !blob_path(&content_root, &digest).exists(),
    )
    .unwrap();
    // Removing the images makes their blobs garbage too.
    ctd.ctr_ok(&["images", "rm", "--sync", &busybox.name, &mixed.name]);
    stack.collect_garbage().unwrap();
    let layer = busybox.layers()[0].digest.clone();
    until(
        "GC to delete the image's blobs",
        Duration::from_secs(30),
        || {
            !blob_path(&content_root, &layer).exists()
                && !blob_path(&content_root, &busybox.manifest_digest()).exists()
        },
    )
    .unwrap();
    stack
        .plugins
        .check_health()
        .expect("strata-content healthy at the end");
}

#[test]
fn registry_push_pull_containerd_1_7() {
    registry_push_pull(Version::V1_7);
}

#[test]
fn registry_push_pull_containerd_2() {
    registry_push_pull(Version::V2);
}

/// Push reads every blob back out of strata; pull (after GC emptied strata) writes them in
/// again, and the pulled image runs.
fn registry_push_pull(version: Version) {
    let (stack, content_root) = content_stack(version);
    let ctd = &stack.containerd;
    let registry = Registry::start(ctd.dir().path()).unwrap();
    let image = strata_testkit::fixtures::busybox(Compression::Gzip).unwrap();
    let archive = ctd.dir().path().join("busybox.tar");
    image.write_archive(&archive).unwrap();
    ctd.ctr_ok(&[
        OsStr::new("images"),
        OsStr::new("import"),
        archive.as_os_str(),
    ]);
    let remote = format!(
        "{}/strata/busybox:{}",
        registry.address(),
        version.key().replace('.', "")
    );
    ctd.ctr_ok(&["images", "tag", &image.name, &remote]);
    ctd.ctr_ok(&["images", "push", "--plain-http", &remote]);

    ctd.ctr_ok(&["images", "rm", "--sync", &image.name, &remote]);
    stack.collect_garbage().unwrap();
    let blobs = archive_blobs(&std::fs::read(&archive).unwrap());
    until("GC to empty strata", Duration::from_secs(30), || {
        blobs.keys().all(|d| !blob_path(&content_root, d).exists())
    })
    .unwrap();

    ctd.ctr_ok(&["images", "pull", "--plain-http", &remote]);
    for (digest, data) in &blobs {
        let stored = std::fs::read(blob_path(&content_root, digest)).unwrap_or_else(|e| {
            panic!("pulled {digest} not in strata ({e})\n{}", stack.log_tails())
        });
        assert!(
            stored == *data,
            "pulled {digest} differs from the pushed one"
        );
    }
    let id = unique_name(&format!("pull{}", version.key().replace('.', "")));
    let token = format!("strata-pulled-{id}");
    let out = ctd.ctr_ok(&["run", "--rm", &remote, &id, "/bin/echo", &token]);
    assert!(out.lines().any(|l| l.trim() == token), "{out}");
}
