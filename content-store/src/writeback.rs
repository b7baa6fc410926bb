//! Early writeback of an ingest's data file. The commit must fsync the whole blob, and with
//! nothing else pushing them out (the kernel starts background writeback only at
//! `dirty_background_ratio`, gigabytes on a large machine) every page of the ingest is still
//! dirty then: a 1 GiB ingest spent about a second in that fsync alone. Asking the kernel to
//! start writing each few MiB as they arrive overlaps the disk with the transfer, and the fsync
//! at commit, still made, mostly waits for I/O already under way. Durability is unchanged:
//! nothing here is a promise; the fsync is.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Bytes between two writeback requests: large enough that the request is cheap per byte,
/// small enough that the disk starts early and little is left for the commit's fsync.
pub const STEP: u64 = 8 << 20;

/// Starts writeback of a file's pages in [`STEP`]s as data is appended to it.
pub struct Writeback {
    file: File,
    /// Offset up to which writeback was requested.
    started: u64,
    /// Offset up to which data was written.
    written: u64,
}

impl Writeback {
    /// Follows `file` (its own descriptor) whose first `offset` bytes are already written.
    pub fn new(file: File, offset: u64) -> Writeback {
        Writeback {
            file,
            started: offset,
            written: offset,
        }
    }

    /// Notes `n` more bytes appended; requests writeback once a [`STEP`] has gathered.
    pub fn advance(&mut self, n: u64) {
        self.written += n;
        let len = self.written - self.started;
        if len < STEP {
            return;
        }
        let (Ok(off), Ok(len)) = (i64::try_from(self.started), i64::try_from(len)) else {
            return;
        };
        // SAFETY: sync_file_range only reads its integer arguments; the descriptor is owned by
        // `self.file` and open for the duration of the call.
        let rc = unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        // A hint only: on failure (a file system without it, an I/O error the fsync at commit
        // will report anyway) the commit writes these pages itself.
        let _ = rc;
        self.started = self.written;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn requests_writeback_per_step_and_leaves_data_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("data");
        let mut f = File::create(&path).unwrap();
        let mut wb = Writeback::new(f.try_clone().unwrap(), 0);
        let chunk = vec![7u8; (STEP / 2) as usize + 1];
        for _ in 0..3 {
            f.write_all(&chunk).unwrap();
            wb.advance(chunk.len() as u64);
        }
        assert_eq!(
            wb.started,
            2 * chunk.len() as u64,
            "one request after two chunks"
        );
        assert_eq!(wb.written, 3 * chunk.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap().len(), 3 * chunk.len());
    }
}
