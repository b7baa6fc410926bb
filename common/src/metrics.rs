//! The Prometheus endpoint every strata server can serve (`metrics_address`, off by default):
//! a registry named after the plugin (`strata_<plugin>_...`), and an HTTP/1 listener on a TCP
//! address or a unix socket answering `GET /metrics` in Prometheus' text format.
//!
//! hyper serves it: it is already in the tree under tonic's server, and one path needs no web
//! framework.

use std::convert::Infallible;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::serve::{Listener, ServeError};

/// Where the metrics endpoint listens: `host:port` (TCP) or a unix socket path (absolute, or
/// `unix://` followed by one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum MetricsAddress {
    Tcp(String),
    Unix(PathBuf),
}

#[derive(Debug, thiserror::Error)]
#[error(
    "invalid metrics address {0:?}: want host:port (e.g. 127.0.0.1:9431) or an absolute unix \
     socket path"
)]
pub struct MetricsAddressError(String);

impl FromStr for MetricsAddress {
    type Err = MetricsAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MetricsAddressError(s.to_string());
        let trimmed = s.trim();
        let path = trimmed.strip_prefix("unix://").unwrap_or(trimmed);
        if path.starts_with('/') {
            return Ok(MetricsAddress::Unix(PathBuf::from(path)));
        }
        if trimmed.starts_with("unix://") {
            return Err(bad());
        }
        // host:port, the host a name, an IPv4 address or a bracketed IPv6 address.
        let (host, port) = trimmed.rsplit_once(':').ok_or_else(bad)?;
        let port_ok = port.parse::<u16>().is_ok();
        let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        };
        if port_ok && host_ok {
            Ok(MetricsAddress::Tcp(trimmed.to_string()))
        } else {
            Err(bad())
        }
    }
}

impl TryFrom<String> for MetricsAddress {
    type Error = MetricsAddressError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MetricsAddress> for String {
    fn from(a: MetricsAddress) -> String {
        a.to_string()
    }
}

impl fmt::Display for MetricsAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsAddress::Tcp(a) => f.write_str(a),
            MetricsAddress::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The registry of the server named `name` (`strata-content` → metrics `strata_content_*`).
pub fn registry_for(name: &str) -> Registry {
    Registry::with_prefix(name.replace('-', "_"))
}

/// A bound metrics listener, not yet serving.
pub enum MetricsListener {
    Tcp(TcpListener),
    Unix(Listener),
}

impl MetricsListener {
    /// Binds `address`; a unix socket gets `mode` and the same stale-socket handling as the
    /// server's own socket.
    pub async fn bind(
        address: &MetricsAddress,
        mode: u32,
        gid: Option<u32>,
    ) -> Result<MetricsListener, ServeError> {
        match address {
            MetricsAddress::Tcp(a) => {
                let l = TcpListener::bind(a.as_str())
                    .await
                    .map_err(|source| ServeError::Io {
                        what: "bind metrics address",
                        path: PathBuf::from(a),
                        source,
                    })?;
                // The port bound, when the config asked for any (`:0`).
                let bound = l.local_addr().map_or_else(|_| a.clone(), |b| b.to_string());
                info!(address = %bound, "metrics endpoint listening");
                Ok(MetricsListener::Tcp(l))
            }
            MetricsAddress::Unix(p) => {
                let l = Listener::bind(p, mode, gid)?;
                info!(path = %p.display(), "metrics endpoint listening");
                Ok(MetricsListener::Unix(l))
            }
        }
    }

