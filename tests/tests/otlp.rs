//! OTLP export of the per-call spans, across two strata servers: strata-differ reads its layer
//! from strata-content (its content service here, in containerd's place), both export their
//! spans to an OTLP/gRPC receiver run by this test (the collector service generated from
//! OpenTelemetry's protos), and a client calls Apply with a W3C `traceparent`. The differ's
//! Apply span must continue the client's trace as a child of the client's span, and
//! strata-content's spans for the differ's reads must sit in the same trace, under the
//! differ's span: one trace across the servers.
//!
//! Needs root (the differ applies onto a bind mount) and the plugin binaries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use strata_common::client::unix_channel;
use strata_common::namespace::RequestContext;
use strata_proto::diff::ApplyRequest;
use strata_proto::diff::diff_client::DiffClient;
use strata_proto::types::{Descriptor, Mount};
use strata_testkit::Compression;
use strata_testkit::layer::{compress, tar};
use strata_testkit::tree::file;
use strata_tests::bench::{content_client, ingest, ingest_messages};
use strata_tests::{PluginKind, StrataProcess};

const TRACE_ID: &str = "7a3c1e5f9b2d4c6e8f0a1b3c5d7e9f01";
const CLIENT_SPAN: &str = "0123456789abcdef";

/// One exported span, flattened.
#[derive(Clone, Debug)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Exported>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().expect("receiver lock");
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(text)
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                got.push(Exported {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            (
                                kv.key.clone(),
                                kv.value.as_ref().map(text).unwrap_or_default(),
                            )
                        })
                        .collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn text(v: &opentelemetry_proto::tonic::common::v1::AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn spans_of_one_apply_form_one_trace_across_differ_and_content() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let receiver = Receiver::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind the OTLP receiver");
    let port = listener.local_addr().expect("receiver address").port();
    let service = TraceServiceServer::new(receiver.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let otlp = format!("http://127.0.0.1:{port}");
    let content = StrataProcess::start(
        PluginKind::Content,
        dir.path(),
        &["--otlp-endpoint".into(), otlp.clone().into()],
    )
    .expect("strata-content starts");
    let differ = StrataProcess::start(
        PluginKind::Differ,
        dir.path(),
        &[
            "--otlp-endpoint".into(),
            otlp.into(),
            "--content-address".into(),
            content.socket().into(),
        ],
    )
    .expect("strata-differ starts");

    // A gzip layer in strata-content, then Apply of it through the differ with a trace
    // context, onto a plain directory (a bind mount, as the native snapshotter hands out).
    let layer = compress(
        &tar(&[file("hello.txt", "traced\n")]).expect("a tar layer"),
        Compression::Gzip,
    )
    .expect("gzip");
    let digest = strata_testkit::sha256_digest(&layer);
    let target = dir.path().join("target");
    std::fs::create_dir(&target).expect("target dir");
    let cx = RequestContext::with_namespace("default");
    rt.block_on(async {
        let mut c = content_client(content.socket());
        let msgs = ingest_messages("otlp-layer", &layer, &digest);
        ingest(&mut c, &cx, &digest, msgs).await;

        let mut req = cx
            .request(ApplyRequest {
                diff: Some(Descriptor {
                    media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                    digest: digest.clone(),
                    size: layer.len() as i64,
                    annotations: Default::default(),
                }),
                mounts: vec![Mount {
                    r#type: "bind".into(),
                    source: target.display().to_string(),
                    target: String::new(),
                    options: vec!["rbind".into(), "rw".into()],
                }],
                payloads: Default::default(),
                sync_fs: false,
            })
            .expect("request");
        req.metadata_mut().insert(
            "traceparent",
            format!("00-{TRACE_ID}-{CLIENT_SPAN}-01")
                .parse()
                .expect("ascii"),
        );
        DiffClient::new(unix_channel(differ.socket()))
            .apply(req)
            .await
            .expect("Apply");
    });
    assert_eq!(
        std::fs::read_to_string(target.join("hello.txt")).expect("applied file"),
        "traced\n"
    );

    // The batch exporters send every few seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (apply, reads) = loop {
        let spans = receiver.0.lock().expect("receiver lock").clone();
        let apply = spans
            .iter()
            .find(|s| s.name == "containerd.services.diff.v1.Diff/Apply")
            .cloned();
        let reads: Vec<Exported> = spans
            .iter()
            .filter(|s| s.service == "strata-content" && s.trace_id == TRACE_ID)
            .cloned()
            .collect();
        if let Some(apply) = apply
            && !reads.is_empty()
        {
            break (apply, reads);
        }
        assert!(
            Instant::now() < deadline,
            "spans not exported in time; got {spans:#?}\n{}\n{}",
            differ.log_tail(40),
            content.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    assert_eq!(apply.service, "strata-differ");
    assert_eq!(apply.trace_id, TRACE_ID, "{apply:#?}");
    assert_eq!(apply.parent_span_id, CLIENT_SPAN, "{apply:#?}");
    assert_eq!(apply.attributes.get("code").map(String::as_str), Some("OK"));
    assert_eq!(apply.attributes.get("digest"), Some(&digest));
    assert_eq!(
        apply.attributes.get("namespace").map(String::as_str),
        Some("default")
    );
    // strata-content's calls from the differ (Info, Read) are children of the differ's Apply
    // span: the differ forwarded its own span's context.
    for r in &reads {
        assert_eq!(r.parent_span_id, apply.span_id, "{r:#?}\nApply: {apply:#?}");
    }
    assert!(
        reads
            .iter()
            .any(|r| r.name == "containerd.services.content.v1.Content/Read"),
        "{reads:#?}"
    );

    drop(differ);
    drop(content);
    let _ = stop.send(());
    rt.block_on(server)
        .expect("receiver task")
        .expect("receiver");
}
