//! Logging setup: `RUST_LOG` wins when set (full tracing directives), otherwise `--log-level`;
//! and, when `otlp_endpoint` is set, the same spans exported over OTLP/gRPC.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// Whether spans go to an OTLP exporter: only then do calls read and forward trace context
/// into OpenTelemetry's types (see [`crate::rpc`]).
static OTLP_EXPORT: AtomicBool = AtomicBool::new(false);

pub(crate) fn otlp_export() -> bool {
    OTLP_EXPORT.load(Ordering::Relaxed)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The HTTP/2 and transport crates under the gRPC server, whose debug output is a line per
/// frame (a 1 GiB ingest is 65k frames): measured to slow strata's own benchmarks.
const TRANSPORT_CRATES: [&str; 4] = ["h2", "hyper", "hyper_util", "tower"];

/// `--log-level` as filter directives: a bare `debug` or `trace` is strata's (and tonic's)
/// but keeps the transport crates at `info`; anything with a directive of its own (`,` or
/// `=`) is taken as written.
pub fn level_directives(level: &str) -> String {
    let bare = level.trim();
    if bare.contains(',') || bare.contains('=') {
        return level.to_string();
    }
    if bare.eq_ignore_ascii_case("debug") || bare.eq_ignore_ascii_case("trace") {
        let capped: Vec<String> = TRANSPORT_CRATES
            .iter()
            .map(|c| format!("{c}=info"))
            .collect();
        return format!("{bare},{}", capped.join(","));
    }
    level.to_string()
}

/// What [`init`] installed that must be flushed at exit.
#[must_use = "spans still buffered for OTLP are lost unless shut down"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (waiting for the collector at most a few seconds).
    /// Call it while the runtime the exporter was made in still runs.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown_with_timeout(std::time::Duration::from_secs(5))
        {
            tracing::warn!(error = %e, "OTLP exporter did not flush");
        }
    }
}

/// Installs the global subscriber writing to stderr (journald captures it under systemd) and,
/// with `otlp_endpoint` (`http://host:port` of an OTLP/gRPC collector), exporting the spans
/// as `service` (the binary's name). Fails if `level` is not a valid filter, so a typo in the
/// config is seen at start-up. With an endpoint, must run inside the tokio runtime that will
/// carry the exporter's connection.
pub fn init(
    level: &str,
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    service: &str,
) -> Result<Telemetry, String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives),
        _ => EnvFilter::try_new(level_directives(level)),
    }
    .map_err(|e| format!("invalid log level {level:?}: {e}"))?;
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let provider = match otlp_endpoint {
        None => None,
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_string())
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service.to_string())));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| format!("install log subscriber: {e}"))?;
    OTLP_EXPORT.store(provider.is_some(), Ordering::Relaxed);
    Ok(Telemetry { provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_keeps_the_transport_at_info() {
        assert_eq!(
            level_directives("debug"),
            "debug,h2=info,hyper=info,hyper_util=info,tower=info"
        );
        assert_eq!(level_directives("info"), "info");
        assert_eq!(level_directives("debug,h2=trace"), "debug,h2=trace");
        assert!(EnvFilter::try_new(level_directives("trace")).is_ok());
    }
}
