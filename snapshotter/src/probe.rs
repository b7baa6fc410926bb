//! What the kernel's overlayfs supports, probed once at start-up. This is the one place the
//! server makes mount syscalls; tests construct [`Features`] directly to see each option's
//! effect on the mounts handed out.

use std::path::Path;

use strata_common::{Error, Result};

use crate::mounts::{Mount, mount_all, unmount};

/// The kernel facts that change overlay mount options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// The overlay module has the `index` feature (`/sys/module/overlay/parameters/index`
    /// exists): mount with `index=off`, as containerd does, so a lower dir may be shared by
    /// many overlays.
    pub index: bool,
    /// Overlay must keep its xattrs in the `user.` namespace (`userxattr`): true only inside a
    /// user namespace.
    pub userxattr: bool,
    /// The kernel makes id-mapped mounts that overlayfs accepts as lower dirs (Linux 5.19+,
    /// containerd's test): id-mapping labels then become `uidmap=`/`gidmap=` mount options.
    pub idmapped_mounts: bool,
}

impl Features {
    /// The options containerd's overlay snapshotter adds itself, unless `configured` already
    /// has them.
    pub fn options(&self, configured: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        if self.userxattr && !configured.iter().any(|o| o == "userxattr") {
            out.push("userxattr".to_string());
        }
        if self.index
            && !configured
                .iter()
                .any(|o| o == "index" || o.starts_with("index="))
        {
            out.push("index=off".to_string());
        }
        out.extend(configured.iter().cloned());
        out
    }

    /// Probes the running kernel, checking that overlay mounts work under `root`.
    pub fn detect(root: &Path) -> Result<Features> {
        let index = Path::new("/sys/module/overlay/parameters/index").exists();
        let userxattr = in_user_namespace() && probe_mount(root, &["userxattr"]).is_ok();
        probe_mount(root, if userxattr { &["userxattr"] } else { &[] }).map_err(|e| {
            Error::failed_precondition(format!(
                "overlayfs does not work on {} ({e}); use mode = \"native\"",
                root.display()
            ))
        })?;
        Ok(Features {
            index,
            userxattr,
            idmapped_mounts: supports_idmapped_mounts(),
        })
    }
}

/// containerd's `SupportsIDMappedMounts` fast path: overlayfs takes id-mapped lower dirs from
/// Linux 5.19 on. (containerd also probes older kernels for backports with a test mount; strata
/// does not, so such a kernel counts as without.)
fn supports_idmapped_mounts() -> bool {
    // The release uname(2) gives.
    match std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(release) => kernel_at_least(release.trim(), (5, 19)),
        Err(_) => false,
    }
}

/// Whether a kernel release string (`6.18.0-1-amd64`) is at least `want` (major, minor).
fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    match (major, minor) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

/// Whether this process is in a user namespace other than the initial one.
fn in_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => {
            let fields: Vec<&str> = map.split_whitespace().collect();
            fields != ["0", "0", "4294967295"]
        }
        Err(_) => false,
    }
}

/// Mounts a two-lower overlay in a scratch dir under `root` and unmounts it again.
fn probe_mount(root: &Path, extra: &[&str]) -> std::io::Result<()> {
    let dir = tempfile_dir(root)?;
    let result = (|| {
        for d in ["l1", "l2", "upper", "work", "merged"] {
            std::fs::create_dir(dir.join(d))?;
        }
        let mut options = vec![
            format!(
                "lowerdir={}:{}",
                dir.join("l2").display(),
                dir.join("l1").display()
            ),
            format!("upperdir={}", dir.join("upper").display()),
            format!("workdir={}", dir.join("work").display()),
        ];
        options.extend(extra.iter().map(|s| s.to_string()));
        let m = Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        };
        mount_all(&[m], &dir.join("merged"))?;
        unmount(&dir.join("merged"))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir(root: &Path) -> std::io::Result<std::path::PathBuf> {
    let dir = root.join(format!("probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_compare_like_containerds() {
        assert!(kernel_at_least("6.18.0-1-amd64", (5, 19)));
        assert!(kernel_at_least("5.19.0", (5, 19)));
        assert!(kernel_at_least("5.19-rc1", (5, 19)));
        assert!(!kernel_at_least("5.18.19", (5, 19)));
        assert!(!kernel_at_least("4.20.0", (5, 19)));
        assert!(kernel_at_least("10.0.0", (5, 19)));
        assert!(!kernel_at_least("garbage", (5, 19)));
        assert!(!kernel_at_least("6", (5, 19)));
    }

    #[test]
    fn detected_options_come_first_and_configured_ones_win() {
        let f = Features {
            index: true,
            userxattr: true,
            idmapped_mounts: false,
        };
        assert_eq!(f.options(&[]), ["userxattr", "index=off"]);
        let configured = vec!["index=on".to_string(), "volatile".to_string()];
        assert_eq!(
            f.options(&configured),
            ["userxattr", "index=on", "volatile"]
        );
        assert_eq!(Features::default().options(&[]), Vec::<String>::new());
    }

    #[test]
    fn detection_matches_this_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let f =
            Features::detect(dir.path()).expect("overlayfs must work where tests run (as root)");
        assert_eq!(
            f.index,
            Path::new("/sys/module/overlay/parameters/index").exists()
        );
        assert!(!f.userxattr, "tests run as real root");
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(f.idmapped_mounts, kernel_at_least(release.trim(), (5, 19)));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "probe cleaned up"
        );
    }
}
