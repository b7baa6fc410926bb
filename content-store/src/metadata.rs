//! Per-blob metadata (labels, created/updated times) in SQLite, WAL mode with full sync, so
//! a label update that was answered survives a crash of the process or the machine.
//!
//! The backend, not this table, decides whether a blob exists: a row is written after the blob
//! is stored and removed after it is deleted, so a crash between the two leaves either a blob
//! without a row (served with its store time and no labels, as containerd's local store would
//! serve it) or a row without a blob (ignored, overwritten by the next commit of that digest,
//! and pruned at startup).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::SystemTime;

use rusqlite::params;
use strata_common::{Error, Result};

use crate::digest::Digest;
use crate::sqlite::Db;
use crate::time::{from_nanos, to_nanos};

/// What the metadata table holds for one blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobMeta {
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub labels: BTreeMap<String, String>,
}

pub struct Metadata {
    db: Db,
}

fn decode_labels(text: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(text)
        .map_err(|e| Error::internal("metadata: corrupt labels").with_source(e))
}

fn encode_labels(labels: &BTreeMap<String, String>) -> Result<String> {
    serde_json::to_string(labels)
        .map_err(|e| Error::internal("metadata: encode labels").with_source(e))
}

fn meta_of(c: i64, u: i64, labels: &str) -> Result<BlobMeta> {
    Ok(BlobMeta {
        created_at: from_nanos(c),
        updated_at: from_nanos(u),
        labels: decode_labels(labels)?,
    })
}

impl Metadata {
    pub fn open(path: &Path) -> Result<Metadata> {
        let db = Db::open(
            path,
            "metadata",
            "CREATE TABLE IF NOT EXISTS blobs (
                 digest TEXT PRIMARY KEY NOT NULL,
                 created_ns INTEGER NOT NULL,
                 updated_ns INTEGER NOT NULL,
                 labels TEXT NOT NULL
             ) WITHOUT ROWID;",
        )?;
        Ok(Metadata { db })
    }

    pub fn get(&self, digest: &Digest) -> Result<Option<BlobMeta>> {
        let rows = self.db.rows(
            "SELECT created_ns, updated_ns, labels FROM blobs WHERE digest = ?1",
            params![digest.to_string()],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )?;
        rows.into_iter()
            .next()
            .map(|(c, u, l)| meta_of(c, u, &l))
            .transpose()
    }

    /// Records `digest` with `meta`, replacing any row a deleted predecessor left behind.
    pub fn put(&self, digest: &Digest, meta: &BlobMeta) -> Result<()> {
        let labels = encode_labels(&meta.labels)?;
        self.db.execute(
            "put",
            "INSERT OR REPLACE INTO blobs (digest, created_ns, updated_ns, labels)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                digest.to_string(),
                to_nanos(meta.created_at),
                to_nanos(meta.updated_at),
                labels
            ],
        )?;
        Ok(())
    }

    pub fn remove(&self, digest: &Digest) -> Result<()> {
        self.db.execute(
            "remove",
            "DELETE FROM blobs WHERE digest = ?1",
            params![digest.to_string()],
        )?;
        Ok(())
    }

    /// Every row, keyed by the digest's text.
    pub fn all(&self) -> Result<HashMap<String, BlobMeta>> {
        let rows = self.db.rows(
            "SELECT digest, created_ns, updated_ns, labels FROM blobs",
            [],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            },
        )?;
        rows.into_iter()
            .map(|(d, c, u, l)| Ok((d, meta_of(c, u, &l)?)))
            .collect()
    }

    /// Drops rows whose digest `keep` rejects; returns how many went.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> Result<usize> {
        let stale: Vec<String> = self.all()?.into_keys().filter(|d| !keep(d)).collect();
        let mut conn = self.db.conn();
        let tx = conn.transaction().map_err(self.db.err("prune"))?;
        for d in &stale {
            tx.execute("DELETE FROM blobs WHERE digest = ?1", params![d])
                .map_err(self.db.err("prune"))?;
        }
        tx.commit().map_err(self.db.err("prune"))?;
        Ok(stale.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rows_survive_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("meta.db");
        let d = Digest::sha256_of(b"a");
        let meta = BlobMeta {
            created_at: SystemTime::UNIX_EPOCH + Duration::new(100, 7),
            updated_at: SystemTime::UNIX_EPOCH + Duration::new(200, 9),
            labels: [("k".to_string(), "v".to_string())].into(),
        };
        {
            let m = Metadata::open(&path).unwrap();
            assert_eq!(m.get(&d).unwrap(), None);
            m.put(&d, &meta).unwrap();
        }
        let m = Metadata::open(&path).unwrap();
        assert_eq!(m.get(&d).unwrap(), Some(meta.clone()));
        assert_eq!(m.all().unwrap().len(), 1);
        assert_eq!(m.retain(|_| true).unwrap(), 0);
        assert_eq!(m.retain(|_| false).unwrap(), 1);
        assert_eq!(m.get(&d).unwrap(), None);
        m.put(&d, &meta).unwrap();
        m.remove(&d).unwrap();
        assert_eq!(m.get(&d).unwrap(), None);
    }
}
