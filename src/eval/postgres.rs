//! The PostgreSQL results store (feature `postgres`): the same tables as
//! SQLite's, shared by any number of workers on any number of machines.
//! Claims take rows with `FOR UPDATE SKIP LOCKED`, so two workers never
//! claim one unit and neither waits for the other.

use postgres::{Client, NoTls};

use super::store::{
    Counts, EvalListing, EvalRecord, SCHEMA_VERSION, SPENT, Store, StoreError, UNITS,
    UNITS_WITH_EVENTS, Unit, UnitRecord, WorkerId, corrupt, counts_from, encode, models_of, now_ms,
    resolve_id, schema, totals_from, unit_record,
};
use super::{ItemResult, Totals};

pub struct PgStore {
    client: Client,
    /// The URL without its password.
    location: String,
}

impl PgStore {
    pub fn connect(url: &str) -> Result<PgStore, StoreError> {
        let location = redact(url);
        let db = |e: postgres::Error| StoreError::Db {
            store: location.clone(),
            message: e.to_string(),
        };
        let mut client = Client::connect(url, NoTls).map_err(db)?;
        // Two workers creating the tables at once would race: one lock.
        let mut tx = client.transaction().map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock(7262652)", &[])
            .map_err(db)?;
        tx.batch_execute(&schema("BIGINT", "DOUBLE PRECISION"))
            .map_err(db)?;
        let found: Option<String> = tx
            .query_opt(
                "SELECT value FROM redraft_meta WHERE key = 'schema_version'",
                &[],
            )
            .map_err(db)?
            .map(|r| r.get(0));
        match found.map(|v| v.parse::<i64>()) {
            Some(Ok(v)) if v > SCHEMA_VERSION => {
                return Err(StoreError::Newer {
                    store: location,
                    found: v,
                });
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(corrupt(&location, format!("schema version: {e}"))),
            None => {
                tx.execute(
                    "INSERT INTO redraft_meta (key, value) VALUES ('schema_version', $1)",
                    &[&SCHEMA_VERSION.to_string()],
                )
                .map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        Ok(PgStore { client, location })
    }

    fn db(&self, e: postgres::Error) -> StoreError {
        StoreError::Db {
            store: self.location.clone(),
            message: e.to_string(),
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((creds, host)) => match creds.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl Store for PgStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn open_eval(&mut self, eval: &EvalRecord) -> Result<EvalRecord, StoreError> {
        let meta = eval.meta.to_string();
        self.client
            .execute(
                "INSERT INTO evals (id, name, workflow, created_at, meta) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                &[&eval.id, &eval.name, &eval.workflow, &eval.created_at, &meta],
            )
            .map_err(|e| self.db(e))?;
        self.eval(&eval.id)
    }

    fn add_units(&mut self, eval: &str, units: &[Unit]) -> Result<usize, StoreError> {
        let location = self.location.clone();
        let db = |e: postgres::Error| StoreError::Db {
            store: location.clone(),
            message: e.to_string(),
        };
        let mut tx = self.client.transaction().map_err(db)?;
        // One writer of `seq` per eval at a time.
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&eval])
            .map_err(db)?;
        let base: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM units WHERE eval_id = $1",
                &[&eval],
            )
            .map_err(db)?
            .get(0);
        let stmt = tx
            .prepare("INSERT INTO units (eval_id, item_id, epoch, seq, item) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING")
            .map_err(db)?;
        let mut added = 0;
        for (i, u) in units.iter().enumerate() {
            let item = serde_json::to_string(&u.item).map_err(|e| corrupt(&location, e))?;
            added += tx
                .execute(
                    &stmt,
                    &[
                        &eval,
                        &u.item.id,
                        &(u.epoch as i64),
                        &(base + i as i64),
                        &item,
                    ],
                )
                .map_err(db)? as usize;
        }
        tx.commit().map_err(db)?;
        Ok(added)
    }

    fn reset_failed(&mut self, eval: &str) -> Result<usize, StoreError> {
        let n = self
            .client
            .execute(
                "UPDATE units SET status = 'pending', worker = NULL, result = NULL, score = NULL, passed = NULL WHERE eval_id = $1 AND status = 'failed'",
                &[&eval],
            )
            .map_err(|e| self.db(e))?;
        Ok(n as usize)
    }

    fn release_dead(&mut self, eval: &str, me: &WorkerId) -> Result<usize, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT DISTINCT worker FROM units WHERE eval_id = $1 AND status = 'claimed' AND worker IS NOT NULL",
                &[&eval],
            )
            .map_err(|e| self.db(e))?;
        let mut n = 0;
        for row in rows {
            let w: String = row.get(0);
            if WorkerId::parse(&w).is_some_and(|w| w != *me && w.is_dead_here()) {
                n += self
                    .client
                    .execute(
                        "UPDATE units SET status = 'pending', worker = NULL, lease_until = NULL WHERE eval_id = $1 AND status = 'claimed' AND worker = $2",
                        &[&eval, &w],
                    )
                    .map_err(|e| self.db(e))? as usize;
            }
        }
        Ok(n)
    }

