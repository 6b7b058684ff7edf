//! The SQLite store: one file (WAL journal while open, folded back at exit),
//! the default. See the module above for the invariants every store keeps.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{
    ARCHIVED_SUFFIX, Access, Counts, EvalListing, EvalRecord, Identity, SCHEMA_VERSION, SPENT,
    Store, StoreError, StoreOptions, UNIT_WITH_EVENTS, UNITS, UNITS_WITH_EVENTS, Unit, UnitRecord,
    WorkerId, archived_id, corrupt, counts_from, encode, models_of, now_ms, resolve_id, schema,
    shard_filter, shard_hash, shard_params, totals_from, unit_record,
};
use crate::eval::{ItemResult, Totals};

pub struct SqliteStore {
    conn: rusqlite::Connection,
    path: String,
    writable: bool,
    /// How long a statement waits for another process's lock.
    busy: Duration,
}

/// What a SQLite error means for the store: a file that is not a
/// database or is damaged is [`StoreError::Damaged`]; a lock held past
/// the busy timeout is [`StoreError::Timeout`].
fn sqlite_error(store: &str, e: rusqlite::Error, busy: Duration) -> StoreError {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::DatabaseCorrupt) => StoreError::Damaged {
            store: store.to_string(),
            message: e.to_string(),
        },
        Some(C::NotADatabase) => StoreError::Damaged {
            store: store.to_string(),
            message: "the file is not a SQLite database".into(),
        },
        Some(C::DatabaseBusy | C::DatabaseLocked) => StoreError::Timeout {
            store: store.to_string(),
            what: "another process holds the database's lock",
            after: busy,
        },
        _ => StoreError::Db {
            store: store.to_string(),
            message: e.to_string(),
        },
    }
}

/// Reads a SQLite store's identity without writing anything.
fn sqlite_identity(conn: &rusqlite::Connection) -> rusqlite::Result<Identity> {
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if !tables.iter().any(|t| t == "redraft_meta") {
        return Ok(Identity::of(tables, None));
    }
    // The bookkeeping table's own pages and index are sound (a cheap check:
    // the table is a few rows).
    let check: String = conn.query_row("PRAGMA quick_check(redraft_meta)", [], |r| r.get(0))?;
    if check != "ok" {
        return Ok(Identity::Damaged(check));
    }
    let versions: Vec<String> = conn
        .prepare("SELECT CAST(value AS TEXT) FROM redraft_meta WHERE key = 'schema_version'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(Identity::of(tables, Some(versions)))
}

impl SqliteStore {
    /// Opens (or creates) a store for reading and writing.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, &StoreOptions::default())
    }

    pub fn open_with(path: &Path, opts: &StoreOptions) -> Result<SqliteStore, StoreError> {
        use rusqlite::OpenFlags as F;
        let name = path.display().to_string();
        let busy = opts.statement_timeout;
        let db = |e: rusqlite::Error| sqlite_error(&name, e, busy);
        let writable = opts.access == Access::ReadWrite;
        if let Some(message) = crate::sqlite::not_a_file(path, "results.db") {
            return Err(StoreError::Db {
                store: name,
                message,
            });
        }
        if !writable && !path.is_file() {
            return Err(StoreError::Missing { store: name });
        }
        if writable {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Db {
                    store: name.clone(),
                    message: format!("cannot create {}: {e}", dir.display()),
                })?;
            }
        }
        let mut conn = if writable {
            rusqlite::Connection::open_with_flags(
                path,
                F::SQLITE_OPEN_READ_WRITE | F::SQLITE_OPEN_CREATE | F::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(db)?
        } else {
            // Read-only commands never write (`query_only`), but open the
            // file for writing where they may: then the last connection to
            // close removes the `-wal` and `-shm` files SQLite makes beside a
            // WAL database, where a read-only connection would leave them.
            // A file they may not write is read read-only.
            let conn = rusqlite::Connection::open_with_flags(
                path,
                F::SQLITE_OPEN_READ_WRITE | F::SQLITE_OPEN_NO_MUTEX,
            )
            .or_else(|_| {
                rusqlite::Connection::open_with_flags(
                    path,
                    F::SQLITE_OPEN_READ_ONLY | F::SQLITE_OPEN_NO_MUTEX,
                )
            })
            .map_err(db)?;
            conn.pragma_update(None, "query_only", true).map_err(db)?;
            conn
        };
        conn.busy_timeout(busy).map_err(db)?;
        // Identity first, reading only: nothing is written to a file that
        // is someone else's, damaged, or newer.
        let identity = sqlite_identity(&conn).map_err(db)?;
        if let Some(refused) = identity.refusal(&name) {
            return Err(refused);
        }
        if !writable {
            return match identity {
                Identity::Empty => Err(StoreError::Missing { store: name }),
                _ => Ok(SqliteStore {
                    conn,
                    path: name,
                    writable,
                    busy,
                }),
            };
        }
        // WAL with synchronous=NORMAL: a committed transaction survives the
        // process being killed (not a power cut), at a fraction of FULL's cost.
        crate::sqlite::wal(&conn, std::time::Instant::now() + busy).map_err(db)?;
        conn.execute_batch("PRAGMA synchronous=NORMAL")
            .map_err(db)?;
        // Create or upgrade in one transaction that holds the write lock,
        // looking again inside it: another process may have been first.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let identity = sqlite_identity(&tx).map_err(db)?;
        if let Some(refused) = identity.refusal(&name) {
            return Err(refused);
        }
        match identity {
            Identity::Empty => {
                tx.execute_batch(&schema("INTEGER", "REAL")).map_err(db)?;
                tx.execute(
                    "INSERT INTO redraft_meta (key, value) VALUES ('schema_version', ?1)",
                    [SCHEMA_VERSION.to_string()],
                )
                .map_err(db)?;
            }
            Identity::Ours(v) if v < SCHEMA_VERSION => sqlite_upgrade(&tx, v).map_err(db)?,
            _ => {}
        }
        tx.commit().map_err(db)?;
        Ok(SqliteStore {
            conn,
            path: name,
            writable,
            busy,
        })
    }

    fn with_tx<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| sqlite_error(&self.path, e, self.busy))?;
        let out = f(&tx).map_err(|e| sqlite_error(&self.path, e, self.busy))?;
        tx.commit()
            .map_err(|e| sqlite_error(&self.path, e, self.busy))?;
        Ok(out)
    }
}

