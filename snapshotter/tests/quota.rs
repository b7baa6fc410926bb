//! Size limits on a loop-mounted ext4 with project quotas (`mkfs.ext4 -O quota,project`,
//! `mount -o prjquota`): a limited snapshot's writes stop with ENOSPC at its limit, copy-ups
//! count, a snapshot without a limit is unaffected, Usage stays the files' figure, and removing
//! the snapshot frees its project. Needs root and e2fsprogs.
//!
//! The enforcement tests need a kernel that mounts an ext4 with the `quota` feature read-write
//! (CONFIG_QFMT_V2) and xfs with quotas (CONFIG_XFS_QUOTA). The development and CI machines'
//! kernel has neither, so they are ignored here and `scripts/quota-vm.sh` runs them in a qemu
//! VM booting Debian's kernel (which has both) over the host's file system. What strata does
//! without project quotas (say so, refuse limits) runs everywhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_common::error::ErrorKind;
use strata_snapshotter::Snapshotter;
use strata_snapshotter::config::SnapshotterConfig;
use strata_snapshotter::mounts::MountGuard;
use strata_snapshotter::quota::{self, LABEL_MAX_SIZE, Quotas};

const MIB: u64 = 1 << 20;
const BASE: u32 = 1_000_000;

/// The file systems with project quotas.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Ext4,
    Xfs,
}

impl Kind {
    /// What a write past a project's limit fails with: xfs answers ENOSPC for project quotas,
    /// ext4 the generic quota code's EDQUOT ("Disk quota exceeded").
    fn full_errno(self) -> i32 {
        match self {
            Kind::Ext4 => libc::EDQUOT,
            Kind::Xfs => libc::ENOSPC,
        }
    }
}

/// An image with project quotas, loop-mounted with `prjquota` until dropped.
struct QuotaFs {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl QuotaFs {
    fn new(kind: Kind, size_mib: u64) -> QuotaFs {
        let dir = tempfile::tempdir().expect("temp dir");
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        // mkfs.xfs wants 300 MiB at least; the image is sparse.
        let size_mib = match kind {
            Kind::Ext4 => size_mib,
            Kind::Xfs => size_mib.max(320),
        };
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(size_mib * MIB))
            .expect("image file");
        match kind {
            Kind::Ext4 => run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-O", "quota,project"])
                .arg(&img)),
            Kind::Xfs => run(Command::new("mkfs.xfs").args(["-q", "-f"]).arg(&img)),
        }
        run(Command::new("mount")
            .args(["-o", "loop,prjquota"])
            .arg(&img)
            .arg(&mnt));
        QuotaFs { _dir: dir, mnt }
    }
}

