//! Configuration shared by the three servers: a TOML file, overridden by command-line flags,
//! with `--print-config` to show the effective result.
//!
//! Each plugin has its own config type holding a [`ServerConfig`] under `[server]` next to its
//! own tables; [`load`] fills it from the file and then applies [`ServerArgs`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::metrics::MetricsAddress;
use crate::telemetry::LogFormat;

/// Flags every strata server takes.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServerArgs {
    /// Unix socket to serve containerd's API on.
    #[arg(long, value_name = "SOCKET")]
    pub address: Option<PathBuf>,
    /// Directory holding this plugin's state.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// TOML config file; flags override it. Without it, the default path is read if present.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log level or tracing directives (RUST_LOG, when set, wins).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log output format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Permission bits of the socket, in octal (e.g. 0660).
    #[arg(long, value_name = "MODE")]
    pub socket_mode: Option<String>,
    /// Serve Prometheus metrics on this TCP host:port or unix socket path.
    #[arg(long, value_name = "ADDRESS")]
    pub metrics_address: Option<MetricsAddress>,
    /// Export spans to this OTLP/gRPC collector (http://host:port).
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The `[server]` table of every plugin's config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub address: PathBuf,
    pub root: PathBuf,
    /// Octal string, because TOML has no octal output and `432` says nothing to a reader.
    pub socket_mode: String,
    /// Group owning the socket (e.g. a group containerd's user is in); unchanged when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_gid: Option<u32>,
    pub log_level: String,
    pub log_format: LogFormat,
    /// How long in-flight calls may run after SIGTERM before the server exits anyway.
    pub shutdown_timeout_secs: u64,
    /// Threads running the async side of the server (the gRPC connections and whatever a
    /// call does in place); work that blocks runs on other threads. Unset: the plugin's
    /// choice ([`PluginConfig::default_worker_threads`]); 0: one per CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
    /// Where to serve Prometheus metrics (`GET /metrics`): a TCP `host:port` or a unix
    /// socket path (made with `socket_mode` and `socket_gid`). Unset: no metrics endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<MetricsAddress>,
    /// An OTLP/gRPC collector (`http://host:port`, e.g. an OpenTelemetry Collector or Jaeger on
    /// 4317) to export each call's span to, as a child of the caller's `traceparent`. Unset:
    /// spans are only logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
}

impl ServerConfig {
    /// Defaults for the server named `name`: `/run/strata/<name>.sock`, `/var/lib/strata/<name>`.
    pub fn defaults_for(name: &str) -> Self {
        ServerConfig {
            address: PathBuf::from(format!("/run/strata/{name}.sock")),
            root: PathBuf::from(format!("/var/lib/strata/{name}")),
            socket_mode: "0660".to_string(),
            socket_gid: None,
            log_level: "info".to_string(),
            log_format: LogFormat::Text,
            shutdown_timeout_secs: 10,
            worker_threads: None,
            metrics_address: None,
            otlp_endpoint: None,
        }
    }

    pub fn socket_mode_bits(&self) -> Result<u32, ConfigError> {
        parse_mode(&self.socket_mode)
    }
}

/// A plugin's whole config file.
pub trait PluginConfig: Serialize + DeserializeOwned {
    /// Where the config is read from when `--config` is not given.
    fn default_path() -> PathBuf;
    fn server(&self) -> &ServerConfig;
    fn server_mut(&mut self) -> &mut ServerConfig;
    /// `worker_threads` when the config leaves it unset; 0 is one per CPU.
    fn default_worker_threads() -> usize {
        0
    }
}

/// Implements [`PluginConfig`] for a config struct with a `server: ServerConfig` field, reading
/// `/etc/strata/<name>.toml` by default.
#[macro_export]
macro_rules! plugin_config {
    ($ty:ty, $name:expr) => {
        $crate::plugin_config!($ty, $name, worker_threads = 0);
    };
    ($ty:ty, $name:expr, worker_threads = $workers:expr) => {
        impl $crate::cli::PluginConfig for $ty {
            fn default_worker_threads() -> usize {
                $workers
            }
            fn default_path() -> ::std::path::PathBuf {
                ::std::path::PathBuf::from(format!("/etc/strata/{}.toml", $name))
            }
            fn server(&self) -> &$crate::cli::ServerConfig {
                &self.server
            }
            fn server_mut(&mut self) -> &mut $crate::cli::ServerConfig {
                &mut self.server
            }
        }
    };
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid socket mode {0:?}: want octal permission bits such as 0660")]
    SocketMode(String),
    #[error(
        "invalid otlp_endpoint {0:?}: want http://host:port of an OTLP/gRPC collector \
         (TLS is not built in)"
    )]
    OtlpEndpoint(String),
    #[error("render config: {0}")]
    Render(#[from] toml::ser::Error),
}

