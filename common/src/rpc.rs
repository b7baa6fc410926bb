//! What every strata server does around each gRPC call, as one tower layer on the tonic server:
//! a tracing span per call (method, namespace, the W3C trace context the caller sent, the key
//! or digest the handler records, and the outcome) and, when metrics are on, the call counted
//! by method and gRPC status code and timed.
//!
//! A call ends when its response body ends (the trailers carry the status of a streaming call
//! or of a unary call that succeeded), not when the handler returns: a Read stream is timed
//! until its last message, and a stream the client abandons counts as `Canceled`.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tower::{Layer, Service};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::namespace::NAMESPACE_HEADER;

/// The W3C trace context header (`traceparent`), as OpenTelemetry's gRPC instrumentation
/// sends it in gRPC metadata.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Method label values kept per server. The names come from the request path, which a
/// client chooses: past this many distinct names, new ones are counted as `other`, so a
/// misbehaving client cannot grow the metrics without bound.
const MAX_METHODS: usize = 64;

/// Latency buckets from 100 us (a Stat answered in place) to 5 min (a big layer's Apply).
const DURATION_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 30.0, 100.0, 300.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

/// Per-RPC metrics: `<prefix>_requests_total{method,code}` and
/// `<prefix>_request_duration_seconds{method}`.
#[derive(Debug)]
pub struct RpcMetrics {
    requests: Family<CallLabels, Counter>,
    duration: Family<MethodLabels, Histogram>,
    methods: Mutex<HashSet<String>>,
}

impl RpcMetrics {
    /// Creates the metrics and registers them in `registry` (whose prefix names the plugin).
    pub fn register(registry: &mut Registry) -> Arc<RpcMetrics> {
        let requests = Family::<CallLabels, Counter>::default();
        let duration: Family<MethodLabels, Histogram> =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        registry.register(
            "requests",
            "gRPC calls served, by method and gRPC status code",
            requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from a gRPC call's arrival to the end of its response, by method",
            Unit::Seconds,
            duration.clone(),
        );
        Arc::new(RpcMetrics {
            requests,
            duration,
            methods: Mutex::new(HashSet::new()),
        })
    }

    /// The label value for `method`: itself while fewer than [`MAX_METHODS`] names are known.
    fn method_label(&self, method: &str) -> String {
        let Ok(mut known) = self.methods.lock() else {
            return "other".to_string();
        };
        if known.contains(method) {
            return method.to_string();
        }
        if known.len() >= MAX_METHODS {
            return "other".to_string();
        }
        known.insert(method.to_string());
        method.to_string()
    }

    fn observe(&self, method: String, code: &'static str, seconds: f64) {
        self.duration
            .get_or_create(&MethodLabels {
                method: method.clone(),
            })
            .observe(seconds);
        self.requests
            .get_or_create(&CallLabels { method, code })
            .inc();
    }
}

/// A W3C trace context (`traceparent`) as a caller sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// The caller's span, 16 lowercase hex digits.
    pub parent_id: String,
    pub sampled: bool,
}

impl TraceParent {
    /// Parses a `traceparent` value (`00-<trace id>-<parent id>-<flags>`). Anything else, and
    /// the all-zero ids the spec calls invalid, is `None`: a bad header from a caller must not
    /// fail its call.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let parent_id = parts.next()?;
        let flags = parts.next()?;
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        // Version ff is forbidden; a later version may append fields, an 00 one may not.
        if !hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        if !hex(trace_id, 32) || !hex(parent_id, 16) || !hex(flags, 2) {
            return None;
        }
        if trace_id.bytes().all(|b| b == b'0') || parent_id.bytes().all(|b| b == b'0') {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceParent {
            trace_id: trace_id.to_string(),
            parent_id: parent_id.to_string(),
            sampled: flags & 1 == 1,
        })
    }
}

/// Reads the W3C trace context of an incoming call from its HTTP/2 headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes a trace context into an outgoing call's metadata.
struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Puts the current span's trace context (`traceparent`) on an outgoing call, so the server
/// it goes to (containerd, another strata server) continues the trace. Only while spans are
/// exported over OTLP: otherwise there is no span id anyone could look up.
pub fn inject_trace_context(md: &mut tonic::metadata::MetadataMap) {
    if !crate::telemetry::otlp_export() {
        return;
    }
    let cx = Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(md));
}

