//! The node's cache of blobs, as files at `<root>/blobs/<alg>/<hex>`: containerd's local
//! layout, so the differ's `content_root` reads them straight from disk. Files appear only
//! whole and verified (fsynced, then renamed into place). Beyond `max_bytes` the least
//! recently read are removed, except those open in a reader.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use strata_common::{Error, Result, publish};
use tracing::debug;

use crate::backend::local::blob_files;
use crate::digest::{Algorithm, Digest};

pub struct Cache {
    blobs: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<Digest, Entry>,
    tick: u64,
    total: u64,
    pins: HashMap<Digest, usize>,
}

struct Entry {
    size: u64,
    last_read: u64,
}

/// Keeps a blob from eviction while alive.
pub struct Pin {
    cache: Arc<Cache>,
    digest: Digest,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut st = self.cache.state();
        if let Some(n) = st.pins.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                st.pins.remove(&self.digest);
            }
        }
    }
}

impl Cache {
    /// The cache under `root` (creating `root/blobs/sha256`).
    pub fn open(root: &Path, max_bytes: u64) -> Result<Arc<Cache>> {
        let blobs = root.join("blobs");
        let sha = blobs.join(Algorithm::Sha256.as_str());
        fs::create_dir_all(&sha).map_err(|e| Error::io(format!("create {}", sha.display()), e))?;
        Ok(Arc::new(Cache {
            blobs,
            max_bytes,
            state: Mutex::default(),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.blobs.join(d.algorithm().as_str()).join(d.hex())
    }

    /// The directory temporary files are written in: the cache's own file system, outside
    /// `blobs/`.
    pub fn temp_dir(&self) -> PathBuf {
        self.blobs.with_file_name("cache-tmp")
    }

    /// Counts files already in place (at start-up, for held blobs).
    pub fn adopt_existing(&self, d: &Digest) -> bool {
        match fs::metadata(self.path(d)) {
            Ok(m) if m.is_file() => {
                self.record(d, m.len());
                true
            }
            _ => false,
        }
    }

    fn record(&self, d: &Digest, size: u64) {
        let mut st = self.state();
        st.tick += 1;
        let tick = st.tick;
        if let Some(old) = st.entries.insert(
            d.clone(),
            Entry {
                size,
                last_read: tick,
            },
        ) {
            st.total -= old.size;
        }
        st.total += size;
    }

    /// Opens the cached file of `d`, marking it read now and pinning it.
    pub fn open_file(self: &Arc<Self>, d: &Digest) -> Result<Option<(File, Pin)>> {
        let pin = self.pin(d);
        match File::open(self.path(d)) {
            Ok(f) => {
                let mut st = self.state();
                st.tick += 1;
                let tick = st.tick;
                match st.entries.get_mut(d) {
                    Some(e) => e.last_read = tick,
                    None => {
                        drop(st);
                        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                        self.record(d, size);
                    }
                }
                Ok(Some((f, pin)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(d);
                Ok(None)
            }
            Err(e) => Err(Error::io(format!("open cached content {d}"), e)),
        }
    }

    pub fn pin(self: &Arc<Self>, d: &Digest) -> Pin {
        *self.state().pins.entry(d.clone()).or_default() += 1;
        Pin {
            cache: self.clone(),
            digest: d.clone(),
        }
    }

    fn forget(&self, d: &Digest) {
        let mut st = self.state();
        if let Some(old) = st.entries.remove(d) {
            st.total -= old.size;
        }
    }

    /// Moves the complete, verified, fsynced file `temp` into place as `d` (a file already
    /// there wins; `temp` then goes).
    pub fn insert(&self, d: &Digest, temp: &Path, size: u64) -> Result<()> {
        let dir = self.blobs.join(d.algorithm().as_str());
        fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        fs::set_permissions(temp, fs::Permissions::from_mode(0o444))
            .map_err(|e| Error::io("make cached blob read-only", e))?;
        let placed = publish::rename_no_replace(temp, &self.path(d))
            .map_err(|e| Error::io(format!("place cached content {d}"), e))?;
        if !placed {
            let _ = fs::remove_file(temp);
        }
        self.record(d, size);
        Ok(())
    }

    /// Removes `d`'s file (a reader that has it open keeps reading it).
    pub fn remove(&self, d: &Digest) -> Result<()> {
        self.forget(d);
        match fs::remove_file(self.path(d)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove cached content {d}"), e)),
        }
    }

    /// Whether `d` is cached (and so held).
    pub fn contains(&self, d: &Digest) -> bool {
        self.state().entries.contains_key(d)
    }

    /// Removes files in `blobs/` that `held` rejects and nothing wrote for `age`; returns
    /// how many went.
    pub fn remove_unheld(&self, held: &dyn Fn(&Digest) -> bool, age: Duration) -> Result<usize> {
        let now = SystemTime::now();
        let mut stale = Vec::new();
        blob_files(&self.blobs, &mut |d, entry| {
            let old = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|idle| idle >= age);
            if old && !held(&d) {
                stale.push(d);
            }
            Ok(())
        })?;
        for d in &stale {
            self.remove(d)?;
        }
        Ok(stale.len())
    }

    /// Bytes of cached blobs.
    pub fn total(&self) -> u64 {
        self.state().total
    }

    /// Removes least recently read, unpinned blobs until the cache fits its limit; returns
    /// what went.
    pub fn evict(&self) -> Vec<Digest> {
        let mut gone = Vec::new();
        if self.max_bytes == 0 {
            return gone;
        }
        loop {
            let victim = {
                let st = self.state();
                if st.total <= self.max_bytes {
                    break;
                }
                st.entries
                    .iter()
                    .filter(|(d, _)| !st.pins.contains_key(*d))
                    .min_by_key(|(_, e)| e.last_read)
                    .map(|(d, _)| d.clone())
            };
            let Some(d) = victim else {
                // Everything left is being read: over the limit until readers finish.
                break;
            };
            match self.remove(&d) {
                Ok(()) => gone.push(d),
                Err(e) => {
                    debug!(error = %e.chain(), "cannot evict");
                    break;
                }
            }
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(c: &Cache, tmp: &Path, data: &[u8]) -> Digest {
        let d = Digest::sha256_of(data);
        let t = tmp.join("t");
        fs::write(&t, data).unwrap();
        c.insert(&d, &t, data.len() as u64).unwrap();
        d
    }

    #[test]
    fn evicts_least_recently_read_but_never_pinned() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Cache::open(tmp.path(), 25).unwrap();
        let a = put(&c, tmp.path(), &[1; 10]);
        let b = put(&c, tmp.path(), &[2; 10]);
        // a read after b: b is the least recently read.
        let (_f, pin_a) = c.open_file(&a).unwrap().unwrap();
        drop(pin_a);
        let third = put(&c, tmp.path(), &[3; 10]);
        assert_eq!(c.evict(), vec![b.clone()]);
        assert!(!c.path(&b).exists());
        assert_eq!(c.total(), 20);

        // Pinned blobs stay even when the cache is over its limit.
        let (_f, _pa) = c.open_file(&a).unwrap().unwrap();
        let (_g, _pt) = c.open_file(&third).unwrap().unwrap();
        let fourth = put(&c, tmp.path(), &[4; 10]);
        assert_eq!(c.evict(), vec![fourth]);
        assert!(c.path(&a).exists() && c.path(&third).exists());
    }

    #[test]
    fn unheld_files_go_once_old() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Cache::open(tmp.path(), 0).unwrap();
        let a = put(&c, tmp.path(), b"a");
        let b = put(&c, tmp.path(), b"b");
        let keep_a = |d: &Digest| *d == a;
        assert_eq!(
            c.remove_unheld(&keep_a, Duration::from_secs(3600)).unwrap(),
            0,
            "young"
        );
        assert_eq!(c.remove_unheld(&keep_a, Duration::ZERO).unwrap(), 1);
        assert!(c.path(&a).exists() && !c.path(&b).exists());
    }
}