/// Upgrades a store of an older schema version in the caller's transaction.
fn sqlite_upgrade(tx: &rusqlite::Transaction, from: i64) -> rusqlite::Result<()> {
    if from < 2 {
        tx.execute_batch("ALTER TABLE units ADD COLUMN shard_hash INTEGER")?;
        let ids: Vec<(i64, String)> = tx
            .prepare("SELECT rowid, item_id FROM units")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut set = tx.prepare("UPDATE units SET shard_hash = ?1 WHERE rowid = ?2")?;
        for (rowid, id) in ids {
            set.execute(rusqlite::params![shard_hash(&id), rowid])?;
        }
    }
    tx.execute(
        "UPDATE redraft_meta SET value = ?1 WHERE key = 'schema_version'",
        [SCHEMA_VERSION.to_string()],
    )?;
    Ok(())
}

impl Drop for SqliteStore {
    /// On a clean close the write-ahead log is folded into the database and
    /// truncated, so no `-wal` file twice the database's size is left
    /// beside it (with other processes still reading, as much as they allow).
    fn drop(&mut self) {
        if self.writable {
            let _ = self.conn.busy_timeout(Duration::from_millis(200));
            let _ = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
    }
}

impl Store for SqliteStore {
    fn location(&self) -> String {
        self.path.clone()
    }

    fn open_eval(&mut self, eval: &EvalRecord) -> Result<EvalRecord, StoreError> {
        let meta = eval.meta.to_string();
        self.with_tx(|tx| {
            tx.execute(
                "INSERT OR IGNORE INTO evals (id, name, workflow, created_at, meta) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![eval.id, eval.name, eval.workflow, eval.created_at, meta],
            )?;
            Ok(())
        })?;
        self.eval(&eval.id)
    }