impl Drop for QuotaFs {
    fn drop(&mut self) {
        // `-o loop` detaches the loop device with the last unmount.
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

fn run(c: &mut Command) {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sync_config() -> SnapshotterConfig {
    SnapshotterConfig {
        async_remove: false,
        ..Default::default()
    }
}

/// Writes up to `bytes` of data to `path` in 64 KiB pieces, syncing at the end; returns how
/// much went in and the error that stopped it.
fn fill(path: &Path, bytes: u64) -> (u64, Option<std::io::Error>) {
    let mut f = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => return (0, Some(e)),
    };
    let chunk = vec![0x5au8; 64 << 10];
    let mut written = 0;
    while written < bytes {
        if let Err(e) = f.write_all(&chunk) {
            return (written, Some(e));
        }
        written += chunk.len() as u64;
    }
    (written, f.sync_all().err())
}

fn mount_at(s: &Snapshotter, key: &str, target: &Path) -> MountGuard {
    std::fs::create_dir_all(target).expect("mount point");
    MountGuard::mount(&s.mounts(key).expect("mounts"), target).expect("mounting")
}

#[test]
#[ignore = "needs a kernel with ext4 project quotas (CONFIG_QFMT_V2); scripts/quota-vm.sh runs it"]
fn a_limited_snapshot_stops_at_its_limit_and_others_do_not_ext4() {
    a_limited_snapshot_stops_at_its_limit_and_others_do_not(Kind::Ext4);
}

#[test]
#[ignore = "needs a kernel with xfs quotas (CONFIG_XFS_QUOTA); scripts/quota-vm.sh runs it"]
fn a_limited_snapshot_stops_at_its_limit_and_others_do_not_xfs() {
    a_limited_snapshot_stops_at_its_limit_and_others_do_not(Kind::Xfs);
}

fn a_limited_snapshot_stops_at_its_limit_and_others_do_not(kind: Kind) {
    let qfs = QuotaFs::new(kind, 96);
    let root = qfs.mnt.join("root");
    let s = Snapshotter::open(&root, sync_config()).expect("open on the quota file system");
    let quotas = Quotas::detect(&qfs.mnt, BASE).expect("the loop ext4 enforces project quotas");

    // A 2 MiB file in the image layer.
    s.prepare("base-a", "", &labels(&[])).expect("prepare base");
    let (n, e) = fill(&s.layout().fs(1).join("big-lower"), 2 * MIB);
    assert!(e.is_none() && n == 2 * MIB, "{e:?}");
    s.commit("base", "base-a", &labels(&[]), "")
        .expect("commit");

    let limit = 4 * MIB;
    s.prepare(
        "limited",
        "base",
        &labels(&[(LABEL_MAX_SIZE, &limit.to_string())]),
    )
    .expect("prepare limited");
    s.prepare("free", "base", &labels(&[]))
        .expect("prepare free");
    let (limited_id, free_id) = (2u64, 3u64);
    let project = BASE + limited_id as u32;
    assert_eq!(
        quota::project_of(&s.layout().fs(limited_id)).unwrap(),
        project
    );
    assert_eq!(
        quota::project_of(&s.layout().work(limited_id)).unwrap(),
        project
    );
    assert_eq!(quota::project_of(&s.layout().fs(free_id)).unwrap(), 0);
    assert_eq!(quotas.get(project).unwrap().limit_bytes, limit);

    let mnt = tempfile::tempdir().expect("mount points");
    let limited = mount_at(&s, "limited", &mnt.path().join("limited"));
    let free = mount_at(&s, "free", &mnt.path().join("free"));

    // A copy-up of the lower 2 MiB file counts against the limit (built in the work dir,
    // renamed into the upper dir: both are in the project).
    let (n, e) = fill(&limited.path().join("big-lower"), 64 << 10);
    assert!(e.is_none(), "copy-up within the limit: {e:?} after {n}");
    // Then a new file gets what is left, and ENOSPC.
    let (n, e) = fill(&limited.path().join("big"), 8 * MIB);
    let e = e.expect("writing past the limit fails");
    assert_eq!(e.raw_os_error(), Some(kind.full_errno()), "{kind:?}: {e}");
    assert!(
        n < 2 * MIB,
        "{n} bytes written after a 2 MiB copy-up under a 4 MiB limit"
    );
    let q = quotas.get(project).unwrap();
    assert!(
        q.used_bytes <= limit && q.used_bytes > 3 * MIB,
        "project usage {q:?}"
    );
    // Usage is still the upper dir's figure, which the project's usage matches.
    let u = s.usage("limited").unwrap();
    assert!(
        u.size as u64 <= limit && (u.size as u64).abs_diff(q.used_bytes) <= 64 << 10,
        "usage {u:?}, project {q:?}"
    );

    // The unlimited snapshot on the same file system writes on.
    let (n, e) = fill(&free.path().join("big"), 16 * MIB);
    assert!(e.is_none() && n == 16 * MIB, "unlimited: {e:?} after {n}");
    assert!(s.usage("free").unwrap().size as u64 >= 16 * MIB);

    limited.unmount().expect("unmount limited");
    free.unmount().expect("unmount free");
    s.remove("limited").expect("remove limited");
    // xfs releases deleted inodes in the background: wait for the figures to settle.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let q = quotas.get(project).unwrap();
        if q == quota::ProjectQuota::default() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "removing the snapshot freed its project: {q:?}"
        );
        let _ = Command::new("sync").status();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // A new limited snapshot gets its whole limit.
    s.prepare(
        "again",
        "base",
        &labels(&[(LABEL_MAX_SIZE, &limit.to_string())]),
    )
    .expect("prepare again");
    let again = mount_at(&s, "again", &mnt.path().join("again"));
    let (n, e) = fill(&again.path().join("big"), 3 * MIB);
    assert!(e.is_none() && n == 3 * MIB, "{e:?} after {n}");
    again.unmount().expect("unmount");
}

#[test]
#[ignore = "needs a kernel with ext4 project quotas (CONFIG_QFMT_V2); scripts/quota-vm.sh runs it"]
fn the_configured_default_spares_unpacking_and_views() {
    let qfs = QuotaFs::new(Kind::Ext4, 48);
    let cfg = SnapshotterConfig {
        max_size: 3 * MIB,
        ..sync_config()
    };
    let s = Snapshotter::open(&qfs.mnt.join("root"), cfg).expect("open");
    let quotas = Quotas::detect(&qfs.mnt, BASE).expect("quotas");
    // containerd's unpacker prepares `extract-...` keys (behind `<namespace>/<seq>/`).
    s.prepare("default/1/extract-12345 sha256:abc", "", &labels(&[]))
        .expect("unpack snapshot");
    assert_eq!(quota::project_of(&s.layout().fs(1)).unwrap(), 0);
    s.commit(
        "default/2/layer",
        "default/1/extract-12345 sha256:abc",
        &labels(&[]),
        "",
    )
    .expect("commit");
    s.view("default/3/v", "default/2/layer", &labels(&[]))
        .expect("view");
    assert_eq!(quota::project_of(&s.layout().fs(2)).unwrap(), 0);
    // containerd's client's chowned copy of an image for a user namespace is as big as the
    // image: no default limit either.
    s.prepare(
        "default/9/sha256:0123-remap",
        "default/2/layer",
        &labels(&[]),
    )
    .expect("remap copy");
    assert_eq!(quota::project_of(&s.layout().fs(3)).unwrap(), 0);
    s.remove("default/9/sha256:0123-remap").expect("remove");
    s.prepare("default/4/container", "default/2/layer", &labels(&[]))
        .expect("container");
    assert_eq!(quota::project_of(&s.layout().fs(4)).unwrap(), BASE + 4);
    assert_eq!(quotas.get(BASE + 4).unwrap().limit_bytes, 3 * MIB);
    // A label overrides the default.
    s.prepare(
        "default/5/big",
        "default/2/layer",
        &labels(&[(LABEL_MAX_SIZE, "8388608")]),
    )
    .expect("labelled");
    assert_eq!(quotas.get(BASE + 5).unwrap().limit_bytes, 8 * MIB);
    s.remove("default/4/container").expect("remove");
    s.remove("default/5/big").expect("remove");
    assert_eq!(quotas.get(BASE + 4).unwrap().limit_bytes, 0);
    assert_eq!(quotas.get(BASE + 5).unwrap().limit_bytes, 0);
}

#[test]
fn limits_are_refused_without_project_quotas_and_malformed_ones_always() {
    // An ext4 without the project feature, mounted without prjquota.
    let dir = tempfile::tempdir().expect("temp dir");
    let img = dir.path().join("plain.img");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(32 * MIB))
        .unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&mnt));
    let plain = QuotaFs { _dir: dir, mnt };
    let root = plain.mnt.join("root");

    let s = Snapshotter::open(&root, sync_config()).expect("starts without quotas");
    let e = s
        .prepare("a", "", &labels(&[(LABEL_MAX_SIZE, "1048576")]))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("project quotas"), "{e}");
    for bad in ["0", "-1", "1M", "x"] {
        let e = s
            .prepare("a", "", &labels(&[(LABEL_MAX_SIZE, bad)]))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}: {e}");
    }
    assert!(s.stat("a").is_err(), "nothing was made");
    // Without a limit all is as before.
    s.prepare("a", "", &labels(&[])).expect("unlimited");
    drop(s);

    let cfg = SnapshotterConfig {
        max_size: MIB,
        ..sync_config()
    };
    let e = Snapshotter::open(&root, cfg)
        .err()
        .expect("a default limit needs quotas");
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
}

