//! Logging setup: `RUST_LOG` wins when set (full tracing directives), otherwise `--log-level`.

use std::io::IsTerminal;

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

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

/// Installs the global subscriber writing to stderr (journald captures it under systemd).
/// Fails if `level` is not a valid filter, so a typo in the config is seen at start-up.
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives),
        _ => EnvFilter::try_new(level_directives(level)),
    }
    .map_err(|e| format!("invalid log level {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let res = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    res.map_err(|e| format!("install log subscriber: {e}"))
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