    fn claim(
        &mut self,
        eval: &str,
        worker: &WorkerId,
        n: usize,
        lease_ms: i64,
    ) -> Result<Vec<Unit>, StoreError> {
        let now = now_ms();
        let mut rows = Vec::with_capacity(n);
        // Pending units first, then expired claims (see the SQLite store).
        for status in ["pending", "claimed"] {
            let want = (n - rows.len()) as i64;
            if want == 0 {
                break;
            }
            let got = self
                .client
                .query(
                    "UPDATE units u SET status = 'claimed', worker = $1, lease_until = $2, attempts = u.attempts + 1
                     FROM (SELECT eval_id, item_id, epoch FROM units
                           WHERE eval_id = $3 AND status = $6 AND ($6 = 'pending' OR lease_until < $4)
                           ORDER BY seq LIMIT $5 FOR UPDATE SKIP LOCKED) c
                     WHERE u.eval_id = c.eval_id AND u.item_id = c.item_id AND u.epoch = c.epoch
                     RETURNING u.item, u.epoch, u.seq",
                    &[&worker.to_string(), &(now + lease_ms), &eval, &now, &want, &status],
                )
                .map_err(|e| self.db(e))?;
            rows.extend(got);
        }
        let mut units: Vec<(i64, Unit)> = rows
            .into_iter()
            .map(|r| {
                let item: String = r.get(0);
                Ok((
                    r.get::<_, i64>(2),
                    Unit {
                        item: serde_json::from_str(&item)
                            .map_err(|e| corrupt(&self.location, e))?,
                        epoch: r.get::<_, i64>(1) as u32,
                    },
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        units.sort_by_key(|(seq, _)| *seq);
        Ok(units.into_iter().map(|(_, u)| u).collect())
    }

    fn renew(&mut self, eval: &str, worker: &WorkerId, lease_ms: i64) -> Result<(), StoreError> {
        self.client
            .execute(
                "UPDATE units SET lease_until = $1 WHERE eval_id = $2 AND worker = $3 AND status = 'claimed'",
                &[&(now_ms() + lease_ms), &eval, &worker.to_string()],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    fn finish(&mut self, eval: &str, results: &[ItemResult]) -> Result<(), StoreError> {
        let location = self.location.clone();
        let db = |e: postgres::Error| StoreError::Db {
            store: location.clone(),
            message: e.to_string(),
        };
        let mut tx = self.client.transaction().map_err(db)?;
        let stmt = tx
            .prepare(
                "UPDATE units SET status = $1, worker = NULL, lease_until = NULL, score = $2, passed = $3, result = $4, finished_at = $5,
                     tokens = $9, calls = $10, cost_usd = $11, summary = $12, events = $13
                 WHERE eval_id = $6 AND item_id = $7 AND epoch = $8 AND status <> 'done'",
            )
            .map_err(db)?;
        for r in results {
            let (json, summary, events) = encode(&location, r)?;
            tx.execute(
                &stmt,
                &[
                    &r.status.as_str(),
                    &r.score.as_ref().map(|s| s.score),
                    &r.score.as_ref().map(|s| s.passed as i64),
                    &json,
                    &r.finished_at,
                    &eval,
                    &r.item_id,
                    &(r.epoch as i64),
                    &(r.tokens as i64),
                    &(r.calls as i64),
                    &r.cost_usd,
                    &summary,
                    &events,
                ],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    fn release(
        &mut self,
        eval: &str,
        worker: &WorkerId,
        units: &[(String, u32)],
    ) -> Result<(), StoreError> {
        let w = worker.to_string();
        for (id, epoch) in units {
            self.client
                .execute(
                    "UPDATE units SET status = 'pending', worker = NULL, lease_until = NULL
                     WHERE eval_id = $1 AND item_id = $2 AND epoch = $3 AND worker = $4 AND status = 'claimed'",
                    &[&eval, id, &(*epoch as i64), &w],
                )
                .map_err(|e| self.db(e))?;
        }
        Ok(())
    }

    fn counts(&mut self, eval: &str) -> Result<Counts, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT status, COUNT(*) FROM units WHERE eval_id = $1 GROUP BY status",
                &[&eval],
            )
            .map_err(|e| self.db(e))?;
        Ok(counts_from(
            rows.into_iter().map(|r| (r.get(0), r.get(1))).collect(),
        ))
    }

    fn spent(&mut self, eval: &str) -> Result<Totals, StoreError> {
        let r = self
            .client
            .query_one(SPENT, &[&eval])
            .map_err(|e| self.db(e))?;
        Ok(totals_from(
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
        ))
    }

    fn evals(&mut self) -> Result<Vec<EvalListing>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT e.id, e.name, e.workflow, e.created_at, e.meta,
                        COUNT(u.item_id),
                        COALESCE(SUM(CASE WHEN u.status = 'done' THEN 1 ELSE 0 END), 0)::BIGINT,
                        COALESCE(SUM(CASE WHEN u.status = 'failed' THEN 1 ELSE 0 END), 0)::BIGINT,
                        AVG(CASE WHEN u.status = 'done' THEN u.score END)
                 FROM evals e LEFT JOIN units u ON u.eval_id = e.id
                 GROUP BY e.id ORDER BY e.created_at",
                &[],
            )
            .map_err(|e| self.db(e))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let meta: String = r.get(4);
                EvalListing {
                    id: r.get(0),
                    name: r.get(1),
                    workflow: r.get(2),
                    created_at: r.get(3),
                    models: models_of(&serde_json::from_str(&meta).unwrap_or_default()),
                    units: r.get(5),
                    done: r.get(6),
                    failed: r.get(7),
                    mean_score: r.get(8),
                }
            })
            .collect())
    }

    fn eval(&mut self, id: &str) -> Result<EvalRecord, StoreError> {
        let ids = self
            .client
            .query("SELECT id, name FROM evals", &[])
            .map_err(|e| self.db(e))?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let id = resolve_id(&self.location, id, ids)?;
        let r = self
            .client
            .query_one(
                "SELECT id, name, workflow, created_at, meta FROM evals WHERE id = $1",
                &[&id],
            )
            .map_err(|e| self.db(e))?;
        let meta: String = r.get(4);
        Ok(EvalRecord {
            id: r.get(0),
            name: r.get(1),
            workflow: r.get(2),
            created_at: r.get(3),
            meta: serde_json::from_str(&meta).map_err(|e| corrupt(&self.location, e))?,
        })
    }

    fn append_record(
        &mut self,
        kind: &str,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        let location = self.location.clone();
        let db = |e: postgres::Error| StoreError::Db {
            store: location.clone(),
            message: e.to_string(),
        };
        let mut tx = self.client.transaction().map_err(db)?;
        // One writer of a journal's `seq` at a time.
        let lock = format!("{kind}\u{1f}{key}");
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock])
            .map_err(db)?;
        let seq: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM records WHERE kind = $1 AND key = $2",
                &[&kind, &key],
            )
            .map_err(db)?
            .get(0);
        tx.execute(
            "INSERT INTO records (kind, key, seq, created_at, value) VALUES ($1, $2, $3, $4, $5)",
            &[&kind, &key, &seq, &now_ms(), &value.to_string()],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(seq)
    }

