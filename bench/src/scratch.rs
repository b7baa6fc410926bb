//! Where the stacks keep their data: a journaled ext4 on a loop device, made for the run.
//!
//! The root file systems of these machines may be ext4 without a journal, where fsync is
//! cheaper than on any node a user runs; both stacks get the same fresh file system instead.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted scratch file system (or a dir the caller chose), unmounted and deleted on drop.
pub struct Scratch {
    dir: PathBuf,
    image: Option<PathBuf>,
}

impl Scratch {
    /// A new `size_gib` GiB sparse image under /var/tmp, made ext4 (with its default journal)
    /// and loop-mounted on a short path (sockets live below it).
    pub fn loop_ext4(size_gib: u64) -> Result<Scratch, String> {
        reap_dead_runs();
        let id = std::process::id();
        let image = PathBuf::from(format!("/var/tmp/strata-bench-{id}.img"));
        let dir = PathBuf::from(format!("/run/strata-bench-{id}"));
        let file =
            std::fs::File::create(&image).map_err(|e| format!("{}: {e}", image.display()))?;
        file.set_len(size_gib << 30)
            .map_err(|e| format!("sizing {}: {e}", image.display()))?;
        drop(file);
        let mut scratch = Scratch {
            dir: dir.clone(),
            image: Some(image.clone()),
        };
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&dir))
        .inspect_err(|_| {
            // Nothing is mounted: only the image is left to delete.
            let _ = std::fs::remove_dir(&dir);
            scratch.dir = PathBuf::new();
        })?;
        Ok(scratch)
    }

    /// `dir` as it is (the caller's file system, kept afterwards).
    pub fn existing(dir: &Path) -> Scratch {
        Scratch {
            dir: dir.to_path_buf(),
            image: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `type (options)` of the file system holding the scratch dir, from /proc/mounts.
    pub fn describe(&self) -> String {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let best = mounts
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 4 && self.dir.starts_with(f[1])).then(|| (f[1].len(), f[2], f[3]))
            })
            .max_by_key(|(len, _, _)| *len);
        match (best, &self.image) {
            (Some((_, fs, opts)), Some(_)) => {
                format!("{fs} ({opts}) on a loop device, made for the run")
            }
            (Some((_, fs, opts)), None) => format!("{fs} ({opts})"),
            (None, _) => "unknown".to_string(),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(image) = &self.image {
            if !self.dir.as_os_str().is_empty() {
                let _ = Command::new("umount").arg(&self.dir).status();
                let _ = std::fs::remove_dir(&self.dir);
            }
            let _ = std::fs::remove_file(image);
        }
    }
}

/// Unmounts and deletes what runs that died without cleaning up (killed, or interrupted with
/// Ctrl-C) left: their file systems, everything mounted below them, and their images.
fn reap_dead_runs() {
    let Ok(entries) = std::fs::read_dir("/run") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("strata-bench-") else {
            continue;
        };
        if pid.parse::<u32>().is_err() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = e.path();
        eprintln!(
            "strata-bench: removing {}, left by a run that died",
            dir.display()
        );
        for problem in strata_tests::tmp::unmount_below(&dir) {
            eprintln!("strata-bench: {problem}");
        }
        let _ = std::fs::remove_dir(&dir);
        let _ = std::fs::remove_file(format!("/var/tmp/strata-bench-{pid}.img"));
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