/// `http://host:port`: what tonic can dial without TLS.
fn valid_otlp_endpoint(e: &str) -> bool {
    e.strip_prefix("http://")
        .and_then(|rest| rest.trim_end_matches('/').rsplit_once(':'))
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

fn parse_mode(s: &str) -> Result<u32, ConfigError> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(ConfigError::SocketMode(s.to_string())),
    }
}

/// Reads the config (the file named by `--config`, else the default path if it exists, else
/// `defaults`) and applies the flags on top.
pub fn load<C: PluginConfig>(args: &ServerArgs, defaults: C) -> Result<C, ConfigError> {
    let mut config = match &args.config {
        Some(path) => read_file(path)?,
        None => {
            let path = C::default_path();
            if path.exists() {
                read_file(&path)?
            } else {
                defaults
            }
        }
    };
    let server = config.server_mut();
    if let Some(a) = &args.address {
        server.address = a.clone();
    }
    if let Some(r) = &args.root {
        server.root = r.clone();
    }
    if let Some(l) = &args.log_level {
        server.log_level = l.clone();
    }
    if let Some(f) = args.log_format {
        server.log_format = f;
    }
    if let Some(m) = &args.socket_mode {
        server.socket_mode = m.clone();
    }
    if let Some(a) = &args.metrics_address {
        server.metrics_address = Some(a.clone());
    }
    if let Some(e) = &args.otlp_endpoint {
        server.otlp_endpoint = Some(e.clone());
    }
    if let Some(e) = &server.otlp_endpoint
        && !valid_otlp_endpoint(e)
    {
        return Err(ConfigError::OtlpEndpoint(e.clone()));
    }
    server.socket_mode_bits()?;
    if server.worker_threads.is_none() {
        server.worker_threads = Some(C::default_worker_threads());
    }
    Ok(config)
}