    fn records(&mut self, kind: &str, key: &str) -> Result<Vec<serde_json::Value>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT value FROM records WHERE kind = $1 AND key = $2 ORDER BY seq",
                &[&kind, &key],
            )
            .map_err(|e| self.db(e))?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(r.get::<_, &str>(0)).map_err(|e| corrupt(&self.location, e))
            })
            .collect()
    }

    fn record_keys(&mut self, kind: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .client
            .query(
                "SELECT DISTINCT key FROM records WHERE kind = $1 ORDER BY key",
                &[&kind],
            )
            .map_err(|e| self.db(e))?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn units(&mut self, eval: &str, full: bool) -> Result<Vec<UnitRecord>, StoreError> {
        let rows = self
            .client
            .query(if full { UNITS_WITH_EVENTS } else { UNITS }, &[&eval])
            .map_err(|e| self.db(e))?;
        rows.into_iter()
            .map(|r| {
                let item: String = r.get(0);
                let result: Option<String> = r.get(3);
                let summary: Option<String> = r.get(4);
                let events: Option<String> = r.get(5);
                unit_record(
                    &self.location,
                    &item,
                    r.get(1),
                    r.get(2),
                    result.as_deref(),
                    summary.as_deref(),
                    events.as_deref(),
                )
            })
            .collect()
    }
}
