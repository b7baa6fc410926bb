//! The harness itself: private daemons of both versions start, answer and leave nothing
//! behind. Needs root and (the first time) network access to the Debian archive.

use std::path::PathBuf;

use strata_tests::{Containerd, Version};

fn alive(pid: u32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn start_and_stop(version: Version) {
    let ctd = Containerd::start(version, "").expect("starting containerd");
    assert!(
        version.matches_release(ctd.release()),
        "{version} started {}",
        ctd.release()
    );
    let out = ctd.ctr_ok(&["version"]);
    assert!(out.contains(ctd.release()), "{out}");
    assert!(
        ctd.log().contains("containerd successfully booted"),
        "{}",
        ctd.log_tails()
    );
    let pid = ctd.pid();
    let dir = ctd.dir().path().to_path_buf();
    drop(ctd);
    assert!(!alive(pid), "containerd pid {pid} still alive after drop");
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
}

#[test]
fn containerd_1_7_starts_and_stops() {
    start_and_stop(Version::V1_7);
}

#[test]
fn containerd_2_starts_and_stops() {
    start_and_stop(Version::V2);
}
