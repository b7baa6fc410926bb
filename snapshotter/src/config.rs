//! strata-snapshotter's config file.

use serde::{Deserialize, Serialize};
use strata_common::cli::ServerConfig;

/// The name the server goes by: socket `/run/strata/snapshotter.sock`, state
/// `/var/lib/strata/snapshotter`, config `/etc/strata/snapshotter.toml`.
pub const NAME: &str = "snapshotter";

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
