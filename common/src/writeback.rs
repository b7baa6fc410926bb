//! Early writeback of a file appended to and fsynced at its end: a content ingest, a Diff's
//! layer. The commit must fsync the whole blob, and with nothing else pushing them out (the
//! kernel starts background writeback only at `dirty_background_ratio`, gigabytes on a large
//! machine) every page of the ingest is still dirty then: a 1 GiB ingest spent about a second
//! in that fsync alone. Asking the kernel to start writing each few MiB as they arrive
//! overlaps the disk with the transfer, and the fsync at commit, still made, mostly waits for
//! I/O already under way. Durability is unchanged: nothing here is a promise; the fsync is.
//!
//! Starting writeback is not enough where the disk has a write cache of its own, as a virtual
//! machine's disk backed by the host's page cache has: the data leaves the kernel early, but
//! the commit's fsync (its cache flush) then waits for the host to write the whole blob. On
//! the 2-core VM of docs/benchmarks.md the commit of a 1 GiB ingest spent up to 400 ms in its
//! fsync with writeback started every 8 MiB, and 21-34 ms once every 64 MiB also got an
//! `fdatasync` from a thread of its own, off the answers' path. That thread uses a descriptor
//! it opens itself: a writeback error is reported once per open file description, and one
//! shared with the writer (a `dup`) could take the error the commit's fsync must see.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::mpsc::{self, SyncSender, TrySendError};

/// Bytes between two writeback requests: large enough that the request is cheap per byte,
/// small enough that the disk starts early and little is left for the commit's fsync.
pub const STEP: u64 = 8 << 20;
/// Bytes between two background `fdatasync`s: each costs a cache flush, and a blob smaller
/// than this never starts the flushing thread.
pub const FLUSH_STEP: u64 = 64 << 20;

/// Starts writeback of a file's pages in [`STEP`]s as data is appended to it, and has them
/// flushed every [`FLUSH_STEP`].
pub struct Writeback {
    file: File,
    /// Offset up to which writeback was requested.
    started: u64,
    /// Offset up to which data was written.
    written: u64,
    /// Where the file is, to open the flushing thread's own descriptor.
    path: PathBuf,
    /// Offset up to which a flush was requested.
    flushed: u64,
    flusher: Flusher,
}

enum Flusher {
    /// Not needed yet.
    Idle,
    /// Wakes the flushing thread; a full queue means a flush is already due.
    Running(SyncSender<()>),
    /// No thread or descriptor to be had: only speed is lost.
    Off,
}

impl Writeback {
    /// Follows `file` (its own descriptor) at `path`, whose first `offset` bytes are
    /// already written.
    pub fn new(file: File, path: PathBuf, offset: u64) -> Writeback {
        Writeback {
            file,
            started: offset,
            written: offset,
            path,
            flushed: offset,
            flusher: Flusher::Idle,
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
        if self.written - self.flushed >= FLUSH_STEP {
            self.flushed = self.written;
            self.flush();
        }
    }

    /// Asks the flushing thread for an `fdatasync`, starting it if need be; never waits.
    fn flush(&mut self) {
        if let Flusher::Idle = self.flusher {
            self.flusher = self.start_flusher().map_or(Flusher::Off, Flusher::Running);
        }
        if let Flusher::Running(tx) = &self.flusher {
            match tx.try_send(()) {
                // A flush still to come covers these bytes too.
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => self.flusher = Flusher::Off,
            }
        }
    }

    fn start_flusher(&self) -> Option<SyncSender<()>> {
        let own = File::open(&self.path).ok()?;
        // The path names another file if the ingest was removed and made again meanwhile.
        let (a, b) = (own.metadata().ok()?, self.file.metadata().ok()?);
        if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
            return None;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("strata-flush".into())
            .spawn(move || {
                for () in rx {
                    // A hint as well: the commit's fsync, on the writer's own descriptor,
                    // reports any error.
                    let _ = own.sync_data();
                }
            })
            .ok()?;
        Some(tx)
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
        let mut wb = Writeback::new(f.try_clone().unwrap(), path.clone(), 0);
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
        assert!(
            matches!(wb.flusher, Flusher::Idle),
            "no flush before FLUSH_STEP"
        );
    }

    #[test]
    fn flushes_every_flush_step_from_a_thread_of_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("data");
        let mut f = File::create(&path).unwrap();
        let mut wb = Writeback::new(f.try_clone().unwrap(), path.clone(), 0);
        let chunk = vec![7u8; STEP as usize];
        for _ in 0..FLUSH_STEP / STEP {
            f.write_all(&chunk).unwrap();
            wb.advance(chunk.len() as u64);
        }
        assert!(matches!(wb.flusher, Flusher::Running(_)));
        assert_eq!(wb.flushed, FLUSH_STEP);
        // A file replaced at the path is not the one to flush.
        let other = tmp.path().join("other");
        let g = File::create(&other).unwrap();
        let mut wb = Writeback::new(g, path, 0);
        wb.flush();
        assert!(matches!(wb.flusher, Flusher::Off));
    }
}