    fn add_units(&mut self, eval: &str, units: &[Unit]) -> Result<usize, StoreError> {
        let path = self.path.clone();
        self.with_tx(|tx| {
            let base: i64 = tx.query_row(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM units WHERE eval_id = ?1",
                [eval],
                |r| r.get(0),
            )?;
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO units (eval_id, item_id, epoch, seq, item, shard_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut added = 0;
            for (i, u) in units.iter().enumerate() {
                let item = serde_json::to_string(&u.item).map_err(|e| {
                    rusqlite::Error::ToSqlConversionFailure(Box::new(corrupt(&path, e)))
                })?;
                added += stmt.execute(rusqlite::params![
                    eval,
                    u.item.id,
                    u.epoch,
                    base + i as i64,
                    item,
                    shard_hash(&u.item.id)
                ])?;
            }
            Ok(added)
        })
    }

    fn archive_eval(&mut self, id: &str) -> Result<Option<String>, StoreError> {
        let to = archived_id(id, now_ms());
        self.with_tx(|tx| {
            let moved = tx.execute(
                "UPDATE evals SET id = ?2, name = name || ?3 WHERE id = ?1",
                rusqlite::params![id, to, ARCHIVED_SUFFIX],
            )?;
            if moved == 0 {
                return Ok(None);
            }
            tx.execute(
                "UPDATE units SET eval_id = ?2 WHERE eval_id = ?1",
                rusqlite::params![id, to],
            )?;
            Ok(Some(to.clone()))
        })
    }

    fn reset_failed(&mut self, eval: &str) -> Result<usize, StoreError> {
        self.with_tx(|tx| {
            tx.execute(
                "UPDATE units SET status = 'pending', worker = NULL, result = NULL, score = NULL, passed = NULL WHERE eval_id = ?1 AND status = 'failed'",
                [eval],
            )
        })
    }

    fn release_dead(&mut self, eval: &str, me: &WorkerId) -> Result<usize, StoreError> {
        let workers: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare("SELECT DISTINCT worker FROM units WHERE eval_id = ?1 AND status = 'claimed' AND worker IS NOT NULL")
                .map_err(|e| sqlite_error(&self.path, e, self.busy))?;
            let rows = stmt
                .query_map([eval], |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
            rows.map_err(|e| sqlite_error(&self.path, e, self.busy))?
        };
        let dead: Vec<String> = workers
            .into_iter()
            .filter(|w| WorkerId::parse(w).is_some_and(|w| w != *me && w.is_dead_here()))
            .collect();
        self.with_tx(|tx| {
            let mut n = 0;
            for w in &dead {
                n += tx.execute(
                    "UPDATE units SET status = 'pending', worker = NULL, lease_until = NULL WHERE eval_id = ?1 AND status = 'claimed' AND worker = ?2",
                    rusqlite::params![eval, w],
                )?;
            }
            Ok(n)
        })
    }

    fn claim(
        &mut self,
        eval: &str,
        worker: &WorkerId,
        n: usize,
        lease_ms: i64,
        shard: Option<(u32, u32)>,
    ) -> Result<Vec<Unit>, StoreError> {
        let now = now_ms();
        let worker = worker.to_string();
        let path = self.path.clone();
        let (k, count, c) = shard_params(shard);
        let rows: Vec<(String, i64)> = self.with_tx(|tx| {
            // Pending units first (the index's order), then expired claims:
            // one `OR` would make SQLite scan the eval's units on every claim.
            let mut rows = Vec::with_capacity(n);
            for expired in [false, true] {
                let want = (n - rows.len()) as i64;
                if want == 0 {
                    break;
                }
                let until = now + lease_ms;
                let row = |r: &rusqlite::Row| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?));
                let sql = claim_sqlite(expired);
                let got = tx
                    .prepare_cached(&sql)?
                    .query_map(
                        rusqlite::params![worker, until, eval, now, want, k, count, c],
                        row,
                    )?
                    .collect::<Result<Vec<_>, _>>()?;
                rows.extend(got);
            }
            Ok(rows)
        })?;
        rows.into_iter()
            .map(|(item, epoch)| {
                Ok(Unit {
                    item: serde_json::from_str(&item).map_err(|e| corrupt(&path, e))?,
                    epoch: epoch as u32,
                })
            })
            .collect()
    }

