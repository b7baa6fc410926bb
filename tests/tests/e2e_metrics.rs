//! The metrics endpoints and per-call spans of all three servers, end to end: each server
//! runs with a `--metrics-address` (two on unix sockets, the differ on TCP), a private
//! containerd (1.7 and 2.x) imports an image through them and runs a container, and each
//! endpoint is scraped: the calls containerd made are counted under their method with code
//! OK, the plugin's own counters moved, and a call that fails (Info of a digest nobody
//! stored) is counted as NotFound. That call carries a W3C `traceparent`, whose trace id
//! must show up in strata-content's span for it (the harness runs servers at debug level).
//!
//! Needs what `e2e_smoke` needs: root, runc, the plugin binaries, containerd in the cache.

use std::path::Path;

use strata_common::client::unix_channel;
use strata_proto::content::InfoRequest;
use strata_proto::content::content_client::ContentClient;
use strata_testkit::Compression;
use strata_tests::metrics::Scrape;
use strata_tests::{PluginKind, Stack, StackOptions, Version, unique_name};

#[test]
fn metrics_and_trace_context_containerd_1_7() {
    metrics_and_trace_context(Version::V1_7);
}

#[test]
fn metrics_and_trace_context_containerd_2() {
    metrics_and_trace_context(Version::V2);
}

/// A trace id no other test uses.
const TRACE_ID: &str = "5c0fa3ee7b1a4d2f9e8d7c6b5a493827";
const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn metrics_and_trace_context(version: Version) {
    let dir = tempfile::tempdir().expect("temp dir");
    let snap_metrics = dir.path().join("snapshotter-metrics.sock");
    let content_metrics = dir.path().join("content-metrics.sock");
    let options = StackOptions::full()
        .with_plugin_args(
            PluginKind::Snapshotter,
            [
                "--metrics-address".into(),
                snap_metrics.clone().into_os_string(),
            ],
        )
        .with_plugin_args(
            PluginKind::Content,
            [
                "--metrics-address".into(),
                content_metrics.clone().into_os_string(),
            ],
        )
        .with_plugin_args(PluginKind::Differ, ["--metrics-address", "127.0.0.1:0"]);
    let stack = Stack::start(version, &options).expect("starting plugins and containerd");
    let ctd = &stack.containerd;

    // Real traffic: an import (content Write, snapshotter Prepare/Commit, differ Apply) and a
    // container (snapshotter Prepare/Mounts/Remove, content Info/Read).
    let image =
        strata_testkit::fixtures::busybox(Compression::Gzip).expect("building the busybox fixture");
    stack
        .import(&image, &["--snapshotter", "strata"])
        .expect("importing busybox");
    assert!(
        stack.differ_applied() > 0,
        "no layer went through strata-differ"
    );
    let id = unique_name("metrics");
    let out = ctd.ctr_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "strata",
        &image.name,
        &id,
        "/bin/echo",
        "metrics-ok",
    ]);
    assert!(out.contains("metrics-ok"), "container said {out:?}");

    // A call that fails, straight to strata-content, with a trace context as OpenTelemetry's
    // gRPC instrumentation sends it.
    let missing = format!("sha256:{}", "ab".repeat(32));
    let traceparent = format!("00-{TRACE_ID}-1a2b3c4d5e6f7081-01");
    let not_found = || {
        Scrape::unix(&content_metrics)
            .value(
                "strata_content_requests_total",
                &[("method", "Info"), ("code", "NotFound")],
            )
            .unwrap_or(0.0)
    };
    let not_found_before = not_found();
    let code = info_with_traceparent(
        stack
            .plugins
            .get(PluginKind::Content)
            .expect("content runs")
            .socket(),
        ctd.namespace(),
        &missing,
        &traceparent,
    );
    assert_eq!(code, tonic::Code::NotFound);
    assert_eq!(
        not_found() - not_found_before,
        1.0,
        "the failed Info counted once as NotFound"
    );
    // containerd removes a container's snapshot from the backend in its GC.
    stack.collect_garbage().expect("garbage collection");

    // strata-snapshotter
    let snap = Scrape::unix(&snap_metrics);
    for method in ["Prepare", "Commit", "Mounts", "Remove"] {
        snap.assert_positive(
            "strata_snapshotter_requests_total",
            &[("method", method), ("code", "OK")],
        );
    }
    snap.assert_positive(
        "strata_snapshotter_request_duration_seconds_count",
        &[("method", "Prepare")],
    );
    snap.assert_positive("strata_snapshotter_snapshots", &[("kind", "committed")]);

    // strata-content
    let content = Scrape::unix(&content_metrics);
    for method in ["Write", "Info", "Read"] {
        content.assert_positive(
            "strata_content_requests_total",
            &[("method", method), ("code", "OK")],
        );
    }
    content.assert_positive("strata_content_ingested_bytes_total", &[]);
    content.assert_positive("strata_content_read_bytes_total", &[]);
    content.assert_positive("strata_content_blobs", &[]);
    content.assert_positive("strata_content_blob_bytes", &[]);
    assert_eq!(
        content.value("strata_content_ingests_in_flight", &[]),
        Some(0.0),
        "every ingest committed\n{}",
        content.text
    );

    // strata-differ, on TCP
    let differ = Scrape::tcp(metrics_port(&stack, PluginKind::Differ));
    differ.assert_positive(
        "strata_differ_requests_total",
        &[("method", "Apply"), ("code", "OK")],
    );
    // The harness gives the differ no content_root here: blobs come from containerd.
    differ.assert_positive(
        "strata_differ_layers_applied_total",
        &[("media_type", GZIP_LAYER), ("source", "content_service")],
    );
    differ.assert_positive("strata_differ_applied_bytes_total", &[]);

    // The trace context reached strata-content's span for that call, with its outcome.
    let log = stack
        .plugins
        .get(PluginKind::Content)
        .expect("content runs")
        .log();
    let line = log
        .lines()
        .find(|l| l.contains("rpc finished") && l.contains(TRACE_ID))
        .unwrap_or_else(|| panic!("no span with trace id {TRACE_ID} in strata-content's log"));
    for want in [
        "method=\"Info\"",
        &format!("digest={missing}"),
        "parent_span_id=\"1a2b3c4d5e6f7081\"",
        "code=\"NotFound\"",
        &format!("namespace=\"{}\"", ctd.namespace()),
    ] {
        assert!(line.contains(want), "{want} not in {line}");
    }
}

