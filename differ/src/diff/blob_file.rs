//! A Diff result written straight into the content store's directory (`content_root`), as the
//! store itself commits a blob: a temporary file (written out as it grows, see
//! [`strata_common::writeback`]), fsynced, made read-only and renamed (never replacing) to
//! `blobs/sha256/<hex>`, the directory fsynced.
//!
//! containerd then only has to record it: with its default content sharing policy, a Write
//! opened with the blob's digest and size finds it in the store and commits without data
//! ([`crate::diff::upload::Uploader::commit_present`]). That spares sending the whole layer through
//! containerd's content service, which is what bounds an uncompressed Diff otherwise.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use strata_common::publish;
use strata_common::writeback::Writeback;

use crate::diff::layer::Restart;
use crate::diff::unique_id;

/// Bytes gathered before a write(2): the layer writer hands over tar headers of 512 bytes.
const BUFFER: usize = 1 << 20;

/// Buffers queued for the hashing thread.
const HASH_QUEUE: usize = 4;

/// Prefix of the temporary files (`.strata-diff-...`) at the top of the store's directory.
const TEMP_PREFIX: &str = ".strata-diff-";

/// Deletes temporary blob files under `root` that nothing has written for `age`: what a
/// differ killed in the middle of a Diff left behind. A Diff in progress writes its file
/// continuously, so a younger one may be another differ's and is left alone. Returns how
/// many were deleted.
pub fn remove_stale(root: &Path, age: std::time::Duration) -> io::Result<usize> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let md = entry.metadata()?;
        let idle = md
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if md.is_file() && idle >= age {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// A blob being written under `root`, hashed as it goes on a thread of its own: sha256 of an
/// uncompressed layer costs as much as reading and writing it, and the two then overlap.
pub struct BlobFile {
    root: PathBuf,
    temp: PathBuf,
    file: File,
    buf: Vec<u8>,
    hasher: HashThread,
    size: u64,
    /// Starts writing the file out as it grows, so the final fsync has little left to do.
    writeback: Writeback,
    placed: bool,
}

/// A blob in place: its digest, size, and the file, open for reading it back.
#[derive(Debug)]
pub struct PlacedBlob {
    pub digest: String,
    pub size: u64,
    pub file: File,
    /// False when the store had this blob already (ours was dropped).
    pub new: bool,
}

impl BlobFile {
    /// Starts a blob in the store at `root` (the directory holding `blobs/`). The temporary
    /// file sits at the top of `root`, where neither containerd's local store nor
    /// strata-content look (their listings read `blobs/` and `ingest/` only), on the same
    /// file system as its final place.
    pub fn create(root: &Path) -> io::Result<BlobFile> {
        let temp = root.join(unique_id(TEMP_PREFIX.trim_end_matches('-')));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        let writeback = Writeback::new(file.try_clone()?, temp.clone(), 0);
        Ok(BlobFile {
            root: root.to_path_buf(),
            temp,
            file,
            buf: Vec::with_capacity(BUFFER),
            hasher: HashThread::start()?,
            size: 0,
            writeback,
            placed: false,
        })
    }

    fn write_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = Arc::new(std::mem::replace(&mut self.buf, Vec::with_capacity(BUFFER)));
        self.hasher.send(HashMsg::Data(Arc::clone(&data)))?;
        self.file.write_all(&data)?;
        self.writeback.advance(data.len() as u64);
        Ok(())
    }

    /// Makes the blob durable and puts it in place.
    pub fn place(mut self) -> io::Result<PlacedBlob> {
        self.write_buffered()?;
        self.file.sync_all()?;
        // Read-only, as both stores leave committed blobs.
        self.file
            .set_permissions(fs::Permissions::from_mode(0o444))?;
        let hex = self.hasher.finish()?;
        let dir = self.root.join("blobs").join("sha256");
        fs::create_dir_all(&dir)?;
        let target = dir.join(&hex);
        let new = publish::rename_no_replace(&self.temp, &target)?;
        // Renamed or not, the temporary name goes (a no-op after a rename).
        let _ = fs::remove_file(&self.temp);
        self.placed = true;
        if new {
            publish::fsync_dir(&dir)?;
        }
        let mut file = self.file.try_clone()?;
        file.seek(SeekFrom::Start(0))?;
        Ok(PlacedBlob {
            digest: format!("sha256:{hex}"),
            size: self.size,
            file,
            new,
        })
    }
}

