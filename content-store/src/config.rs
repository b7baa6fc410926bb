//! strata-content's config file.

use serde::{Deserialize, Serialize};
use strata_common::cli::ServerConfig;

use crate::backend::s3::S3Config;

/// The name the server goes by: socket `/run/strata/content.sock`, state
/// `/var/lib/strata/content`, config `/etc/strata/content.toml`.
pub const NAME: &str = "content";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Optional in the file: a config holding only `[content]` gets the defaults (flags
    /// still override them).
    #[serde(default = "server_defaults")]
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
    /// Where committed blobs live.
    pub backend: BackendKind,
    /// The `[content.s3]` table, used with `backend = "s3"`.
    pub s3: S3Config,
}

/// `backend = "local" | "s3"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// `<root>/blobs/<alg>/<hex>`, containerd's layout.
    #[default]
    Local,
    /// An S3-compatible bucket shared by a fleet, `<root>/blobs` its local cache.
    S3,
}

impl Default for ContentConfig {
    fn default() -> Self {
        ContentConfig {
            ingest_expiry_secs: 24 * 3600,
            backend: BackendKind::Local,
            s3: S3Config::default(),
        }
    }
}

fn server_defaults() -> ServerConfig {
    ServerConfig::defaults_for(NAME)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: server_defaults(),
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
        assert_eq!(parsed.content.backend, BackendKind::Local);
    }

    #[test]
    fn server_table_is_optional() {
        let parsed = toml_from("[content]\nbackend = \"s3\"\n");
        let defaults = Config::default().server;
        assert_eq!(
            (&parsed.server.address, &parsed.server.root),
            (&defaults.address, &defaults.root)
        );
        assert_eq!(parsed.content.backend, BackendKind::S3);
    }

    #[test]
    fn s3_table() {
        let text = strata_common::cli::render(&Config::default()).unwrap();
        let server_only: String = text.split("[content]").next().unwrap().to_string();
        let parsed = toml_from(&format!(
            "{server_only}\n[content]\nbackend = \"s3\"\n[content.s3]\n\
             endpoint = \"http://127.0.0.1:3900\"\nbucket = \"b\"\npath_style = true\n\
             allow_http = true\ncredentials_file = \"/etc/strata/s3-credentials\"\n"
        ));
        assert_eq!(parsed.content.backend, BackendKind::S3);
        assert_eq!(parsed.content.s3.bucket, "b");
        assert_eq!(
            parsed.content.s3.region, "us-east-1",
            "defaults fill the rest"
        );
        parsed.content.s3.validate().unwrap();
        // Keys never sit in the config.
        let path = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            path.path(),
            format!("{server_only}\n[content.s3]\nsecret_access_key = \"x\"\n"),
        )
        .unwrap();
        let args = strata_common::cli::ServerArgs {
            config: Some(path.path().to_path_buf()),
            ..Default::default()
        };
        assert!(strata_common::cli::load(&args, Config::default()).is_err());
        // The printed config round-trips.
        let printed = strata_common::cli::render(&parsed).unwrap();
        assert_eq!(toml_from(&printed), parsed);
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
