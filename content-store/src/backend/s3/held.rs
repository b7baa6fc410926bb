//! The blobs this node holds, in SQLite beside the labels: what List reports and what the
//! node's reference markers in the bucket stand for. A row is added after the marker is
//! written and removed before the marker is, so a crash leaves at worst a marker without a
//! row, which the sweeper removes (see [`super::fleet`]).

use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, params};
use strata_common::{Error, Result};

use crate::digest::Digest;
use crate::time::{from_nanos, to_nanos};

pub struct Held {
    conn: Mutex<Connection>,
}

/// One held blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldBlob {
    pub digest: Digest,
    pub size: u64,
    pub stored: SystemTime,
}

fn db_err(what: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    move |e| Error::internal(format!("held blobs {what}")).with_source(e)
}

impl Held {
    pub fn open(path: &Path) -> Result<Held> {
        let conn = Connection::open(path).map_err(db_err("open"))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS held (
                 digest TEXT PRIMARY KEY NOT NULL,
                 size INTEGER NOT NULL,
                 stored_ns INTEGER NOT NULL
             ) WITHOUT ROWID;",
        )
        .map_err(db_err("init"))?;
        Ok(Held {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, d: &Digest) -> Result<Option<HeldBlob>> {
        let row = self
            .conn()
            .prepare_cached("SELECT size, stored_ns FROM held WHERE digest = ?1")
            .and_then(|mut s| {
                s.query_row(params![d.to_string()], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                })
                .optional()
            })
            .map_err(db_err("get"))?;
        Ok(row.map(|(size, ns)| HeldBlob {
            digest: d.clone(),
            size: u64::try_from(size).unwrap_or(0),
            stored: from_nanos(ns),
        }))
    }

    pub fn insert(&self, b: &HeldBlob) -> Result<()> {
        self.conn()
            .prepare_cached(
                "INSERT OR REPLACE INTO held (digest, size, stored_ns) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    b.digest.to_string(),
                    i64::try_from(b.size).unwrap_or(i64::MAX),
                    to_nanos(b.stored)
                ])
            })
            .map_err(db_err("insert"))?;
        Ok(())
    }

    /// Whether a row was there.
    pub fn remove(&self, d: &Digest) -> Result<bool> {
        let n = self
            .conn()
            .prepare_cached("DELETE FROM held WHERE digest = ?1")
            .and_then(|mut s| s.execute(params![d.to_string()]))
            .map_err(db_err("remove"))?;
        Ok(n > 0)
    }

    pub fn all(&self) -> Result<Vec<HeldBlob>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT digest, size, stored_ns FROM held")
            .map_err(db_err("list"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(db_err("list"))?;
        let mut out = Vec::new();
        for row in rows {
            let (d, size, ns) = row.map_err(db_err("list"))?;
            // Rows are only ever written from parsed digests.
            let Ok(digest) = Digest::parse(&d) else {
                continue;
            };
            out.push(HeldBlob {
                digest,
                size: u64::try_from(size).unwrap_or(0),
                stored: from_nanos(ns),
            });
        }
        Ok(out)
    }
}
