//! Reading a blob the cache lacks: one download per blob, however many readers want it. A
//! thread keeps `read_ahead` ranged GETs in flight, writes the parts in order to a temporary
//! file, and hashes them; readers are served from that file as soon as their range has
//! arrived. A blob whose bytes do not match its digest never enters the cache.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use sha2::{Digest as _, Sha256};
use strata_common::error::ErrorKind;
use strata_common::{Error, Result};
use tracing::{debug, warn};

use super::cache::{Cache, Pin};
use super::remote::Remote;
use crate::backend::BlobReader;
use crate::digest::Digest;

/// Downloads under way, by blob.
#[derive(Default)]
pub struct Downloads {
    running: Mutex<HashMap<Digest, Arc<Download>>>,
}

pub struct Download {
    size: u64,
    file: File,
    progress: Mutex<Progress>,
    arrived: Condvar,
}

#[derive(Default)]
struct Progress {
    have: u64,
    failed: Option<(ErrorKind, String)>,
}

/// What a download needs from the backend.
pub struct Source {
    pub remote: Arc<Remote>,
    pub cache: Arc<Cache>,
    pub part_bytes: u64,
    pub read_ahead: usize,
}

impl Downloads {
    /// A reader of `digest` (`size` bytes), joining its download or starting one.
    pub fn reader(
        self: &Arc<Self>,
        src: &Arc<Source>,
        digest: &Digest,
        size: u64,
    ) -> Result<Box<dyn BlobReader>> {
        let pin = src.cache.pin(digest);
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let dl = match running.get(digest) {
            Some(dl) => dl.clone(),
            None => {
                let dir = src.cache.temp_dir();
                std::fs::create_dir_all(&dir)
                    .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
                let temp = dir.join(format!("{}.{}", digest.hex(), std::process::id()));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&temp)
                    .map_err(|e| Error::io(format!("create {}", temp.display()), e))?;
                let dl = Arc::new(Download {
                    size,
                    file,
                    progress: Mutex::default(),
                    arrived: Condvar::new(),
                });
                running.insert(digest.clone(), dl.clone());
                let (src, d, job) = (src.clone(), digest.clone(), dl.clone());
                let downloads = self.clone();
                let spawned = std::thread::Builder::new()
                    .name("strata-s3-get".into())
                    .spawn(move || {
                        let r = fetch(&src, &d, &job, &temp);
                        if let Err(e) = &r {
                            warn!(digest = %d, error = %e.chain(), "download failed");
                            let _ = std::fs::remove_file(&temp);
                        }
                        job.finish(r.err());
                        // Later readers find the blob in the cache (or start afresh).
                        downloads.remove(&d);
                    });
                if let Err(e) = spawned {
                    running.remove(digest);
                    return Err(Error::io("start a download thread", e));
                }
                dl
            }
        };
        Ok(Box::new(DownloadReader { dl, _pin: pin }))
    }

    fn remove(&self, d: &Digest) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(d);
    }

    /// Whether `d` is being downloaded.
    pub fn busy(&self, d: &Digest) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(d)
    }
}

impl Download {
    fn advance(&self, have: u64) {
        let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        p.have = have;
        self.arrived.notify_all();
    }

    fn finish(&self, failed: Option<Error>) {
        let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = failed {
            p.failed = Some((e.kind(), e.message().to_string()));
        }
        self.arrived.notify_all();
    }
}

/// Fetches the whole blob into `temp`, verifies it and moves it into the cache.
fn fetch(src: &Source, d: &Digest, dl: &Download, temp: &Path) -> Result<()> {
    let key = src.remote.blob_key(d);
    let mut hasher = Sha256::new();
    let mut inflight = VecDeque::new();
    let mut next = 0u64;
    let mut have = 0u64;
    while have < dl.size {
        while next < dl.size && inflight.len() < src.read_ahead {
            let end = (next + src.part_bytes).min(dl.size);
            inflight.push_back(src.remote.spawn_range(&key, next..end)?);
            next = end;
        }
        let Some(rx) = inflight.pop_front() else {
            break;
        };
        let part = rx
            .recv()
            .map_err(|_| Error::internal(format!("download of {d} lost a part")))??;
        if part.is_empty() {
            return Err(Error::new(
                ErrorKind::DataLoss,
                format!("object {key} ended at {have} of {} bytes", dl.size),
            ));
        }
        dl.file
            .write_all_at(&part, have)
            .map_err(|e| Error::io(format!("write {}", temp.display()), e))?;
        hasher.update(&part);
        have += part.len() as u64;
        dl.advance(have);
    }
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if d.algorithm().as_str() == "sha256" && got != d.to_string() {
        return Err(Error::new(
            ErrorKind::DataLoss,
            format!("object {key} does not match its digest (got {got})"),
        ));
    }
    dl.file
        .sync_all()
        .map_err(|e| Error::io(format!("fsync {}", temp.display()), e))?;
    src.cache.insert(d, temp, dl.size)?;
    let evicted = src.cache.evict();
    if !evicted.is_empty() {
        debug!(count = evicted.len(), "evicted cached blobs");
    }
    Ok(())
}

struct DownloadReader {
    dl: Arc<Download>,
    _pin: Pin,
}

impl BlobReader for DownloadReader {
    fn size(&self) -> u64 {
        self.dl.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.dl.size || buf.is_empty() {
            return Ok(0);
        }
        let mut p = self.dl.progress.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if p.have > offset {
                break;
            }
            if let Some((_, msg)) = &p.failed {
                return Err(io::Error::other(msg.clone()));
            }
            p = self.dl.arrived.wait(p).unwrap_or_else(|p| p.into_inner());
        }
        let n = usize::try_from(p.have - offset)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        drop(p);
        self.dl.file.read_at(&mut buf[..n], offset)
    }
}
