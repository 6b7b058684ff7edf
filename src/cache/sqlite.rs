//! The SQLite response cache: one file (default
//! `~/.cache/redraft/responses.db`), WAL journal, shared by every process
//! on the machine. Marked as redraft's by its `application_id`, so a file
//! that is someone else's database is refused, never written to.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{CacheError, CacheStats, CacheStore, FileStamp};

/// `PRAGMA application_id` of a response cache ("rdrc").
const APPLICATION_ID: i32 = 0x7264_7263;

/// How long a statement waits for another process's write lock before the
/// cache gives up on it (a miss, or a reply not stored).
const BUSY: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    value TEXT NOT NULL,
    size INTEGER NOT NULL,
    created INTEGER NOT NULL,
    used INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_used ON responses (used);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
";

pub struct SqliteCache {
    /// Writes (and what reads must see them at once: stats, pruning).
    conn: Mutex<Connection>,
    /// Lookups: a WAL reader never waits for a writer, so a lookup never
    /// queues behind a write of this process or another.
    reader: Mutex<Connection>,
    path: PathBuf,
}

impl SqliteCache {
    /// Opens (or creates, with its directory) the cache file at `path`.
    pub fn open(path: &Path) -> Result<SqliteCache, CacheError> {
        use rusqlite::OpenFlags as F;
        let location = path.display().to_string();
        let db = |e: rusqlite::Error| db_error(&location, e);
        if let Some(message) = crate::sqlite::not_a_file(path, "responses.db") {
            return Err(CacheError::Db { location, message });
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| CacheError::Db {
                location: location.clone(),
                message: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        let mut conn = Connection::open_with_flags(
            path,
            F::SQLITE_OPEN_READ_WRITE | F::SQLITE_OPEN_CREATE | F::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db)?;
        conn.busy_timeout(BUSY).map_err(db)?;
        let (app, tables) = shape(&conn).map_err(db)?;
        if tables > 0 && app != APPLICATION_ID {
            return Err(CacheError::Foreign { location });
        }
        if tables == 0 {
            // Only before the first table: lets pruning give space back.
            conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")
                .map_err(db)?;
        }
        crate::sqlite::wal(&conn, std::time::Instant::now() + BUSY).map_err(db)?;
        conn.execute_batch("PRAGMA synchronous = NORMAL")
            .map_err(db)?;
        if tables == 0 {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db)?;
            // Another process may have created it meanwhile.
            let (app, tables) = shape(&tx).map_err(db)?;
            if tables > 0 && app != APPLICATION_ID {
                return Err(CacheError::Foreign { location });
            }
            tx.execute_batch(SCHEMA).map_err(db)?;
            tx.execute_batch(&format!("PRAGMA application_id = {APPLICATION_ID}"))
                .map_err(db)?;
            tx.commit().map_err(db)?;
        }
        let reader =
            Connection::open_with_flags(path, F::SQLITE_OPEN_READ_WRITE | F::SQLITE_OPEN_NO_MUTEX)
                .map_err(db)?;
        reader.busy_timeout(BUSY).map_err(db)?;
        reader.pragma_update(None, "query_only", true).map_err(db)?;
        Ok(SqliteCache {
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
            path: path.to_path_buf(),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, CacheError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut conn).map_err(|e| db_error(&self.path.display().to_string(), e))
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, CacheError> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        f(&conn).map_err(|e| db_error(&self.path.display().to_string(), e))
    }
}

/// The file's `application_id` and how many tables it has. Tables are
/// counted first: the id is set in the transaction that makes them, so a
/// count that sees them is followed by a read that sees the id.
fn shape(conn: &Connection) -> rusqlite::Result<(i32, i64)> {
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
        [],
        |r| r.get(0),
    )?;
    let app: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    Ok((app, tables))
}

fn db_error(location: &str, e: rusqlite::Error) -> CacheError {
    use rusqlite::ErrorCode as C;
    let location = location.to_string();
    match e.sqlite_error_code() {
        Some(C::NotADatabase) => CacheError::Damaged {
            location,
            message: "the file is not a SQLite database (`redraft cache clear` starts a new one)"
                .into(),
        },
        Some(C::DatabaseCorrupt) => CacheError::Damaged {
            location,
            message: format!("{e} (`redraft cache clear` starts a new one)"),
        },
        _ => CacheError::Db {
            location,
            message: e.to_string(),
        },
    }
}

impl Drop for SqliteCache {
    /// Folds the write-ahead log back into the file.
    fn drop(&mut self) {
        let conn = self.conn.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = conn.busy_timeout(Duration::from_millis(200));
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
}

impl CacheStore for SqliteCache {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn get(&self, key: &str) -> Result<Option<String>, CacheError> {
        self.read(|c| {
            c.prepare_cached("SELECT value FROM responses WHERE key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()
        })
    }