impl Write for BlobFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(BUFFER - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.size += n as u64;
        if self.buf.len() == BUFFER {
            self.write_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Restart for BlobFile {
    fn restart(&mut self) -> io::Result<()> {
        self.buf.clear();
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.hasher.send(HashMsg::Reset)?;
        self.size = 0;
        self.writeback = Writeback::new(self.file.try_clone()?, self.temp.clone(), 0);
        Ok(())
    }
}

enum HashMsg {
    Data(Arc<Vec<u8>>),
    /// Start over (the blob was restarted).
    Reset,
}

/// sha256 of what is sent, on its own thread; hex digest of it all when the sender is done.
struct HashThread {
    tx: Option<SyncSender<HashMsg>>,
    handle: Option<JoinHandle<String>>,
}

impl HashThread {
    fn start() -> io::Result<HashThread> {
        let (tx, rx) = sync_channel::<HashMsg>(HASH_QUEUE);
        let handle = std::thread::Builder::new()
            .name("strata-diff-hash".into())
            .spawn(move || {
                let mut hasher = Sha256::new();
                while let Ok(msg) = rx.recv() {
                    match msg {
                        HashMsg::Data(d) => hasher.update(&d[..]),
                        HashMsg::Reset => hasher = Sha256::new(),
                    }
                }
                hex::encode(hasher.finalize())
            })?;
        Ok(HashThread {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    fn send(&self, msg: HashMsg) -> io::Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(msg).ok())
            .ok_or_else(|| io::Error::other("the hashing thread stopped"))
    }

    /// The hex digest of everything sent since the last reset.
    fn finish(&mut self) -> io::Result<String> {
        drop(self.tx.take());
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .ok_or_else(|| io::Error::other("the hashing thread stopped"))
    }
}

impl Drop for BlobFile {
    fn drop(&mut self) {
        if !self.placed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;

    fn sha(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    fn leftovers(root: &Path) -> Vec<String> {
        fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "blobs")
            .collect()
    }

    #[test]
    fn a_placed_blob_is_read_only_under_its_digest_and_reads_back() {
        let root = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut f = BlobFile::create(root.path()).unwrap();
        for chunk in data.chunks(512) {
            f.write_all(chunk).unwrap();
        }
        let mut placed = f.place().unwrap();
        assert_eq!(placed.digest, sha(&data));
        assert_eq!(placed.size, data.len() as u64);
        assert!(placed.new);
        let path = root
            .path()
            .join("blobs/sha256")
            .join(placed.digest.trim_start_matches("sha256:"));
        assert_eq!(fs::read(&path).unwrap(), data);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o444);
        let mut back = Vec::new();
        placed.file.read_to_end(&mut back).unwrap();
        assert_eq!(back, data, "the returned file reads from the start");
        assert!(leftovers(root.path()).is_empty(), "no temporary file left");
    }

    #[test]
    fn a_blob_already_there_is_kept_and_ours_dropped() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("blobs/sha256");
        fs::create_dir_all(&dir).unwrap();
        let digest = sha(b"layer");
        let existing = dir.join(digest.trim_start_matches("sha256:"));
        fs::write(&existing, b"layer").unwrap();
        let before = fs::metadata(&existing).unwrap().ino();
        let mut f = BlobFile::create(root.path()).unwrap();
        f.write_all(b"layer").unwrap();
        let placed = f.place().unwrap();
        assert!(!placed.new);
        assert_eq!(placed.digest, digest);
        assert_eq!(fs::metadata(&existing).unwrap().ino(), before);
        assert!(leftovers(root.path()).is_empty());
    }

    #[test]
    fn stale_temporary_files_go_and_fresh_ones_and_others_stay() {
        let root = tempfile::tempdir().unwrap();
        let f = BlobFile::create(root.path()).unwrap();
        let fresh = f.temp.clone();
        let stale = root.path().join(format!("{TEMP_PREFIX}1-2-abc"));
        let old = File::create(&stale).unwrap();
        old.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
            .unwrap();
        let other = root.path().join("ingest");
        fs::create_dir(&other).unwrap();
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(remove_stale(root.path(), hour).unwrap(), 1);
        assert!(!stale.exists());
        assert!(fresh.exists(), "a Diff in progress keeps its file");
        assert!(other.exists());
        drop(f);
        assert_eq!(remove_stale(&root.path().join("missing"), hour).unwrap(), 0);
    }

    #[test]
    fn restart_starts_the_blob_over_and_a_dropped_one_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let mut f = BlobFile::create(root.path()).unwrap();
        f.write_all(&vec![7u8; BUFFER + 10]).unwrap();
        f.restart().unwrap();
        f.write_all(b"second").unwrap();
        let placed = f.place().unwrap();
        assert_eq!((placed.digest, placed.size), (sha(b"second"), 6));

        let f = BlobFile::create(root.path()).unwrap();
        drop(f);
        assert!(leftovers(root.path()).is_empty());
    }
}
