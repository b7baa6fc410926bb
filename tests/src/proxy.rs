//! The containerd configuration that wires strata's sockets in as proxy plugins. The names and
//! tables are what containerd 1.7 and 2.x were measured to need; both 1.7 (config version 2) and 2.x (version 3)
//! accept this exact text.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// `[proxy_plugins]` name of strata-snapshotter, i.e. `ctr --snapshotter strata`.
pub const SNAPSHOTTER_NAME: &str = "strata";
/// `[proxy_plugins]` name of strata-content.
pub const CONTENT_NAME: &str = "strata-content";
/// `[proxy_plugins]` name of strata-differ.
pub const DIFFER_NAME: &str = "strata-diff";
/// The plugin types `ctr plugins ls` shows for proxy plugins (same in 1.7 and 2.x).
pub const SNAPSHOTTER_PLUGIN_TYPE: &str = "io.containerd.snapshotter.v1";
pub const CONTENT_PLUGIN_TYPE: &str = "io.containerd.content.v1";
pub const DIFFER_PLUGIN_TYPE: &str = "io.containerd.differ.v1";
/// containerd's built-in content store. It must be disabled when a proxy content store is
/// wired: 1.7 would silently keep using the built-in one, 2.x refuses to start the content
/// service ("multiple instances").
pub const BUILTIN_CONTENT_PLUGIN: &str = "io.containerd.content.v1.content";

/// Which strata sockets to wire into containerd.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyPlugins {
    pub snapshotter: Option<PathBuf>,
    pub content: Option<PathBuf>,
    pub differ: Option<PathBuf>,
    /// The platform the differ and unpack entries are declared for; `None` means this
    /// machine's (see [`host_platform`]).
    pub platform: Option<String>,
}

impl ProxyPlugins {
    pub fn platform(&self) -> String {
        self.platform.clone().unwrap_or_else(host_platform)
    }

    /// Plugin ids that must be in the top-level `disabled_plugins` for this wiring to work.
    pub fn disabled_plugins(&self) -> Vec<String> {
        if self.content.is_some() {
            vec![BUILTIN_CONTENT_PLUGIN.to_string()]
        } else {
            Vec::new()
        }
    }

    /// The TOML tables to append to a containerd config: `[proxy_plugins]`, the diff service's
    /// differ order and the transfer service's unpack table. Empty when nothing is wired.
    /// Top-level keys (see [`Self::disabled_plugins`]) can't be part of it, because it is
    /// meant to come after other tables.
    pub fn toml(&self) -> String {
        self.toml_with_capabilities(&[])
    }

    /// [`Self::toml`] with `capabilities` in the snapshotter's `[proxy_plugins]` entry (what
    /// containerd reports for it through introspection, e.g. `remap-ids`).
    pub fn toml_with_capabilities(&self, snapshotter_capabilities: &[&str]) -> String {
        let mut s = String::new();
        if self.snapshotter.is_none() && self.content.is_none() && self.differ.is_none() {
            return s;
        }
        let platform = self.platform();
        s.push_str("[proxy_plugins]\n");
        if let Some(sock) = &self.snapshotter {
            proxy_entry(&mut s, SNAPSHOTTER_NAME, "snapshot", sock, None);
            if !snapshotter_capabilities.is_empty() {
                let caps: Vec<String> = snapshotter_capabilities
                    .iter()
                    .map(|c| toml_str(c))
                    .collect();
                let _ = writeln!(s, "    capabilities = [{}]", caps.join(", "));
            }
        }
        if let Some(sock) = &self.content {
            proxy_entry(&mut s, CONTENT_NAME, "content", sock, None);
        }
        if let Some(sock) = &self.differ {
            proxy_entry(&mut s, DIFFER_NAME, "diff", sock, Some(&platform));
            // 1.7's client-side unpack (`ctr images import`) and 2.x's `import --local`, the Go
            // client's Unpack and `ctr snapshots diff` walk this list and only move on to the
            // next differ when one answers Unimplemented.
            let _ = write!(
                s,
                "\n[plugins.\"io.containerd.service.v1.diff-service\"]\n  default = [{}, \
                 \"walking\"]\n",
                toml_str(DIFFER_NAME)
            );
        }
        if self.snapshotter.is_some() {
            // 2.x's transfer service refuses to unpack into a proxy snapshotter that no entry
            // names, and uses only the entry's differ (no fallback). Any entry replaces the
            // built-in list, so overlayfs must be listed again.
            let differ = if self.differ.is_some() {
                DIFFER_NAME
            } else {
                "walking"
            };
            s.push_str("\n[plugins.\"io.containerd.transfer.v1.local\"]\n");
            unpack_entry(&mut s, &platform, SNAPSHOTTER_NAME, differ);
            unpack_entry(&mut s, &platform, "overlayfs", "walking");
        }
        s
    }
}