    fn renew(&mut self, eval: &str, worker: &WorkerId, lease_ms: i64) -> Result<(), StoreError> {
        let w = worker.to_string();
        self.with_tx(|tx| {
            tx.execute(
                "UPDATE units SET lease_until = ?1 WHERE eval_id = ?2 AND worker = ?3 AND status = 'claimed'",
                rusqlite::params![now_ms() + lease_ms, eval, w],
            )
        })?;
        Ok(())
    }

    fn finish(&mut self, eval: &str, results: &[ItemResult]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let encoded: Vec<(String, String, String)> = results
            .iter()
            .map(|r| encode(&path, r))
            .collect::<Result<_, _>>()?;
        self.with_tx(|tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE units SET status = ?1, worker = NULL, lease_until = NULL, score = ?2, passed = ?3, result = ?4, finished_at = ?5,
                     tokens = ?9, calls = ?10, cost_usd = ?11, summary = ?12, events = ?13
                 WHERE eval_id = ?6 AND item_id = ?7 AND epoch = ?8 AND status <> 'done'",
            )?;
            for (r, (json, summary, events)) in results.iter().zip(&encoded) {
                stmt.execute(rusqlite::params![
                    r.status.as_str(),
                    r.score.as_ref().map(|s| s.score),
                    r.score.as_ref().map(|s| s.passed as i64),
                    json,
                    r.finished_at,
                    eval,
                    r.item_id,
                    r.epoch,
                    r.tokens as i64,
                    r.calls as i64,
                    r.cost_usd,
                    summary,
                    events
                ])?;
            }
            Ok(())
        })
    }

    fn release(
        &mut self,
        eval: &str,
        worker: &WorkerId,
        units: &[(String, u32)],
    ) -> Result<(), StoreError> {
        let w = worker.to_string();
        self.with_tx(|tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE units SET status = 'pending', worker = NULL, lease_until = NULL
                 WHERE eval_id = ?1 AND item_id = ?2 AND epoch = ?3 AND worker = ?4 AND status = 'claimed'",
            )?;
            for (id, epoch) in units {
                stmt.execute(rusqlite::params![eval, id, epoch, w])?;
            }
            Ok(())
        })
    }

    fn counts(&mut self, eval: &str) -> Result<Counts, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT status, COUNT(*) FROM units WHERE eval_id = ?1 GROUP BY status")
            .map_err(|e| sqlite_error(&self.path, e, self.busy))?;
        let rows = stmt
            .query_map([eval], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| sqlite_error(&self.path, e, self.busy))?;
        Ok(counts_from(rows))
    }

    fn spent(&mut self, eval: &str) -> Result<Totals, StoreError> {
        self.conn
            .query_row(SPENT, [eval], |r| {
                Ok(totals_from(
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                ))
            })
            .map_err(|e| sqlite_error(&self.path, e, self.busy))
    }

    fn evals(&mut self) -> Result<Vec<EvalListing>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT e.id, e.name, e.workflow, e.created_at, e.meta,
                        COUNT(u.item_id),
                        COALESCE(SUM(CASE WHEN u.status = 'done' THEN 1 ELSE 0 END), 0),
                        COALESCE(SUM(CASE WHEN u.status = 'failed' THEN 1 ELSE 0 END), 0),
                        AVG(CASE WHEN u.status = 'done' THEN u.score END)
                 FROM evals e LEFT JOIN units u ON u.eval_id = e.id
                 GROUP BY e.id ORDER BY e.created_at",
            )
            .map_err(|e| sqlite_error(&self.path, e, self.busy))?;
        let rows = stmt
            .query_map([], |r| {
                let meta: String = r.get(4)?;
                Ok(EvalListing {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    workflow: r.get(2)?,
                    created_at: r.get(3)?,
                    models: models_of(&serde_json::from_str(&meta).unwrap_or(Value::Null)),
                    units: r.get(5)?,
                    done: r.get(6)?,
                    failed: r.get(7)?,
                    mean_score: r.get(8)?,
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| sqlite_error(&self.path, e, self.busy))?;
        Ok(rows)
    }

    fn eval(&mut self, id: &str) -> Result<EvalRecord, StoreError> {
        let ids: Vec<(String, String)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id, name FROM evals")
                .map_err(|e| sqlite_error(&self.path, e, self.busy))?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| sqlite_error(&self.path, e, self.busy))?
        };
        let id = resolve_id(&self.path, id, ids)?;
        let (id, name, workflow, created_at, meta) = self
            .conn
            .query_row(
                "SELECT id, name, workflow, created_at, meta FROM evals WHERE id = ?1",
                [&id],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get::<_, String>(4)?,
                    ))
                },
            )
            .map_err(|e| sqlite_error(&self.path, e, self.busy))?;
        Ok(EvalRecord {
            id,
            name,
            workflow,
            created_at,
            meta: serde_json::from_str(&meta).map_err(|e| corrupt(&self.path, e))?,
        })
    }

    fn append_record(&mut self, kind: &str, key: &str, value: &Value) -> Result<i64, StoreError> {
        let value = value.to_string();
        self.with_tx(|tx| {
            let seq: i64 = tx.query_row(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM records WHERE kind = ?1 AND key = ?2",
                [kind, key],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO records (kind, key, seq, created_at, value) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![kind, key, seq, now_ms(), value],
            )?;
            Ok(seq)
        })
    }

    fn records(&mut self, kind: &str, key: &str) -> Result<Vec<Value>, StoreError> {
        let rows: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare("SELECT value FROM records WHERE kind = ?1 AND key = ?2 ORDER BY seq")
                .map_err(|e| sqlite_error(&self.path, e, self.busy))?;
            stmt.query_map([kind, key], |r| r.get(0))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| sqlite_error(&self.path, e, self.busy))?
        };
        rows.iter()
            .map(|v| serde_json::from_str(v).map_err(|e| corrupt(&self.path, e)))
            .collect()
    }

    fn record_keys(&mut self, kind: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT key FROM records WHERE kind = ?1 ORDER BY key")
            .map_err(|e| sqlite_error(&self.path, e, self.busy))?;
        stmt.query_map([kind], |r| r.get(0))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| sqlite_error(&self.path, e, self.busy))
    }

    fn units(&mut self, eval: &str, full: bool) -> Result<Vec<UnitRecord>, StoreError> {
        self.query_units(if full { UNITS_WITH_EVENTS } else { UNITS }, [eval])
    }

    fn unit(
        &mut self,
        eval: &str,
        item: &str,
        epoch: u32,
    ) -> Result<Option<UnitRecord>, StoreError> {
        let params = rusqlite::params![eval, item, i64::from(epoch)];
        Ok(self
            .query_units(UNIT_WITH_EVENTS, params)?
            .into_iter()
            .next())
    }
}