#[test]
#[ignore = "needs a kernel with ext4 project quotas (CONFIG_QFMT_V2); scripts/quota-vm.sh runs it"]
fn a_snapshot_restored_after_a_power_loss_keeps_its_limit() {
    let qfs = QuotaFs::new(Kind::Ext4, 48);
    let root = qfs.mnt.join("root");
    {
        let s = Snapshotter::open(&root, sync_config()).expect("open");
        s.prepare("base-a", "", &labels(&[])).expect("prepare");
        s.commit("base", "base-a", &labels(&[]), "")
            .expect("commit");
        s.prepare(
            "limited",
            "base",
            &labels(&[(LABEL_MAX_SIZE, &(2 * MIB).to_string())]),
        )
        .expect("prepare limited");
        // What a power loss can leave: the row without its directory (snapshotter/README.md,
        // "Crash safety"), and the project without a limit.
        std::fs::remove_dir_all(s.layout().snapshot_dir(2)).expect("remove the directory");
    }
    let quotas = Quotas::detect(&qfs.mnt, BASE).expect("quotas");
    quotas.set_limit(BASE + 2, 0).expect("clear the limit");
    let s = Snapshotter::open(&root, sync_config()).expect("reopen");
    assert_eq!(quota::project_of(&s.layout().fs(2)).unwrap(), BASE + 2);
    assert_eq!(quota::project_of(&s.layout().work(2)).unwrap(), BASE + 2);
    assert_eq!(quotas.get(BASE + 2).unwrap().limit_bytes, 2 * MIB);
    let mnt = tempfile::tempdir().expect("mount point");
    let m = mount_at(&s, "limited", &mnt.path().join("m"));
    let (n, e) = fill(&m.path().join("big"), 4 * MIB);
    let e = e.expect("the restored limit holds");
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
    assert!(n <= 2 * MIB, "{n}");
    m.unmount().expect("unmount");
}
