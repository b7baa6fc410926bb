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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::defaults_for(NAME),
        }
    }
}

strata_common::plugin_config!(Config, NAME);
