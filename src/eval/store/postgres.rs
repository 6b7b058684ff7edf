//! The PostgreSQL results store (feature `postgres`): the same tables as
//! SQLite's, shared by any number of workers on any number of machines.
//! Claims take rows with `FOR UPDATE SKIP LOCKED`, so two workers never
//! claim one unit and neither waits for the other.
//!
//! On `tokio-postgres` with a runtime of its own (the store's methods are
//! blocking, called from the eval's store thread), so that every step has
//! a deadline: connecting, handshake and authentication included, within
//! the connect timeout (a host that accepts the connection and never
//! answers must not hang an eval), and every statement within the
//! statement timeout. After a timeout the connection is closed (the server
//! rolls back what was open) and the store refuses further calls.
//!
//! The password: in the URL, else `PGPASSWORD`, else the password file
//! (`PGPASSFILE`, default `~/.pgpass`), as libpq reads them; the user, when
//! the URL has none, is `PGUSER`, else the login name. Messages and
//! [`Store::location`] never show it ([`crate::redact`]).

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::{
    ARCHIVED_SUFFIX, Access, Counts, EvalListing, EvalRecord, Identity, SCHEMA_VERSION, SPENT,
    Store, StoreError, StoreOptions, UNIT_WITH_EVENTS, UNITS, UNITS_WITH_EVENTS, Unit, UnitRecord,
    WorkerId, archived_id, corrupt, counts_from, encode, models_of, now_ms, resolve_id, schema,
    shard_filter, shard_hash, shard_params, totals_from, unit_record,
};
use crate::eval::{ItemResult, Totals};

pub struct PgStore {
    runtime: tokio::runtime::Runtime,
    client: Client,
    /// Drives the connection; aborted after a timeout.
    driver: tokio::task::JoinHandle<()>,
    /// The URL without its password.
    location: String,
    timeout: Duration,
    /// Set by a timeout: the connection is gone.
    broken: bool,
}