/// Records the snapshot key a call is about in its span (see [`RpcLayer`]).
pub fn record_key(key: &str) {
    Span::current().record("key", key);
}

/// Records the digest a call is about in its span (see [`RpcLayer`]); formatted only when
/// the span is recorded at all.
pub fn record_digest(digest: &dyn std::fmt::Display) {
    Span::current().record("digest", tracing::field::display(digest));
}

/// The name gRPC gives a status code (grpc-go's `codes.Code.String()`, which containerd's
/// logs and the usual gRPC dashboards use).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The status in a `grpc-status` header or trailer; a value that is not a code is `Unknown`,
/// as gRPC clients read it.
fn status_of(headers: &http::HeaderMap) -> Option<&'static str> {
    let value = headers.get("grpc-status")?;
    let code = value
        .to_str()
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
        .map_or(tonic::Code::Unknown, tonic::Code::from_i32);
    Some(code_name(code))
}

/// `/containerd.services.content.v1.Content/Info` → (`containerd.services.content.v1.Content`,
/// `Info`).
fn split_path(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.rsplit_once('/').unwrap_or(("", path))
}

/// The tower layer that traces, counts and times every call (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct RpcLayer {
    metrics: Option<Arc<RpcMetrics>>,
}

impl RpcLayer {
    /// Spans only; no metrics.
    pub fn new() -> Self {
        RpcLayer::default()
    }

