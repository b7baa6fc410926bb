//! What the store's SQLite tables share: a durable connection (WAL, full sync, so an answered
//! change survives a crash of the process or the machine) and reading whole tables.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, Params, Row};
use strata_common::{Error, Result};

/// An error of `table`'s `what` operation, with SQLite's as its source.
pub fn db_err(table: &'static str, what: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    move |e| Error::internal(format!("{table} {what}")).with_source(e)
}

/// One connection to a database file, shared behind a mutex.
pub struct Db {
    conn: Mutex<Connection>,
    table: &'static str,
}

impl Db {
    /// Opens `path` and runs `schema` (its `CREATE ... IF NOT EXISTS` statements); `table`
    /// names the data in errors.
    pub fn open(path: &Path, table: &'static str, schema: &str) -> Result<Db> {
        let conn = Connection::open(path).map_err(db_err(table, "open"))?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             PRAGMA busy_timeout=5000;
             {schema}"
        ))
        .map_err(db_err(table, "init"))?;
        Ok(Db {
            conn: Mutex::new(conn),
            table,
        })
    }

    pub fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written: keep serving.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn err(&self, what: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
        db_err(self.table, what)
    }

    /// Every row `sql` selects, through `map`.
    pub fn rows<T>(
        &self,
        sql: &str,
        params: impl Params,
        map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql).map_err(self.err("list"))?;
        let rows = stmt.query_map(params, map).map_err(self.err("list"))?;
        rows.collect::<rusqlite::Result<Vec<T>>>()
            .map_err(self.err("list"))
    }

    /// Runs one cached statement; returns the rows it changed.
    pub fn execute(&self, what: &'static str, sql: &str, params: impl Params) -> Result<usize> {
        self.conn()
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(params))
            .map_err(self.err(what))
    }
}
