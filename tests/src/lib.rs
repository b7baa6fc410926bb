//! Integration and end-to-end test harness: private containerd daemons of the versions strata
//! supports, strata's own plugin binaries on temporary sockets, and the `[proxy_plugins]`
//! configuration that wires the two together.
//!
//! Everything here needs root, runc and (once per machine) network access to Debian's archive;
//! a missing prerequisite is an error that names it, never a silent skip.

pub mod bench;
pub mod bucket;
pub mod config;
pub mod containerd;
pub mod ctr;
pub mod error;
pub mod garage;
pub mod health;
pub mod ids;
pub mod install;
pub mod logs;
pub mod metrics;
pub mod plugins;
pub mod process;
pub mod proxy;
pub mod registry;
pub mod stack;
pub mod tmp;
pub mod version;
pub mod wait;

pub use bucket::Bucket;
pub use containerd::{Containerd, ContainerdDir, ContainerdOptions};
pub use error::{Error, Result};
pub use garage::GarageCluster;
pub use ids::unique_name;
pub use plugins::{PluginKind, PluginSet, Plugins, PluginsOptions, StrataProcess};
pub use proxy::ProxyPlugins;
pub use registry::Registry;
pub use stack::{Stack, StackOptions};
pub use version::Version;
