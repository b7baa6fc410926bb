//! Per-snapshot size limits with project quotas (ext4 with the `project` feature mounted
//! `prjquota`, xfs mounted `prjquota`/`pquota`).
//!
//! A limited snapshot's directory, its upper dir and its work dir get the project id
//! `project_id_base + snapshot id` with the inherit flag (`FS_XFLAG_PROJINHERIT`), so every
//! file the container creates, and every file overlayfs copies up (built in the work dir, then
//! renamed into the upper dir: both must share the project or the rename fails with EXDEV),
//! counts against it; the project's block limit is the snapshot's size. Past it the file
//! system refuses writes (ENOSPC on xfs, EDQUOT on ext4). Removing the snapshot deletes its
//! files and clears the limit.
//!
//! The calls are `quotactl_fd(2)` (Linux 5.14+, on any open file of the file system, so no
//! block device node is needed) and the `FS_IOC_FS[GS]ETXATTR` ioctls.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// containerd's label for a snapshot's size limit (`core/snapshots/snapshotter.go`,
/// `LabelSnapshotMaxSize`, containerd 2.4+): decimal bytes.
pub const LABEL_MAX_SIZE: &str = "containerd.io/snapshot/max-size";

/// Why a size label was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("{LABEL_MAX_SIZE} must be a positive number of bytes, not {0:?}")]
    Invalid(String),
}

/// The limit `value` (a label's) asks for: decimal bytes, more than zero.
pub fn parse_size(value: &str) -> Result<u64, SizeError> {
    match value.parse::<u64>() {
        Ok(n) if n > 0 && value.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(SizeError::Invalid(value.to_string())),
    }
}

// <linux/quota.h>, <linux/dqblk_xfs.h>, <linux/fs.h>.
const PRJQUOTA: u32 = 2;
const Q_XGETQUOTA: u32 = 0x5803;
const Q_XSETQLIM: u32 = 0x5804;
const Q_XGETQSTAT: u32 = 0x5805;
const FS_DQUOT_VERSION: i8 = 1;
const FS_PROJ_QUOTA: i8 = 2;
const FS_DQ_BSOFT: u16 = 1 << 2;
const FS_DQ_BHARD: u16 = 1 << 3;
const FS_QUOTA_PDQ_ACCT: u16 = 1 << 4;
const FS_QUOTA_PDQ_ENFD: u16 = 1 << 5;
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;

fn qcmd(cmd: u32, kind: u32) -> libc::c_int {
    ((cmd << 8) | (kind & 0xff)) as libc::c_int
}

/// `struct fs_disk_quota`.
#[repr(C)]
#[derive(Default)]
struct FsDiskQuota {
    d_version: i8,
    d_flags: i8,
    d_fieldmask: u16,
    d_id: u32,
    d_blk_hardlimit: u64,
    d_blk_softlimit: u64,
    d_ino_hardlimit: u64,
    d_ino_softlimit: u64,
    d_bcount: u64,
    d_icount: u64,
    d_itimer: i32,
    d_btimer: i32,
    d_iwarns: u16,
    d_bwarns: u16,
    d_itimer_hi: i8,
    d_btimer_hi: i8,
    d_rtbtimer_hi: i8,
    d_padding2: i8,
    d_rtb_hardlimit: u64,
    d_rtb_softlimit: u64,
    d_rtbcount: u64,
    d_rtbtimer: i32,
    d_rtbwarns: u16,
    d_padding3: i16,
    d_padding4: [u8; 8],
}

/// `struct fsxattr`.
#[repr(C)]
#[derive(Default)]
struct FsXattr {
    fsx_xflags: u32,
    fsx_extsize: u32,
    fsx_nextents: u32,
    fsx_projid: u32,
    fsx_cowextsize: u32,
    fsx_pad: [u8; 8],
}

fn quotactl_fd(
    fd: &File,
    cmd: libc::c_int,
    id: u32,
    addr: *mut libc::c_void,
) -> std::io::Result<()> {
    // SAFETY: `addr` points at a live, writable struct of the size the command expects, and
    // the fd is open for the call's duration.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            fd.as_raw_fd() as libc::c_long,
            cmd as libc::c_long,
            id as libc::c_long,
            addr,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A project's figures: its block limit and what it uses, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProjectQuota {
    pub limit_bytes: u64,
    pub used_bytes: u64,
    pub inodes: u64,
}

/// Project quotas on the file system of one directory.
#[derive(Debug)]
pub struct Quotas {
    /// An open directory of the file system, for `quotactl_fd`.
    fs: File,
}

