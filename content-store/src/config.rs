//! strata-content's config file.

use serde::{Deserialize, Serialize};
use strata_common::cli::ServerConfig;

/// The name the server goes by: socket `/run/strata/content.sock`, state
/// `/var/lib/strata/content`, config `/etc/strata/content.toml`.
pub const NAME: &str = "content";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub content: ContentConfig,
}

/// The `[content]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContentConfig {
    /// Ingests nobody has written to for this long are removed (0: never). A day by default:
    /// long enough for a stalled pull to resume, short enough that crashed clients' partial
    /// downloads do not pile up.
    pub ingest_expiry_secs: u64,
}

impl Default for ContentConfig {
    fn default() -> Self {
        ContentConfig {
            ingest_expiry_secs: 24 * 3600,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::defaults_for(NAME),
            content: ContentConfig::default(),
        }
    }
}

strata_common::plugin_config!(Config, NAME);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_table_is_optional() {
        let text = strata_common::cli::render(&Config::default()).unwrap();
        let server_only: String = text.split("[content]").next().unwrap().to_string();
        let parsed: Config = toml_from(&server_only);
        assert_eq!(parsed.content.ingest_expiry_secs, 24 * 3600);
        let parsed: Config = toml_from(&format!(
            "{server_only}\n[content]\ningest_expiry_secs = 5\n"
        ));
        assert_eq!(parsed.content.ingest_expiry_secs, 5);
    }

    fn toml_from(text: &str) -> Config {
        let path = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(path.path(), text).unwrap();
        let args = strata_common::cli::ServerArgs {
            config: Some(path.path().to_path_buf()),
            ..Default::default()
        };
        strata_common::cli::load(&args, Config::default()).unwrap()
    }
}
