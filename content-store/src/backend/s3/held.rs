//! The blobs this node holds, in SQLite beside the labels: what List reports and what the
//! node's reference markers in the bucket stand for. A row is added after the marker is
//! written and removed before the marker is, so a crash leaves at worst a marker without a
//! row, which the sweeper removes (see [`super::fleet`]).

use std::path::Path;
use std::time::SystemTime;

use rusqlite::params;
use strata_common::Result;

use crate::digest::Digest;
use crate::sqlite::Db;
use crate::time::{from_nanos, to_nanos};

pub struct Held {
    db: Db,
}

/// One held blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldBlob {
    pub digest: Digest,
    pub size: u64,
    pub stored: SystemTime,
}

/// A row of the table, as stored.
type Row = (String, i64, i64);

fn blob_of((d, size, ns): Row) -> Option<HeldBlob> {
    // Rows are only ever written from parsed digests.
    Some(HeldBlob {
        digest: Digest::parse(&d).ok()?,
        size: u64::try_from(size).unwrap_or(0),
        stored: from_nanos(ns),
    })
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

impl Held {
    pub fn open(path: &Path) -> Result<Held> {
        let db = Db::open(
            path,
            "held blobs",
            "CREATE TABLE IF NOT EXISTS held (
                 digest TEXT PRIMARY KEY NOT NULL,
                 size INTEGER NOT NULL,
                 stored_ns INTEGER NOT NULL
             ) WITHOUT ROWID;",
        )?;
        Ok(Held { db })
    }

    pub fn get(&self, d: &Digest) -> Result<Option<HeldBlob>> {
        let rows = self.db.rows(
            "SELECT digest, size, stored_ns FROM held WHERE digest = ?1",
            params![d.to_string()],
            row,
        )?;
        Ok(rows.into_iter().next().and_then(blob_of))
    }

    pub fn insert(&self, b: &HeldBlob) -> Result<()> {
        self.db.execute(
            "insert",
            "INSERT OR REPLACE INTO held (digest, size, stored_ns) VALUES (?1, ?2, ?3)",
            params![
                b.digest.to_string(),
                i64::try_from(b.size).unwrap_or(i64::MAX),
                to_nanos(b.stored)
            ],
        )?;
        Ok(())
    }

    /// Whether a row was there.
    pub fn remove(&self, d: &Digest) -> Result<bool> {
        let n = self.db.execute(
            "remove",
            "DELETE FROM held WHERE digest = ?1",
            params![d.to_string()],
        )?;
        Ok(n > 0)
    }

    pub fn all(&self) -> Result<Vec<HeldBlob>> {
        let rows = self
            .db
            .rows("SELECT digest, size, stored_ns FROM held", [], row)?;
        Ok(rows.into_iter().filter_map(blob_of).collect())
    }
}
