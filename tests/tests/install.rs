//! scripts/install.sh into a temporary root (DESTDIR-style): binaries, units, configs and docs
//! where systemd and the README say, units that `systemd-analyze verify` accepts, an edited
//! config kept on reinstall, and an uninstall that keeps configs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use strata_tests::plugins::bin_dir;

const NAMES: [&str; 3] = ["snapshotter", "content", "differ"];

fn install(destdir: &Path, extra: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install.sh");
    let out = Command::new(&script)
        .arg("--destdir")
        .arg(destdir)
        .arg("--bin-dir")
        .arg(bin_dir().unwrap())
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn install_into_a_destdir_verify_reinstall_and_uninstall() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let printed = install(root, &["--containerd", "1.7"]);
    assert!(
        printed.contains("[proxy_plugins.strata-content]"),
        "{printed}"
    );
    assert!(printed.contains("containerd 1.7"), "{printed}");

    for n in NAMES {
        let bin = root.join(format!("usr/local/bin/strata-{n}"));
        assert_eq!(mode(&bin), 0o755);
        let out = Command::new(&bin).arg("--version").output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("strata-{n} ")));
        for kind in ["socket", "service"] {
            assert_eq!(
                mode(&root.join(format!("etc/systemd/system/strata-{n}.{kind}"))),
                0o644
            );
        }
        assert_eq!(mode(&root.join(format!("etc/strata/{n}.toml"))), 0o640);
    }
    assert!(root.join("usr/local/share/doc/strata/README.md").is_file());

    // systemd accepts the units (their paths pointed into the temporary root).
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let verify = root.join("verify");
        std::fs::create_dir(&verify).unwrap();
        let mut files = Vec::new();
        for entry in std::fs::read_dir(root.join("etc/systemd/system")).unwrap() {
            let entry = entry.unwrap();
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let text = text
                .replace("/usr/local/", &format!("{}/usr/local/", root.display()))
                .replace("/etc/strata/", &format!("{}/etc/strata/", root.display()));
            let path = verify.join(entry.file_name());
            std::fs::write(&path, text).unwrap();
            files.push(path);
        }
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .args(&files)
            .current_dir(&verify)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // An operator's edit survives a reinstall.
    let config = root.join("etc/strata/content.toml");
    let edited = format!("{}\n# edited\n", std::fs::read_to_string(&config).unwrap());
    std::fs::write(&config, &edited).unwrap();
    let printed = install(root, &[]);
    assert!(printed.contains("kept"), "{printed}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);

    install(root, &["--uninstall"]);
    for n in NAMES {
        assert!(!root.join(format!("usr/local/bin/strata-{n}")).exists());
        assert!(
            !root
                .join(format!("etc/systemd/system/strata-{n}.service"))
                .exists()
        );
        assert!(
            root.join(format!("etc/strata/{n}.toml")).exists(),
            "configs kept"
        );
    }
    assert!(!root.join("usr/local/share/doc/strata").exists());
}
