//! strata-differ's config file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use strata_common::cli::ServerConfig;

/// The name the server goes by: socket `/run/strata/differ.sock`, state
/// `/var/lib/strata/differ`, config `/etc/strata/differ.toml`.
pub const NAME: &str = "differ";

/// containerd's own socket: Diff results must be written through containerd's content service
/// so that containerd's metadata knows the new blob.
pub const DEFAULT_CONTENT_ADDRESS: &str = "/run/containerd/containerd.sock";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub differ: DifferConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DifferConfig {
    /// The content service layer blobs are read from and Diff results written to.
    pub content_address: PathBuf,
    /// The namespace to read layers in when the request names none (containerd 1.7) and the
    /// content service cannot list namespaces to find the one holding the layer (containerd's
    /// own service can: then this is not needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_namespace: Option<String>,
    /// The directory of the content store behind `content_address`, holding
    /// `blobs/sha256/<hex>`: containerd's `<root>/io.containerd.content.v1.content`, or
    /// strata-content's root. Apply reads layers found there from disk (verified as always)
    /// and uses the content service for the others. Diff writes its layer there (as the
    /// store commits blobs: fsynced, renamed in) and only records it through the content
    /// service, which with containerd's default content sharing policy takes it without
    /// its bytes; otherwise they are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_root: Option<PathBuf>,
    /// Diff output compression levels: gzip 1-9, zstd 1-19.
    #[serde(default = "default_gzip_level")]
    pub gzip_level: u32,
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// Applies and Diffs run at once; more wait their turn. Each holds a few MiB of buffers
    /// and keeps a core busy, so a burst of requests (many pods starting) would otherwise
    /// grow memory without making the burst finish sooner. 0: twice the CPUs.
    #[serde(default)]
    pub max_concurrent: usize,
}

fn default_gzip_level() -> u32 {
    crate::diff::compress::Levels::default().gzip
}

fn default_zstd_level() -> i32 {
    crate::diff::compress::Levels::default().zstd
}

impl DifferConfig {
    /// [`DifferConfig::max_concurrent`] with 0 resolved.
    pub fn concurrency(&self) -> usize {
        match self.max_concurrent {
            0 => 2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    pub fn levels(&self) -> crate::diff::compress::Levels {
        crate::diff::compress::Levels {
            gzip: self.gzip_level,
            zstd: self.zstd_level,
        }
    }
}

impl Default for DifferConfig {
    fn default() -> Self {
        DifferConfig {
            content_address: PathBuf::from(DEFAULT_CONTENT_ADDRESS),
            fallback_namespace: None,
            content_root: None,
            gzip_level: default_gzip_level(),
            max_concurrent: 0,
            zstd_level: default_zstd_level(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::defaults_for(NAME),
            differ: DifferConfig::default(),
        }
    }
}

strata_common::plugin_config!(Config, NAME);