    /// The TCP address bound (port 0 resolved), for tests and logs.
    pub fn local_tcp_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            MetricsListener::Tcp(l) => l.local_addr().ok(),
            MetricsListener::Unix(_) => None,
        }
    }

    /// Serves `registry` until the task is dropped or aborted.
    pub async fn serve(self, registry: Arc<Registry>) {
        loop {
            let accepted = match &self {
                MetricsListener::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
                MetricsListener::Unix(l) => l.accept_unix().await.map(Conn::Unix),
            };
            match accepted {
                Ok(Conn::Tcp(s)) => spawn_connection(s, registry.clone()),
                Ok(Conn::Unix(s)) => spawn_connection(s, registry.clone()),
                Err(e) => {
                    // Out of descriptors and the like: do not spin.
                    warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

fn spawn_connection<S>(stream: S, registry: Arc<Registry>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = service_fn(move |req| {
            let registry = registry.clone();
            async move {
                // Collectors (a plugin's store sizes) may read the disk: not on a worker.
                let response = tokio::task::spawn_blocking(move || respond(&req, &registry))
                    .await
                    .unwrap_or_else(|e| {
                        plain(
                            http::StatusCode::INTERNAL_SERVER_ERROR,
                            &format!("encoding metrics: {e}\n"),
                        )
                    });
                Ok::<_, Infallible>(response)
            }
        });
        if let Err(e) = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            debug!(error = %e, "metrics connection ended");
        }
    });
}

fn plain(status: http::StatusCode, text: &str) -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(Bytes::from(text.to_string())));
    *r.status_mut() = status;
    r
}

fn respond<B>(req: &http::Request<B>, registry: &Registry) -> http::Response<Full<Bytes>> {
    if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
        return plain(http::StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
    }
    if !matches!(req.uri().path(), "/metrics" | "/") {
        return plain(http::StatusCode::NOT_FOUND, "GET /metrics\n");
    }
    let mut text = String::new();
    if let Err(e) = prometheus_text::encode(&mut text, registry) {
        return plain(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            &format!("encoding metrics: {e}\n"),
        );
    }
    let mut r = http::Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_addresses_parse() {
        for (text, want) in [
            (
                "127.0.0.1:9431",
                MetricsAddress::Tcp("127.0.0.1:9431".into()),
            ),
            ("localhost:0", MetricsAddress::Tcp("localhost:0".into())),
            ("[::1]:9431", MetricsAddress::Tcp("[::1]:9431".into())),
            (
                "/run/strata/metrics.sock",
                MetricsAddress::Unix("/run/strata/metrics.sock".into()),
            ),
            (
                "unix:///run/m.sock",
                MetricsAddress::Unix("/run/m.sock".into()),
            ),
        ] {
            assert_eq!(text.parse::<MetricsAddress>().unwrap(), want, "{text}");
        }
        for bad in [
            "",
            "9431",
            ":9431",
            "host:",
            "host:99999",
            "relative/path.sock",
            "unix://relative",
            "::1:9431",
            "[zz]:1",
            "a b:1",
        ] {
            assert!(bad.parse::<MetricsAddress>().is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn serves_the_registry_on_tcp_and_unix() {
        use prometheus_client::metrics::counter::Counter;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let mut registry = registry_for("strata-test");
        let c: Counter = Counter::default();
        registry.register("things", "Things", c.clone());
        c.inc_by(3);
        let registry = Arc::new(registry);

        async fn get(mut s: impl AsyncRead + AsyncWrite + Unpin, path: &str) -> String {
            s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }

        let tcp = MetricsListener::bind(&"127.0.0.1:0".parse().unwrap(), 0o600, None)
            .await
            .unwrap();
        let addr = tcp.local_tcp_addr().unwrap();
        let t1 = tokio::spawn(tcp.serve(registry.clone()));
        let out = get(
            tokio::net::TcpStream::connect(addr).await.unwrap(),
            "/metrics",
        )
        .await;
        assert!(out.starts_with("HTTP/1.0 200"), "{out}");
        assert!(out.contains("strata_test_things_total 3\n"), "{out}");
        let out = get(tokio::net::TcpStream::connect(addr).await.unwrap(), "/nope").await;
        assert!(out.starts_with("HTTP/1.0 404"), "{out}");

        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("m.sock");
        let unix = MetricsListener::bind(&MetricsAddress::Unix(sock.clone()), 0o600, None)
            .await
            .unwrap();
        let t2 = tokio::spawn(unix.serve(registry));
        let out = get(
            tokio::net::UnixStream::connect(&sock).await.unwrap(),
            "/metrics",
        )
        .await;
        assert!(
            out.contains("# TYPE strata_test_things_total counter"),
            "{out}"
        );
        t1.abort();
        t2.abort();
    }
}
