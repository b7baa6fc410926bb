//! The containerd versions strata is tested against.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A containerd release line. The key is also the install dir name and the argument of
/// `scripts/containerd-env.sh`: "1.7" is Debian trixie's 1.7, "2" is whatever 2.x Debian sid
/// carries (2.1.9 when this was written).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    V1_7,
    V2,
}

impl Version {
    pub const ALL: [Version; 2] = [Version::V1_7, Version::V2];

    pub fn key(self) -> &'static str {
        match self {
            Version::V1_7 => "1.7",
            Version::V2 => "2",
        }
    }

    /// The `version = N` of the config.toml this release reads (1.7 still reads 2 natively;
    /// 2.x migrates 2 but only 3 is its own).
    pub fn config_version(self) -> u32 {
        match self {
            Version::V1_7 => 2,
            Version::V2 => 3,
        }
    }

    /// Plugins disabled in every private daemon: CRI and NRI would listen on global paths and
    /// clash between daemons, and the tests don't use them.
    pub fn always_disabled(self) -> &'static [&'static str] {
        match self {
            Version::V1_7 => &["io.containerd.grpc.v1.cri", "io.containerd.nri.v1.nri"],
            Version::V2 => &[
                "io.containerd.grpc.v1.cri",
                "io.containerd.cri.v1.images",
                "io.containerd.cri.v1.runtime",
                "io.containerd.nri.v1.nri",
                "io.containerd.podsandbox.controller.v1.podsandbox",
            ],
        }
    }

    /// Whether `release` (the version field of `containerd --version`) belongs to this line.
    pub fn matches_release(self, release: &str) -> bool {
        match self {
            Version::V1_7 => release.starts_with("1.7."),
            Version::V2 => release.starts_with("2."),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::V1_7 => f.write_str("1.7"),
            Version::V2 => f.write_str("2.x"),
        }
    }
}

impl FromStr for Version {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "1.7" => Ok(Version::V1_7),
            "2" | "2.1" | "2.x" => Ok(Version::V2),
            _ => Err(Error::new(format!(
                "unsupported containerd version {s:?} (use 1.7 or 2)"
            ))),
        }
    }
}