fn read_file<C: DeserializeOwned>(path: &Path) -> Result<C, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// The effective config as TOML, for `--print-config`.
pub fn render<C: Serialize>(config: &C) -> Result<String, ConfigError> {
    Ok(toml::to_string_pretty(config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct TestConfig {
        server: ServerConfig,
        #[serde(default)]
        knob: u32,
    }

    impl PluginConfig for TestConfig {
        fn default_path() -> PathBuf {
            PathBuf::from("/nonexistent/strata-test.toml")
        }
        fn server(&self) -> &ServerConfig {
            &self.server
        }
        fn server_mut(&mut self) -> &mut ServerConfig {
            &mut self.server
        }
        fn default_worker_threads() -> usize {
            3
        }
    }

    fn defaults() -> TestConfig {
        TestConfig {
            server: ServerConfig::defaults_for("test"),
            knob: 1,
        }
    }

    #[test]
    fn defaults_apply_without_a_file() {
        let c = load(&ServerArgs::default(), defaults()).unwrap();
        assert_eq!(c.server.address, PathBuf::from("/run/strata/test.sock"));
        assert_eq!(c.server.root, PathBuf::from("/var/lib/strata/test"));
        assert_eq!(c.server.socket_mode_bits().unwrap(), 0o660);
    }

    #[test]
    fn flags_override_the_file_and_render_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let mut file = defaults();
        file.server.root = "/srv/from-file".into();
        file.server.log_level = "warn".into();
        file.knob = 7;
        std::fs::write(&path, render(&file).unwrap()).unwrap();

        let args = ServerArgs {
            config: Some(path),
            root: Some("/srv/from-flag".into()),
            socket_mode: Some("0600".into()),
            ..Default::default()
        };
        let c = load(&args, defaults()).unwrap();
        assert_eq!(c.server.root, PathBuf::from("/srv/from-flag"));
        assert_eq!(c.server.log_level, "warn");
        assert_eq!(c.server.socket_mode_bits().unwrap(), 0o600);
        assert_eq!(c.knob, 7);
        let again: TestConfig = toml::from_str(&render(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn worker_threads_default_to_the_plugins_choice_unless_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let args = ServerArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        // A file written before the key existed (no `worker_threads`) still loads.
        let text = render(&defaults()).unwrap();
        assert!(!text.contains("worker_threads"), "{text}");
        std::fs::write(&path, &text).unwrap();
        let c = load(&args, defaults()).unwrap();
        assert_eq!(c.server.worker_threads, Some(3));
        assert!(render(&c).unwrap().contains("worker_threads = 3"));

        std::fs::write(
            &path,
            text.replace("[server]\n", "[server]\nworker_threads = 0\n"),
        )
        .unwrap();
        assert_eq!(
            load(&args, defaults()).unwrap().server.worker_threads,
            Some(0)
        );
    }

    #[test]
    fn metrics_address_is_off_by_default_and_read_from_file_or_flag() {
        let c = load(&ServerArgs::default(), defaults()).unwrap();
        assert_eq!(c.server.metrics_address, None);
        assert!(!render(&c).unwrap().contains("metrics_address"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let text = render(&defaults()).unwrap();
        let args = ServerArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        for (value, want) in [
            (
                "127.0.0.1:9431",
                MetricsAddress::Tcp("127.0.0.1:9431".into()),
            ),
            (
                "/run/strata/content-metrics.sock",
                MetricsAddress::Unix("/run/strata/content-metrics.sock".into()),
            ),
        ] {
            std::fs::write(
                &path,
                text.replace(
                    "[server]\n",
                    &format!("[server]\nmetrics_address = {value:?}\n"),
                ),
            )
            .unwrap();
            let c = load(&args, defaults()).unwrap();
            assert_eq!(c.server.metrics_address.as_ref(), Some(&want));
            // --print-config shows it as written, and reads back the same.
            let again: TestConfig = toml::from_str(&render(&c).unwrap()).unwrap();
            assert_eq!(again.server.metrics_address, Some(want));
        }

        let flagged = ServerArgs {
            metrics_address: Some("[::1]:9000".parse().unwrap()),
            ..args.clone()
        };
        assert_eq!(
            load(&flagged, defaults()).unwrap().server.metrics_address,
            Some(MetricsAddress::Tcp("[::1]:9000".into()))
        );

        std::fs::write(
            &path,
            text.replace("[server]\n", "[server]\nmetrics_address = \"9431\"\n"),
        )
        .unwrap();
        let err = load(&args, defaults()).unwrap_err().to_string();
        assert!(err.contains("invalid metrics address"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn otlp_endpoint_must_be_a_plain_http_url() {
        assert_eq!(
            load(&ServerArgs::default(), defaults())
                .unwrap()
                .server
                .otlp_endpoint,
            None
        );
        let with = |e: &str| ServerArgs {
            otlp_endpoint: Some(e.to_string()),
            ..Default::default()
        };
        for ok in ["http://127.0.0.1:4317", "http://collector.internal:4317/"] {
            let c = load(&with(ok), defaults()).unwrap();
            assert_eq!(c.server.otlp_endpoint.as_deref(), Some(ok));
        }
        for bad in [
            "127.0.0.1:4317",
            "https://c:4317",
            "http://c",
            "http://:4317",
        ] {
            assert!(
                matches!(
                    load(&with(bad), defaults()),
                    Err(ConfigError::OtlpEndpoint(_))
                ),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nnope = 1\n").unwrap();
        let args = ServerArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let err = load(&args, defaults()).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");

        let args = ServerArgs {
            config: Some(dir.path().join("missing.toml")),
            ..Default::default()
        };
        assert!(matches!(
            load(&args, defaults()),
            Err(ConfigError::Read { .. })
        ));

        let args = ServerArgs {
            socket_mode: Some("rw-rw----".into()),
            ..Default::default()
        };
        assert!(matches!(
            load(&args, defaults()),
            Err(ConfigError::SocketMode(_))
        ));
    }
}