/// Why a step failed, before it becomes a [`StoreError`].
enum Fail {
    Pg(tokio_postgres::Error),
    Timeout(&'static str),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Fail {
        Fail::Pg(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

/// One statement under the statement timeout.
async fn timed<T>(
    limit: Duration,
    step: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, Fail> {
    match tokio::time::timeout(limit, step).await {
        Ok(r) => r.map_err(Fail::Pg),
        Err(_) => Err(Fail::Timeout("a statement")),
    }
}

/// A server error as the server said it: its text, SQLSTATE, detail and
/// hint; other errors with their causes (`db error` alone says nothing).
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(d) = db.detail() {
            s.push_str(&format!("; {d}"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!("; hint: {h}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

impl PgStore {
    pub fn connect(url: &str, opts: &StoreOptions) -> Result<PgStore, StoreError> {
        let location = crate::redact::url(url).into_owned();
        let db = |m: String| StoreError::Db {
            store: location.clone(),
            message: m,
        };
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| {
                db(format!("not a PostgreSQL URL: {}", describe(&e)))
            })?;
        complete_config(&mut config, |k| std::env::var(k).ok());
        let connect_timeout = opts
            .connect_timeout
            .or_else(|| config.get_connect_timeout().copied())
            .unwrap_or(super::DEFAULT_CONNECT_TIMEOUT);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| db(format!("cannot start the store's runtime: {e}")))?;
        let connected = runtime
            .block_on(async { tokio::time::timeout(connect_timeout, config.connect(NoTls)).await });
        let (client, connection) = match connected {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(db(format!("cannot connect: {}", describe(&e)))),
            Err(_) => {
                return Err(StoreError::Timeout {
                    store: location,
                    what: "connecting (TCP, handshake and authentication); set --store-connect-timeout or connect_timeout in the URL",
                    after: connect_timeout,
                });
            }
        };
        let driver = runtime.spawn(async move {
            let _ = connection.await;
        });
        let mut store = PgStore {
            runtime,
            client,
            driver,
            location,
            timeout: opts.statement_timeout,
            broken: false,
        };
        let access = opts.access;
        let location = store.location.clone();
        store.run(async |c: &mut Client, t| {
            // Identity first, reading only.
            let identity = pg_identity(c, t).await?;
            if let Some(refused) = identity.refusal(&location) {
                return Err(refused.into());
            }
            if access == Access::ReadOnly {
                return match identity {
                    Identity::Empty => Err(StoreError::Missing { store: location }.into()),
                    _ => Ok(()),
                };
            }
            // Two workers creating or upgrading at once would race: one lock,
            // and a second look inside it.
            let tx = timed(t, c.transaction()).await?;
            timed(t, tx.execute("SELECT pg_advisory_xact_lock(7262652)", &[])).await?;
            let identity = pg_identity(&tx, t).await?;
            if let Some(refused) = identity.refusal(&location) {
                return Err(refused.into());
            }
            match identity {
                Identity::Empty => {
                    timed(t, tx.batch_execute(&schema("BIGINT", "DOUBLE PRECISION"))).await?;
                    timed(
                        t,
                        tx.execute(
                            "INSERT INTO redraft_meta (key, value) VALUES ('schema_version', $1)",
                            &[&SCHEMA_VERSION.to_string()],
                        ),
                    )
                    .await?;
                }
                Identity::Ours(v) if v < SCHEMA_VERSION => pg_upgrade(&tx, v, t).await?,
                _ => {}
            }
            timed(t, tx.commit()).await?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Runs one step on the connection, every statement in it timed.
    fn run<T>(
        &mut self,
        step: impl AsyncFnOnce(&mut Client, Duration) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        if self.broken {
            return Err(StoreError::Db {
                store: self.location.clone(),
                message: "the connection was closed after an earlier timeout".into(),
            });
        }
        let limit = self.timeout;
        let out = self.runtime.block_on(step(&mut self.client, limit));
        out.map_err(|e| match e {
            Fail::Pg(e) => StoreError::Db {
                store: self.location.clone(),
                message: describe(&e),
            },
            Fail::Timeout(what) => {
                self.broken = true;
                self.driver.abort();
                StoreError::Timeout {
                    store: self.location.clone(),
                    what,
                    after: limit,
                }
            }
            Fail::Store(e) => e,
        })
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// What a database holds, for [`Identity`]. A PostgreSQL database is
/// usually shared: other tables beside redraft's are no reason to refuse
/// it, but one of redraft's table names without `redraft_meta` is someone
/// else's table.
async fn pg_identity(
    c: &impl tokio_postgres::GenericClient,
    t: Duration,
) -> Result<Identity, Fail> {
    let tables: Vec<String> = timed(
        t,
        c.query(
            "SELECT table_name::TEXT FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_name = ANY($1) ORDER BY 1",
            &[&super::TABLES.to_vec()],
        ),
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    let versions = if tables.iter().any(|t| t == "redraft_meta") {
        Some(
            timed(
                t,
                c.query(
                    "SELECT value FROM redraft_meta WHERE key = 'schema_version'",
                    &[],
                ),
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect(),
        )
    } else {
        None
    };
    Ok(Identity::of(tables, versions))
}

async fn pg_upgrade(
    tx: &tokio_postgres::Transaction<'_>,
    from: i64,
    t: Duration,
) -> Result<(), Fail> {
    if from < 2 {
        timed(
            t,
            tx.batch_execute("ALTER TABLE units ADD COLUMN IF NOT EXISTS shard_hash BIGINT"),
        )
        .await?;
        let ids: Vec<String> = timed(t, tx.query("SELECT DISTINCT item_id FROM units", &[]))
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let hashes: Vec<i64> = ids.iter().map(|id| shard_hash(id)).collect();
        timed(
            t,
            tx.execute(
                "UPDATE units u SET shard_hash = h.hash FROM UNNEST($1::TEXT[], $2::BIGINT[]) AS h(id, hash)
                 WHERE u.item_id = h.id",
                &[&ids, &hashes],
            ),
        )
        .await?;
    }
    timed(
        t,
        tx.execute(
            "UPDATE redraft_meta SET value = $1 WHERE key = 'schema_version'",
            &[&SCHEMA_VERSION.to_string()],
        ),
    )
    .await?;
    Ok(())
}

/// Fills in what libpq users expect from the environment: the user
/// (`PGUSER`, else the login name) and the password (`PGPASSWORD`, else
/// the password file) when the URL has none.
fn complete_config(config: &mut tokio_postgres::Config, env: impl Fn(&str) -> Option<String>) {
    if config.get_user().is_none() {
        if let Some(user) = env("PGUSER")
            .or_else(|| env("USER"))
            .or_else(|| env("LOGNAME"))
        {
            config.user(user);
        }
    }
    if config.get_password().is_some() {
        return;
    }
    if let Some(pw) = env("PGPASSWORD").filter(|p| !p.is_empty()) {
        config.password(pw);
        return;
    }
    let file = env("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".pgpass")));
    let Some(text) = file.and_then(|f| std::fs::read_to_string(f).ok()) else {
        return;
    };
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "localhost".to_string(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user().unwrap_or_default().to_string();
    let dbname = config.get_dbname().unwrap_or(&user).to_string();
    if let Some(pw) = pgpass_lookup(&text, &host, &port, &dbname, &user) {
        config.password(pw);
    }
}

/// The password of the first matching line of a `.pgpass` file
/// (`host:port:database:user:password`, `*` matches anything, `\:` and
/// `\\` escape).
pub(crate) fn pgpass_lookup(
    text: &str,
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<String> {
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::with_capacity(5);
        let mut field = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => field.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        fields.push(field);
        let [h, p, d, u, pw] = fields.as_slice() else {
            continue;
        };
        let m = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        if m(h, host) && m(p, port) && m(d, dbname) && m(u, user) {
            return Some(pw.clone());
        }
    }
    None
}

impl Store for PgStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn open_eval(&mut self, eval: &EvalRecord) -> Result<EvalRecord, StoreError> {
        let meta = eval.meta.to_string();
        self.run(async |c: &mut Client, t| {
            timed(t, c.execute(
                "INSERT INTO evals (id, name, workflow, created_at, meta) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                &[&eval.id, &eval.name, &eval.workflow, &eval.created_at, &meta],
            ))
            .await?;
            Ok(())
        })?;
        self.eval(&eval.id)
    }

    fn add_units(&mut self, eval: &str, units: &[Unit]) -> Result<usize, StoreError> {
        let location = self.location.clone();
        let mut ids = Vec::with_capacity(units.len());
        let mut epochs = Vec::with_capacity(units.len());
        let mut items = Vec::with_capacity(units.len());
        let mut hashes = Vec::with_capacity(units.len());
        for u in units {
            ids.push(u.item.id.clone());
            epochs.push(i64::from(u.epoch));
            items.push(serde_json::to_string(&u.item).map_err(|e| corrupt(&location, e))?);
            hashes.push(shard_hash(&u.item.id));
        }
        self.run(async |c: &mut Client, t| {
            let tx = timed(t, c.transaction()).await?;
            // One writer of `seq` per eval at a time.
            timed(
                t,
                tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&eval]),
            )
            .await?;
            let base: i64 = timed(
                t,
                tx.query_one(
                    "SELECT COALESCE(MAX(seq) + 1, 0) FROM units WHERE eval_id = $1",
                    &[&eval],
                ),
            )
            .await?
            .get(0);
            // One statement for all units (ordinality keeps their order).
            let added = timed(
                t,
                tx.execute(
                    "INSERT INTO units (eval_id, item_id, epoch, seq, item, shard_hash)
                     SELECT $1, u.id, u.epoch, $2 + u.n - 1, u.item, u.hash
                     FROM UNNEST($3::TEXT[], $4::BIGINT[], $5::TEXT[], $6::BIGINT[])
                          WITH ORDINALITY AS u(id, epoch, item, hash, n)
                     ON CONFLICT DO NOTHING",
                    &[&eval, &base, &ids, &epochs, &items, &hashes],
                ),
            )
            .await?;
            timed(t, tx.commit()).await?;
            Ok(added as usize)
        })
    }

    fn archive_eval(&mut self, id: &str) -> Result<Option<String>, StoreError> {
        let to = archived_id(id, now_ms());
        self.run(async |c: &mut Client, t| {
            let tx = timed(t, c.transaction()).await?;
            let moved = timed(
                t,
                tx.execute(
                    "UPDATE evals SET id = $2, name = name || $3 WHERE id = $1",
                    &[&id, &to, &ARCHIVED_SUFFIX],
                ),
            )
            .await?;
            if moved == 0 {
                return Ok(None);
            }
            timed(
                t,
                tx.execute(
                    "UPDATE units SET eval_id = $2 WHERE eval_id = $1",
                    &[&id, &to],
                ),
            )
            .await?;
            timed(t, tx.commit()).await?;
            Ok(Some(to.clone()))
        })
    }

    fn reset_failed(&mut self, eval: &str) -> Result<usize, StoreError> {
        self.run(async |c: &mut Client, t| {
            let n = timed(t, c.execute(
                "UPDATE units SET status = 'pending', worker = NULL, result = NULL, score = NULL, passed = NULL WHERE eval_id = $1 AND status = 'failed'",
                &[&eval],
            ))
            .await?;
            Ok(n as usize)
        })
    }

    fn release_dead(&mut self, eval: &str, me: &WorkerId) -> Result<usize, StoreError> {
        self.run(async |c: &mut Client, t| {
            let rows = timed(t, c.query(
                "SELECT DISTINCT worker FROM units WHERE eval_id = $1 AND status = 'claimed' AND worker IS NOT NULL",
                &[&eval],
            ))
            .await?;
            let mut n = 0;
            for row in rows {
                let w: String = row.get(0);
                if WorkerId::parse(&w).is_some_and(|w| w != *me && w.is_dead_here()) {
                    n += timed(t, c.execute(
                        "UPDATE units SET status = 'pending', worker = NULL, lease_until = NULL WHERE eval_id = $1 AND status = 'claimed' AND worker = $2",
                        &[&eval, &w],
                    ))
                    .await? as usize;
                }
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
        let (k, count, c_param) = shard_params(shard);
        let sql = format!(
            "UPDATE units u SET status = 'claimed', worker = $1, lease_until = $2, attempts = u.attempts + 1
             FROM (SELECT eval_id, item_id, epoch FROM units
                   WHERE eval_id = $3 AND status = $6 AND ($6 = 'pending' OR lease_until < $4)
                     AND ($8::BIGINT = 1 OR {})
                   ORDER BY seq LIMIT $5 FOR UPDATE SKIP LOCKED) c
             WHERE u.eval_id = c.eval_id AND u.item_id = c.item_id AND u.epoch = c.epoch
             RETURNING u.item, u.epoch, u.seq",
            shard_filter("$7::BIGINT", "$8::BIGINT", "$9::BIGINT")
        );
        let location = self.location.clone();
        let rows = self.run(async |c: &mut Client, t| {
            let mut rows = Vec::with_capacity(n);
            // Pending units first, then expired claims (see the SQLite store).
            for status in ["pending", "claimed"] {
                let want = (n - rows.len()) as i64;
                if want == 0 {
                    break;
                }
                let got = timed(
                    t,
                    c.query(
                        &sql,
                        &[
                            &worker,
                            &(now + lease_ms),
                            &eval,
                            &now,
                            &want,
                            &status,
                            &k,
                            &count,
                            &c_param,
                        ],
                    ),
                )
                .await?;
                rows.extend(got);
            }
            Ok(rows)
        })?;
        let mut units: Vec<(i64, Unit)> = rows
            .into_iter()
            .map(|r| {
                let item: String = r.get(0);
                Ok((
                    r.get::<_, i64>(2),
                    Unit {
                        item: serde_json::from_str(&item).map_err(|e| corrupt(&location, e))?,
                        epoch: r.get::<_, i64>(1) as u32,
                    },
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        units.sort_by_key(|(seq, _)| *seq);
        Ok(units.into_iter().map(|(_, u)| u).collect())
    }

    fn renew(&mut self, eval: &str, worker: &WorkerId, lease_ms: i64) -> Result<(), StoreError> {
        let worker = worker.to_string();
        self.run(async |c: &mut Client, t| {
            timed(t, c.execute(
                "UPDATE units SET lease_until = $1 WHERE eval_id = $2 AND worker = $3 AND status = 'claimed'",
                &[&(now_ms() + lease_ms), &eval, &worker],
            ))
            .await?;
            Ok(())
        })
    }

    fn finish(&mut self, eval: &str, results: &[ItemResult]) -> Result<(), StoreError> {
        let location = self.location.clone();
        let encoded = results
            .iter()
            .map(|r| encode(&location, r))
            .collect::<Result<Vec<_>, _>>()?;
        self.run(async |c: &mut Client, t| {
            let tx = timed(t, c.transaction()).await?;
            let stmt = timed(t, tx.prepare(
                "UPDATE units SET status = $1, worker = NULL, lease_until = NULL, score = $2, passed = $3, result = $4, finished_at = $5,
                     tokens = $9, calls = $10, cost_usd = $11, summary = $12, events = $13
                 WHERE eval_id = $6 AND item_id = $7 AND epoch = $8 AND status <> 'done'",
            ))
            .await?;
            for (r, (json, summary, events)) in results.iter().zip(&encoded) {
                timed(
                    t,
                    tx.execute(
                        &stmt,
                        &[
                            &r.status.as_str(),
                            &r.score.as_ref().map(|s| s.score),
                            &r.score.as_ref().map(|s| s.passed as i64),
                            json,
                            &r.finished_at,
                            &eval,
                            &r.item_id,
                            &(r.epoch as i64),
                            &(r.tokens as i64),
                            &(r.calls as i64),
                            &r.cost_usd,
                            summary,
                            events,
                        ],
                    ),
                )
                .await?;
            }
            timed(t, tx.commit()).await?;
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
        let ids: Vec<String> = units.iter().map(|(id, _)| id.clone()).collect();
        let epochs: Vec<i64> = units.iter().map(|(_, e)| i64::from(*e)).collect();
        self.run(async |c: &mut Client, t| {
            timed(
                t,
                c.execute(
                    "UPDATE units u SET status = 'pending', worker = NULL, lease_until = NULL
                     FROM UNNEST($2::TEXT[], $3::BIGINT[]) AS r(id, epoch)
                     WHERE u.eval_id = $1 AND u.item_id = r.id AND u.epoch = r.epoch
                       AND u.worker = $4 AND u.status = 'claimed'",
                    &[&eval, &ids, &epochs, &w],
                ),
            )
            .await?;
            Ok(())
        })
    }

    fn counts(&mut self, eval: &str) -> Result<Counts, StoreError> {
        self.run(async |c: &mut Client, t| {
            let rows = timed(
                t,
                c.query(
                    "SELECT status, COUNT(*) FROM units WHERE eval_id = $1 GROUP BY status",
                    &[&eval],
                ),
            )
            .await?;
            Ok(counts_from(
                rows.into_iter().map(|r| (r.get(0), r.get(1))).collect(),
            ))
        })
    }

    fn spent(&mut self, eval: &str) -> Result<Totals, StoreError> {
        self.run(async |c: &mut Client, t| {
            let r = timed(t, c.query_one(SPENT, &[&eval])).await?;
            Ok(totals_from(
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
            ))
        })
    }

    fn evals(&mut self) -> Result<Vec<EvalListing>, StoreError> {
        let rows = self.run(async |c: &mut Client, t| {
            Ok(timed(
                t,
                c.query(
                    "SELECT e.id, e.name, e.workflow, e.created_at, e.meta,
                        COUNT(u.item_id),
                        COALESCE(SUM(CASE WHEN u.status = 'done' THEN 1 ELSE 0 END), 0)::BIGINT,
                        COALESCE(SUM(CASE WHEN u.status = 'failed' THEN 1 ELSE 0 END), 0)::BIGINT,
                        AVG(CASE WHEN u.status = 'done' THEN u.score END)
                 FROM evals e LEFT JOIN units u ON u.eval_id = e.id
                 GROUP BY e.id ORDER BY e.created_at",
                    &[],
                ),
            )
            .await?)
        })?;
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
        let location = self.location.clone();
        let r = self.run(async |c: &mut Client, t| {
            let ids = timed(t, c.query("SELECT id, name FROM evals", &[]))
                .await?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let id = resolve_id(&location, id, ids)?;
            Ok(timed(
                t,
                c.query_one(
                    "SELECT id, name, workflow, created_at, meta FROM evals WHERE id = $1",
                    &[&id],
                ),
            )
            .await?)
        })?;
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
        let value = value.to_string();
        self.run(async |c: &mut Client, t| {
            let tx = timed(t, c.transaction()).await?;
            // One writer of a journal's `seq` at a time.
            let lock = format!("{kind}\u{1f}{key}");
            timed(t, tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock])).await?;
            let seq: i64 = timed(
                t,
                tx.query_one(
                    "SELECT COALESCE(MAX(seq) + 1, 0) FROM records WHERE kind = $1 AND key = $2",
                    &[&kind, &key],
                ),
            )
            .await?
            .get(0);
            timed(
                t,
                tx.execute(
                    "INSERT INTO records (kind, key, seq, created_at, value) VALUES ($1, $2, $3, $4, $5)",
                    &[&kind, &key, &seq, &now_ms(), &value],
                ),
            )
            .await?;
            timed(t, tx.commit()).await?;
            Ok(seq)
        })
    }

    fn records(&mut self, kind: &str, key: &str) -> Result<Vec<serde_json::Value>, StoreError> {
        let rows = self.run(async |c: &mut Client, t| {
            Ok(timed(
                t,
                c.query(
                    "SELECT value FROM records WHERE kind = $1 AND key = $2 ORDER BY seq",
                    &[&kind, &key],
                ),
            )
            .await?)
        })?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(r.get::<_, &str>(0)).map_err(|e| corrupt(&self.location, e))
            })
            .collect()
    }

    fn record_keys(&mut self, kind: &str) -> Result<Vec<String>, StoreError> {
        self.run(async |c: &mut Client, t| {
            Ok(timed(
                t,
                c.query(
                    "SELECT DISTINCT key FROM records WHERE kind = $1 ORDER BY key",
                    &[&kind],
                ),
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })
    }

    fn units(&mut self, eval: &str, full: bool) -> Result<Vec<UnitRecord>, StoreError> {
        self.query_units(if full { UNITS_WITH_EVENTS } else { UNITS }, &[&eval])
    }

    fn unit(
        &mut self,
        eval: &str,
        item: &str,
        epoch: u32,
    ) -> Result<Option<UnitRecord>, StoreError> {
        let epoch = i64::from(epoch);
        let units = self.query_units(UNIT_WITH_EVENTS, &[&eval, &item, &epoch])?;
        Ok(units.into_iter().next())
    }
}

impl PgStore {
    /// Units as `UNITS`-shaped statements select them (item, epoch,
    /// status, result, summary, events).
    fn query_units(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<UnitRecord>, StoreError> {
        let rows = self.run(async |c: &mut Client, t| Ok(timed(t, c.query(sql, params)).await?))?;
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

/// The response cache in a PostgreSQL results store's database (tables
/// `redraft_responses` and `redraft_files`, created on first use): every
/// worker of an eval shares it. Statements are timed like the store's.
pub struct PgCache {
    store: std::sync::Mutex<PgStore>,
    location: String,
}

const CACHE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS redraft_responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    value TEXT NOT NULL,
    size BIGINT NOT NULL,
    created BIGINT NOT NULL,
    used BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS redraft_responses_used ON redraft_responses (used);
CREATE TABLE IF NOT EXISTS redraft_files (
    path TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL,
    sha256 TEXT NOT NULL
);
";

impl PgCache {
    pub fn connect(url: &str, opts: &StoreOptions) -> Result<PgCache, crate::cache::CacheError> {
        let location = crate::redact::url(url).into_owned();
        let mut store = PgStore::connect(url, opts).map_err(cache_error(&location))?;
        store
            .run(async |c: &mut Client, t| {
                let tx = timed(t, c.transaction()).await?;
                timed(t, tx.execute("SELECT pg_advisory_xact_lock(7262653)", &[])).await?;
                timed(t, tx.batch_execute(CACHE_SCHEMA)).await?;
                timed(t, tx.commit()).await?;
                Ok(())
            })
            .map_err(cache_error(&location))?;
        Ok(PgCache {
            location: store.location.clone(),
            store: std::sync::Mutex::new(store),
        })
    }

    fn run<T>(
        &self,
        step: impl AsyncFnOnce(&mut Client, Duration) -> Result<T, Fail>,
    ) -> Result<T, crate::cache::CacheError> {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        store.run(step).map_err(cache_error(&self.location))
    }
}

fn cache_error(location: &str) -> impl Fn(StoreError) -> crate::cache::CacheError + '_ {
    move |e| crate::cache::CacheError::Db {
        location: location.to_string(),
        message: e.to_string(),
    }
}

impl crate::cache::CacheStore for PgCache {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn get(&self, key: &str) -> Result<Option<String>, crate::cache::CacheError> {
        self.run(async |c: &mut Client, t| {
            let row = timed(
                t,
                c.query_opt(
                    "SELECT value FROM redraft_responses WHERE key = $1",
                    &[&key],
                ),
            )
            .await?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn put(
        &self,
        key: &str,
        model: &str,
        value: &str,
        now: i64,
    ) -> Result<(), crate::cache::CacheError> {
        self.run(async |c: &mut Client, t| {
            timed(
                t,
                c.execute(
                    "INSERT INTO redraft_responses (key, model, value, size, created, used)
                     VALUES ($1, $2, $3, $4, $5, $5)
                     ON CONFLICT (key) DO UPDATE SET model = excluded.model,
                       value = excluded.value, size = excluded.size, used = excluded.used",
                    &[&key, &model, &value, &(value.len() as i64), &now],
                ),
            )
            .await?;
            Ok(())
        })
    }

    fn touch(&self, keys: &[String], now: i64) -> Result<(), crate::cache::CacheError> {
        let keys = keys.to_vec();
        self.run(async |c: &mut Client, t| {
            timed(
                t,
                c.execute(
                    "UPDATE redraft_responses SET used = $1 WHERE key = ANY($2)",
                    &[&now, &keys],
                ),
            )
            .await?;
            Ok(())
        })
    }

    fn remove(&self, key: &str) -> Result<(), crate::cache::CacheError> {
        self.run(async |c: &mut Client, t| {
            timed(
                t,
                c.execute("DELETE FROM redraft_responses WHERE key = $1", &[&key]),
            )
            .await?;
            Ok(())
        })
    }

    fn stats(&self) -> Result<crate::cache::CacheStats, crate::cache::CacheError> {
        let location = self.location.clone();
        self.run(async |c: &mut Client, t| {
            let row = timed(
                t,
                c.query_one(
                    "SELECT count(*), COALESCE(SUM(size), 0)::BIGINT,
                            pg_total_relation_size('redraft_responses')
                     FROM redraft_responses",
                    &[],
                ),
            )
            .await?;
            let models = timed(
                t,
                c.query(
                    "SELECT model, count(*) FROM redraft_responses GROUP BY model ORDER BY 2 DESC",
                    &[],
                ),
            )
            .await?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
            .collect();
            Ok(crate::cache::CacheStats {
                location,
                entries: row.get::<_, i64>(0) as u64,
                value_bytes: row.get::<_, i64>(1) as u64,
                disk_bytes: Some(row.get::<_, i64>(2) as u64),
                models,
            })
        })
    }

    fn value_bytes(&self) -> Result<u64, crate::cache::CacheError> {
        self.run(async |c: &mut Client, t| {
            let row = timed(
                t,
                c.query_one(
                    "SELECT COALESCE(SUM(size), 0)::BIGINT FROM redraft_responses",
                    &[],
                ),
            )
            .await?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    }

    fn clear(&self) -> Result<u64, crate::cache::CacheError> {
        self.run(async |c: &mut Client, t| {
            Ok(timed(t, c.execute("DELETE FROM redraft_responses", &[])).await?)
        })
    }

    fn prune(&self, max_bytes: u64) -> Result<u64, crate::cache::CacheError> {
        // The newest entries whose running total stays within the bound
        // are kept; the rest go.
        self.run(async |c: &mut Client, t| {
            Ok(timed(
                t,
                c.execute(
                    "DELETE FROM redraft_responses WHERE key IN (
                       SELECT key FROM (
                         SELECT key, (SUM(size) OVER (ORDER BY used DESC, created DESC, key))::BIGINT AS kept
                         FROM redraft_responses) r
                       WHERE kept > $1)",
                    &[&(max_bytes as i64)],
                ),
            )
            .await?)
        })
    }

    fn file_hash(
        &self,
        file: &crate::cache::FileStamp,
    ) -> Result<Option<String>, crate::cache::CacheError> {
        self.run(async |c: &mut Client, t| {
            let row = timed(
                t,
                c.query_opt(
                    "SELECT sha256 FROM redraft_files WHERE path = $1 AND size = $2 AND mtime_ns = $3",
                    &[&file.path, &(file.size as i64), &file.mtime_ns],
                ),
            )
            .await?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn remember_file_hash(
        &self,
        file: &crate::cache::FileStamp,
        sha256: &str,
    ) -> Result<(), crate::cache::CacheError> {
        self.run(async |c: &mut Client, t| {
            timed(
                t,
                c.execute(
                    "INSERT INTO redraft_files (path, size, mtime_ns, sha256) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (path) DO UPDATE SET size = excluded.size,
                       mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256",
                    &[&file.path, &(file.size as i64), &file.mtime_ns, &sha256],
                ),
            )
            .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_file_is_read_as_libpq_reads_it() {
        let file = "# comment\n\
                    other:5432:*:*:nope\n\
                    db.example:*:evals:ana:s3cr\\:et\\\\x\n\
                    *:*:*:ana:fallback\n";
        assert_eq!(
            pgpass_lookup(file, "db.example", "5433", "evals", "ana").as_deref(),
            Some("s3cr:et\\x")
        );
        assert_eq!(
            pgpass_lookup(file, "db.example", "5432", "other", "ana").as_deref(),
            Some("fallback")
        );
        assert_eq!(pgpass_lookup(file, "h", "5432", "d", "bob"), None);
    }

    #[test]
    fn the_environment_completes_a_url_without_password_or_user() {
        let env = |k: &str| match k {
            "PGUSER" => Some("ana".to_string()),
            "PGPASSWORD" => Some("from-env".to_string()),
            _ => None,
        };
        let mut c: tokio_postgres::Config = "postgres://127.0.0.1/db".parse().unwrap();
        complete_config(&mut c, env);
        assert_eq!(c.get_user(), Some("ana"));
        assert_eq!(c.get_password(), Some(&b"from-env"[..]));
        // The URL's own password wins.
        let mut c: tokio_postgres::Config = "postgres://u:mine@127.0.0.1/db".parse().unwrap();
        complete_config(&mut c, env);
        assert_eq!(c.get_password(), Some(&b"mine"[..]));
    }
}