fn proxy_entry(s: &mut String, name: &str, kind: &str, sock: &Path, platform: Option<&str>) {
    let _ = write!(
        s,
        "  [proxy_plugins.{}]\n    type = {}\n    address = {}\n",
        toml_key(name),
        toml_str(kind),
        toml_str(&sock.to_string_lossy())
    );
    if let Some(platform) = platform {
        let _ = writeln!(s, "    platform = {}", toml_str(platform));
    }
}

fn unpack_entry(s: &mut String, platform: &str, snapshotter: &str, differ: &str) {
    let _ = write!(
        s,
        "  [[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n    platform = {}\n    \
         snapshotter = {}\n    differ = {}\n",
        toml_str(platform),
        toml_str(snapshotter),
        toml_str(differ)
    );
}

/// `os/arch` of this machine in OCI terms.
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("linux/{arch}")
}

/// A TOML basic string.
pub fn toml_str(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML key, quoted only when it has to be.
fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        k.to_string()
    } else {
        toml_str(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_wired_is_empty() {
        assert_eq!(ProxyPlugins::default().toml(), "");
        assert!(ProxyPlugins::default().disabled_plugins().is_empty());
    }

    #[test]
    fn all_wired() {
        let p = ProxyPlugins {
            snapshotter: Some("/run/strata/snapshotter.sock".into()),
            content: Some("/run/strata/content.sock".into()),
            differ: Some("/run/strata/differ.sock".into()),
            platform: Some("linux/amd64".into()),
        };
        let expected = r#"[proxy_plugins]
  [proxy_plugins.strata]
    type = "snapshot"
    address = "/run/strata/snapshotter.sock"
  [proxy_plugins.strata-content]
    type = "content"
    address = "/run/strata/content.sock"
  [proxy_plugins.strata-diff]
    type = "diff"
    address = "/run/strata/differ.sock"
    platform = "linux/amd64"

[plugins."io.containerd.service.v1.diff-service"]
  default = ["strata-diff", "walking"]

[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/amd64"
    snapshotter = "strata"
    differ = "strata-diff"
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/amd64"
    snapshotter = "overlayfs"
    differ = "walking"
"#;
        assert_eq!(p.toml(), expected);
        assert_eq!(
            p.disabled_plugins(),
            vec![BUILTIN_CONTENT_PLUGIN.to_string()]
        );
    }

    #[test]
    fn snapshotter_without_differ_unpacks_with_walking() {
        let p = ProxyPlugins {
            snapshotter: Some("/s.sock".into()),
            platform: Some("linux/arm64".into()),
            ..Default::default()
        };
        let t = p.toml();
        assert!(
            t.contains("snapshotter = \"strata\"\n    differ = \"walking\""),
            "{t}"
        );
        assert!(!t.contains("diff-service"), "{t}");
    }

    #[test]
    fn snapshotter_capabilities_go_in_its_entry() {
        let p = ProxyPlugins {
            snapshotter: Some("/s.sock".into()),
            platform: Some("linux/amd64".into()),
            ..Default::default()
        };
        let t = p.toml_with_capabilities(&["remap-ids", "rebase"]);
        assert!(
            t.contains("address = \"/s.sock\"\n    capabilities = [\"remap-ids\", \"rebase\"]\n"),
            "{t}"
        );
        assert_eq!(p.toml_with_capabilities(&[]), p.toml());
    }

    #[test]
    fn escapes_strings() {
        assert_eq!(toml_str(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
