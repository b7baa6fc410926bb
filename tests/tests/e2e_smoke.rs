//! Smoke test of the whole chain against each supported containerd: strata's three plugins run
//! on temporary sockets, a private containerd has the snapshotter and the differ wired in
//! `[proxy_plugins]`, a busybox image is imported and a container prints a token.
//!
//! Needs root, runc, the plugin binaries (`cargo build --workspace --bins`) and, the first
//! time on a machine, network access to the Debian archive (containerd is fetched and cached).

use std::ffi::OsStr;

use strata_testkit::Compression;
use strata_tests::proxy::{
    DIFFER_NAME, DIFFER_PLUGIN_TYPE, SNAPSHOTTER_NAME, SNAPSHOTTER_PLUGIN_TYPE,
};
use strata_tests::{PluginKind, Stack, StackOptions, Version, unique_name};

#[test]
fn smoke_containerd_1_7() {
    smoke(Version::V1_7);
}

#[test]
fn smoke_containerd_2() {
    smoke(Version::V2);
}

fn smoke(version: Version) {
    let stack =
        Stack::start(version, &StackOptions::smoke()).expect("starting plugins and containerd");
    let ctd = &stack.containerd;
    eprintln!(
        "containerd {} (pid {}) in {}, namespace {}",
        ctd.release(),
        ctd.pid(),
        ctd.dir().path().display(),
        ctd.namespace()
    );

    // The config must point at the sockets our processes listen on...
    for (kind, wired) in [
        (PluginKind::Snapshotter, &stack.proxy.snapshotter),
        (PluginKind::Differ, &stack.proxy.differ),
    ] {
        let running = stack.plugins.get(kind).expect("plugin started").socket();
        assert_eq!(
            wired.as_deref(),
            Some(running),
            "{kind:?} wired to the wrong socket"
        );
    }
    assert_eq!(
        stack.proxy.content, None,
        "content must not be wired in the smoke test"
    );

    // ...containerd must have loaded them...
    let listing = ctd.ctr_ok(&["plugins", "ls"]);
    assert_plugin_ok(&listing, SNAPSHOTTER_PLUGIN_TYPE, SNAPSHOTTER_NAME, &stack);
    assert_plugin_ok(&listing, DIFFER_PLUGIN_TYPE, DIFFER_NAME, &stack);

    // ...but `plugins ls` says ok even when nothing listens: the servers must answer too.
    stack
        .plugins
        .check_health()
        .expect("plugins answer health after containerd loaded them");

    let image =
        strata_testkit::fixtures::busybox(Compression::Gzip).expect("building the busybox fixture");
    let archive = ctd.dir().path().join("busybox.tar");
    image
        .write_archive(&archive)
        .expect("writing the busybox archive");
    ctd.ctr_ok(&[
        OsStr::new("images"),
        OsStr::new("import"),
        archive.as_os_str(),
    ]);
    let images = ctd.ctr_ok(&["images", "ls", "-q"]);
    assert!(
        images.lines().any(|l| l.trim() == image.name),
        "{} not listed after import:\n{images}",
        image.name
    );

    let id = unique_name(&format!("smoke{}", version.key().replace('.', "")));
    let token = format!("strata-smoke-{id}");
    let out = ctd.ctr_ok(&["run", "--rm", &image.name, &id, "/bin/echo", &token]);
    assert!(
        out.lines().any(|l| l.trim() == token),
        "container output {out:?} lacks {token:?}\n{}",
        stack.log_tails()
    );

    stack
        .plugins
        .check_health()
        .expect("plugins still answer health after the container ran");
}

/// Asserts that `ctr plugins ls` lists plugin `id` of `type_` with status ok.
fn assert_plugin_ok(listing: &str, type_: &str, id: &str, stack: &Stack) {
    let line = listing.lines().find(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.first() == Some(&type_) && cols.get(1) == Some(&id)
    });
    match line {
        Some(line) => assert!(
            line.split_whitespace().last() == Some("ok"),
            "plugin {type_} {id} is not ok: {line}\n{}",
            stack.log_tails()
        ),
        None => panic!(
            "ctr plugins ls has no {type_} {id}:\n{listing}\n{}",
            stack.log_tails()
        ),
    }
}