    fn put(&self, key: &str, model: &str, value: &str, now: i64) -> Result<(), CacheError> {
        self.with(|c| {
            c.prepare_cached(
                "INSERT INTO responses (key, model, value, size, created, used)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT (key) DO UPDATE SET
                   model = excluded.model, value = excluded.value,
                   size = excluded.size, used = excluded.used",
            )?
            .execute(params![key, model, value, value.len() as i64, now])
            .map(drop)
        })
    }

    fn touch(&self, keys: &[String], now: i64) -> Result<(), CacheError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut set = tx.prepare_cached("UPDATE responses SET used = ?1 WHERE key = ?2")?;
                for k in keys {
                    set.execute(params![now, k])?;
                }
            }
            tx.commit()
        })
    }

    fn remove(&self, key: &str) -> Result<(), CacheError> {
        self.with(|c| {
            c.execute("DELETE FROM responses WHERE key = ?1", [key])
                .map(drop)
        })
    }

    fn stats(&self) -> Result<CacheStats, CacheError> {
        self.with(|c| {
            let (entries, value_bytes): (i64, i64) = c.query_row(
                "SELECT count(*), COALESCE(SUM(size), 0) FROM responses",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let page: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let models = c
                .prepare("SELECT model, count(*) FROM responses GROUP BY model ORDER BY 2 DESC")?
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(CacheStats {
                location: self.location(),
                entries: entries as u64,
                value_bytes: value_bytes as u64,
                disk_bytes: Some((pages * page) as u64),
                models,
            })
        })
    }

    fn value_bytes(&self) -> Result<u64, CacheError> {
        self.with(|c| {
            c.query_row("SELECT COALESCE(SUM(size), 0) FROM responses", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .map(|b| b as u64)
    }

    fn clear(&self) -> Result<u64, CacheError> {
        self.with(|c| {
            let n = c.execute("DELETE FROM responses", [])?;
            c.execute_batch("PRAGMA incremental_vacuum")?;
            Ok(n as u64)
        })
    }

    fn prune(&self, max_bytes: u64) -> Result<u64, CacheError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let total: i64 =
                tx.query_row("SELECT COALESCE(SUM(size), 0) FROM responses", [], |r| {
                    r.get(0)
                })?;
            let mut over = total - max_bytes as i64;
            let mut gone = Vec::new();
            if over > 0 {
                let mut oldest =
                    tx.prepare("SELECT key, size FROM responses ORDER BY used, created")?;
                let mut rows = oldest.query([])?;
                while over > 0 {
                    let Some(row) = rows.next()? else { break };
                    gone.push(row.get::<_, String>(0)?);
                    over -= row.get::<_, i64>(1)?;
                }
            }
            {
                let mut del = tx.prepare_cached("DELETE FROM responses WHERE key = ?1")?;
                for k in &gone {
                    del.execute([k])?;
                }
            }
            tx.commit()?;
            if !gone.is_empty() {
                c.execute_batch("PRAGMA incremental_vacuum")?;
            }
            Ok(gone.len() as u64)
        })
    }

    fn file_hash(&self, file: &FileStamp) -> Result<Option<String>, CacheError> {
        self.read(|c| {
            c.query_row(
                "SELECT sha256 FROM files WHERE path = ?1 AND size = ?2 AND mtime_ns = ?3",
                params![file.path, file.size as i64, file.mtime_ns],
                |r| r.get(0),
            )
            .optional()
        })
    }

    fn remember_file_hash(&self, file: &FileStamp, sha256: &str) -> Result<(), CacheError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO files (path, size, mtime_ns, sha256) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (path) DO UPDATE SET size = excluded.size,
                   mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256",
                params![file.path, file.size as i64, file.mtime_ns, sha256],
            )
            .map(drop)
        })
    }
}