impl Quotas {
    /// Project quotas on `dir`'s file system if they are on and enforced, project ids can be
    /// set there and a limit set on project `probe_project` reads back; else why not.
    pub fn detect(dir: &Path, probe_project: u32) -> Result<Quotas, String> {
        let fs = File::open(dir).map_err(|e| format!("open {}: {e}", dir.display()))?;
        // `struct fs_quota_stat`: qs_flags is the u16 at offset 2.
        let mut stat = [0u64; 16];
        quotactl_fd(
            &fs,
            qcmd(Q_XGETQSTAT, PRJQUOTA),
            0,
            stat.as_mut_ptr().cast(),
        )
        .map_err(|e| format!("no project quotas on {} ({e})", dir.display()))?;
        let bytes: [u8; 8] = stat[0].to_ne_bytes();
        let flags = u16::from_ne_bytes([bytes[2], bytes[3]]);
        if flags & FS_QUOTA_PDQ_ACCT == 0 || flags & FS_QUOTA_PDQ_ENFD == 0 {
            return Err(format!(
                "project quotas are not enforced on {} (mount it with prjquota)",
                dir.display()
            ));
        }
        let q = Quotas { fs };
        // Project ids need the file system's support too (ext4's `project` feature).
        let probe = dir.join(format!("quota-probe-{}", std::process::id()));
        let _ = std::fs::remove_dir(&probe);
        std::fs::create_dir(&probe).map_err(|e| format!("create {}: {e}", probe.display()))?;
        let r = set_project(&probe, probe_project);
        let _ = std::fs::remove_dir(&probe);
        r.map_err(|e| format!("cannot set project ids on {} ({e})", dir.display()))?;
        let round_trip = q
            .set_limit(probe_project, 1 << 20)
            .and_then(|()| q.get(probe_project));
        let cleared = q.set_limit(probe_project, 0);
        match (round_trip, cleared) {
            (Ok(got), Ok(())) if got.limit_bytes == 1 << 20 => Ok(q),
            (Err(e), _) | (_, Err(e)) => Err(format!(
                "cannot set project limits on {} ({e})",
                dir.display()
            )),
            (Ok(got), Ok(())) => Err(format!(
                "a 1 MiB project limit on {} read back as {got:?}",
                dir.display()
            )),
        }
    }

    /// Sets project `id`'s block limit to `bytes` (rounded up to 512-byte blocks; 0 clears it).
    pub fn set_limit(&self, id: u32, bytes: u64) -> std::io::Result<()> {
        let blocks = bytes.div_ceil(512);
        let mut q = FsDiskQuota {
            d_version: FS_DQUOT_VERSION,
            d_flags: FS_PROJ_QUOTA,
            d_fieldmask: FS_DQ_BSOFT | FS_DQ_BHARD,
            d_id: id,
            d_blk_hardlimit: blocks,
            d_blk_softlimit: blocks,
            ..Default::default()
        };
        quotactl_fd(
            &self.fs,
            qcmd(Q_XSETQLIM, PRJQUOTA),
            id,
            (&mut q as *mut FsDiskQuota).cast(),
        )
    }

    /// Project `id`'s limit and usage.
    pub fn get(&self, id: u32) -> std::io::Result<ProjectQuota> {
        let mut q = FsDiskQuota::default();
        match quotactl_fd(
            &self.fs,
            qcmd(Q_XGETQUOTA, PRJQUOTA),
            id,
            (&mut q as *mut FsDiskQuota).cast(),
        ) {
            Ok(()) => {}
            // xfs keeps no record of a project without limits or usage.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Ok(ProjectQuota::default());
            }
            Err(e) => return Err(e),
        }
        Ok(ProjectQuota {
            limit_bytes: q.d_blk_hardlimit * 512,
            used_bytes: q.d_bcount * 512,
            inodes: q.d_icount,
        })
    }
}

fn ioctl_xattr(f: &File, request: libc::c_ulong, x: &mut FsXattr) -> std::io::Result<()> {
    // SAFETY: `x` is a live `struct fsxattr`, the size both requests encode.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), request, x as *mut FsXattr) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Gives directory `dir` project `id`, inherited by everything created in it.
pub fn set_project(dir: &Path, id: u32) -> std::io::Result<()> {
    let f = File::open(dir)?;
    let mut x = FsXattr::default();
    ioctl_xattr(&f, FS_IOC_FSGETXATTR, &mut x)?;
    x.fsx_projid = id;
    x.fsx_xflags |= FS_XFLAG_PROJINHERIT;
    ioctl_xattr(&f, FS_IOC_FSSETXATTR, &mut x)
}

/// The project id of `path`.
pub fn project_of(path: &Path) -> std::io::Result<u32> {
    let f = File::open(path)?;
    let mut x = FsXattr::default();
    ioctl_xattr(&f, FS_IOC_FSGETXATTR, &mut x)?;
    Ok(x.fsx_projid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_positive_decimal_bytes() {
        assert_eq!(parse_size("10485760"), Ok(10485760));
        assert_eq!(parse_size("1"), Ok(1));
        for bad in [
            "0",
            "",
            "-1",
            "+5",
            "10M",
            "1e6",
            " 5",
            "18446744073709551616",
        ] {
            assert_eq!(
                parse_size(bad),
                Err(SizeError::Invalid(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn structs_have_the_kernels_sizes() {
        assert_eq!(std::mem::size_of::<FsDiskQuota>(), 112);
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        assert_eq!(qcmd(Q_XSETQLIM, PRJQUOTA), 0x0058_0402);
    }

    #[test]
    fn a_file_system_without_project_quotas_says_so() {
        // The test machine's temporary directory has no project quotas enforced (tmpfs or
        // the root ext4); the quota tests on a loop-mounted ext4 are in tests/quota.rs.
        let dir = tempfile::tempdir().unwrap();
        let e = Quotas::detect(dir.path(), 1_000_000).unwrap_err();
        assert!(e.contains("project quotas"), "{e}");
    }
}