impl SqliteStore {
    /// Units as `UNITS`-shaped statements select them (item, epoch,
    /// status, result, summary, events).
    fn query_units(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<UnitRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(sql)
            .map_err(|e| sqlite_error(&self.path, e, self.busy))?;
        let rows = stmt
            .query_map(params, |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| sqlite_error(&self.path, e, self.busy))?;
        rows.into_iter()
            .map(|(item, epoch, status, result, summary, events)| {
                unit_record(
                    &self.path,
                    &item,
                    epoch,
                    status,
                    result.as_deref(),
                    summary.as_deref(),
                    events.as_deref(),
                )
            })
            .collect()
    }
}

/// Claims pending units, or (`expired`) units whose lease ended, of one
/// shard. Parameters: worker, lease end, eval, now, how many, then the
/// [`shard_params`].
fn claim_sqlite(expired: bool) -> String {
    let which = if expired {
        "status = 'claimed' AND lease_until < ?4"
    } else {
        "status = 'pending'"
    };
    format!(
        "UPDATE units SET status = 'claimed', worker = ?1, lease_until = ?2, attempts = attempts + 1
    WHERE rowid IN (SELECT rowid FROM units WHERE eval_id = ?3 AND {which} AND (?7 = 1 OR {})
                    ORDER BY seq LIMIT ?5)
    RETURNING item, epoch",
        shard_filter("?6", "?7", "?8")
    )
}