#[test]
fn layers_read_from_blob_files_containerd_1_7() {
    layers_read_from_blob_files(Version::V1_7);
}

#[test]
fn layers_read_from_blob_files_containerd_2() {
    layers_read_from_blob_files(Version::V2);
}

/// With containerd's own content store and the differ given its directory, Apply reads layer
/// blobs from disk: counted under `source="blob_file"`, none under `content_service`.
fn layers_read_from_blob_files(version: Version) {
    let mut options = StackOptions::smoke()
        .with_plugin_args(PluginKind::Differ, ["--metrics-address", "127.0.0.1:0"]);
    options.differ_reads_blob_files = true;
    let stack = Stack::start(version, &options).expect("starting plugins and containerd");
    let image =
        strata_testkit::fixtures::busybox(Compression::Gzip).expect("building the busybox fixture");
    stack
        .import(&image, &["--snapshotter", "strata"])
        .expect("importing busybox");
    let applied = stack.differ_applied();
    assert!(applied > 0, "no layer went through strata-differ");
    let differ = Scrape::tcp(metrics_port(&stack, PluginKind::Differ));
    assert_eq!(
        differ.value(
            "strata_differ_layers_applied_total",
            &[("media_type", GZIP_LAYER), ("source", "blob_file")]
        ),
        Some(applied as f64),
        "every layer the differ logged as applied, counted as read from its file\n{}",
        differ.text
    );
    assert_eq!(
        differ.value(
            "strata_differ_layers_applied_total",
            &[("source", "content_service")]
        ),
        None,
        "{}",
        differ.text
    );
}

/// Info of `digest` on strata-content at `socket`, with `traceparent` in the metadata; the
/// gRPC code it ended with.
fn info_with_traceparent(
    socket: &Path,
    namespace: &str,
    digest: &str,
    traceparent: &str,
) -> tonic::Code {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut client = ContentClient::new(unix_channel(socket));
        let mut req = tonic::Request::new(InfoRequest {
            digest: digest.to_string(),
        });
        let md = req.metadata_mut();
        md.insert("traceparent", traceparent.parse().expect("ascii"));
        md.insert("containerd-namespace", namespace.parse().expect("ascii"));
        match client.info(req).await {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        }
    })
}

/// The TCP port `kind`'s metrics endpoint bound: the servers are given port 0 (no race for a
/// free port with other tests) and log the port they got.
fn metrics_port(stack: &Stack, kind: PluginKind) -> u16 {
    let log = stack.plugins.get(kind).expect("plugin runs").log();
    log.lines()
        .find_map(|l| {
            let (_, rest) = l.split_once("metrics endpoint listening address=")?;
            let (_, port) = rest.trim().rsplit_once(':')?;
            port.parse().ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "no metrics endpoint in {}'s log:\n{log}",
                kind.binary_name()
            )
        })
}