    /// Spans, and calls counted and timed in `metrics`.
    pub fn with_metrics(metrics: Arc<RpcMetrics>) -> Self {
        RpcLayer {
            metrics: Some(metrics),
        }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RpcService<S> {
    inner: S,
    metrics: Option<Arc<RpcMetrics>>,
}

/// What is known about a call until it ends.
struct CallState {
    span: Span,
    method: String,
    start: Instant,
    metrics: Option<Arc<RpcMetrics>>,
    done: bool,
}

impl CallState {
    fn finish(&mut self, code: &'static str) {
        if self.done {
            return;
        }
        self.done = true;
        crate::memory::call_finished();
        let elapsed = self.start.elapsed();
        self.span.record("code", code);
        tracing::debug!(
            parent: &self.span,
            code,
            elapsed_us = elapsed.as_micros() as u64,
            "rpc finished"
        );
        if let Some(m) = &self.metrics {
            m.observe(m.method_label(&self.method), code, elapsed.as_secs_f64());
        }
    }
}

impl Drop for CallState {
    fn drop(&mut self) {
        // The response (or the call's future) went away before its status was sent: the
        // client cancelled or the connection broke.
        self.finish("Canceled");
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = http::Response<RpcBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<RpcBody<ResBody>>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let (service, method) = split_path(req.uri().path());
        let headers = req.headers();
        let namespace = headers
            .get(NAMESPACE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let trace = headers
            .get(TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        let span = tracing::info_span!(
            "rpc",
            service,
            method,
            namespace,
            key = Empty,
            digest = Empty,
            trace_id = Empty,
            parent_span_id = Empty,
            code = Empty,
            otel.name = Empty,
            otel.kind = Empty,
        );
        if let Some(t) = &trace {
            span.record("trace_id", t.trace_id.as_str());
            span.record("parent_span_id", t.parent_id.as_str());
        }
        if crate::telemetry::otlp_export() {
            // The exported span is named as OpenTelemetry's gRPC conventions name it, and is a
            // child of the caller's span (none without a valid traceparent).
            span.record("otel.name", req.uri().path().trim_start_matches('/'));
            span.record("otel.kind", "server");
            let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
            if let Err(e) = span.set_parent(parent) {
                tracing::debug!(error = %e, "cannot parent the call's span");
            }
        }
        crate::memory::call_started();
        let mut state = CallState {
            span: span.clone(),
            method: method.to_string(),
            start: Instant::now(),
            metrics: self.metrics.clone(),
            done: false,
        };
        let future = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        Box::pin(async move {
            let result = {
                let span = state.span.clone();
                tracing::Instrument::instrument(future, span).await
            };
            match result {
                Ok(response) => {
                    // A trailers-only response (an error from the handler) has its status in
                    // the headers; otherwise the trailers at the end of the body carry it.
                    if let Some(code) = status_of(response.headers()) {
                        state.finish(code);
                    }
                    Ok(response.map(|body| RpcBody {
                        inner: body,
                        state: Some(state),
                    }))
                }
                Err(e) => {
                    state.finish("Internal");
                    Err(e)
                }
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its call's span and metrics when its trailers pass or when
    /// it is dropped.
    pub struct RpcBody<B> {
        #[pin]
        inner: B,
        state: Option<CallState>,
    }
}

impl<B> Body for RpcBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        // Streams are produced while the body is polled: their work belongs to the call's span.
        let span = this.state.as_ref().map(|s| s.span.clone());
        let _entered = span.as_ref().map(Span::enter);
        let polled = this.inner.poll_frame(cx);
        if let Some(state) = this.state.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(code) = frame.trailers_ref().and_then(status_of) {
                        state.finish(code);
                    }
                }
                Poll::Ready(Some(Err(_))) => state.finish("Internal"),
                // The end without a status: gRPC clients read that as Unknown... unless the
                // headers carried it already, in which case this does nothing.
                Poll::Ready(None) => state.finish("Unknown"),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use prometheus_client::encoding::prometheus_text;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;
    use crate::client::unix_channel;
    use crate::serve::{Listener, serve_until};

    #[test]
    fn traceparent_parsing_follows_the_w3c_rules() {
        let t =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id, "00f067aa0ba902b7");
        assert!(t.sampled);
        // A later version may carry more fields.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some_and(|t| !t.sampled)
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn method_labels_are_bounded() {
        let m = RpcMetrics::register(&mut Registry::default());
        for i in 0..MAX_METHODS {
            assert_eq!(m.method_label(&format!("M{i}")), format!("M{i}"));
        }
        assert_eq!(m.method_label("M0"), "M0");
        assert_eq!(m.method_label("OneTooMany"), "other");
    }

    /// Log lines written by the subscriber installed for one test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn calls_are_counted_by_code_and_traced_with_the_callers_trace_id() {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let mut registry = Registry::with_prefix("strata_test");
        let metrics = RpcMetrics::register(&mut registry);
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let listener = Listener::bind(&sock, 0o600, None).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_until(
            listener,
            &["test.Service"],
            |r| r,
            RpcLayer::with_metrics(metrics),
            async {
                let _ = stopped.await;
            },
            Duration::from_secs(5),
        ));

        let mut client = HealthClient::new(unix_channel(&sock));
        let check = |service: &str| HealthCheckRequest {
            service: service.to_string(),
        };
        client.check(check("test.Service")).await.unwrap();
        client.check(check("")).await.unwrap();
        let mut missing = tonic::Request::new(check("no.Such"));
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        missing
            .metadata_mut()
            .insert(TRACEPARENT_HEADER, traceparent.parse().unwrap());
        missing
            .metadata_mut()
            .insert(NAMESPACE_HEADER, "ns1".parse().unwrap());
        let err = client.check(missing).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        let _ = stop.send(());
        server.await.unwrap().unwrap();

        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("strata_test_requests_total{method=\"Check\",code=\"OK\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("strata_test_requests_total{method=\"Check\",code=\"NotFound\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("strata_test_request_duration_seconds_count{method=\"Check\"} 3\n"),
            "{text}"
        );

        let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let line = logs
            .lines()
            .find(|l| l.contains("rpc finished") && l.contains("0af7651916cd43dd8448eb211c80319c"))
            .unwrap_or_else(|| panic!("no span with the trace id in:\n{logs}"));
        for want in [
            "method=\"Check\"",
            "namespace=\"ns1\"",
            "parent_span_id=\"b7ad6b7169203331\"",
            "code=\"NotFound\"",
        ] {
            assert!(line.contains(want), "{want} not in {line}");
        }
    }
}
